"""Causal, document-masked attention behind one call, with the kernel chosen once.

Every backend computes the same function: `q [B, T, H, D]`, `k`/`v [B, T, Hkv, D]` (grouped-query,
query head `h` reads KV head `h // (H // Hkv)`) -> `[B, T, H, D]`, softmax scale `1/sqrt(D)`.
With `cu_seqlens` (int32 boundaries of the packed documents, `B == 1`, padded at the end with `T`)
a query sees only earlier keys of its own document; without it every row is one causal sequence.

Backends, fastest first:

| name           | kernel                                              | devices |
| -------------- | --------------------------------------------------- | ------- |
| `fa3`          | FlashAttention 3 (`flash_attn_interface`, Hopper)   | CUDA    |
| `fa4`          | FlashAttention 4 (`flash_attn.cute`, CuTe DSL)      | CUDA    |
| `torch_varlen` | `torch.nn.attention.varlen.varlen_attn`             | CUDA    |
| `sdpa`         | `F.scaled_dot_product_attention` (+ block mask)     | any     |
| `pure`         | explicit fp32 masked softmax (semantic reference)   | any     |

`"auto"` takes the first CUDA backend that imports on a CUDA device and `sdpa` elsewhere. A CUDA-only
backend handed CPU tensors falls back to `sdpa`, so a model built on a GPU box still runs on CPU.
The choice depends only on static facts (device, installed packages), never on tensor values, so the
call compiles with `torch.compile(fullgraph=True)`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger("lit_golf")

AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", int], torch.Tensor]

BACKEND_ORDER = ("fa3", "fa4", "torch_varlen", "sdpa", "pure")
CUDA_ONLY = frozenset({"fa3", "fa4", "torch_varlen"})


class AttentionBackendError(ValueError):
    """An attention backend was requested that cannot run here."""


# ----------------------------------------------------------------------------- masks and layouts


def document_ids(cu_seqlens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Index of the packed document each position belongs to (trailing padding of `cu_seqlens` is harmless)."""
    positions = torch.arange(seq_len, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens, positions, right=True)


def causal_mask(seq_len: int, device: torch.device, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean `[T, T]` mask, True where query row may attend key column (same document, not in the future)."""
    positions = torch.arange(seq_len, device=device)
    allowed = positions[:, None] >= positions[None, :]
    if cu_seqlens is not None:
        doc = document_ids(cu_seqlens.to(device), seq_len)
        allowed = allowed & (doc[:, None] == doc[None, :])
    return allowed


def _check_packed(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> None:
    if cu_seqlens is not None and q.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs a single packed row (batch 1), got batch {q.shape[0]}; pack rows first")


def _first(output):
    """Some flash-attention releases return `(out, lse)`; keep the output only."""
    return output[0] if isinstance(output, tuple) else output


def _dense_cu_seqlens(batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, (batch + 1) * seq_len, seq_len, device=device, dtype=torch.int32)


# ----------------------------------------------------------------------------- portable backends


def _pure(q, k, v, cu_seqlens, max_seqlen):
    _check_packed(q, cu_seqlens)
    groups = q.shape[2] // k.shape[2]
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    kf, vf = kf.repeat_interleave(groups, dim=1), vf.repeat_interleave(groups, dim=1)
    scores = (qf @ kf.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~causal_mask(q.shape[1], q.device, cu_seqlens), float("-inf"))
    return (scores.softmax(dim=-1) @ vf).transpose(1, 2).to(q.dtype)


def _sdpa(q, k, v, cu_seqlens, max_seqlen):
    _check_packed(q, cu_seqlens)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    gqa = q.shape[2] != k.shape[2]
    if cu_seqlens is None:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
    else:
        mask = causal_mask(q.shape[1], q.device, cu_seqlens)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=gqa)
    return out.transpose(1, 2)


# ----------------------------------------------------------------------------- CUDA backends


def _make_fa3() -> AttentionKernel:
    """FA3's calling convention: `[T, H, D]` varlen, `[B, T, H, D]` dense, native GQA; its package
    registers torch ops, so it traces under `torch.compile` as is."""
    module = importlib.import_module("flash_attn_interface")
    varlen_fn, dense_fn = module.flash_attn_varlen_func, module.flash_attn_func

    def kernel(q, k, v, cu_seqlens, max_seqlen):
        if cu_seqlens is None:
            return _first(dense_fn(q, k, v, causal=True))
        _check_packed(q, cu_seqlens)
        max_len = max_seqlen or q.shape[1]
        out = varlen_fn(
            q[0], k[0], v[0],
            cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
            max_seqlen_q=max_len, max_seqlen_k=max_len, causal=True,
        )
        return _first(out)[None]

    return kernel


def _make_torch_varlen() -> AttentionKernel:
    """`varlen_attn` changed keywords across releases; pick the causal switch and GQA support once."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal_kwargs = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal_kwargs = {"is_causal": True}
    else:
        raise AttentionBackendError("torch.nn.attention.varlen.varlen_attn has neither window_size nor is_causal")
    native_gqa = "enable_gqa" in params

    def kernel(q, k, v, cu_seqlens, max_seqlen):
        batch, seq_len, heads, head_dim = q.shape
        if cu_seqlens is None:
            cu_seqlens, max_seqlen = _dense_cu_seqlens(batch, seq_len, q.device), seq_len
        else:
            _check_packed(q, cu_seqlens)
        groups = heads // k.shape[2]
        kwargs = dict(causal_kwargs)
        if groups > 1 and native_gqa:
            kwargs["enable_gqa"] = True
        elif groups > 1:
            k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
        max_len = max_seqlen or seq_len
        flat = [t.reshape(batch * seq_len, t.shape[2], head_dim) for t in (q, k, v)]
        out = varlen_attn(*flat, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)
        return _first(out).reshape(batch, seq_len, heads, head_dim)

    return kernel


VarlenForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
VarlenBackward = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def varlen_custom_op_kernel(name: str, forward: VarlenForward, backward: VarlenBackward) -> AttentionKernel:
    """A causal varlen kernel given as Python functions, registered as `torch.library` custom ops.

    `forward(q, k, v, cu_seqlens, max_seqlen)` takes `[T, H, D]` / `[T, Hkv, D]` and returns the output
    and the fp32 log-sum-exp `[H, T]`; `backward(grad, q, k, v, out, lse, cu_seqlens, max_seqlen)`
    returns `(dq, dk, dv)`. Kernels that JIT-compile from Python (FA4's CuTe DSL) cannot be traced by
    dynamo; as opaque ops with fake implementations they compile with `fullgraph=True` like the others.
    Dense rows (no `cu_seqlens`: test-time training) run as one packed row of equal-length documents,
    so they compile too. A name can be registered once per process (`lit_golf::{name}_varlen_fwd` / `_bwd`).
    """

    @torch.library.custom_op(f"lit_golf::{name}_varlen_fwd", mutates_args=())
    def varlen_fwd(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return forward(q, k, v, cu_seqlens, max_seqlen)

    @varlen_fwd.register_fake
    def _(q, k, v, cu_seqlens, max_seqlen):
        return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)

    @torch.library.custom_op(f"lit_golf::{name}_varlen_bwd", mutates_args=())
    def varlen_bwd(
        grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
        lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(backward(grad.contiguous(), q, k, v, out, lse, cu_seqlens, max_seqlen))

    @varlen_bwd.register_fake
    def _(grad, q, k, v, out, lse, cu_seqlens, max_seqlen):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, cu_seqlens, max_seqlen = inputs
        ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)
        ctx.max_seqlen = max_seqlen

    def backward_rule(ctx, grad_out, grad_lse):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        return *varlen_bwd(grad_out, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen), None, None

    varlen_fwd.register_autograd(backward_rule, setup_context=setup_context)

    def kernel(q, k, v, cu_seqlens, max_seqlen):
        batch, seq_len = q.shape[:2]
        if cu_seqlens is None:
            cu_seqlens, max_seqlen = _dense_cu_seqlens(batch, seq_len, q.device), seq_len
        else:
            _check_packed(q, cu_seqlens)
        q, k, v = (t.reshape(batch * seq_len, *t.shape[2:]) for t in (q, k, v))
        out, _ = varlen_fwd(q, k, v, cu_seqlens, max_seqlen or seq_len)
        return out.view(batch, seq_len, *out.shape[1:])

    return kernel


@functools.cache
def _make_fa4() -> AttentionKernel:
    """FA4 (CuTe DSL) through its internal forward/backward, which expose the LSE the backward needs.
    Cached: one registration."""
    interface = importlib.import_module("flash_attn.cute.interface")

    def forward(q, k, v, cu_seqlens, max_seqlen):
        out, lse, *_ = interface._flash_attn_fwd(
            q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
            max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen, causal=True, return_lse=True,
        )
        return out, lse

    def backward(grad, q, k, v, out, lse, cu_seqlens, max_seqlen):
        return interface._flash_attn_bwd(
            q, k, v, out, grad, lse, causal=True, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
            max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen,
        )

    return varlen_custom_op_kernel("fa4", forward, backward)


_FACTORIES: dict[str, Callable[[], AttentionKernel]] = {
    "fa3": _make_fa3,
    "fa4": _make_fa4,
    "torch_varlen": _make_torch_varlen,
    "sdpa": lambda: _sdpa,
    "pure": lambda: _pure,
}


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class AttentionBackend:
    """A chosen kernel; CUDA-only kernels hand non-CUDA tensors to `sdpa` (a static, compile-time branch)."""

    name: str
    kernel: AttentionKernel
    cuda_only: bool

    def __call__(self, q, k, v, *, cu_seqlens: torch.Tensor | None = None, max_seqlen: int = 0) -> torch.Tensor:
        if self.cuda_only and not q.is_cuda:
            return _sdpa(q, k, v, cu_seqlens, max_seqlen)
        return self.kernel(q, k, v, cu_seqlens, max_seqlen)


def _try_build(name: str, device_type: str) -> tuple[AttentionKernel | None, str]:
    """Build one backend's kernel, or explain in a few words why it cannot run on `device_type`."""
    if name in CUDA_ONLY and device_type != "cuda":
        return None, "needs CUDA"
    try:
        return _FACTORIES[name](), ""
    except (ImportError, AttributeError, AttentionBackendError) as err:
        return None, f"{type(err).__name__}: {err}".splitlines()[0]


def _resolve_device(device: torch.device | str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run on `device` (default: CUDA when present, else CPU), fastest first."""
    device_type = _resolve_device(device)
    return [name for name in BACKEND_ORDER if _try_build(name, device_type)[0] is not None]


def select_backend(name: str = "auto", device: torch.device | str | None = None) -> AttentionBackend:
    """Choose the attention kernel once (at model construction) and log the choice.

    `device` is where the model will run; by default CUDA when one is visible, else CPU.
    """
    device_type = _resolve_device(device)
    if name == "auto":
        candidates = [n for n in BACKEND_ORDER if n != "pure"] if device_type == "cuda" else ["sdpa"]
    elif name in _FACTORIES:
        candidates = [name]
    else:
        raise AttentionBackendError(f"unknown attention backend {name!r}; choose 'auto' or one of {list(BACKEND_ORDER)}")
    reasons = {}
    for candidate in candidates:
        kernel, reasons[candidate] = _try_build(candidate, device_type)
        if kernel is not None:
            log.info("attention backend: %s (requested %r, device %s)", candidate, name, device_type)
            return AttentionBackend(candidate, kernel, candidate in CUDA_ONLY)
    raise AttentionBackendError(
        f"attention backend {name!r} is unavailable on {device_type} ({reasons.get(name, reasons)}); "
        f"available here: {available_backends(device_type)}"
    )


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int = 0,
    backend: AttentionBackend | str | None = None,
) -> torch.Tensor:
    """Causal (optionally document-masked) GQA attention; `backend` defaults to `"auto"` for `q`'s device."""
    if not isinstance(backend, AttentionBackend):
        backend = _cached_backend(backend or "auto", q.device.type)
    return backend(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)


_BACKEND_CACHE: dict[tuple[str, str], AttentionBackend] = {}


def _cached_backend(name: str, device_type: str) -> AttentionBackend:
    key = (name, device_type)
    if key not in _BACKEND_CACHE:
        _BACKEND_CACHE[key] = select_backend(name, device_type)
    return _BACKEND_CACHE[key]
