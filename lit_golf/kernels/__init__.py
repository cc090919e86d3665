"""Triton kernels for CUDA training steps: the fused MLP, q/k norm + rotary, XSA and softcapped cross-entropy.

Each module imports Triton itself (CPU installs have none) and runs its kernels on CUDA tensors, or on CPU
tensors under Triton's interpreter (`TRITON_INTERPRET=1`), which is how the tests check them without a GPU.
"""

from __future__ import annotations

import os

import torch


def require_triton(triton, tensor: torch.Tensor, kernel: str, instead: str) -> None:
    """Refuse in one line to launch `kernel` where it cannot run: `triton` (the caller's import, None if it failed)
    missing, or `tensor` neither on CUDA nor under the interpreter; `instead` names the path to use there."""
    if triton is None or not (tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise RuntimeError(f"{kernel} needs Triton and CUDA tensors (got {tensor.device}); {instead}")
