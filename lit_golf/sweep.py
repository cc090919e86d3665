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

from lit_golf.tool_parser import tool_parser

log = logging.getLogger("lit_golf")

# The columns of the table, from each trial's results.json (lit_golf.results.RunResults).
COLUMNS = ("steps", "train_seconds", "val_bpb_pre_quant", "val_bpb_post_quant", "artifact_bytes", "ttt_bpb",
           "final_bpb", "eval_seconds")
# The stage whose keys mark a trial as finished.
DONE_KEYS = {"fit": "val_bpb_post_quant", "run": "final_bpb"}


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
    argv = [sys.executable, "-m", "lit_golf.cli", *trial.argv(command, configs, extra, folder)]
    log.info("sweep: %s: %s", trial.name, " ".join(argv[3:]))
    with open(folder / "launch.log", "w") as launch_log:
        code = subprocess.run(argv, stdout=launch_log, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        log.warning("sweep: %s failed (exit %d), see %s; rerunning the sweep retries it", trial.name, code,
                    folder / "launch.log")
        return None
    return trial_results(folder)


def write_tables(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """results.csv (one row per trial) and results.md (trials, then the mean over seeds per setting)."""
    header = ["setting", "seed", *COLUMNS]
    csv_path = out / "results.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

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
    md_path = out / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def sweep(configs: list[str], grid: list[str], seeds: list[int], out: Path, command: str = "fit",
          extra: list[str] | None = None) -> list[dict]:
    planned = trials(parse_grid(grid), seeds)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, trial in enumerate(planned, 1):
        log.info("sweep: trial %d/%d", i, len(planned))
        results = run_trial(trial, command, configs, extra or [], out)
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
    done = DONE_KEYS[args.command]
    return 0 if all(row.get(done) is not None for row in rows) else 1
