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


def truncate_to_documents(
    tokens: torch.Tensor, bos_id: int, max_docs: int | None, max_tokens: int | None = None
) -> torch.Tensor:
    """The shortest prefix of the stream holding the first `max_docs` documents with all their targets, cut
    further to the longest prefix of whole documents with at most `max_tokens` tokens (None: no bound).

    A bound below the first document's length is refused: cutting a document would score another text.
    """
    if max_docs is not None:
        docs = find_documents(tokens, bos_id)
        if max_docs < len(docs):
            tokens = tokens[: docs[max_docs - 1].end]
    if max_tokens is None or tokens.numel() <= max_tokens:
        return tokens
    # A prefix `tokens[:j + 1]` is whole documents when tokens[j] (j >= 1) is a BOS: the last target of the one before.
    bos_within = (tokens[1:max_tokens] == bos_id).nonzero().flatten()
    if bos_within.numel() == 0:
        later = (tokens[1:] == bos_id).nonzero().flatten()
        first = int(later[0]) + 2 if later.numel() else tokens.numel()
        raise ValueError(
            f"model.evaluation.max_tokens={max_tokens} is below the first validation document's {first} tokens: raise "
            "it (the evaluation scores whole documents)"
        )
    return tokens[: int(bos_within[-1]) + 2]
