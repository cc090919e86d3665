"""Softcapped cross-entropy for training in one streaming pass over the logits (Triton).

The eager loss is `F.cross_entropy(cap * tanh(logits.float() / cap), targets)`: at the record's micro-batch
(98,304 tokens x 8,192 vocabulary) the fp32 copy, the capped logits and the softmax each cost 3.2 GB of
traffic and memory. Here one program per token reads its bf16 row once, applies the cap in registers
and keeps an online log-sum-exp (a running maximum and sum per lane, merged at the end), so forward
writes only the loss and the log-sum-exp, one fp32 number each per token. Backward reads the row again,
recomputes `t = tanh(x / cap)` and writes `(softmax - onehot) * (1 - t^2)` straight in the logits' dtype;
no fp32 `[tokens, vocab]` tensor exists in either direction.

Both directions are `torch.library` custom ops with fake implementations, so `torch.compile(fullgraph=True)`
traces through them as opaque calls. Evaluation keeps the eager expression (the model's exact path).
Triton is optional: CPU installs import this module and see `fused_ce_available() == False`. Under
`TRITON_INTERPRET=1` the same kernels also run on CPU tensors, which is how the tests check them without
a GPU.
"""

from __future__ import annotations

import torch

from lit_golf.kernels import require_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

MAX_BLOCK_V = 2048
NUM_WARPS = 8

# require_triton: what refuses here, and the path to use instead
NOT_HERE = ("fused softcapped cross-entropy", "use the eager loss where fused_ce_available() is False")


def fused_ce_available() -> bool:
    """True when the kernels can run here (Triton importable and a CUDA device visible)."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _softcap(x, softcap):
        """`(cap * tanh(x / cap), tanh(x / cap))` in fp32; tanh as 2 sigmoid(2u) - 1 (never NaN)."""
        t = 2.0 * tl.sigmoid(x * (2.0 / softcap)) - 1.0
        return softcap * t, t

    @triton.jit
    def _softcap_ce_forward_kernel(
        logits_ptr, targets_ptr, loss_ptr, lse_ptr, row_stride, vocab, softcap, BLOCK_V: tl.constexpr,
    ):
        """Per row: lse = logsumexp(z) and loss = lse - z[target] (NaN for a target outside the vocabulary)."""
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * row_stride
        # Each lane keeps sum(exp(z - lane_max)) over its columns. z >= -cap, so -cap is a safe starting
        # maximum; of exp(old max - new max) and exp(z - new max) one is 1, so one exp per element does.
        lane_max = tl.zeros([BLOCK_V], tl.float32) - softcap
        lane_sum = tl.zeros([BLOCK_V], tl.float32)
        for start in range(0, vocab, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            inside = cols < vocab
            z, _ = _softcap(tl.load(row_ptr + cols, mask=inside, other=0.0).to(tl.float32), softcap)
            delta = z - lane_max
            smaller = tl.exp(-tl.abs(delta))
            grows = delta > 0
            lane_sum = tl.where(inside, tl.where(grows, lane_sum * smaller + 1.0, lane_sum + smaller), lane_sum)
            lane_max = tl.where(inside & grows, z, lane_max)
        row_max = tl.max(lane_max, axis=0)
        lse = row_max + tl.log(tl.sum(lane_sum * tl.exp(lane_max - row_max), axis=0))
        target = tl.load(targets_ptr + row)
        valid = (target >= 0) & (target < vocab)
        target_z, _ = _softcap(tl.load(row_ptr + target, mask=valid, other=0.0).to(tl.float32), softcap)
        tl.store(lse_ptr + row, lse)
        tl.store(loss_ptr + row, tl.where(valid, lse - target_z, float("nan")))

    @triton.jit
    def _softcap_ce_backward_kernel(
        logits_ptr, targets_ptr, lse_ptr, grad_loss_ptr, grad_ptr, row_stride, vocab, softcap,
        BLOCK_V: tl.constexpr,
    ):
        """Per row: d loss / d x = grad_loss * (softmax(z) - onehot(target)) * (1 - tanh(x / cap)^2)."""
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * row_stride
        grad_row_ptr = grad_ptr + row * row_stride
        lse = tl.load(lse_ptr + row)
        grad_loss = tl.load(grad_loss_ptr + row)
        target = tl.load(targets_ptr + row)
        for start in range(0, vocab, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            inside = cols < vocab
            z, t = _softcap(tl.load(row_ptr + cols, mask=inside, other=0.0).to(tl.float32), softcap)
            grad_z = tl.exp(z - lse) - tl.where(cols == target, 1.0, 0.0)
            grad = grad_loss * grad_z * (1.0 - t * t)
            tl.store(grad_row_ptr + cols, grad.to(grad_ptr.dtype.element_ty), mask=inside)


def _block_v(vocab: int) -> int:
    return min(MAX_BLOCK_V, triton.next_power_of_2(vocab))


@torch.library.custom_op("lit_golf::softcapped_ce_forward", mutates_args=())
def _softcapped_ce_forward(
    logits: torch.Tensor, targets: torch.Tensor, softcap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss, per-token log-sum-exp of the capped logits), both fp32 `[N]`."""
    require_triton(triton, logits, *NOT_HERE)
    rows, vocab = logits.shape
    loss = torch.empty(rows, device=logits.device, dtype=torch.float32)
    lse = torch.empty_like(loss)
    if rows:
        _softcap_ce_forward_kernel[(rows,)](logits, targets, loss, lse, logits.stride(0), vocab, softcap,
                                            BLOCK_V=_block_v(vocab), num_warps=NUM_WARPS)
    return loss, lse


@_softcapped_ce_forward.register_fake
def _(logits, targets, softcap):
    loss = logits.new_empty(logits.shape[0], dtype=torch.float32)
    return loss, torch.empty_like(loss)


@torch.library.custom_op("lit_golf::softcapped_ce_backward", mutates_args=())
def _softcapped_ce_backward(
    logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, grad_loss: torch.Tensor, softcap: float
) -> torch.Tensor:
    """Gradient of the per-token losses w.r.t. the uncapped logits, in the logits' dtype."""
    require_triton(triton, logits, *NOT_HERE)
    rows, vocab = logits.shape
    grad = torch.empty_like(logits)
    if rows:
        _softcap_ce_backward_kernel[(rows,)](logits, targets, lse, grad_loss.float().contiguous(), grad,
                                             logits.stride(0), vocab, softcap, BLOCK_V=_block_v(vocab),
                                             num_warps=NUM_WARPS)
    return grad


@_softcapped_ce_backward.register_fake
def _(logits, targets, lse, grad_loss, softcap):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output) -> None:
    logits, targets, softcap = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.softcap = softcap


def _backward(ctx, grad_loss, grad_lse):
    logits, targets, lse = ctx.saved_tensors
    return _softcapped_ce_backward(logits, targets, lse, grad_loss, ctx.softcap), None, None


_softcapped_ce_forward.register_autograd(_backward, setup_context=_setup_context)


def softcapped_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> torch.Tensor:
    """Per-token fp32 loss `[N]` of `F.cross_entropy(softcap * tanh(logits.float() / softcap), targets)`.

    `logits` `[N, V]` is the head output before the cap (any float dtype; its gradient comes back in
    that dtype), `targets` `[N]` integer class indices; a target outside `[0, V)` gives a NaN loss.
    """
    if logits.ndim != 2 or targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"softcapped_cross_entropy takes logits [N, V] and targets [N], got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if not logits.is_floating_point() or targets.is_floating_point():
        raise ValueError(f"softcapped_cross_entropy takes float logits and integer targets, got "
                         f"{logits.dtype} and {targets.dtype}")
    if not softcap > 0:
        raise ValueError(f"softcapped_cross_entropy: softcap={softcap} must be > 0")
    loss, _ = _softcapped_ce_forward(logits.contiguous(), targets.long().contiguous(), float(softcap))
    return loss
