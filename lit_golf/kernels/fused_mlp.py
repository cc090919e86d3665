"""Fused MLP up-projection with LeakyReLU(0.5)^2 for CUDA training (Triton).

The MLP is `down(act(up(x)))` with `act(h) = leaky_relu(h, 0.5) ** 2`. One kernel computes the matmul
`x @ up.T` and, from the fp32 accumulator, writes both the pre-activation (kept for backward) and the
activation, so the hidden tensor is never re-read by separate elementwise kernels. In backward the same
kernel computes `grad_out @ down` and multiplies it by `act'(pre)` (`2h` for h > 0, `h/2` otherwise)
before storing, which fuses the activation derivative into the up-projection gradient. The down
projection and the weight gradients stay on cuBLAS.

The kernel is persistent (one program per SM walks the output tiles) and moves tiles with tensor
descriptors (TMA on Hopper), with 128x256 output tiles whose epilogue is written in two 128x128 halves
to keep shared memory for the pipeline stages. It runs in bf16 or fp16 only (fp32 tiles would not fit
in shared memory); `MLP` uses the eager path otherwise. On an H100 at the record shape (98,304 tokens,
512 -> 2048 -> 512) the whole MLP forward+backward takes 2.07 ms against 2.42 ms compiled eager, and
the kernel's share of a training step fell from 112 to 82 ms against a pointer-based tile kernel
(bench/NOTES.md).

FP8 (`GPTConfig.fp8_training`, recipes in `lit_golf.kernels.fp8`), not yet measured on a GPU: the same
kernel takes e4m3 operands quantized per row (`tl.dot` on fp8 runs on Hopper's FP8 tensor cores) and
multiplies the fp32 accumulator by the two rows' scales before the epilogue, so the activation stays fused
and pre/post are stored in bf16 as before; its K tile doubles to 128 (the same bytes per pipeline stage).
The down projection goes through `fp8_matmul` (`torch._scaled_mm`): quantizing `post` per row needs its
whole 2,048-wide row, wider than an output tile, so that cast is a separate pass over `post` (one kernel
with its amax under `torch.compile`). Under 'forward_dgrad' the backward's `grad_out @ down` runs in FP8 in
this kernel (still fused with act') and `grad_pre @ up` through `fp8_matmul`; weight gradients stay bf16.

Triton is imported here only; `lit_golf.model` imports this module only when CUDA is present, so CPU
installs never need Triton.
"""

from __future__ import annotations

import torch

from lit_golf.kernels.fp8 import compute_dtype, fp8_matmul, quantize_rows

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # CPU-only installs
    triton = None

BLOCK_M, BLOCK_N, BLOCK_K = 128, 256, 64  # BLOCK_K counts 16-bit elements: 128 for e4m3
NUM_WARPS = 8
STAGES_FORWARD, STAGES_BACKWARD = 4, 3  # backward also stages the pre-activation tile it reads


def is_available() -> bool:
    """True when the kernel can run here (Triton importable and a CUDA device visible)."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _epilogue_half(acc_half, out_desc, aux_desc, row, col, FORWARD: tl.constexpr):
        """Store one `[BLOCK_M, BLOCK_N/2]` half of the tile (see the kernel for what is stored)."""
        dtype = out_desc.dtype
        if FORWARD:
            out_desc.store([row, col], acc_half.to(dtype))
            leaky = tl.where(acc_half > 0, acc_half, 0.5 * acc_half)
            aux_desc.store([row, col], (leaky * leaky).to(dtype))
        else:
            pre = aux_desc.load([row, col]).to(tl.float32)
            out_desc.store([row, col], (acc_half * tl.where(pre > 0, 2.0 * pre, 0.5 * pre)).to(dtype))

    @triton.jit
    def _matmul_leaky_relu_square_kernel(
        a_desc, b_desc, out_desc, aux_desc, a_scale, b_scale, M, N, K,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        NUM_PROGRAMS: tl.constexpr, FORWARD: tl.constexpr, SCALED: tl.constexpr,
    ):
        """`acc = A @ B.T` per output tile. FORWARD: out = acc (pre-activation), aux = act(acc).
        Backward: aux holds the pre-activation; out = acc * act'(aux).
        SCALED: A and B are e4m3 codes and acc is first multiplied by `a_scale[row] * b_scale[col]`."""
        tiles_n = tl.cdiv(N, BLOCK_N)
        num_tiles = tl.cdiv(M, BLOCK_M) * tiles_n
        for tile in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS, flatten=True):
            # Consecutive tiles share the A row block, which stays in L2 while the programs sweep N.
            row = (tile // tiles_n) * BLOCK_M
            col = (tile % tiles_n) * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in range(0, K, BLOCK_K):
                acc = tl.dot(a_desc.load([row, k]), b_desc.load([col, k]).T, acc)
            if SCALED:
                rows = row + tl.arange(0, BLOCK_M)
                cols = col + tl.arange(0, BLOCK_N)
                acc *= tl.load(a_scale + rows, mask=rows < M, other=0.0)[:, None]
                acc *= tl.load(b_scale + cols, mask=cols < N, other=0.0)[None, :]
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            left, right = tl.split(halves)
            _epilogue_half(left, out_desc, aux_desc, row, col, FORWARD)
            _epilogue_half(right, out_desc, aux_desc, row, col + BLOCK_N // 2, FORWARD)


def _launch(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, aux: torch.Tensor, forward: bool, fp8: bool) -> None:
    """Run the kernel on contiguous `a [M, K]` and `b [N, K]` into contiguous `out`/`aux [M, N]`; with `fp8`,
    on their e4m3 rows (`quantize_rows`), the scales applied to the accumulator."""
    a_scale = b_scale = None
    if fp8:
        (a, a_scale), (b, b_scale) = quantize_rows(a), quantize_rows(b)
    (m, k), n = a.shape, b.shape[0]
    block_k = BLOCK_K * 2 // a.element_size()
    num_sms = torch.cuda.get_device_properties(a.device).multi_processor_count
    programs = min(num_sms, triton.cdiv(m, BLOCK_M) * triton.cdiv(n, BLOCK_N))
    half_tile = [BLOCK_M, BLOCK_N // 2]
    _matmul_leaky_relu_square_kernel[(programs,)](
        TensorDescriptor.from_tensor(a, [BLOCK_M, block_k]),
        TensorDescriptor.from_tensor(b, [BLOCK_N, block_k]),
        TensorDescriptor.from_tensor(out, half_tile),
        TensorDescriptor.from_tensor(aux, half_tile),
        a_scale, b_scale, m, n, k,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=block_k, NUM_PROGRAMS=programs, FORWARD=forward, SCALED=fp8,
        num_warps=NUM_WARPS, num_stages=STAGES_FORWARD if forward else STAGES_BACKWARD,
    )


def up_projection_with_activation(x2d: torch.Tensor, up: torch.Tensor,
                                  fp8: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre, act(pre)) for `pre = x2d @ up.T` (in FP8 with `fp8`), both `[M, hidden]` in x's dtype."""
    pre = torch.empty(x2d.shape[0], up.shape[0], device=x2d.device, dtype=x2d.dtype)
    post = torch.empty_like(pre)
    _launch(x2d, up, pre, post, forward=True, fp8=fp8)
    return pre, post


def hidden_gradient(grad_out: torch.Tensor, down: torch.Tensor, pre: torch.Tensor, fp8: bool = False) -> torch.Tensor:
    """`(grad_out @ down) * act'(pre)` (the matmul in FP8 with `fp8`): the gradient at the up-projection output."""
    grad_pre = torch.empty_like(pre)
    _launch(grad_out, down.t().contiguous(), grad_pre, pre, forward=False, fp8=fp8)
    return grad_pre


class FusedLeakyReLUSquareMLP(torch.autograd.Function):
    """`down(leaky_relu(x @ up.T, 0.5)^2)` with the fused kernel in forward and backward, under FP8 recipe
    `fp8` ('forward', 'forward_dgrad') or in x's dtype (None)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, up: torch.Tensor, down: torch.Tensor, fp8: str | None) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        pre, post = up_projection_with_activation(x2d, up, fp8 is not None)
        ctx.save_for_backward(x2d, up, down, pre, post)
        ctx.fp8_dgrad = fp8 == "forward_dgrad"
        out = post @ down.t() if fp8 is None else fp8_matmul(post, down)
        return out.view(*x.shape[:-1], down.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x2d, up, down, pre, post = ctx.saved_tensors
        grad2d = grad_output.reshape(-1, grad_output.shape[-1]).to(post.dtype).contiguous()
        grad_down = grad2d.t() @ post
        grad_pre = hidden_gradient(grad2d, down, pre, ctx.fp8_dgrad)
        grad_up = grad_pre.t() @ x2d
        grad_x = fp8_matmul(grad_pre, up.t()) if ctx.fp8_dgrad else grad_pre @ up
        return grad_x.view(*grad_output.shape[:-1], up.shape[1]), grad_up, grad_down, None


def fused_leaky_relu_square_mlp(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                                fp8: str | None = None) -> torch.Tensor:
    """MLP output for `x [..., d]`, `up [hidden, d]`, `down [d, hidden]` on CUDA, under FP8 recipe `fp8` or None.

    Everything runs in one dtype: the autocast dtype when autocast is on (as cuBLAS matmuls would),
    else x's. Mixed dtypes would reach `tl.dot` in backward, where autocast no longer applies.
    """
    dtype = compute_dtype(x)
    return FusedLeakyReLUSquareMLP.apply(x.to(dtype), up.to(dtype).contiguous(), down.to(dtype).contiguous(), fp8)
