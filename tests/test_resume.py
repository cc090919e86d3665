"""A killed run resumes and continues the *same* run: `lit-golf fit` of tiny_cpu in a subprocess, killed
with SIGKILL after a checkpoint, resumed with `--ckpt_path last`, ends bit-identical to an uninterrupted
run of the same seed (weights, optimizer state, EMA, artifact bytes), in the same run folder. A run
stopped with Ctrl-C resumes with the rest of its wall-clock budget. Either way `metrics.csv` keeps the
rows the first launch logged up to its checkpoint."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TINY_CPU = REPO / "configs" / "tiny_cpu.yaml"
FIXED_STEPS_CPU = REPO / "configs" / "overrides" / "fixed_steps_cpu.yaml"
LIT_GOLF = Path(sys.executable).parent / "lit-golf"
STEPS = 20  # the configs checkpoint every 10 steps: killed after step 10's checkpoint, 10 steps left to resume


def fit_command(tiny_data, save_dir: Path, *extra: str) -> list[str]:
    launcher = [str(LIT_GOLF)] if LIT_GOLF.is_file() else [sys.executable, "-m", "lit_golf.cli"]
    return [
        *launcher, "fit", "--config", str(TINY_CPU), "--config", str(FIXED_STEPS_CPU),
        "--data.data_dir", str(tiny_data.data_dir), "--model.gpt.vocab_size", str(tiny_data.vocab_size), "--model.evaluation.max_docs", "20",
        "--data.train_batch_tokens", "1024", "--data.tokens_per_microbatch", "512",  # cheap steps
        "--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.max_steps", str(STEPS),
        "--trainer.val_check_interval", "15", *extra,
    ]


DIST_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
                  "LOCAL_WORLD_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_env() -> dict[str, str]:
    # One thread per run: both runs do the same float arithmetic, and they can share the 2-core box. Each run
    # gets its own port for its one-process gloo group (earlier in-process DDP tests leave MASTER_PORT set).
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}


def start(command: list[str], log: Path) -> subprocess.Popen:
    """Launch in the background; Ctrl-C (SIGINT) reaches it as a keyboard interrupt even when this test itself
    runs as a background job, whose shell starts it with SIGINT ignored (Python then installs no handler)."""
    return subprocess.Popen(command, cwd=REPO, env=quiet_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    assert process.wait(timeout=timeout) == 0, log.read_text()[-4000:]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def metric_rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open(newline="") as file:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(file)]


def assert_rows_kept(before: list[dict], run: Path, checkpoint_step: int) -> None:
    """The rows a stopped launch logged up to its checkpoint open the resumed run's metrics.csv, once."""
    kept = [row for row in before if int(row["step"]) <= checkpoint_step]
    assert kept and any("checkpoint/write_s" in row for row in kept)
    after = metric_rows(run)
    assert after[:len(kept)] == kept
    assert all(int(row["step"]) > checkpoint_step for row in after[len(kept):])


def assert_same_tensors(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), f"{what}: {key} differs"
        elif isinstance(value, dict):
            assert_same_tensors(got[key], value, f"{what}.{key}")
        else:
            assert got[key] == value, f"{what}: {key}"


@pytest.mark.slow
def test_killed_fixed_step_run_resumes_bit_identical_into_the_same_folder(tiny_data, tmp_path):
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight = start(fit_command(tiny_data, straight_dir), tmp_path / "straight.log")
    killed = start(fit_command(tiny_data, killed_dir), tmp_path / "killed.log")
    run = killed_dir / "tiny_cpu" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.is_file() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)  # kill -9: no handler runs, no final checkpoint
    assert killed.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-4000:]
    killed_at = load(last)["global_step"]
    assert 10 <= killed_at < STEPS
    assert not (run / "artifact" / "artifact.ptz").exists()
    logged = metric_rows(run)  # flushed with each checkpoint: kill -9 runs no handler

    resumed = start(fit_command(tiny_data, killed_dir, "--ckpt_path", "last"), tmp_path / "resumed.log")
    finish(resumed, tmp_path / "resumed.log")
    finish(straight, tmp_path / "straight.log")
    log = (tmp_path / "resumed.log").read_text()
    assert "resuming" in log and "data: resuming the train stream" in log, log[-4000:]

    # the same run folder: no second version, both launches' events and the artifact in version_0
    assert sorted(p.name for p in (killed_dir / "tiny_cpu").iterdir()) == ["version_0"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    assert_rows_kept(logged, run, killed_at)
    reference = straight_dir / "tiny_cpu" / "version_0"
    want, got = load(reference / "checkpoints" / "last.ckpt"), load(last)
    assert want["global_step"] == got["global_step"] == STEPS
    assert_same_tensors(got["state_dict"], want["state_dict"], "weights")
    assert_same_tensors(got["optimizer_states"][0]["state"], want["optimizer_states"][0]["state"], "optimizer")
    ema = next(k for k in want["callbacks"] if k.startswith("EMA"))
    assert_same_tensors(got["callbacks"][ema], want["callbacks"][ema], "EMA")
    assert got["looping_active"] == want["looping_active"]
    assert got["GolfDataModule"]["position"] == want["GolfDataModule"]["position"]
    want_bytes = (reference / "artifact" / "artifact.ptz").read_bytes()
    assert (run / "artifact" / "artifact.ptz").read_bytes() == want_bytes


BUDGET, RESERVE = 8.0, 0.5
# A checkpoint after every step and a budget check after every step: the kill lands after the first step
# and the budget overshoots by at most one step, whatever this machine's step time (the bounds below use it).
WALL_CLOCK_OVERLAY = f"""
trainer:
  max_steps: 10000
  log_every_n_steps: 2
wallclock: {{budget_seconds: {BUDGET}, reserve_seconds: {RESERVE}, sync_every_steps: 1}}
checkpoint: {{every_n_train_steps: 1}}
"""


def state_of(ckpt: dict, name: str) -> dict:
    return next(v for k, v in ckpt["callbacks"].items() if k.startswith(name))


@pytest.mark.slow
def test_wall_clock_run_stopped_with_ctrl_c_resumes_with_the_remaining_budget(tiny_data, tmp_path):
    overlay = tmp_path / "wall_clock.yaml"
    overlay.write_text(WALL_CLOCK_OVERLAY)
    save_dir = tmp_path / "logs"
    command = [*fit_command(tiny_data, save_dir), "--config", str(overlay), "--trainer.max_steps", "10000",
               "--trainer.val_check_interval", "10000"]
    killed = start(command, tmp_path / "killed.log")
    run = save_dir / "tiny_cpu" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.is_file() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGINT)  # Ctrl-C: Lightning shuts down and exits 1; no final checkpoint
    assert killed.wait(timeout=60) == 1, (tmp_path / "killed.log").read_text()[-4000:]
    assert "Detected KeyboardInterrupt" in (tmp_path / "killed.log").read_text()
    at_kill = load(last)
    logged = metric_rows(run)
    spent = state_of(at_kill, "WallClockBudget")["elapsed_seconds"]
    assert 0 < spent < BUDGET - RESERVE, f"the first checkpoint came after the budget ({spent:.1f} s): steps too slow"
    step_seconds = at_kill["training_seconds"] / at_kill["global_step"]  # this machine's, for the bounds
    overshoot = 2 * step_seconds + 1.0

    resumed = start([*command, "--ckpt_path", "last"], tmp_path / "resumed.log")
    finish(resumed, tmp_path / "resumed.log")
    final = load(last)  # RunCheckpoint also saves the step at which the budget stopped training
    assert final["global_step"] > at_kill["global_step"]
    total = state_of(final, "WallClockBudget")["elapsed_seconds"]
    # the budget is spent once in all: the time before the checkpoint counts, the resumed launch adds the rest
    assert BUDGET - RESERVE <= total < BUDGET - RESERVE + overshoot
    this_launch = final["training_seconds"] - at_kill["training_seconds"]  # the module's one training clock
    assert this_launch == pytest.approx(total - spent, abs=1.5)
    assert this_launch < BUDGET - RESERVE - spent + overshoot
    assert sorted(p.name for p in (save_dir / "tiny_cpu").iterdir()) == ["version_0"]
    assert_rows_kept(logged, run, at_kill["global_step"])


def test_last_picks_the_newest_run_and_reuses_its_folder(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.trainer.states import TrainerFn

    from lit_golf.callbacks.checkpoint import RunCheckpoint

    root = tmp_path / "logs" / "tiny_cpu"
    for version, step in (("version_1", 7), ("version_0", 3)):  # version_0 written last: it is the newest
        (root / version / "checkpoints").mkdir(parents=True)
        torch.save({"global_step": step, "state_dict": {"gpt.w": torch.zeros(1)}}, root / version / "checkpoints" / "last.ckpt")
        time.sleep(0.02)
    logger = TensorBoardLogger(save_dir=str(tmp_path / "logs"), name="tiny_cpu")
    trainer = SimpleNamespace(logger=logger, state=SimpleNamespace(fn=TrainerFn.FITTING), max_steps=-1,
                              lightning_module=None)
    latest = RunCheckpoint().continue_latest_run(trainer)
    assert latest == root / "version_0" / "checkpoints" / "last.ckpt"
    assert Path(logger.log_dir) == root / "version_0" and logger._kwargs["purge_step"] == 4
    fixed = TensorBoardLogger(save_dir=str(tmp_path / "logs"), name="tiny_cpu", version=5)
    assert RunCheckpoint().continue_latest_run(SimpleNamespace(logger=fixed)) is None  # a chosen version stays

    empty = TensorBoardLogger(save_dir=str(tmp_path / "none"), name="tiny_cpu")
    callback = RunCheckpoint()
    testing = SimpleNamespace(logger=empty, loggers=[empty], state=SimpleNamespace(fn=TrainerFn.TESTING),
                              default_root_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--ckpt last: no last.ckpt"):
        callback._find_last_checkpoints(testing)
