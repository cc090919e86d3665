"""`lit-golf check`: a legal record passes every rule; breaking one rule fails that rule alone, with exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_golf.cli import main
from lit_golf.results import RunResults
from lit_golf.submission.check import LIMIT_BYTES, check

SCRIPT_BYTES = 80_000


def legal_results(seed: int, folder: Path) -> dict:
    """A run within every limit: the shape `RecordResults` writes."""
    return RunResults(
        seed=seed, world_size=8, hardware="8x H100", steps=4500, train_seconds=596.0, train_budget_seconds=600.0,
        reserve_seconds=4.0, calibration_seconds=3.5, calibration_split="train",
        train_files=[str(folder / "fineweb_train_000000.bin")], val_files=[str(folder / "fineweb_val_000000.bin")],
        model_bytes=15_900_000, code_bytes=SCRIPT_BYTES, artifact_bytes=15_980_000, budget_bytes=LIMIT_BYTES,
        evaluated="artifact", val_bpb=1.08, val_loss=2.8, ttt_bpb=1.07, ttt_loss=2.77, final_bpb=1.07,
        final_loss=2.77, eval_seconds=400.0, evaluation={"ttt": {"enabled": True}},
    ).updates()


def write_run(folder: Path, results: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "train_gpt.py").write_bytes(b"#" * SCRIPT_BYTES)
    return folder


def write_submission(folder: Path, results: list[dict], p_value: float | None = 0.001) -> Path:
    write_run(folder, results[0]).joinpath("results.json").unlink()
    for r in results:
        (folder / f"results_seed{r['seed']}.json").write_text(json.dumps(r))
    seeds = [r["seed"] for r in results]
    (folder / "submission.json").write_text(json.dumps({"seeds": seeds, "baseline_bpb": 1.09, "p_value": p_value}))
    return folder


def test_results_with_the_flat_evaluation_of_an_older_lit_golf_are_one_line(tmp_path, capsys):
    """A results.json written before issue 15 must not read as "no TTT": its flat keys name their new place."""
    run = write_run(tmp_path / "run", {**legal_results(1, tmp_path), "evaluation": {"ttt_enabled": True}})
    assert main(["check", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.json: evaluation: flat EvalConfig fields" in err
    assert "ttt_enabled -> evaluation.ttt.enabled" in err


def verdicts(folder: Path) -> dict[str, bool | None]:
    return {v.rule: v.ok for v in check(folder)}


def failing(folder: Path) -> list[str]:
    return [rule for rule, ok in verdicts(folder).items() if ok is False]


def test_a_legal_run_and_a_legal_submission_pass_every_rule(tmp_path, capsys):
    run = write_run(tmp_path / "run", legal_results(1, tmp_path))
    assert failing(run) == []
    assert main(["check", str(run)]) == 0
    submission = write_submission(tmp_path / "sub", [legal_results(s, tmp_path) for s in (1, 2, 3)])
    assert all(ok is True for ok in verdicts(submission).values())
    assert main(["check", str(submission)]) == 0
    out = capsys.readouterr().out
    assert out.count("✓") == 7 + 6 and "✗" not in out


# Each case breaks one rule of a legal run; (key, value) replaces one recorded number or setting.
# (Training past 600 s also puts the calibration pass after the cap: that rule fails with it.)
BROKEN = {
    "artifact + code": ("model_bytes", LIMIT_BYTES - SCRIPT_BYTES + 1),
    "training <=": ("train_seconds", 600.5),
    "GPTQ calibration": ("calibration_seconds", 4.5),  # 596 s of training + 4.5 s of calibration
    "evaluation launch": ("eval_seconds", 600.5),
    "TTT score-first": ("evaluated", "checkpoint"),
    "no validation data": ("calibration_split", "val"),
}


@pytest.mark.parametrize("rule", BROKEN)
def test_breaking_one_rule_fails_that_rule_alone(tmp_path, rule, capsys):
    key, value = BROKEN[rule]
    run = write_run(tmp_path / "run", {**legal_results(1, tmp_path), key: value})
    broken = failing(run)
    also = ["GPTQ calibration inside the training budget"] if rule == "training <=" else []
    assert broken[0].startswith(rule) and broken[1:] == also, broken
    assert main(["check", str(run)]) == 1
    assert f"✗ {broken[0]}" in capsys.readouterr().out


def test_validation_files_read_in_training_fail(tmp_path):
    results = legal_results(1, tmp_path)
    results["train_files"] = results["train_files"] + results["val_files"]
    broken = failing(write_run(tmp_path / "run", results))
    assert len(broken) == 1 and broken[0].startswith("no validation data")


def test_an_unrecorded_number_fails_instead_of_passing(tmp_path):
    results = legal_results(1, tmp_path)
    del results["calibration_seconds"]
    assert [r.split(":")[0] for r in failing(write_run(tmp_path / "run", results))] == [
        "GPTQ calibration inside the training budget"]


@pytest.mark.parametrize("seeds, p_value", [((1, 2), 0.001), ((1, 2, 3), 0.02), ((1, 2, 3), None)])
def test_too_few_seeds_or_no_significant_gain_fail(tmp_path, seeds, p_value):
    submission = write_submission(tmp_path / "sub", [legal_results(s, tmp_path) for s in seeds], p_value)
    broken = failing(submission)
    assert len(broken) == 1 and broken[0].startswith("seeds >= 3"), broken


def test_the_submitted_script_is_the_code_that_counts(tmp_path):
    """A submission folder counts its own train_gpt.py, whatever the runs recorded."""
    submission = write_submission(tmp_path / "sub", [legal_results(s, tmp_path) for s in (1, 2, 3)])
    (submission / "train_gpt.py").write_bytes(b"#" * (LIMIT_BYTES - 15_900_000 + 1))
    assert failing(submission)[0].startswith("artifact + code")


def test_a_folder_without_results_is_one_clear_line(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither results.json" in err
