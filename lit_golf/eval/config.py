"""Evaluation settings, one group per concern (plain windows, sliding windows, per-document LoRA test-time
training, the phased global SGD), with the 2026-04-14 record's values as defaults.

On the command line and in YAML the groups are `model.evaluation.plain.*`, `.sliding.*`, `.ttt.*` and
`.global_sgd.*`; `model.evaluation.max_docs` and `max_tokens` stay at the top because they cut the data every
group sees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from lit_golf.config import LORA_SITES, config_from_dict

PREFIX_ORDERS = ("longest_first", "stream")
LR_SCHEDULES = ("constant", "warmup", "inverse_sqrt")


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ValueError("invalid EvalConfig: " + "; ".join(problems))


def _not_positive(group: str, config: object, names: tuple[str, ...]) -> list[str]:
    return [f"evaluation.{group}.{n}={getattr(config, n)} must be positive" for n in names if getattr(config, n) <= 0]


def _negative(group: str, config: object, names: tuple[str, ...]) -> list[str]:
    return [f"evaluation.{group}.{n}={getattr(config, n)} must not be negative" for n in names if getattr(config, n) < 0]


@dataclass
class PlainEvalConfig:
    """Plain evaluation: the validation stream tiled by windows, every target scored exactly once."""

    seq_len: int = 2048
    """Window length of plain and sliding evaluation; in-training validation follows it (`data.eval_seq_len`
    is linked to it), so the number logged during fit is the number `test` reports."""
    batch_seqs: int = 32
    """Windows per forward (upstream's eval batch), for in-training validation too (`data.val_batch_seqs` is
    linked to it): memory and speed only, never the score."""

    def __post_init__(self) -> None:
        _raise_if(_not_positive("plain", self, ("seq_len", "batch_seqs")))


@dataclass
class SlidingEvalConfig:
    """Sliding-window evaluation: every target scored once, with up to `plain.seq_len` tokens of context."""

    enabled: bool = False
    """Off in the record: TTT is the submission's score, sliding only a reference number."""
    stride: int = 64
    """Targets scored per window; smaller = more context per target and more forwards."""

    def __post_init__(self) -> None:
        _raise_if(_not_positive("sliding", self, ("stride",)))


@dataclass
class TTTConfig:
    """Per-document LoRA test-time training: each chunk is scored, then the document's adapter trains on it."""

    enabled: bool = True
    """The record's score is the TTT score."""
    lora_rank: int = 96
    lora_targets: tuple[str, ...] = LORA_SITES
    """Sites that get an adapter, of `LORA_SITES`."""
    lr: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.999
    weight_decay: float = 0.5
    eps: float = 1e-10
    chunk_size: int = 48
    """Targets scored (then trained on) per step of a document."""
    context_len: int = 2048
    """Tokens of context a chunk is scored with, at most."""
    batch_docs: int = 64
    """Documents (one adapter each) trained side by side."""
    grad_steps: int = 1
    """AdamW steps on each chunk once it is scored (the first shares the scoring forward; each further one
    runs the chunk's window again). Every step trains only on the chunk just scored."""
    replay_chunks: int = 0
    """A second pass over what the document has already scored: after its steps on chunk i, the adapter
    takes one more step on each of chunks i-k .. i-1 (k = `replay_chunks`, oldest first, each with its own
    window), all scored before. 0: none (the record)."""
    lr_schedule: str = "constant"
    """The learning rate within a document, by chunk index i (all rows of a batch are at the same chunk):
    "constant" = `lr`; "warmup" = `lr` x min(1, (i + 1) / `lr_schedule_chunks`); "inverse_sqrt" = `lr` x
    min(1, sqrt(`lr_schedule_chunks` / (i + 1))), flat then decaying. A function of the chunk index only."""
    lr_schedule_chunks: int = 8
    """The warm-up length, or the chunks before the decay starts, of `lr_schedule`."""
    lora_alpha: float | None = None
    """LoRA output scaled by alpha / rank (None: unscaled, the 04-14 record)."""
    warm_start_a: bool = False
    """At each batch only the adapters' B is zeroed; A (trained) carries over per row slot, and is drawn afresh
    at the first batch of each phase (the 04-14 record draws A for every batch)."""
    train_a: bool = True
    """The adapters' A learn as B does (the records). False: A stays as drawn and only B learns. AdamW with
    `beta1 = 0` steps every coordinate by about the learning rate however small its gradient, so a trained A,
    carried over by `warm_start_a`, drifts batch after batch."""
    window_bucket: int = 64
    """Context windows are padded up to a multiple of this (capped at `context_len`): few shapes to compile."""
    tokens_per_pass: int = 131072
    """At most this many row positions (rows x width) per forward/backward, bounding activation memory
    (64 rows x 2,048 in one pass take ~35 GB on the record model)."""
    compile: bool = True
    """torch.compile the TTT forward/backward on CUDA (one graph: row count and window width dynamic)."""

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        positive = ("lora_rank", "chunk_size", "context_len", "batch_docs", "grad_steps", "window_bucket",
                    "tokens_per_pass", "lr_schedule_chunks")
        problems = _not_positive("ttt", self, positive) + _negative("ttt", self, ("weight_decay", "replay_chunks"))
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"evaluation.ttt.lr_schedule={self.lr_schedule!r}; choose from {list(LR_SCHEDULES)}")
        unknown = sorted(set(self.lora_targets) - set(LORA_SITES))
        if unknown:
            problems.append(f"evaluation.ttt.lora_targets has unknown sites {unknown}; choose from {list(LORA_SITES)}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            problems.append(f"evaluation.ttt.lora_alpha={self.lora_alpha} must be positive or None (unscaled)")
        _raise_if(problems)


@dataclass
class GlobalSGDConfig:
    """Multi-phase global SGD: between TTT phases, the base model trains on the documents already scored."""

    enabled: bool = True
    """Off: TTT visits all documents in one stage and the base model never changes."""
    prefix_docs: int = 2000
    """Documents in the phased prefix; the rest are scored after the last phase."""
    num_phases: int = 3
    """Stages the prefix is scored in; after each (but one that ends the documents) the base model takes a
    global SGD over every prefix document scored so far: more phases, more SGD on already-scored text."""
    prefix_order: str = "longest_first"
    """Which documents form the prefix: "longest_first" = the first `prefix_docs` in the record's processing
    order (all documents sorted by length, longest first); "stream" = the first in the stream."""
    lr: float = 1e-3
    momentum: float = 0.9
    chunk_tokens: int = 32768
    """Tokens per SGD step."""
    batch_seqs: int = 32
    """Sequences of `plain.seq_len` tokens per forward/backward within a step: memory only."""
    grad_clip: float = 1.0
    epochs: int = 1
    """Passes of each phase's SGD over its (already scored) documents."""

    def __post_init__(self) -> None:
        problems = _not_positive("global_sgd", self, ("num_phases", "chunk_tokens", "batch_seqs"))
        problems += _negative("global_sgd", self, ("prefix_docs", "epochs"))
        if self.prefix_order not in PREFIX_ORDERS:
            problems.append(f"evaluation.global_sgd.prefix_order={self.prefix_order!r}; choose from {list(PREFIX_ORDERS)}")
        _raise_if(problems)


# Where each flat field of the layout before the nesting (fab90a0) lives now (from_dict names it in its error).
LEGACY_FIELDS = {
    "eval_seq_len": "plain.seq_len",
    "eval_batch_seqs": "plain.batch_seqs",
    **{f"sliding_{f.name}": f"sliding.{f.name}" for f in fields(SlidingEvalConfig)},
    **{f"ttt_{f.name}": f"ttt.{f.name}" for f in fields(TTTConfig)},
    "phased_enabled": "global_sgd.enabled",
    **{f"phased_{n}": f"global_sgd.{n}" for n in ("prefix_docs", "num_phases", "prefix_order")},
    **{f"global_sgd_{n}": f"global_sgd.{n}" for n in ("lr", "momentum", "chunk_tokens", "batch_seqs", "grad_clip", "epochs")},
}


@dataclass
class EvalConfig:
    """Plain/sliding evaluation and phased LoRA test-time training (2026-04-14 record values)."""

    plain: PlainEvalConfig = field(default_factory=PlainEvalConfig)
    sliding: SlidingEvalConfig = field(default_factory=SlidingEvalConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    global_sgd: GlobalSGDConfig = field(default_factory=GlobalSGDConfig)
    max_docs: int | None = None
    """Keep the first N validation documents (None: all), for the final evaluation and, linked to
    `data.max_val_docs`, for in-training validation: quick runs whose score is not comparable to a full one.
    Documents start at the shard format's BOS token (`lit_golf.data.shards.BOS_ID`)."""
    max_tokens: int | None = None
    """And of those, the most whole documents that fit in N tokens (None: no bound; `data.max_val_tokens`
    follows it). Evaluation time grows with tokens, not documents: a bound in tokens keeps a quick run quick
    on any corpus (64 documents are ~9k tokens of docstrings but ~91k of Wikipedia)."""

    def __post_init__(self) -> None:
        problems = []
        if self.sliding.stride > self.plain.seq_len:
            problems.append(f"evaluation.sliding.stride={self.sliding.stride} must not exceed "
                            f"evaluation.plain.seq_len={self.plain.seq_len}")
        if self.ttt.chunk_size > self.ttt.context_len:
            problems.append(f"evaluation.ttt.chunk_size={self.ttt.chunk_size} must not exceed "
                            f"evaluation.ttt.context_len={self.ttt.context_len}")
        if self.max_docs is not None and self.max_docs <= 0:
            problems.append(f"evaluation.max_docs={self.max_docs} must be positive or None (all documents)")
        if self.max_tokens is not None and self.max_tokens <= self.plain.seq_len:
            problems.append(f"evaluation.max_tokens={self.max_tokens} must exceed evaluation.plain.seq_len="
                            f"{self.plain.seq_len} (one evaluation window) or be None (no bound)")
        _raise_if(problems)

    def to_dict(self) -> dict:
        """Nested: one dict per group, as in YAML."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EvalConfig:
        """The inverse of `to_dict`. A flat field of the layout before the nesting (`ttt_lora_rank`, say, from an
        old results.json) is refused, in one line naming its new dotted place, rather than mapped: the file
        was written by another lit_golf version, and its settings are read from it only on purpose."""
        moved = [f"{key} -> evaluation.{LEGACY_FIELDS[key]}" for key in values if key in LEGACY_FIELDS]
        if moved:
            raise ValueError(f"flat EvalConfig fields of an older lit_golf (the settings are nested by concern now): "
                             f"{', '.join(moved)}")
        return config_from_dict(cls, values)
