"""`ExportConfig`: how the trained model becomes a <=16,000,000-byte artifact (record values as defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

COMPRESSORS = ("brotli", "lzma")
GROUPS = ("attn", "mlp", "embed")


@dataclass
class ExportConfig:
    """Calibration, quantization, compression and byte-budget settings of the export.

    Calibration: `calibration_batches` forward passes of `calibration_batch_seqs` sequences of
    `calibration_seq_len` tokens each, split across ranks. 16 x 48 x 2048 = 1.57M tokens is what one
    rank of the 8-GPU record sees (its per-GPU batch is 48 sequences), so the Hessians get the
    record's statistics while 8 ranks share the work. `calibration_seed=None` uses the datamodule's
    own calibration seed.

    Quantization: GPTQ with per-row scale `row_std * clip_sigmas / (2**(bits-1) - 1)`; attention and MLP
    matrices at `matrix_bits`, the tied embedding at `embed_bits`. Tensors with at most
    `passthrough_max_numel` elements (gains, mixes, gates, ...) are stored as float16.

    `out_dir=None` means `<trainer log dir>/artifact` for the callback.
    """

    calibration_batches: int = 16
    calibration_seq_len: int = 2048
    calibration_batch_seqs: int = 48
    calibration_seed: int | None = None
    matrix_bits: int = 6
    attn_clip_sigmas: float = 13.0
    mlp_clip_sigmas: float = 12.0
    embed_bits: int = 7
    embed_clip_sigmas: float = 15.0
    passthrough_max_numel: int = 65536
    gptq_block_size: int = 128
    damping: float = 0.01
    compressor: str = "brotli"
    brotli_quality: int = 11
    budget_bytes: int = 16_000_000
    out_dir: str | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("matrix_bits", "embed_bits"):
            if not 2 <= getattr(self, name) <= 8:
                problems.append(f"{name}={getattr(self, name)} must be in 2..8 (values are stored as int8)")
        for name in ("attn_clip_sigmas", "mlp_clip_sigmas", "embed_clip_sigmas", "damping"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        for name in ("calibration_batches", "calibration_seq_len", "calibration_batch_seqs",
                     "gptq_block_size", "budget_bytes"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.compressor not in COMPRESSORS:
            problems.append(f"compressor={self.compressor!r} must be one of {COMPRESSORS}")
        if not 0 <= self.brotli_quality <= 11:
            problems.append(f"brotli_quality={self.brotli_quality} must be in 0..11")
        if problems:
            raise ValueError("invalid ExportConfig: " + "; ".join(problems))

    def group_quantization(self, group: str) -> tuple[int, float]:
        """(bits, clip_sigmas) of a quantized matrix group: 'attn', 'mlp' or 'embed'."""
        table = {
            "attn": (self.matrix_bits, self.attn_clip_sigmas),
            "mlp": (self.matrix_bits, self.mlp_clip_sigmas),
            "embed": (self.embed_bits, self.embed_clip_sigmas),
        }
        if group not in table:
            raise ValueError(f"unknown quantization group {group!r}; known groups: {GROUPS}")
        return table[group]

    def to_dict(self) -> dict:
        return asdict(self)
