"""`ExportConfig`: how the trained model becomes a <=16,000,000-byte artifact (record values as defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

COMPRESSORS = ("brotli", "lzma")
GROUPS = ("attn", "mlp", "embed")
MATRIX_SCHEMES = ("gptq", "lqer_asym")  # schemes for GPTQ matrices (need a Hessian)
GATE_SCHEMES = ("passthrough", "int8_row")


@dataclass
class SchemeChoice:
    """The quantization scheme of each tensor group (`lit_golf.export.schemes`).

    `attn`, `mlp`, `embed`: 'gptq', or 'lqer_asym' (GPTQ; the `LQERConfig.top_k` matrices of such groups
    with the largest error also get a low-rank correction). `gates`: small 2-D float tensors whose name
    matches one of `gate_patterns` (fnmatch), 'passthrough' (float16) or 'int8_row' (the frontier's
    QuantGate). The default patterns take the sparse attention gates only, as the 04-23 record's
    QuantGate does (its `attn_gate_w`); the U-Net skip gates stay float16 there and here.
    """

    attn: str = "gptq"
    mlp: str = "gptq"
    embed: str = "gptq"
    gates: str = "passthrough"
    gate_patterns: list[str] = field(default_factory=lambda: ["blocks.*.attn.gate_weight"])

    def __post_init__(self) -> None:
        problems = [f"schemes.{g}={getattr(self, g)!r} must be one of {MATRIX_SCHEMES}"
                    for g in GROUPS if getattr(self, g) not in MATRIX_SCHEMES]
        if self.gates not in GATE_SCHEMES:
            problems.append(f"schemes.gates={self.gates!r} must be one of {GATE_SCHEMES}")
        if problems:
            raise ValueError("invalid ExportConfig: " + "; ".join(problems))


@dataclass
class LQERConfig:
    """LQER-asym (scheme 'lqer_asym'): after GPTQ, the `top_k` matrices with the largest ||W - Q(W)||_F get
    a rank-`rank` correction A @ B of that error (B from its SVD, A refit under the Hessian); A stored at
    `a_bits` with one float16 scale, B at `b_bits` with a float16 scale per `b_group_size` values
    (frontier: 3, 4, 2, 4, 64). `damping` (times the Hessian's mean diagonal) regularizes the refit of A."""

    top_k: int = 3
    rank: int = 4
    a_bits: int = 2
    b_bits: int = 4
    b_group_size: int = 64
    damping: float = 0.005

    def __post_init__(self) -> None:
        problems = [f"lqer.{n}={getattr(self, n)} must be at least 1" for n in ("top_k", "rank", "b_group_size")
                    if getattr(self, n) < 1]
        problems += [f"lqer.{n}={getattr(self, n)} must be in 2..8" for n in ("a_bits", "b_bits")
                     if not 2 <= getattr(self, n) <= 8]
        if self.damping < 0:
            problems.append(f"lqer.damping={self.damping} must be at least 0")
        if problems:
            raise ValueError("invalid ExportConfig: " + "; ".join(problems))


@dataclass
class PerGroupCompression:
    """Per-group ZPAQ compression of the integer codes (see `lit_golf.export.serialize`); needs `pip install zpaq`.

    `enabled=False` keeps one compressor for everything. `zpaq_level` 1..5 (5: smallest, slowest both
    ways: decompression counts toward eval time). `reorder_roles`: roles ('tok_emb', 'attn.q', 'mlp.up',
    ...) whose rows are put in greedy nearest-neighbour order before compression (the permutation is
    stored). On a trained record-size artifact only tok_emb pays: its section shrank by 120,663 B, more
    than all permutations cost (50,844 B); attn.q and mlp.up shrank by 2,527 and 17,351 B, less than their
    int16 indices (11,264 and 45,056 B raw), so the frontier's three roles are not the default (bench/NOTES.md).
    `zpaq_chunk_bytes`: a code section longer than this is cut into equal pieces, each its own ZPAQ stream, so
    the pieces decompress in parallel (the frontier compresses each group whole: not in upstream). ZPAQ
    decompresses ~0.5 MB/s per core, so the whole 11.5-MB mlp.up section alone took 23 s of the evaluation's
    artifact load; in four pieces the longest takes 5.7 s, for +3,074 B (2-core dev box, bench/NOTES.md).
    None: whole sections.
    """

    enabled: bool = False
    zpaq_level: int = 5
    reorder_roles: list[str] = field(default_factory=lambda: ["tok_emb"])
    zpaq_chunk_bytes: int | None = 3_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.zpaq_level <= 5:
            raise ValueError(f"invalid ExportConfig: per_group.zpaq_level={self.zpaq_level} must be in 1..5")
        if self.zpaq_chunk_bytes is not None and self.zpaq_chunk_bytes < 1:
            raise ValueError(f"invalid ExportConfig: per_group.zpaq_chunk_bytes={self.zpaq_chunk_bytes} must be "
                             "at least 1 (or null: whole sections)")


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

    `schemes` picks the quantization scheme per tensor group, `lqer` configures LQER-asym and
    `per_group` the per-group ZPAQ compression of the codes; their defaults reproduce the record's
    artifact (GPTQ everywhere, brotli only).

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
    schemes: SchemeChoice = field(default_factory=SchemeChoice)
    lqer: LQERConfig = field(default_factory=LQERConfig)
    per_group: PerGroupCompression = field(default_factory=PerGroupCompression)

    def __post_init__(self) -> None:
        for name, kind in (("schemes", SchemeChoice), ("lqer", LQERConfig), ("per_group", PerGroupCompression)):
            if isinstance(getattr(self, name), dict):  # from a JSON report or a plain dict
                setattr(self, name, kind(**getattr(self, name)))
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
