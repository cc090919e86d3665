"""`lit-golf check`: a legal record passes every rule; breaking one rule fails that rule alone, with exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_golf.cli import main
from lit_golf.results import RunResults
from lit_golf.submission.check import LIMIT_BYTES, check

SCRIPT_BYTES = 80_000
CONFIG = "seed_everything: 1\ntrainer:\n  max_steps: 4500\n"


def legal_results(seed: int, folder: Path) -> dict:
    """A run within every limit: the shape `RecordResults` writes."""
    return RunResults(
        seed=seed, world_size=8, hardware="8x H100", steps=4500, train_seconds=596.0, train_budget_seconds=600.0,
        reserve_seconds=4.0, calibration_seconds=3.5, calibration_split="train",
        train_files=[str(folder / "fineweb_train_000000.bin")], val_files=[str(folder / "fineweb_val_000000.bin")],
        model_bytes=15_900_000, code_bytes=SCRIPT_BYTES, artifact_bytes=15_980_000, budget_bytes=LIMIT_BYTES,
        evaluated="artifact", val_bpb=1.08, val_loss=2.8, ttt_bpb=1.07, ttt_loss=2.77, final_bpb=1.07,
        final_loss=2.77, eval_seconds=400.0, evaluation={"ttt": {"enabled": True}}, val_tokens_limited=False,
    ).updates()


def evaluation_line(results: dict) -> str:
    """The line `lit_golf.eval.runner.evaluate` logs (each number `%.6g`), for the scores `results` states."""
    keys = [k for k in ("val_bpb", "val_loss", "ttt_bpb", "ttt_loss") if k in results]
    return "12:00:00 evaluation: " + " ".join(f"{k}={results[k]:.6g}" for k in keys) + " eval_seconds=1.5\n"


def write_run(folder: Path, results: dict, config: str = CONFIG) -> Path:
    """A run folder as `lit-golf run` leaves it: results.json, and the files it states (the artifact and the
    script of the recorded sizes; the artifact sparse), train.log with the export's and the evaluation's
    lines, config.yaml."""
    (folder / "artifact").mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "train_gpt.py").write_bytes(b"#" * results["code_bytes"])
    with open(folder / "artifact" / "artifact.ptz", "wb") as artifact:
        artifact.truncate(results["model_bytes"])
    total = results["model_bytes"] + results["code_bytes"]
    (folder / "train.log").write_text(f"12:00:00 step 4500 val_loss 2.8 val_bpb 1.08\n12:00:05 artifact "
                                      f"{folder}/artifact/artifact.ptz: {total:,} bytes with code\n"
                                      + evaluation_line(results))
    (folder / "config.yaml").write_text(config)
    return folder


def write_submission(folder: Path, results: list[dict], baseline_bpb: float = 1.09) -> Path:
    """`lit-golf submit` of one run folder per result, into `folder`."""
    runs = [str(write_run(folder.parent / f"{folder.name}_run{r['seed']}", r)) for r in results]
    assert main(["submit", *runs, "--out", str(folder), "--baseline-bpb", str(baseline_bpb)]) == 0
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


def scored(results: dict, bpb: float) -> dict:
    """`results` with TTT (the final score) at `bpb`, loss at 2.6 nats per bpb."""
    return {**results, "ttt_bpb": bpb, "final_bpb": bpb, "ttt_loss": bpb * 2.6, "final_loss": bpb * 2.6}


def test_a_legal_run_and_a_legal_submission_pass_every_rule(tmp_path, capsys):
    run = write_run(tmp_path / "run", legal_results(1, tmp_path))
    assert failing(run) == []
    assert main(["check", str(run)]) == 0
    assert capsys.readouterr().out.count("✓") == 8  # and `·` for the two rules of a submission folder
    submission = write_submission(tmp_path / "sub", [legal_results(s, tmp_path) for s in (1, 2, 3)])
    capsys.readouterr()
    assert all(ok is True for ok in verdicts(submission).values())
    assert main(["check", str(submission)]) == 0
    out = capsys.readouterr().out
    assert out.count("✓") == 10 and "✗" not in out


# Each case breaks one rule of a legal run; (key, value) replaces one recorded number or setting, and the
# run's files follow it (an artifact of that size, the evaluation line of that score).
# (Training past 600 s also puts the calibration pass after the cap: that rule fails with it.)
BROKEN = {
    "artifact + code": ("model_bytes", LIMIT_BYTES - SCRIPT_BYTES + 1),
    "training <=": ("train_seconds", 600.5),
    "GPTQ calibration": ("calibration_seconds", 4.5),  # 596 s of training + 4.5 s of calibration
    "evaluation launch": ("eval_seconds", 600.5),
    "scored on the whole validation set": ("val_tokens_limited", True),
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


def test_too_few_seeds_fail(tmp_path):
    submission = write_submission(tmp_path / "sub", [legal_results(s, tmp_path) for s in (1, 2)])
    broken = failing(submission)
    assert len(broken) == 1 and broken[0].startswith("seeds >= 3"), broken


def test_no_significant_gain_fails_whatever_submission_json_states(tmp_path):
    """Gains of 0.0024-0.0072 nats over the baseline: p ~ 0.5 recomputed from the seeds' scores, so a
    submission.json edited to state p = 0.001 fails the significance rule and the record rule."""
    seeds = [scored(legal_results(s, tmp_path), bpb) for s, bpb in ((1, 1.0885), (2, 1.0880), (3, 1.0875))]
    submission = write_submission(tmp_path / "sub", seeds)
    assert [rule.split(" ")[0] for rule in failing(submission)] == ["seeds"]
    record = json.loads((submission / "submission.json").read_text())
    assert record["p_value"] > 0.1 and record["compliance"]["three_seeds"] is False
    (submission / "submission.json").write_text(json.dumps({**record, "p_value": 0.001}))
    assert [rule.split(" ")[0] for rule in failing(submission)] == ["seeds", "submission.json"]


def test_the_submitted_script_is_the_code_that_counts(tmp_path):
    """A submission folder counts its own train_gpt.py: one the runs did not count fails."""
    submission = write_submission(tmp_path / "sub", [legal_results(s, tmp_path) for s in (1, 2, 3)])
    (submission / "train_gpt.py").write_bytes(b"#" * (LIMIT_BYTES - 15_900_000 + 1))
    broken = [v for v in check(submission) if v.ok is False]
    assert len(broken) == 1 and broken[0].rule.startswith("artifact + code")
    assert "train_gpt.py has 100,001 B, but the seeds counted 80,000, 80,000, 80,000 B" in broken[0].detail


def test_a_folder_without_results_is_one_clear_line(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither results.json" in err
