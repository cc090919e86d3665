"""`lit-golf check RUN_DIR|SUBMISSION_DIR`: the challenge's rules, one line each (✓/✗), exit 1 on any ✗.

`check` verifies what it signs instead of trusting the numbers a file states. Measured on disk: the bytes
of `artifact/artifact.ptz` and `train_gpt.py` (a missing file, or a recorded size that differs from the
file, fails). Cross-checked: each final score against the `evaluation:` line its test logged in
`train.log`, and a submission's `submission.json` against the numbers recomputed from its seeds' results
(the p-value included). From what the runs recorded: training seconds, the calibration pass's seconds,
evaluation seconds, the files training and evaluation read, and whether the whole validation set was
scored. From settings: TTT scored the quantized artifact with lit_golf's score-first TTT, the
calibration split, the seed count.
"""

from __future__ import annotations

import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lit_golf.eval.projection import project_record
from lit_golf.results import RESULTS_NAME, TRAIN_LOG_NAME, RunResults, read_results
from lit_golf.submission.stats import SIGNIFICANCE, THRESHOLD_NATS, seed_summary
from lit_golf.tool_parser import tool_parser

LIMIT_BYTES = 16_000_000
LIMIT_SECONDS = 600.0
MIN_SEEDS = 3
SUBMISSION_JSON = "submission.json"
SCRIPT_NAME = "train_gpt.py"
ARTIFACT_PATH = Path("artifact") / "artifact.ptz"  # where the fit's export writes it in the run folder
# The lines of a run's log that state what `check` signs: the evaluation's summary (`lit_golf.eval.runner.evaluate`:
# `evaluation: key=value ...`, each `%.6g`) and the export's total (`ExportReport.summary`).
EVALUATION_LINE = re.compile(r"\bevaluation: ((?:\w+=\S+ ?)+)$", re.MULTILINE)
EXPORT_LINE = re.compile(r"\bartifact .+: ([\d,]+) bytes with code$", re.MULTILINE)
LOGGED_PRECISION = 1e-5  # relative: six significant digits round by at most 5e-6


@dataclass
class RunLog:
    """What a run's log states: the numbers of its last evaluation, the total bytes of its last export."""

    scores: dict[str, float] | None
    artifact_bytes: int | None


def read_log(path: Path) -> RunLog | None:
    """The last evaluation and export lines of a run's log; None when there is no log."""
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    evaluations, exports = EVALUATION_LINE.findall(text), EXPORT_LINE.findall(text)
    scores = None
    if evaluations:
        pairs = (pair.partition("=") for pair in evaluations[-1].split())
        scores = {key: float(value) for key, _, value in pairs if _is_number(value)}
    return RunLog(scores, int(exports[-1].replace(",", "")) if exports else None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class Seed:
    """One seed as `check` reads it: its results, the log beside them, and (in a run folder) the files whose
    sizes the results state. A submission folder ships neither the artifact nor each seed's own script."""

    results_path: Path
    results: dict
    log_path: Path
    artifact_path: Path | None = None
    script_path: Path | None = None

    @functools.cached_property
    def log(self) -> RunLog | None:
        return read_log(self.log_path)


@dataclass
class Runs:
    """What `check` reads: a run folder (one seed) or a submission folder (its seeds and submission.json)."""

    folder: Path
    seeds: list[Seed]
    submission: dict | None

    @property
    def results(self) -> list[dict]:
        return [seed.results for seed in self.seeds]


@dataclass
class Verdict:
    ok: bool | None  # None: not applicable here
    rule: str
    detail: str

    def line(self) -> str:
        mark = {True: "✓", False: "✗", None: "·"}[self.ok]
        return f"{mark} {self.rule}: {self.detail}"


_KIND_WORDS = {float: "a finite number", int: "an integer", str: "a string", bool: "true or false",
               list: "a list of file names", dict: "an object"}


def _not_none(hint):
    """`X` of an `X | None` hint, else the hint."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(kind for kind in typing.get_args(hint) if kind is not type(None))
    return hint


_FIELD_KINDS = {name: _not_none(hint) for name, hint in typing.get_type_hints(RunResults).items()}


def _kind_ok(value, kind) -> bool:
    base = typing.get_origin(kind) or kind
    if base in (int, float) and isinstance(value, bool):
        return False
    if base is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    if base is list:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, base)


def read_run_results(path: Path) -> dict:
    """`read_results`, and every recorded field of the type `RunResults` gives it: a hand-edited or broken
    value (`"final_bpb": "1.06"`, NaN) is one line naming the file and the field, never a traceback later."""
    try:
        results = read_results(path)
    except TypeError:  # read_results takes the top level for an object; a bare number or null is not one
        raise ValueError(f"{path}: not a JSON object of a run's results; restore it from the run") from None
    for key, value in results.items():
        kind, score = _FIELD_KINDS[key], "bpb" in key or key.endswith("_loss")  # scores divide: never <= 0
        if value is not None and (not _kind_ok(value, kind) or score and value <= 0):
            word = "a positive number" if score else _KIND_WORDS[typing.get_origin(kind) or kind]
            raise ValueError(f"{path}: {key} is {json.dumps(value)}, not {word}; restore the file the run wrote "
                             "(or rerun the stage that writes it)")
    return results


def read_mapping(path: Path, parse: Callable[[str], object], error: type[Exception], fix: str) -> dict:
    """A JSON or YAML file (`parse`, which raises `error`) that must hold a mapping; else one line naming it."""
    try:
        data = parse(path.read_text())
    except error as exc:
        raise ValueError(f"{path}: not valid ({str(exc).splitlines()[0]}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping of keys to values; {fix}")
    return data


def _read_submission(path: Path) -> dict:
    """submission.json: an object whose `baseline_bpb` (the only input `check` takes from it) is a number or null."""
    submission = read_mapping(path, json.loads, json.JSONDecodeError, "rerun `lit-golf submit`")
    baseline = submission.get("baseline_bpb")
    if baseline is not None and not (_kind_ok(baseline, float) and baseline > 0):
        raise ValueError(f"{path}: baseline_bpb is {json.dumps(baseline)}, not a positive number; rerun `lit-golf submit`")
    return submission


def require_folder(path: Path) -> None:
    """One line when `path`, given for a run or submission folder, is missing or a file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder; pass a run folder ({RESULTS_NAME}) or a submission folder")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is a file; pass the folder that holds it")


def run_seed(run_dir: Path) -> Seed:
    """A run folder's seed: `results.json`, `train.log`, the artifact and `train_gpt.py` it measured."""
    return Seed(run_dir / RESULTS_NAME, read_run_results(run_dir / RESULTS_NAME), run_dir / TRAIN_LOG_NAME,
                run_dir / ARTIFACT_PATH, run_dir / SCRIPT_NAME)


def submission_runs(folder: Path, submission: dict) -> Runs:
    """A submission folder's seeds (`results_seed<N>.json` + `train_seed<N>.log`) with its `submission`."""
    paths = sorted(folder.glob("results_seed*.json"))
    if not paths:
        raise FileNotFoundError(f"{folder}: submission.json but no results_seed*.json; rerun `lit-golf submit`")
    seeds = [Seed(p, read_run_results(p), folder / f"train_{p.stem.removeprefix('results_')}.log") for p in paths]
    return Runs(folder, seeds, submission)


def load_runs(folder: str | Path) -> Runs:
    """A run folder (`results.json`) or a submission folder (`submission.json` + `results_seed*.json`)."""
    folder = Path(folder)
    require_folder(folder)
    if (folder / SUBMISSION_JSON).is_file():
        return submission_runs(folder, _read_submission(folder / SUBMISSION_JSON))
    if (folder / RESULTS_NAME).is_file():
        return Runs(folder, [run_seed(folder)], None)
    raise FileNotFoundError(f"{folder}: neither {RESULTS_NAME} (a run folder) nor {SUBMISSION_JSON} (a submission folder)")


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def bytes_problem(seed: Seed) -> str | None:
    """Why the sizes `seed` records are not those of its files on disk (a run folder's artifact and script) and
    of the total its export logged, or None."""
    for key, path in (("model_bytes", seed.artifact_path), ("code_bytes", seed.script_path)):
        recorded = seed.results.get(key)
        if recorded is None:
            return f"{seed.results_path}: no {key} recorded (fit with the GPTQExport callback)"
        size = None if path is None else _size(path)
        if path is not None and size is None:
            return f"{path} is missing: the bytes {seed.results_path.name} states cannot be measured"
        if path is not None and size != recorded:
            return f"{seed.results_path}: {key} {recorded:,} but {path} has {size:,} B; the file changed after the run"
    total = seed.results["model_bytes"] + seed.results["code_bytes"]
    if seed.log is None:
        return f"{seed.log_path} is missing: the bytes cannot be checked against what the export logged"
    if seed.log.artifact_bytes is None:
        return f"{seed.log_path}: no `artifact ...: N bytes with code` line; the export's size was not logged"
    if seed.log.artifact_bytes != total:
        return (f"{seed.results_path}: model_bytes + code_bytes = {total:,} but {seed.log_path} logged "
                f"{seed.log.artifact_bytes:,} bytes with code; the results were edited or belong to another run")
    return None


def score_problem(seed: Seed) -> str | None:
    """Why `seed`'s final score is not the one its test logged (the last `evaluation:` line), or None.

    The final score is TTT's when TTT ran, else plain (as `RecordResults` picks it)."""
    final_bpb, final_loss = seed.results.get("final_bpb"), seed.results.get("final_loss")
    if final_bpb is None or final_loss is None:
        return f"{seed.results_path}: no final_bpb/final_loss; test the artifact (`lit-golf run`, or fit then test)"
    if seed.log is None:
        return f"{seed.log_path} is missing: the score cannot be checked against what the run logged"
    logged = seed.log.scores
    if logged is None:
        return f"{seed.log_path}: no `evaluation:` line; the score in {seed.results_path.name} was not logged by a test"
    source = "ttt" if "ttt_bpb" in logged else "val"
    for name, stated in (("bpb", final_bpb), ("loss", final_loss)):
        value = logged.get(f"{source}_{name}")
        if value is None or not math.isclose(stated, value, rel_tol=LOGGED_PRECISION):
            return (f"{seed.results_path}: final_{name} {stated} but {seed.log_path} logged {source}_{name}={value}; "
                    "the results were edited or belong to another run")
    return None


def _numbers(runs: Runs, key: str) -> list[float] | None:
    values = [r.get(key) for r in runs.results]
    return None if any(v is None for v in values) else values


def _seeds(runs: Runs) -> str:
    return ", ".join(str(r.get("seed")) for r in runs.results)


def check_bytes(runs: Runs) -> Verdict:
    """Each seed's artifact + its own `train_gpt.py`, as measured (a run folder) and as its export logged. A
    submission ships one script (the first seed's): it must be there and be the size one of the seeds counted."""
    rule = f"artifact + code <= {LIMIT_BYTES:,} B"
    for seed in runs.seeds:
        problem = bytes_problem(seed)
        if problem:
            return Verdict(False, rule, problem)
    models, codes = _numbers(runs, "model_bytes"), _numbers(runs, "code_bytes")
    if runs.submission is not None:
        shipped = _size(runs.folder / SCRIPT_NAME)
        if shipped is None:
            return Verdict(False, rule, f"{runs.folder / SCRIPT_NAME} is missing: the code that counts is not there")
        if shipped not in codes:
            return Verdict(False, rule, f"{runs.folder / SCRIPT_NAME} has {shipped:,} B, but the seeds counted "
                           f"{', '.join(f'{c:,}' for c in codes)} B: it is not the script the runs shipped")
    worst = max(m + c for m, c in zip(models, codes, strict=True))
    return Verdict(worst <= LIMIT_BYTES, rule, f"largest {worst:,} B (code {max(codes):,} B, train_gpt.py; "
                   f"measured), margin {LIMIT_BYTES - worst:+,}")


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
                   f"longest {max(seconds):.1f} s (artifact read + decompression + compile + eval; measured)"
                   f"{_projected(runs)}")


def _projected(runs: Runs) -> str:
    """The longest FineWeb 8×H100 projection of the seeds, recomputed from their recorded inputs, beside the
    measured seconds. Words, never a verdict: it rests on a model and an assumed H100/H200 factor."""
    records = [r.get("fineweb_projection") for r in runs.results]
    if not all(records):
        return ""
    try:
        longest = max((project_record(record) for record in records), key=lambda p: p.seconds)
    except ValueError as exc:
        return f"; no FineWeb projection: {exc}"
    return f"; {longest.describe()}"


def check_whole_validation_set(runs: Runs) -> Verdict:
    """A record is scored on every validation document; a score of the first N documents or tokens
    (`model.evaluation.max_docs` / `max_tokens`, `data.max_val_docs`) is a partial score, however good."""
    rule = "scored on the whole validation set"
    for r in runs.results:
        limited = r.get("val_tokens_limited")
        if limited is None:
            return Verdict(False, rule, f"seed {r.get('seed')}: not recorded (test the artifact with this lit_golf)")
        if limited:
            evaluation = r.get("evaluation", {})
            cuts = [f"{evaluation[key]:,} {what}" for key, what in (("max_docs", "documents"), ("max_tokens", "tokens"))
                    if evaluation.get(key) is not None]
            return Verdict(False, rule, f"seed {r.get('seed')}: partial, at most {' and '.join(cuts) or 'part'} of "
                           "the validation set (model.evaluation.max_docs / max_tokens, data.max_val_docs); a record "
                           "scores all of it")
    return Verdict(True, rule, "every validation document scored")


def check_logged_score(runs: Runs) -> Verdict:
    rule = "final bpb is the one the evaluation logged"
    for seed in runs.seeds:
        problem = score_problem(seed)
        if problem:
            return Verdict(False, rule, problem)
    logs = ", ".join(seed.log_path.name for seed in runs.seeds)
    return Verdict(True, rule, f"final bpb and loss match the `evaluation:` line of {logs}")


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


def _complete(runs: Runs) -> str | None:
    """Why the seeds' results cannot be summed up into submission.json's numbers, or None."""
    for seed in runs.seeds:
        missing = [k for k in ("seed", "final_bpb", "final_loss", "model_bytes", "code_bytes") if seed.results.get(k) is None]
        if missing:
            return f"{seed.results_path}: no {missing[0]}"
    return None


def check_significance(runs: Runs) -> Verdict:
    """The seed count and the p-value, recomputed from the seeds' scores (not read from submission.json)."""
    rule = f"seeds >= {MIN_SEEDS}, p < {SIGNIFICANCE} for {THRESHOLD_NATS} nats"
    if runs.submission is None:
        return Verdict(None, rule, "one run; seeds and significance are checked on a submission folder")
    if len(runs.seeds) < MIN_SEEDS:
        return Verdict(False, rule, f"{len(runs.seeds)} seed(s) ({_seeds(runs)})")
    baseline = runs.submission.get("baseline_bpb")
    if baseline is None:
        return Verdict(True, rule, f"{len(runs.seeds)} seeds; no baseline given, no significance test")
    problem = _complete(runs)
    if problem:
        return Verdict(False, rule, problem)
    p_value = seed_summary(runs.results, baseline)["p_value"]
    return Verdict(p_value < SIGNIFICANCE, rule, f"{len(runs.seeds)} seeds, p = {p_value:.2g} vs baseline {baseline} "
                   "(recomputed from the seeds' scores)")


def _same(stated, computed) -> bool:
    if isinstance(stated, dict) and isinstance(computed, dict):
        return stated.keys() == computed.keys() and all(_same(stated[k], computed[k]) for k in computed)
    if isinstance(stated, float) and isinstance(computed, float):
        return math.isclose(stated, computed, rel_tol=1e-9, abs_tol=1e-12)
    return stated == computed and type(stated) is type(computed)


def check_submission_record(runs: Runs) -> Verdict:
    """submission.json states what its seeds' files give: their seeds, scores, bytes, clocks, mean and p-value;
    each `results_seed<N>.json` holds seed N (a stale or hand-edited file fails here)."""
    rule = "submission.json is what the seeds' results give"
    if runs.submission is None:
        return Verdict(None, rule, "one run; checked on a submission folder")
    for seed in runs.seeds:
        if seed.results_path.stem != f"results_seed{seed.results.get('seed')}":
            return Verdict(False, rule, f"{seed.results_path} holds seed {seed.results.get('seed')}")
    problem = _complete(runs)
    if problem:
        return Verdict(False, rule, problem)
    computed = seed_summary(runs.results, runs.submission.get("baseline_bpb"))
    if sorted(runs.submission.get("seeds") or []) != sorted(computed["seeds"]):
        return Verdict(False, rule, f"{runs.folder / SUBMISSION_JSON}: seeds {runs.submission.get('seeds')} but the "
                       f"folder holds results of seeds {computed['seeds']}")
    for key, value in computed.items():
        stated = runs.submission.get(key)
        if key != "seeds" and not _same(stated, value):
            return Verdict(False, rule, f"{runs.folder / SUBMISSION_JSON}: {key} is {json.dumps(stated)}, the seeds' "
                           f"results give {json.dumps(value)}; rerun `lit-golf submit`")
    return Verdict(True, rule, f"seeds, scores, bytes and p-value recomputed from {len(runs.seeds)} results_seed*.json")


# Every rule, in report order, with its flag in submission.json's `compliance` (upstream's names where it has one).
RULES: dict[Callable[[Runs], Verdict], str] = {
    check_bytes: "artifact_under_16mb",
    check_training_time: "train_under_600s",
    check_calibration: "gptq_within_budget",
    check_eval_time: "eval_under_600s",
    check_whole_validation_set: "full_val_set",
    check_logged_score: "score_matches_log",
    check_score_first: "score_first_ttt",
    check_no_validation_in_training: "no_val_data_in_training",
    check_significance: "three_seeds",
    check_submission_record: "submission_matches_seeds",
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
