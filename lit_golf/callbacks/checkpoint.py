"""`RunCheckpoint`: the latest checkpoint of a run, and `--ckpt_path last` resuming into that same run.

A `ModelCheckpoint` that by default keeps one file, `<run folder>/checkpoints/last.ckpt`, rewritten every
`every_n_train_steps` steps (no top-k copies: one write per save). The checkpoint holds everything the
run needs to continue as if it had not stopped: weights, optimizer state, step counters, the loop flag,
the EMA shadow, the wall-clock budget spent, the training clock, and the data stream's position. Each
save's seconds are logged (`checkpoint/write_s`), so the cost of the cadence is visible in every run.

`lit-golf fit ... --ckpt_path last` finds the most recently written `last.ckpt` among the runs of the
configured logger (`<save_dir>/<name>/*/checkpoints/last.ckpt`) and makes the logger use *that* run's
folder instead of a new `version_N`: TensorBoard events, `config.yaml`, checkpoints and the artifact
continue there. Events the killed run wrote after the checkpoint's step are purged (TensorBoard's
`purge_step`), so the curves show one run. With no checkpoint yet, the fit starts a new run (Lightning
warns), so a launcher can always pass `--ckpt_path last`.
"""

from __future__ import annotations

import logging
import time
import warnings
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_golf.callbacks.wallclock import log_to_loggers

log = logging.getLogger("lit_golf")

# Lightning warns that a manual-optimization checkpoint holds the state after the step: that is the point.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def latest_run_checkpoint(root_dir: str | Path) -> Path | None:
    """The most recently written `<root_dir>/<run>/checkpoints/last.ckpt`, or None."""
    found = [p for p in Path(root_dir).glob("*/checkpoints/last.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def checkpoint_step(path: str | Path) -> int | None:
    """`global_step` of a Lightning checkpoint (memory-mapped read; None when unreadable)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        return int(ckpt["global_step"])
    except Exception:  # noqa: BLE001 - Lightning reports an unreadable checkpoint itself when it loads it
        return None


class RunCheckpoint(ModelCheckpoint):
    """Keep the run's latest checkpoint (`checkpoints/last.ckpt` in the run folder); resume into the same folder.

    Args:
        every_n_train_steps: optimizer steps between checkpoints (each save writes the whole training state).
        save_top_k: as in `ModelCheckpoint`; 0 keeps only `last.ckpt`.
        save_last: write `last.ckpt` (needed by `--ckpt_path last`).
        dirpath: None puts checkpoints in `<run folder>/checkpoints` (required for resuming into the run folder).
        save_final: also write `last.ckpt` after the last step (max_steps reached or the budget spent), so
            `export`/`test --ckpt` have the final state; it costs one write after training.
        verbose: log every save.
    """

    def __init__(
        self,
        every_n_train_steps: int = 500,
        save_top_k: int = 0,
        save_last: bool = True,
        dirpath: str | None = None,
        save_final: bool = True,
        verbose: bool = False,
    ) -> None:
        super().__init__(
            dirpath=dirpath, every_n_train_steps=every_n_train_steps, save_top_k=save_top_k, save_last=save_last,
            verbose=verbose,
        )
        self.save_final = save_final
        self.write_seconds: list[float] = []  # this launch's saves

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # Checkpoint callbacks run after the others, so a budget that stopped training has said so by now.
        last_step = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
        if self.save_final and last_step and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        # Writing pulls every tensor to the host, so the device has finished by the time this returns.
        started = time.perf_counter()
        super()._save_checkpoint(trainer, filepath)
        seconds = time.perf_counter() - started
        self.write_seconds.append(seconds)
        if trainer.is_global_zero:
            size = Path(filepath).stat().st_size if Path(filepath).is_file() else 0
            log.info("checkpoint: step %d written to %s (%.1f MB) in %.2fs", trainer.global_step, filepath,
                     size / 1e6, seconds)
        log_to_loggers(trainer, {"checkpoint/write_s": seconds})

    def _find_last_checkpoints(self, trainer) -> set[str]:
        # Lightning asks this when `ckpt_path="last"`, before anything fixed the logger's folder: point the
        # logger at the run that holds the newest last.ckpt, so the checkpoint is looked up (and the run
        # continues) there rather than in a fresh version folder.
        self.continue_latest_run(trainer)
        found = super()._find_last_checkpoints(trainer)
        if not found and getattr(trainer.state.fn, "value", None) in ("test", "validate"):
            # `fit` may start fresh without one; scoring a randomly initialised model must not happen silently
            where = self.dirpath or getattr(trainer.logger, "root_dir", None) or "the run folder"
            raise FileNotFoundError(f"--ckpt last: no last.ckpt under {where}; pass --ckpt PATH of a fit's checkpoint")
        return found

    def continue_latest_run(self, trainer) -> Path | None:
        logger = trainer.logger
        root = getattr(logger, "root_dir", None)
        if self.dirpath is not None or root is None or getattr(logger, "_version", 0) is not None:
            return None  # explicit checkpoint folder, no folder-per-run logger, or the run folder is already fixed
        latest = latest_run_checkpoint(root)
        if latest is None:
            return None
        run = latest.parent.parent
        logger._version = run.name  # TensorBoardLogger/CSVLogger: a string version is the folder name
        step = checkpoint_step(latest)
        if step is not None and isinstance(getattr(logger, "_kwargs", None), dict):
            logger._kwargs["purge_step"] = step + 1  # hide what the killed run logged after the checkpoint
        log.info("resuming %s (step %s) into its run folder %s", latest, step, run)
        return latest
