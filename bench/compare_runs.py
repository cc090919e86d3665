"""Side-by-side numbers and plots of lit_golf and upstream training logs (one GPU, fixed steps).

Reads the time-stamped logs that `bench/gpu_run.sh` (lit_golf; removed after `18d0d48`) and the upstream harness
wrote (`[  12.3s] ` prefixes = seconds since launch), and writes `metrics.json` plus two PNGs into the
record folder: train loss against tokens and against wall time since launch, all systems on one
plot. Log names say the system and seed: `<system>_fit_seedN.log` (e.g. `lit_golf_fa4_fit_seed42.log`)
or `upstream_seedN.log`; a `<system>_test_seedN.log` adds that run's post-quantization, sliding and
TTT numbers. Every `lit_golf*` system is compared with `upstream`.
Usage: `python bench/compare_runs.py records/<run>/` (logs in `<run>/logs/`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lit_golf.submission.check import EVALUATION_LINE, EXPORT_LINE  # the lines `check` reads, read alike

TOKENS_PER_STEP = 786_432
STAMP = re.compile(r"^\[\s*(?P<t>[\d.]+)s\] ")
LIT_STEP = re.compile(r"step (?P<step>\d+)/\d+ loss (?P<loss>[\d.]+) tok/s (?P<tps>[\d,]+) step (?P<ms>[\d.]+)ms"
                      r"(?: mfu (?P<mfu>[\d.]+)%)?")
UP_STEP = re.compile(r"(?P<step>\d+)/\d+ train_loss: (?P<loss>[\d.]+) train_time")
LOOP_ON = re.compile(r"(layer looping on at step|layer_loop:enabled step:)\s*(?P<step>\d+)")
VAL = re.compile(r"val_bpb:? (?P<bpb>[\d.]+)")
WARMUP = re.compile(r"compile warm-up: (?P<s>[\d.]+)s")
PEAK = re.compile(r"peak memory:? allocated:? (?P<mib>\d+) MiB")
POST_EMA = re.compile(r"pre-quantization post-ema val_loss:[\d.]+ val_bpb:(?P<bpb>[\d.]+)")
EXPORT_GAP = re.compile(r"export: plain val bpb (?P<pre>[\d.]+) before quantization, (?P<post>[\d.]+) from the artifact")
LOG_NAME = re.compile(r"^(?P<system>.+?)_(?:fit_)?seed(?P<seed>\d+)$")
EVAL_KEYS = {"val_bpb": "post_quant_bpb", "sliding_bpb": "post_quant_sliding_bpb", "ttt_bpb": "post_quant_ttt_bpb",
             "ttt_gain": "ttt_gain_bpb", "ttt_tokens_per_second": "ttt_scored_tokens_per_s", "time_ttt_s": "ttt_seconds",
             "eval_seconds": "eval_seconds", "val_tokens": "eval_tokens"}


@dataclass
class Run:
    name: str
    system: str
    seed: int
    points: list[tuple[float, int, float]] = field(default_factory=list)  # (seconds since launch, step, loss)
    mfu: dict[int, float] = field(default_factory=dict)  # step -> model FLOPs utilization logged with it (lit_golf)
    loop_step: int | None = None
    val_bpb: float | None = None
    compile_warmup_s: float | None = None
    peak_memory_mib: int | None = None
    val_bpb_post_ema: float | None = None
    extra: dict = field(default_factory=dict)  # from the test log and the artifact table

    def seconds_per_step(self, first: int, last: int) -> float:
        """Steady-state seconds per step between logged steps `first` < `last` (launch clock)."""
        at = {step: t for t, step, _ in self.points}
        return (at[last] - at[first]) / (last - first)

    def summary(self) -> dict:
        loop = self.loop_step or 10**9
        steps = [s for _, s, _ in self.points]
        pre = [s for s in steps if 5 <= s <= loop]
        post = [s for s in steps if s >= loop + 5]
        out = {
            "system": self.system, "seed": self.seed, "final_step": steps[-1], "final_train_loss": self.points[-1][2],
            "launch_to_first_logged_step_s": self.points[0][0], "first_logged_step": steps[0],
            "launch_to_last_step_s": self.points[-1][0], "loop_on_at_step": self.loop_step,
            "val_bpb_pre_quant_pre_ema": self.val_bpb, "compile_warmup_s": self.compile_warmup_s,
            "peak_memory_allocated_mib": self.peak_memory_mib, "val_bpb_pre_quant_post_ema": self.val_bpb_post_ema,
            **self.extra,
        }
        if len(pre) >= 2:
            sps = self.seconds_per_step(pre[0], pre[-1])
            out.update(seconds_per_step_before_loop=sps, tokens_per_s_before_loop=TOKENS_PER_STEP / sps)
        if len(post) >= 2:
            sps = self.seconds_per_step(post[0], post[-1])
            out.update(seconds_per_step_after_loop=sps, tokens_per_s_after_loop=TOKENS_PER_STEP / sps)
        return out


def parse(path: Path) -> Run:
    name = LOG_NAME.match(path.stem)
    if name is None:
        raise SystemExit(f"{path}: expected <system>_fit_seedN.log or upstream_seedN.log")
    system, seed = name["system"], int(name["seed"])
    run = Run(path.stem, system, seed)
    pattern = UP_STEP if system == "upstream" else LIT_STEP
    # Bytes, not read_text(): universal newlines would turn the progress bars' \r into line breaks.
    for line in path.read_bytes().decode(errors="replace").split("\n"):
        stamp = STAMP.match(line)
        if stamp is None:
            continue
        seconds = float(stamp["t"])
        for piece in line[stamp.end():].split("\r"):
            if m := pattern.search(piece):
                run.points.append((seconds, int(m["step"]), float(m["loss"])))
                if m.groupdict().get("mfu"):
                    run.mfu[int(m["step"])] = float(m["mfu"]) / 100
            elif m := LOOP_ON.search(piece):
                run.loop_step = int(m["step"])
            elif m := VAL.search(piece):
                run.val_bpb = float(m["bpb"])
            if m := WARMUP.search(piece):
                run.compile_warmup_s = float(m["s"])
            if m := PEAK.search(piece):
                run.peak_memory_mib = int(m["mib"])
            if m := EXPORT_LINE.search(piece):
                run.extra["artifact_total_bytes"] = int(m[1].replace(",", ""))
            if m := POST_EMA.search(piece):
                run.val_bpb_post_ema = float(m["bpb"])
            if m := EXPORT_GAP.search(piece):  # lit_golf's EMA weights before and after quantization
                run.val_bpb_post_ema = float(m["pre"])
                run.extra["quant_gap_bpb"] = float(m["post"]) - float(m["pre"])
    if not run.points:
        raise SystemExit(f"{path}: no training-step lines found; is this a lit_golf or upstream log?")
    return run


def attach_evaluation(run: Run, logs_dir: Path) -> None:
    """Add the numbers of the system's test log for the run's seed, when that log exists."""
    test_log = logs_dir / f"{run.system}_test_seed{run.seed}.log"
    if test_log.is_file():
        for m in EVALUATION_LINE.finditer(test_log.read_bytes().decode(errors="replace")):
            values = dict(pair.split("=", 1) for pair in m[1].split())
            run.extra.update({name: float(values[key]) for key, name in EVAL_KEYS.items() if key in values})


def plot(runs: list[Run], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    systems = sorted({run.system for run in runs})
    colors = dict(zip(systems, ["tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple"], strict=False))
    for axis, label in (("tokens", "training tokens (millions)"), ("time", "seconds since launch")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for run in runs:
            xs = [s * TOKENS_PER_STEP / 1e6 if axis == "tokens" else t for t, s, _ in run.points]
            ax.plot(xs, [loss for _, _, loss in run.points], color=colors[run.system], alpha=0.85,
                    linestyle="-" if run.seed == 1337 else "--", label=f"{run.system} seed {run.seed}")
        vals = [f"{run.system} seed {run.seed}: {run.val_bpb:.4f}" for run in runs if run.val_bpb is not None]
        if vals:
            ax.text(0.30, 0.97, "val bpb at the last step (raw weights)\n" + "\n".join(vals), transform=ax.transAxes,
                    fontsize=7, family="monospace", va="top", bbox=dict(facecolor="white", alpha=0.85, lw=0))
        ax.set_xlabel(label)
        ax.set_ylabel("train loss (nats/token)")
        ax.set_ylim(3.5, 7.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"record config, 1x H100, 100 steps x 786,432 tokens: loss vs {axis}")
        path = out_dir / f"train_loss_vs_{axis}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record_dir", type=Path)
    args = parser.parse_args(argv)
    logs = sorted((args.record_dir / "logs").glob("*seed*.log"))
    runs = [parse(p) for p in logs if "_test_seed" not in p.name]
    for run in runs:
        attach_evaluation(run, args.record_dir / "logs")
    summaries = {run.name: run.summary() for run in runs}
    by_system: dict[str, list[dict]] = {}
    for s in summaries.values():
        by_system.setdefault(s["system"], []).append(s)
    comparison = {}
    for system, items in by_system.items():
        for key in ("val_bpb_pre_quant_pre_ema", "val_bpb_pre_quant_post_ema", "post_quant_ttt_bpb"):
            values = [s[key] for s in items if s.get(key) is not None]
            if values:
                comparison[f"{system}_{key}"] = {
                    "mean": statistics.mean(values), "min": min(values), "max": max(values), "seeds": len(values)}
    for system, items in by_system.items():
        if system == "upstream" or "upstream" not in by_system:
            continue
        for key in ("tokens_per_s_before_loop", "tokens_per_s_after_loop"):
            mean = statistics.mean(s[key] for s in items)
            comparison[f"{system}_over_upstream_{key}"] = mean / statistics.mean(s[key] for s in by_system["upstream"])
        for key in ("val_bpb_pre_quant_pre_ema", "val_bpb_pre_quant_post_ema"):
            ours, theirs = comparison.get(f"{system}_{key}"), comparison.get(f"upstream_{key}")
            if ours and theirs:
                comparison[f"{system}_minus_upstream_{key}"] = ours["mean"] - theirs["mean"]
    metrics = {"runs": summaries, "comparison": comparison}
    (args.record_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for path in plot(runs, args.record_dir):
        print(f"wrote {path}")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
