"""int8 per row for small gate tensors: half the bytes of float16 at one float16 scale per row.

The scale is the row's absolute maximum over 127, so no value is clipped; gates are few and their
rows short, so GPTQ (which needs an input Hessian) would buy nothing here.
"""

from __future__ import annotations

import torch

from lit_golf.export.schemes.rowwise import MIN_SCALE, round_rows
from lit_golf.export.schemes.rowwise import dequantize as dequantize_rows

NAME = "int8_row"
BITS = 8
_LIMIT = 127


def quantize(weight: torch.Tensor, hessian: torch.Tensor | None = None, cfg=None, group: str = "") -> dict:
    rows = weight.detach().float().cpu().reshape(weight.shape[0], -1)
    scale = (rows.abs().amax(dim=1) / _LIMIT).to(torch.float16).clamp_min(MIN_SCALE)
    return {"data": round_rows(rows, scale, _LIMIT).reshape(weight.shape), "scale": scale}


def dequantize(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    return dequantize_rows(parts["data"], parts["scale"])
