"""`lit-golf sweep`: a grid of dotted overrides x seeds, one subprocess launch per trial, one results table.

Each trial is `lit-golf <command> <configs> --seed_everything SEED --KEY VALUE ...` in its own folder
`<out>/trials/<trial>/` (the logger's save_dir), run as a child process so that a crash or an OOM ends
one trial, not the sweep. A trial whose `results.json` is complete is skipped when the sweep is run
again (resumable); a failed one is retried. At the end every trial's `results.json` becomes
`<out>/results.csv` and `<out>/results.md`: one row per trial, then the mean over seeds per setting.

    lit-golf sweep --config tiny_cpu --config overrides/fixed_steps_cpu.yaml \
        --grid model.optim.matrix_lr=0.02,0.03 --seeds 1,2 --out sweeps/lr
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import itertools
import json
import logging
import math
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ArgumentParser

from lit_golf.files import write_atomic
from lit_golf.tool_output import disk_errors_as_one_line, output_folder
from lit_golf.tool_parser import tool_parser

log = logging.getLogger("lit_golf")

# The columns of the table, from each trial's results.json (lit_golf.results.RunResults).
COLUMNS = ("steps", "train_seconds", "val_bpb_pre_quant", "val_bpb_post_quant", "artifact_bytes", "ttt_bpb",
           "final_bpb", "eval_seconds")
# The stage whose keys mark a trial as finished.
DONE_KEYS = {"fit": "val_bpb_post_quant", "run": "final_bpb"}
# What the sweep sets for every trial itself (a grid or the arguments after `--` may not), and what to use instead.
LOGS_HERE = "--out (each trial logs into its own folder, where the sweep reads its results.json)"
SWEEP_SETS = {"seed_everything": "--seeds", "trainer.logger": LOGS_HERE, "trainer.logger.init_args.save_dir": LOGS_HERE,
              "trainer.logger.save_dir": LOGS_HERE}
# The arguments a trial was launched with, in its folder: a rerun resumes only the same trial.
TRIAL_RECORD = "trial.json"


@dataclass(frozen=True)
class Trial:
    overrides: tuple[tuple[str, str], ...]
    seed: int

    @property
    def setting(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.overrides) or "(base)"

    @property
    def name(self) -> str:
        """A folder name: the overrides' last key parts and values, then the seed."""
        parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.overrides]
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "__".join(parts + [f"seed={self.seed}"]))

    def argv(self, command: str, configs: list[str], extra: list[str], save_dir: Path) -> list[str]:
        args = [command]
        for config in configs:
            args += ["--config", config]
        args += ["--seed_everything", str(self.seed), "--trainer.logger.init_args.save_dir", str(save_dir)]
        for key, value in self.overrides:
            args += [f"--{key}", value]
        return args + extra


def parse_grid(entries: list[str]) -> list[tuple[str, list[str]]]:
    """`KEY=V1,V2` entries as (key, values); one line naming the entry when malformed."""
    grid = []
    for entry in entries:
        key, sep, values = entry.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key or not values:
            raise ValueError(f"--grid {entry!r}: expected DOTTED.KEY=VALUE1,VALUE2 (e.g. model.optim.matrix_lr=0.02,0.03)")
        grid.append((key, [v.strip() for v in values.split(",")]))
    return grid


def trials(grid: list[tuple[str, list[str]]], seeds: list[int]) -> list[Trial]:
    keys = [k for k, _ in grid]
    combos = itertools.product(*(values for _, values in grid)) if grid else [()]
    return [Trial(tuple(zip(keys, combo, strict=True)), seed) for combo in combos for seed in seeds]


def _flag_key(arg: str) -> str | None:
    """`model.optim.matrix_lr` for `--model.optim.matrix_lr` or `--model.optim.matrix_lr=0.1`; None for a value."""
    return arg[2:].partition("=")[0] if arg.startswith("--") else None


def check_plan(grid: list[tuple[str, list[str]]], seeds: list[int], extra: list[str]) -> list[Trial]:
    """The trials, once nothing in the plan would make two of them the same run or label a run wrongly: a key
    or value given twice, a grid key the arguments after `--` override, a seed or logger set by hand."""
    keys = [key for key, _ in grid]
    for key, values in grid:
        if keys.count(key) > 1:
            raise ValueError(f"--grid {key} is given twice: put all its values in one --grid {key}=V1,V2")
        repeated = next((v for v in values if values.count(v) > 1), None)
        if repeated is not None:
            raise ValueError(f"--grid {key} repeats the value {repeated!r}: give each value once")
        if key in SWEEP_SETS:
            raise ValueError(f"--grid {key}: the sweep sets it for every trial; use {SWEEP_SETS[key]}")
    for arg in extra:
        key = _flag_key(arg)
        if key is None:
            continue
        if key in SWEEP_SETS:
            raise ValueError(f"{arg} after --: the sweep sets {key} for every trial; use {SWEEP_SETS[key]}")
        if key in keys:
            raise ValueError(f"--grid {key} is also given after -- ({arg}), which would override it in every trial: "
                             "drop one")
    repeated_seed = next((seed for seed in seeds if seeds.count(seed) > 1), None)
    if repeated_seed is not None:
        raise ValueError(f"--seeds repeats seed {repeated_seed}: give each seed once")
    planned = trials(grid, seeds)
    by_name: dict[str, Trial] = {}
    for trial in planned:
        other = by_name.setdefault(trial.name, trial)
        if other is not trial:
            raise ValueError(f"--grid settings {other.setting!r} and {trial.setting!r} make the same trial folder "
                             f"{trial.name}: make the values differ in letters or digits")
    return planned


def _dotted_keys(config: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def check_against_config(command: str, configs: list[str], grid: list[tuple[str, list[str]]], extra: list[str]) -> None:
    """Parse the trials' command line with every grid value, as each launch would, before launching any: a
    misspelled key or a value of the wrong type is one line here (with the closest key) instead of a failure
    of every trial, told only in its launch log."""
    from lit_golf.cli import one_line
    from lit_golf.lightning_cli import ALIASES, LINKED, printed_config

    base = [command, *(arg for config in configs for arg in ("--config", config)), *extra]
    try:
        keys = _dotted_keys(printed_config(base))
    except argparse.ArgumentError as err:
        raise ValueError(f"the trials' configs and arguments after -- do not parse: {one_line(str(err))}") from None
    # jsonargparse also takes a class's arguments without `init_args`; derived keys and aliases fail with their own line
    known = {*keys, *(key.replace(".init_args", "") for key in keys), *LINKED, *(a.lstrip("-") for a in ALIASES)}
    for key, values in grid:
        if key not in known:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; see `lit-golf {command} --print_config`"
            raise ValueError(f"--grid {key}: `lit-golf {command}` has no such key{hint}")
        for value in values:
            try:
                printed_config([*base, f"--{key}", value])
            except (argparse.ArgumentError, ValueError) as err:
                raise ValueError(f"--grid {key}={value}: {one_line(str(err))}") from None


def check_resumable(planned: list[Trial], command: str, configs: list[str], extra: list[str], out: Path) -> None:
    """A trial folder of an earlier sweep in `out` must have been launched with the same arguments, or its
    results would stand in this sweep's table for a run it did not make."""
    for trial in planned:
        record = out / "trials" / trial.name / TRIAL_RECORD
        if not record.is_file():
            continue
        launched = json.loads(record.read_text(encoding="utf-8"))
        wanted = trial.argv(command, configs, extra, out / "trials" / trial.name)
        if launched != wanted:
            i = next((i for i, (a, b) in enumerate(zip(launched, wanted, strict=False)) if a != b),
                     min(len(launched), len(wanted)))
            then, now = (args[i] if i < len(args) else "nothing" for args in (launched, wanted))
            raise ValueError(f"--out {out} already holds trial {trial.name}, launched with other arguments (argument "
                             f"{i + 1}: {then} then, {now} now): pass another --out, or delete that trial folder to "
                             "run it anew")


def trial_results(folder: Path) -> dict | None:
    """The newest results.json under a trial's folder, or None."""
    found = sorted(folder.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else None


def run_trial(trial: Trial, command: str, configs: list[str], extra: list[str], out: Path) -> dict | None:
    folder = out / "trials" / trial.name
    done_key = DONE_KEYS.get(command, "final_bpb")
    results = trial_results(folder) if folder.is_dir() else None
    if results is not None and results.get(done_key) is not None:
        log.info("sweep: %s already done, skipped", trial.name)
        return results
    folder.mkdir(parents=True, exist_ok=True)
    trial_argv = trial.argv(command, configs, extra, folder)
    write_atomic(folder / TRIAL_RECORD, json.dumps(trial_argv))
    argv = [sys.executable, "-m", "lit_golf.cli", *trial_argv]
    log.info("sweep: %s: %s", trial.name, " ".join(argv[3:]))
    with open(folder / "launch.log", "w") as launch_log:
        code = subprocess.run(argv, stdout=launch_log, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        log.warning("sweep: %s failed (exit %d), see %s; rerunning the sweep retries it", trial.name, code,
                    folder / "launch.log")
        return None
    results = trial_results(folder)
    if results is None or results.get(done_key) is None:
        log.warning("sweep: %s exited 0 but recorded no %s in %s (see %s)", trial.name, done_key, folder,
                    folder / "launch.log")
    return results


def write_tables(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """results.csv (one row per trial) and results.md (trials, then the mean over seeds per setting)."""
    header = ["setting", "seed", *COLUMNS]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = write_atomic(out / "results.csv", table.getvalue())

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.5f}" if abs(value) < 100 else f"{value:.1f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row.get(k)) for k in header) + " |" for row in rows]
    lines += ["", "Mean over seeds:", "", "| setting | seeds | " + " | ".join(COLUMNS) + " |",
              "|" + "---|" * (len(COLUMNS) + 2)]
    for setting, group in itertools.groupby(sorted(rows, key=lambda r: r["setting"]), key=lambda r: r["setting"]):
        group = list(group)
        means = []
        for key in COLUMNS:
            values = [r[key] for r in group if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            means.append(cell(float(statistics.fmean(values))) if values else "")
        lines.append(f"| {setting} | {len(group)} | " + " | ".join(means) + " |")
    md_path = write_atomic(out / "results.md", "\n".join(lines) + "\n")
    return csv_path, md_path


def sweep(configs: list[str], grid: list[str], seeds: list[int], out: Path, command: str = "fit",
          extra: list[str] | None = None) -> list[dict]:
    """Every trial's row (its results, None where it failed); everything is checked before the first launch."""
    extra = extra or []
    parsed_grid = parse_grid(grid)
    planned = check_plan(parsed_grid, seeds, extra)
    output_folder(out, "--out")
    check_resumable(planned, command, configs, extra, out)
    check_against_config(command, configs, parsed_grid, extra)
    rows = []
    with disk_errors_as_one_line("--out", out):
        for i, trial in enumerate(planned, 1):
            log.info("sweep: trial %d/%d", i, len(planned))
            results = run_trial(trial, command, configs, extra, out)
            rows.append({"setting": trial.setting, "seed": trial.seed, **{k: (results or {}).get(k) for k in COLUMNS}})
        csv_path, md_path = write_tables(rows, out)
    failed = sum(1 for row in rows if row.get(DONE_KEYS.get(command, "final_bpb")) is None)
    log.info("sweep: %d trials (%d failed); tables %s, %s", len(rows), failed, csv_path, md_path)
    return rows


def build_parser() -> ArgumentParser:
    parser = tool_parser("lit-golf sweep", __doc__.splitlines()[0], config_file=False)
    parser.add_argument("--config", action="append", default=[], required=True,
                        help="config file or shipped name, repeatable (as for fit)")
    parser.add_argument("--grid", action="append", default=[], help="DOTTED.KEY=V1,V2 (repeatable: the product)")
    parser.add_argument("--seeds", default="1337", help="comma-separated seeds (default 1337)")
    parser.add_argument("--out", type=Path, required=True, help="sweep folder (trials/, results.csv, results.md)")
    parser.add_argument("--command", choices=("fit", "run"), default="fit",
                        help="fit (train + export) or run (fit + export + TTT test)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after `--`: arguments given to every trial")
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 1337,42") from None
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    rows = sweep(args.config, args.grid, seeds, args.out, args.command, extra)
    failed = [row for row in rows if row.get(DONE_KEYS[args.command]) is None]
    if failed:
        print(f"lit-golf sweep: error: {len(failed)} of {len(rows)} trials recorded no {DONE_KEYS[args.command]} (each "
              f"one's launch.log under {args.out / 'trials'} says why); run the sweep again to retry them",
              file=sys.stderr)
        return 1
    return 0
