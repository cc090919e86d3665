"""Training through the real Lightning Trainer on CPU: the CLI end to end, the invisible compile
warm-up, and DDP on two gloo processes against one process with the same global batch."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from test_eval_support import small_gpt

from lit_golf import artifact
from lit_golf.cli import main, run_lightning_cli
from lit_golf.data.datamodule import GolfDataModule
from lit_golf.eval.runner import plain_bpb
from lit_golf.module import GolfLightningModule
from lit_golf.optim import BANK_NAMES, OptimConfig
from lit_golf.schedule import TrainingConfig, lr_multiplier
from lit_golf.strategy import GolfDDPStrategy

REPO = Path(__file__).resolve().parent.parent
TINY_CPU = REPO / "configs" / "tiny_cpu.yaml"
FIXED_STEPS_CPU = REPO / "configs" / "overrides" / "fixed_steps_cpu.yaml"  # no wall clock: tests count steps



def datamodule(tiny_data, tokens_per_microbatch: int) -> GolfDataModule:
    return GolfDataModule(data_dir=str(tiny_data.data_dir), vocab_size=tiny_data.vocab_size, train_seq_len=128,
                          train_batch_tokens=1024, tokens_per_microbatch=tokens_per_microbatch, eval_seq_len=128,
                          val_batch_seqs=4, cu_bucket=16, cu_min_len=32, max_val_docs=20)


def fit_weights(tiny_data, *, steps: int, warmup: bool = False, devices: int = 1, tokens_per_microbatch=512,
                out: Path | None = None, optim: OptimConfig | None = None,
                callbacks: list[L.Callback] | None = None, **gpt_overrides) -> dict[str, torch.Tensor]:
    """Fit a small GPT for `steps` steps; returns rank 0's final weights (also saved to `out` per rank)."""
    L.seed_everything(0)
    gpt = dataclasses.replace(small_gpt(tiny_data.vocab_size), **gpt_overrides)
    module = GolfLightningModule(gpt=gpt, optim=optim,
                                 training=TrainingConfig(compile=False, compile_warmup=False))
    callbacks = [*(callbacks or []), *([WarmupNow()] if warmup else [])]
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


class RoundBankGradientsPerMicroBatch(L.Callback):
    """Round each micro-batch's bank gradient to bf16 before autograd sums them (in fp32; the optimizer
    then rounds the sum to bf16): what the 2-rank reduce-scatter does with each rank's half."""

    def on_fit_start(self, trainer, pl_module):
        for name in BANK_NAMES:
            getattr(pl_module.gpt, name).register_hook(lambda grad: grad.to(torch.bfloat16).to(grad.dtype))


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
def test_two_process_gloo_ddp_matches_one_process_with_the_same_global_batch(tiny_data, tmp_path, monkeypatch):
    """2 gloo processes x 1 micro-batch end with exactly the weights of 1 process x 2 micro-batches.

    Exact by construction, so no tolerance. Micro-batch m of the one process is rank m's (same tokens,
    shapes and kernels). It backprops loss / 2 where a rank backprops loss and the optimizer halves
    it: halving is exact. Replicated gradients are summed in fp32 on both sides. Each rank rounds its
    bank half to bf16 and the gloo reduce-scatter adds the halves in fp32, rounding the sum to bf16;
    the reference rounds each half with `RoundBankGradientsPerMicroBatch` and the optimizer rounds the
    sum. (Without that, a bf16 ulp here and there, spread by bf16 Newton-Schulz and blown up by AdamW,
    which steps ~lr whatever a near-zero gradient's size, left scalars 2e-2 apart after 3 steps.)
    Clipping runs, its norm all-reduce included, but never binds: the norm is summed in another order
    from per-rank partial squares, so a binding factor could differ in its last bit; a binding clip
    across ranks is checked in tests/test_optim_distributed.py.
    """
    # One thread everywhere: here, where the weights every rank starts from are initialized
    # (orthogonal_'s QR depends on the thread count), and in the spawned ranks (Lightning keeps the
    # OMP_NUM_THREADS it finds).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    no_binding_clip = OptimConfig(grad_clip_norm=1e9)
    try:
        one = fit_weights(tiny_data, steps=3, tokens_per_microbatch=512, optim=no_binding_clip,
                          callbacks=[RoundBankGradientsPerMicroBatch()])  # 2 micro-batches x 1 rank
        fit_weights(tiny_data, steps=3, devices=2, tokens_per_microbatch=512, optim=no_binding_clip,
                    out=tmp_path)  # 1 micro-batch x 2 ranks
    finally:
        torch.set_num_threads(threads)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert one.keys() == rank0.keys() == rank1.keys()
    for name in one:
        # Both ranks hold exactly the same weights: the optimizer all-gathers one update for everyone.
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.equal(rank0[name], one[name]), (name, (rank0[name].float() - one[name].float()).abs().max())


def test_a_micro_batch_longer_than_the_rotary_tables_trains_the_same_and_says_so(tiny_data, caplog):
    """Rows longer than `rope_table_positions` compute their tables per step: the same weights, and one log line
    naming the setting that would build them once."""
    with caplog.at_level(logging.INFO, logger="lit_golf"):
        short = fit_weights(tiny_data, steps=2, rope_table_positions=256)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rotary tables:")]
    assert said == ["rotary tables: 256 positions built, a micro-batch row has 512: each step computes its own "
                    "(slower; model.gpt.rope_table_positions 512 or more builds them once)"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lit_golf"):
        built = fit_weights(tiny_data, steps=2)
    assert not [r for r in caplog.records if r.getMessage().startswith("rotary tables:")]
    for name, weight in built.items():
        torch.testing.assert_close(short[name], weight, rtol=1e-5, atol=1e-6, msg=name)


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
    common = ["--config", str(TINY_CPU), "--config", str(FIXED_STEPS_CPU), "--data.data_dir", str(tiny_data.data_dir),
              "--model.gpt.vocab_size", str(tiny_data.vocab_size),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--model.evaluation.max_docs", "20"]
    fit = run_lightning_cli(["fit", *common, "--trainer.max_steps", "8", "--trainer.val_check_interval", "8",
                             "--trainer.log_every_n_steps", "4"])
    assert fit.trainer.global_step == 8
    assert fit.trainer.named_callbacks["wallclock"].budget_seconds is None  # fixed_steps_cpu.yaml switched it off
    training = fit.model.training_config  # the LR schedule counts steps: the last one ran at 7/8
    for group in fit.trainer.optimizers[0].param_groups:
        assert group["lr"] == pytest.approx(
            group["base_lr"] * lr_multiplier(7 / 8, training.warmdown_frac, training.min_lr))
    val_bpb = float(fit.trainer.callback_metrics["val/bpb"])
    assert 0.5 < val_bpb < 20
    export = fit.trainer.named_callbacks["gptq"]
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
    assert_observability(Path(fit.trainer.log_dir), val_bpb)

    test = run_lightning_cli(["test", *common, "--artifact", str(export.artifact_path),
                              "--model.evaluation.max_docs", "24", "--model.evaluation.global_sgd.prefix_docs", "8"])
    results = test.model.test_results
    assert results["ttt_tokens"] == results["val_tokens"] > 0
    # the test of a fit's artifact logs into its own folder inside that fit's run folder: per-phase TTT scalars
    assert Path(test.trainer.log_dir) == Path(fit.trainer.log_dir) / "test_0"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(test.trainer.log_dir))
    events.Reload()
    assert {"test/ttt_bpb_after_phase1", "test/ttt_bpb", "test/time_ttt_score_phase1_s"} <= set(events.Tags()["scalars"])
    assert {"val_bpb_pre_quant", "ttt_bpb"} <= set(json.loads((Path(fit.trainer.log_dir) / "results.json").read_text()))
    assert abs(results["val_bpb"] - val_bpb) < 0.5  # quantized artifact scores near the trained model


def assert_observability(run_dir: Path, final_val_bpb: float) -> None:
    """The fit's TensorBoard events carry the step's numbers and the final bpb; hparams hold every setting."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/lr_multiplier", "train/muon_momentum", "train/grad_norm", "train/tokens_per_s",
                "val/bpb", "hp_metric", "checkpoint/write_s", "export/quant_gap_bpb"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    # the Trainer's log_every_n_steps (4 here) sets the cadence, not a setting of the callback
    loss_steps = [e.step for e in events.Scalars("train/loss")]
    assert loss_steps == list(range(4, 9, 4))
    assert events.Scalars("hp_metric")[-1].value == pytest.approx(final_val_bpb, rel=1e-4)
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert {"EMA", "Throughput", "GolfProgressBar", "RunCheckpoint", "GPTQExport"} <= set(hparams["callbacks"])
    assert hparams["evaluation"]["ttt"]["enabled"] in (True, False) and "gpt" in hparams


@pytest.mark.slow
def test_cli_export_subcommand_and_one_line_errors(tiny_data, tmp_path, capsys):
    common = ["--config", str(TINY_CPU), "--data.data_dir", str(tiny_data.data_dir),
              "--model.gpt.vocab_size", str(tiny_data.vocab_size),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    assert main(["fit", *common, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                 "--trainer.enable_checkpointing", "true"]) == 0
    ckpt = next((tmp_path / "logs").rglob("*.ckpt"))
    # export takes the GPTQExport settings of the config (tiny calibration), not the record's
    assert main(["export", *common, "--ckpt", str(ckpt), "--out_dir", str(tmp_path / "art")]) == 0
    assert (tmp_path / "art" / "artifact.ptz").is_file()
    capsys.readouterr()

    assert main(["export", *common, "--ckpt", str(ckpt), "--out_dir", str(tmp_path / "small"),
                 "--gptq.config.calibration_seq_len", "128", "--gptq.config.calibration_batch_seqs", "2",
                 "--gptq.config.budget_bytes", "1000"]) == 2
    (summary,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-golf export: error:")]
    assert "over the 1,000-byte budget" in summary  # then the size table, no traceback

    assert main(["fit", *common, "--data.data_dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("lit-golf fit: error:")]
    assert "no files match" in line and "prepare-data" in line and "Traceback" not in err
