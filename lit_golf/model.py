"""The record GPT as a plain `nn.Module` (no Lightning), with one forward path for training, eval and TTT.

Shape of the network (defaults in `GPTConfig`): tied token embedding whose output is RMS-normed and
kept as `x0`; an encoder and a decoder half of blocks joined U-Net style (each encoder output is
mixed back into the mirrored decoder input through a learned weight and a sigmoid gate); from
`parallel_start_layer` on, the decoder carries two residual lanes (attention reads lane 0, the MLP
reads lane 1, a 2x2 matrix routes both outputs into both lanes); depth recurrence replays blocks
`loop_start..loop_end` when `looping_active` is set. Frontier switches (off in the record): a SmearGate
on the embedding, a sparse per-head gate on the attention output, and the fused training loss.

The large matrices live in four banks (so the optimizer can orthogonalize them in batches) and are
sliced per layer at use; they are cast to the activation dtype there, so the trainer may keep them in
bf16 while the small "scalar" parameters stay fp32. With `fp8_training` on, the bank matmuls of a forward in
training mode run in FP8 (`lit_golf.kernels.fp8`); eval mode never does, and evaluation, TTT (global SGD
included) and GPTQ calibration all run the model in eval mode, as they do for the other training kernels
(`TrainingKernels`: the fused MLP, q/k norm, XSA and loss). Identity "taps" mark the input of every
quantized matrix for calibration hooks, and the optional `lora` argument adds test-time-training
deltas at fixed sites without a second copy of the forward code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_golf.attention import AttentionBackend, select_backend
from lit_golf.config import GPTConfig
from lit_golf.data.shards import BOS_ID
from lit_golf.kernels.fp8 import fp8_linear

FusedMLPFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str | None], torch.Tensor]
FusedLossFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
FusedQKNormFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
FusedXSAFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingKernels(NamedTuple):
    """Triton kernels a CUDA training step runs in place of eager code (None: off, or not available here); all but
    the loss only on 16-bit activations.

    Evaluation, TTT and GPTQ calibration run the model in eval mode and so always take the eager code.
    """

    mlp: FusedMLPFn | None
    qk_norm_rope: FusedQKNormFn | None
    xsa: FusedXSAFn | None
    loss: FusedLossFn | None


def runs_kernel(module: nn.Module, kernel: Callable | None, x: torch.Tensor) -> bool:
    """Whether `module`'s forward on `x` takes `kernel`: a training step on a 16-bit CUDA tensor with it loaded."""
    return kernel is not None and module.training and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)


class LoRA(Protocol):
    """What the model needs from a test-time-training adapter."""

    def delta(self, site: str, slot: int, x: torch.Tensor) -> torch.Tensor | None: ...


class LayerWeights(NamedTuple):
    """One block's slices of the banks."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


class StepContext(NamedTuple):
    """Per-forward inputs shared by every block."""

    cos: torch.Tensor
    sin: torch.Tensor
    cu_seqlens: torch.Tensor | None
    max_seqlen: int
    lora: LoRA | None
    fp8: str | None  # FP8 recipe of the bank matmuls (a training step with `fp8_training` on), else None


def with_lora(out: torch.Tensor, ctx: StepContext, site: str, slot: int, x: torch.Tensor) -> torch.Tensor:
    """`out` plus the adapter's delta at `site` for the block in execution `slot` (unchanged without LoRA)."""
    if ctx.lora is None:
        return out
    delta = ctx.lora.delta(site, slot, x)
    return out if delta is None else out + delta


def bank_linear(x: torch.Tensor, weight: torch.Tensor, fp8: str | None) -> torch.Tensor:
    """`x @ weight.T` for a bank slice: `F.linear` in x's dtype, or FP8 under recipe `fp8`."""
    return F.linear(x, weight.to(x.dtype)) if fp8 is None else fp8_linear(x, weight, fp8)


def to_stream_dtype(x: torch.Tensor) -> torch.Tensor:
    """The embedding rows in the residual stream's dtype: autocast's when autocast is on, else unchanged.

    Under bf16 autocast every norm, mix and residual add then moves bf16, as in the upstream model
    (whose embedding is stored in bf16); an fp32 stream costs ~10% of the step time in memory traffic
    (bench/NOTES.md).
    """
    if torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def window_gate(x: torch.Tensor, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """`sigmoid(scale * weight @ x[:window])` per position: `[..., outputs]` from the first `window` dims of `x`."""
    return torch.sigmoid(scale * F.linear(x[..., : weight.size(-1)], weight.to(x.dtype)))


# ----------------------------------------------------------------------------- rotary embedding


def rotary_tables(
    seq_len: int, rope_dims: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `[1, T, 1, rope_dims/2]`, computed in fp32 and rounded to the activation dtype."""
    inv_freq = 1.0 / base ** (torch.arange(0, rope_dims, 2, device=device, dtype=torch.float32) / rope_dims)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :].to(dtype), angles.sin()[None, :, None, :].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `2 * cos.size(-1)` dims of each head (split in halves); the rest pass through."""
    half = cos.size(-1)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)


def remove_value_direction(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA: drop from each head's output its component along its KV head's (normalized) value vector."""
    batch, seq_len, heads, head_dim = y.shape
    grouped = y.reshape(batch, seq_len, v.size(2), heads // v.size(2), head_dim)
    direction = F.normalize(v, dim=-1).unsqueeze(-2)
    projection = (grouped * direction).sum(dim=-1, keepdim=True) * direction
    return (grouped - projection).reshape(batch, seq_len, heads, head_dim)


# ----------------------------------------------------------------------------- modules


class SmearGate(nn.Module):
    """`x_t + lam * sigmoid(weight @ x_t[:window]) * x_{t-1}` on the token embeddings (identity at init).

    The previous token is dropped where token t is BOS (a new document) and where an attention segment
    of `cu_seqlens` starts (a row packs independent pieces), so no document sees another's tokens and a
    packed row computes what its pieces would alone.
    """

    def __init__(self, window: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, window, dtype=torch.float32))
        self.lam = nn.Parameter(torch.zeros(1, dtype=torch.float32))

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        seq_len = x.size(1)
        keep = input_ids != BOS_ID
        if cu_seqlens is not None:  # padding entries equal seq_len and land in the dropped last slot
            segment_start = torch.zeros(seq_len + 1, dtype=torch.bool, device=x.device)
            keep = keep & ~segment_start.index_fill(0, cu_seqlens.long(), True)[:seq_len]
        previous = F.pad(x[:, :-1], (0, 0, 1, 0))  # position 0 has none
        gate = self.lam.to(x.dtype) * window_gate(x, self.weight)
        return x + gate * previous * keep[..., None].to(x.dtype)


class CausalSelfAttention(nn.Module):
    """GQA attention with q/k RMS-norm, partial RoPE, per-head query gain, optional XSA and output gate."""

    def __init__(self, config: GPTConfig, backend: AttentionBackend, use_xsa: bool, kernels: TrainingKernels):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_gain = nn.Parameter(torch.full((config.num_heads,), config.qk_gain_init, dtype=torch.float32))
        self.use_xsa = use_xsa
        self.fused_qkv = config.fused_qkv
        self.kernels = kernels
        # sparse attention gate: per head, from the first `gate_window` dims of the block input
        self.gate_weight = (
            nn.Parameter(torch.zeros(config.num_heads, config.gate_window, dtype=torch.float32))
            if config.sparse_attn_gate else None
        )
        self.gate_scale = config.sparse_attn_gate_scale
        self.backend = backend
        self.qkv_tap = nn.Identity()
        self.out_tap = nn.Identity()

    def forward(self, x: torch.Tensor, w: LayerWeights, ctx: StepContext, slot: int) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        x = self.qkv_tap(x)
        if self.fused_qkv:
            qkv = bank_linear(x, torch.cat((w.q, w.k, w.v)), ctx.fp8)
            q, k, v = qkv.split((w.q.size(0), w.k.size(0), w.v.size(0)), dim=-1)
        else:
            q, k, v = (bank_linear(x, weight, ctx.fp8) for weight in (w.q, w.k, w.v))
        q, k, v = (with_lora(out, ctx, site, slot, x) for out, site in ((q, "q"), (k, "k"), (v, "v")))
        q = q.view(batch, seq_len, self.num_heads, self.head_dim)
        k = k.view(batch, seq_len, self.num_kv_heads, self.head_dim)
        v = v.view(batch, seq_len, self.num_kv_heads, self.head_dim)
        if runs_kernel(self, self.kernels.qk_norm_rope, q):
            fused = self.kernels.qk_norm_rope
            q, k = fused(q, ctx.cos, ctx.sin, self.q_gain), fused(k, ctx.cos, ctx.sin, None)
        else:
            q = apply_rotary(rms_norm(q), ctx.cos, ctx.sin)
            q = q * self.q_gain.to(q.dtype)[:, None]
            k = apply_rotary(rms_norm(k), ctx.cos, ctx.sin)
        # Under autocast the norms may return fp32 while v is bf16; flash kernels need one dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)
        y = self.backend(q, k, v, cu_seqlens=ctx.cu_seqlens, max_seqlen=ctx.max_seqlen)
        if self.use_xsa:
            y = self.kernels.xsa(y, v) if runs_kernel(self, self.kernels.xsa, y) else remove_value_direction(y, v)
        if self.gate_weight is not None:
            y = y * window_gate(x, self.gate_weight, self.gate_scale).to(y.dtype)[..., None]
        y = self.out_tap(y.reshape(batch, seq_len, -1))
        return with_lora(bank_linear(y, w.o, ctx.fp8), ctx, "o", slot, x)


class MLP(nn.Module):
    """LeakyReLU(0.5)^2 MLP; the fused Triton kernel serves CUDA training in 16-bit (FP8 under `fp8`), the eager
    path the rest."""

    def __init__(self, fused_fn: FusedMLPFn | None):
        super().__init__()
        self.fused_fn = fused_fn
        self.up_tap = nn.Identity()
        self.down_tap = nn.Identity()

    def forward(self, x: torch.Tensor, up: torch.Tensor, down: torch.Tensor, fp8: str | None) -> torch.Tensor:
        x = self.up_tap(x)
        up, down = up.to(x.dtype), down.to(x.dtype)
        if runs_kernel(self, self.fused_fn, x):
            return self.fused_fn(x, up, down, fp8)
        hidden = F.leaky_relu(bank_linear(x, up, fp8), negative_slope=0.5).square()
        return bank_linear(self.down_tap(hidden), down, fp8)


class Block(nn.Module):
    """Attention and MLP sub-layers with learned output scales and a learned mix of the stream with x0."""

    def __init__(self, config: GPTConfig, layer: int, backend: AttentionBackend, kernels: TrainingKernels):
        super().__init__()
        dim = config.model_dim
        self.attn = CausalSelfAttention(config, backend, layer >= config.num_layers - config.xsa_last_n, kernels)
        self.mlp = MLP(kernels.mlp)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())
        self.norm_scale = 1.0 / math.sqrt(layer + 1) if config.ln_scale else 1.0

    def mix_with_x0(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        return mix[0] * x + mix[1] * x0

    def attention_branch(self, read: torch.Tensor, w: LayerWeights, ctx: StepContext, slot: int) -> torch.Tensor:
        out = self.attn(rms_norm(read) * self.norm_scale, w, ctx, slot)
        return self.attn_scale.to(out.dtype) * out

    def mlp_branch(self, read: torch.Tensor, w: LayerWeights, ctx: StepContext, slot: int) -> torch.Tensor:
        normed = rms_norm(read) * self.norm_scale
        out = with_lora(self.mlp(normed, w.up, w.down, ctx.fp8), ctx, "mlp", slot, normed)
        return self.mlp_scale.to(out.dtype) * out

    def forward(self, x, x0, w: LayerWeights, ctx: StepContext, slot: int) -> torch.Tensor:
        """Sequential residual step: attention then MLP on one stream."""
        x = self.mix_with_x0(x, x0)
        x = x + self.attention_branch(x, w, ctx, slot)
        return x + self.mlp_branch(x, w, ctx, slot)


# ----------------------------------------------------------------------------- the model


class GPT(nn.Module):
    """The record GPT. `forward(input_ids, target_ids=None, *, cu_seqlens, max_seqlen, lora, reduction)`.

    Parallel lanes start at the first decoder block whose layer index is >= `parallel_start_layer`
    (0 disables them) and continue to the end of the decoder.
    """

    def __init__(self, config: GPTConfig | None = None):
        super().__init__()
        self.config = config = config or GPTConfig()
        layers, dim = config.num_layers, config.model_dim
        self.attention = select_backend(config.attention_backend)
        self.looping_active = False
        self.kernels = kernels = load_training_kernels(config)

        self.tok_emb = nn.Embedding(config.vocab_size, dim)
        self.smear = SmearGate(config.gate_window) if config.smear_gate else None
        self.qo_bank = nn.Parameter(torch.empty(2 * layers, dim, dim))
        self.kv_bank = nn.Parameter(torch.empty(2 * layers, config.kv_dim, dim))
        self.mlp_up_bank = nn.Parameter(torch.empty(layers, config.hidden_dim, dim))
        self.mlp_down_bank = nn.Parameter(torch.empty(layers, dim, config.hidden_dim))
        self.blocks = nn.ModuleList(Block(config, i, self.attention, kernels) for i in range(layers))

        encoder, decoder = config.layer_schedule(config.num_loops > 0)
        self.num_skips = min(len(encoder), len(decoder))
        self.skip_weights = nn.Parameter(torch.ones(self.num_skips, dim, dtype=torch.float32))
        self.skip_gates = (
            nn.Parameter(torch.zeros(self.num_skips, dim, dtype=torch.float32)) if config.skip_gates else None
        )
        # [layer, source (attn, mlp), destination lane (0, 1)] and [layer, lane]
        self.parallel_post_lambdas = nn.Parameter(torch.ones(layers, 2, 2, dtype=torch.float32))
        self.parallel_resid_lambdas = nn.Parameter(torch.full((layers, 2), 1.1, dtype=torch.float32))
        self.head_tap = nn.Identity()
        cos, sin = rotary_tables(config.rope_table_positions, self.rope_dims, config.rope_base, torch.device("cpu"),
                                 torch.float32)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @property
    def attention_backend_name(self) -> str:
        return self.attention.name

    @property
    def rope_dims(self) -> int:
        return self.config.rope_dims or self.config.head_dim

    def rotary(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin `[1, seq_len, 1, rope_dims/2]` in `dtype`: slices of the tables built at construction, or
        computed here for rows longer than `rope_table_positions`."""
        if seq_len <= self.rope_cos.size(1):
            return self.rope_cos[:, :seq_len].to(dtype), self.rope_sin[:, :seq_len].to(dtype)
        return rotary_tables(seq_len, self.rope_dims, self.config.rope_base, self.rope_cos.device, dtype)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Orthogonal q/k/v/up, zero output projections (every block starts as identity), small embedding.

        The gates of the frontier switches are zero-initialised where they are built and draw nothing
        here, so switching them on leaves every other parameter's initial value unchanged.
        """
        layers = self.config.num_layers
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.config.tied_embed_init_std)
        for i in range(layers):
            nn.init.orthogonal_(self.qo_bank[i])
            nn.init.zeros_(self.qo_bank[layers + i])
            nn.init.orthogonal_(self.kv_bank[i])
            nn.init.orthogonal_(self.kv_bank[layers + i])
        for i in range(layers):
            nn.init.orthogonal_(self.mlp_up_bank[i])
            nn.init.zeros_(self.mlp_down_bank[i])

    def layer_weights(self, layer: int) -> LayerWeights:
        n = self.config.num_layers
        return LayerWeights(
            self.qo_bank[layer], self.kv_bank[layer], self.kv_bank[n + layer], self.qo_bank[n + layer],
            self.mlp_up_bank[layer], self.mlp_down_bank[layer],
        )

    def quantized_matrices(self) -> list[QuantizedMatrix]:
        return quantized_matrices(self.config)

    # --------------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.Tensor,
        target_ids: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int = 0,
        lora: LoRA | None = None,
        reduction: str = "mean",
        score_columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Softcapped logits `[B, T, V]`, or fp32 cross-entropy (`"mean"` scalar / `"none"` `[B, T]`).

        `score_columns` (`[B, S]` column indices) runs the head only at those positions: the logits
        are `[B, S, V]` and `target_ids` must be `[B, S]`. Test-time training scores at most a chunk
        per row of a window of up to 2,048 positions, so the head and the loss shrink by that ratio.
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction={reduction!r} is not supported; use 'mean' or 'none'")
        x = to_stream_dtype(self.tok_emb(input_ids))
        if self.smear is not None:
            x = self.smear(x, input_ids, cu_seqlens)
        x = rms_norm(x)
        cos, sin = self.rotary(input_ids.size(1), x.dtype)
        fp8 = self.config.fp8_training if self.training and self.config.fp8_training != "off" else None
        ctx = StepContext(cos, sin, cu_seqlens, int(max_seqlen), lora, fp8)
        x = self._run_blocks(x, ctx)
        if score_columns is not None:
            x = x.gather(1, score_columns[..., None].expand(-1, -1, x.size(-1)))
        logits = self._head(x, ctx)
        cap = self.config.logit_softcap
        if target_ids is not None and self.kernels.loss is not None and self.training and logits.is_cuda:
            loss = self.kernels.loss(logits.flatten(0, 1), target_ids.flatten(), cap)
            return loss.mean() if reduction == "mean" else loss.view_as(target_ids)
        logits = cap * torch.tanh(logits / cap)
        if target_ids is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), target_ids.flatten(), reduction=reduction)
        return loss if reduction == "mean" else loss.view_as(target_ids)

    def _run_blocks(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        x0 = x
        encoder, decoder = self.config.layer_schedule(self.looping_active)
        skips = []
        for slot, layer in enumerate(encoder):
            x = self.blocks[layer](x, x0, self.layer_weights(layer), ctx, slot)
            skips.append(x)
        lanes = None
        start = self.config.parallel_start_layer
        for j, layer in enumerate(decoder):
            slot = len(encoder) + j
            if lanes is None and 0 < start <= layer:
                lanes = (x, x)
            if j < self.num_skips and skips:
                if lanes is None:
                    x = self._merge_skip(x, skips.pop(), j)
                else:
                    lanes = (self._merge_skip(lanes[0], skips.pop(), j), lanes[1])
            if lanes is None:
                x = self.blocks[layer](x, x0, self.layer_weights(layer), ctx, slot)
            else:
                lanes = self._parallel_step(layer, lanes, x0, ctx, slot)
        return x if lanes is None else self._final_lane(*lanes)

    def _merge_skip(self, x: torch.Tensor, skip: torch.Tensor, j: int) -> torch.Tensor:
        scaled = self.skip_weights[j].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + scaled
        return torch.lerp(scaled, x, torch.sigmoid(self.skip_gates[j].to(x.dtype)))

    def _parallel_step(self, layer: int, lanes, x0, ctx: StepContext, slot: int):
        """Two-lane residual step: attention reads lane 0 (mixed with x0), the MLP reads lane 1."""
        block, w = self.blocks[layer], self.layer_weights(layer)
        lane0, lane1 = lanes
        attn_out = block.attention_branch(block.mix_with_x0(lane0, x0), w, ctx, slot)
        mlp_out = block.mlp_branch(lane1, w, ctx, slot)
        resid = self.parallel_resid_lambdas[layer].to(lane0.dtype)
        post = self.parallel_post_lambdas[layer].to(lane0.dtype)
        return (
            resid[0] * lane0 + post[0, 0] * attn_out + post[1, 0] * mlp_out,
            resid[1] * lane1 + post[0, 1] * attn_out + post[1, 1] * mlp_out,
        )

    def _final_lane(self, lane0: torch.Tensor, lane1: torch.Tensor) -> torch.Tensor:
        choice = self.config.parallel_final_lane
        if choice == "attn":
            return lane0
        if choice == "mlp":
            return lane1
        return 0.5 * (lane0 + lane1)

    def _head(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Logits before the softcap (the adapter's head delta included)."""
        x = self.head_tap(rms_norm(x))
        return with_lora(F.linear(x, self.tok_emb.weight.to(x.dtype)), ctx, "head", 0, x)


def load_training_kernels(config: GPTConfig) -> TrainingKernels:
    """The kernels `config` switches on that can run here (Triton importable, a CUDA device visible); imported
    inside the function so CPU installs never need Triton (the submission's code size still counts them)."""
    if not torch.cuda.is_available():
        return TrainingKernels(None, None, None, None)
    from lit_golf.kernels import fused_ce, fused_mlp, qk_norm_rope, xsa

    def pick(switch: bool, kernel: Callable, available: Callable[[], bool]) -> Callable | None:
        return kernel if switch and available() else None

    return TrainingKernels(
        pick(config.fused_mlp, fused_mlp.fused_leaky_relu_square_mlp, fused_mlp.is_available),
        pick(config.fused_qk_norm_rope, qk_norm_rope.qk_norm_rope, qk_norm_rope.qk_norm_rope_available),
        pick(config.fused_xsa, xsa.fused_remove_value_direction, xsa.xsa_available),
        pick(config.fused_softcap_ce, fused_ce.softcapped_cross_entropy, fused_ce.fused_ce_available),
    )


# ----------------------------------------------------------------------------- quantized matrices and banks


class QuantizedMatrix(NamedTuple):
    """One matrix that export quantizes: per-layer `name`, where it lives (`bank`, `index`), its group and tap.

    `bank` is a GPT attribute holding the tensor (`index` selects the slice; None for `tok_emb`), `tap` the
    qualified name of the identity module whose forward-hook input is this matrix's input.
    """

    name: str
    bank: str
    index: int | None
    group: str
    tap: str

    @property
    def state_key(self) -> str:
        """Key of this matrix in `unbank_state_dict` output."""
        return self.name if self.index is not None else f"{self.name}.weight"

    def weight(self, model: GPT) -> torch.Tensor:
        """The live matrix inside `model` (a view of its bank slice)."""
        if self.index is None:
            return model.tok_emb.weight
        return getattr(model, self.bank)[self.index]


def _bank_slots(config: GPTConfig) -> list[tuple[str, str, int, str, str]]:
    """(per-layer name, bank, index, group, tap) of every bank slice, layer by layer."""
    n = config.num_layers
    slots = []
    for i in range(n):
        attn, mlp = f"blocks.{i}.attn", f"blocks.{i}.mlp"
        slots += [
            (f"{attn}.q", "qo_bank", i, "attn", f"{attn}.qkv_tap"),
            (f"{attn}.k", "kv_bank", i, "attn", f"{attn}.qkv_tap"),
            (f"{attn}.v", "kv_bank", n + i, "attn", f"{attn}.qkv_tap"),
            (f"{attn}.o", "qo_bank", n + i, "attn", f"{attn}.out_tap"),
            (f"{mlp}.up", "mlp_up_bank", i, "mlp", f"{mlp}.up_tap"),
            (f"{mlp}.down", "mlp_down_bank", i, "mlp", f"{mlp}.down_tap"),
        ]
    return slots


BANK_NAMES = ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank")


def quantized_matrices(config: GPTConfig) -> list[QuantizedMatrix]:
    """Every quantized matrix of a model with `config`: bank slices layer by layer, then the tied embedding."""
    matrices = [QuantizedMatrix(*slot) for slot in _bank_slots(config)]
    return matrices + [QuantizedMatrix("tok_emb", "tok_emb", None, "embed", "head_tap")]


def unbank_state_dict(state_dict: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Replace each bank by its per-layer matrices (`blocks.{i}.attn.q`, ...); other entries pass through."""
    missing = [name for name in BANK_NAMES if name not in state_dict]
    if missing:
        raise ValueError(f"state dict lacks banks {missing}; pass GPT.state_dict() (not an already unbanked dict)")
    flat = {key: value for key, value in state_dict.items() if key not in BANK_NAMES}
    for name, bank, index, _, _ in _bank_slots(config):
        flat[name] = state_dict[bank][index]
    return flat


def rebank_state_dict(flat: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Inverse of `unbank_state_dict`: stack per-layer matrices back into the banks."""
    slots = _bank_slots(config)
    missing = [name for name, *_ in slots if name not in flat]
    if missing:
        raise ValueError(f"unbanked state dict lacks {len(missing)} matrices (first: {missing[0]}); was it built for this config?")
    per_bank: dict[str, dict[int, torch.Tensor]] = {name: {} for name in BANK_NAMES}
    for name, bank, index, _, _ in slots:
        per_bank[bank][index] = flat[name]
    slot_names = {name for name, *_ in slots}
    state = {key: value for key, value in flat.items() if key not in slot_names}
    for bank, pieces in per_bank.items():
        state[bank] = torch.stack([pieces[i] for i in range(len(pieces))])
    return state
