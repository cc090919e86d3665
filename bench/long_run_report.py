"""Plots, receipts and `bench/results/long_run.json` from the run folders of the 600-second runs (issue 28).

Reads what each run recorded (`results.json`, `metrics.csv`, `config.yaml` of its `version_N/` folder; a
`lit-golf test --artifact` of the fit's artifact has already added its scores to that `results.json`) and:

1. into the records folder (`--records`, written by `lit-golf submit RUN --out records/...`), writes
   `train_loss.png` (train loss against steps, and against training seconds when the wall clock logged
   them) and `val_bpb.png` (every `val/*bpb` column of metrics.csv against steps, with the exported EMA,
   quantized and TTT scores at the last step), and copies each run's receipts beside the submission's files.
   Those already ship the run's results.json and train.log (`results_seed<N>.json`, `train_seed<N>.log`: they
   must be the run's byte for byte) and the first run's config.yaml; added, named by seed as `submit` names
   its own: `metrics_seed<N>.csv`, `launch_seed<N>.log` (`--launch-log`: the job's stdout) and, for a run
   whose config is not the shipped one, `config_seed<N>.yaml`. A receipt already there byte for byte is left
   as it is; one that differs is refused unless `--overwrite`. Copies, never moves.
2. runs `lit-golf check` on the records folder (without one: on each run folder) and keeps the flags of the
   rules that passed and failed (the names `submission.json`'s `compliance` uses; "not applicable" is neither);
3. puts one object per run into `--out` (default `bench/results/long_run.json`, written atomically): a run
   of the same config and seed is replaced, the others kept.

Each value is the run's own: `seed`, `steps`, `train_seconds`, `artifact_bytes`, `eval_seconds` from
results.json; `val_docs` = the documents the test scored (`fineweb_projection.eval_docs`); `raw_bpb` = the
raw weights' validation after the last step (metrics.csv `val/bpb`); `ema_bpb` / `quant_bpb` = the export's
plain bpb of the EMA average before quantization / of the artifact (`val_bpb_pre_quant` / `val_bpb_post_quant`,
the fit's validation documents); `quant_gap` = metrics.csv `export/quant_gap_bpb`; `ttt_bpb` = the test's TTT
score; `tokens_per_second` = steps x `data.train_batch_tokens` / train_seconds (as the throughput log counts).
`gpu` is results.json's `hardware` (`--gpu` where a run has none); each run's `commit` is `--commit`: no run
file names the commit its code came from (the lease's `COMMIT` file does). The file's `commit` is its runs'
one commit, or the list of their commits where they differ. A value the run was set to measure but did not
record is an error naming the file and the field; one it was not set to measure is null: `ttt_bpb` when the
test ran without TTT, the export's three with `gptq.measure_quant_gap: false`, `raw_bpb` when no validation
ran after the last step. Bad input is one line naming the path or flag and the fix, exit code 1 (2: flags).

Usage (repository root, one configuration per call; its seeds' runs together):

    .venv/bin/python bench/long_run_report.py RUNS/record_s1337 --config-name record --commit 1a2b3c4 \\
        --records records/2026-12-08_record_600s --launch-log LOGS/record_s1337.log
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_golf.files import atomic_path, copy_atomic, write_atomic  # noqa: E402
from lit_golf.results import CONFIG_NAME, RESULTS_NAME, TRAIN_LOG_NAME  # noqa: E402
from lit_golf.submission.check import (  # noqa: E402
    RULES,
    SUBMISSION_JSON,
    load_runs,
    read_mapping,
    read_run_results,
    verdicts,
)
from lit_golf.submission.submit import read_config  # noqa: E402
from lit_golf.tool_output import disk_errors_as_one_line  # noqa: E402
from lit_golf.tool_parser import run_tool, tool_parser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "long_run.json"
CONFIG_NAMES = ("record", "frontier")
METRICS_NAME = "metrics.csv"
TRAIN_LOSS, TRAIN_SECONDS, RAW_BPB, QUANT_GAP = "train/loss", "train/time_s", "val/bpb", "export/quant_gap_bpb"
# Lightning logs a validation inside training at the count of steps before the step that triggered it
# (`_batches_that_stepped`); the report places it after that step, where train.log's `step N val_bpb` line does.
VALIDATION_STEP_OFFSET = 1
FIT_FIX = "rerun the fit with this lit_golf (`lit-golf run`, or `lit-golf fit`)"
TEST_FIX = "test the artifact: `lit-golf test --config ... --artifact RUN/artifact/artifact.ptz` (or `lit-golf run`)"


@dataclass
class Run:
    """One run folder (`version_N/`) as the report reads it."""

    folder: Path
    results: dict
    metrics: list[dict[str, float]]
    config: dict  # config.yaml as flat dotted keys
    launch_log: Path | None

    @property
    def seed(self) -> int:
        return self.results["seed"]

    def series(self, column: str) -> list[tuple[int, float]]:
        """(step, value) of every metrics.csv row that logged `column`; a validation at the step it followed."""
        offset = VALIDATION_STEP_OFFSET if column.startswith("val/") else 0
        return [(int(row["step"]) + offset, row[column]) for row in self.metrics if column in row]

    def columns(self) -> set[str]:
        return {column for row in self.metrics for column in row}


def run_folder(path: Path) -> Path:
    """The `version_N/` folder `path` names: itself, or the one version folder under it (the logger's
    `save_dir` or `save_dir/name`, as a launch's `--trainer.logger.init_args.save_dir` made it)."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; pass a run folder of `lit-golf fit` or `lit-golf run` "
                                "(its version_N/, or the save_dir that holds it)")
    if re.fullmatch(r"test_\d+", path.name) and (path.parent / CONFIG_NAME).is_file():
        raise ValueError(f"{path} is the folder of a test of a run's artifact; pass the run, {path.parent}")
    if (path / CONFIG_NAME).is_file():
        return path
    found = sorted(p.parent for p in [*path.glob(f"version_*/{CONFIG_NAME}"), *path.glob(f"*/version_*/{CONFIG_NAME}")])
    if not found:
        raise FileNotFoundError(f"{path}: not a run folder (no {CONFIG_NAME}, no version_N/ holding one); pass the "
                                "folder `lit-golf fit` or `lit-golf run` wrote")
    if len(found) > 1:
        raise ValueError(f"{path} holds {len(found)} runs ({', '.join(str(p) for p in found)}); pass the one to report")
    return found[0]


def read_metrics(path: Path) -> list[dict[str, float]]:
    """metrics.csv's rows, each with the columns it logged (empty cells left out)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the run's metrics are what the plots and raw_bpb are read from: "
                                f"pass the folder of a run logged by this lit_golf ({FIT_FIX})")
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    if "step" not in (reader.fieldnames or []):
        raise ValueError(f"{path}: no step column, not a run's metrics.csv; restore the file the run wrote")
    try:
        return [{k: float(v) for k, v in row.items() if k is not None and v not in ("", None)} for row in rows]
    except ValueError as exc:
        raise ValueError(f"{path}: not a metrics table of numbers ({exc}); restore the file the run wrote") from None


def read_run(path: Path, launch_log: Path | None) -> Run:
    folder = run_folder(path)
    if not (folder / TRAIN_LOG_NAME).is_file():
        raise FileNotFoundError(f"{folder / TRAIN_LOG_NAME} is missing; every run of `lit-golf fit` writes it: "
                                f"restore it or {FIT_FIX}")
    if launch_log is not None and not launch_log.is_file():
        raise FileNotFoundError(f"--launch-log {launch_log}: no such file; pass the job's stdout log of {folder}")
    return Run(folder, read_run_results(folder / RESULTS_NAME), read_metrics(folder / METRICS_NAME),
               read_config(folder), launch_log)


def required(run: Run, key: str, fix: str):
    value = run.results.get(key)
    if value is None:
        raise ValueError(f"{run.folder / RESULTS_NAME}: no {key}; {fix}")
    return value


def raw_bpb(run: Run) -> float | None:
    """The raw weights' validation after the last step; None when none ran then."""
    points = run.series(RAW_BPB)
    return points[-1][1] if points and points[-1][0] == run.results["steps"] else None


def quant_gap(run: Run) -> float:
    points = run.series(QUANT_GAP)
    if not points:
        raise ValueError(f"{run.folder / METRICS_NAME}: no {QUANT_GAP}; the export measured it "
                         f"(results.json has val_bpb_post_quant) but the metrics do not hold it: {FIT_FIX}")
    return points[-1][1]


def run_record(run: Run, config_name: str) -> dict:
    """The run's object in long_run.json, but for the check's verdicts."""
    for key in ("seed", "steps", "train_seconds", "artifact_bytes"):
        required(run, key, FIT_FIX)
    if run.results["train_seconds"] <= 0:
        raise ValueError(f"{run.folder / RESULTS_NAME}: train_seconds is {run.results['train_seconds']}, no training "
                         f"was timed; {FIT_FIX}")
    eval_seconds = required(run, "eval_seconds", TEST_FIX)
    projection = required(run, "fineweb_projection", TEST_FIX)
    if projection.get("eval_docs") is None:
        raise ValueError(f"{run.folder / RESULTS_NAME}: fineweb_projection has no eval_docs; {TEST_FIX}")
    ttt_enabled = required(run, "evaluation", TEST_FIX).get("ttt", {}).get("enabled")
    measured = run.config.get("gptq.measure_quant_gap", True)
    batch_tokens = run.config.get("data.train_batch_tokens")
    if batch_tokens is None:
        raise ValueError(f"{run.folder / CONFIG_NAME}: no data.train_batch_tokens; restore the config the run wrote")
    return {
        "config": config_name,
        "seed": run.seed,
        "steps": run.results["steps"],
        "train_seconds": run.results["train_seconds"],
        "tokens_per_second": run.results["steps"] * batch_tokens / run.results["train_seconds"],
        "artifact_bytes": run.results["artifact_bytes"],
        "eval_seconds": eval_seconds,
        "val_docs": projection["eval_docs"],
        "raw_bpb": raw_bpb(run),
        "ema_bpb": required(run, "val_bpb_pre_quant", FIT_FIX) if measured else None,
        "quant_bpb": required(run, "val_bpb_post_quant", FIT_FIX) if measured else None,
        "ttt_bpb": required(run, "ttt_bpb", TEST_FIX) if ttt_enabled else None,
        "quant_gap": quant_gap(run) if measured else None,
    }


def check_rules(folder: Path) -> tuple[list[str], list[str]]:
    """`lit-golf check FOLDER`: its lines printed, the flags of the rules passed and failed returned."""
    results = verdicts(load_runs(folder))
    print(f"lit-golf check {folder}")
    for verdict in results:
        print(f"  {verdict.line()}")
    flags = list(RULES.values())
    return ([flag for flag, v in zip(flags, results, strict=True) if v.ok is True],
            [flag for flag, v in zip(flags, results, strict=True) if v.ok is False])


def check_records(records: Path, runs: list[Run]) -> None:
    """`records` is the submission folder (`lit-golf submit`) of these runs: their results and logs as it ships
    them (`results_seed<N>.json`, `train_seed<N>.log`), byte for byte."""
    if not (records / SUBMISSION_JSON).is_file():
        raise FileNotFoundError(f"--records {records}: not a submission folder (no {SUBMISSION_JSON}); write it with "
                                f"`lit-golf submit RUN --out {records}`")
    for run in runs:
        shipped_as = {f"results_seed{run.seed}.json": RESULTS_NAME, f"train_seed{run.seed}.log": TRAIN_LOG_NAME}
        for name, source in shipped_as.items():
            shipped = records / name
            if not shipped.is_file() or shipped.read_bytes() != (run.folder / source).read_bytes():
                state = "differs from" if shipped.is_file() else "is missing, so it is not the submission of"
                raise ValueError(f"--records {records}: {name} {state} {run.folder / source}; pass this run's "
                                 f"submission, or rerun `lit-golf submit` of the runs with --out {records} --overwrite")


def receipts(run: Run, records: Path) -> dict[str, Path]:
    """Name in the records folder -> the run's file it copies, beside what submit ships (the results, the log and
    the first run's config.yaml): the metrics, the launch log and a config that is not the shipped one."""
    named = {f"metrics_seed{run.seed}.csv": run.folder / METRICS_NAME}
    if run.launch_log is not None:
        named[f"launch_seed{run.seed}.log"] = run.launch_log
    config = run.folder / CONFIG_NAME
    shipped = records / CONFIG_NAME
    if not shipped.is_file() or shipped.read_bytes() != config.read_bytes():
        named[f"config_seed{run.seed}.yaml"] = config
    return named


def receipts_to_copy(runs: list[Run], records: Path, overwrite: bool) -> dict[Path, Path]:
    """Target -> source of every receipt not already in `records` byte for byte; refused in one line when one
    that differs is there and `overwrite` is off."""
    copies = {}
    for run in runs:
        for name, source in receipts(run, records).items():
            target = records / name
            if target.is_file() and target.read_bytes() == source.read_bytes():
                continue
            if target.exists() and not overwrite:
                raise ValueError(f"--records {records}: {name} is there and differs from {source}; pass --overwrite "
                                 "to replace it, or choose the records folder of this run")
            copies[target] = source
    return copies


def save_png(fig, path: Path) -> Path:
    """The figure as a PNG at `path`, written atomically."""
    with atomic_path(path) as partial:
        fig.savefig(partial, format="png", dpi=110)
    return path


def figure(panels: int, width: float):
    """A figure of `panels` axes side by side, drawn by Agg (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * panels, 4), layout="tight")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def plot_train_loss(runs: list[Run], labels: list[str], path: Path) -> Path:
    """Train loss against steps; beside it, against training seconds when the wall clock logged them (each
    loss step placed on the clock's (step, seconds) points, interpolated between them)."""
    import numpy

    timed = any(run.series(TRAIN_SECONDS) for run in runs)
    fig, axes = figure(2 if timed else 1, 6.0)
    for run, label in zip(runs, labels, strict=True):
        loss = run.series(TRAIN_LOSS)
        if not loss:
            raise ValueError(f"{run.folder / METRICS_NAME}: no {TRAIN_LOSS} rows to plot; fit with "
                             "--trainer.log_every_n_steps below the run's steps")
        steps, values = zip(*loss, strict=True)
        axes[0].plot(steps, values, label=label)
        clock = [(0, 0.0), *run.series(TRAIN_SECONDS)]  # the training clock starts at step 0
        if timed and len(clock) > 1:
            axes[1].plot(numpy.interp(steps, *zip(*clock, strict=True)), values, label=label)
    for ax, xlabel in zip(axes, ("step", "training seconds"), strict=False):
        ax.set(xlabel=xlabel, ylabel="train loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_png(fig, path)


def plot_val_bpb(runs: list[Run], labels: list[str], records: list[dict], path: Path) -> Path:
    """Every `val/*bpb` column against steps; the export's EMA and quantized scores and the TTT score at the
    last step."""
    fig, (ax,) = figure(1, 7.0)
    for run, label, record in zip(runs, labels, records, strict=True):
        for column in sorted(c for c in run.columns() if c.startswith("val/") and c.endswith("bpb")):
            steps, values = zip(*run.series(column), strict=True)
            ax.plot(steps, values, marker=".", label=f"{label} {column}")
        for key, marker in (("ema_bpb", "o"), ("quant_bpb", "s"), ("ttt_bpb", "^")):
            if record[key] is not None:
                ax.plot([record["steps"]], [record[key]], marker=marker, linestyle="", label=f"{label} {key}")
    ax.set(xlabel="step", ylabel="validation bits per byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)


def one_of(runs: list[Run], key: str, flag_value: str | None, flag: str) -> str:
    """The value all runs record under `key` (`flag_value` where none does); one line when they disagree."""
    values = {run.results.get(key) for run in runs} - {None}
    if len(values) > 1:
        raise ValueError(f"the runs were recorded on different {key} ({', '.join(sorted(values))}); report each "
                         "machine's runs into their own --out")
    if values and flag_value is not None and flag_value not in values:
        raise ValueError(f"{flag} {flag_value}: the runs record {key} {values.pop()}; leave {flag} out")
    value = values.pop() if values else flag_value
    if value is None:
        raise ValueError(f"{runs[0].folder / RESULTS_NAME}: no {key}; pass {flag}")
    return value


def merged_report(out: Path, gpu: str, commit: str, records: list[dict]) -> dict:
    """`out`'s runs with `records` in place of those of the same config and seed. One file holds one machine
    (runs of another GPU are refused while any of its own remain) but may hold several commits: a record
    run made a lease after its frontier run must sit beside it. So each run names its `commit` (a run of a
    file from before runs named theirs takes the file's), and the file's `commit` is the one they share, or
    the list of them in run order where they differ."""
    report = read_mapping(out, json.loads, json.JSONDecodeError, "restore it or pass another --out") \
        if out.is_file() else {"runs": []}
    runs = report.get("runs")
    if not isinstance(runs, list) or not all(
            isinstance(r, dict) and isinstance(r.get("config"), str) and isinstance(r.get("seed"), int) for r in runs):
        raise ValueError(f"--out {out}: `runs` is not a list of runs with a config and seed each; restore it or "
                         "pass another --out")
    new = {(r["config"], r["seed"]): {**r, "commit": commit} for r in records}
    kept = [r for r in runs if (r.get("config"), r["seed"]) not in new]
    if kept and report.get("gpu") != gpu:
        raise ValueError(f"--out {out} holds runs of gpu {report.get('gpu')} (this report: {gpu}); one file "
                         "holds one machine: pass another --out")
    file_commit = report.get("commit")
    replaced = [new.pop((r["config"], r["seed"]), None) or {**r, "commit": r.get("commit", file_commit)}
                for r in runs]  # in place
    merged = [*replaced, *new.values()]
    commits = list(dict.fromkeys(r["commit"] for r in merged))
    return {"gpu": gpu, "commit": commits[0] if len(commits) == 1 else commits, "runs": merged}


def report(args: argparse.Namespace) -> dict:
    """Everything read, checked and computed before the first write; then receipts, plots and the json."""
    if args.launch_log and len(args.launch_log) != len(args.runs):
        raise ValueError(f"--launch-log: {len(args.launch_log)} logs for {len(args.runs)} runs; one per run, in order")
    logs = args.launch_log or [None] * len(args.runs)
    runs = [read_run(path, log) for path, log in zip(args.runs, logs, strict=True)]
    run_records = [run_record(run, args.config_name) for run in runs]
    seeds = [run.seed for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs repeat a seed ({seeds}); one run per seed of --config-name {args.config_name}")
    gpu = one_of(runs, "hardware", args.gpu, "--gpu")
    records = None if args.records is None else Path(args.records)
    if records is None:
        checks = [check_rules(run.folder) for run in runs]
    else:
        check_records(records, runs)
        copies = receipts_to_copy(runs, records, args.overwrite)
        checks = [check_rules(records)] * len(runs)
    for record, (passed, failed) in zip(run_records, checks, strict=True):
        record["check_passed_rules"], record["check_failed_rules"] = passed, failed
    out = Path(args.out)
    merged = merged_report(out, gpu, args.commit, run_records)
    if records is not None:
        labels = [f"{args.config_name} seed {run.seed}" for run in runs]
        with disk_errors_as_one_line("--records", records):
            for target, source in copies.items():
                copy_atomic(source, target)
            plot_train_loss(runs, labels, records / "train_loss.png")
            plot_val_bpb(runs, labels, run_records, records / "val_bpb.png")
        print(f"{records}: train_loss.png, val_bpb.png; receipts copied: "
              f"{', '.join(sorted(t.name for t in copies)) or 'none (all there)'}")
    with disk_errors_as_one_line("--out", out.parent, unchanged=f"{out} is unchanged"):
        write_atomic(out, json.dumps(merged, indent=2) + "\n")
    print(f"{out}: {len(run_records)} run(s) of {args.config_name} written, {len(merged['runs'])} in all")
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("long_run_report.py", __doc__.splitlines()[0], config_file=False)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (version_N/, or the save_dir holding one)")
    parser.add_argument("--config-name", required=True, choices=CONFIG_NAMES, help="which configuration the runs are")
    parser.add_argument("--commit", required=True, help="the commit the runs' code came from (the lease's COMMIT)")
    parser.add_argument("--records", default=None, help="the runs' submission folder (`lit-golf submit ... --out`)")
    parser.add_argument("--launch-log", nargs="+", type=Path, default=None, help="each run's job log, in order")
    parser.add_argument("--gpu", default=None, help="the GPU, for runs whose results.json records no hardware")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"the report to update (default: {DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true", help="replace receipts in --records that differ")
    return run_tool(parser, argv, report)


if __name__ == "__main__":
    raise SystemExit(main())
