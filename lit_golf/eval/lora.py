"""One low-rank adapter per batch row, at the model's LoRA sites, for per-document test-time training.

Each site keeps one `A [rows, r, in]` and one `B [rows, out, r]` parameter per execution slot, and
the delta is two batched matmuls: `delta = (x @ A^T) @ B^T`, row by row. (Separate parameters per slot,
not one stacked tensor: autograd would turn every slot's slice of a stacked tensor into a full-size
gradient.) `B` starts at zero, so a fresh adapter leaves the model unchanged; `A` is uniform in
`±1/sqrt(in)`. With `alpha`, the delta is scaled by `alpha / rank` (standard LoRA), so the effective
step size does not move with the rank.
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

    def __init__(
        self, model: nn.Module, rows: int, rank: int, targets: tuple[str, ...] = LORA_SITES, alpha: float | None = None
    ) -> None:
        super().__init__()
        unknown = sorted(set(targets) - set(LORA_SITES))
        if unknown:
            raise ValueError(f"unknown LoRA sites {unknown}; choose from {list(LORA_SITES)}")
        shapes = site_shapes(model)
        slots = executed_slots(model)
        device = next(model.parameters()).device
        self.rows, self.rank, self.num_slots = rows, rank, slots
        self.scale = 1.0 if alpha is None else alpha / rank
        self.row_offset = 0
        self.A = nn.ModuleDict()
        self.B = nn.ModuleDict()
        for site in targets:
            fan_in, fan_out = shapes[site]
            n = 1 if site == HEAD_SITE else slots
            self.A[site] = nn.ParameterList(torch.empty(rows, rank, fan_in, device=device) for _ in range(n))
            self.B[site] = nn.ParameterList(torch.empty(rows, fan_out, rank, device=device) for _ in range(n))
        self.reset()

    @torch.no_grad()
    def reset(self, generator: torch.Generator | None = None, keep_a: bool = False) -> None:
        """Fresh adapters for a new batch of documents (`generator` makes the draw reproducible); with
        `keep_a` only `B` is zeroed, which still makes every adapter a no-op until it trains."""
        for site, a_slots in self.A.items():
            for a, b in zip(a_slots, self.B[site], strict=True):
                if not keep_a:
                    bound = 1.0 / math.sqrt(a.size(-1))
                    a.uniform_(-bound, bound, generator=generator)
                b.zero_()

    @contextlib.contextmanager
    def select_rows(self, rows: slice) -> Iterator[None]:
        """Serve only adapters `rows` (a contiguous slice: the rows still running, or a memory-bounded part);
        the forward's inputs hold exactly those rows."""
        self.row_offset = rows.start or 0
        try:
            yield
        finally:
            self.row_offset = 0

    def delta(self, site: str, slot: int, x: torch.Tensor) -> torch.Tensor | None:
        """Per-row low-rank update of the projection at `site` in execution `slot`; `x` is `[rows, T, in]`."""
        if site not in self.A:
            return None
        index = 0 if site == HEAD_SITE else slot
        a, b = self.A[site][index], self.B[site][index]
        # The rows served are read off `x` (no branch on the count), so one compiled graph with a dynamic
        # row count serves every slice that starts at the same row. (A slice of a parameter costs a
        # full-size gradient buffer.)
        a, b = a.narrow(0, self.row_offset, x.size(0)), b.narrow(0, self.row_offset, x.size(0))
        delta = (x @ a.mT) @ b.mT
        return delta if self.scale == 1.0 else delta * self.scale
