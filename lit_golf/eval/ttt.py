"""Phased LoRA test-time training: score every document chunk by chunk, learning from each chunk after scoring it.

Legality is the whole design: a token is scored before any update that has seen it, in one
left-to-right pass, with the model's normalized softmax.

* Per document: a fresh adapter (one row of a `BatchedLoRA`; with `ttt.warm_start_a` only its `B` is
  fresh, its `A` carries over from the row's previous document of the phase; with `ttt.train_a` false only
  `B` learns). The document's targets are cut into
  chunks of `ttt.chunk_size`; chunk k is scored with up to `ttt.context_len` tokens of the same
  document ending at the chunk (never another document's), then the adapter takes `ttt.grad_steps`
  AdamW steps on that chunk's loss alone and, with `ttt.replay_chunks` = k, one step on each of the
  k chunks before it (a second pass over what the document has scored); the learning rate follows
  `ttt.lr_schedule` by chunk index. The last chunk is not trained on: nothing is left to score.
* Batches: `ttt.batch_docs` documents of similar length advance chunk by chunk together, one padded
  row each, longest first; once a document has ended its row no longer runs, and padding positions
  are masked out of scores and losses. Row widths are rounded up to `ttt.window_bucket`, and the rows
  go through the model in slices of at most `ttt.tokens_per_pass` positions (gradients accumulate;
  one optimizer step).
* Phases: the first `global_sgd.prefix_docs` documents of the processing order (the record's: longest
  first; or stream order) are scored in `global_sgd.num_phases` stages; after each, every rank runs global
  SGD of the base weights on all prefix documents scored so far, in scored order (`global_sgd`); the
  remaining documents are then scored with the adapted base.
* Speed: the head and loss run only at each row's chunk positions (`score_columns`), all rows go
  through the model in one pass where memory allows, and on CUDA the forward/backward is compiled
  once with the row count and window width as dynamic dimensions (timed warm-up inside the eval).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lit_golf.data.documents import Document, find_documents
from lit_golf.data.shards import BOS_ID
from lit_golf.distributed import rank_and_world
from lit_golf.eval.config import EvalConfig, TTTConfig
from lit_golf.eval.global_sgd import global_sgd
from lit_golf.eval.lora import BatchedLoRA
from lit_golf.eval.metric import BitsPerByte
from lit_golf.eval.plan import Forward, batch_forwards, phase_boundaries, plan_batches, window_width
from lit_golf.eval.runtime import Stopwatch, autocast, eval_mode
from lit_golf.eval.valset import ValSet, WindowBatch

log = logging.getLogger("lit_golf")


@dataclass
class TTTTrace:
    """Optional record of what TTT did, for tests and audits (costs host syncs per chunk).

    `events` is in execution order: `("chunk", doc_index, start, end)` when a chunk's targets (stream
    positions `[start, end)`) are scored, `("ttt_read", doc_index, start, end)` for the stream span (inputs
    and targets) of every adapter step that learns from that document, `("scored", doc_index)` once a
    document's batch is finished, `("sgd_read", phase, start, end)` for every token span global SGD feeds
    to the model. `chunk_nll[(doc_index, chunk_index)]` is the summed NLL (nats) of that chunk's targets.
    """

    events: list[tuple] = field(default_factory=list)
    chunk_nll: dict[tuple[int, int], float] = field(default_factory=dict)


@dataclass
class Stage:
    """Documents scored together before an optional global SGD on `sgd_docs`."""

    name: str
    docs: list[Document]
    sgd_docs: list[Document] | None


def processing_order(docs: list[Document], cfg: EvalConfig) -> list[Document]:
    """The order the prefix is taken from: the record's (longest first; ties by stream position) or the stream's."""
    if cfg.global_sgd.prefix_order == "stream":
        return docs
    return sorted(docs, key=lambda d: (-d.num_targets, d.index))


def build_stages(docs: list[Document], cfg: EvalConfig) -> list[Stage]:
    """The prefix phases (each followed by SGD on all prefix documents so far), then the rest.

    Every rank computes the same stages from the same documents, so the prefix never depends on
    timing or on the number of ranks.
    """
    if not cfg.global_sgd.enabled or cfg.global_sgd.prefix_docs == 0:
        return [Stage("all", docs, None)]
    ordered = processing_order(docs, cfg)
    stages, done = [], 0
    for phase, boundary in enumerate(phase_boundaries(len(docs), cfg.global_sgd.prefix_docs, cfg.global_sgd.num_phases), 1):
        if boundary > done:
            later = boundary < len(docs)
            stages.append(Stage(f"phase{phase}", ordered[done:boundary], ordered[:boundary] if later else None))
            done = boundary
    if done < len(docs):
        stages.append(Stage("rest", ordered[done:], None))
    return stages


def stage_plan(stage: Stage, cfg: EvalConfig, rank: int, world: int) -> list[list[Document]]:
    """This rank's batches of `stage`, in the order it runs them (`plan.plan_batches`)."""
    ttt = cfg.ttt
    return plan_batches(stage.docs, ttt.batch_docs, rank, world, ttt.chunk_size, ttt.context_len,
                        ttt.window_bucket, ttt.grad_steps, ttt.replay_chunks)


def planned_positions(docs: list[Document], cfg: EvalConfig, rank: int = 0, world: int = 1) -> int:
    """Positions (rows x width) the per-document TTT of `rank` runs through the model, scoring and learning
    passes together: what `DocumentBatchScorer` counts as it runs, from the plan alone (no model)."""
    total = 0
    for stage in build_stages(docs, cfg):
        for batch in stage_plan(stage, cfg, rank, world):
            lengths = [d.num_targets for d in batch] + [0] * (cfg.ttt.batch_docs - len(batch))
            passes = batch_forwards(lengths, cfg.ttt)
            total += sum((group.stop - group.start) * f.width for f in passes for group in f.groups)
    return total


class DocumentBatchScorer:
    """Scores batches of documents with per-document adapters trained chunk by chunk."""

    def __init__(self, model: nn.Module, val: ValSet, cfg: EvalConfig, metric: BitsPerByte, trace: TTTTrace | None):
        self.model, self.val, self.cfg, self.metric, self.trace = model, val, cfg, metric, trace
        self.rows = cfg.ttt.batch_docs
        self.lora = BatchedLoRA(model, self.rows, cfg.ttt.lora_rank, cfg.ttt.lora_targets, cfg.ttt.lora_alpha)
        self.draw_a = True  # the next batch draws the adapters' A (always, unless A is warm-started)
        self.lora.A.requires_grad_(cfg.ttt.train_a)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.lora.parameters() if p.requires_grad], lr=cfg.ttt.lr, betas=(cfg.ttt.beta1, cfg.ttt.beta2),
            eps=cfg.ttt.eps, weight_decay=cfg.ttt.weight_decay, fused=val.device.type == "cuda",
        )
        self.generator = torch.Generator(device=val.device)
        self.compiled = cfg.ttt.compile and val.device.type == "cuda"
        self.compiled_chunk_nll = torch.compile(self._chunk_nll) if self.compiled else None
        self.chunk_columns = torch.arange(cfg.ttt.chunk_size, device=val.device)
        self.positions = 0  # rows x width of every pass run (host arithmetic: no sync)

    def _chunk_nll(self, inputs: torch.Tensor, targets: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """NLL `[rows, chunk]` of `targets` at window `columns` of `inputs`, with the adapters of the active rows."""
        with autocast(inputs.device):
            return self.model(inputs, targets, lora=self.lora, reduction="none", score_columns=columns)

    def chunk_nll(self, inputs: torch.Tensor, targets: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """`_chunk_nll`, through the compiled graph on CUDA: one graph for every row count and width."""
        if self.compiled_chunk_nll is None:
            return self._chunk_nll(inputs, targets, columns)
        for tensor in (inputs, targets, columns):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
        torch._dynamo.maybe_mark_dynamic(inputs, 1)
        return self.compiled_chunk_nll(inputs, targets, columns)

    def warm_up(self) -> None:
        """Compile the TTT graph on random tokens at the narrowest and widest window (a dynamic width
        compiles once; a static one at least shows its cost here), leaving adapters and metric untouched."""
        cfg, device = self.cfg, self.val.device
        vocab = self.model.config.vocab_size
        columns = self.chunk_columns[None, :].expand(self.rows, -1).contiguous()
        for width in sorted({window_width(0, cfg.ttt.chunk_size, cfg.ttt.context_len, cfg.ttt.window_bucket),
                             cfg.ttt.context_len}):
            inputs = torch.randint(2, vocab, (self.rows, width), device=device)
            nll = self.chunk_nll(inputs, inputs.gather(1, columns), columns)
            nll.sum().backward()
        self.optimizer.zero_grad(set_to_none=True)

    def score(self, docs: list[Document]) -> None:
        """Score `docs` (at most `ttt.batch_docs`, longest first) into the metric, chunk by chunk, learning
        from each chunk once it is scored (`plan.batch_forwards`: the passes, in order)."""
        ttt, device = self.cfg.ttt, self.val.device
        lengths = [d.num_targets for d in docs] + [0] * (self.rows - len(docs))
        doc_start = torch.tensor([d.start for d in docs] + [0] * (self.rows - len(docs)), device=device)
        targets = torch.tensor(lengths, device=device)
        self._reset(docs)
        windows: dict[int, tuple[ChunkWindow, list[WindowBatch]]] = {}  # the windows run at the current chunk
        for forward in batch_forwards(lengths, ttt):
            if forward.scores:
                windows.clear()
                has_next = targets > (forward.at + 1) * ttt.chunk_size
                self._set_lr(forward.at)
            if forward.chunk not in windows:
                window = ChunkWindow.of(forward.chunk, targets, forward.width, ttt, self.chunk_columns)
                batches = [window.gather(self.val, doc_start, rows) for rows in forward.groups]
                windows[forward.chunk] = window, batches
            window, batches = windows[forward.chunk]
            self.optimizer.zero_grad(set_to_none=True)
            for rows, batch in zip(forward.groups, batches, strict=True):
                columns = window.columns[rows]
                # the compiled graph always records gradients: a no-grad variant would be a second compile
                with self.lora.select_rows(rows), torch.set_grad_enabled(forward.trains or self.compiled):
                    nll = self.chunk_nll(batch.inputs, batch.targets.gather(1, columns), columns)
                self.positions += (rows.stop - rows.start) * forward.width
                if forward.scores:
                    self.metric.update(nll, batch.target_bytes.gather(1, columns), window.scored[rows])
                if forward.trains:
                    self._backward(nll, window.scored[rows], has_next[rows])
                if self.trace is not None:
                    self._record(docs[rows], forward, window, rows, nll, has_next[rows])
            if forward.trains:
                self.optimizer.step()
        if self.trace is not None:
            self.trace.events.extend(("scored", d.index) for d in docs)

    def _set_lr(self, chunk_index: int) -> None:
        """The learning rate of the steps at `chunk_index` (`ttt.lr_schedule`; a constant one is left alone)."""
        if self.cfg.ttt.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.ttt.lr * lr_scale(self.cfg.ttt, chunk_index)

    def _backward(self, nll: torch.Tensor, scored: torch.Tensor, has_next: torch.Tensor) -> None:
        """Gradient of each row's mean chunk loss (rows without a later chunk contribute nothing)."""
        weight = scored.to(nll.dtype)
        per_row = (nll * weight).sum(1) / weight.sum(1).clamp(min=1.0)
        (per_row * has_next).sum().backward()

    def start_phase(self) -> None:
        """The base model may have changed: the next batch draws new adapters `A` even when they are warm-started."""
        self.draw_a = True

    def _reset(self, docs: list[Document]) -> None:
        """Fresh adapters (A seeded by the batch's first document: without warm start the result ignores rank
        and order) and optimizer. With warm start, A is drawn at a phase's first batch and carried over
        between full batches; a short batch (fewer documents than rows) draws its own A, as the 04-23
        record builds a fresh adapter for it, and the batch after it draws again (the plan runs a stage's
        short batch last on its rank, so in practice that is the next phase's first batch)."""
        short = len(docs) < self.rows
        self.generator.manual_seed(docs[0].index)
        self.lora.reset(self.generator, keep_a=self.cfg.ttt.warm_start_a and not self.draw_a and not short)
        self.draw_a = short
        for state in self.optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()

    def _record(self, docs: list[Document], forward: Forward, window: ChunkWindow, rows: slice,
                nll: torch.Tensor, has_next: torch.Tensor) -> None:
        """The trace of one pass over `rows` (`docs`: their documents; padding rows have none)."""
        chunk_size = self.cfg.ttt.chunk_size
        if forward.scores:
            sums = (nll.detach().double() * window.scored[rows]).sum(1).tolist()
            for doc, total in zip(docs, sums[: len(docs)], strict=True):
                lo = forward.chunk * chunk_size
                if doc.num_targets > lo:
                    self.trace.chunk_nll[(doc.index, forward.chunk)] = total
                    end = doc.start + 1 + min(lo + chunk_size, doc.num_targets)
                    self.trace.events.append(("chunk", doc.index, doc.start + 1 + lo, end))
        if forward.trains:
            learns = has_next[: len(docs)].tolist()
            spans = zip(window.start[rows].tolist(), window.chunk_end[rows].tolist(), strict=True)
            for doc, learn, (lo, hi) in zip(docs, learns, spans, strict=False):
                if learn:
                    self.trace.events.append(("ttt_read", doc.index, doc.start + lo, doc.start + hi + 1))


@dataclass
class ChunkWindow:
    """Where a chunk of every row of a batch sits: each row's window of its own document ending at the
    chunk (at most `ttt.context_len` tokens), and the window columns of the chunk's targets."""

    # `[rows]` the window's first input, as an offset from the row's document start (its BOS).
    start: torch.Tensor
    # `[rows]` the chunk's last target, as such an offset (a window reads offsets `start .. chunk_end`).
    chunk_end: torch.Tensor
    # `[rows]` inputs in the window (0 for a row whose document ends before the chunk).
    length: torch.Tensor
    # `[rows, chunk_size]` window column of each of the chunk's targets (clamped into the window).
    columns: torch.Tensor
    # `[rows, chunk_size]` which of those are real targets of the row's document.
    scored: torch.Tensor
    width: int

    @classmethod
    def of(
        cls, index: int, targets: torch.Tensor, width: int, ttt: TTTConfig, offsets: torch.Tensor
    ) -> ChunkWindow:
        """Chunk `index` of rows with `targets` targets each, in windows padded to `width`; `offsets` is
        `arange(ttt.chunk_size)` on the device."""
        chunk_lo = index * ttt.chunk_size
        chunk_hi = targets.clamp(max=chunk_lo + ttt.chunk_size)
        start = (chunk_hi - ttt.context_len).clamp(min=0)
        length = torch.where(targets > chunk_lo, chunk_hi - start, 0)
        # window column of each row's chunk positions; past the row's end they are padding, not scored
        columns = (chunk_lo - start)[:, None] + offsets[None, :]
        scored = columns < length[:, None]
        return cls(start, chunk_hi, length, columns.clamp(max=width - 1), scored, width)

    def gather(self, val: ValSet, doc_start: torch.Tensor, rows: slice) -> WindowBatch:
        return val.gather(doc_start[rows] + self.start[rows], self.length[rows], self.width)


def lr_scale(ttt: TTTConfig, chunk_index: int) -> float:
    """The factor on `ttt.lr` at a document's chunk `chunk_index` (`ttt.lr_schedule`)."""
    if ttt.lr_schedule == "warmup":
        return min(1.0, (chunk_index + 1) / ttt.lr_schedule_chunks)
    if ttt.lr_schedule == "inverse_sqrt":
        return min(1.0, math.sqrt(ttt.lr_schedule_chunks / (chunk_index + 1)))
    return 1.0

def run_phased_ttt(
    model: nn.Module,
    val: ValSet,
    cfg: EvalConfig,
    *,
    stopwatch: Stopwatch | None = None,
    progress: bool = True,
    trace: TTTTrace | None = None,
    phase_bpb: dict[str, float] | None = None,
    counts: dict[str, int] | None = None,
) -> BitsPerByte:
    """Score all documents of `val` with phased TTT. Trains `model`'s weights in place: pass a copy.

    `phase_bpb`, when given, receives the bits per byte of everything scored so far after each stage
    (all ranks, synced), by stage name; `counts`, when given, this rank's `positions` (rows x width of
    every pass of the per-document TTT, `planned_positions`).
    """
    rank, world = rank_and_world()
    stopwatch = stopwatch or Stopwatch(val.device)
    stages = build_stages(find_documents(val.tokens, BOS_ID), cfg)
    plans = [stage_plan(stage, cfg, rank, world) for stage in stages]
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
            if scorer.compiled:
                with stopwatch.section("ttt_compile"):
                    scorer.warm_up()
                if rank == 0:
                    log.info("ttt: compiled in %.1fs", stopwatch.seconds["ttt_compile"])
            for phase, (stage, plan) in enumerate(zip(stages, plans, strict=True), 1):
                scorer.start_phase()
                with stopwatch.section(f"ttt_score_{stage.name}"):
                    for batch in plan:
                        scorer.score(batch)
                        bar.update(len(batch))
                        if not bar.disable:
                            bar.set_postfix(bpb=f"{_local_bpb(metric):.4f}", refresh=False)
                if phase_bpb is not None:
                    phase_bpb[stage.name] = metric.totals()["bpb"]  # a collective: every rank is here
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
    if counts is not None:
        counts["positions"] = scorer.positions
    return metric


def _local_bpb(metric: BitsPerByte) -> float:
    """This rank's running bits per byte (no cross-rank sync; one host sync)."""
    nbytes = float(metric.byte_count)
    return float(metric.nll_sum) / math.log(2.0) / nbytes if nbytes else float("nan")
