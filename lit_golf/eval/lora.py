"""One low-rank adapter per batch row, at the model's LoRA sites, for per-document test-time training.

Each site keeps all its execution slots and rows in two stacked parameters, `A [slots, rows, r, in]`
and `B [slots, rows, out, r]`, so the optimizer sees a dozen tensors instead of hundreds and the
delta is two batched matmuls: `delta = (x @ A[slot]^T) @ B[slot]^T`, row by row. `B` starts at zero,
so a fresh adapter leaves the model unchanged; `A` is uniform in `±1/sqrt(in)`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn

from lit_golf.eval.config import LORA_SITES

HEAD_SITE = "head"


def site_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) features of each LoRA site of a `GPT`, read from its config."""
    cfg = model.config
    d = cfg.model_dim
    return {"q": (d, d), "k": (d, cfg.kv_dim), "v": (d, cfg.kv_dim), "o": (d, d), "mlp": (d, d), HEAD_SITE: (d, cfg.vocab_size)}


def executed_slots(model: nn.Module) -> int:
    """Blocks the model runs per forward in its current looping state (one adapter slot each)."""
    encoder, decoder = model.config.layer_schedule(model.looping_active)
    return len(encoder) + len(decoder)


class BatchedLoRA(nn.Module):
    """Independent rank-`rank` adapters for `rows` documents at `targets` sites of a `GPT`."""

    def __init__(self, model: nn.Module, rows: int, rank: int, targets: tuple[str, ...] = LORA_SITES) -> None:
        super().__init__()
        unknown = sorted(set(targets) - set(LORA_SITES))
        if unknown:
            raise ValueError(f"unknown LoRA sites {unknown}; choose from {list(LORA_SITES)}")
        shapes = site_shapes(model)
        slots = executed_slots(model)
        device = next(model.parameters()).device
        self.rows, self.rank, self.num_slots = rows, rank, slots
        self.active_rows = slice(None)
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for site in targets:
            fan_in, fan_out = shapes[site]
            n = 1 if site == HEAD_SITE else slots
            self.A[site] = nn.Parameter(torch.empty(n, rows, rank, fan_in, device=device))
            self.B[site] = nn.Parameter(torch.empty(n, rows, fan_out, rank, device=device))
        self.reset()

    @torch.no_grad()
    def reset(self, generator: torch.Generator | None = None) -> None:
        """Fresh adapters for a new batch of documents (`generator` makes the draw reproducible)."""
        for site, a in self.A.items():
            bound = 1.0 / math.sqrt(a.size(-1))
            a.uniform_(-bound, bound, generator=generator)
            self.B[site].zero_()

    @contextlib.contextmanager
    def select_rows(self, rows: slice) -> Iterator[None]:
        """Serve only adapters `rows` (a forward over a slice of the batch, to bound activation memory)."""
        self.active_rows = rows
        try:
            yield
        finally:
            self.active_rows = slice(None)

    def delta(self, site: str, slot: int, x: torch.Tensor) -> torch.Tensor | None:
        """Per-row low-rank update of the projection at `site` in execution `slot`; `x` is `[rows, T, in]`."""
        if site not in self.A:
            return None
        index = 0 if site == HEAD_SITE else slot
        a, b = self.A[site][index, self.active_rows], self.B[site][index, self.active_rows]
        return (x @ a.mT) @ b.mT
