"""Time the fused softcapped cross-entropy against the eager loss at the record's micro-batch (CUDA).

    python bench/fused_ce_bench.py OUT_DIR [--tokens 98304] [--vocab 8192] [--softcap 30]

One forward+backward of the mean loss from bf16 pre-cap logits `[tokens, vocab]` (the head output) for:
`eager` (`cap * tanh(logits.float() / cap)` then `F.cross_entropy`), the same under `torch.compile`
(what training runs today) and `fused` (`lit_golf.kernels.fused_ce`), plus the fused forward alone.
Reports milliseconds, the peak memory each allocates above its inputs, and the fused result's error
against eager (max |loss difference|, relative gradient error). Prints a table and writes
OUT_DIR/fused_ce_bench.json; exits non-zero when the fused result disagrees with eager.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_timing import time_ms  # noqa: E402  (bench/ is on sys.path when a bench script runs)

from lit_golf.kernels.fused_ce import fused_ce_available, softcapped_cross_entropy  # noqa: E402

LOSS_TOLERANCE = 1e-3  # absolute, per token (losses are ~10 nats; fp32 sums in another order)
GRAD_TOLERANCE = 1e-2  # relative Frobenius error of the bf16 gradient


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Most memory `fn` holds at once above what was allocated before it ran."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokens", type=int, default=98304, help="rows: configs/record.yaml tokens_per_microbatch")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--softcap", type=float, default=30.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if not fused_ce_available():
        print("fused_ce_bench.py needs CUDA and Triton", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cap = args.softcap

    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (20 * torch.randn(args.tokens, args.vocab, device="cuda", generator=gen)).bfloat16().requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), device="cuda", generator=gen)

    def eager_loss(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(cap * torch.tanh(x.float() / cap), t, reduction="none")

    def fused_loss(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return softcapped_cross_entropy(x, t, cap)

    compiled_eager = torch.compile(eager_loss, fullgraph=True)

    def step(loss_fn) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            logits.grad = None
            loss_fn(logits, targets).mean().backward()
            return logits.grad
        return run

    def fused_forward() -> torch.Tensor:
        with torch.no_grad():
            return fused_loss(logits, targets)

    variants = {"eager": step(eager_loss), "eager_compiled": step(compiled_eager), "fused": step(fused_loss),
                "fused_forward_only": fused_forward}
    results: dict[str, object] = {"tokens": args.tokens, "vocab": args.vocab, "softcap": cap,
                                  "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, fn in variants.items():
        ms = time_ms(fn, args.warmup, args.iters)
        logits.grad = None
        results[name] = {"ms": ms, "peak_extra_MiB": peak_extra_bytes(fn) / 2**20}
        logits.grad = None

    with torch.no_grad():
        loss_error = (fused_loss(logits, targets) - eager_loss(logits, targets)).abs().max().item()
    fused_grad, eager_grad = step(fused_loss)().float(), step(eager_loss)().float()
    grad_error = ((fused_grad - eager_grad).norm() / eager_grad.norm()).item()
    results["max_abs_loss_error"], results["relative_grad_error"] = loss_error, grad_error
    results["agrees"] = loss_error < LOSS_TOLERANCE and grad_error < GRAD_TOLERANCE
    results["fp32_logits_MiB"] = args.tokens * args.vocab * 4 / 2**20

    print(f"{'variant':<20} {'ms':>9} {'peak extra MiB':>15}")
    for name in variants:
        row = results[name]
        print(f"{name:<20} {row['ms']:>9.3f} {row['peak_extra_MiB']:>15.0f}")
    print(f"fused vs eager: max |loss error| {loss_error:.2e}, relative grad error {grad_error:.2e}, "
          f"agrees: {results['agrees']}")
    (args.out_dir / "fused_ce_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["agrees"] else 1


if __name__ == "__main__":
    sys.exit(main())
