"""Precision, mode, gradient-sum and timing helpers shared by the evaluators.

Evaluation runs inside whatever process group the caller (Lightning, a test, a script) set up, through
`lit_golf.distributed`; without one it is a single rank.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

from lit_golf.distributed import Collectives, PackedAllReduce


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
    """Sum gradients over ranks, packed per dtype; missing gradients count as zeros."""
    comm = Collectives.detect()
    if comm is None:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    PackedAllReduce([p.grad for p in params], comm).wait()


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
