"""Bad input to `lit-golf submit` and `lit-golf check` (issue 26, section 2 and the submit cases of section 3).

`check` verifies the files it signs: a missing or changed artifact or `train_gpt.py`, a score that is not
the one the run logged, a partial validation set, or a submission.json that its seeds' files do not give is
a ✗ line and exit 1. `submit` refuses the same runs, and runs of different configs, in one line with exit
2, before it writes anything; it never leaves a half-written or stale `--out`. A broken field or file is one
line naming the file and the field, never a traceback. All in-process on small files (artifacts sparse).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from lit_golf.cli import main
from lit_golf.submission import submit as submit_module
from tests.test_check import legal_results, scored, write_run, write_submission


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lit-golf {command}: error: "), err
    return err


def failed_rules(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("✗")]


def edit_results(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture
def run(tmp_path) -> Path:
    return write_run(tmp_path / "run", legal_results(1, tmp_path))


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    return [write_run(tmp_path / f"run{s}", scored(legal_results(s, tmp_path), 1.06 + s / 1000)) for s in (1, 2, 3)]


def submit(capsys, runs: list[Path], out: Path, *flags: str) -> int:
    rc = main(["submit", *map(str, runs), "--out", str(out), *flags])
    if rc == 0:
        capsys.readouterr()  # the check lines submit prints
    return rc


# --- check: the files a run folder's results state -------------------------------------------------------

@pytest.mark.parametrize("name", ["train_gpt.py", "artifact/artifact.ptz"])
def test_check_refuses_a_run_whose_signed_file_is_missing(run, capsys, name):
    (run / name).unlink()
    assert main(["check", str(run)]) == 1
    assert failed_rules(capsys) == [f"✗ artifact + code <= 16,000,000 B: {run / name} is missing: the bytes "
                                    "results.json states cannot be measured"]


def test_check_refuses_a_run_whose_script_is_not_the_size_it_recorded(run, capsys):
    (run / "train_gpt.py").write_bytes(b"#" * 100)
    assert main(["check", str(run)]) == 1
    assert failed_rules(capsys) == [f"✗ artifact + code <= 16,000,000 B: {run / 'results.json'}: code_bytes 80,000 "
                                    f"but {run / 'train_gpt.py'} has 100 B; the file changed after the run"]


def test_check_refuses_a_submission_without_its_script(tmp_path, capsys):
    submission = write_submission(tmp_path / "sub", [legal_results(s, tmp_path) for s in (1, 2, 3)])
    (submission / "train_gpt.py").unlink()
    capsys.readouterr()
    assert main(["check", str(submission)]) == 1
    assert failed_rules(capsys) == [f"✗ artifact + code <= 16,000,000 B: {submission / 'train_gpt.py'} is missing: "
                                    "the code that counts is not there"]


def test_check_marks_a_score_of_part_of_the_validation_set(tmp_path, capsys):
    results = {**legal_results(1, tmp_path), "val_tokens_limited": True, "evaluation": {"max_docs": 8}}
    run = write_run(tmp_path / "run", results)
    assert main(["check", str(run)]) == 1
    assert failed_rules(capsys) == ["✗ scored on the whole validation set: seed 1: partial, at most 8 documents of the "
                                    "validation set (model.evaluation.max_docs / max_tokens, data.max_val_docs); a "
                                    "record scores all of it"]


# --- a final_bpb that is not the one the run logged ------------------------------------------------------

def test_a_hand_edited_final_bpb_fails_check_and_submit(run, tmp_path, capsys):
    edit_results(run / "results.json", final_bpb=1.05)
    assert main(["check", str(run)]) == 1
    assert failed_rules(capsys) == [f"✗ final bpb is the one the evaluation logged: {run / 'results.json'}: final_bpb "
                                    f"1.05 but {run / 'train.log'} logged ttt_bpb=1.07; the results were edited or "
                                    "belong to another run"]
    assert submit(capsys, [run], tmp_path / "sub") == 2
    assert "final_bpb 1.05 but" in one_error_line(capsys, "submit") and not (tmp_path / "sub").exists()


def test_a_run_without_its_log_fails_both_rules_the_log_backs(run, capsys):
    (run / "train.log").unlink()
    assert main(["check", str(run)]) == 1
    assert failed_rules(capsys) == [
        f"✗ artifact + code <= 16,000,000 B: {run / 'train.log'} is missing: the bytes cannot be checked against "
        "what the export logged",
        f"✗ final bpb is the one the evaluation logged: {run / 'train.log'} is missing: the score cannot be checked "
        "against what the run logged"]


@pytest.mark.parametrize("kept", ["export", "evaluation"])
def test_a_log_without_the_line_of_a_signed_number_fails_that_rule(run, capsys, kept):
    marker = {"export": " artifact ", "evaluation": " evaluation: "}[kept]
    lines = (run / "train.log").read_text().splitlines(keepends=True)
    (run / "train.log").write_text("".join(line for line in lines if marker in line))
    assert main(["check", str(run)]) == 1
    (failed,) = failed_rules(capsys)
    missing = {"export": "no `evaluation:` line", "evaluation": "no `artifact ...: N bytes with code` line"}[kept]
    assert f"{run / 'train.log'}: {missing}" in failed


def test_bytes_that_are_not_the_ones_the_export_logged_fail(tmp_path, capsys):
    """A submission ships no artifact: its seeds' bytes are checked against their logs (here one seed's
    results_seed file and submission.json both edited to a smaller artifact)."""
    submission = write_submission(tmp_path / "sub", [legal_results(s, tmp_path) for s in (1, 2, 3)])
    edit_results(submission / "results_seed2.json", model_bytes=15_000_000)
    record = json.loads((submission / "submission.json").read_text())
    record["seed_results"]["2"]["artifact_bytes"] = 15_080_000
    (submission / "submission.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["check", str(submission)]) == 1
    assert failed_rules(capsys) == [
        f"✗ artifact + code <= 16,000,000 B: {submission / 'results_seed2.json'}: model_bytes + code_bytes = "
        f"15,080,000 but {submission / 'train_seed2.log'} logged 15,980,000 bytes with code; the results were "
        "edited or belong to another run"]


# --- submission.json and the seed files beside it --------------------------------------------------------

def test_check_recomputes_submission_json_and_refuses_stale_seed_files(tmp_path, capsys):
    submission = write_submission(tmp_path / "sub", [legal_results(s, tmp_path) for s in (1, 2, 3)])
    record = json.loads((submission / "submission.json").read_text())
    (submission / "submission.json").write_text(json.dumps({**record, "val_bpb": 1.0}))
    capsys.readouterr()
    assert main(["check", str(submission)]) == 1
    assert failed_rules(capsys) == [f"✗ submission.json is what the seeds' results give: {submission / 'submission.json'}"
                                    ": val_bpb is 1.0, the seeds' results give 1.07; rerun `lit-golf submit`"]
    (submission / "submission.json").write_text(json.dumps(record))
    stale = write_submission(tmp_path / "old", [legal_results(4, tmp_path)])  # an earlier submission's seed 4
    for name in ("results_seed4.json", "train_seed4.log"):
        (submission / name).write_bytes((stale / name).read_bytes())
    capsys.readouterr()
    assert main(["check", str(submission)]) == 1
    assert failed_rules(capsys) == [f"✗ submission.json is what the seeds' results give: {submission / 'submission.json'}"
                                    ": seeds [1, 2, 3] but the folder holds results of seeds [1, 2, 3, 4]"]
    for name in ("results_seed4.json", "train_seed4.log"):
        (submission / name).rename(submission / name.replace("4", "9"))
    assert main(["check", str(submission)]) == 1
    assert failed_rules(capsys) == [f"✗ submission.json is what the seeds' results give: {submission / 'results_seed9.json'}"
                                    " holds seed 4"]


# --- submit: runs that do not make one submission --------------------------------------------------------

def test_submit_refuses_runs_of_different_configs_naming_the_keys(runs, tmp_path, capsys):
    (runs[2] / "config.yaml").write_text("seed_everything: 3\ntrainer:\n  max_steps: 5000\nmodel:\n  lr: 0.1\n")
    assert submit(capsys, runs, tmp_path / "sub") == 2
    err = one_error_line(capsys, "submit")
    assert f"{runs[0]} and {runs[2]} were launched with different settings: model.lr, trainer.max_steps;" in err
    assert not (tmp_path / "sub").exists()


def test_submit_into_an_existing_submission_needs_overwrite_and_leaves_no_stale_seed(runs, tmp_path, capsys):
    out = tmp_path / "sub"
    assert submit(capsys, runs, out) == 0
    assert submit(capsys, runs[:2], out) == 2
    assert "already holds a submission; pass --overwrite" in one_error_line(capsys, "submit")
    assert (out / "results_seed3.json").is_file()  # untouched
    assert submit(capsys, runs[:2], out, "--overwrite") == 0
    assert sorted(p.name for p in out.glob("results_seed*")) == ["results_seed1.json", "results_seed2.json"]
    assert json.loads((out / "submission.json").read_text())["seeds"] == [1, 2]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no build folder left


@pytest.mark.parametrize("case", ["a file", "under a file", "a folder that is not a submission", "the run folder",
                                  "above the runs"])
def test_submit_never_writes_over_what_is_not_a_submission(runs, tmp_path, capsys, case):
    out = {"a file": tmp_path / "notes.txt", "under a file": tmp_path / "notes.txt" / "sub",
           "a folder that is not a submission": tmp_path / "mine", "the run folder": runs[0], "above the runs": tmp_path}[case]
    if case in ("a file", "under a file"):
        (tmp_path / "notes.txt").write_text("keep me\n")
    elif case == "a folder that is not a submission":
        out.mkdir()
        (out / "keep.txt").write_text("keep me\n")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert submit(capsys, runs, out, "--overwrite") == 2
    err = one_error_line(capsys, "submit")
    assert {"a file": "is a file", "under a file": "notes.txt is a file, not a folder",
            "a folder that is not a submission": "is not a submission", "the run folder": "holds the run",
            "above the runs": "holds the run"}[case] in err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("field, value, word", [("final_bpb", "1.06", "a positive number"),
                                                ("final_bpb", float("nan"), "a positive number"),
                                                ("final_loss", 0, "a positive number"),
                                                ("seed", 1.5, "an integer"),
                                                ("train_files", "shard.bin", "a list of file names")])
def test_a_broken_field_is_one_line_naming_file_and_field(runs, tmp_path, capsys, field, value, word):
    edit_results(runs[1] / "results.json", **{field: value})
    assert submit(capsys, runs, tmp_path / "sub") == 2
    err = one_error_line(capsys, "submit")
    assert f"{runs[1] / 'results.json'}: {field} is {json.dumps(value)}, not {word};" in err
    assert not (tmp_path / "sub").exists()
    assert main(["check", str(runs[1])]) == 2
    assert f"{field} is {json.dumps(value)}" in one_error_line(capsys, "check")


@pytest.mark.parametrize("case", ["no results", "a results file", "broken config", "no train.log",
                                  "not a JSON object", "no code_bytes"])
def test_submit_refuses_an_incomplete_run_in_one_line(runs, tmp_path, capsys, case):
    target = runs[1]
    if case == "a results file":
        target = runs[1] / "results.json"
    elif case == "no results":
        (runs[1] / "results.json").unlink()
    elif case == "broken config":
        (runs[1] / "config.yaml").write_text("trainer: [1\n")
    elif case == "no train.log":
        (runs[1] / "train.log").unlink()
    elif case == "not a JSON object":
        (runs[1] / "results.json").write_text("3\n")
    else:
        results = json.loads((runs[1] / "results.json").read_text())
        del results["code_bytes"]
        (runs[1] / "results.json").write_text(json.dumps(results))
    assert submit(capsys, [runs[0], target], tmp_path / "sub") == 2
    err = one_error_line(capsys, "submit")
    assert str(runs[1]) in err and not (tmp_path / "sub").exists()


@pytest.mark.parametrize("value", ["nan", "-1", "1.2.3"])
def test_a_bad_baseline_is_one_line(runs, tmp_path, capsys, value):
    assert submit(capsys, runs, tmp_path / "sub", "--baseline-bpb", value) == 2
    err = one_error_line(capsys, "submit")
    assert "--baseline" in err and value in err and not (tmp_path / "sub").exists()


def test_a_failure_while_writing_leaves_the_earlier_submission_as_it_was(runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sub"
    assert submit(capsys, runs, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "README.md")

    monkeypatch.setattr(submit_module, "readme", disk_full)
    assert submit(capsys, runs[:2], out, "--overwrite") == 2
    assert "No space left on device" in one_error_line(capsys, "submit")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert submit(capsys, runs[:2], tmp_path / "new") == 2
    capsys.readouterr()
    assert not (tmp_path / "new").exists()


# --- check: what is not a run or a submission folder ---------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "a file"])
def test_check_of_what_is_not_a_folder_is_one_line(run, capsys, case):
    path = run / ("nothing" if case == "missing" else "results.json")
    assert main(["check", str(path)]) == 2
    err = one_error_line(capsys, "check")
    assert f"{path}: no such folder" in err if case == "missing" else f"{path} is a file; pass the folder" in err


@pytest.mark.parametrize("text, message", [("{", "not valid (Expecting property name"),
                                           ("[1, 2]", "not a mapping of keys to values"),
                                           ('{"baseline_bpb": "1.08"}', 'baseline_bpb is "1.08", not a positive')])
def test_a_broken_submission_json_is_one_line(tmp_path, capsys, text, message):
    submission = write_submission(tmp_path / "sub", [legal_results(s, tmp_path) for s in (1, 2, 3)])
    (submission / "submission.json").write_text(text)
    capsys.readouterr()
    assert main(["check", str(submission)]) == 2
    err = one_error_line(capsys, "check")
    assert f"{submission / 'submission.json'}: {message}" in err
