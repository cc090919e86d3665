"""Global SGD between test-time-training phases: fine-tune the base model on documents already scored.

The scored documents of the prefix are contiguous in the stream, so the training data is one token
span. It is cut into chunks of `global_sgd_chunk_tokens` targets, one SGD step per chunk (momentum,
cosine-decayed learning rate, global gradient-norm clip). A chunk is cut into attention units (at
every document start, and every `eval_seq_len` tokens, the longest context the model was trained
with); ranks take contiguous whole units, pack them into rows masked by `cu_seqlens`, and sum their
gradients, so the step does not depend on the number of ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import torch
import torch.nn as nn

from lit_golf.eval.config import EvalConfig
from lit_golf.eval.documents import Document, document_starts, packed_cu_seqlens
from lit_golf.eval.runtime import all_reduce_grads, autocast, rank_and_world
from lit_golf.eval.valset import ValSet

ReadHook = Callable[[int, int], None]


def attention_units(inputs: torch.Tensor, bos_id: int, max_len: int) -> list[int]:
    """Boundaries (offsets, first 0, last the length) of the pieces attention may span: split at every BOS
    and every `max_len` tokens of a document. Fixed by the tokens alone, so any split between ranks
    that keeps units whole computes the same loss."""
    total = inputs.numel()
    starts = document_starts(inputs, bos_id)
    bounds = []
    for start, end in pairwise([*starts, total]):
        bounds.extend(range(start, end, max_len))
    return bounds + [total]


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
    """Train all of `model`'s weights on the contiguous documents `docs`; returns the number of steps.

    `on_read(start, end)` is told every token span `[start, end)` this rank feeds to the model.
    """
    rank, world = rank_and_world()
    span_start, span_end = docs[0].start, docs[-1].end
    span = val.tokens[span_start:span_end]
    span_cpu = span.cpu()
    num_targets = span.numel() - 1
    chunk = cfg.global_sgd_chunk_tokens
    micro = cfg.global_sgd_batch_seqs * cfg.eval_seq_len
    chunk_starts = list(range(0, num_targets, chunk))
    total_steps = len(chunk_starts) * cfg.global_sgd_epochs
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=cfg.global_sgd_lr, momentum=cfg.global_sgd_momentum)
    grad_flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        for step in range(total_steps):
            lo = chunk_starts[step % len(chunk_starts)]
            count = min(chunk, num_targets - lo)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg.global_sgd_lr, step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            units = attention_units(span_cpu[lo : lo + count], cfg.bos_id, cfg.eval_seq_len)
            for bounds in rank_micro_batches(units, rank, world, micro):
                a, b = lo + bounds[0], lo + bounds[-1]
                cu_seqlens, longest = packed_cu_seqlens(bounds)
                with torch.enable_grad(), autocast(val.device):
                    nll = model(
                        span[a:b][None], span[a + 1 : b + 1][None],
                        cu_seqlens=cu_seqlens.to(val.device), max_seqlen=longest, reduction="none",
                    )
                    (nll.sum() / count).backward()
                if on_read is not None:
                    on_read(span_start + a, span_start + b + 1)
            all_reduce_grads(params)
            if cfg.global_sgd_grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.global_sgd_grad_clip)
            optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        for p, flag in zip(params, grad_flags, strict=True):
            p.requires_grad_(flag)
    return total_steps
