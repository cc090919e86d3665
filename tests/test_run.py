"""`lit-golf run` -> `submit` -> the submitted `train_gpt.py`, run where lit_golf is not installed, reproduces the run.

One tiny fixed-step run on the CPU (fit, export, phased-TTT test in one launch), its submission, and
the submission's script executed from a copy of the folder by an interpreter that sees the
dependencies but not lit_golf: same seed, same artifact bytes, same scores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.test_resume import FIXED_STEPS_CPU, REPO, TINY_CPU, quiet_env

# Small enough for a loaded 2-core box: 4 steps, 6 validation documents, 2 of them in the TTT prefix.
TINY_RUN = ["--trainer.max_steps", "4", "--model.evaluation.max_docs", "6",
            "--model.evaluation.global_sgd.prefix_docs", "2", "--trainer.logger.init_args.save_dir", "logs"]


def lit_golf(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lit_golf.cli", *args], cwd=cwd, env=env or quiet_env(),
                          capture_output=True, text=True, timeout=300)


def without_lit_golf(tiny_data) -> dict[str, str]:
    """An environment whose `python -S` sees the venv's packages but skips the editable install's .pth."""
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {k: v for k, v in quiet_env().items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "DATA_DIR": str(tiny_data.data_dir)}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_run_submit_and_the_submitted_script_reproduce_the_run(tiny_data, tmp_path):
    data = ["--data.data_dir", str(tiny_data.data_dir), "--model.gpt.vocab_size", str(tiny_data.vocab_size)]
    (tmp_path / "first").mkdir()
    done = lit_golf("run", "--config", str(TINY_CPU), "--config", str(FIXED_STEPS_CPU), *data, *TINY_RUN,
                    cwd=tmp_path / "first")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "first" / "logs" / "tiny_cpu" / "version_0"
    results = read_json(run_dir / "results.json")
    assert results["steps"] == 4 and results["evaluated"] == "artifact" and results["seed"] == 1337
    assert results["final_bpb"] == results["ttt_bpb"] and 0 < results["eval_seconds"] < results["train_seconds"] + 600
    # Honest code bytes: what the export counted is the size of the script the run folder ships.
    script_bytes = (run_dir / "train_gpt.py").stat().st_size
    assert results["code_bytes"] == script_bytes == read_json(run_dir / "artifact" / "artifact.json")["code_bytes"]
    assert results["artifact_bytes"] == (run_dir / "artifact" / "artifact.ptz").stat().st_size + script_bytes
    assert "final bpb" in done.stderr and f"{results['final_bpb']:.5f}" in done.stderr  # the one summary

    out = tmp_path / "submission"
    done = lit_golf("submit", str(run_dir), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    clean = tmp_path / "elsewhere" / "submission"
    shutil.copytree(out, clean)
    env = without_lit_golf(tiny_data)
    probe = subprocess.run([sys.executable, "-S", "-c", "import lightning, torch, brotli; import lit_golf"],
                           cwd=clean, env=env, capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'lit_golf'" in probe.stderr, probe.stderr[-2000:]
    done = subprocess.run([sys.executable, "-S", "train_gpt.py"], cwd=clean, env={**env, "SEED": "1337"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    again = read_json(clean / "logs" / "tiny_cpu" / "version_0" / "results.json")
    for key in ("steps", "model_bytes", "code_bytes", "artifact_bytes", "val_bpb_pre_quant", "val_bpb", "ttt_bpb",
                "final_bpb", "final_loss"):
        assert again[key] == results[key], key
    assert again["code_bytes"] == (clean / "train_gpt.py").stat().st_size

    done = lit_golf("check", str(run_dir), cwd=tmp_path)  # every rule but the whole set: 6 documents scored
    assert done.returncode == 1, done.stdout
    assert [line.split(":")[0] for line in done.stdout.splitlines() if "✗" in line] == [
        "✗ scored on the whole validation set"]
    assert done.stdout.count("✓") == 7
    assert REPO not in clean.parents
