"""GPTQ and round-to-nearest quantization of a weight matrix to signed `bits`-bit integers per row.

Both share one scale rule: `scale[row] = std(row) * clip_sigmas / (2**(bits-1) - 1)`, stored as
float16, codes clamped to +-(2**(bits-1) - 1). Clipping at many sigmas keeps outliers while the
entropy coder, not the bit width, decides the final size (most codes sit near zero).

GPTQ (Frantar et al., 2022) quantizes one column at a time and pushes each column's rounding error
onto the not-yet-quantized columns through the inverse Hessian of the layer's inputs, so the error
of the layer *output* `W @ x` on calibration inputs is much smaller than plain rounding gives.
"""

from __future__ import annotations

import torch

from lit_golf.export.schemes.rowwise import MIN_SCALE, dequantize, max_code, round_rows

__all__ = ["dequantize", "gptq_quantize", "max_code", "output_error", "row_scale", "rtn_quantize"]

def row_scale(weight: torch.Tensor, bits: int, clip_sigmas: float) -> torch.Tensor:
    """float16 per-row scale: the row's standard deviation times `clip_sigmas`, over the largest code."""
    std = weight.float().std(dim=1)
    return (std * clip_sigmas / max_code(bits)).to(torch.float16).clamp_min(MIN_SCALE)


def rtn_quantize(weight: torch.Tensor, bits: int, clip_sigmas: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest: (int8 codes, float16 per-row scale); the baseline GPTQ must beat."""
    scale = row_scale(weight, bits, clip_sigmas)
    return round_rows(weight, scale, max_code(bits)), scale


def _inverse_hessian_factor(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped Hessian's inverse; damping grows until the factorization succeeds."""
    mean_diag = hessian.diagonal().mean()
    for attempt in range(6):
        damped = hessian.clone()
        damped.diagonal().add_(damping * 10**attempt * mean_diag)
        lower, info = torch.linalg.cholesky_ex(damped)
        if info == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0:
                return upper
    raise ValueError(
        f"GPTQ: the calibration Hessian ({hessian.shape[0]}x{hessian.shape[1]}) is not positive definite even "
        f"with {damping * 1e5:g}x mean-diagonal damping; check the calibration batches for NaN/inf activations"
    )


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    clip_sigmas: float,
    block_size: int = 128,
    damping: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ-quantize `weight` [rows, cols] given the input Hessian `hessian` [cols, cols] (mean of x x^T).

    Returns (int8 codes [rows, cols], float16 per-row scale [rows]), on `weight`'s device. Columns whose
    input never fires (zero Hessian diagonal) are zeroed; columns are visited in order of decreasing
    Hessian diagonal so the most important ones are quantized while the most freedom is left to
    compensate them; `damping` times the mean diagonal is added for numerical stability.
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"GPTQ: Hessian shape {tuple(hessian.shape)} does not match weight columns {cols}")
    device = weight.device
    scale = row_scale(weight, bits, clip_sigmas)
    hessian = hessian.detach().to(device=device, dtype=torch.float32).clone()
    dead = hessian.diagonal() == 0
    hessian.diagonal()[dead] = 1.0
    order = torch.argsort(hessian.diagonal(), descending=True)
    factor = _inverse_hessian_factor(hessian[order][:, order], damping)

    # Work on the transpose: a column of W is then a contiguous row, and the per-column updates are
    # rank-1 updates of contiguous memory (several times faster than strided column writes on CPU).
    work = weight.detach().float().T.clone(memory_format=torch.contiguous_format)
    work[dead] = 0.0
    work = work[order]
    step = scale.float()
    limit = max_code(bits)
    codes = torch.empty(cols, rows, dtype=torch.int8, device=device)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = work[start:end]  # a view: updates land in `work`
        errors = torch.empty(end - start, rows, device=device)
        for j in range(end - start):
            i = start + j
            column = block[j]
            q = torch.round(column / step).clamp_(-limit, limit)
            codes[i] = q.to(torch.int8)
            err = (column - q * step).div_(factor[i, i])
            block[j + 1:].addr_(factor[i, i + 1:end], err, alpha=-1.0)
            errors[j] = err
        work[end:].addmm_(factor[start:end, end:].T, errors, alpha=-1.0)
    return codes[torch.argsort(order)].T.contiguous(), scale


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> tuple[float, float]:
    """(tr(E H E^T), tr(W H W^T)) with E = W - approx: the squared output error on the calibration inputs
    (H = mean x x^T) and the squared output itself; their ratio is the relative error of the layer."""
    weight = weight.float()
    hessian = hessian.to(weight.device, torch.float32)
    delta = weight - approx.to(weight.device, torch.float32)
    return float(((delta @ hessian) * delta).sum()), float(((weight @ hessian) * weight).sum())
