"""`GPTQExport`: at the end of `fit`, quantize the trained (EMA) model into the submission artifact."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_golf import artifact
from lit_golf.callbacks.wallclock import log_to_loggers
from lit_golf.eval.config import EvalConfig
from lit_golf.eval.runner import plain_bpb
from lit_golf.export.budget import ArtifactTooLarge
from lit_golf.export.config import ExportConfig
from lit_golf.export.hessians import collect_hessians
from lit_golf.export.pipeline import ExportReport, build_artifact, calibration_batches, tokenizer_record
from lit_golf.files import write_atomic
from lit_golf.progress import synchronize_device

log = logging.getLogger("lit_golf")


class GPTQExport(Callback):
    """Export `pl_module.gpt` to `<out_dir>/artifact.ptz` (+ `artifact.json`) when fitting ends.

    Runs at `on_train_end`: later, at `on_fit_end`, Lightning's teardown has already moved the module
    back to the CPU. The EMA average is loaded first (whatever the callback order), so the artifact
    always holds the averaged weights. Every rank computes Hessians on its share of `trainer.datamodule.calibration_batches(...)` (they are
    all-reduced); rank 0 quantizes, writes the files and publishes the size table (log and
    TensorBoard text). When model + code exceed `config.budget_bytes`, every rank raises
    `ArtifactTooLarge`, so the run fails instead of producing an invalid submission; research runs
    (`enforce_budget: false`, e.g. `overrides/fixed_steps_1gpu.yaml`) log the excess and go on, and
    `lit-golf check` still fails them.

    With `measure_quant_gap` and a datamodule that serves validation tokens (`val_tokens()`,
    `byte_luts()`, `val_token_bytes()`), the plain val bpb of the weights is measured before quantization and again with
    the artifact's dequantized weights (then the trained weights are put back); both and their gap go
    to the log, TensorBoard (`export/*`) and `artifact.json`.

    Args:
        config: calibration, quantization and budget settings; `out_dir=None` means `<log dir>/artifact`.
        measure_quant_gap: measure the post-quantization bpb gap (two plain evaluations).
        enforce_budget: stop the run when the artifact is over budget (else a warning).
    """

    def __init__(self, config: ExportConfig | None = None, measure_quant_gap: bool = True,
                 enforce_budget: bool = True) -> None:
        self.config = config or ExportConfig()
        self.measure_quant_gap = measure_quant_gap
        self.enforce_budget = enforce_budget
        self.report: ExportReport | None = None  # rank 0 only
        self.artifact_path: Path | None = None  # every rank
        self.quant_gap: dict[str, float] | None = None  # every rank, when measured
        self.calibration_seconds: float | None = None  # end of training -> Hessians done, every rank
        self._train_ended: float | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_ended = time.perf_counter()
        average = pl_module.progress.weight_average
        if average is not None:
            average.copy_to(pl_module.gpt)
        self.export(trainer, pl_module)

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cfg = self.config
        check_finite_weights(pl_module.gpt, trainer.global_step)  # every rank holds the same weights
        # `trainer.log_dir` is a collective (it broadcasts), so every rank asks for it.
        out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(trainer.log_dir or trainer.default_root_dir) / "artifact"
        batches = calibration_batches(trainer.datamodule, cfg, trainer.global_rank, trainer.world_size)
        started = self._train_ended or time.perf_counter()
        log.info("export: Hessians over %d calibration batches of %d x %d tokens on %s",
                 cfg.calibration_batches, cfg.calibration_batch_seqs, cfg.calibration_seq_len, pl_module.device)
        hessians = collect_hessians(pl_module.gpt, batches, pl_module.device)
        synchronize_device(pl_module.device)
        # The calibration pass is the last read of training data: the challenge counts it inside the training
        # budget's reserve, so it runs first after training (EMA swap included in the seconds), before any
        # evaluation; `lit-golf check` compares these seconds with the reserve.
        self.calibration_seconds = time.perf_counter() - started
        measure = self.measure_quant_gap and hasattr(trainer.datamodule, "val_tokens")
        pre_quant = self._plain_bpb(trainer, pl_module) if measure else None
        outcome = None
        if trainer.is_global_zero:
            log.info("export: Hessians done in %.1fs; GPTQ + %s compression", self.calibration_seconds, cfg.compressor)
            self.report = build_artifact(pl_module.gpt, hessians, cfg, out_dir, tokenizer_record(trainer.datamodule))
            publish_table(trainer, self.report)
            log.info("export: done in %.1fs", time.perf_counter() - started)
            outcome = (str(self.report.artifact_path), _budget_error(self.report))
        del hessians
        artifact_path, error = trainer.strategy.broadcast(outcome, src=0)
        self.artifact_path = Path(artifact_path)
        if error and self.enforce_budget:
            raise ArtifactTooLarge(error)
        if error and trainer.is_global_zero:
            log.warning("export: %s (enforce_budget is off: the run goes on, `lit-golf check` will fail it)",
                        error.splitlines()[0])
        if measure:
            self._record_quant_gap(trainer, pre_quant, self._dequantized_bpb(trainer, pl_module))
        if trainer.is_global_zero:  # the report next to the artifact is what run records read
            self._add_to_report({"calibration_seconds": self.calibration_seconds})
        pl_module.artifact = str(self.artifact_path)  # what the module's next test scores

    @staticmethod
    def _plain_bpb(trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        dm = trainer.datamodule
        cfg = getattr(pl_module, "eval_config", EvalConfig())
        return plain_bpb(pl_module.gpt, dm.val_tokens(), dm.byte_luts(), cfg, dm.val_token_bytes())

    def _dequantized_bpb(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """Plain bpb with the artifact's weights swapped in (rank 0 reads the file and broadcasts them)."""
        gpt = pl_module.gpt
        dequantized = artifact.load(self.artifact_path).state_dict() if trainer.is_global_zero else None
        dequantized = trainer.strategy.broadcast(dequantized, src=0)
        trained = {name: tensor.detach().clone() for name, tensor in gpt.state_dict().items()}
        gpt.load_state_dict(dequantized)
        try:
            return self._plain_bpb(trainer, pl_module)
        finally:
            gpt.load_state_dict(trained)

    def _record_quant_gap(self, trainer: L.Trainer, pre_quant: float, post_quant: float) -> None:
        self.quant_gap = {"val_bpb_pre_quant": pre_quant, "val_bpb_post_quant": post_quant,
                          "quant_gap_bpb": post_quant - pre_quant}
        log_to_loggers(trainer, {f"export/{k}": v for k, v in self.quant_gap.items()})  # TensorBoard and metrics.csv
        if not trainer.is_global_zero:
            return
        log.info("export: plain val bpb %.5f before quantization, %.5f from the artifact (gap %+.5f)",
                 pre_quant, post_quant, self.quant_gap["quant_gap_bpb"])
        self._add_to_report(self.quant_gap)

    def _add_to_report(self, values: dict) -> None:
        table = self.artifact_path.with_suffix(".json")
        write_atomic(table, json.dumps({**json.loads(table.read_text()), **values}, indent=2))


def check_finite_weights(gpt: torch.nn.Module, step: int) -> None:
    """One line instead of GPTQ's indirect failure when training left NaN/inf weights (it diverged)."""
    bad = [name for name, t in gpt.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        from lit_golf.module import TrainingDiverged

        raise TrainingDiverged(
            f"training diverged: {len(bad)} weight tensors hold NaN/inf at step {step} (e.g. {bad[0]}), nothing "
            "exported: the learning rate is likely too high (model.optim.matrix_lr / embed_lr / scalar_lr), or the "
            "data is bad"
        )


def _budget_error(report: ExportReport) -> str | None:
    try:
        report.check_budget()
    except ArtifactTooLarge as exc:
        return str(exc)
    return None


def publish_table(trainer: L.Trainer, report: ExportReport) -> None:
    """Size table to the `lit_golf` log (printed instead when no handler would show it) and TensorBoard."""
    text = report.summary
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info(text)
    else:
        print(text, flush=True)
    experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
    if hasattr(experiment, "add_text"):
        # Indented by four spaces: TensorBoard renders text as markdown, and this keeps the columns.
        experiment.add_text("export/size_table", "\n".join("    " + line for line in text.splitlines()),
                            global_step=trainer.global_step)
