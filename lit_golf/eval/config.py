"""Evaluation settings: every number of plain, sliding and test-time-training evaluation, record defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lit_golf.config import config_from_dict

LORA_SITES = ("q", "k", "v", "o", "mlp", "head")
PREFIX_ORDERS = ("longest_first", "stream")


@dataclass
class EvalConfig:
    """Plain/sliding evaluation and phased LoRA test-time training (2026-04-14 record values)."""

    # plain and sliding-window evaluation
    eval_seq_len: int = 2048
    eval_batch_seqs: int = 32
    sliding_enabled: bool = False
    sliding_stride: int = 64
    # per-document LoRA test-time training
    ttt_enabled: bool = True
    ttt_lora_rank: int = 96
    ttt_lora_targets: tuple[str, ...] = LORA_SITES
    ttt_lr: float = 1e-4
    ttt_beta1: float = 0.0
    ttt_beta2: float = 0.999
    ttt_weight_decay: float = 0.5
    ttt_eps: float = 1e-10
    ttt_chunk_size: int = 48
    ttt_context_len: int = 2048
    ttt_batch_docs: int = 64
    ttt_grad_steps: int = 1
    # LoRA output scaled by alpha / rank (None: unscaled, the 04-14 record)
    ttt_lora_alpha: float | None = None
    # at each batch only the adapters' B is zeroed; A (trained) carries over per row slot, and is drawn
    # afresh at the first batch of each phase (the 04-14 record draws A for every batch)
    ttt_warm_start_a: bool = False
    # context windows are padded up to a multiple of this (capped at ttt_context_len): few shapes
    ttt_window_bucket: int = 64
    # at most this many row positions (rows x width) per forward/backward, bounding activation memory
    # (64 rows x 2,048 in one pass take ~35 GB on the record model)
    ttt_tokens_per_pass: int = 131072
    # torch.compile the TTT forward/backward on CUDA (one graph: row count and window width dynamic)
    ttt_compile: bool = True
    # multi-phase global SGD of the base model on already-scored documents
    phased_enabled: bool = True
    phased_prefix_docs: int = 2000
    phased_num_phases: int = 3
    # which documents form the prefix: "longest_first" = the first `phased_prefix_docs` in the record's
    # processing order (all documents sorted by length, longest first); "stream" = the first in the stream
    phased_prefix_order: str = "longest_first"
    global_sgd_lr: float = 1e-3
    global_sgd_momentum: float = 0.9
    global_sgd_chunk_tokens: int = 32768
    global_sgd_batch_seqs: int = 32
    global_sgd_grad_clip: float = 1.0
    global_sgd_epochs: int = 1
    # data (documents start at the shard format's BOS token, `lit_golf.data.shards.BOS_ID`: one source,
    # shared with the model's SmearGate mask and the packing of training rows)
    max_docs: int | None = None

    def __post_init__(self) -> None:
        self.ttt_lora_targets = tuple(self.ttt_lora_targets)
        positive = (
            "eval_seq_len", "eval_batch_seqs", "sliding_stride", "ttt_lora_rank", "ttt_chunk_size",
            "ttt_context_len", "ttt_batch_docs", "ttt_grad_steps", "ttt_window_bucket", "ttt_tokens_per_pass",
            "phased_num_phases", "global_sgd_chunk_tokens", "global_sgd_batch_seqs",
        )
        problems = [f"{name}={getattr(self, name)} must be positive" for name in positive if getattr(self, name) <= 0]
        unknown = sorted(set(self.ttt_lora_targets) - set(LORA_SITES))
        if unknown:
            problems.append(f"ttt_lora_targets has unknown sites {unknown}; choose from {list(LORA_SITES)}")
        if self.phased_prefix_order not in PREFIX_ORDERS:
            problems.append(f"phased_prefix_order={self.phased_prefix_order!r}; choose from {list(PREFIX_ORDERS)}")
        if self.sliding_stride > self.eval_seq_len:
            problems.append(f"sliding_stride={self.sliding_stride} must not exceed eval_seq_len={self.eval_seq_len}")
        if self.ttt_chunk_size > self.ttt_context_len:
            problems.append(
                f"ttt_chunk_size={self.ttt_chunk_size} must not exceed ttt_context_len={self.ttt_context_len}"
            )
        negative = [name for name in ("phased_prefix_docs", "global_sgd_epochs", "ttt_weight_decay") if getattr(self, name) < 0]
        problems += [f"{name}={getattr(self, name)} must not be negative" for name in negative]
        if self.ttt_lora_alpha is not None and not self.ttt_lora_alpha > 0:
            problems.append(f"ttt_lora_alpha={self.ttt_lora_alpha} must be positive or None (unscaled)")
        if self.max_docs is not None and self.max_docs <= 0:
            problems.append(f"max_docs={self.max_docs} must be positive or None (all documents)")
        if problems:
            raise ValueError("invalid EvalConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EvalConfig:
        return config_from_dict(cls, values)
