"""`RecordResults`: each stage's measured numbers into `<run folder>/results.json`, its log into `train.log`.

`fit` records steps, training seconds, the calibration pass, the artifact and code bytes and the
quantization gap, and copies the `train_gpt.py` whose bytes were counted into the run folder; `test`
records the scores and the evaluation's wall clock. A test of a fit's artifact records in its own
folder inside the run (`lightning_cli.choose_record_folder`) and completes the run's results.json with its
scores (`lit_golf.results.add_test_scores`). `lit-golf submit` and `lit-golf check` read these files,
so a submission is assembled from what the run measured, not from what a config promised.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers.logger import DummyLogger

import lit_golf
from lit_golf.eval.config import EvalConfig
from lit_golf.eval.projection import fineweb_prefix_docs, measured_eval, project_record, ttt_throughput
from lit_golf.export import code_size
from lit_golf.files import copy_atomic
from lit_golf.progress import synchronize_device
from lit_golf.results import (
    RESULTS_NAME,
    TRAIN_LOG_NAME,
    RunResults,
    add_test_scores,
    fit_run_of,
    update_results,
)

log = logging.getLogger("lit_golf")


class RecordResults(Callback):
    """Write `results.json` (merged across stages) and `train.log` (the `lit_golf` log lines) into the run folder.

    Training seconds are WallClockBudget's when it runs (the number the stop used), else the module's
    training clock (first training batch to the end of training, validation excluded), as the budget counts.
    """

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self._log_handler: logging.Handler | None = None
        self._train_seconds: float | None = None
        self._eval_started = 0.0
        self._eval_load_seconds: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Runs before the module's own setup, so a test's clock covers reading the artifact.
        if stage == "fit" and all(isinstance(logger, DummyLogger) for logger in trainer.loggers):
            raise ValueError(
                "trainer.logger is off (--trainer.logger false, or fast_dev_run): a fit records its checkpoints, "
                "artifact, results.json and metrics in the logger's run folder and would have none; keep the "
                "config's logger (--trainer.logger.init_args.save_dir chooses where it writes)"
            )
        self._eval_started = time.perf_counter()
        self._train_seconds = None
        self.run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank asks
        if trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._log_handler = logging.FileHandler(self.run_dir / TRAIN_LOG_NAME, encoding="utf-8")
            self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            log.addHandler(self._log_handler)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Read at the last step, not at on_train_end: by then the export may already have run (callback order).
        if trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step:
            self._read_training_clock(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_seconds is None:  # stopped otherwise (end of data, interrupt)
            self._read_training_clock(pl_module)

    def _read_training_clock(self, pl_module: L.LightningModule) -> None:
        synchronize_device(pl_module.device)
        self._train_seconds = pl_module.progress.clock.read()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        budget = pl_module.progress.time_budget
        results = self._common(trainer)
        results.steps = trainer.global_step
        results.train_seconds = budget.elapsed_seconds if budget is not None else self._train_seconds
        if budget is not None:
            results.train_budget_seconds, results.reserve_seconds = budget.budget_seconds, budget.reserve_seconds
        artifact = getattr(pl_module, "artifact", None)  # set by the export callback to what it wrote
        if artifact is not None and trainer.is_global_zero:
            report = json.loads(Path(artifact).with_suffix(".json").read_text())
            results.calibration_seconds = report.get("calibration_seconds")
            results.calibration_split = _calibration_split(trainer.datamodule)
            results.budget_bytes = report["export_config"]["budget_bytes"]
            results.val_bpb_pre_quant = report.get("val_bpb_pre_quant")
            results.val_bpb_post_quant = report.get("val_bpb_post_quant")
            self._record_bytes(results, Path(artifact))
        if trainer.is_global_zero:
            update_results(self.run_dir, results)

    def _record_bytes(self, results: RunResults, artifact: Path) -> None:
        """Model file bytes, and the counted script (written by the export beside the artifact) copied into the
        run folder: the file `submit` ships."""
        script = copy_atomic(artifact.parent / code_size.SCRIPT_NAME, self.run_dir / code_size.SCRIPT_NAME)
        results.model_bytes = artifact.stat().st_size
        results.code_bytes = script.stat().st_size
        results.artifact_bytes = results.model_bytes + results.code_bytes

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize_device(pl_module.device)
        self._eval_load_seconds = time.perf_counter() - self._eval_started  # the artifact is loaded (setup)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize_device(pl_module.device)
        scores = getattr(pl_module, "test_results", None) or {}
        results = self._common(trainer)
        results.eval_seconds = time.perf_counter() - self._eval_started
        results.eval_load_seconds = self._eval_load_seconds
        results.evaluated = "artifact" if getattr(pl_module, "artifact", None) else "checkpoint"
        results.val_bpb, results.val_loss = scores.get("val_bpb"), scores.get("val_loss")
        results.ttt_bpb, results.ttt_loss = scores.get("ttt_bpb"), scores.get("ttt_loss")
        final = "ttt" if results.ttt_bpb is not None else "val"
        results.final_bpb, results.final_loss = scores.get(f"{final}_bpb"), scores.get(f"{final}_loss")
        eval_config = getattr(pl_module, "eval_config", None)
        if eval_config is not None:
            results.evaluation = asdict(eval_config)
            if "val_tokens" in scores:
                self._record_eval_clocks(results, scores, eval_config)
        dm = trainer.datamodule
        results.val_tokens_limited = getattr(dm, "max_val_docs", None) is not None or \
            getattr(dm, "max_val_tokens", None) is not None or \
            any(results.evaluation.get(cut) is not None for cut in ("max_docs", "max_tokens"))
        if trainer.is_global_zero:
            update_results(self.run_dir, results)
            if results.fineweb_projection:
                log.info("test: evaluation %.1f s measured on %s; %s", results.eval_seconds, results.hardware,
                         project_record(results.fineweb_projection).describe())
            if results.evaluated == "artifact":
                self._complete_fit_record(Path(pl_module.artifact))

    @staticmethod
    def _record_eval_clocks(results: RunResults, scores: dict, eval_config: EvalConfig) -> None:
        """TTT's compile, global SGD and throughput, and the FineWeb 8×H100 projection from these clocks."""
        measured = measured_eval(scores, results.eval_seconds, eval_config, results.world_size, results.hardware)
        results.ttt_compile_seconds = scores.get("time_ttt_compile_s", 0.0)
        results.global_sgd_seconds = measured.global_sgd_seconds
        throughput = ttt_throughput(scores)
        if throughput is not None:
            (results.ttt_tokens_per_second_after_compile,
             results.ttt_positions_per_second_after_compile) = throughput
        results.fineweb_projection = measured.record(fineweb_prefix_docs(eval_config))
        results.fineweb_8xh100_eval_s_projected = project_record(results.fineweb_projection).seconds

    def _complete_fit_record(self, artifact: Path) -> None:
        """A test of a fit's artifact, recorded in its own folder inside that run: add its scores to the run's."""
        run = fit_run_of(artifact)
        if run is None or run != self.run_dir.resolve().parent:
            return  # not a fit's artifact, or `lit-golf run` (one launch, one folder)
        if self._log_handler is not None:
            self._log_handler.flush()
        test_log = (self.run_dir / TRAIN_LOG_NAME).read_text(encoding="utf-8")
        if add_test_scores(run, self.run_dir, test_log):
            log.info("test: scores added to %s (this test's own record: %s)", run / RESULTS_NAME, self.run_dir)
        else:
            log.info("test: %s keeps the scores it holds; this test's record is %s", run / RESULTS_NAME,
                     self.run_dir / RESULTS_NAME)

    def _common(self, trainer: L.Trainer) -> RunResults:
        seed = os.environ.get("PL_GLOBAL_SEED")
        results = RunResults(
            seed=int(seed) if seed and seed.lstrip("-").isdigit() else None,
            world_size=trainer.world_size,
            hardware=_hardware(trainer),
            torch_version=torch.__version__,
            lit_golf_version=lit_golf.__version__,
        )
        dm = trainer.datamodule
        if hasattr(dm, "data_dir") and hasattr(dm, "vocab_size"):
            from lit_golf.data.shards import present_shards

            # The shards that are there, never an error: this runs after the work it records, and a test on an
            # eval-only box (val shards, no train split) must keep its scores. A fit cannot start without
            # train shards; a test's record with none is what `check` reports as "train/val files not recorded".
            results.train_files = [str(p.resolve()) for p in present_shards(dm.data_dir, "train", dm.vocab_size)]
            results.val_files = [str(p.resolve()) for p in present_shards(dm.data_dir, "val", dm.vocab_size)]
        return results


def _calibration_split(datamodule) -> str | None:
    """`train` for GolfDataModule (its `calibration_batches` reads train shards only); None when unknown."""
    from lit_golf.data.datamodule import GolfDataModule

    return "train" if isinstance(datamodule, GolfDataModule) else None


def _hardware(trainer: L.Trainer) -> str:
    root = trainer.strategy.root_device
    if root.type == "cuda":
        return f"{trainer.world_size}x {torch.cuda.get_device_name(root)}"
    return f"{trainer.world_size}x {root.type.upper()} ({platform.machine()})"
