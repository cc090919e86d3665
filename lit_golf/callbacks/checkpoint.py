"""`RunCheckpoint`: the latest checkpoint of a run, and `--ckpt_path last` resuming into that same run.

A `ModelCheckpoint` that by default keeps one file, `<run folder>/checkpoints/last.ckpt`, rewritten every
`every_n_train_steps` steps (no top-k copies: one write per save). The checkpoint holds everything the
run needs to continue as if it had not stopped: weights, optimizer state, step counters, the loop flag,
the EMA shadow, the wall-clock budget spent, the training clock, and the data stream's position. Each
save's seconds are logged (`checkpoint/write_s`), so the cost of the cadence is visible in every run.

Each checkpoint is written to a temporary file and renamed over `last.ckpt` (`lit_golf.files`), so a full
disk or a kill mid-write leaves the previous checkpoint intact; the loggers are flushed with it, so
`metrics.csv` holds every row up to the checkpoint a resumed run starts from.

`lit-golf fit ... --ckpt_path last` finds the most recently written `last.ckpt` among the runs of the
configured logger (`<save_dir>/<name>/*/checkpoints/last.ckpt`) and makes the logger use *that* run's
folder instead of a new `version_N`: TensorBoard events, `config.yaml`, checkpoints and the artifact
continue there. Events the killed run wrote after the checkpoint's step are purged (TensorBoard's
`purge_step`; `metrics.csv` rows likewise), so the curves show one run. With no checkpoint yet, the fit
starts a new run (Lightning warns), so a launcher can always pass `--ckpt_path last`. A resume that
could only damage or misread the run stops in one line before anything is written (`check_resume`):
an unreadable checkpoint, a run that already finished, no step left to train, another architecture.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from lit_golf.callbacks.wallclock import log_to_loggers
from lit_golf.config import GPTConfig
from lit_golf.export.pipeline import ARTIFACT_NAME, load_checkpoint
from lit_golf.files import atomic_path
from lit_golf.results import RESULTS_NAME, read_results
from lit_golf.schedule import scaled_steps

log = logging.getLogger("lit_golf")

# Lightning warns that a manual-optimization checkpoint holds the state after the step: that is the point.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def latest_run_checkpoint(root_dir: str | Path) -> Path | None:
    """The most recently written `<root_dir>/<run>/checkpoints/last.ckpt`, or None."""
    found = [p for p in Path(root_dir).glob("*/checkpoints/last.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def check_resume(ckpt_path: str | Path, max_steps: int, config: GPTConfig | None = None, run: Path | None = None) -> int:
    """Raise one line when fitting from `ckpt_path` could only damage a record or fail later; returns its step.

    `run` is the folder the fit would continue in (`--ckpt_path last`): a run that finished (its results or
    artifact are written) is not reopened. Also refused: an unreadable (e.g. truncated) checkpoint, a step
    at or past `max_steps` (nothing would train, nothing would be exported), and a checkpoint of another
    architecture than `config` (its weights would not load).
    """
    which = f"--ckpt_path last picked {ckpt_path}, the newest run's checkpoint" if run else f"--ckpt_path {ckpt_path}"
    fresh = "start a new run without --ckpt_path last" if run else "start a new run without --ckpt_path"
    try:
        ckpt = load_checkpoint(ckpt_path, weights_only=True)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"{which}: {exc}; delete it and {fresh}, or pass --ckpt_path of another checkpoint") from None
    step = int(ckpt.get("global_step", 0))
    if run is not None:
        done = _finished(run)
        if done:
            raise ValueError(
                f"{which}: run {run} is finished ({done}) and resuming would rewrite its records; {fresh}, or "
                f"train on from its weights into a new run folder with --ckpt_path {ckpt_path} and a larger "
                "--trainer.max_steps"
            )
    if 0 < max_steps <= step:
        raise ValueError(
            f"{which}: it is at step {step} and --trainer.max_steps is {max_steps}, so nothing would train (and "
            f"nothing be exported); raise --trainer.max_steps, or export it with `lit-golf export --ckpt {ckpt_path}`"
        )
    saved = (ckpt.get("hyper_parameters") or {}).get("gpt")
    if config is not None and isinstance(saved, dict):
        try:
            got = GPTConfig.from_dict(saved).architecture()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{which}: its model config does not load ({exc}); {fresh}") from None
        want = config.architecture()
        diff = ", ".join(f"model.gpt.{k} {got[k]} (checkpoint) vs {v} (config)" for k, v in want.items() if got[k] != v)
        if diff:
            where = f"the run's config, {run}/config.yaml" if run else "the config it was trained with"
            raise ValueError(f"{which}: it holds another model ({diff}); resume with {where}, or {fresh}")
    return step


def _finished(run: Path) -> str | None:
    """What says that `run`'s fit ended (its results.json steps, its artifact), or None."""
    results = run / RESULTS_NAME
    steps = read_results(results).get("steps") if results.is_file() else None
    if steps is not None:
        return f"{results} records {steps} steps"
    artifact = run / "artifact" / ARTIFACT_NAME
    return f"{artifact} is written" if artifact.is_file() else None


class RunCheckpoint(ModelCheckpoint):
    """Keep the run's latest checkpoint (`checkpoints/last.ckpt` in the run folder); resume into the same folder.

    Args:
        every_n_train_steps: optimizer steps between checkpoints (each save writes the whole training state), for
            a run of the recipe's length; rescaled like the other step-counted knobs (`lit_golf.schedule`).
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
        self.every_n_train_steps = every_n_train_steps
        self.write_seconds: list[float] = []  # this launch's saves

    def on_train_start(self, trainer, pl_module) -> None:
        """Save as often relative to the run's length as the recipe does: a one-GPU wall-clock run of the
        8-GPU record takes ~1/8 of its steps, so every 1000 steps would never save (`progress.step_scale`)."""
        super().on_train_start(trainer, pl_module)
        every = scaled_steps(self.every_n_train_steps, pl_module.progress.step_scale)
        if every != self._every_n_train_steps:
            log.info("checkpoint: every %d steps for the recipe's run length, every %d for this run",
                     self.every_n_train_steps, every)
        self._every_n_train_steps = every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # Checkpoint callbacks run after the others, so a budget that stopped training has said so by now.
        last_step = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
        if self.save_final and last_step and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        # Writing pulls every tensor to the host, so the device has finished by the time this returns.
        started = time.perf_counter()
        # Only rank 0 writes (to a temporary file, renamed when complete); the others join the save's collectives.
        with atomic_path(filepath) if trainer.is_global_zero else contextlib.nullcontext(filepath) as target:
            super()._save_checkpoint(trainer, str(target))
            seconds = time.perf_counter() - started
            self.write_seconds.append(seconds)
            log_to_loggers(trainer, {"checkpoint/write_s": seconds})
            if trainer.is_global_zero:  # what was logged up to this step is on disk before its checkpoint appears
                for logger in trainer.loggers:
                    logger.save()
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            log.info("checkpoint: step %d written to %s (%.1f MB) in %.2fs", trainer.global_step, filepath,
                     Path(filepath).stat().st_size / 1e6, seconds)

    def _find_last_checkpoints(self, trainer) -> set[str]:
        # Lightning asks this when `ckpt_path="last"`, before anything fixed the logger's folder: a fit points
        # the logger at the run that holds the newest last.ckpt, so the checkpoint is looked up (and the run
        # continues) there rather than in a fresh version folder. `test`/`validate` never log into a fit's
        # folder (the CLI resolves their `last` to a path before anything is built).
        fitting = getattr(trainer.state.fn, "value", None) == "fit"
        if fitting:
            self.continue_latest_run(trainer)
        found = super()._find_last_checkpoints(trainer)
        if not found and not fitting:
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
        # before the logger is pointed at the run, so nothing has been written when it refuses
        step = check_resume(latest, trainer.max_steps, getattr(trainer.lightning_module, "gpt_config", None), run)
        logger._version = run.name  # TensorBoardLogger/CSVLogger: a string version is the folder name
        if isinstance(getattr(logger, "_kwargs", None), dict):
            logger._kwargs["purge_step"] = step + 1  # hide what the killed run logged after the checkpoint
        log.info("resuming %s (step %s) into its run folder %s", latest, step, run)
        return latest
