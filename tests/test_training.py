"""Training through the real Lightning Trainer on CPU: the CLI end to end, the invisible compile
warm-up, and DDP on two gloo processes against one process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_golf import artifact
from lit_golf.cli import main, run_lightning_cli
from lit_golf.config import GPTConfig
from lit_golf.data.datamodule import GolfDataModule
from lit_golf.eval.runner import plain_bpb
from lit_golf.module import GolfLightningModule
from lit_golf.schedule import TrainingConfig
from lit_golf.strategy import GolfDDPStrategy

REPO = Path(__file__).resolve().parent.parent
TINY_CPU = REPO / "configs" / "tiny_cpu.yaml"


@pytest.fixture(autouse=True)
def no_leftover_process_group():
    """Lightning's DDP strategy keeps its process group for later Trainer calls; end it after each test
    so later tests (which fork their own groups) start clean, whatever the order."""
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def small_gpt(vocab: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab, num_layers=4, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=8,
                     xsa_last_n=4, parallel_start_layer=3, num_loops=1, loop_start=1, loop_end=2)


def datamodule(tiny_data, tokens_per_microbatch: int) -> GolfDataModule:
    return GolfDataModule(data_dir=str(tiny_data.data_dir), vocab_size=tiny_data.vocab_size, train_seq_len=128,
                          train_batch_tokens=1024, tokens_per_microbatch=tokens_per_microbatch, eval_seq_len=128,
                          val_batch_seqs=4, cu_bucket=16, cu_min_len=32, max_val_tokens=4096)


def fit_weights(tiny_data, *, steps: int, warmup: bool = False, devices: int = 1, tokens_per_microbatch=512,
                out: Path | None = None) -> dict[str, torch.Tensor]:
    """Fit a small GPT for `steps` steps; returns rank 0's final weights (also saved to `out` per rank)."""
    L.seed_everything(0)
    module = GolfLightningModule(gpt=small_gpt(tiny_data.vocab_size),
                                 training=TrainingConfig(compile=False, compile_warmup=False))
    callbacks = [WarmupNow()] if warmup else []
    # One process runs without a process group (a leftover one would hold the port the spawn needs).
    strategy = GolfDDPStrategy(start_method="spawn") if devices > 1 else "auto"
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=steps, max_epochs=-1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        use_distributed_sampler=False, callbacks=callbacks + ([SaveWeights(out)] if out else []))
    trainer.fit(module, datamodule(tiny_data, tokens_per_microbatch))
    return {k: v.detach().clone() for k, v in module.gpt.state_dict().items()}


class WarmupNow(L.Callback):
    """Run the compile warm-up (forward+backward+step on synthetic batches, then restore) before step 1."""

    def on_train_start(self, trainer, pl_module):
        pl_module.compile_warmup()


class SaveWeights(L.Callback):
    def __init__(self, out: Path):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        torch.save(pl_module.gpt.state_dict(), self.out / f"rank{trainer.global_rank}.pt")


def test_warmup_then_restore_leaves_training_bit_identical(tiny_data):
    plain = fit_weights(tiny_data, steps=3)
    warmed = fit_weights(tiny_data, steps=3, warmup=True)
    assert plain.keys() == warmed.keys()
    for name in plain:
        assert torch.equal(plain[name], warmed[name]), name


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process_with_the_same_global_batch(tiny_data, tmp_path):
    one = fit_weights(tiny_data, steps=3, tokens_per_microbatch=512)  # 2 micro-batches x 1 rank
    fit_weights(tiny_data, steps=3, devices=2, tokens_per_microbatch=512, out=tmp_path)  # 1 x 2 ranks
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    for name in one:
        # Both ranks hold exactly the same weights: the optimizer all-gathers one update for everyone.
        assert torch.equal(rank0[name], rank1[name]), name
        # Against one process (measured after 1 step: <= 6e-4; after 3 steps: <= 7e-3): banks are
        # reduce-scattered in bf16 (each rank rounds its half of the gradient before the sum) and
        # orthogonalized in bf16, and AdamW turns the resulting tiny gradient differences of the
        # scalars into lr-sized steps; so: max |diff| <= 1e-2 (banks 2e-2), mean |diff| <= 1e-3.
        diff = (rank0[name].float() - one[name].float()).abs()
        assert diff.max() <= (2e-2 if name.endswith("_bank") else 1e-2), (name, diff.max())
        assert diff.mean() <= 1e-3, (name, diff.mean())


def test_lr_schedule_is_constant_then_linear_warmdown():
    from lit_golf.schedule import lr_multiplier

    assert lr_multiplier(0.0, 0.75, 0.0) == 1.0
    assert lr_multiplier(0.2499, 0.75, 0.0) == 1.0
    assert lr_multiplier(0.625, 0.75, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(1.0, 0.75, 0.0) == 0.0
    assert lr_multiplier(0.99, 0.75, 0.1) == pytest.approx(0.1)


def test_cli_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("fit", "validate", "test", "export", "prepare-data", "download", "demo"):
        assert f"  {command} " in text


@pytest.mark.slow
def test_cli_fit_export_test_end_to_end(tiny_data, tmp_path):
    common = ["--config", str(TINY_CPU), "--data.data_dir", str(tiny_data.data_dir),
              "--data.vocab_size", str(tiny_data.vocab_size), "--model.gpt.vocab_size", str(tiny_data.vocab_size),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--data.max_val_tokens", "4096"]
    fit = run_lightning_cli(["fit", *common, "--trainer.max_steps", "8", "--trainer.val_check_interval", "8"])
    assert fit.trainer.global_step == 8
    budget = next(cb for cb in fit.trainer.callbacks if type(cb).__name__ == "WallClockBudget")
    assert 0 < fit.model.training_fraction <= budget.fraction  # the LR schedule reads the agreed clock
    val_bpb = float(fit.trainer.callback_metrics["val/bpb"])
    assert 0.5 < val_bpb < 20
    export = next(cb for cb in fit.trainer.callbacks if type(cb).__name__ == "GPTQExport")
    report = json.loads(export.artifact_path.with_suffix(".json").read_text())
    assert 0 < report["total_bytes"] <= 16_000_000
    # The quantization gap: plain bpb of the trained weights (put back after the measurement) and of
    # the artifact's dequantized weights, reproduced here independently.
    dm, eval_cfg = fit.datamodule, fit.model.eval_config
    assert report["val_bpb_pre_quant"] == pytest.approx(
        plain_bpb(fit.model.gpt, dm.val_tokens(), dm.byte_luts(), eval_cfg), rel=1e-6)
    assert report["val_bpb_post_quant"] == pytest.approx(
        plain_bpb(artifact.load(export.artifact_path), dm.val_tokens(), dm.byte_luts(), eval_cfg), rel=1e-6)
    assert report["quant_gap_bpb"] == pytest.approx(report["val_bpb_post_quant"] - report["val_bpb_pre_quant"])
    assert abs(report["quant_gap_bpb"]) < 0.5
    events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard event files are written under the logger's save_dir"

    test = run_lightning_cli(["test", *common, "--artifact", str(export.artifact_path),
                              "--model.evaluation.max_docs", "24", "--model.evaluation.phased_prefix_docs", "8"])
    results = test.model.test_results
    assert results["ttt_tokens"] == results["val_tokens"] > 0
    assert abs(results["val_bpb"] - val_bpb) < 0.5  # quantized artifact scores near the trained model


@pytest.mark.slow
def test_cli_export_subcommand_and_one_line_errors(tiny_data, tmp_path, capsys):
    common = ["--config", str(TINY_CPU), "--data.data_dir", str(tiny_data.data_dir),
              "--data.vocab_size", str(tiny_data.vocab_size), "--model.gpt.vocab_size", str(tiny_data.vocab_size),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    assert main(["fit", *common, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                 "--trainer.enable_checkpointing", "true"]) == 0
    ckpt = next((tmp_path / "logs").rglob("*.ckpt"))
    # export takes the GPTQExport settings of the config (tiny calibration), not the record's
    assert main(["export", *common, "--ckpt", str(ckpt), "--out_dir", str(tmp_path / "art")]) == 0
    assert (tmp_path / "art" / "artifact.ptz").is_file()
    capsys.readouterr()

    assert main(["export", *common, "--ckpt", str(ckpt), "--out_dir", str(tmp_path / "small"),
                 "--export_config.calibration_seq_len", "128", "--export_config.calibration_batch_seqs", "2",
                 "--export_config.budget_bytes", "1000"]) == 2
    (summary,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-golf export: error:")]
    assert "over the 1,000-byte budget" in summary  # then the size table, no traceback

    assert main(["fit", *common, "--data.data_dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("lit-golf fit: error:")]
    assert "no files match" in line and "prepare-data" in line and "Traceback" not in err
