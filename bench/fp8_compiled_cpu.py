"""The compiled FP8 linear through its real custom op on the CPU, against eager: relative error per output.

torch 2.11's CPU `torch._scaled_mm` takes rowwise scales, so the op that CUDA runs (`rowwise_scaled_mm`) can run
here too; `fp8.scaled_mm` otherwise sends CPU tensors to the emulation. This separates a fault of the wiring (the
custom op, `FP8Linear` under `torch.compile(fullgraph=True)`, Inductor's layouts around the op) from one of the
CUDA kernels or of Inductor's CUDA code, for the compiled-linear CUDA tests that fail on the H100/H200. The
shapes are those tests' (768 x 512 input, 256 outputs, bf16).

    .venv/bin/python bench/fp8_compiled_cpu.py --out bench/results/fp8_compiled_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provenance import commit  # noqa: E402  (bench/)

from lit_golf.files import write_atomic  # noqa: E402
from lit_golf.kernels import fp8  # noqa: E402
from lit_golf.tool_parser import run_tool, tool_parser  # noqa: E402

OUTPUTS = ("out", "grad_x", "grad_w")


def through_the_custom_op(a, a_scale, b, b_scale, out_dtype):
    return fp8.rowwise_scaled_mm(a, a_scale, b, b_scale).to(out_dtype)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def outputs_and_grads(fn, x, w, grad) -> tuple[torch.Tensor, ...]:
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fn(x, w)
    return (out, *torch.autograd.grad(out, (x, w), grad))


def compare(recipe: str, x, w, grad) -> dict:
    def linear(x, w):
        return fp8.fp8_linear(x, w, recipe)

    eager = outputs_and_grads(linear, x, w, grad)
    compiled = outputs_and_grads(torch.compile(linear, fullgraph=True, dynamic=False), x, w, grad)
    torch._dynamo.reset()
    return {name: {"relative_error": relative_error(c, e), "all_zero": bool((c == 0).all())}
            for name, c, e in zip(OUTPUTS, compiled, eager, strict=True)}


def measure(args: argparse.Namespace) -> None:
    fp8.scaled_mm = through_the_custom_op  # CPU tensors take the CUDA path's op
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(768, 512, generator=gen).bfloat16()
    w = (torch.randn(256, 512, generator=gen) / 512**0.5).bfloat16()
    grad = torch.randn(768, 256, generator=gen).bfloat16()
    report = {"torch": torch.__version__, "commit": commit() or "unknown",
              "recipes": {recipe: compare(recipe, x, w, grad) for recipe in ("forward", "forward_dgrad")}}
    write_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")
    for recipe, errors in report["recipes"].items():
        print(recipe, {name: f"{e['relative_error']:.2e}" for name, e in errors.items()})


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("fp8_compiled_cpu.py", __doc__.splitlines()[0], config_file=False)
    parser.add_argument("--out", default="bench/results/fp8_compiled_cpu.json")
    return run_tool(parser, argv, measure)


if __name__ == "__main__":
    raise SystemExit(main())
