"""FP8 (e4m3) bank matmuls for the training steps of a fit (`GPTConfig.fp8_training`, off by default).

What runs in FP8, per recipe:
- `forward`: the forward GEMM `x @ W.T` of every bank matrix, both operands e4m3, output bf16. The two
  backward GEMMs (input gradient `dY @ W`, weight gradient `dY.T @ x`) run in bf16 from the saved bf16
  operands: a straight-through estimator (the gradient of the unquantized linear at the same point), with
  no FP8 rounding in any gradient. The memory saved for backward is what `F.linear` saves.
- `forward_dgrad`: also the input gradient, with `dY` scaled per token row and `W` per input column. The
  weight gradient stays bf16 in both: it sums over all ~98K tokens of a micro-batch, where e4m3 rounding of
  `dY` and `x` would accumulate into every Muon update (torchao's `rowwise_with_gw_hp` makes the same call).
Which recipe pays is for the GPU to say (`bench/train_step_levers.py`): `forward` ran at 0.90x the bf16 step on an
H100 (2026-12-07, bench/NOTES.md), on a compiled path since found wrong, so neither is settled.

Scales: rowwise, one fp32 scale per row of each operand along the reduced dimension (per token for
activations and gradients, per output unit for the forward's weight, per input unit for dgrad's). On Hopper,
`torch._scaled_mm` (torch 2.11) takes e4m3 operands either tensorwise (one scale each, cuBLAS) or rowwise
(`scale_a [M, 1]`, `scale_b [1, N]`, bf16 output, CUTLASS). Rowwise is chosen because one outlier token or
one large weight row then costs precision only in its own row instead of pushing every other row of the
tensor towards e4m3's subnormals; it needs the same amax pass as tensorwise, per row instead of per tensor.
Each scale is a power of two (as torchao's rowwise recipe), which puts the row's largest |value| in
(224, 448] and makes dequantization exact: the only error is e4m3's rounding, at most 2^-4 relative for
normal values (3 mantissa bits) and 2^-10 scale units in the subnormal range (`tests/test_fp8.py` derives
the matmul bound from it). `use_fast_accum=True`: torchao notes that the rowwise CUTLASS kernels are only
fast with it; the reductions here are at most 2,048 long. `_scaled_mm` wants K and N divisible by 16, so
`GPTConfig` refuses the switch for widths that are not (the record's 512, 256 and 2048 are).

On other devices the same quantization feeds an emulated GEMM (dequantize, fp32 matmul): the CPU tests
check the scaling logic there, and a CUDA test checks `_scaled_mm` against the emulation.

The code is plain torch ops around `torch._scaled_mm` inside an `autograd.Function`, so `torch.compile`
(fullgraph) traces it and fuses each amax, scale and cast into the kernel that produces the operand.

Library route: `torchao.float8` (0.18) converts `nn.Linear` modules to `Float8Linear`
(`convert_to_float8_training`). The banks are 3-D parameters sliced per layer at use, not `nn.Linear`s, so
it would need one module per slice (undoing the banks that Muon orthogonalizes in batches) or its private
`matmul_with_hp_or_float8_args`. Its `rowwise_with_gw_hp` recipe is `forward_dgrad` here (with a tensorwise
weight for dgrad), so the math is the same without the dependency.
"""

from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
AMAX_FLOOR = 1e-12  # an all-zero row (the zero-initialised output projections) gets a tiny scale, not 0/0


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 codes of 2-D `t` (contiguous) and fp32 scales `[rows, 1]` with `t ≈ codes.float() * scales`.

    Each scale is the smallest power of two with `amax / scale <= 448`, so every row uses e4m3's top
    binade for its largest value and `codes * scale` is exact in fp32.
    """
    amax = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=AMAX_FLOOR)
    scale = torch.exp2(torch.ceil(torch.log2(amax / E4M3_MAX)))
    codes = (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return codes.contiguous(), scale


def emulated_scaled_mm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                       out_dtype: torch.dtype) -> torch.Tensor:
    """What `scaled_mm` computes, as a dequantized fp32 matmul (any device)."""
    with torch.autocast(a.device.type, enabled=False):
        return ((a.float() * a_scale) @ (b.float() * b_scale).t()).to(out_dtype)


def scaled_mm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
              out_dtype: torch.dtype) -> torch.Tensor:
    """`(a * a_scale) @ (b * b_scale).T` for e4m3 `a [M, K]`, `b [N, K]` and their `quantize_rows` scales.

    CUDA: `torch._scaled_mm` with rowwise scales (bf16 output, cast to `out_dtype`); elsewhere the emulation.
    """
    if not a.is_cuda:
        return emulated_scaled_mm(a, a_scale, b, b_scale, out_dtype)
    return rowwise_scaled_mm(a, a_scale, b, b_scale).to(out_dtype)


@torch.library.custom_op("lit_golf::rowwise_scaled_mm", mutates_args=())
def rowwise_scaled_mm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor) -> torch.Tensor:
    """`torch._scaled_mm` with rowwise scales and bf16 output, opaque to `torch.compile`.

    On one H100 (2026-12-07, bench/NOTES.md) the eager call matched the emulation while the compiled FP8 linear
    returned zeros; an opaque op runs the same extern kernel as eager, and Inductor still fuses the amax, scale
    and cast passes around it.
    """
    return torch._scaled_mm(a, b.t(), scale_a=a_scale, scale_b=b_scale.t().contiguous(), out_dtype=torch.bfloat16,
                            use_fast_accum=True)


@rowwise_scaled_mm.register_fake
def _(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor) -> torch.Tensor:
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.bfloat16)


def fp8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b.T` for `a [M, K]`, `b [N, K]` with both quantized per row to e4m3, in `a`'s dtype."""
    a_codes, a_scale = quantize_rows(a)
    b_codes, b_scale = quantize_rows(b)
    return scaled_mm(a_codes, a_scale, b_codes, b_scale, a.dtype)


class FP8Linear(torch.autograd.Function):
    """`x2d @ w.T` in FP8; backward as the module docstring says (`fp8_dgrad`: the input gradient in FP8 too)."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, w: torch.Tensor, fp8_dgrad: bool) -> torch.Tensor:
        ctx.save_for_backward(x2d, w)
        ctx.fp8_dgrad = fp8_dgrad
        return fp8_matmul(x2d, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Both gradients, unconditionally: branching on `ctx.needs_input_grad` left both None (zeros) in the compiled
        # backward on torch 2.11 CUDA while eager was right (tests/test_fp8.py, one H100, 2026-12-08; the pattern of
        # pytorch/pytorch#159299). Training needs both anyway, and autograd drops a gradient nobody asked for.
        x2d, w = ctx.saved_tensors
        grad = grad.to(x2d.dtype)
        grad_x = fp8_matmul(grad, w.t()) if ctx.fp8_dgrad else grad @ w
        return grad_x, grad.t() @ x2d, None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on `x` runs in: autocast's when autocast is on for its device (as `F.linear`), else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def fp8_linear(x: torch.Tensor, w: torch.Tensor, recipe: str) -> torch.Tensor:
    """`F.linear(x, w)` for `x [..., K]`, `w [N, K]` under FP8 `recipe` ('forward' or 'forward_dgrad').

    Operands are cast to the matmul dtype first (bf16 under autocast), as `F.linear` casts them, so the
    tensors saved for backward are the ones the bf16 path saves.
    """
    dtype = compute_dtype(x)
    out = FP8Linear.apply(x.reshape(-1, x.shape[-1]).to(dtype), w.to(dtype), recipe == "forward_dgrad")
    return out.view(*x.shape[:-1], w.shape[0])
