"""`lit-golf run` -> `submit` -> the submitted `train_gpt.py`, run where lit_golf is not installed, reproduces the run.

One tiny fixed-step run on the CPU (fit, export, phased-TTT test in one launch), its submission, and
the submission's script executed from a copy of the folder by an interpreter that sees the
dependencies but not lit_golf: same seed, same artifact bytes, same scores. And the README's other
path, `fit` then `test --artifact RUN/artifact/artifact.ptz` for two seeds, then `submit`: the tests
record beside the fits and every file the fits wrote stays as it was.
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

from lit_golf.eval.projection import project_record
from tests.test_resume import FIXED_STEPS_CPU, REPO, TINY_CPU, quiet_env

# Small enough for a loaded 2-core box: 4 steps, 6 validation documents, 2 of them in the TTT prefix.
TINY_RUN = ["--trainer.max_steps", "4", "--model.evaluation.max_docs", "6",
            "--model.evaluation.global_sgd.prefix_docs", "2", "--trainer.logger.init_args.save_dir", "logs"]
# `fit` and `test` in this process, as cheap as they go: 2 small steps, 1 calibration batch, 4 validation documents.
QUICK_FIT = ["--trainer.max_steps", "2", "--data.train_batch_tokens", "1024", "--data.tokens_per_microbatch", "512",
             "--gptq.config.calibration_batches", "1", "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def in_process_runs_on_one_thread():
    """`main([...])` runs on one thread: Lightning's DDP strategy sets cores / processes threads (2 here) unless
    OMP_NUM_THREADS is set, and on a shared 2-core box the many small ops of TTT and GPTQ then only contend."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


def tiny_config(tiny_data, save_dir: Path) -> list[str]:
    """tiny_cpu + fixed steps on the test data, 4 validation documents (2 in the TTT prefix), logs under `save_dir`."""
    return ["--config", str(TINY_CPU), "--config", str(FIXED_STEPS_CPU), "--data.data_dir", str(tiny_data.data_dir),
            "--model.gpt.vocab_size", str(tiny_data.vocab_size), "--model.evaluation.max_docs", "4",
            "--model.evaluation.global_sgd.prefix_docs", "2", "--trainer.logger.init_args.save_dir", str(save_dir)]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
    assert f"FineWeb 8xH100 eval {results['fineweb_8xh100_eval_s_projected']:,.1f} s projected" in done.stderr

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


@pytest.mark.slow
def test_fit_then_test_of_two_seeds_keeps_both_fits_records_and_submit_takes_them(tiny_data, tmp_path, capsys,
                                                                                  in_process_runs_on_one_thread):
    from lit_golf.cli import main

    config = tiny_config(tiny_data, tmp_path / "logs")
    runs = [tmp_path / "logs" / "tiny_cpu" / f"version_{i}" for i in range(2)]
    for seed in (11, 22):
        assert main(["fit", *config, *QUICK_FIT, "--seed_everything", str(seed)]) == 0, capsys.readouterr().err
    fitted = {run: files_of(run) for run in runs}
    for run in runs:
        assert "export/quant_gap_bpb" in (run / "metrics.csv").read_text().splitlines()[0]  # not TensorBoard only
        # as the README shows it: the config of the fit, the test's default seed (1337)
        assert main(["test", *config, "--artifact", str(run / "artifact" / "artifact.ptz"),
                     "--trainer.enable_progress_bar", "false"]) == 0, capsys.readouterr().err
    capsys.readouterr()

    for run, seed in zip(runs, (11, 22), strict=True):
        now, before = files_of(run), fitted[run]
        for name, content in before.items():  # every file of the fit is still there, unchanged but for two
            if name == "results.json":
                recorded, completed = json.loads(content), read_json(run / "results.json")
                assert {k: completed[k] for k in recorded} == recorded  # seed 11/22, steps, bytes: as the fit wrote
                assert completed["seed"] == seed and completed["evaluated"] == "artifact"
                assert completed["final_bpb"] == completed["ttt_bpb"] and completed["test_dir"] == "test_0"
                # the FineWeb 8xH100 projection, from the test's own clocks and counts (its inputs beside it)
                projection = project_record(completed["fineweb_projection"])
                assert completed["fineweb_8xh100_eval_s_projected"] == projection.seconds > completed["eval_seconds"]
                assert completed["fineweb_projection"]["eval_seconds"] == completed["eval_seconds"]
            elif name == "train.log":
                assert now[name].startswith(content) and b"evaluation: " in now[name][len(content):]
                assert b"s projected for FineWeb (40,540,160 tokens) on 8xH100" in now[name][len(content):]
            else:
                assert now[name] == content, name
        test = run / "test_0"  # the test's own record, beside the fit's
        assert {"config.yaml", "hparams.yaml", "metrics.csv", "results.json", "train.log"} <= {p.name for p in test.iterdir()}
        assert read_json(test / "results.json")["seed"] == 1337
        assert read_json(test / "results.json")["final_bpb"] == read_json(run / "results.json")["final_bpb"]
        assert "test/ttt_bpb" in (test / "metrics.csv").read_text().splitlines()[0]

    # a later test records in its own folder and leaves the run's scores as the first test recorded them
    scored = (runs[0] / "results.json").read_bytes()
    assert main(["test", *config, "--artifact", str(runs[0] / "artifact" / "artifact.ptz"),
                 "--model.evaluation.ttt.enabled", "false", "--trainer.enable_progress_bar", "false"]) == 0
    assert (runs[0] / "results.json").read_bytes() == scored
    assert read_json(runs[0] / "test_1" / "results.json")["final_bpb"] == read_json(runs[0] / "test_1" / "results.json")["val_bpb"]

    out = tmp_path / "submission"
    assert main(["submit", *map(str, runs), "--out", str(out)]) == 0, capsys.readouterr().err
    assert read_json(out / "submission.json")["seeds"] == [11, 22]

