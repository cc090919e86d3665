"""LQER-asym: GPTQ plus a low-rank correction of its error, W ~ Q + A @ B.

After GPTQ the error E = W - Q(W) is factored by a rank-r SVD, A = U_r S_r and B = V_r^T. A holds
the singular values, so one float16 scale serves it at very few bits (INT2 in the frontier); B has
unit-norm rows whose entries vary along the row, so it gets more bits (INT4) with one float16 scale
per `b_group_size` consecutive values. The grids are asymmetric (-2**(bits-1) .. 2**(bits-1) - 1)
with the scale set so that the absolute maximum lands half a step past the top code. The pipeline
only corrects the `top_k` matrices with the largest ||E||_F, where the few hundred bytes of factors
buy the most.
"""

from __future__ import annotations

import torch

from lit_golf.export.schemes import gptq
from lit_golf.export.schemes.rowwise import MIN_SCALE
from lit_golf.export.schemes.rowwise import dequantize as dequantize_rows

NAME = "lqer_asym"
FACTOR_PARTS = ("lqer_a", "lqer_a_scale", "lqer_b", "lqer_b_scale")


def _grid(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _group_codes(values: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of `values` (any shape) with one float16 scale per `group_size` consecutive values
    (the last group may be shorter)."""
    low, high = _grid(bits)
    flat = values.float().flatten()
    padded = torch.nn.functional.pad(flat, (0, -flat.numel() % group_size)).view(-1, group_size)
    scale = (padded.abs().amax(dim=1) / (high + 0.5)).to(torch.float16).clamp_min(MIN_SCALE)
    codes = torch.round(padded / scale.float()[:, None]).clamp_(low, high).to(torch.int8)
    return codes.flatten()[:flat.numel()].view(values.shape), scale


def _group_values(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    flat = codes.float().flatten()
    group_size = -(-flat.numel() // scale.numel())
    padded = torch.nn.functional.pad(flat, (0, scale.numel() * group_size - flat.numel())).view(-1, group_size)
    return (padded * scale.float()[:, None]).flatten()[:flat.numel()].view(codes.shape)


@torch.no_grad()
def correct(weight: torch.Tensor, parts: dict[str, torch.Tensor], lqer) -> dict[str, torch.Tensor]:
    """`parts` of a per-row scheme plus the quantized rank-`lqer.rank` factors of its error.

    `lqer` is an `LQERConfig` (rank, a_bits, b_bits, b_group_size)."""
    error = weight.detach().float().cpu() - dequantize_rows(parts["data"], parts["scale"])
    u, s, vh = torch.linalg.svd(error, full_matrices=False)
    rank = min(lqer.rank, s.numel())
    a, b = u[:, :rank] * s[:rank], vh[:rank]
    a_codes, a_scale = _group_codes(a, lqer.a_bits, a.numel())  # one scale for all of A
    b_codes, b_scale = _group_codes(b, lqer.b_bits, lqer.b_group_size)
    return {**parts, "lqer_a": a_codes, "lqer_a_scale": a_scale, "lqer_b": b_codes, "lqer_b_scale": b_scale}


def quantize(weight: torch.Tensor, hessian: torch.Tensor, cfg, group: str) -> dict:
    """GPTQ with the group's settings, then the correction with `cfg.lqer` (cfg is the ExportConfig)."""
    return correct(weight, gptq.quantize(weight, hessian, cfg, group), cfg.lqer)


def dequantize(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    correction = _group_values(parts["lqer_a"], parts["lqer_a_scale"]) @ _group_values(parts["lqer_b"],
                                                                                         parts["lqer_b_scale"])
    return dequantize_rows(parts["data"], parts["scale"]) + correction
