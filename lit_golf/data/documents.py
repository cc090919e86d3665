"""The documents of a token stream: where each starts and which targets it owns.

A document starts at a BOS token (or at token 0) and owns the targets up to and including the next
BOS, so the documents' targets tile the stream's targets exactly: predicting the end of a document
(the next BOS) is scored, and every target is scored by exactly one document. The data module cuts
the validation stream to whole documents with it; evaluation scores document by document.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
