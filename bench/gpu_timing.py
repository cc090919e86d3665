"""CUDA-event timing shared by the GPU benchmarks in bench/."""

from __future__ import annotations

from collections.abc import Callable

import torch


def time_ms(fn: Callable[[], object], warmup: int = 3, iters: int = 10) -> float:
    """Mean wall time of `fn` on the GPU in milliseconds (CUDA events around `iters` calls, after `warmup`)."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters
