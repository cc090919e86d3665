"""XSA (each head's attention output minus its component along its KV head's value direction) in one pass each
way (Triton).

The eager `model.remove_value_direction` normalizes v, takes a dot product per head, and subtracts; Inductor
spreads that over several kernels a direction (forward and backward together ~34 ms of the record's 705-ms FA4
step on an H100, `bench/NOTES.md`, 2026-12-07, twelfth session), each re-reading the `[tokens, heads, 64]`
tensors. Here one program takes a block of (token, KV head) rows with the `group` query heads that share each:
the forward reads y and v once and writes the output once; the backward reads the output's gradient, y and v once
and writes the gradients of y and v once (the value's gradient summed over the group in registers).

All arithmetic is fp32 (the eager chain runs in the activation dtype), so outputs agree with the eager one to
its bf16 roundings. Both directions are `torch.library` custom ops with fake implementations, opaque to
`torch.compile(fullgraph=True)`; Triton is optional (`xsa_available()`), and under `TRITON_INTERPRET=1` the
kernels run on CPU tensors, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import torch

from lit_golf.kernels import require_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

BLOCK_ROWS = 16
NUM_WARPS = 4
NORM_EPS = 1e-12  # F.normalize's default

# require_triton: what refuses here, and the path to use instead
NOT_HERE = ("the fused XSA kernel", "use model.remove_value_direction where xsa_available() is False")


def xsa_available() -> bool:
    """True when the kernels can run here (Triton importable and a CUDA device visible)."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _tiles(rows, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
        """Offsets and masks of a block of rows: y-like `[BLOCK_R, GROUP, BLOCK_D]`, v-like `[BLOCK_R, BLOCK_D]`."""
        row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        group = tl.arange(0, GROUP)
        cols = tl.arange(0, BLOCK_D)
        live = row < rows
        v_offsets = row[:, None] * HEAD_DIM + cols[None, :]
        v_mask = live[:, None] & (cols < HEAD_DIM)[None, :]
        y_offsets = (row[:, None, None] * GROUP + group[None, :, None]) * HEAD_DIM + cols[None, None, :]
        y_mask = v_mask[:, None, :] & (group < GROUP)[None, :, None]
        return v_offsets, v_mask, y_offsets, y_mask

    @triton.jit
    def _direction(v, eps):
        """(v / max(|v|, eps), 1 / max(|v|, eps), whether |v| > eps) per row."""
        norm = tl.sqrt(tl.sum(v * v, axis=1))
        inv = 1.0 / tl.maximum(norm, eps)
        return v * inv[:, None], inv, norm > eps

    @triton.jit
    def _xsa_forward_kernel(y_ptr, v_ptr, out_ptr, rows, eps, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
        v_offsets, v_mask, y_offsets, y_mask = _tiles(rows, GROUP, HEAD_DIM, BLOCK_D, BLOCK_R)
        direction, _, _ = _direction(tl.load(v_ptr + v_offsets, mask=v_mask, other=0.0).to(tl.float32), eps)
        y = tl.load(y_ptr + y_offsets, mask=y_mask, other=0.0).to(tl.float32)
        dot = tl.sum(y * direction[:, None, :], axis=2)
        out = y - dot[:, :, None] * direction[:, None, :]
        tl.store(out_ptr + y_offsets, out.to(out_ptr.dtype.element_ty), mask=y_mask)

    @triton.jit
    def _xsa_backward_kernel(grad_out_ptr, y_ptr, v_ptr, grad_y_ptr, grad_v_ptr, rows, eps, GROUP: tl.constexpr,
                             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
        """out = (I - u u^T) y per head, u = v / |v|: d y = (I - u u^T) g; d u = -sum over the group of
        (u.y) g + (u.g) y; d v = (d u - u (u . d u)) / |v| (d u / eps where |v| <= eps, as F.normalize clamps)."""
        v_offsets, v_mask, y_offsets, y_mask = _tiles(rows, GROUP, HEAD_DIM, BLOCK_D, BLOCK_R)
        direction, inv, unclamped = _direction(tl.load(v_ptr + v_offsets, mask=v_mask, other=0.0).to(tl.float32), eps)
        y = tl.load(y_ptr + y_offsets, mask=y_mask, other=0.0).to(tl.float32)
        grad = tl.load(grad_out_ptr + y_offsets, mask=y_mask, other=0.0).to(tl.float32)
        dot_y = tl.sum(y * direction[:, None, :], axis=2)
        dot_grad = tl.sum(grad * direction[:, None, :], axis=2)
        grad_y = grad - dot_grad[:, :, None] * direction[:, None, :]
        grad_direction = -tl.sum(dot_y[:, :, None] * grad + dot_grad[:, :, None] * y, axis=1)
        along = tl.where(unclamped, tl.sum(grad_direction * direction, axis=1), 0.0)
        grad_v = (grad_direction - along[:, None] * direction) * inv[:, None]
        tl.store(grad_y_ptr + y_offsets, grad_y.to(grad_y_ptr.dtype.element_ty), mask=y_mask)
        tl.store(grad_v_ptr + v_offsets, grad_v.to(grad_v_ptr.dtype.element_ty), mask=v_mask)


def _launch(v: torch.Tensor) -> tuple[int, int, int]:
    """(rows: (token, KV head) pairs, block of columns, grid) of a `[batch, seq, kv_heads, head_dim]` value."""
    rows = v.numel() // v.size(-1)
    return rows, triton.next_power_of_2(v.size(-1)), triton.cdiv(rows, BLOCK_ROWS)


@torch.library.custom_op("lit_golf::xsa_forward", mutates_args=())
def _xsa_forward(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    require_triton(triton, y, *NOT_HERE)
    out = torch.empty_like(y)
    rows, block_d, grid = _launch(v)
    if rows:
        _xsa_forward_kernel[(grid,)](y, v, out, rows, NORM_EPS, GROUP=y.size(2) // v.size(2), HEAD_DIM=v.size(-1),
                                     BLOCK_D=block_d, BLOCK_R=BLOCK_ROWS, num_warps=NUM_WARPS)
    return out


@_xsa_forward.register_fake
def _(y, v):
    return torch.empty_like(y)


@torch.library.custom_op("lit_golf::xsa_backward", mutates_args=())
def _xsa_backward(grad_out: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    require_triton(triton, y, *NOT_HERE)
    grad_y, grad_v = torch.empty_like(y), torch.empty_like(v)
    rows, block_d, grid = _launch(v)
    if rows:
        _xsa_backward_kernel[(grid,)](grad_out.contiguous(), y, v, grad_y, grad_v, rows, NORM_EPS,
                                      GROUP=y.size(2) // v.size(2), HEAD_DIM=v.size(-1), BLOCK_D=block_d,
                                      BLOCK_R=BLOCK_ROWS, num_warps=NUM_WARPS)
    return grad_y, grad_v


@_xsa_backward.register_fake
def _(grad_out, y, v):
    return torch.empty_like(y), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out):
    return _xsa_backward(grad_out, *ctx.saved_tensors)


_xsa_forward.register_autograd(_backward, setup_context=_setup_context)


def fused_remove_value_direction(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`model.remove_value_direction(y, v)` through the kernels: y `[batch, seq, heads, head_dim]`, v
    `[batch, seq, kv_heads, head_dim]`, heads a power-of-two multiple of kv_heads; the result in y's dtype."""
    if y.ndim != 4 or v.ndim != 4 or y.shape[:2] != v.shape[:2] or y.size(-1) != v.size(-1):
        raise ValueError(f"fused_remove_value_direction takes y [batch, seq, heads, head_dim] and v [batch, seq, "
                         f"kv_heads, head_dim], got {tuple(y.shape)} and {tuple(v.shape)}")
    group = y.size(2) // v.size(2)
    if y.size(2) % v.size(2) or group & (group - 1):
        raise ValueError(f"fused_remove_value_direction: heads {y.size(2)} must be a power-of-two multiple of "
                         f"kv_heads {v.size(2)}")
    return _xsa_forward(y.contiguous(), v.contiguous())
