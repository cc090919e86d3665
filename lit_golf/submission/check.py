"""`lit-golf check RUN_DIR|SUBMISSION_DIR`: the challenge's rules, one line each (✓/✗), exit 1 on any ✗.

Measured (what the runs recorded): bytes (artifact file + `train_gpt.py`), training seconds, the
calibration pass's seconds, evaluation seconds, the files training and evaluation read. From settings:
TTT scored the quantized artifact with lit_golf's score-first TTT, the calibration split, the seed
count and the significance (from submission.json, which `submit` computed from the seeds' scores).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lit_golf.results import RESULTS_NAME, read_results
from lit_golf.submission.stats import SIGNIFICANCE, THRESHOLD_NATS
from lit_golf.tool_parser import tool_parser

LIMIT_BYTES = 16_000_000
LIMIT_SECONDS = 600.0
MIN_SEEDS = 3
SUBMISSION_JSON = "submission.json"
SCRIPT_NAME = "train_gpt.py"


@dataclass
class Runs:
    """What `check` reads: each seed's results, the shipped script's size, and submission.json (if any)."""

    folder: Path
    results: list[dict]
    script_bytes: int | None
    submission: dict | None


@dataclass
class Verdict:
    ok: bool | None  # None: not applicable here
    rule: str
    detail: str

    def line(self) -> str:
        mark = {True: "✓", False: "✗", None: "·"}[self.ok]
        return f"{mark} {self.rule}: {self.detail}"


def load_runs(folder: str | Path) -> Runs:
    """A run folder (`results.json`) or a submission folder (`submission.json` + `results_seed*.json`)."""
    folder = Path(folder)
    script = folder / SCRIPT_NAME
    script_bytes = script.stat().st_size if script.is_file() else None
    if (folder / SUBMISSION_JSON).is_file():
        submission = json.loads((folder / SUBMISSION_JSON).read_text())
        results = [read_results(p) for p in sorted(folder.glob("results_seed*.json"))]
        if not results:
            raise FileNotFoundError(f"{folder}: submission.json but no results_seed*.json; rerun `lit-golf submit`")
        return Runs(folder, results, script_bytes, submission)
    if (folder / RESULTS_NAME).is_file():
        return Runs(folder, [read_results(folder)], script_bytes, None)
    raise FileNotFoundError(f"{folder}: neither {RESULTS_NAME} (a run folder) nor {SUBMISSION_JSON} (a submission folder)")


def _numbers(runs: Runs, key: str) -> list[float] | None:
    values = [r.get(key) for r in runs.results]
    return None if any(v is None for v in values) else values


def _seeds(runs: Runs) -> str:
    return ", ".join(str(r.get("seed")) for r in runs.results)


def check_bytes(runs: Runs) -> Verdict:
    rule = f"artifact + code <= {LIMIT_BYTES:,} B"
    models = _numbers(runs, "model_bytes")
    codes = [runs.script_bytes] * len(runs.results) if runs.script_bytes is not None else _numbers(runs, "code_bytes")
    if models is None or codes is None:
        return Verdict(False, rule, "artifact or code bytes not recorded (fit with the GPTQExport callback)")
    worst = max(m + c for m, c in zip(models, codes, strict=True))
    return Verdict(worst <= LIMIT_BYTES, rule, f"largest {worst:,} B (code {max(codes):,} B, train_gpt.py), "
                   f"margin {LIMIT_BYTES - worst:+,}")


def check_training_time(runs: Runs) -> Verdict:
    rule = f"training <= {LIMIT_SECONDS:.0f} s"
    seconds = _numbers(runs, "train_seconds")
    if seconds is None:
        return Verdict(False, rule, "training seconds not recorded")
    return Verdict(max(seconds) <= LIMIT_SECONDS, rule, f"longest {max(seconds):.1f} s (measured)")


def check_calibration(runs: Runs) -> Verdict:
    rule = "GPTQ calibration inside the training budget"
    train, calibration = _numbers(runs, "train_seconds"), _numbers(runs, "calibration_seconds")
    if train is None or calibration is None:
        return Verdict(False, rule, "calibration seconds not recorded (GPTQExport.calibration_seconds)")
    worst = max(t + c for t, c in zip(train, calibration, strict=True))
    return Verdict(worst <= LIMIT_SECONDS, rule, f"training + calibration {worst:.1f} s <= {LIMIT_SECONDS:.0f} s "
                   "(no training data read after the cap; measured)")


def check_eval_time(runs: Runs) -> Verdict:
    rule = f"evaluation launch -> final bpb <= {LIMIT_SECONDS:.0f} s"
    seconds = _numbers(runs, "eval_seconds")
    if seconds is None:
        return Verdict(False, rule, "evaluation seconds not recorded (run `lit-golf run`, or test the artifact)")
    return Verdict(max(seconds) <= LIMIT_SECONDS, rule,
                   f"longest {max(seconds):.1f} s (artifact read + decompression + compile + eval; measured)")


def check_score_first(runs: Runs) -> Verdict:
    rule = "TTT score-first"
    for r in runs.results:
        if r.get("evaluated") != "artifact":
            return Verdict(False, rule, f"seed {r.get('seed')}: the final score was not taken on the quantized "
                           f"artifact (evaluated: {r.get('evaluated')}), so no legal final bpb")
    if not all(r.get("evaluation", {}).get("ttt", {}).get("enabled") for r in runs.results):
        return Verdict(True, rule, "no TTT: plain evaluation of the artifact")
    return Verdict(True, rule, "lit_golf phased TTT on the artifact: each chunk scored before the adapter trains on "
                   "it; global SGD only on scored documents (settings)")


def check_no_validation_in_training(runs: Runs) -> Verdict:
    rule = "no validation data in training or calibration"
    for r in runs.results:
        train, val = set(r.get("train_files", [])), set(r.get("val_files", []))
        if not train or not val:
            return Verdict(False, rule, f"seed {r.get('seed')}: train/val files not recorded")
        if train & val:
            return Verdict(False, rule, f"seed {r.get('seed')}: {sorted(train & val)[0]} is both a train and a val file")
        if r.get("calibration_split") != "train":
            return Verdict(False, rule, f"seed {r.get('seed')}: calibration read split {r.get('calibration_split')!r}, "
                           "not train")
    return Verdict(True, rule, "train and val shards are disjoint files; calibration reads train shards")


def check_significance(runs: Runs) -> Verdict:
    rule = f"seeds >= {MIN_SEEDS}, p < {SIGNIFICANCE} for {THRESHOLD_NATS} nats"
    if runs.submission is None:
        return Verdict(None, rule, "one run; seeds and significance are checked on a submission folder")
    seeds = runs.submission.get("seeds", [])
    if len(seeds) < MIN_SEEDS or len(runs.results) < MIN_SEEDS:
        return Verdict(False, rule, f"{len(seeds)} seed(s) ({_seeds(runs)})")
    p_value = runs.submission.get("p_value")
    if runs.submission.get("baseline_bpb") is None:
        return Verdict(True, rule, f"{len(seeds)} seeds; no baseline given, no significance test")
    if p_value is None or p_value >= SIGNIFICANCE:
        return Verdict(False, rule, f"{len(seeds)} seeds, p = {p_value} vs baseline {runs.submission['baseline_bpb']}")
    return Verdict(True, rule, f"{len(seeds)} seeds, p = {p_value:.2g} vs baseline {runs.submission['baseline_bpb']}")


# Every rule, in report order, with its flag in submission.json's `compliance` (upstream's names where it has one).
RULES: dict[Callable[[Runs], Verdict], str] = {
    check_bytes: "artifact_under_16mb",
    check_training_time: "train_under_600s",
    check_calibration: "gptq_within_budget",
    check_eval_time: "eval_under_600s",
    check_score_first: "score_first_ttt",
    check_no_validation_in_training: "no_val_data_in_training",
    check_significance: "three_seeds",
}


def verdicts(runs: Runs) -> list[Verdict]:
    return [rule(runs) for rule in RULES]


def compliance(runs: Runs) -> dict[str, bool | None]:
    """The compliance flags of submission.json: each rule's verdict under its flag name."""
    return {flag: rule(runs).ok for rule, flag in RULES.items()}


def check(folder: str | Path) -> list[Verdict]:
    """Every rule's verdict on a run folder or a submission folder."""
    return verdicts(load_runs(folder))


def cli_main(argv: list[str]) -> int:
    parser = tool_parser("lit-golf check", __doc__.splitlines()[0])
    parser.add_argument("folder", help="a run folder (results.json) or a folder written by `lit-golf submit`")
    args = parser.parse_args(argv)
    verdicts = check(args.folder)
    for verdict in verdicts:
        print(verdict.line())
    return 1 if any(v.ok is False for v in verdicts) else 0
