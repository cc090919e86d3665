"""Paired comparison of lit_golf run folders: `metrics.json` and plots for a `records/` folder.

Each run folder is what `lit-golf run` leaves (`results.json`, TensorBoard events, `train.log`); runs
are named `<variant>_s<seed>` by the folder that holds them (e.g. `logs/gpu/frontier_s42/...`). A run that
stopped before its export (no `results.json`) still gives its training numbers from its events. For every
seed that both the base and the other variant ran, the difference other − base of each number is the
paired difference (same seed, same data order, same initial shared weights); its mean over seeds is
reported with the per-seed values.
TTT seconds are split into compile and scoring; `--ttt-positions VARIANT=N` (the positions TTT runs
through the model on that variant's validation set, `bench/count_ttt_work.py`) adds positions/s of scoring.
Usage: python bench/paired_runs.py --runs DIR [DIR ...] --base record --other frontier --out records/<folder>
       [--commit SHA] [--machine TEXT] [--ttt-positions record=15497536 ...]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

NUMBERS = ("steps", "train_seconds", "val_bpb_raw", "train_loss_final", "val_bpb_pre_quant", "val_bpb_post_quant",
           "quant_gap_bpb", "artifact_bytes", "model_bytes", "code_bytes", "val_bpb", "ttt_bpb", "ttt_seconds",
           "ttt_compile_seconds", "ttt_score_seconds", "eval_seconds", "train_tokens_per_s",
           "ttt_scored_tokens_per_s", "ttt_positions_per_s", "checkpoint_write_s", "calibration_seconds")
NAME = re.compile(r"(?P<variant>.+)_s(?P<seed>\d+)$")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of the run folder, tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, list[tuple[int, float]]] = {}
    for events_dir in sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events_dir))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return tags


def run_numbers(run_dir: Path, ttt_positions: int | None = None) -> dict:
    """The run's headline numbers from results.json (when the run got that far) and its events."""
    results_file = next(run_dir.rglob("results.json"), None)
    results = json.loads(results_file.read_text()) if results_file else {}
    numbers = {k: results.get(k) for k in NUMBERS if k in results}
    pre, post = results.get("val_bpb_pre_quant"), results.get("val_bpb_post_quant")
    if pre is not None and post is not None:
        numbers["quant_gap_bpb"] = post - pre
    events = scalars(run_dir)
    for key, tag in (("val_bpb_raw", "val/bpb"), ("train_loss_final", "train/loss")):
        if events.get(tag):
            numbers[key] = max(events[tag])[1]  # the last step's value
    speeds = [v for step, v in events.get("train/tokens_per_s", []) if step > 5]  # past the first, compile-era steps
    if speeds:
        numbers["train_tokens_per_s"] = statistics.fmean(speeds)
    writes = [v for _, v in events.get("checkpoint/write_s", [])]
    if writes:
        numbers["checkpoint_write_s"] = max(writes)
    for key, tag in (("ttt_seconds", "test/time_ttt_s"), ("ttt_compile_seconds", "test/time_ttt_compile_s")):
        if events.get(tag):
            numbers[key] = events[tag][-1][1]
    if "ttt_seconds" in numbers:
        numbers["ttt_score_seconds"] = numbers["ttt_seconds"] - numbers.get("ttt_compile_seconds", 0.0)
        if events.get("test/ttt_tokens"):
            numbers["ttt_scored_tokens_per_s"] = events["test/ttt_tokens"][-1][1] / numbers["ttt_score_seconds"]
        if ttt_positions:
            numbers["ttt_positions_per_s"] = ttt_positions / numbers["ttt_score_seconds"]
    numbers["train_loss"] = events.get("train/loss", [])
    return numbers


def collect(run_roots: list[Path], ttt_positions: dict[str, int] | None = None) -> dict[str, dict[int, dict]]:
    """variant -> seed -> numbers, for every `<variant>_s<seed>` folder under the given roots that has events."""
    runs: dict[str, dict[int, dict]] = {}
    for root in run_roots:
        for folder in sorted(p for p in [root, *root.iterdir()] if p.is_dir()):
            match = NAME.match(folder.name)
            if match and any(folder.rglob("events.out.tfevents.*")):
                positions = (ttt_positions or {}).get(match["variant"])
                runs.setdefault(match["variant"], {})[int(match["seed"])] = run_numbers(folder, positions)
    return runs


def paired(runs: dict[str, dict[int, dict]], base: str, other: str) -> dict:
    seeds = sorted(set(runs.get(base, {})) & set(runs.get(other, {})))
    diffs: dict[str, dict] = {}
    for key in NUMBERS:
        per_seed = {s: runs[other][s][key] - runs[base][s][key] for s in seeds
                    if isinstance(runs[base][s].get(key), (int, float)) and isinstance(runs[other][s].get(key), (int, float))}
        if per_seed:
            diffs[key] = {"per_seed": per_seed, "mean": statistics.fmean(per_seed.values())}
    return {"seeds": seeds, "difference_other_minus_base": diffs}


def plot(runs: dict[str, dict[int, dict]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, seeds in sorted(runs.items()):
        for seed, numbers in sorted(seeds.items()):
            points = numbers.get("train_loss") or []
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], label=f"{variant} s{seed}")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.legend()
    ax.grid(alpha=0.3)
    path = out / "train_loss.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="folders holding <variant>_s<seed> run folders")
    parser.add_argument("--base", required=True)
    parser.add_argument("--other", required=True, nargs="+", help="variants compared with the base, each paired")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--commit", default=None)
    parser.add_argument("--machine", default=None)
    parser.add_argument("--ttt-positions", nargs="*", default=[], metavar="VARIANT=N",
                        help="positions TTT runs on each variant's validation set (bench/count_ttt_work.py)")
    args = parser.parse_args(argv)
    positions = {name: int(count) for name, count in (item.split("=", 1) for item in args.ttt_positions)}
    runs = {v: seeds for v, seeds in collect(args.runs, positions).items() if v in {args.base, *args.other}}
    if args.base not in runs:
        raise SystemExit(f"no {args.base}_s<seed> run with TensorBoard events under {[str(r) for r in args.runs]}")
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "commit": args.commit, "machine": args.machine,
        "runs": {v: {s: {k: n for k, n in numbers.items() if k != "train_loss"} for s, numbers in seeds.items()}
                 for v, seeds in runs.items()},
        "paired": {other: paired(runs, args.base, other) for other in args.other},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot(runs, args.out)
    print(json.dumps(metrics["paired"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
