"""Documents of the validation stream and the static plan of which rank scores which of them.

A document starts at a BOS token (or at token 0) and owns the targets up to and including the next
BOS, so the documents' targets tile the stream's targets exactly: predicting the end of a document
(the next BOS) is scored, and every target is scored by exactly one document.

Test-time training visits documents in stages (the phases of the prefix, then the rest). Within a
stage, documents are sorted longest first and cut into batches of similar length, and the batches are
dealt to ranks longest-processing-time first, which balances the work without any coordination at
run time: every rank computes the same plan from the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

import torch


@dataclass(frozen=True)
class Document:
    """Document `index` (in stream order): inputs from token `start`, targets `start+1 .. start+num_targets`."""

    index: int
    start: int
    num_targets: int

    @property
    def end(self) -> int:
        """One past its last target token."""
        return self.start + self.num_targets + 1


def document_starts(tokens: torch.Tensor, bos_id: int, also: Iterable[int] = ()) -> list[int]:
    """Sorted offsets where a 1-D token run starts a piece: 0, every BOS, and the offsets in `also`."""
    return sorted({0, *(tokens == bos_id).nonzero().flatten().tolist(), *also})


def find_documents(tokens: torch.Tensor, bos_id: int) -> list[Document]:
    """Split at every BOS; a leading stretch without BOS is a document too. Target-less documents are dropped."""
    num_targets = tokens.numel() - 1
    starts = document_starts(tokens[:num_targets], bos_id)
    ends = starts[1:] + [num_targets]
    docs = [(start, end - start) for start, end in zip(starts, ends, strict=True) if end > start]
    return [Document(i, start, n) for i, (start, n) in enumerate(docs)]


def truncate_to_documents(tokens: torch.Tensor, bos_id: int, max_docs: int | None) -> torch.Tensor:
    """The shortest prefix of the stream holding the first `max_docs` documents with all their targets."""
    if max_docs is None:
        return tokens
    docs = find_documents(tokens, bos_id)
    if max_docs >= len(docs):
        return tokens
    return tokens[: docs[max_docs - 1].end]


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
    """This rank's batches of one stage, in the order it runs them (most expensive first)."""
    ordered = sorted(docs, key=lambda d: (-d.num_targets, d.index))
    batches = [ordered[i : i + batch_docs] for i in range(0, len(ordered), batch_docs)]
    costs = [batch_cost(batch[0].num_targets, chunk_size, context_len, bucket) for batch in batches]
    load = [0] * world
    mine = []
    for cost, batch in sorted(zip(costs, batches, strict=True), key=lambda cb: (-cb[0], cb[1][0].index)):
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
