"""Model configuration: every architectural knob of the record GPT, with the record's values as defaults.

Kept apart from `model.py` so the LightningCLI, the artifact header and the evaluation code can
describe a model without importing its implementation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import TypeVar, get_type_hints

ConfigT = TypeVar("ConfigT")

FP8_RECIPES = ("off", "forward", "forward_dgrad")
FP8_ALIGNMENT = 16  # torch._scaled_mm wants both matmul widths (K and N) divisible by 16
# The linears whose outputs a test-time-training adapter can add to: what the model's forward offers and the
# TTT settings choose from.
LORA_SITES = ("q", "k", "v", "o", "mlp", "head")


def config_from_dict(cls: type[ConfigT], values: dict) -> ConfigT:
    """Build config dataclass `cls` from `values` (a nested dict for a field that is itself a config
    dataclass, as `asdict` writes it), naming any unknown field instead of ignoring it."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")
    types = get_type_hints(cls)
    nested = {k: config_from_dict(types[k], v) for k, v in values.items() if is_dataclass(types[k]) and isinstance(v, dict)}
    return cls(**{**values, **nested})


@dataclass
class GPTConfig:
    """Architecture of the record GPT (openai/parameter-golf 2026-04-14 record)."""

    vocab_size: int = 8192
    num_layers: int = 11
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 4.0
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    rope_dims: int = 16
    qk_gain_init: float = 5.0
    xsa_last_n: int = 11
    ln_scale: bool = True
    skip_gates: bool = True
    parallel_start_layer: int = 8
    parallel_final_lane: str = "mean"
    num_loops: int = 2
    loop_start: int = 3
    loop_end: int = 5
    attention_backend: str = "auto"
    fused_mlp: bool = True
    # Frontier switches (issue 17): off reproduces the 04-14 record, `configs/frontier.yaml` turns them on.
    smear_gate: bool = False
    """Add to each token's embedding a gated share of the previous token's (`x_t + λ·σ(w·x_t[:gate_window])·x_{t-1}`,
    `w` and `λ` zero at init); never across a document start (BOS) or an attention segment start."""
    sparse_attn_gate: bool = False
    """Scale each attention head's output by `σ(scale·W_h·x[:gate_window])` (after XSA, before the output
    projection); `W` starts at zero, i.e. a gate of 1/2 on an output projection that starts at zero."""
    sparse_attn_gate_scale: float = 1.0
    """`scale` inside the sparse attention gate's sigmoid."""
    gate_window: int = 12
    """Leading residual dimensions read by the SmearGate and the sparse attention gate."""
    fused_softcap_ce: bool = False
    """Training loss through the fused softcapped cross-entropy Triton kernel (CUDA); evaluation keeps the exact path."""
    fused_qkv: bool = False
    """q, k and v projections as one GEMM over the three bank slices stacked (the same products): the input is
    read once, and the backward runs one input-gradient GEMM instead of three GEMMs and their sum. A speed
    lever (`bench/train_step_levers.py` `fused_qkv`), off until a GPU measures it faster."""
    fused_qk_norm_rope: bool = False
    """q/k head RMS-norm, partial rotary and q gain through one Triton kernel each way (`lit_golf/kernels/
    qk_norm_rope.py`; CUDA training steps, the eager path elsewhere). The same math in fp32, so outputs agree to
    the last rounding; a speed lever (`bench/train_step_levers.py` `fused_qk_rope`), on in `configs/record.yaml`
    since an H100 measured it faster than Inductor's fusion of the eager chain (2026-12-08)."""
    fused_xsa: bool = False
    """XSA through one Triton kernel each way (`lit_golf/kernels/xsa.py`; CUDA training steps, the eager path
    elsewhere), in fp32 where the eager chain runs in bf16; a speed lever (`bench/train_step_levers.py`
    `fused_xsa`), on in `configs/record.yaml` since an H100 measured it faster (2026-12-08)."""
    rope_table_positions: int = 262144
    """Positions whose rotary cos/sin tables are computed once, at construction (buffers that move with the model
    and are not saved). A forward over rows of at most this many positions slices them; Inductor would otherwise
    recompute `pow`, `cos` and `sin` per element inside every layer's q/k kernels, forward and backward (a 46-ms
    kernel of the FA4 step, bench/NOTES.md, 2026-12-07). Longer rows compute theirs per call, as 0 always does.
    The default holds twice the record's 98,304-token packed micro-batch (fp32: 16.8 MB at rope_dims 16)."""
    fp8_training: str = "off"
    """Bank matmuls of the training steps in FP8 e4m3 with rowwise scales (`lit_golf/kernels/fp8.py`; emulated
    off CUDA): 'forward' (forward GEMMs; backward in bf16), 'forward_dgrad' (the input gradients too; weight
    gradients stay bf16) or 'off'. Evaluation, TTT, GPTQ calibration and export never use it. Not yet measured."""

    def __post_init__(self) -> None:
        least = dict(vocab_size=1, num_layers=1, model_dim=1, num_heads=1, num_kv_heads=1, rope_dims=0,
                     num_loops=0, xsa_last_n=0, parallel_start_layer=0, rope_table_positions=0)
        problems = [f"{k}={getattr(self, k)} must be >= {n}" for k, n in least.items() if getattr(self, k) < n]
        problems += [f"{k}={getattr(self, k)} must be positive"
                     for k in ("mlp_mult", "rope_base", "logit_softcap", "sparse_attn_gate_scale")
                     if not getattr(self, k) > 0]
        if problems:  # the checks below divide by these
            raise ValueError("invalid GPTConfig: " + "; ".join(problems))
        if self.model_dim % self.num_heads:
            problems.append(f"model_dim={self.model_dim} is not divisible by num_heads={self.num_heads}")
        elif self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}")
        if self.rope_dims % 2 or self.rope_dims > self.model_dim // max(self.num_heads, 1):
            problems.append(f"rope_dims={self.rope_dims} must be even and at most head_dim")
        if self.num_loops and not (0 <= self.loop_start <= self.loop_end < self.num_layers):
            problems.append(
                f"loop_start={self.loop_start}..loop_end={self.loop_end} must lie inside 0..{self.num_layers - 1}"
            )
        if (self.smear_gate or self.sparse_attn_gate) and not 1 <= self.gate_window <= self.model_dim:
            problems.append(f"gate_window={self.gate_window} must lie in 1..model_dim={self.model_dim}")
        if self.parallel_final_lane not in ("mean", "attn", "mlp"):
            problems.append(f"parallel_final_lane={self.parallel_final_lane!r} must be 'mean', 'attn' or 'mlp'")
        if self.fp8_training not in FP8_RECIPES:
            problems.append(f"fp8_training={self.fp8_training!r} must be one of {FP8_RECIPES}")
        elif self.fp8_training != "off" and not problems:
            widths = {"model_dim": self.model_dim, "kv_dim": self.kv_dim, "hidden_dim": self.hidden_dim}
            odd = [f"{k}={v}" for k, v in widths.items() if v % FP8_ALIGNMENT]
            if odd:
                problems.append(f"fp8_training={self.fp8_training!r} needs model_dim, kv_dim (num_kv_heads x head_dim) "
                                f"and hidden_dim (mlp_mult x model_dim) divisible by {FP8_ALIGNMENT}: {', '.join(odd)}")
        if problems:
            raise ValueError("invalid GPTConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def hidden_dim(self) -> int:
        return int(self.mlp_mult * self.model_dim)

    def layer_schedule(self, looping: bool) -> tuple[list[int], list[int]]:
        """Encoder and decoder block order; with looping, blocks loop_start..loop_end repeat num_loops times."""
        if not looping or self.num_loops == 0:
            half = self.num_layers // 2
            return list(range(half)), list(range(half, self.num_layers))
        loop = list(range(self.loop_start, self.loop_end + 1))
        order = list(range(self.loop_start)) + loop * (self.num_loops + 1)
        order += list(range(self.loop_end + 1, self.num_layers))
        half = len(order) // 2
        return order[:half], order[half:]

    def to_dict(self) -> dict:
        return asdict(self)

    # Kernel choices: they change how the same weights are computed, not the model, so an artifact
    # trained with FA4, a fused MLP, QKV, q/k norm or XSA, the fused loss or FP8 training steps evaluates on a box with none of them.
    RUNTIME_FIELDS = ("attention_backend", "fused_mlp", "fused_qkv", "fused_qk_norm_rope", "fused_xsa",
                      "fused_softcap_ce", "fp8_training")

    def architecture(self) -> dict:
        """The fields that define the weights and the function they compute (all but `RUNTIME_FIELDS`)."""
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME_FIELDS}

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        return config_from_dict(cls, values)
