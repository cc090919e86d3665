"""LQER-asym: GPTQ plus a low-rank correction of its error, W ~ Q + A @ B.

After GPTQ the error E = W - Q(W) is factored through its rank-r SVD: B holds the top r right
singular vectors (unit-norm rows), stored at `b_bits` (INT4 in the frontier) with one float16 scale
per `b_group_size` consecutive values; A holds the magnitudes, stored at `a_bits` (INT2) with one
float16 scale. Grids are asymmetric (-2**(bits-1) .. 2**(bits-1) - 1), the scale putting the absolute
maximum half a step past the top code.

Unlike the frontier, A is not U_r S_r but refit to the *quantized* B under the calibration Hessian,
A = E H' B^T (B H' B^T)^-1 with H' the slightly damped Hessian: the least-squares fit of the layer
output on the calibration inputs. GPTQ leaves its error in input directions of little energy; the
factors' rounding noise lands everywhere, and on a layer with correlated inputs the plain factors
raise the output error while the refit ones lower it along with ||W - W_hat||_F (undamped, the
Frobenius norm barely moves; `LQERConfig.damping` of 0.005 lowers both on every seed tried). The pipeline corrects only the `top_k` matrices
with the largest ||E||_F, where the few hundred bytes of factors buy the most.
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


def _refit_left(error: torch.Tensor, right: torch.Tensor, hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """argmin_A tr((E - A B) H' (E - A B)^T) with H' = H + damping * mean(diag H) * I: the left factor that
    best restores the layer output, the damping keeping ||E - A B||_F in check too."""
    damped = hessian.clone()
    damped.diagonal().add_(damping * float(hessian.diagonal().mean()) + 1e-12)
    return torch.linalg.solve(right @ damped @ right.T, right @ damped @ error.T).T


@torch.no_grad()
def correct(weight: torch.Tensor, parts: dict[str, torch.Tensor], hessian: torch.Tensor, lqer) -> dict:
    """`parts` of a per-row scheme plus the quantized rank-`lqer.rank` factors of its error.

    `lqer` is an `LQERConfig` (rank, a_bits, b_bits, b_group_size); `hessian` the input Hessian of the layer."""
    error = weight.detach().float().cpu() - dequantize_rows(parts["data"], parts["scale"])
    rank = min(lqer.rank, *error.shape)
    right = torch.linalg.svd(error, full_matrices=False).Vh[:rank]
    b_codes, b_scale = _group_codes(right, lqer.b_bits, lqer.b_group_size)
    left = _refit_left(error, _group_values(b_codes, b_scale), hessian.detach().float().cpu(), lqer.damping)
    a_codes, a_scale = _group_codes(left, lqer.a_bits, left.numel())  # one scale for all of A
    return {**parts, "lqer_a": a_codes, "lqer_a_scale": a_scale, "lqer_b": b_codes, "lqer_b_scale": b_scale}


def quantize(weight: torch.Tensor, hessian: torch.Tensor, cfg, group: str) -> dict:
    """GPTQ with the group's settings, then the correction with `cfg.lqer` (cfg is the ExportConfig)."""
    return correct(weight, gptq.quantize(weight, hessian, cfg, group), hessian, cfg.lqer)


def dequantize(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    correction = _group_values(parts["lqer_a"], parts["lqer_a_scale"]) @ _group_values(parts["lqer_b"],
                                                                                         parts["lqer_b_scale"])
    return dequantize_rows(parts["data"], parts["scale"]) + correction
