"""`GPTQExport`: at the end of `fit`, quantize the trained (EMA) model into the submission artifact."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from lit_golf.export.budget import ArtifactTooLarge
from lit_golf.export.config import ExportConfig
from lit_golf.export.hessians import collect_hessians
from lit_golf.export.pipeline import ExportReport, build_artifact, calibration_batches

log = logging.getLogger("lit_golf")


class GPTQExport(Callback):
    """Export `pl_module.gpt` to `<out_dir>/artifact.ptz` (+ `artifact.json`) when fitting ends.

    Runs at `on_train_end`: later, at `on_fit_end`, Lightning's teardown has already moved the module
    back to the CPU. The EMA average is loaded first (whatever the callback order), so the artifact
    always holds the averaged weights. Every rank computes Hessians on its share of `trainer.datamodule.calibration_batches(...)` (they are
    all-reduced); rank 0 quantizes, writes the files and publishes the size table (log and
    TensorBoard text). When model + code exceed `config.budget_bytes`, every rank raises
    `ArtifactTooLarge`, so the run fails instead of producing an invalid submission.

    Args:
        config: calibration, quantization and budget settings; `out_dir=None` means `<log dir>/artifact`.
    """

    def __init__(self, config: ExportConfig | None = None) -> None:
        self.config = config or ExportConfig()
        self.report: ExportReport | None = None  # rank 0 only
        self.artifact_path: Path | None = None  # every rank

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lit_golf.callbacks.ema import EMA

        for callback in getattr(trainer, "callbacks", []):
            if isinstance(callback, EMA) and callback.shadow:
                callback.copy_to(pl_module.gpt)
        self.export(trainer, pl_module)

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cfg = self.config
        # `trainer.log_dir` is a collective (it broadcasts), so every rank asks for it.
        out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(trainer.log_dir or trainer.default_root_dir) / "artifact"
        batches = calibration_batches(trainer.datamodule, cfg, trainer.global_rank, trainer.world_size)
        started = time.perf_counter()
        log.info("export: Hessians over %d calibration batches of %d x %d tokens on %s",
                 cfg.calibration_batches, cfg.calibration_batch_seqs, cfg.calibration_seq_len, pl_module.device)
        hessians = collect_hessians(pl_module.gpt, batches, pl_module.device)
        outcome = None
        if trainer.is_global_zero:
            log.info("export: Hessians done in %.1fs; GPTQ + %s compression", time.perf_counter() - started,
                     cfg.compressor)
            self.report = build_artifact(pl_module.gpt, hessians, cfg, out_dir)
            publish_table(trainer, self.report)
            log.info("export: done in %.1fs", time.perf_counter() - started)
            outcome = (str(self.report.artifact_path), _budget_error(self.report))
        del hessians
        artifact_path, error = trainer.strategy.broadcast(outcome, src=0)
        self.artifact_path = Path(artifact_path)
        if error:
            raise ArtifactTooLarge(error)


def _budget_error(report: ExportReport) -> str | None:
    try:
        report.check_budget()
    except ArtifactTooLarge as exc:
        return str(exc)
    return None


def publish_table(trainer: L.Trainer, report: ExportReport) -> None:
    """Size table to the `lit_golf` log (printed instead when no handler would show it) and TensorBoard."""
    text = f"artifact {report.artifact_path}: {report.total_bytes:,} bytes with code\n{report.table}"
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info(text)
    else:
        print(text, flush=True)
    experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
    if hasattr(experiment, "add_text"):
        # Indented by four spaces: TensorBoard renders text as markdown, and this keeps the columns.
        experiment.add_text("export/size_table", "\n".join("    " + line for line in text.splitlines()),
                            global_step=trainer.global_step)
