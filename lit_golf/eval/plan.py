"""How evaluation lays out documents: the static plan of which rank scores which, and packed rows.

Test-time training visits documents in stages (the phases of the prefix, then the rest). Within a
stage, documents are sorted longest first and cut into batches of similar length, and the batches are
dealt to ranks longest-processing-time first, which balances the work without any coordination at
run time: every rank computes the same plan from the same inputs. Plain scoring and the global SGD
pack consecutive documents into one row; `packed_cu_seqlens` gives that row's attention segments.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from lit_golf.data.documents import Document


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


def batch_cost(longest: int, chunk_size: int, context_len: int, bucket: int) -> int:
    """Positions run per row when a batch's longest document has `longest` targets (all rows advance together)."""
    return sum(window_width(ci, chunk_size, context_len, bucket) for ci in range(num_chunks(longest, chunk_size)))


def plan_batches(
    docs: list[Document],
    batch_docs: int,
    rank: int,
    world: int,
    chunk_size: int,
    context_len: int,
    bucket: int,
) -> list[list[Document]]:
    """This rank's batches of one stage, in the order it runs them (most expensive first; at equal cost the
    fuller batch first, so the one short batch of a stage runs last on its rank)."""
    ordered = sorted(docs, key=lambda d: (-d.num_targets, d.index))
    batches = [ordered[i : i + batch_docs] for i in range(0, len(ordered), batch_docs)]
    costs = [batch_cost(batch[0].num_targets, chunk_size, context_len, bucket) for batch in batches]
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
