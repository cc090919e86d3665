"""Passthrough: small tensors (gains, mixes, lambdas) stored as float16; non-float tensors as they are."""

from __future__ import annotations

import torch

NAME = "passthrough"


def quantize(weight: torch.Tensor, hessian: torch.Tensor | None = None, cfg=None, group: str = "") -> dict:
    weight = weight.detach().cpu()
    return {"data": weight.to(torch.float16) if weight.is_floating_point() else weight.clone()}


def dequantize(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    data = parts["data"]
    return data.float() if data.is_floating_point() else data.clone()
