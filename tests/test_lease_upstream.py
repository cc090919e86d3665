"""lease/run_upstream.sh and lease/stamped.sh, with a stand-in for upstream's train_gpt.py (the real one needs
CUDA): the launch-clocked log is what bench/compare_runs.py reads, the run is stopped once its EMA weights are
scored, and a run that dies before that fails the job."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from script_output import load_bench_script

ROOT = Path(__file__).resolve().parents[1]

# Upstream's log lines, in its format: steps every 5, the loop switch, the EMA weights' score; then it would
# quantize and serialize for minutes (the stand-in sleeps instead).
STAND_IN = """
import os, sys, time
assert os.environ["ITERATIONS"] == "20" and os.environ["MAX_WALLCLOCK_SECONDS"] == "0"
assert os.environ["TTT_ENABLED"] == "0" and os.environ["EMA_DECAY"] == "0.95" and os.environ["SEED"] == "7"
for step in range(5, 21, 5):
    if step == 10:
        print("layer_loop:enabled step:7 frac:0.350 encoder:[0] decoder:[1]", flush=True)
    print(f"{step}/20 train_loss: {5 - step / 10:.4f} train_time: 0.1m tok/s: 1000", flush=True)
    time.sleep(0.2)
print("0/20 val_loss: 4.0000 val_bpb: 2.5000", flush=True)
if os.environ.get("DIE"):
    sys.exit(3)
print("diagnostic pre-quantization post-ema val_loss:4.00000000 val_bpb:2.40000000 eval_time:9ms", flush=True)
time.sleep(600)
"""


def run_upstream(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, Path, float]:
    harness = tmp_path / "upstream"
    harness.mkdir(exist_ok=True)
    (harness / "train_gpt.py").write_text(STAND_IN)
    log = tmp_path / "logs" / "upstream_seed7.log"
    started = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "lease" / "run_upstream.sh"), "7", "20", str(log)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "UPSTREAM_DIR": str(harness), "DATA": str(tmp_path / "data"), **env})
    return done, log, time.monotonic() - started


def test_the_log_has_the_launch_clock_compare_runs_reads_and_the_run_stops_after_the_ema_score(tmp_path):
    done, log, seconds = run_upstream(tmp_path)
    assert done.returncode == 0, done.stderr
    assert seconds < 60  # stopped after the EMA line, not after the stand-in's 600-s "serialization"
    lines = log.read_text().splitlines()
    assert all(line.startswith("[") and "s] " in line for line in lines)
    run = load_bench_script("compare_runs").parse(log)
    assert (run.system, run.seed) == ("upstream", 7)
    assert [step for _, step, _ in run.points] == [5, 10, 15, 20]
    assert run.loop_step == 7 and run.val_bpb_post_ema == 2.4
    times = [t for t, _, _ in run.points]
    assert times == sorted(times) and times[-1] - times[0] >= 0.5  # the stand-in's sleeps, on the launch clock


def test_a_run_that_ends_before_scoring_its_ema_weights_fails(tmp_path):
    done, log, _ = run_upstream(tmp_path, DIE="1")
    assert done.returncode == 1
    assert f"{log}: upstream ended before scoring its EMA weights" in done.stderr


def test_without_the_harness_it_says_how_to_build_it(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "lease" / "run_upstream.sh"), "7", "20", str(tmp_path / "u.log")],
                          capture_output=True, text=True, env={**os.environ, "UPSTREAM_DIR": str(tmp_path / "none")})
    assert done.returncode == 2
    assert done.stderr.strip().endswith("build it with lease/build_upstream_harness.sh")


def test_stamped_keeps_the_commands_exit_status(tmp_path):
    log = tmp_path / "x.log"
    done = subprocess.run(["bash", str(ROOT / "lease" / "stamped.sh"), str(log), sys.executable, "-c",
                           "import sys; print('hi'); sys.exit(5)"], capture_output=True, text=True)
    assert done.returncode == 5
    assert log.read_text().endswith("s] hi\n")


def test_the_fa2_stand_in_traces_inside_a_fullgraph_compile_like_upstreams_forward(tmp_path):
    """Upstream calls flash_attn_varlen_func inside `torch.compile(fullgraph=True)`: the stand-in that
    lease/build_upstream_harness.sh writes must trace there (on the 2026-12-07 lease it chose its kernel on the
    first call, inside the graph, and its log call broke the compile), and compute causal document attention."""
    mirror = tmp_path / "mirror"
    record = mirror / "records/track_10min_16mb/2026-04-14_MultiPhaseGlobalSGD_PhasedTTT/train_gpt.py"
    record.parent.mkdir(parents=True)
    record.write_text("# upstream's script\n")
    git = ["git", "-C", str(mirror), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(mirror)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    work = tmp_path / "work"
    (work / "lease").mkdir(parents=True)
    (work / "lease" / "build_upstream_harness.sh").write_text((ROOT / "lease/build_upstream_harness.sh").read_text())
    subprocess.run(["bash", "lease/build_upstream_harness.sh", str(mirror / ".git")], cwd=work, check=True,
                   capture_output=True)
    code = f"""
import sys, torch
sys.path[:0] = [{str(work / '.gpu/upstream')!r}, {str(ROOT)!r}]
from flash_attn_interface import flash_attn_varlen_func
from lit_golf.attention import attend
torch.manual_seed(0)
q, k, v = torch.randn(12, 4, 8), torch.randn(12, 2, 8), torch.randn(12, 2, 8)
cu = torch.tensor([0, 5, 12, 12], dtype=torch.int32)
fn = torch.compile(lambda q, k, v, cu: flash_attn_varlen_func(q, k, v, cu, cu, 12, 12, causal=True), fullgraph=True)
want = attend(q[None], k[None], v[None], cu_seqlens=cu, max_seqlen=12, backend="pure")[0]
torch.testing.assert_close(fn(q, k, v, cu), want, atol=1e-5, rtol=1e-5)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
