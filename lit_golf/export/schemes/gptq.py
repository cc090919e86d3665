"""GPTQ: int codes of the group's bit width with a float16 scale per row (the record's scheme)."""

from __future__ import annotations

import torch

from lit_golf.export.gptq import gptq_quantize
from lit_golf.export.schemes.rowwise import dequantize as dequantize_rows

NAME = "gptq"


def quantize(weight: torch.Tensor, hessian: torch.Tensor, cfg, group: str) -> dict:
    """`cfg` is the ExportConfig: the group's bits and clip sigmas, GPTQ block size and damping."""
    bits, clip_sigmas = cfg.group_quantization(group)
    codes, scale = gptq_quantize(weight, hessian, bits, clip_sigmas, cfg.gptq_block_size, cfg.damping)
    return {"data": codes.cpu(), "scale": scale.cpu()}


def dequantize(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    return dequantize_rows(parts["data"], parts["scale"])
