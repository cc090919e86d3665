"""`bench/results/train_speed.json` (issue 27) from one side-by-side lease: upstream's and lit_golf's training logs,
the levers' whole-step benchmark and, when run, a paired equal-time pair.

Inputs, all from one device call where the issue asks it (the same GPU for every tok/s):
- `SIDE_BY_SIDE`: a folder whose `logs/` holds launch-clocked fixed-step training logs as `bench/compare_runs.py`
  reads them: `upstream_seed<N>.log` (`lease/run_upstream.sh`) and `<system>_fit_seed<N>.log` for each lit_golf
  setting (`lease/stamped.sh` around `lit-golf fit ... --config configs/overrides/fixed_steps_1gpu.yaml`), e.g.
  `lit_golf_fa2_fit_seed1337.log`, `lit_golf_fa4_fit_seed1337.log`. Steady-state tok/s before and after layer
  looping are compare_runs' (launch clock, steps 5 .. loop and loop + 5 .. last), means over seeds.
- `--fastest SYSTEM` (default: the lit_golf system with the highest mean tok/s before looping) against
  `--base SYSTEM` (the plain bf16 path, default `lit_golf_fa2`): `paired_raw_bpb_delta` and
  `paired_quant_gap_delta` are means over the seeds both ran of fastest − base (raw weights' val bpb at the last
  step; the export's quantization gap), each seed's difference kept too.
- `--levers FILE [FILE ...]`: `bench/train_step_levers.py`'s JSONs; their record model's levers go in as `levers`, each
  with its speedup over the first file's `bf16` (later files chained through a lever they share), and
  `levers_vs_upstream_estimate` multiplies those by the side by side's `--base` / upstream (an estimate only).
- `--equal-time FAST BASE`: the run folders of two wall-clock fits of equal budget and seed (fastest setting,
  base): `equal_time_bpb_delta` = FAST's raw val bpb after its last step − BASE's (null when not run).
`mfu` is the median of the fastest system's logged MFU before and after looping (its `Throughput` lines).
`gpu` and `commit` are flags: no log names either for certain. Bad input: one line naming the file and the fix.

    .venv/bin/python bench/train_speed_report.py records/2026-11-24_enwiki2015_1xH100_fa4 --base lit_golf_varlen \\
        --gpu "1x NVIDIA H100 80GB HBM3" --commit 1a2b3c4 --levers bench/results/levers_h100_record.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_runs import Run, parse  # noqa: E402
from long_run_report import raw_bpb, read_run  # noqa: E402

from lit_golf.files import write_atomic  # noqa: E402
from lit_golf.tool_output import disk_errors_as_one_line  # noqa: E402
from lit_golf.tool_parser import run_tool, tool_parser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "train_speed.json"
TARGETS = {"before_loop": 1.35, "after_loop": 1.30}  # issue 27: lit_golf's fastest over upstream, same GPU
UPSTREAM = "upstream"
FIT_FIX = "pass the side-by-side folder whose logs/ holds <system>_fit_seed<N>.log and upstream_seed<N>.log"


def read_runs(folder: Path) -> dict[str, list[Run]]:
    """The fit logs under `folder/logs`, by system."""
    logs = folder / "logs"
    if not logs.is_dir():
        raise FileNotFoundError(f"{logs}: no such folder; {FIT_FIX}")
    runs: dict[str, list[Run]] = {}
    for path in sorted(logs.glob("*seed*.log")):
        if "_test_seed" not in path.name:
            run = parse(path)
            runs.setdefault(run.system, []).append(run)
    if UPSTREAM not in runs:
        raise ValueError(f"{logs}: no upstream_seed<N>.log; run `lease/run_upstream.sh` beside lit_golf's fits")
    if len(runs) == 1:
        raise ValueError(f"{logs}: no lit_golf <system>_fit_seed<N>.log beside upstream's; {FIT_FIX}")
    return runs


def mean_of(runs: list[Run], key: str) -> float:
    values = [run.summary().get(key) for run in runs]
    if any(value is None for value in values):
        raise ValueError(f"{runs[0].name}: no {key}: the log needs logged steps from 5 up to the loop switch and "
                         "5 past it (log every 5 steps, 100 steps with looping at 0.35)")
    return statistics.mean(values)


def paired(fast: list[Run], base: list[Run], key: str) -> dict | None:
    """Mean and per-seed difference fast − base of `key` over the seeds both ran; None without a shared seed."""
    ours = {run.seed: run.summary().get(key) for run in fast}
    theirs = {run.seed: run.summary().get(key) for run in base}
    seeds = sorted(s for s in ours.keys() & theirs.keys() if ours[s] is not None and theirs[s] is not None)
    if not seeds:
        return None
    per_seed = {str(seed): ours[seed] - theirs[seed] for seed in seeds}
    return {"mean": statistics.mean(per_seed.values()), "per_seed": per_seed}


def logged_mfu(runs: list[Run]) -> dict[str, float | None]:
    """Median MFU of the runs' logged steps before and after their loop switch."""
    before, after = [], []
    for run in runs:
        loop = run.loop_step or 10**9
        before += [mfu for step, mfu in run.mfu.items() if 5 <= step <= loop]
        after += [mfu for step, mfu in run.mfu.items() if step >= loop + 5]
    return {"before_loop": statistics.median(before) if before else None,
            "after_loop": statistics.median(after) if after else None}


def equal_time(fast: Path, base: Path) -> dict:
    """The raw val bpb each wall-clock run reached after its last step, and fast − base."""
    runs = {"fast": read_run(fast, None), "base": read_run(base, None)}
    reached = {}
    for side, run in runs.items():
        bpb = raw_bpb(run)
        if bpb is None:
            raise ValueError(f"{run.folder}: no validation after the last step; rerun the fit with validation at "
                             "the end of training (the wall clock's last step validates by default)")
        reached[side] = {"run": str(run.folder), "steps": run.results["steps"],
                         "train_seconds": run.results.get("train_seconds"), "raw_bpb": bpb}
    if runs["fast"].seed != runs["base"].seed:
        raise ValueError(f"--equal-time: seeds {runs['fast'].seed} and {runs['base'].seed} differ; pair one seed")
    return {**reached, "delta": reached["fast"]["raw_bpb"] - reached["base"]["raw_bpb"]}


def speed_report(args: argparse.Namespace) -> dict:
    runs = read_runs(Path(args.side_by_side))
    ours = {system: items for system, items in runs.items() if system != UPSTREAM}
    for flag, system in (("--base", args.base), ("--fastest", args.fastest)):
        if system is not None and system not in ours:
            raise ValueError(f"{flag} {system}: no such system among the logs ({', '.join(sorted(ours))})")
    fastest = args.fastest or max(ours, key=lambda s: mean_of(ours[s], "tokens_per_s_before_loop"))
    tok_s = {phase: mean_of(ours[fastest], f"tokens_per_s_{phase}") for phase in TARGETS}
    upstream = {phase: mean_of(runs[UPSTREAM], f"tokens_per_s_{phase}") for phase in TARGETS}
    speedup = {phase: tok_s[phase] / upstream[phase] for phase in TARGETS}
    base = ours.get(args.base)
    raw = paired(ours[fastest], base, "val_bpb_pre_quant_pre_ema") if base and fastest != args.base else None
    gap = paired(ours[fastest], base, "quant_gap_bpb") if base and fastest != args.base else None
    levers = chained_levers([Path(p) for p in args.levers]) if args.levers else None
    timed = equal_time(Path(args.equal_time[0]), Path(args.equal_time[1])) if args.equal_time else None
    return {
        "gpu": args.gpu,
        "commit": args.commit,
        "fastest_system": fastest,
        "base_system": args.base if base else None,
        "upstream_tok_s_before_loop": upstream["before_loop"],
        "upstream_tok_s_after_loop": upstream["after_loop"],
        "tok_s_before_loop": tok_s["before_loop"],
        "tok_s_after_loop": tok_s["after_loop"],
        "speedup_before_loop": speedup["before_loop"],
        "speedup_after_loop": speedup["after_loop"],
        "targets": TARGETS,
        "target_met": all(speedup[phase] >= TARGETS[phase] for phase in TARGETS),
        "systems": {system: {phase: mean_of(items, f"tokens_per_s_{phase}") for phase in TARGETS}
                    | {"seeds": sorted(run.seed for run in items)} for system, items in runs.items()},
        "mfu": logged_mfu(ours[fastest]),
        "levers": levers,
        "paired_raw_bpb_delta": None if raw is None else raw["mean"],
        "paired_raw_bpb_delta_per_seed": None if raw is None else raw["per_seed"],
        "paired_quant_gap_delta": None if gap is None else gap["mean"],
        "paired_quant_gap_delta_per_seed": None if gap is None else gap["per_seed"],
        "equal_time_bpb_delta": None if timed is None else timed["delta"],
        "equal_time": timed,
        "levers_vs_upstream_estimate": None if levers is None or base is None else upstream_estimate(
            levers["record"], mean_of(base, "tokens_per_s_before_loop") / upstream["before_loop"], args.base),
    }


def chained_levers(paths: list[Path]) -> dict:
    """The record model's levers of `bench/train_step_levers.py` JSONs, each lever's `speedup_before_loop` over the
    first file's `bf16`: a later file (another call, another box) is scaled through the first lever it timed that the
    files before it timed too (`chained_via`). A lever measured again keeps its first numbers; the later ones are
    listed under `remeasured`."""
    record: dict = {}
    calls = [(path, levers_json(path)) for path in paths]
    for path, call in calls:
        measured = call.get("levers", {}).get("record") or {}
        timed = {name: lever for name, lever in measured.items() if lever.get("tok_s_before_loop")}
        if not record:
            if "bf16" not in timed:
                raise ValueError(f"--levers {path}: the first file needs a timed `bf16` lever "
                                 "(the base of every ratio)")
            via, scale = None, 1.0 / timed["bf16"]["tok_s_before_loop"]
        else:
            links = sorted(name for name, lever in record.items() if "speedup_before_loop" in lever)
            via = next((name for name in timed if name in links), None)
            if via is None:
                raise ValueError(f"--levers {path}: no timed lever in common with the files before it; time one "
                                 f"of {links} in the same call")
            scale = record[via]["speedup_before_loop"] / timed[via]["tok_s_before_loop"]
        for name, lever in measured.items():
            entry = {**lever, "source": str(path), "chained_via": via}
            if name in timed:
                entry["speedup_before_loop"] = round(lever["tok_s_before_loop"] * scale, 4)
            if name in record:
                record[name].setdefault("remeasured", []).append(entry)
            else:
                record[name] = entry
    return {"calls": [{"source": str(path), "gpu": call.get("gpu"), "commit": call.get("commit")}
                      for path, call in calls], "record": record}


def levers_json(path: Path) -> dict:
    """One `bench/train_step_levers.py` JSON, or a one-line error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"--levers {path}: no such file; pass bench/train_step_levers.py's --out")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--levers {path}: not JSON ({err}); pass bench/train_step_levers.py's --out") from None


def upstream_estimate(record: dict, base_over_upstream: float, base: str) -> dict:
    """Each lever's chained speedup over bf16 times the side by side's `base` / upstream: an estimate, not the
    issue's same-call ratio (the levers ran in other calls than the side by side)."""
    return {"what": f"NOT the issue's same-call ratio: each lever's tok/s over bf16 (chained through --levers) "
                    f"times the side by side's {base} / upstream before looping",
            "base_over_upstream": round(base_over_upstream, 4),
            "before_loop": {name: round(lever["speedup_before_loop"] * base_over_upstream, 3)
                            for name, lever in record.items() if "speedup_before_loop" in lever}}


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("train_speed_report.py", __doc__.splitlines()[0], config_file=False)
    parser.add_argument("side_by_side", help="the folder whose logs/ holds the side-by-side fit logs")
    parser.add_argument("--gpu", required=True, help="the GPU every log ran on, e.g. '1x NVIDIA H100 80GB HBM3'")
    parser.add_argument("--commit", required=True, help="the commit lit_golf's fits ran (the lease's COMMIT)")
    parser.add_argument("--base", default="lit_golf_fa2", help="the plain bf16 lit_golf system (default lit_golf_fa2)")
    parser.add_argument("--fastest", default=None, help="the lit_golf system reported (default: the fastest)")
    parser.add_argument("--levers", nargs="+", default=None,
                        help="bench/train_step_levers.py's JSONs; the first with a bf16 lever, later ones "
                             "chained to it")
    parser.add_argument("--equal-time", nargs=2, metavar=("FAST_RUN", "BASE_RUN"), default=None,
                        help="the run folders of the paired equal-wall-clock fits (fastest setting, base)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"the report (default: {DEFAULT_OUT})")
    return run_tool(parser, argv, write_report)


def write_report(args: argparse.Namespace) -> None:
    report = speed_report(args)
    out = Path(args.out)
    with disk_errors_as_one_line("--out", out.parent, unchanged=f"{out} is unchanged"):
        write_atomic(out, json.dumps(report, indent=2) + "\n")
    verdict = "met" if report["target_met"] else "not met"
    print(f"{report['fastest_system']}: {report['tok_s_before_loop']:,.0f} / {report['tok_s_after_loop']:,.0f} tok/s "
          f"before / after looping = {report['speedup_before_loop']:.3f}x / {report['speedup_after_loop']:.3f}x "
          f"upstream (targets {TARGETS['before_loop']}x / {TARGETS['after_loop']}x: {verdict})")
    print(f"{out}: written")


if __name__ == "__main__":
    raise SystemExit(main())
