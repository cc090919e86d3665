"""Check and time the GPU kernels of lit_golf; run on a CUDA box: `python bench/check_gpu_kernels.py`.

1. Fused Triton MLP vs the eager MLP: forward output and all three gradients (bf16), and the time of
   one forward+backward for eager, compiled eager and fused.
2. Every attention backend available here vs the fp32 `pure` reference on packed documents of mixed
   lengths with GQA: output and q/k/v gradients, then forward+backward time on a long packed row.
3. The record GPT compiled with `fullgraph=True` on each fast backend: loss agreement and step time.

Prints one table per part and exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_timing import time_ms  # noqa: E402  (bench/ is on sys.path when a bench script runs)

from lit_golf.attention import attend, available_backends, select_backend  # noqa: E402
from lit_golf.config import GPTConfig  # noqa: E402
from lit_golf.kernels import fused_mlp  # noqa: E402
from lit_golf.model import GPT  # noqa: E402

DEVICE = "cuda"
failures: list[str] = []


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30)).item()


def check(label: str, error: float, limit: float) -> str:
    ok = error < limit
    if not ok:
        failures.append(f"{label}: relative error {error:.2e} >= {limit:.0e}")
    return f"{error:.2e}{'' if ok else ' FAIL'}"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n== {title}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))


# ----------------------------------------------------------------------------- fused MLP


def eager_mlp(x, up, down):
    return F.linear(F.leaky_relu(F.linear(x, up), negative_slope=0.5).square(), down)


def bench_mlp(tokens: int, dim: int = 512, hidden: int = 2048) -> None:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(1, tokens, dim, device=DEVICE, generator=gen).bfloat16().requires_grad_()
    up = (torch.randn(hidden, dim, device=DEVICE, generator=gen) / dim**0.5).bfloat16().requires_grad_()
    down = (torch.randn(dim, hidden, device=DEVICE, generator=gen) / hidden**0.5).bfloat16().requires_grad_()
    grad = torch.randn(1, tokens, dim, device=DEVICE, generator=gen).bfloat16()
    inputs = (x, up, down)

    def run(fn):
        out = fn(*inputs)
        return (out, *torch.autograd.grad(out, inputs, grad))

    want = run(eager_mlp)
    compiled = torch.compile(eager_mlp, fullgraph=True, dynamic=False)
    rows = []
    for label, fn in (("eager", eager_mlp), ("compiled eager", compiled),
                      ("fused triton", fused_mlp.fused_leaky_relu_square_mlp)):
        got = run(fn)
        errors = [check(f"mlp {label} {n}", relative_error(g, w), 2e-2)
                  for n, g, w in zip(("out", "dx", "dup", "ddown"), got, want, strict=True)]
        rows.append([label, *errors, f"{time_ms(lambda fn=fn: run(fn)):.3f}"])
    print_table(f"MLP fwd+bwd, {tokens} tokens, {dim}->{hidden}->{dim}, bf16 (errors vs eager)",
                ["path", "out", "dx", "dup", "ddown", "ms"], rows)


# ----------------------------------------------------------------------------- attention


def packed_lengths(total: int, gen: torch.Generator) -> list[int]:
    """Document lengths with a heavy tail (1 token up to a few thousand), summing to `total`."""
    lengths, used = [], 0
    while used < total:
        length = int(torch.empty(1).exponential_(1 / 600, generator=gen).item()) + 1
        length = min(length, total - used)
        lengths.append(length)
        used += length
    return lengths


def packed_inputs(seq_len: int, heads: int, kv_heads: int, head_dim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    lengths = packed_lengths(seq_len, gen)
    ends = torch.tensor([0, *lengths]).cumsum(0)
    cu = torch.cat([ends, ends[-1:].repeat(7)]).to(DEVICE, torch.int32)  # trailing padding like the loader's
    qkv = [torch.randn(1, seq_len, h, head_dim, generator=gen).to(DEVICE, torch.bfloat16).requires_grad_()
           for h in (heads, kv_heads, kv_heads)]
    return qkv, cu, max(lengths), len(lengths)


def attention_step(backend, qkv, cu, max_len, grad):
    out = attend(*qkv, cu_seqlens=cu, max_seqlen=max_len, backend=backend)
    return (out, *torch.autograd.grad(out, qkv, grad))


def bench_attention(check_len: int, time_len: int, heads: int = 8, kv_heads: int = 4, head_dim: int = 64) -> None:
    names = available_backends(DEVICE)
    print(f"\navailable attention backends on {torch.cuda.get_device_name()}: {names}")
    qkv, cu, max_len, docs = packed_inputs(check_len, heads, kv_heads, head_dim, seed=0)
    grad = torch.randn_like(qkv[0])
    pure_inputs = [t.detach().float().requires_grad_() for t in qkv]
    want = attention_step("pure", pure_inputs, cu, max_len, grad.float())
    long_qkv, long_cu, long_max, long_docs = packed_inputs(time_len, heads, kv_heads, head_dim, seed=1)
    long_grad = torch.randn_like(long_qkv[0])
    rows = []
    for name in names:
        backend = select_backend(name, DEVICE)
        got = attention_step(backend, qkv, cu, max_len, grad)
        errors = [check(f"attention {name} {n}", relative_error(g, w), 2e-2)  # bf16 outputs
                  for n, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True)]
        if name in ("pure", "sdpa") and time_len > 16384:
            timing = "skipped (T x T mask)"
        else:
            timing = f"{time_ms(lambda b=backend: attention_step(b, long_qkv, long_cu, long_max, long_grad)):.3f}"
        rows.append([name, *errors, timing])
    print_table(
        f"attention vs pure: check T={check_len} ({docs} docs, max {max_len}); time fwd+bwd T={time_len} "
        f"({long_docs} docs); H={heads} Hkv={kv_heads} D={head_dim} bf16",
        ["backend", "out", "dq", "dk", "dv", "ms"], rows,
    )


# ----------------------------------------------------------------------------- whole model


def bench_model(seq_len: int) -> None:
    names = [n for n in available_backends(DEVICE) if n not in ("pure", "sdpa")] or ["sdpa"]
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 8192, (1, seq_len + 1), generator=gen).to(DEVICE)
    lengths = packed_lengths(seq_len, gen)
    ends = torch.tensor([0, *lengths]).cumsum(0)
    cu = torch.cat([ends, ends[-1:].repeat(7)]).to(DEVICE, torch.int32)
    rows, losses = [], {}
    for name in names:
        torch.manual_seed(0)
        model = GPT(GPTConfig(attention_backend=name)).to(DEVICE)
        with torch.no_grad():  # leave the identity init so attention and MLP matter
            for bank in (model.qo_bank, model.mlp_down_bank):
                bank.normal_(0, 0.02)
        model.looping_active = True
        model.train()
        compiled = torch.compile(model, fullgraph=True, dynamic=False)

        def step(compiled=compiled, model=model):
            with torch.autocast("cuda", torch.bfloat16):
                loss = compiled(tokens[:, :-1], tokens[:, 1:], cu_seqlens=cu, max_seqlen=max(lengths))
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss

        losses[name] = step().item()
        rows.append([name, f"{losses[name]:.5f}", f"{time_ms(step, warmup=2, iters=5):.2f}"])
        del model, compiled
        torch.cuda.empty_cache()
    reference = next(iter(losses.values()))
    for name, loss in losses.items():
        if abs(loss - reference) > 2e-2:
            failures.append(f"model loss with {name} is {loss:.5f}, {names[0]} gives {reference:.5f}")
    print_table(f"record GPT, looping on, compiled fullgraph, fwd+bwd, 1 x {seq_len} packed tokens, autocast bf16",
                ["backend", "loss", "ms/step"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlp-tokens", type=int, default=65536)
    parser.add_argument("--check-len", type=int, default=4096, help="packed length for the accuracy check")
    parser.add_argument("--time-len", type=int, default=65536, help="packed length for attention timing")
    parser.add_argument("--model-len", type=int, default=16384, help="packed length for the model step")
    parser.add_argument("--skip", nargs="*", default=[], choices=["mlp", "attention", "model"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("check_gpu_kernels.py needs a CUDA device", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name()}")
    if "mlp" not in args.skip:
        if fused_mlp.is_available():
            bench_mlp(args.mlp_tokens)
        else:
            failures.append("fused MLP unavailable (Triton missing)")
    if "attention" not in args.skip:
        bench_attention(args.check_len, args.time_len)
    if "model" not in args.skip:
        bench_model(args.model_len)
    print("\nALL CHECKS PASSED" if not failures else "\nFAILED:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
