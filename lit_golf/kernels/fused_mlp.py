"""Fused MLP up-projection with LeakyReLU(0.5)^2 for CUDA training (Triton).

The MLP is `down(act(up(x)))` with `act(h) = leaky_relu(h, 0.5) ** 2`. One kernel computes the matmul
`x @ up.T` and, from the fp32 accumulator, writes both the pre-activation (kept for backward) and the
activation, so the hidden tensor is never re-read by separate elementwise kernels. In backward the same
kernel computes `grad_out @ down` and multiplies it by `act'(pre)` (`2h` for h > 0, `h/2` otherwise)
before storing, which fuses the activation derivative into the up-projection gradient. The down
projection and the weight gradients stay on cuBLAS.

Triton is imported here only; `lit_golf.model` imports this module only when CUDA is present, so CPU
installs never need Triton.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M = 128, 128, 64, 8
NUM_WARPS, NUM_STAGES = 8, 3


def is_available() -> bool:
    """True when the kernel can run here (Triton importable and a CUDA device visible)."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _matmul_leaky_relu_square_kernel(
        a_ptr, b_ptr, out_ptr, aux_ptr,
        M, N, K,
        stride_am, stride_ak, stride_bn, stride_bk, stride_om, stride_on,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        FORWARD: tl.constexpr,
    ):
        """`acc = A @ B.T` per tile. FORWARD: out = acc (pre-activation), aux = act(acc).
        Backward: aux holds the pre-activation; out = acc * act'(aux)."""
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        # Walk tiles in column groups of GROUP_M rows so neighbouring programs share B tiles in L2.
        tiles_per_group = GROUP_M * tiles_n
        first_m = (pid // tiles_per_group) * GROUP_M
        rows_in_group = min(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % tiles_per_group) % rows_in_group
        pid_n = (pid % tiles_per_group) // rows_in_group

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
        row_ok = offs_m[:, None] < M
        col_ok = offs_n[None, :] < N

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k_start in range(0, K, BLOCK_K):
            k_ok = offs_k < K - k_start
            a = tl.load(a_ptrs, mask=row_ok & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok, other=0.0)
            acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk

        tile = offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        in_bounds = row_ok & col_ok
        dtype = out_ptr.dtype.element_ty
        if FORWARD:
            tl.store(out_ptr + tile, acc.to(dtype), mask=in_bounds)
            leaky = tl.where(acc > 0, acc, 0.5 * acc)
            tl.store(aux_ptr + tile, (leaky * leaky).to(dtype), mask=in_bounds)
        else:
            pre = tl.load(aux_ptr + tile, mask=in_bounds, other=0.0).to(tl.float32)
            slope = tl.where(pre > 0, 2.0 * pre, 0.5 * pre)
            tl.store(out_ptr + tile, (acc * slope).to(dtype), mask=in_bounds)


def _launch(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, aux: torch.Tensor, forward: bool) -> None:
    """Run the kernel on `a [M, K]` and `b [N, K]` (any strides) into contiguous `out`/`aux [M, N]`."""
    (m, k), n = a.shape, b.shape[0]
    grid = (triton.cdiv(m, BLOCK_M) * triton.cdiv(n, BLOCK_N),)
    _matmul_leaky_relu_square_kernel[grid](
        a, b, out, aux, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GROUP_M=GROUP_M, FORWARD=forward,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )


def up_projection_with_activation(x2d: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre, act(pre)) for `pre = x2d @ up.T`, both `[M, hidden]` in x's dtype."""
    pre = torch.empty(x2d.shape[0], up.shape[0], device=x2d.device, dtype=x2d.dtype)
    post = torch.empty_like(pre)
    _launch(x2d, up, pre, post, forward=True)
    return pre, post


def hidden_gradient(grad_out: torch.Tensor, down: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """`(grad_out @ down) * act'(pre)`: the gradient at the up-projection output."""
    grad_pre = torch.empty_like(pre)
    _launch(grad_out, down.t(), grad_pre, pre, forward=False)
    return grad_pre


class FusedLeakyReLUSquareMLP(torch.autograd.Function):
    """`down(leaky_relu(x @ up.T, 0.5)^2)` with the fused kernel in forward and backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        pre, post = up_projection_with_activation(x2d, up)
        ctx.save_for_backward(x2d, up, down, pre, post)
        return (post @ down.t()).view(*x.shape[:-1], down.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x2d, up, down, pre, post = ctx.saved_tensors
        grad2d = grad_output.reshape(-1, grad_output.shape[-1]).to(post.dtype).contiguous()
        grad_down = grad2d.t() @ post
        grad_pre = hidden_gradient(grad2d, down, pre)
        grad_up = grad_pre.t() @ x2d
        grad_x = (grad_pre @ up).view(*grad_output.shape[:-1], up.shape[1])
        return grad_x, grad_up, grad_down


def fused_leaky_relu_square_mlp(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """MLP output for `x [..., d]`, `up [hidden, d]`, `down [d, hidden]` on CUDA.

    Everything runs in one dtype: the autocast dtype when autocast is on (as cuBLAS matmuls would),
    else x's. Mixed dtypes would reach `tl.dot` in backward, where autocast no longer applies.
    """
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    return FusedLeakyReLUSquareMLP.apply(x.to(dtype), up.to(dtype).contiguous(), down.to(dtype).contiguous())
