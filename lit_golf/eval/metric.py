"""Bits per byte: the challenge score, accumulated as exact float64 sums that add up across ranks.

The score is `sum(nll) / ln 2 / sum(bytes)` over every scored token. Averaging per-rank or per-batch
ratios would weight them wrongly, so the metric keeps the three raw sums (nats, tokens, bytes) and
divides only at the end. The sums stay float64 whatever the module is cast to: Lightning's
`precision="bf16-true"` calls `.to(torch.bfloat16)` on every module, and a bf16 sum of millions of
nats would be off in the third digit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

STATE_NAMES = ("nll_sum", "token_count", "byte_count")


class BitsPerByte(Metric):
    """Sum of token NLL (nats), scored tokens and their text bytes; `compute()` gives bits per byte."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in STATE_NAMES:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: Tensor, token_bytes: Tensor, mask: Tensor | None = None) -> None:
        """Add per-token NLL in nats and the bytes of the same tokens (same shape).

        `mask` (bool, same shape) selects the scored tokens without a host sync, so padded or
        context positions of a batch can be passed as they are.
        """
        if nll.shape != token_bytes.shape or (mask is not None and mask.shape != nll.shape):
            raise ValueError(
                f"BitsPerByte.update: nll {tuple(nll.shape)}, token_bytes {tuple(token_bytes.shape)} and mask "
                f"{None if mask is None else tuple(mask.shape)} must have the same shape"
            )
        nll = nll.detach().to(torch.float64)
        token_bytes = token_bytes.detach().to(torch.float64)
        if mask is None:
            self.token_count += nll.numel()
        else:
            keep = mask.to(torch.float64)
            nll = nll * keep
            token_bytes = token_bytes * keep
            self.token_count += keep.sum()
        self.nll_sum += nll.sum()
        self.byte_count += token_bytes.sum()

    def compute(self) -> Tensor:
        """Bits per byte over everything scored on all ranks."""
        return self.nll_sum / math.log(2.0) / self.byte_count

    def loss(self) -> Tensor:
        """Mean NLL in nats per scored token over all ranks."""
        return self._synced(lambda: self.nll_sum / self.token_count)

    def totals(self) -> dict[str, float]:
        """All-rank sums and both ratios as Python floats (one sync)."""

        def read() -> dict[str, float]:
            nll, tokens, nbytes = (float(getattr(self, name)) for name in STATE_NAMES)
            return {
                "nll_sum": nll,
                "tokens": tokens,
                "bytes": nbytes,
                "loss": nll / tokens if tokens else math.nan,
                "bpb": nll / math.log(2.0) / nbytes if nbytes else math.nan,
            }

        return self._synced(read)

    def _synced(self, read: Callable):
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return read()

    def _apply(self, fn: Callable, exclude_state=()):
        """Move the states with the module (device) but never change their float64 dtype."""
        states = {name: getattr(self, name) for name in STATE_NAMES}
        this = super()._apply(fn, exclude_state=STATE_NAMES)
        device = fn(torch.zeros((), device=states["nll_sum"].device)).device
        for name, value in states.items():
            setattr(this, name, value.to(device))
            this._defaults[name] = this._defaults[name].to(device=device, dtype=torch.float64)
        return this
