"""q/k head RMS-norm, partial rotary embedding and per-head gain in one pass each way (Triton).

The eager attention input is `rms_norm(x)` per head, then `apply_rotary` on its first `rope_dims` dims, then
(for q) a per-head gain. Inductor fuses that chain, but its q kernel ran at ~3x its memory-bound time on an
H100 (175 us a call for ~200 MB, the k kernel at ~52 us; `bench/NOTES.md`, 2026-12-07, twelfth session), and
the backward is a second such kernel. Here one program normalizes a block of head rows in registers: it
loads each row and, for the rotated dims, the row's partner dims (`d +- rope_dims/2`, same cache lines), and
writes the result once; the backward recomputes the normalized row from the input and its saved `rstd` and
writes the input's gradient once, plus one fp32 number per row for the gain's gradient (summed per head after).

The math is the eager one in fp32 with the eager's tables (cos/sin in the activation dtype), so outputs agree
to the final rounding. Both directions are `torch.library` custom ops with fake implementations, opaque to
`torch.compile(fullgraph=True)`; Triton is optional (`qk_norm_rope_available()`), and under
`TRITON_INTERPRET=1` the kernels run on CPU tensors, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import torch

from lit_golf.kernels import require_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

BLOCK_ROWS = 32
NUM_WARPS = 4
EPS = torch.finfo(torch.float32).eps  # F.rms_norm's default for the fp32 input autocast gives it

# require_triton: what refuses here, and the path to use instead
NOT_HERE = ("the fused q/k norm + rotary kernel",
            "use the eager path where qk_norm_rope_available() is False")


def qk_norm_rope_available() -> bool:
    """True when the kernels can run here (Triton importable and a CUDA device visible)."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _block(rows, heads, seq_len, cos_ptr, sin_ptr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               HALF: tl.constexpr, BLOCK_R: tl.constexpr):
        """This program's rows, which of them exist, the mask and offsets of their columns and of each column's
        rotation partner (`d +- HALF`; itself past `2 * HALF`), and the cos / signed sin of each (1 / 0 unrotated).

        Rows are (token, head) pairs of a contiguous `[tokens, heads, HEAD_DIM]` tensor; token t sits at position
        t % seq_len of its row of the batch."""
        row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_D)
        live = row < rows
        inside = live[:, None] & (cols < HEAD_DIM)[None, :]
        first = cols < HALF
        rotated = cols < 2 * HALF
        partner = tl.where(first, cols + HALF, tl.where(rotated, cols - HALF, cols))
        table = ((row // heads) % seq_len)[:, None] * HALF + tl.where(first, cols, cols - HALF)[None, :]
        on_table = live[:, None] & rotated[None, :]
        cos = tl.load(cos_ptr + table, mask=on_table, other=1.0).to(tl.float32)
        sin = tl.load(sin_ptr + table, mask=on_table, other=0.0).to(tl.float32)
        sin = tl.where(first[None, :], sin, -sin)
        base = row[:, None] * HEAD_DIM
        return row, live, inside, base + cols[None, :], base + partner[None, :], cos, sin

    @triton.jit
    def _qk_norm_rope_forward_kernel(x_ptr, cos_ptr, sin_ptr, gain_ptr, y_ptr, rstd_ptr, rows, heads, seq_len, eps,
                                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HALF: tl.constexpr,
                                     HAS_GAIN: tl.constexpr, BLOCK_R: tl.constexpr):
        row, live, inside, offsets, partners, cos, sin = _block(rows, heads, seq_len, cos_ptr, sin_ptr, HEAD_DIM,
                                                                BLOCK_D, HALF, BLOCK_R)
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        x_partner = tl.load(x_ptr + partners, mask=inside, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)
        y = (x * cos + x_partner * sin) * rstd[:, None]
        if HAS_GAIN:
            y = y * tl.load(gain_ptr + row % heads, mask=live, other=1.0)[:, None]
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=inside)
        tl.store(rstd_ptr + row, rstd, mask=live)

    @triton.jit
    def _qk_norm_rope_backward_kernel(grad_y_ptr, x_ptr, rstd_ptr, cos_ptr, sin_ptr, gain_ptr, grad_x_ptr,
                                      grad_gain_ptr, rows, heads, seq_len, HEAD_DIM: tl.constexpr,
                                      BLOCK_D: tl.constexpr, HALF: tl.constexpr, HAS_GAIN: tl.constexpr,
                                      BLOCK_R: tl.constexpr):
        """d x = rstd * (d n - n * mean(d n * n)), d n = R^T (gain * d y); per row sum(d y * R n) for the gain."""
        row, live, inside, offsets, partners, cos, sin = _block(rows, heads, seq_len, cos_ptr, sin_ptr, HEAD_DIM,
                                                                BLOCK_D, HALF, BLOCK_R)
        rstd = tl.load(rstd_ptr + row, mask=live, other=0.0)
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        grad = tl.load(grad_y_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        grad_partner = tl.load(grad_y_ptr + partners, mask=inside, other=0.0).to(tl.float32)
        if HAS_GAIN:
            x_partner = tl.load(x_ptr + partners, mask=inside, other=0.0).to(tl.float32)
            rotated = (x * cos + x_partner * sin) * rstd[:, None]
            tl.store(grad_gain_ptr + row, tl.sum(grad * rotated, axis=1), mask=live)
            gain = tl.load(gain_ptr + row % heads, mask=live, other=1.0)[:, None]
            grad, grad_partner = grad * gain, grad_partner * gain
        # R^T: the partner's own sin has the opposite sign, hence the minus
        grad_n = grad * cos - grad_partner * sin
        n = x * rstd[:, None]
        grad_x = rstd[:, None] * (grad_n - n * (tl.sum(grad_n * n, axis=1) / HEAD_DIM)[:, None])
        tl.store(grad_x_ptr + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=inside)


def _launch_shape(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(rows, heads, block of columns, grid) of a `[batch, seq, heads, head_dim]` input."""
    rows = x.numel() // x.size(-1)
    return rows, x.size(2), triton.next_power_of_2(x.size(-1)), triton.cdiv(rows, BLOCK_ROWS)


@torch.library.custom_op("lit_golf::qk_norm_rope_forward", mutates_args=())
def _qk_norm_rope_forward(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, gain: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output in x's dtype, fp32 rstd per (token, head))."""
    require_triton(triton, x, *NOT_HERE)
    y = torch.empty_like(x)
    rstd = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    rows, heads, block_d, grid = _launch_shape(x)
    if rows:
        _qk_norm_rope_forward_kernel[(grid,)](x, cos, sin, gain if gain is not None else rstd, y, rstd, rows, heads,
                                              x.size(1), EPS, HEAD_DIM=x.size(-1), BLOCK_D=block_d, HALF=cos.size(-1),
                                              HAS_GAIN=gain is not None, BLOCK_R=BLOCK_ROWS, num_warps=NUM_WARPS)
    return y, rstd


@_qk_norm_rope_forward.register_fake
def _(x, cos, sin, gain):
    return torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("lit_golf::qk_norm_rope_backward", mutates_args=())
def _qk_norm_rope_backward(
    grad_y: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    gain: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient of x in x's dtype, fp32 per-row sum of d y * rotated n: the gain's gradient before the head sum)."""
    require_triton(triton, x, *NOT_HERE)
    grad_x = torch.empty_like(x)
    grad_gain_rows = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)  # every row written (with a gain)
    rows, heads, block_d, grid = _launch_shape(x)
    if rows:
        _qk_norm_rope_backward_kernel[(grid,)](grad_y.contiguous(), x, rstd, cos, sin,
                                               gain if gain is not None else rstd, grad_x, grad_gain_rows, rows, heads,
                                               x.size(1), HEAD_DIM=x.size(-1), BLOCK_D=block_d, HALF=cos.size(-1),
                                               HAS_GAIN=gain is not None, BLOCK_R=BLOCK_ROWS, num_warps=NUM_WARPS)
    return grad_x, grad_gain_rows


@_qk_norm_rope_backward.register_fake
def _(grad_y, x, rstd, cos, sin, gain):
    return torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    x, cos, sin, gain = inputs
    ctx.save_for_backward(x, output[1], cos, sin, gain)


def _backward(ctx, grad_y, grad_rstd):
    x, rstd, cos, sin, gain = ctx.saved_tensors
    grad_x, grad_gain_rows = _qk_norm_rope_backward(grad_y, x, rstd, cos, sin, gain)
    grad_gain = None if gain is None else grad_gain_rows.flatten(0, 1).sum(0).to(gain.dtype)
    return grad_x, None, None, grad_gain


_qk_norm_rope_forward.register_autograd(_backward, setup_context=_setup_context)


def qk_norm_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, gain: torch.Tensor | None = None
) -> torch.Tensor:
    """`apply_rotary(rms_norm(x), cos, sin) * gain[:, None]` in x's dtype, computed in fp32.

    `x` `[batch, seq, heads, head_dim]`; `cos`/`sin` `[1, seq, 1, rope_dims/2]` (the model's tables, any float
    dtype); `gain` `[heads]` or None. The gradient flows to `x` and `gain`, not to the tables.
    """
    if x.ndim != 4 or cos.shape != sin.shape or cos.ndim != 4 or cos.size(1) != x.size(1):
        raise ValueError(f"qk_norm_rope takes x [batch, seq, heads, head_dim] and cos/sin [1, seq, 1, rope_dims/2], "
                         f"got {tuple(x.shape)}, {tuple(cos.shape)}, {tuple(sin.shape)}")
    if 2 * cos.size(-1) > x.size(-1):
        raise ValueError(f"qk_norm_rope: rope_dims {2 * cos.size(-1)} exceed head_dim {x.size(-1)}")
    if gain is not None and gain.shape != (x.size(2),):
        raise ValueError(f"qk_norm_rope: gain must be [heads] = [{x.size(2)}], got {tuple(gain.shape)}")
    y, _ = _qk_norm_rope_forward(x.contiguous(), cos.reshape(cos.size(1), -1).contiguous(),
                                 sin.reshape(sin.size(1), -1).contiguous(), gain)
    return y
