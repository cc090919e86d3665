"""Global SGD between test-time-training phases: fine-tune the base model on documents already scored.

The documents are taken in the order they were scored (for the record's prefix: longest first, so not
contiguous in the stream) and laid end to end as one run of (input, target) pairs; each document keeps
exactly its own targets, so no pair crosses a document. The run is cut into chunks of
`global_sgd.chunk_tokens` targets, one SGD step per chunk (momentum, cosine-decayed learning rate,
global gradient-norm clip); as in the record, the last chunk of a phase is not trained on. A chunk is
cut into attention units (at every document start, and every `plain.seq_len` tokens, the longest
context the model was trained with); ranks take contiguous whole units, pack them into rows masked by
`cu_seqlens`, and sum their gradients, so the step does not depend on the number of ranks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from itertools import accumulate, pairwise

import torch
import torch.nn as nn

from lit_golf.data.documents import Document
from lit_golf.distributed import rank_and_world
from lit_golf.eval.config import EvalConfig
from lit_golf.eval.plan import packed_cu_seqlens
from lit_golf.eval.runtime import all_reduce_grads, autocast
from lit_golf.eval.valset import ValSet

ReadHook = Callable[[int, int], None]


class DocumentRun:
    """`docs` end to end: `inputs[i]` predicts `targets[i]`, document by document, in the given order."""

    def __init__(self, val: ValSet, docs: list[Document]) -> None:
        self.docs = docs
        self.offsets = [0, *accumulate(d.num_targets for d in docs)]
        self.inputs = torch.cat([val.tokens[d.start : d.end - 1] for d in docs])
        self.targets = torch.cat([val.tokens[d.start + 1 : d.end] for d in docs])

    @property
    def num_targets(self) -> int:
        return self.offsets[-1]

    def units(self, lo: int, hi: int, max_len: int) -> list[int]:
        """Boundaries (relative to `lo`, first 0, last `hi - lo`) of the pieces attention may span inside
        `[lo, hi)`: split at every document start and every `max_len` tokens of a document. Fixed by the
        documents alone, so any split between ranks that keeps units whole computes the same loss."""
        starts = [lo, *(o for o in self.offsets if lo < o < hi)]
        bounds = []
        for start, end in pairwise([*starts, hi]):
            bounds.extend(range(start - lo, end - lo, max_len))
        return bounds + [hi - lo]

    def stream_spans(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The stream token spans `[start, end)` (inputs and their targets) that run positions `[lo, hi)` read."""
        spans = []
        first = bisect.bisect_right(self.offsets, lo) - 1
        for i in range(first, len(self.docs)):
            a, b = max(lo, self.offsets[i]), min(hi, self.offsets[i + 1])
            if a >= hi:
                break
            if a < b:
                start = self.docs[i].start - self.offsets[i]
                spans.append((start + a, start + b + 1))
        return spans


def rank_micro_batches(bounds: list[int], rank: int, world: int, max_tokens: int) -> list[list[int]]:
    """This rank's contiguous share of whole units (balanced by tokens), grouped into rows of <= `max_tokens`."""
    total = bounds[-1]
    lo, hi = total * rank // world, total * (rank + 1) // world
    mine = [(a, b) for a, b in pairwise(bounds) if lo <= a < hi]
    batches: list[list[int]] = []
    for a, b in mine:
        if batches and b - batches[-1][0] <= max_tokens:
            batches[-1].append(b)
        else:
            batches.append([a, b])
    return batches


def cosine_lr(peak: float, step: int, total_steps: int) -> float:
    """Half-cosine from `peak` towards 0 over `total_steps`; the last step still learns."""
    return peak * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def global_sgd(
    model: nn.Module, val: ValSet, docs: list[Document], cfg: EvalConfig, on_read: ReadHook | None = None
) -> int:
    """Train all of `model`'s weights on `docs` (in the order given); returns the number of steps.

    `on_read(start, end)` is told every stream token span `[start, end)` this rank feeds to the model.
    """
    rank, world = rank_and_world()
    run = DocumentRun(val, docs)
    chunk = cfg.global_sgd.chunk_tokens
    micro = cfg.global_sgd.batch_seqs * cfg.plain.seq_len
    chunk_starts = list(range(0, run.num_targets, chunk))[:-1]  # the record never trains on the last chunk
    total_steps = len(chunk_starts) * cfg.global_sgd.epochs
    if total_steps == 0:
        return 0
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=cfg.global_sgd.lr, momentum=cfg.global_sgd.momentum)
    grad_flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        for step in range(total_steps):
            lo = chunk_starts[step % len(chunk_starts)]
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg.global_sgd.lr, step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            for bounds in rank_micro_batches(run.units(lo, lo + chunk, cfg.plain.seq_len), rank, world, micro):
                a, b = lo + bounds[0], lo + bounds[-1]
                cu_seqlens, longest = packed_cu_seqlens(bounds)
                with torch.enable_grad(), autocast(val.device):
                    nll = model(
                        run.inputs[a:b][None], run.targets[a:b][None],
                        cu_seqlens=cu_seqlens.to(val.device), max_seqlen=longest, reduction="none",
                    )
                    (nll.sum() / chunk).backward()
                if on_read is not None:
                    for span in run.stream_spans(a, b):
                        on_read(*span)
            all_reduce_grads(params)
            if cfg.global_sgd.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.global_sgd.grad_clip)
            optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        for p, flag in zip(params, grad_flags, strict=True):
            p.requires_grad_(flag)
    return total_steps
