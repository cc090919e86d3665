"""Training callbacks on a real Lightning Trainer (CPU) with a tiny module and a fake clock."""

from __future__ import annotations

import csv
import errno
import itertools
import json
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_golf.callbacks.ema import EMA, float_state
from lit_golf.callbacks.progress import GolfProgressBar
from lit_golf.callbacks.throughput import Throughput, device_peak_flops, flops_per_token
from lit_golf.callbacks.wallclock import BudgetAgreement, WallClockBudget
from lit_golf.config import GPTConfig
from lit_golf.progress import TrainingProgress

# ------------------------------------------------------------------------- fake clock
# A module-level clock (not an object) so that ddp_spawn children each read their own copy.
_NOW = [0.0]


def fake_clock() -> float:
    return _NOW[0]


@pytest.fixture(autouse=True)
def reset_clock():
    _NOW[0] = 1000.0


# ------------------------------------------------------------------------- tiny module
class TinyGPT(nn.Module):
    """fp32 weights, a bf16 gain, a float buffer and an integer buffer: every case EMA must handle."""

    def __init__(self, bf16_gain: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.gain = nn.Parameter(torch.ones(4, dtype=torch.bfloat16 if bf16_gain else torch.float32))
        self.register_buffer("scale", torch.ones(4))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.proj(x) * self.gain.float() * self.scale - 1.0) ** 2).mean()


class TinyGolfModule(L.LightningModule):
    """Honours the module contract (`progress`, driven from the hooks as `GolfLightningModule` does);
    each step/validation batch advances the fake clock.

    `step_seconds(rank, index)` gives the duration of training step `index` on `rank`.
    """

    def __init__(self, step_seconds=lambda rank, index: 0.125, val_seconds: float = 0.0,
                 warmup_seconds: float = 0.0, tokens_per_step: int = 1000, record_dir: str | None = None,
                 bf16_gain: bool = True) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.gpt = TinyGPT(bf16_gain)
        self.progress = TrainingProgress(clock=fake_clock)
        self.progress.tokens_per_step = tokens_per_step
        self.step_seconds = step_seconds
        self.val_seconds = val_seconds
        self.warmup_seconds = warmup_seconds
        self.record_dir = record_dir
        self.fractions: list[float] = []
        self.trajectory: list[dict[str, torch.Tensor]] = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.gpt.parameters(), lr=0.05)

    def on_train_start(self) -> None:
        _NOW[0] += self.warmup_seconds  # compile warm-up: must not count

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.progress.clock.train_batch_started(self.device)

    def on_validation_start(self) -> None:
        self.progress.clock.validation_started(self.device)

    def on_validation_end(self) -> None:
        self.progress.clock.validation_ended(self.device)

    def training_step(self, batch, batch_idx):
        self.fractions.append(self.progress.fraction(self.global_step, self.trainer.max_steps))
        optimizer = self.optimizers()
        loss = self.gpt(batch[0])
        self.manual_backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            self.gpt.scale.mul_(0.99)  # a buffer that changes, so its EMA is not trivial
        self.progress.last_loss = loss.detach()
        self.trajectory.append({k: v.detach().float().clone() for k, v in float_state(self.gpt).items()})
        _NOW[0] += self.step_seconds(self.global_rank, len(self.fractions) - 1)

    def validation_step(self, batch, batch_idx):
        _NOW[0] += self.val_seconds

    def on_train_end(self) -> None:
        if self.record_dir is not None:
            budget = next(cb for cb in self.trainer.callbacks if isinstance(cb, WallClockBudget))
            record = {"fractions": self.fractions, "elapsed": budget.elapsed_seconds}
            Path(self.record_dir, f"rank{self.global_rank}.json").write_text(json.dumps(record))


class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append((step, dict(metrics)))

    def metric(self, key: str) -> list[tuple[int, float]]:
        return [(step, m[key]) for step, m in self.records if key in m]


def loader(n: int = 64) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 2, 4)), batch_size=None)


def fit(module, callbacks, *, max_steps=100, logger=False, val_every=None, accelerator="cpu"):
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_steps=max_steps, callbacks=callbacks, logger=logger,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
        val_check_interval=val_every, limit_val_batches=1 if val_every else 0,
    )
    trainer.fit(module, train_dataloaders=loader(),
                val_dataloaders=loader(4) if val_every else None)
    return trainer


def first_step_reaching(step_times: list[float], budget: float) -> int:
    """1-based step after which the true training time first reaches the budget."""
    return next(i + 1 for i, total in enumerate(itertools.accumulate(step_times)) if total >= budget)


# ------------------------------------------------------------------------- WallClockBudget
def test_budget_stops_at_the_first_step_reaching_the_effective_budget():
    budget = WallClockBudget(budget_seconds=1.5, reserve_seconds=0.5, sync_every_steps=3)
    module = TinyGolfModule()
    fit(module, [budget])
    expected = first_step_reaching([0.125] * 100, budget.effective_budget)
    assert len(module.fractions) == expected
    assert budget.elapsed_seconds == pytest.approx(expected * 0.125)
    assert budget.remaining_seconds == 0.0
    assert module.fractions == sorted(module.fractions) and module.fractions[0] == 0.0
    # After the first agreement, the fraction at the start of step k is the true time of k steps.
    for k, fraction in enumerate(module.fractions[3:], start=3):
        assert fraction == pytest.approx(k * 0.125 / budget.effective_budget)


def test_budget_stops_on_measured_time_when_extrapolation_overshoots():
    """A slow start makes the extrapolation run ahead; the stop still waits for measured time."""
    times = [0.375] * 3 + [0.125] * 97
    budget = WallClockBudget(budget_seconds=1.75, reserve_seconds=0.0, sync_every_steps=3)
    module = TinyGolfModule(step_seconds=lambda rank, i: times[i])
    fit(module, [budget])
    # The extrapolation (0.375 s/step) reaches 1.75 s after step 5; measured time only after step 8.
    assert len(module.fractions) == first_step_reaching(times, 1.75) == 8
    assert module.fractions == sorted(module.fractions)
    assert max(module.fractions) < 1.0


def test_budget_excludes_validation_and_warmup_time():
    budget = WallClockBudget(budget_seconds=1.0, reserve_seconds=0.0, sync_every_steps=2)
    module = TinyGolfModule(val_seconds=50.0, warmup_seconds=300.0)
    fit(module, [budget], val_every=3)
    assert len(module.fractions) == first_step_reaching([0.125] * 100, 1.0)
    assert budget.elapsed_seconds == pytest.approx(1.0)


def test_budget_logs_train_time_at_agreement_points():
    logger = RecordingLogger()
    budget = WallClockBudget(budget_seconds=1.0, reserve_seconds=0.0, sync_every_steps=2)
    fit(TinyGolfModule(), [budget], logger=logger)
    logged = logger.metric("train/time_s")
    assert [step for step, _ in logged] == list(range(2, 9, 2))
    assert [seconds for _, seconds in logged] == pytest.approx([0.125 * s for s, _ in logged])


def test_budget_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reserve_seconds .* < budget_seconds"):
        WallClockBudget(budget_seconds=3.0, reserve_seconds=4.0)
    with pytest.raises(ValueError, match="sync_every_steps=0"):
        WallClockBudget(sync_every_steps=0)


def test_budget_state_round_trip_keeps_time_spent():
    first = WallClockBudget(budget_seconds=2.0, reserve_seconds=0.0, sync_every_steps=2)
    fit(TinyGolfModule(), [first], max_steps=6)
    resumed = WallClockBudget(budget_seconds=2.0, reserve_seconds=0.0, sync_every_steps=2)
    resumed.load_state_dict(first.state_dict())
    module = TinyGolfModule()
    module.progress.clock.resume_at(first.elapsed_seconds)  # what the module's checkpoint restores
    fit(module, [resumed])
    assert module.fractions[0] == pytest.approx(6 * 0.125 / 2.0)
    assert len(module.fractions) == first_step_reaching([0.125] * 100, 2.0) - 6


def test_agreement_gives_identical_decisions_on_ranks_with_different_clocks():
    """Simulated 2 ranks with a fake MAX all-reduce: estimates and stop step agree exactly."""
    budget = 10.0
    step_times = {0: [0.05 + 0.01 * (i % 3) for i in range(400)], 1: [0.06 + 0.02 * (i % 5) for i in range(400)]}
    ranks = {r: BudgetAgreement(sync_every_steps=7) for r in step_times}
    estimates: dict[int, list[float]] = {0: [], 1: []}
    for steps in range(1, 401):
        due = {r: a.is_due(steps, budget) for r, a in ranks.items()}
        assert due[0] == due[1]
        if due[0]:
            agreed = max(sum(t[:steps]) for t in step_times.values())  # the fake all-reduce
            for a in ranks.values():
                a.agree(steps, agreed)
        for r, a in ranks.items():
            estimates[r].append(a.estimate(steps))
        if estimates[0][-1] >= budget:
            break
    assert estimates[0] == estimates[1]
    slowest = max(step_times.values(), key=sum)
    assert len(estimates[0]) == first_step_reaching(slowest, budget)


@pytest.mark.slow
def test_budget_two_gloo_processes_stop_at_the_same_step(tmp_path):
    budget = WallClockBudget(budget_seconds=3.0, reserve_seconds=0.5, sync_every_steps=4)
    module = TinyGolfModule(step_seconds=skewed_step_seconds, record_dir=str(tmp_path), bf16_gain=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=100, callbacks=[budget],
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader())
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert records[0] == records[1]
    fractions = records[0]["fractions"]
    assert fractions == sorted(fractions)
    slowest = [skewed_step_seconds(1, i) for i in range(100)]  # rank 1 is slower at every step
    assert len(fractions) == first_step_reaching(slowest, 2.5)


def skewed_step_seconds(rank: int, index: int) -> float:
    return 0.0625 * (1 + rank) + 0.03125 * (index % 3)


# ------------------------------------------------------------------------- EMA
def test_ema_tracks_hand_computed_average_and_is_swapped_in_at_train_end():
    ema = EMA(decay=0.8)
    module = TinyGolfModule()
    initial = {k: v.detach().float().clone() for k, v in float_state(module.gpt).items()}
    fit(module, [ema], max_steps=7)
    expected = dict(initial)
    for weights in module.trajectory:
        expected = {k: 0.8 * expected[k] + 0.2 * weights[k] for k in expected}
    assert set(ema.shadow) == {"proj.weight", "proj.bias", "gain", "scale"}  # integer buffer skipped
    for name, average in expected.items():
        assert ema.shadow[name].dtype == torch.float32
        torch.testing.assert_close(ema.shadow[name], average)
    live = float_state(module.gpt)
    assert live["gain"].dtype == torch.bfloat16
    for name, average in ema.shadow.items():
        assert torch.equal(live[name], average.to(live[name].dtype))
    assert not torch.equal(live["proj.weight"], module.trajectory[-1]["proj.weight"])


def test_ema_resumes_from_its_checkpoint_state():
    ema = EMA(decay=0.5)
    fit(TinyGolfModule(), [ema], max_steps=3)
    saved = {k: v.clone() for k, v in ema.state_dict()["shadow"].items()}
    resumed = EMA(decay=0.5)
    resumed.load_state_dict(ema.state_dict())
    module = TinyGolfModule()
    fit(module, [resumed], max_steps=1)
    expected = {k: 0.5 * saved[k] + 0.5 * module.trajectory[0][k] for k in saved}
    for name in saved:
        torch.testing.assert_close(resumed.shadow[name], expected[name])


def test_ema_rejects_bad_decay_and_mismatched_checkpoint():
    with pytest.raises(ValueError, match="decay=1.0"):
        EMA(decay=1.0)
    ema = EMA()
    ema.load_state_dict({"decay": 0.9, "shadow": {"other.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match="checkpoint has no average for"):
        fit(TinyGolfModule(), [ema], max_steps=1)


# ------------------------------------------------------------------------- Throughput
def test_throughput_from_fake_clock_excludes_validation(caplog):
    logger = RecordingLogger()
    throughput = Throughput(log_every_n_steps=4, peak_flops=1e6)
    module = TinyGolfModule(step_seconds=lambda rank, i: 0.25, val_seconds=30.0)
    with caplog.at_level(logging.INFO, logger="lit_golf"):
        fit(module, [throughput], max_steps=8, logger=logger, val_every=3)
    expected_mfu = 6 * sum(p.numel() for p in module.gpt.parameters()) * 4000.0 / 1e6
    assert logger.metric("train/tokens_per_s") == [(4, pytest.approx(4000.0)), (8, pytest.approx(4000.0))]
    assert logger.metric("train/step_ms") == [(4, pytest.approx(250.0)), (8, pytest.approx(250.0))]
    assert [v for _, v in logger.metric("train/mfu")] == pytest.approx([expected_mfu] * 2)
    assert logger.metric("train/loss")[-1][1] == pytest.approx(float(module.progress.last_loss))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 2
    assert lines[-1].startswith(f"step 8/8 loss {float(module.progress.last_loss):.4f} tok/s 4,000 step 250.0ms mfu ")
    assert lines[-1].endswith("train_time 0.0m")


def test_throughput_resumes_its_step_count_and_the_module_clock():
    first_module = TinyGolfModule(step_seconds=lambda rank, i: 0.25)
    first = Throughput(log_every_n_steps=4)
    fit(first_module, [first], max_steps=8)
    assert first.state_dict() == {"steps": 8}
    resumed = Throughput(log_every_n_steps=4)
    resumed.load_state_dict(first.state_dict())
    module = TinyGolfModule(step_seconds=lambda rank, i: 0.5)
    module.progress.clock.resume_at(first_module.progress.clock.read())  # what the module's checkpoint restores
    fit(module, [resumed], max_steps=4)
    assert resumed.last.train_seconds == pytest.approx(4.0)  # 2 s before the checkpoint + 4 x 0.5 s
    assert resumed.last.step_ms == pytest.approx(500.0)  # the rate covers this launch's steps only
    assert resumed.state_dict() == {"steps": 12}


def test_throughput_follows_the_trainers_log_every_n_steps_and_logs_the_step_numbers():
    logger = RecordingLogger()
    module = TinyGolfModule()
    module.progress.grad_norm = torch.tensor(0.75)
    module.progress.lr_multiplier, module.progress.muon_momentum = 0.5, 0.9
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=6, callbacks=[Throughput()], logger=logger,
                        log_every_n_steps=3, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader())
    assert [step for step, _ in logger.metric("train/loss")] == [3, 6]
    assert logger.metric("train/grad_norm") == [(3, 0.75), (6, 0.75)]
    assert logger.metric("train/lr_multiplier")[-1] == (6, 0.5)
    assert logger.metric("train/muon_momentum")[-1] == (6, pytest.approx(0.9))


def test_throughput_skips_mfu_without_peak_on_cpu():
    logger = RecordingLogger()
    throughput = Throughput(log_every_n_steps=2)
    fit(TinyGolfModule(), [throughput], max_steps=2, logger=logger)
    assert throughput.last is not None and throughput.last.mfu is None
    assert "mfu" not in throughput.last.line() and logger.metric("train/mfu") == []


def test_flops_per_token_counts_looped_layers_and_attention():
    class Stub(nn.Module):
        def __init__(self, config: GPTConfig) -> None:
            super().__init__()
            self.config = config
            self.looping_active = False
            self.weight = nn.Parameter(torch.zeros(1000))

    config = GPTConfig(num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2, num_loops=1,
                       loop_start=1, loop_end=2, rope_dims=4)
    model = Stub(config)
    plain = flops_per_token(model, seq_len=64)
    assert plain == 6 * 1000 + 6 * 4 * 32 * 64
    model.looping_active = True
    per_layer = 2 * 32 * 32 + 2 * config.kv_dim * 32 + 2 * config.hidden_dim * 32
    assert flops_per_token(model, seq_len=64) == 6 * (1000 + 2 * per_layer) + 6 * 6 * 32 * 64
    assert flops_per_token(nn.Linear(3, 2), seq_len=64) == 6 * 8


# ------------------------------------------------------------------------- progress bar
class CountingLoss:
    """Stands in for the loss tensor and counts host reads (each would be a device sync)."""

    def __init__(self) -> None:
        self.reads = 0

    def __float__(self) -> float:
        self.reads += 1
        return 2.5


def test_progress_bar_postfix_and_reads_loss_only_on_refresh():
    bar = GolfProgressBar(refresh_rate=3)
    budget = WallClockBudget(budget_seconds=10.0, reserve_seconds=0.0, sync_every_steps=2)
    module = TinyGolfModule(step_seconds=lambda rank, i: 0.5)
    loss = CountingLoss()
    module.training_step = wrap_with_fixed_loss(module.training_step, module, loss)
    trainer = fit(module, [budget, bar], max_steps=9)
    assert loss.reads == 9 // 3 + 1  # three refreshes and the epoch-end update
    postfix = bar.train_progress_bar.postfix
    remaining = budget.effective_budget - 9 * 0.5
    assert postfix == f"step={trainer.global_step}, loss=2.5000, tok/s=2,000, left=0:{round(remaining):02d}"
    # the bar's total (tqdm's ETA) is the budget's estimate of the final step, not max_steps: 9 + 5.5 s / 0.5 s
    assert bar.train_progress_bar.total == 9 + round(remaining / 0.5)


def wrap_with_fixed_loss(training_step, module, loss):
    def step(batch, batch_idx):
        training_step(batch, batch_idx)
        module.progress.last_loss = loss

    return step


# ------------------------------------------------------------------------- records: atomic, never rewritten
class HalfWritten:
    """A file opened for writing on a disk that fills: the first write stores half its bytes, then ENOSPC."""

    def __init__(self, path, mode="wb", *args, **kwargs) -> None:
        self.file = open(path, mode, *args, **kwargs)  # noqa: SIM115 (closed in __exit__)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def write(self, data) -> None:
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def record_writers(folder: Path) -> dict:
    """Each kind of record a run writes, through the writer the run uses: name -> (file, write(version))."""
    from lit_golf.export.serialize import write_artifact
    from lit_golf.files import append_atomic, copy_atomic
    from lit_golf.loggers import KeptRowsWriter
    from lit_golf.results import RunResults, update_results

    def script(version: int) -> None:
        (folder / "source.py").write_text(f"print({version})\n" * 100)
        copy_atomic(folder / "source.py", folder / "train_gpt.py")

    def metrics(version: int) -> None:
        writer = KeptRowsWriter(str(folder))
        writer.log_metrics({f"loss_{version}": 1.0}, step=version)  # a new column: the whole file is rewritten
        writer.save()

    return {
        "results.json": (folder / "results.json", lambda v: update_results(folder, RunResults(seed=v, steps=100 * v))),
        "artifact.ptz": (folder / "artifact.ptz", lambda v: write_artifact(folder / "artifact.ptz", bytes([v]) * 4096)),
        "train_gpt.py": (folder / "train_gpt.py", script),
        "metrics.csv": (folder / "metrics.csv", metrics),
        "train.log": (folder / "train.log", lambda v: append_atomic(folder / "train.log", f"line {v}\n" * 100)),
    }


@pytest.mark.parametrize("record", ["results.json", "artifact.ptz", "train_gpt.py", "metrics.csv", "train.log"])
def test_a_disk_that_fills_mid_write_leaves_the_previous_record_intact(record, tmp_path, monkeypatch):
    from lit_golf import files

    path, write = record_writers(tmp_path)[record]
    write(1)
    before = path.read_bytes()
    monkeypatch.setattr(files, "open", HalfWritten, raising=False)
    with pytest.raises(OSError, match="No space left on device") as failed:
        write(2)
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(path)  # the one-line error names it
    assert path.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_a_checkpoint_that_fails_mid_write_keeps_the_previous_last_ckpt(tmp_path):
    from types import SimpleNamespace

    from lit_golf.callbacks.checkpoint import RunCheckpoint

    last = tmp_path / "checkpoints" / "last.ckpt"

    def save_checkpoint(path, weights_only=False, fill=False):
        data = b"step-%d " % trainer.global_step * 1000
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data[: len(data) // 2] if fill else data)
        if fill:
            raise OSError(errno.ENOSPC, "No space left on device")

    trainer = SimpleNamespace(is_global_zero=True, global_step=10, loggers=[], save_checkpoint=save_checkpoint)
    callback = RunCheckpoint()
    callback._save_checkpoint(trainer, str(last))
    saved = last.read_bytes()
    trainer.global_step = 20
    trainer.save_checkpoint = lambda path, weights_only=False: save_checkpoint(path, fill=True)
    with pytest.raises(OSError, match="No space left on device") as failed:
        callback._save_checkpoint(trainer, str(last))
    assert failed.value.filename == str(last)
    assert last.read_bytes() == saved and [p.name for p in last.parent.iterdir()] == ["last.ckpt"]


def test_a_tests_scores_complete_the_fit_record_once_and_keep_the_fits_fields(tmp_path):
    from lit_golf.results import RunResults, add_test_scores, read_results, update_results

    run = tmp_path / "version_0"
    update_results(run, RunResults(seed=11, steps=60, model_bytes=1234))
    (run / "train.log").write_text("fit line\n")
    tests = []
    for n, (seed, bpb) in enumerate(((1337, 2.5), (7, 2.4))):
        test = run / f"test_{n}"
        update_results(test, RunResults(seed=seed, steps=None, evaluated="artifact", val_bpb=bpb, final_bpb=bpb,
                                        final_loss=1.0, eval_seconds=3.0))
        tests.append(add_test_scores(run, test, f"evaluation: val_bpb={bpb}\n"))
    assert tests == [True, False]  # the first test completes the record; a later one has its own folder only
    recorded = read_results(run)
    assert (recorded["seed"], recorded["steps"], recorded["model_bytes"]) == (11, 60, 1234)
    assert (recorded["final_bpb"], recorded["test_dir"]) == (2.5, "test_0")
    assert (run / "train.log").read_text() == "fit line\nevaluation: val_bpb=2.5\n"
    assert read_results(run / "test_1")["final_bpb"] == 2.4


def test_metrics_csv_of_a_resumed_run_keeps_the_rows_before_its_checkpoint(tmp_path):
    from lit_golf.loggers import KeptRowsWriter

    first = KeptRowsWriter(str(tmp_path))
    for step in (2, 4, 6, 8):
        first.log_metrics({"train/loss": 10.0 - step}, step=step)
    first.save()  # killed after step 8; the checkpoint it resumes from is at step 5
    resumed = KeptRowsWriter(str(tmp_path), keep_before=6)
    for step in (6, 8):
        resumed.log_metrics({"train/loss": 1.0, "val/bpb": 2.0}, step=step)
    resumed.save()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [(r["step"], r["train/loss"], r["val/bpb"]) for r in rows] == [
        ("2", "8.0", ""), ("4", "6.0", ""), ("6", "1.0", "2.0"), ("8", "1.0", "2.0")]


def test_a_fit_with_the_logger_off_is_refused_before_it_writes(tmp_path):
    from types import SimpleNamespace

    from lit_golf.callbacks.results import RecordResults

    callback = RecordResults()
    with pytest.raises(ValueError, match="trainer.logger is off"):
        callback.setup(SimpleNamespace(loggers=[]), None, "fit")
    assert callback.run_dir is None and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- CUDA path
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_callbacks_on_cuda_sync_average_and_report_mfu():
    ema = EMA(decay=0.8)
    budget = WallClockBudget(budget_seconds=1.0, reserve_seconds=0.0, sync_every_steps=2)
    throughput = Throughput(log_every_n_steps=2)
    module = TinyGolfModule()
    initial = {k: v.detach().float().clone().cuda() for k, v in float_state(module.gpt).items()}
    fit(module, [budget, ema, throughput], accelerator="gpu")
    assert len(module.fractions) == first_step_reaching([0.125] * 100, 1.0)
    expected = initial
    for weights in module.trajectory:
        expected = {k: 0.8 * expected[k] + 0.2 * weights[k] for k in expected}
    for name, average in expected.items():
        assert ema.shadow[name].is_cuda and ema.shadow[name].dtype == torch.float32
        torch.testing.assert_close(ema.shadow[name], average)
    if device_peak_flops(torch.device("cuda")) is not None:
        assert throughput.last.mfu is not None and throughput.last.mfu > 0
