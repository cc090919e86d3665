"""Process-group, precision, mode and timing helpers shared by the evaluators.

Evaluation runs inside whatever process group the caller (Lightning, a test, a script) set up and talks
to it through `torch.distributed` directly; without one it is a single rank.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (as the record evaluates); fp32 elsewhere, where bf16 matmuls are slow and inexact."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode and give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def all_reduce_grads(params: Iterable[nn.Parameter]) -> None:
    """Sum gradients over ranks, one flat buffer per dtype; missing gradients count as zeros."""
    if rank_and_world()[1] == 1:
        return
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        for p, piece in zip(group, flat.split([p.numel() for p in group]), strict=True):
            p.grad.copy_(piece.view_as(p.grad))


class Stopwatch:
    """Wall-clock seconds of named sections, synchronizing CUDA so queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
