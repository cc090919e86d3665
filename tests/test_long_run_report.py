"""bench/long_run_report.py on a real tiny run: `fit` (on a wall clock, so the training seconds are logged), `test
--artifact` of its artifact, `submit`; then the report's plots, receipts, check verdicts and long_run.json, and
its one-line refusals of bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from script_output import error_line, load_bench_script, run_main

from tests.test_run import QUICK_FIT, files_of, read_json, tiny_config

STEPS = 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


report = load_bench_script("long_run_report")


@pytest.fixture(scope="module")
def long_run(tiny_data, tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    """One run (3 steps on a 600-s wall clock, validated after every step, losses logged every step), its test and
    its submission into a records folder, and a launch log."""
    from lit_golf.cli import main

    root = tmp_path_factory.mktemp("long_run")
    config = tiny_config(tiny_data, root / "logs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        assert main(["fit", *config, *QUICK_FIT, "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "1",
                     "--trainer.log_every_n_steps", "1", "--wallclock.budget_seconds", "600",
                     "--wallclock.sync_every_steps", "1"]) == 0
        run = root / "logs" / "tiny_cpu" / "version_0"
        assert main(["test", *config, "--artifact", str(run / "artifact" / "artifact.ptz"),
                     "--trainer.enable_progress_bar", "false"]) == 0
    records = root / "records" / "tiny_600s"
    assert main(["submit", str(run), "--out", str(records)]) == 0
    launch_log = root / "launch.log"
    launch_log.write_text("the job's stdout\n")
    return {"root": root, "run": run, "records": records, "launch_log": launch_log}


def run_report(*argv, capsys) -> tuple[int, str, str]:
    return run_main(report.main, argv, capsys)


def one_error_line(err: str) -> str:
    return error_line(err, "long_run_report.py")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG whose whole image decodes."""
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR"
    height, width = imread(path).shape[:2]
    assert (width, height) == (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    return width, height


def test_report_writes_plots_receipts_and_the_runs_own_numbers(long_run, tmp_path, capsys):
    run, records = long_run["run"], long_run["records"]
    before = files_of(run)
    out = tmp_path / "long_run.json"
    rc, stdout, err = run_report(long_run["root"] / "logs", "--config-name", "record", "--commit", "1a2b3c4",
                                 "--records", records, "--launch-log", long_run["launch_log"], "--out", out,
                                 capsys=capsys)
    assert rc == 0, err

    train_width, _ = png_size(records / "train_loss.png")
    val_width, _ = png_size(records / "val_bpb.png")
    assert train_width == 2 * 6 * 110 and val_width == 7 * 110  # loss vs steps and vs training seconds
    assert (records / "metrics_seed1337.csv").read_bytes() == (run / "metrics.csv").read_bytes()
    assert (records / "launch_seed1337.log").read_bytes() == long_run["launch_log"].read_bytes()
    assert not (records / "config_seed1337.yaml").exists()  # the shipped config.yaml is this run's
    assert (records / "config.yaml").read_bytes() == (run / "config.yaml").read_bytes()
    assert files_of(run) == before  # copies, never moves

    results, test = read_json(run / "results.json"), read_json(run / "test_0" / "results.json")
    written = read_json(out)
    assert written["gpu"] == results["hardware"] and written["commit"] == "1a2b3c4"
    (entry,) = written["runs"]
    assert entry["config"] == "record" and entry["commit"] == "1a2b3c4"
    for key in ("seed", "steps", "train_seconds", "artifact_bytes"):
        assert entry[key] == results[key], key
    for key in ("eval_seconds", "ttt_bpb"):  # the test's, as its own record and the run's state them
        assert entry[key] == results[key] == test[key], key
    assert entry["steps"] == STEPS
    assert entry["val_docs"] == test["fineweb_projection"]["eval_docs"] == 4
    assert entry["ema_bpb"] == results["val_bpb_pre_quant"] and entry["quant_bpb"] == results["val_bpb_post_quant"]
    assert entry["quant_gap"] == pytest.approx(results["val_bpb_post_quant"] - results["val_bpb_pre_quant"])
    assert entry["tokens_per_second"] == pytest.approx(STEPS * 1024 / results["train_seconds"])
    last_validation = re.findall(r"step (\d+) val_loss \S+ val_bpb (\S+)", (run / "train.log").read_text())[-1]
    assert int(last_validation[0]) == STEPS and entry["raw_bpb"] == pytest.approx(float(last_validation[1]), abs=1e-4)
    compliance = read_json(records / "submission.json")["compliance"]  # what submit's own check found
    assert entry["check_passed_rules"] == [flag for flag, ok in compliance.items() if ok is True]
    assert entry["check_failed_rules"] == ["full_val_set", "three_seeds"]  # 4 documents, one seed
    assert "✗ scored on the whole validation set" in stdout

    # again: every receipt is there already, the run's entry is replaced and the frontier's kept
    frontier = {**entry, "config": "frontier"}
    out.write_text(json.dumps({**written, "runs": [frontier, entry | {"steps": 999}]}))
    rc, stdout, err = run_report(run, "--config-name", "record", "--commit", "1a2b3c4", "--records", records,
                                 "--out", out, capsys=capsys)
    assert rc == 0, err
    assert "receipts copied: none (all there)" in stdout
    assert read_json(out)["runs"] == [frontier, entry]


def test_runs_of_another_commit_are_kept_and_each_names_its_own(long_run, tmp_path, capsys):
    """A record run made a lease after the frontier's joins its file; the older run keeps its commit."""
    out = tmp_path / "long_run.json"
    gpu = read_json(long_run["run"] / "results.json")["hardware"]
    frontier = {"config": "frontier", "seed": 1337, "steps": 548}  # a file from before runs named their commit
    out.write_text(json.dumps({"gpu": gpu, "commit": "4fd98ce", "runs": [frontier]}))
    rc, _, err = run_report(long_run["run"], "--config-name", "record", "--commit", "9745296", "--out", out,
                            capsys=capsys)
    assert rc == 0, err
    written = read_json(out)
    assert written["commit"] == ["4fd98ce", "9745296"]
    assert [(r["config"], r["commit"]) for r in written["runs"]] == [("frontier", "4fd98ce"), ("record", "9745296")]
    assert written["runs"][0] == {**frontier, "commit": "4fd98ce"}

    rc, _, err = run_report(long_run["run"], "--config-name", "frontier", "--commit", "9745296", "--out", out,
                            capsys=capsys)  # the frontier again at the newer commit: one commit left
    assert rc == 0, err
    assert read_json(out)["commit"] == "9745296"


def test_without_records_each_run_folder_is_checked(long_run, tmp_path, capsys):
    out = tmp_path / "long_run.json"
    rc, _, err = run_report(long_run["run"], "--config-name", "frontier", "--commit", "1a2b3c4", "--out", out,
                            capsys=capsys)
    assert rc == 0, err
    (entry,) = read_json(out)["runs"]
    assert entry["config"] == "frontier" and entry["check_failed_rules"] == ["full_val_set"]  # seeds: a submission's
    assert "three_seeds" not in entry["check_passed_rules"]


def report_of(run: Path, tmp_path: Path, capsys) -> dict:
    out = tmp_path / "long_run.json"
    rc, _, err = run_report(run, "--config-name", "record", "--commit", "x", "--out", out, capsys=capsys)
    assert rc == 0, err
    return read_json(out)["runs"][0]


def test_values_the_run_was_not_set_to_measure_are_null(long_run, tmp_path, capsys):
    measured = report_of(long_run["run"], tmp_path, capsys)

    def no_ttt_no_quant_gap_no_last_validation(run: Path) -> None:
        results = read_json(run / "results.json")
        results["evaluation"]["ttt"]["enabled"] = False
        for key in ("ttt_bpb", "val_bpb_pre_quant", "val_bpb_post_quant"):
            del results[key]
        (run / "results.json").write_text(json.dumps(results))
        config = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(config.replace("measure_quant_gap: true", "measure_quant_gap: false", 1))
        with open(run / "metrics.csv", newline="") as file:
            reader = csv.DictReader(file)
            rows, columns = list(reader), reader.fieldnames
        del rows[max(i for i, row in enumerate(rows) if row["val/bpb"])]  # the validation after the last step
        with open(run / "metrics.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, columns)
            writer.writeheader()
            writer.writerows(rows)

    assert "measure_quant_gap: true" in (long_run["run"] / "config.yaml").read_text()
    entry = report_of(broken_copy(long_run, tmp_path, no_ttt_no_quant_gap_no_last_validation), tmp_path, capsys)
    nulls = ("raw_bpb", "ema_bpb", "quant_bpb", "ttt_bpb", "quant_gap")
    assert all(entry[key] is None for key in nulls) and all(measured[key] is not None for key in nulls)
    assert {k: v for k, v in entry.items() if k not in nulls} == {k: v for k, v in measured.items() if k not in nulls}


def broken_copy(long_run, tmp_path: Path, change) -> Path:
    """A copy of the run folder (no checkpoint) with `change(copy)` applied."""
    copy = tmp_path / "run"
    shutil.copytree(long_run["run"], copy, ignore=shutil.ignore_patterns("checkpoints"))
    change(copy)
    return copy


def without_test_scores(folder: Path) -> None:
    results = read_json(folder / "results.json")
    del results["eval_seconds"]
    (folder / "results.json").write_text(json.dumps(results))


@pytest.mark.parametrize(("change", "expected"), [
    (lambda run: (run / "metrics.csv").unlink(), r"run/metrics\.csv is missing; .*pass the folder of a run"),
    (lambda run: (run / "train.log").unlink(), r"run/train\.log is missing; .*restore it"),
    (without_test_scores, r"run/results\.json: no eval_seconds; test the artifact: `lit-golf test"),
    (lambda run: (run / "config.yaml").unlink(),
     r"run: not a run folder \(no config\.yaml, no version_N/ holding one\)"),
])
def test_a_run_folder_missing_what_the_report_reads_is_one_line(long_run, tmp_path, capsys, change, expected):
    out = tmp_path / "long_run.json"
    rc, _, err = run_report(broken_copy(long_run, tmp_path, change), "--config-name", "record", "--commit", "x",
                            "--out", out, capsys=capsys)
    assert rc == 1 and re.search(expected, one_error_line(err)), err
    assert not out.exists()


@pytest.mark.parametrize(("extra", "rc", "expected"), [
    (["--records", "{tmp}/empty"], 1, r"--records .*/empty: not a submission folder \(no submission\.json\); write it "
                                      r"with `lit-golf submit RUN --out"),
    (["--launch-log", "{tmp}/a.log", "{tmp}/b.log"], 1, r"--launch-log: 2 logs for 1 runs; one per run, in order"),
    (["--launch-log", "{tmp}/none.log"], 1, r"--launch-log .*/none\.log: no such file"),
    (["--gpu", "8x NVIDIA H100"], 1, r"--gpu 8x NVIDIA H100: the runs record hardware 1x CPU .*; leave --gpu out"),
    (["--config-name", "other"], 2, r"config.name"),
])
def test_bad_flags_are_one_line(long_run, tmp_path, capsys, extra, rc, expected):
    (tmp_path / "empty").mkdir()
    for name in ("a.log", "b.log"):
        (tmp_path / name).write_text("log\n")
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    out = tmp_path / "long_run.json"
    got, _, err = run_report(long_run["run"], "--config-name", "record", "--commit", "x", "--out", out, *extra,
                             capsys=capsys)
    assert got == rc and re.search(expected, one_error_line(err)), err
    assert not out.exists()


def test_a_test_folder_a_repeated_seed_and_a_broken_report_are_one_line(long_run, tmp_path, capsys):
    rc, _, err = run_report(long_run["run"] / "test_0", "--config-name", "record", "--commit", "x", capsys=capsys)
    assert rc == 1 and f"test_0 is the folder of a test of a run's artifact; pass the run, {long_run['run']}" in err
    one_error_line(err)
    rc, _, err = run_report(long_run["run"], long_run["run"], "--config-name", "record", "--commit", "x",
                            capsys=capsys)
    assert rc == 1 and "the runs repeat a seed ([1337, 1337])" in one_error_line(err)
    out = tmp_path / "long_run.json"
    for broken in ('{"runs": [', '{"runs": [{"config": "record"}]}'):
        out.write_text(broken)
        rc, _, err = run_report(long_run["run"], "--config-name", "record", "--commit", "x", "--out", out,
                                capsys=capsys)
        assert rc == 1 and f"{out}" in one_error_line(err) and "pass another --out" in err
        assert out.read_text() == broken


def test_missing_paths_and_flags_are_one_line(tmp_path, capsys):
    rc, _, err = run_report(tmp_path / "nowhere", "--config-name", "record", "--commit", "x", capsys=capsys)
    assert rc == 1 and "nowhere: no such folder; pass a run folder" in one_error_line(err)
    rc, _, err = run_report(tmp_path, "--config-name", "record", capsys=capsys)
    assert rc == 2 and "commit" in one_error_line(err)


def test_records_that_differ_are_refused_unless_overwrite(long_run, tmp_path, capsys):
    records = tmp_path / "records"
    shutil.copytree(long_run["records"], records)
    (records / "metrics_seed1337.csv").write_text("step\n")
    out = tmp_path / "long_run.json"
    argv = [long_run["run"], "--config-name", "record", "--commit", "x", "--records", records, "--out", out]
    rc, _, err = run_report(*argv, capsys=capsys)
    assert rc == 1 and "metrics_seed1337.csv is there and differs from" in one_error_line(err)
    assert (records / "metrics_seed1337.csv").read_text() == "step\n" and not out.exists()
    rc, _, err = run_report(*argv, "--overwrite", capsys=capsys)
    assert rc == 0, err
    assert (records / "metrics_seed1337.csv").read_bytes() == (long_run["run"] / "metrics.csv").read_bytes()

    (records / "results_seed1337.json").write_text("{}")  # submit's own files are never replaced here
    rc, _, err = run_report(*argv, "--overwrite", capsys=capsys)
    assert rc == 1 and "results_seed1337.json differs from" in one_error_line(err)
    assert "rerun `lit-golf submit`" in err


def test_a_report_of_another_machine_keeps_the_files_runs(long_run, tmp_path, capsys):
    out = tmp_path / "long_run.json"
    kept = {"gpu": "1x NVIDIA H200", "commit": "1a2b3c4", "runs": [{"config": "frontier", "seed": 1337}]}
    out.write_text(json.dumps(kept))
    rc, _, err = run_report(long_run["run"], "--config-name", "record", "--commit", "1a2b3c4", "--out", out,
                            capsys=capsys)
    assert rc == 1 and "holds runs of gpu 1x NVIDIA H200" in one_error_line(err)
    assert read_json(out) == kept
