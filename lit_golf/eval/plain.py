"""Plain and sliding-window evaluation: every validation target scored exactly once, no adaptation.

Both cut the token stream into windows and score a tail of each; inside a window a token attends
only to earlier tokens of its own document (`document_masked_nll`), as in training and as upstream
evaluates: plain windows are disjoint `plain.seq_len` blocks scored whole (the last one may be shorter);
sliding windows end `stride` tokens apart and score only their last `stride` targets (the first
window scores all of its), so every target but the first few sees `plain.seq_len - stride` tokens of
context. Windows are split between ranks in contiguous runs; the metric sums across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lit_golf.data.documents import document_starts
from lit_golf.data.shards import BOS_ID
from lit_golf.distributed import rank_and_world
from lit_golf.eval.config import EvalConfig
from lit_golf.eval.metric import BitsPerByte
from lit_golf.eval.plan import packed_cu_seqlens
from lit_golf.eval.runtime import autocast, eval_mode
from lit_golf.eval.valset import ValSet


@dataclass
class Windows:
    """Window `i` feeds inputs `[start, start + length)` and scores its positions `>= score_from`."""

    start: torch.Tensor
    length: torch.Tensor
    score_from: torch.Tensor

    @classmethod
    def from_scored_ranges(cls, lo: torch.Tensor, hi: torch.Tensor, context: int) -> Windows:
        """Windows scoring targets `[lo, hi)` each, reaching back at most `context` inputs from `hi`."""
        start = torch.minimum(lo, (hi - context).clamp(min=0))
        return cls(start, hi - start, lo - start)

    def shard(self, rank: int, world: int) -> Windows:
        n = self.start.numel()
        part = slice(n * rank // world, n * (rank + 1) // world)
        return Windows(self.start[part], self.length[part], self.score_from[part])

    def to(self, device: torch.device) -> Windows:
        return Windows(self.start.to(device), self.length.to(device), self.score_from.to(device))


def plain_windows(num_targets: int, seq_len: int) -> Windows:
    """Disjoint blocks of `seq_len` targets, the last one partial; each window is its own context."""
    lo = torch.arange(0, num_targets, seq_len)
    hi = (lo + seq_len).clamp(max=num_targets)
    return Windows(lo, hi - lo, torch.zeros_like(lo))


def sliding_windows(num_targets: int, seq_len: int, stride: int) -> Windows:
    """The first window scores its `seq_len` targets, each later one the next `stride` with full context."""
    first = min(seq_len, num_targets)
    lo = torch.cat((torch.zeros(1, dtype=torch.int64), torch.arange(first, num_targets, stride)))
    hi = torch.cat((lo[1:], torch.tensor([num_targets])))
    return Windows.from_scored_ranges(lo, hi, seq_len)


def document_masked_nll(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Per-target NLL `[B, T]` of window rows, each token attending only to earlier tokens of its own
    document within its row (a row's first token opens a document even mid-document).

    The model was trained on document-masked packs; letting a window's tokens see the previous
    documents would score it on inputs it never saw. Rows are packed into one varlen row per call
    when the attention kernel takes packed documents natively (the CUDA varlen kernels); the portable
    kernels build a dense mask over the packed length, so they take one row per call.
    """
    rows, width = inputs.shape
    backend = getattr(model, "attention", None)
    per_call = rows if inputs.is_cuda and getattr(backend, "cuda_only", False) else 1
    pieces = []
    for first in range(0, rows, per_call):
        x, y = inputs[first : first + per_call].reshape(1, -1), targets[first : first + per_call].reshape(1, -1)
        starts = document_starts(x[0], bos_id, also=range(0, x.numel(), width))
        cu_seqlens, longest = packed_cu_seqlens([*starts, x.numel()])
        nll = model(x, y, cu_seqlens=cu_seqlens.to(x.device), max_seqlen=longest, reduction="none")
        pieces.append(nll.view(-1, width))
    return torch.cat(pieces)


@torch.no_grad()
def score_windows(
    model: nn.Module, val: ValSet, windows: Windows, batch_seqs: int, bos_id: int, label: str | None = None
) -> BitsPerByte:
    """This rank's share of `windows` scored into a fresh metric on the data's device.

    With a `label`, rank 0 shows a progress bar over its window batches (sliding eval of a large
    validation set runs for minutes).
    """
    metric = BitsPerByte().to(val.device)
    rank, world = rank_and_world()
    mine = windows.shard(rank, world).to(val.device)
    width = int(windows.length.max()) if windows.length.numel() else 0
    batch_starts = range(0, mine.start.numel(), batch_seqs)
    bar = tqdm(batch_starts, desc=f"{label} rank {rank}/{world}", unit="batch", disable=label is None or rank != 0)
    with eval_mode(model):
        for first in bar:
            rows = slice(first, first + batch_seqs)
            batch = val.gather(mine.start[rows], mine.length[rows], width)
            columns = torch.arange(width, device=val.device)
            scored = batch.valid & (columns[None, :] >= mine.score_from[rows, None])
            with autocast(val.device):
                nll = document_masked_nll(model, batch.inputs, batch.targets, bos_id)
            metric.update(nll, batch.target_bytes, scored)
    return metric


def eval_plain(model: nn.Module, val: ValSet, cfg: EvalConfig, progress: bool = False) -> BitsPerByte:
    windows = plain_windows(val.num_targets, cfg.plain.seq_len)
    return score_windows(model, val, windows, cfg.plain.batch_seqs, BOS_ID, label="plain" if progress else None)


def eval_sliding(model: nn.Module, val: ValSet, cfg: EvalConfig, progress: bool = False) -> BitsPerByte:
    windows = sliding_windows(val.num_targets, cfg.plain.seq_len, cfg.sliding.stride)
    return score_windows(model, val, windows, cfg.plain.batch_seqs, BOS_ID, label="sliding" if progress else None)
