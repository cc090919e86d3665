"""Whole training steps (forward + backward + optimizer) of the record and record+frontier models, per speed lever.

Each (model, lever) is built from the shipped configs (`model.gpt`, `model.optim` and the batch shape of
`data`, layered as `lit-golf fit` layers them), compiled as the fit compiles it (`torch.compile(gpt,
fullgraph=True, dynamic=False)` on CUDA, eager elsewhere) and stepped as `GolfLightningModule.training_step`
steps it: every micro-batch's loss / n backward, then the Muon + AdamW step and `zero_grad`, all inside bf16
autocast as Lightning's `bf16-mixed` wraps a training step (CUDA; fp32 on CPU). `--warmup` steps (the first
compiles), then `--steps` timed steps between two device syncs, then one step under the profiler (GPU time
and count per kernel class), before and after layer looping. Synthetic packed documents
(`bench/profile_step.py`), base learning rates, world size 1.

Levers are GPTConfig overrides on top of the base (`micro_x2`: the `data` batch shape instead, twice the
tokens per micro-batch, half the micro-batches per step: the same step, fewer and larger kernels); `a+b`
combines them. The base attention is
`--base-attention` (default `torch_varlen` on CUDA, the FA2 stand-in of the 2026-11-24 side by side, so
that `auto` does not hand the FA4 lever to the baseline; `auto` elsewhere). A lever that cannot run here
(FA4 not importable) is recorded as skipped with the reason.

Output: `--out` (JSON, never an existing file), rewritten atomically after each lever: `gpu`, `commit`,
the step shape, and `levers[model][lever]` with `tok_s_`, `ms_per_step_`, `peak_mib_`, `mfu_`,
`kernels_per_step_`, `ms_per_kernel_class_`, `kernels_per_class_` and `speedup_` (over the same model's
`bf16` lever) `before_loop` / `after_loop`, issue 27's `levers` fields.

Each lever compiles twice (before and after looping), and on an H100 with a cold cache a lever takes about 4
minutes (2026-12-07: 70-90 s a compile, plus the timed and profiled steps), so all 12 (model, lever) pairs do
not fit one device call: run a few per command with `--models` / `--levers`, each into its own `--out` file,
and screen levers with `--phases before_loop` (one compile each).

    python bench/train_step_levers.py --out bench/results/levers_h100.json                         # GPU, all
    python bench/train_step_levers.py --out /tmp/l.json --models record --levers bf16 fp8_forward fa4+fp8_forward
    python bench/train_step_levers.py --smoke --out /tmp/smoke.json    # tiny_cpu.yaml's model, 512 tokens, CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch
import yaml
from profile_step import kernel_classes, packed_batch
from provenance import commit

from lit_golf.attention import AttentionBackendError
from lit_golf.callbacks.throughput import device_peak_flops, flops_per_token
from lit_golf.config import GPTConfig
from lit_golf.config_files import CONFIG_DIR
from lit_golf.files import check_writable, write_atomic
from lit_golf.model import GPT
from lit_golf.optim import OptimConfig, build_golf_optimizer

LEVERS = {
    "bf16": {},
    "fp8_forward": {"fp8_training": "forward"},
    "fp8_forward_dgrad": {"fp8_training": "forward_dgrad"},
    "fa4": {"attention_backend": "fa4"},
    "fused_qkv": {"fused_qkv": True},
    "micro_x2": {},
    "fused_ce": {"fused_softcap_ce": True},  # the frontier's fused softcapped cross-entropy kernel on the record model
    "rope_per_call": {"rope_table_positions": 0},  # the rotary tables computed in every forward, as before 2026-12-07
    "fused_qk_rope": {"fused_qk_norm_rope": True},  # q/k norm + rotary + gain as one Triton kernel each way
    "fused_xsa": {"fused_xsa": True},  # XSA as one Triton kernel each way
}
# Every lever starts from the plain path: the shipped config with lit_golf's own Triton kernels off (record.yaml
# turns them on since 2026-12-08), so `bf16` stays the step all earlier lever measurements were ratios to.
PLAIN_PATH = {"fused_qk_norm_rope": False, "fused_xsa": False}
MICROBATCH_FACTORS = {"micro_x2": 2}  # levers that scale `data.tokens_per_microbatch` instead of the model
DEFAULT_LEVERS = ["bf16", "fa4", "micro_x2", "fused_qkv", "fa4+micro_x2+fused_qkv", "fp8_forward", "fp8_forward_dgrad"]
MODELS = {"record": ["record"], "frontier": ["record", "frontier"]}  # config layers, as `--config a --config b`
SMOKE_BASE = "tiny_cpu"  # --smoke: this config's model replaces the record's ...
SMOKE_DATA = {"tokens_per_microbatch": 256, "train_batch_tokens": 512}  # ... with 2 micro-batches of one row


def config_layers(names: list[str]) -> dict:
    """`model.gpt`, `model.optim` and `data` of the shipped configs `names`, later ones overriding earlier."""
    merged: dict[str, dict] = {"gpt": {}, "optim": {}, "data": {}}
    for name in names:
        values = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
        merged["gpt"].update(values.get("model", {}).get("gpt", {}))
        merged["optim"].update(values.get("model", {}).get("optim", {}))
        merged["data"].update(values.get("data", {}))
    return merged


def lever_overrides(lever: str) -> dict:
    """GPTConfig overrides of `lever`, e.g. `fa4+fp8_forward`, on top of `PLAIN_PATH`."""
    overrides: dict = dict(PLAIN_PATH)
    for part in lever.split("+"):
        overrides.update(LEVERS[part])
    return overrides


def lever_data(layers: dict, lever: str) -> dict:
    """The `data` batch shape `lever` steps with: the config's, with any micro-batch factor applied."""
    data = dict(layers["data"])
    for part in lever.split("+"):
        data["tokens_per_microbatch"] *= MICROBATCH_FACTORS.get(part, 1)
    return data


class StepRunner:
    """One model, its optimizer and a fixed set of micro-batches: `step()` is one whole training step."""

    def __init__(self, layers: dict, data: dict, overrides: dict, base_attention: str, device: torch.device):
        gpt = {**layers["gpt"], "attention_backend": base_attention, **overrides}
        self.device = device
        self.seq_len = data["train_seq_len"]
        self.tokens_per_step = data["train_batch_tokens"]
        micro_tokens = data["tokens_per_microbatch"]
        self.model = GPT(GPTConfig(**gpt)).to(device).train()
        self.optimizer = build_golf_optimizer(self.model, OptimConfig(**layers["optim"]))
        self.forward = (torch.compile(self.model, fullgraph=True, dynamic=False) if device.type == "cuda"
                        else self.model)
        vocab = self.model.config.vocab_size
        self.batches = [packed_batch(i, device, micro_tokens, self.seq_len, vocab)
                        for i in range(self.tokens_per_step // micro_tokens)]

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda",
                            cache_enabled=False):
            for input_ids, target_ids, cu_seqlens in self.batches:
                loss = self.forward(input_ids, target_ids, cu_seqlens=cu_seqlens, max_seqlen=self.seq_len)
                (loss / len(self.batches)).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, warmup: int, steps: int) -> dict:
        """Warm-up, timed steps and one profiled step in the model's current looping state."""
        start = time.perf_counter()
        for _ in range(warmup):
            self.step()
        self.sync()
        warmup_s = time.perf_counter() - start
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        step_s = (time.perf_counter() - start) / steps
        activity = (torch.profiler.ProfilerActivity.CUDA if self.device.type == "cuda"
                    else torch.profiler.ProfilerActivity.CPU)
        with torch.profiler.profile(activities=[activity]) as prof:
            self.step()
            self.sync()
        kernels = kernel_classes(prof, self.device)
        tok_s = self.tokens_per_step / step_s
        peak = device_peak_flops(self.device)
        return {
            "warmup_s": round(warmup_s, 2),
            "ms_per_step": round(step_s * 1e3, 2),
            "tok_s": round(tok_s),
            "peak_mib": torch.cuda.max_memory_allocated(self.device) // 2**20 if self.device.type == "cuda" else None,
            "mfu": round(tok_s * flops_per_token(self.model, self.seq_len) / peak, 4) if peak else None,
            "kernels_per_step": kernels["kernels"],
            "ms_per_kernel_class": kernels["ms"],
            "kernels_per_class": kernels["count"],
            "top_kernels": kernels["top"],
            "top_kernels_per_class": kernels["top_per_class"],
        }


PHASES = {"before_loop": False, "after_loop": True}  # result-key suffix -> the model's looping state


def measure_lever(layers: dict, lever: str, base_attention: str, device: torch.device, warmup: int,
                  steps: int, phases: list[str]) -> dict:
    """One lever on one model in each of `phases` (before / after layer looping), or why it cannot run here."""
    overrides, data = lever_overrides(lever), lever_data(layers, lever)
    result: dict = {"overrides": overrides, "tokens_per_microbatch": data["tokens_per_microbatch"]}
    if data["train_batch_tokens"] % data["tokens_per_microbatch"]:
        return {**result, "skipped": f"{data['tokens_per_microbatch']} tokens per micro-batch do not divide "
                                     f"the step's {data['train_batch_tokens']}"}
    try:
        runner = StepRunner(layers, data, overrides, base_attention, device)
    except AttentionBackendError as err:
        return {**result, "skipped": str(err)}
    result["attention_backend"] = runner.model.attention_backend_name
    try:
        for phase in phases:
            runner.model.looping_active = PHASES[phase]
            for key, value in runner.measure(warmup, steps).items():
                result[f"{key}_{phase}"] = value
            print(f"{lever} {phase}: {result[f'tok_s_{phase}']:,} tok/s, {result[f'ms_per_step_{phase}']} ms/step",
                  flush=True)
    except torch.OutOfMemoryError as err:  # a larger micro-batch may not fit this GPU: say so, go on
        result["skipped"] = f"out of memory: {str(err).splitlines()[0]}"
    except Exception as err:  # a compiler crash in one lever (fp8_forward_dgrad, 2026-12-07) must not lose the rest
        result["failed"] = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1][:300]}"
        print(f"{lever} failed: {result['failed']}", flush=True)
    del runner
    torch._dynamo.reset()
    if device.type == "cuda":  # the next lever's compile and peak memory start from an empty device
        gc.collect()
        torch.cuda.empty_cache()
    return result


def add_speedups(levers: dict) -> None:
    """`speedup_before_loop` / `_after_loop` of each measured lever over the same model's `bf16` lever."""
    base = levers.get("bf16", {})
    for result in levers.values():
        for phase in ("before_loop", "after_loop"):
            if f"tok_s_{phase}" in result and f"tok_s_{phase}" in base:
                result[f"speedup_{phase}"] = round(result[f"tok_s_{phase}"] / base[f"tok_s_{phase}"], 4)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`prog: error: ...`, exit code 2), without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="train_step_levers.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write (must not exist)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--levers", nargs="+", default=DEFAULT_LEVERS,
                        help=f"levers or '+'-joined combinations of {list(LEVERS)} (default: %(default)s)")
    parser.add_argument("--phases", nargs="+", choices=list(PHASES), default=list(PHASES),
                        help="looping states to measure (default both); one alone halves a lever's compile time, "
                             "for screening levers")
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing; the first compiles (default 5)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per looping state (default 10)")
    parser.add_argument("--base-attention", help="attention backend of every lever but fa4 "
                        "(default: torch_varlen on CUDA, auto elsewhere)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"the {SMOKE_BASE}.yaml model on a 512-token step (a quick CPU run)")
    args = parser.parse_args(argv)
    unknown = sorted({part for lever in args.levers for part in lever.split("+")} - set(LEVERS))
    if unknown:
        parser.error(f"--levers: unknown {unknown}; known: {list(LEVERS)}, combined with '+'")
    if args.warmup < 1 or args.steps < 1:
        parser.error(f"--warmup {args.warmup} and --steps {args.steps} must both be >= 1")
    if args.out.exists():
        parser.error(f"--out {args.out} exists; results are never overwritten: pass a new path")
    try:
        check_writable(args.out.parent, "--out")
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base_attention = args.base_attention or ("torch_varlen" if device.type == "cuda" else "auto")
    results: dict = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "commit": commit(), "torch": torch.__version__, "smoke": args.smoke,
        "base_attention": base_attention, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "phases": args.phases, "levers": {},
    }
    for model in args.models:
        layers = config_layers([SMOKE_BASE if name == "record" and args.smoke else name for name in MODELS[model]])
        if args.smoke:
            layers["data"].update(SMOKE_DATA)
        results["tokens_per_step"] = layers["data"]["train_batch_tokens"]
        levers = results["levers"].setdefault(model, {})
        for lever in args.levers:
            print(f"--- {model} / {lever}", flush=True)
            levers[lever] = measure_lever(layers, lever, base_attention, device, args.warmup, args.steps,
                                          args.phases)
            add_speedups(levers)
            write_atomic(args.out, json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
