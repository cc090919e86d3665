"""How evaluation lays out documents: the static plan of which rank scores which, and packed rows.

Test-time training visits documents in stages (the phases of the prefix, then the rest). Within a
stage, documents are sorted longest first and cut into batches of similar length, and the batches are
dealt to ranks longest-processing-time first, which balances the work without any coordination at
run time: every rank computes the same plan from the same inputs. Plain scoring and the global SGD
pack consecutive documents into one row; `packed_cu_seqlens` gives that row's attention segments.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import torch

from lit_golf.data.documents import Document
from lit_golf.eval.config import TTTConfig


def phase_boundaries(num_docs: int, prefix_docs: int, num_phases: int) -> list[int]:
    """Document counts at the end of each phase: `floor(k * prefix / phases)` for k = 1..phases."""
    prefix = min(prefix_docs, num_docs)
    return [prefix * k // num_phases for k in range(1, num_phases + 1)]


def window_width(chunk_index: int, chunk_size: int, context_len: int, bucket: int) -> int:
    """Padded row width for scoring chunk `chunk_index`: its end rounded up to `bucket`, at most `context_len`."""
    needed = min(context_len, (chunk_index + 1) * chunk_size)
    return min(context_len, math.ceil(needed / bucket) * bucket)


def num_chunks(num_targets: int, chunk_size: int) -> int:
    return -(-num_targets // chunk_size)


def row_groups(lengths: list[int], chunk_lo: int, width: int, tokens_per_pass: int) -> list[slice]:
    """The rows of a batch (sorted longest first, `lengths` targets each) whose documents reach the chunk
    starting at target `chunk_lo`, in slices of at most `tokens_per_pass // width` rows (a power of two) to
    bound activation memory."""
    # at least 2 rows: a compiled graph treats a dimension of size 1 as a constant and would recompile
    running = max(sum(length > chunk_lo for length in lengths), min(2, len(lengths)))
    fit = max(1, tokens_per_pass // width)
    size = 1 << (fit.bit_length() - 1)
    return [slice(g, min(g + size, running)) for g in range(0, running, size)]


def chunk_forwards(chunk_index: int, chunks: int, grad_steps: int, replay_chunks: int) -> list[int]:
    """The chunks whose windows run through the model, in order, while a batch is at chunk `chunk_index` of
    `chunks`: that chunk (scored by the first forward, which also gives the first optimizer step), again
    for each further step, then the `replay_chunks` chunks before it, oldest first, one step each. The last
    chunk is only scored: nothing is left to score after it, so nothing to learn for."""
    if chunk_index + 1 == chunks:
        return [chunk_index]
    return [chunk_index] * grad_steps + list(range(max(0, chunk_index - replay_chunks), chunk_index))


@dataclass(frozen=True)
class Forward:
    """One pass of a TTT batch's running rows through the model, on the window of chunk `chunk`."""

    # The chunk whose targets the pass computes the loss of.
    chunk: int
    # The chunk the batch is at: the one the first pass at it scores.
    at: int
    # The first pass at chunk `at`: its loss is the score, and its gradient the first step's.
    scores: bool
    # An optimizer step follows (never at the last chunk).
    trains: bool
    width: int
    # The rows, in memory-bounded slices (`row_groups`).
    groups: list[slice]


def batch_forwards(lengths: list[int], ttt: TTTConfig) -> Iterator[Forward]:
    """The passes a batch of documents with `lengths` targets (longest first) makes, in order: the one
    schedule that the scorer runs and `ttt.planned_positions` counts (`batch_cost` sums the same widths)."""
    chunks = num_chunks(max(lengths), ttt.chunk_size)
    for at in range(chunks):
        for step, chunk in enumerate(chunk_forwards(at, chunks, ttt.grad_steps, ttt.replay_chunks)):
            width = window_width(chunk, ttt.chunk_size, ttt.context_len, ttt.window_bucket)
            groups = row_groups(lengths, at * ttt.chunk_size, width, ttt.tokens_per_pass)
            yield Forward(chunk, at, step == 0, at + 1 < chunks, width, groups)


def batch_cost(longest: int, chunk_size: int, context_len: int, bucket: int, grad_steps: int = 1,
               replay_chunks: int = 0) -> int:
    """Positions run per row when a batch's longest document has `longest` targets (all rows advance together)."""
    chunks = num_chunks(longest, chunk_size)
    return sum(window_width(cj, chunk_size, context_len, bucket)
               for ci in range(chunks) for cj in chunk_forwards(ci, chunks, grad_steps, replay_chunks))


def plan_batches(
    docs: list[Document],
    batch_docs: int,
    rank: int,
    world: int,
    chunk_size: int,
    context_len: int,
    bucket: int,
    grad_steps: int = 1,
    replay_chunks: int = 0,
) -> list[list[Document]]:
    """This rank's batches of one stage, in the order it runs them (most expensive first; at equal cost the
    fuller batch first, so the one short batch of a stage runs last on its rank)."""
    ordered = sorted(docs, key=lambda d: (-d.num_targets, d.index))
    batches = [ordered[i : i + batch_docs] for i in range(0, len(ordered), batch_docs)]
    costs = [batch_cost(batch[0].num_targets, chunk_size, context_len, bucket, grad_steps, replay_chunks)
             for batch in batches]
    load = [0] * world
    mine = []
    for cost, batch in sorted(zip(costs, batches, strict=True), key=lambda cb: (-cb[0], -len(cb[1]), cb[1][0].index)):
        owner = min(range(world), key=lambda r: (load[r], r))
        load[owner] += cost
        if owner == rank:
            mine.append(batch)
    return mine


CU_SEQLENS_BUCKET = 64  # cu_seqlens is padded to a multiple of this many entries (few distinct shapes)


def packed_cu_seqlens(bounds: list[int]) -> tuple[torch.Tensor, int]:
    """`cu_seqlens` for one packed row of consecutive units (int32, rebased to 0, padded with the row length)."""
    offsets = [b - bounds[0] for b in bounds]
    padded = -(-len(offsets) // CU_SEQLENS_BUCKET) * CU_SEQLENS_BUCKET
    cu = torch.full((padded,), offsets[-1], dtype=torch.int32)
    cu[: len(offsets)] = torch.tensor(offsets, dtype=torch.int32)
    return cu, max(b - a for a, b in pairwise(offsets))
