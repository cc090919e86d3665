"""Step-counted knobs follow the run's length: the 8-GPU record's values stay as written, one GPU rescales."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from test_callbacks import TinyGolfModule, fit, loader
from test_eval_support import TINY_GPT

from lit_golf.callbacks.ema import EMA, float_state
from lit_golf.config import GPTConfig
from lit_golf.module import GolfLightningModule
from lit_golf.optim import OptimConfig, muon_momentum
from lit_golf.progress import TimeBudget
from lit_golf.schedule import TrainingConfig, recipe_step_scale, scaled_decay, scaled_steps

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_record_config_names_its_recipe_world_size_and_fixed_steps_turn_the_wall_clock_off():
    record = yaml.safe_load((CONFIGS / "record.yaml").read_text())
    assert record["model"]["training"]["recipe_world_size"] == 8
    assert record["wallclock"]["budget_seconds"] == 600.0
    fixed = yaml.safe_load((CONFIGS / "overrides" / "fixed_steps_1gpu.yaml").read_text())
    assert fixed["wallclock"]["budget_seconds"] is None  # a fixed-step run is never rescaled


def test_eight_gpus_resolve_the_record_values_unchanged():
    scale = recipe_step_scale(8, 8, wall_clock=True)
    assert scale == 1.0
    assert scaled_decay(0.9965, scale) == 0.9965
    assert scaled_steps(1500, scale) == 1500


def test_one_gpu_wall_clock_rescales_and_fixed_steps_do_not():
    scale = recipe_step_scale(1, 8, wall_clock=True)
    assert scale == 0.125
    assert scaled_decay(0.9965, scale) == pytest.approx(0.9965**8)
    assert scaled_steps(1500, scale) == 188
    assert recipe_step_scale(1, 8, wall_clock=False) == 1.0
    assert recipe_step_scale(1, None, wall_clock=True) == 1.0
    assert recipe_step_scale(16, 8, wall_clock=True) == 2.0  # more GPUs, more steps: longer horizons
    # The averaging horizon keeps its share of the run: ~286 of ~4,550 steps on 8 GPUs, ~36 of ~570 on one.
    assert 1 / (1 - scaled_decay(0.9965, scale)) == pytest.approx(1 / (1 - 0.9965) / 8, rel=0.03)
    with pytest.raises(ValueError, match="recipe_world_size=0"):
        TrainingConfig(recipe_world_size=0)


def test_momentum_warmup_completes_within_a_rescaled_run():
    cfg = OptimConfig()
    assert muon_momentum(188, cfg, warmup_steps=188) == pytest.approx(cfg.muon_momentum)
    assert muon_momentum(188, cfg) < cfg.muon_momentum  # the recipe's own ramp is still under way
    assert muon_momentum(94, cfg, warmup_steps=188) == pytest.approx(0.945, abs=1e-3)


@pytest.mark.parametrize(("recipe", "budget", "scale", "warmup", "validation"),
                         [(8, True, 0.125, 188, 500), (8, False, 1.0, 1500, 4000), (None, True, 1.0, 1500, 4000)])
def test_module_rescales_only_a_wall_clock_run_with_a_recipe(recipe, budget, scale, warmup, validation):
    module = GolfLightningModule(gpt=GPTConfig(**TINY_GPT), training=TrainingConfig(recipe_world_size=recipe, compile=False))
    module._trainer = SimpleNamespace(world_size=1, callbacks=[], val_check_interval=4000)
    module.progress.time_budget = TimeBudget(600.0, 4.0, 10) if budget else None
    module._rescale_to_run_length()
    assert module.progress.step_scale == scale
    assert module._momentum_warmup_steps == warmup
    assert module.trainer.val_check_interval == validation  # the record's 4,000 never came in ~600 steps
    assert module._run_settings()["run_length"] == {"step_scale": scale, "muon_momentum_warmup_steps": warmup,
                                                    "val_check_interval": validation}


def test_a_fractional_validation_interval_is_a_share_of_the_epoch_and_stays():
    module = GolfLightningModule(gpt=GPTConfig(**TINY_GPT), training=TrainingConfig(recipe_world_size=8, compile=False))
    module._trainer = SimpleNamespace(world_size=1, callbacks=[], val_check_interval=0.25)
    module.progress.time_budget = TimeBudget(600.0, 4.0, 10)
    module._rescale_to_run_length()
    assert module.trainer.val_check_interval == 0.25


def ema_lag(step_scale: float, steps: int) -> float:
    """Distance of the exported average from the last raw weights, relative to how far training moved them."""
    ema = EMA(decay=0.9965)
    module = TinyGolfModule()
    module.progress.step_scale = step_scale
    initial = {k: v.detach().float().clone() for k, v in float_state(module.gpt).items()}
    fit(module, [ema], max_steps=steps)
    raw = module.trajectory[-1]
    lag = sum(float((ema.shadow[k] - raw[k].float()).norm() ** 2) for k in raw) ** 0.5
    moved = sum(float((raw[k].float() - initial[k]).norm() ** 2) for k in raw) ** 0.5
    return lag / moved


def test_one_gpu_average_stays_close_to_the_raw_weights_it_averages():
    steps = 300  # about half of what one GPU trains in 600 s: the rescaled EMA must have forgotten the start
    rescaled, as_written = ema_lag(0.125, steps), ema_lag(1.0, steps)
    assert rescaled < 0.1
    assert as_written > 0.3  # the record's decay would still export a mix with the initial weights
    assert torch.isfinite(torch.tensor([rescaled, as_written])).all()


def test_checkpoint_cadence_follows_the_run_length(tmp_path):
    from lit_golf.callbacks.checkpoint import RunCheckpoint

    saver = RunCheckpoint(every_n_train_steps=16, dirpath=str(tmp_path), save_final=False)
    module = TinyGolfModule()
    module.progress.step_scale = 0.125  # the 8-GPU cadence on one GPU: every 2 steps
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=6, callbacks=[saver], logger=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader())
    assert len(saver.write_seconds) == 3
    assert saver.every_n_train_steps == 16  # the configured value stays what the config says


def one_gpu_wall_clock_fit(tiny_data, tmp_path: Path, budget_seconds: float, max_steps: int) -> Path:
    """A tiny fit through the CLI under the 8-GPU recipe on one process (step scale 0.125); its run folder."""
    from test_resume import finish, fit_command, start

    overlay = tmp_path / "wall_clock.yaml"
    overlay.write_text(f"wallclock: {{budget_seconds: {budget_seconds}, reserve_seconds: 0.5, sync_every_steps: 1}}\n"
                       "ema: {decay: 0.99}\ncheckpoint: {every_n_train_steps: 64, save_final: false}\n"
                       "model: {training: {recipe_world_size: 8}}\n")
    save_dir = tmp_path / "logs"
    command = fit_command(tiny_data, save_dir, "--config", str(overlay), "--trainer.max_steps", str(max_steps),
                          "--trainer.val_check_interval", "24")  # every 3 steps on one GPU
    finish(start(command, tmp_path / "fit.log"), tmp_path / "fit.log")
    return save_dir / "tiny_cpu" / "version_0"


def test_a_one_gpu_wall_clock_fit_rescales_and_records_what_it_used(tiny_data, tmp_path):
    """Through the CLI: config -> module -> EMA/checkpoint at train start, in train.log and hparams."""
    # The step cap, not the clock, ends the run: how many steps fit in a time depends on the box's speed.
    run = one_gpu_wall_clock_fit(tiny_data, tmp_path, budget_seconds=600.0, max_steps=4)
    log = (run / "train.log").read_text()
    assert "step scale 0.125, Muon momentum warm-up 20 -> 2 steps, validation every 24 -> 3 steps" in log
    assert f"ema: decay 0.9900 for the recipe's run length, {0.99 ** 8:.4f} for this run" in log
    assert "checkpoint: every 64 steps for the recipe's run length, every 8 for this run" in log
    assert ("GPTQ reserve 0.5 s for the recipe's calibration share per rank, 4.0 s for this run's (step scale 0.125): "
            "training stops at 596.0 s") in log
    results = json.loads((run / "results.json").read_text())
    assert results["reserve_seconds"] == 4.0 and results["steps"] == 4
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["run_length"] == {"step_scale": 0.125, "muon_momentum_warmup_steps": 2, "val_check_interval": 3}
    assert hparams["callbacks"]["EMA"]["decay_in_use"] == pytest.approx(0.99**8)
    assert hparams["callbacks"]["WallClockBudget"]["reserve_in_use"] == 4.0
    with open(run / "metrics.csv") as metrics:  # the fit loop validated at the rescaled cadence
        validated = [int(row["step"]) for row in csv.DictReader(metrics) if row.get("val/bpb")]
    assert validated == [3 - 1]  # Lightning logs an in-training validation at the step before its trigger


def test_a_one_gpu_wall_clock_fit_stops_at_the_budget_less_the_rescaled_reserve(tiny_data, tmp_path):
    """The clock ends this one: 6 s less the 4-s reserve (0.5 s x 8) leaves 2 s of training. How far past 2 s the
    last step ends depends on the box's step time, so the bound is in this box's steps (the exact stop at the
    first step reaching the budget is test_callbacks' on simulated times)."""
    run = one_gpu_wall_clock_fit(tiny_data, tmp_path, budget_seconds=6.0, max_steps=10000)
    assert "training stops at 2.0 s" in (run / "train.log").read_text()
    results = json.loads((run / "results.json").read_text())
    assert results["reserve_seconds"] == 4.0 and results["train_seconds"] >= 2.0 and results["steps"] < 10000
    step_seconds = results["train_seconds"] / results["steps"]  # this box's, for the bound (as test_resume's)
    assert results["train_seconds"] < 2.0 + 2 * step_seconds + 1.0  # past 2 s by at most the step that reached it


@pytest.mark.parametrize(("scale", "reserve", "stops_at"), [(1.0, 4.0, 596.0), (0.125, 32.0, 568.0), (2.0, 2.0, 598.0)])
def test_gptq_reserve_follows_each_ranks_calibration_share(scale, reserve, stops_at):
    """Each rank computes Hessians over 1/W of the calibration batches: one GPU does 8x the 8-GPU share."""
    from lit_golf.callbacks.wallclock import WallClockBudget

    budget = WallClockBudget(budget_seconds=600.0, reserve_seconds=4.0)
    module = TinyGolfModule()
    module.progress.step_scale = scale
    budget.on_fit_start(None, module)
    budget.on_train_start(SimpleNamespace(world_size=8 * scale), module)
    assert (budget.reserve_seconds, budget.reserve_in_use, budget.effective_budget) == (4.0, reserve, stops_at)
    assert module.progress.time_budget.reserve_seconds == reserve
    assert module.progress.time_budget.effective_seconds == stops_at


def test_a_reserve_that_would_eat_the_whole_budget_on_fewer_gpus_is_one_clear_error():
    from lit_golf.callbacks.wallclock import WallClockBudget

    budget = WallClockBudget(budget_seconds=20.0, reserve_seconds=4.0)
    module = TinyGolfModule()
    module.progress.step_scale = 0.125
    budget.on_fit_start(None, module)
    with pytest.raises(ValueError, match=r"reserve_seconds 4 .* is 32 s on 1 GPU\(s\).*budget_seconds 20: lower"):
        budget.on_train_start(SimpleNamespace(world_size=1), module)
