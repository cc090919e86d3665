"""lease/preflight.sh: a queue's lit_golf.cli and train_step_levers.py commands parse here before a lease runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def preflight(*queues: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "lease" / "preflight.sh"), *map(str, queues)], cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})


def test_a_misspelt_flag_fails_the_queue_and_a_good_one_parses(tmp_path):
    queue = tmp_path / "lease.queue"
    queue.write_text(
        "good|python3 -m lit_golf.cli test --config configs/record.yaml --data.data_dir $DATA --artifact $ART "
        "--trainer.logger.init_args.save_dir $RUNS/good\n"
        "typo|python3 -m lit_golf.cli fit --config configs/record.yaml --model.evaluation.ttt.grad_stepz 2\n"
        "shell|nvidia-smi\n"
        "levers|for i in 1 2; do sleep 0; done; python3 bench/train_step_levers.py --out $RUNS/l/levers.json "
        "--models record --levers bf16 fa4+fused_xsa --phases before_loop\n"
        "lever_typo|python3 bench/train_step_levers.py --out $RUNS/t/levers.json --levers fa4+fused_xsaa\n"
    )
    done = preflight(queue, tmp_path / "missing.queue")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert f"{queue} good: parses" in lines
    assert any(line.startswith(f"{queue} typo: FAILS (lit_golf.cli): ") and "grad_stepz" in line for line in lines)
    assert f"{queue} shell: no lit_golf.cli or train_step_levers.py command (not checked)" in lines
    assert f"{queue} levers: parses" in lines
    assert any(line.startswith(f"{queue} lever_typo: FAILS (train_step_levers.py): ") and "fused_xsaa" in line
               for line in lines)
    assert "missing.queue: no such queue file" in done.stderr


def test_every_committed_queue_parses():
    """The queues a later session leases with: a renamed flag or config key shows here, not on the GPU box."""
    queues = sorted((ROOT / "lease").glob("*.queue"))
    done = preflight(*queues)
    assert done.returncode == 0, "\n".join(line for line in done.stdout.splitlines() if "FAILS" in line)
    assert sum(line.endswith(": parses") for line in done.stdout.splitlines()) >= 30
