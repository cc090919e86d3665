"""Phased LoRA test-time training: score every document chunk by chunk, learning from each chunk after scoring it.

Legality is the whole design: a token is scored before any update that has seen it, in one
left-to-right pass, with the model's normalized softmax.

* Per document: a fresh adapter (one row of a `BatchedLoRA`). The document's targets are cut into
  chunks of `ttt_chunk_size`; chunk k is scored with up to `ttt_context_len` tokens of the same
  document ending at the chunk (never another document's), then the adapter takes `ttt_grad_steps`
  AdamW steps on that chunk's loss alone. The last chunk is not trained on: nothing is left to score.
* Batches: `ttt_batch_docs` documents of similar length advance chunk by chunk together, one padded
  row each; finished and padding rows are masked out of scores and losses. Row widths are rounded
  up to `ttt_window_bucket` so only a few shapes ever run, and the rows go through the model in
  slices of at most `ttt_tokens_per_pass` positions (gradients accumulate; one optimizer step).
* Phases: the first `phased_prefix_docs` documents (stream order) are scored in `phased_num_phases`
  stages; after each, every rank runs global SGD of the base weights on all prefix documents scored
  so far (`global_sgd`); the remaining documents are then scored with the adapted base.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lit_golf.eval.config import EvalConfig
from lit_golf.eval.documents import (
    Document,
    find_documents,
    num_chunks,
    phase_boundaries,
    plan_batches,
    window_width,
)
from lit_golf.eval.global_sgd import global_sgd
from lit_golf.eval.lora import ALL_ROWS, BatchedLoRA
from lit_golf.eval.metric import BitsPerByte
from lit_golf.eval.runtime import Stopwatch, autocast, eval_mode, rank_and_world
from lit_golf.eval.valset import ValSet

log = logging.getLogger("lit_golf")


@dataclass
class TTTTrace:
    """Optional record of what TTT did, for tests and audits (costs a host sync per chunk).

    `events` is in execution order: `("scored", doc_index)` once a document's batch is finished,
    `("sgd_read", phase, start, end)` for every token span global SGD feeds to the model.
    `chunk_nll[(doc_index, chunk_index)]` is the summed NLL (nats) of that chunk's targets.
    """

    events: list[tuple] = field(default_factory=list)
    chunk_nll: dict[tuple[int, int], float] = field(default_factory=dict)


@dataclass
class Stage:
    """Documents scored together before an optional global SGD on `sgd_docs`."""

    name: str
    docs: list[Document]
    sgd_docs: list[Document] | None


def build_stages(docs: list[Document], cfg: EvalConfig) -> list[Stage]:
    """The prefix phases (each followed by SGD on all prefix documents so far), then the rest."""
    if not cfg.phased_enabled or cfg.phased_prefix_docs == 0:
        return [Stage("all", docs, None)]
    stages, done = [], 0
    for phase, boundary in enumerate(phase_boundaries(len(docs), cfg.phased_prefix_docs, cfg.phased_num_phases), 1):
        if boundary > done:
            later = boundary < len(docs)
            stages.append(Stage(f"phase{phase}", docs[done:boundary], docs[:boundary] if later else None))
            done = boundary
    if done < len(docs):
        stages.append(Stage("rest", docs[done:], None))
    return stages


class DocumentBatchScorer:
    """Scores batches of documents with per-document adapters trained chunk by chunk."""

    def __init__(self, model: nn.Module, val: ValSet, cfg: EvalConfig, metric: BitsPerByte, trace: TTTTrace | None):
        self.model, self.val, self.cfg, self.metric, self.trace = model, val, cfg, metric, trace
        self.rows = cfg.ttt_batch_docs
        self.lora = BatchedLoRA(model, self.rows, cfg.ttt_lora_rank, cfg.ttt_lora_targets)
        self.optimizer = torch.optim.AdamW(
            self.lora.parameters(), lr=cfg.ttt_lr, betas=(cfg.ttt_beta1, cfg.ttt_beta2), eps=cfg.ttt_eps,
            weight_decay=cfg.ttt_weight_decay, fused=val.device.type == "cuda",
        )
        self.generator = torch.Generator(device=val.device)

    def score(self, docs: list[Document]) -> None:
        """Score `docs` (at most `ttt_batch_docs`, longest first) into the metric, chunk by chunk."""
        cfg, device = self.cfg, self.val.device
        lengths = [d.num_targets for d in docs] + [0] * (self.rows - len(docs))
        doc_start = torch.tensor([d.start for d in docs] + [0] * (self.rows - len(docs)), device=device)
        targets = torch.tensor(lengths, device=device)
        self._reset(docs[0].index)
        chunks = num_chunks(max(lengths), cfg.ttt_chunk_size)
        for ci in range(chunks):
            chunk_lo = ci * cfg.ttt_chunk_size
            chunk_hi = targets.clamp(max=chunk_lo + cfg.ttt_chunk_size)
            win_start = (chunk_hi - cfg.ttt_context_len).clamp(min=0)
            length = torch.where(targets > chunk_lo, chunk_hi - win_start, 0)
            width = window_width(ci, cfg.ttt_chunk_size, cfg.ttt_context_len, cfg.ttt_window_bucket)
            groups = self._row_groups(lengths, chunk_lo, width)
            train = ci + 1 < chunks
            has_next = targets > chunk_lo + cfg.ttt_chunk_size
            for step in range(cfg.ttt_grad_steps if train else 1):
                self.optimizer.zero_grad(set_to_none=True)
                for rows in groups:
                    batch = self.val.gather(doc_start[rows] + win_start[rows], length[rows], width)
                    columns = torch.arange(width, device=device)
                    scored = batch.valid & (columns[None, :] >= (chunk_lo - win_start[rows])[:, None])
                    with self.lora.select_rows(rows), torch.set_grad_enabled(train), autocast(device):
                        nll = self.model(batch.inputs, batch.targets, lora=self.lora, reduction="none")
                    if step == 0:
                        self.metric.update(nll, batch.target_bytes, scored)
                        if self.trace is not None:
                            self._record_chunk(docs[rows], ci, nll, scored)
                    if train:
                        self._backward(nll, scored, has_next[rows])
                if train:
                    self.optimizer.step()
        if self.trace is not None:
            self.trace.events.extend(("scored", d.index) for d in docs)

    def _row_groups(self, lengths: list[int], chunk_lo: int, width: int) -> list[slice]:
        """Equal slices of the batch rows, `ttt_tokens_per_pass // width` (a power of two) rows each,
        skipping slices whose documents have all ended (rows are sorted longest first)."""
        fit = max(1, self.cfg.ttt_tokens_per_pass // width)
        size = min(self.rows, 1 << (fit.bit_length() - 1))
        if size == self.rows:
            return [ALL_ROWS]
        starts = range(0, self.rows, size)
        return [slice(g, g + size) for g in starts if max(lengths[g : g + size]) > chunk_lo]

    def _backward(self, nll: torch.Tensor, scored: torch.Tensor, has_next: torch.Tensor) -> None:
        """Gradient of each row's mean chunk loss (rows without a later chunk contribute nothing)."""
        weight = scored.to(nll.dtype)
        per_row = (nll * weight).sum(1) / weight.sum(1).clamp(min=1.0)
        (per_row * has_next).sum().backward()

    def _reset(self, seed: int) -> None:
        """Fresh adapters (seeded by the batch's first document, so the result ignores rank and order) and optimizer."""
        self.generator.manual_seed(seed)
        self.lora.reset(self.generator)
        for state in self.optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()

    def _record_chunk(self, docs: list[Document], ci: int, nll: torch.Tensor, scored: torch.Tensor) -> None:
        sums = (nll.detach().double() * scored).sum(1).tolist()
        for doc, total in zip(docs, sums[: len(docs)], strict=True):  # padding rows have no document
            if doc.num_targets > ci * self.cfg.ttt_chunk_size:
                self.trace.chunk_nll[(doc.index, ci)] = total


def run_phased_ttt(
    model: nn.Module,
    val: ValSet,
    cfg: EvalConfig,
    *,
    stopwatch: Stopwatch | None = None,
    progress: bool = True,
    trace: TTTTrace | None = None,
) -> BitsPerByte:
    """Score all documents of `val` with phased TTT. Trains `model`'s weights in place: pass a copy."""
    rank, world = rank_and_world()
    stopwatch = stopwatch or Stopwatch(val.device)
    docs = find_documents(val.tokens, cfg.bos_id)
    stages = build_stages(docs, cfg)
    plans = [
        plan_batches(
            stage.docs, cfg.ttt_batch_docs, rank, world, cfg.ttt_chunk_size, cfg.ttt_context_len, cfg.ttt_window_bucket
        )
        for stage in stages
    ]
    metric = BitsPerByte().to(val.device)
    grad_flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    scorer = DocumentBatchScorer(model, val, cfg, metric, trace)
    bar = tqdm(
        total=sum(len(b) for plan in plans for b in plan), unit="doc", desc=f"TTT rank {rank}/{world}",
        disable=not progress or rank != 0,
    )
    try:
        # eval mode throughout, global SGD included: the model's train mode only swaps in training kernels
        with eval_mode(model):
            for phase, (stage, plan) in enumerate(zip(stages, plans, strict=True), 1):
                with stopwatch.section(f"ttt_score_{stage.name}"):
                    for batch in plan:
                        scorer.score(batch)
                        bar.update(len(batch))
                        if not bar.disable:
                            bar.set_postfix(bpb=f"{_local_bpb(metric):.4f}", refresh=False)
                if rank == 0:
                    log.info("ttt %s: %d docs on rank 0, running bpb %.4f", stage.name, sum(map(len, plan)), _local_bpb(metric))
                if stage.sgd_docs is not None:
                    on_read = None if trace is None else (lambda a, b, p=phase: trace.events.append(("sgd_read", p, a, b)))
                    with stopwatch.section(f"ttt_sgd_{stage.name}"):
                        steps = global_sgd(model, val, stage.sgd_docs, cfg, on_read=on_read)
                    if rank == 0:
                        log.info("ttt %s: global SGD on %d docs, %d steps", stage.name, len(stage.sgd_docs), steps)
    finally:
        bar.close()
        for p, flag in zip(model.parameters(), grad_flags, strict=True):
            p.requires_grad_(flag)
    return metric


def _local_bpb(metric: BitsPerByte) -> float:
    """This rank's running bits per byte (no cross-rank sync; one host sync)."""
    nbytes = float(metric.byte_count)
    return float(metric.nll_sum) / math.log(2.0) / nbytes if nbytes else float("nan")
