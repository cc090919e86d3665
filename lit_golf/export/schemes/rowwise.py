"""Signed integer codes with a float16 scale per row: the storage every per-row scheme shares."""

from __future__ import annotations

import torch

MIN_SCALE = 2.0**-24  # smallest positive float16: an all-zero row must not get scale 0 (division)


def max_code(bits: int) -> int:
    """Largest code of a symmetric signed `bits`-bit grid (codes in +-max_code)."""
    return 2 ** (bits - 1) - 1


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 weights from int8 codes and float16 per-row scales (row i is `q[i] * scale[i]`)."""
    return q.float() * scale.float().view(-1, *([1] * (q.dim() - 1)))


def round_rows(weight: torch.Tensor, scale: torch.Tensor, limit: int) -> torch.Tensor:
    """int8 codes of `weight` on the per-row grid `scale`, clamped to +-`limit`."""
    return torch.round(weight.float() / scale.float()[:, None]).clamp_(-limit, limit).to(torch.int8)
