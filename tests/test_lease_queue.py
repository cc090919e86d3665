"""lease/gpu_queue.sh's runner on the CPU: jobs run in queue order, `next` puts a job right after the running
one, `stop` ends the running job alone, leaving the queue going (a `pkill -f` from a device call once matched
that call's own command line and ended it, 2026-12-07), and `halt` ends it and starts nothing more (after a `stop`,
the next queued job shared the GPU with a benchmark started by hand, 2026-12-07)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUEUE = ROOT / "lease" / "gpu_queue.sh"


def wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def start_runner(tmp_path: Path, queue: str, gpu: str = "NVIDIA H100 80GB HBM3, 81559 MiB, 580.159.04"
                 ) -> tuple[Path, dict, subprocess.Popen]:
    """A lease folder with `queue` and `gpu` as `start` writes it, its runner started (its own session), once the
    first job `slow` has printed "started": (lease folder, environment, runner)."""
    lease = tmp_path / "lease"
    for sub in ("logs", "done", "runs", "code"):
        (lease / sub).mkdir(parents=True)
    (lease / "status").touch()
    (lease / "machine.txt").write_text(f"{gpu}\ntorch 2.11.0+cu130 lightning 2.6.6\n")
    (lease / "queue").write_text(queue)
    env = {**os.environ, "LEASE": str(lease), "OUT": str(tmp_path / "out"), "JOB_TIMEOUT": "300"}
    runner = subprocess.Popen(["bash", str(QUEUE), "runner"], cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: "started" in (lease / "logs" / "slow.log").read_text()
             if (lease / "logs" / "slow.log").exists() else False)
    return lease, env, runner


def test_next_runs_a_job_after_the_running_one_and_stop_ends_only_that_job(tmp_path):
    lease, env, runner = start_runner(tmp_path, "slow|echo started; sleep 120; echo not stopped\nlast|echo last\n")
    try:
        queue_cmd = lambda *args: subprocess.run(["bash", str(QUEUE), *args], cwd=ROOT, env=env,  # noqa: E731
                                                 capture_output=True, text=True)
        assert queue_cmd("next", "urgent|echo urgent $RUNS").returncode == 0
        assert (lease / "queue").read_text().splitlines()[1] == "urgent|echo urgent $RUNS"
        started = time.monotonic()
        assert queue_cmd("stop").returncode == 0
        # a job's status line comes before its tarball: wait for both
        wait_for(lambda: len((lease / "status").read_text().splitlines()) == 3 and len(list((lease / "done").iterdir())) == 3)
        assert time.monotonic() - started < 30  # the sleep was ended, not waited for
        status = [line.split()[:3] for line in (lease / "status").read_text().splitlines()]
        assert status == [["slow", "rc", "143"], ["urgent", "rc", "0"], ["last", "rc", "0"]]
        assert "not stopped" not in (lease / "logs" / "slow.log").read_text()
        assert (lease / "logs" / "urgent.log").read_text().strip() == f"urgent {lease / 'runs'}"
        assert {p.name for p in (lease / "done").iterdir()} == {"slow.tar.xz", "urgent.tar.xz", "last.tar.xz"}
        # the runner itself lives on (it waits for more jobs), and nothing is running to stop
        assert runner.poll() is None
        done = queue_cmd("stop")
        assert done.returncode == 1 and "no running job to stop" in done.stderr
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        runner.wait(timeout=30)


def test_halt_ends_the_running_job_and_starts_no_other(tmp_path):
    lease, env, runner = start_runner(tmp_path, "slow|echo started; sleep 120\nafter|echo after\n")
    try:
        halted = subprocess.run(["bash", str(QUEUE), "halt"], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
        assert halted.returncode == 0 and "halted" in halted.stdout
        assert [line.split()[:3] for line in (lease / "status").read_text().splitlines()] == [["slow", "rc", "143"]]
        time.sleep(3)  # the runner polls every 2 s: had it gone on, "after" would have started by now
        assert not (lease / "logs" / "after.log").exists()
        assert (lease / "status").read_text().count("\n") == 1
        # a collect returns at once: nothing is running and nothing more will
        started = time.monotonic()
        collected = subprocess.run(["bash", str(QUEUE), "collect", "120"], cwd=ROOT, env=env, capture_output=True,
                                   text=True, timeout=60)
        assert collected.returncode == 0 and time.monotonic() - started < 30
        assert (tmp_path / "out" / "slow.tar.xz").exists()
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        runner.wait(timeout=30)


def test_a_job_for_another_gpu_is_skipped_with_a_status_line(tmp_path):
    queue = ("slow|echo started\nbaseline@!H100|echo baseline\nh100_only@H100|echo h100\n"
             "h200_only@H200&|echo h200\nlast|echo last\n")
    lease, env, runner = start_runner(tmp_path, queue, gpu="NVIDIA H200, 143771 MiB, 580.159.04")
    try:
        wait_for(lambda: len((lease / "status").read_text().splitlines()) == 5
                 and len(list((lease / "done").iterdir())) == 4)
        status = {line.split()[0]: line for line in (lease / "status").read_text().splitlines()}
        assert status["h100_only"] == "h100_only skipped: the GPU is not @H100"
        assert status["baseline"].startswith("baseline rc 0") and status["h200_only"].startswith("h200_only rc 0")
        assert not (lease / "logs" / "h100_only.log").exists()
        assert (lease / "logs" / "h200_only.log").read_text().strip() == "h200"  # `&` and `@` together
        ran = ("slow", "baseline", "h200_only", "last")
        assert {p.name for p in (lease / "done").iterdir()} == {f"{job}.tar.xz" for job in ran}
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        runner.wait(timeout=30)


def test_carry_size_counts_the_tree_with_the_carry_against_64_mib(tmp_path):
    """The device tool refuses a call whose tree plus carry exceed 64 MiB; say so before the call."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "tracked.bin").write_bytes(b"x" * 2**20)
    subprocess.run(["git", "-C", str(tmp_path), "add", "tracked.bin"], check=True)
    (tmp_path / ".gitignore").write_text(".gpu/\n")
    (tmp_path / ".gpu").mkdir()
    carry = tmp_path / ".gpu" / "data.bin"

    def size_check(carry_bytes: int, *paths: str) -> subprocess.CompletedProcess:
        with open(carry, "wb") as f:
            f.truncate(carry_bytes)  # sparse: the apparent size is what counts
        return subprocess.run(["bash", str(ROOT / "lease" / "carry_size.sh"), *paths], cwd=tmp_path,
                              capture_output=True, text=True)

    tree = 2**20 + len(".gpu/\n")  # the untracked, unignored .gitignore travels too
    fits = size_check(62 * 2**20, ".gpu/data.bin")
    assert fits.returncode == 0 and fits.stdout.startswith(f"tree {tree} B + carry {62 * 2**20} B") and "fits" in fits.stdout
    over = size_check(63 * 2**20, ".gpu/data.bin")
    assert over.returncode == 1 and over.stdout.rstrip().endswith(f"too big by {tree + 63 * 2**20 - 64 * 2**20} B")
    missing = size_check(0, ".gpu/data.bin", ".whl")
    assert missing.returncode == 2 and ".whl: no such file or folder to carry" in missing.stderr
