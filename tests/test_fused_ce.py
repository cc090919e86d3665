"""Fused softcapped cross-entropy: loss and gradient equal the eager expression, on CPU through Triton's
interpreter (a subprocess: TRITON_INTERPRET is read at import) and on CUDA at the record's sizes."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F

from lit_golf.kernels.fused_ce import fused_ce_available, softcapped_cross_entropy
from tests.kernel_checks import interpreter_only, run_interpreted

SOFTCAP = 30.0
needs_cuda = pytest.mark.skipif(not fused_ce_available(), reason="fused cross-entropy needs CUDA and Triton")


def eager_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(SOFTCAP * torch.tanh(logits.float() / SOFTCAP), targets, reduction="none")


def fused_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return softcapped_cross_entropy(logits, targets, SOFTCAP)


INTERPRETED_CHECK = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from lit_golf.kernels.fused_ce import softcapped_cross_entropy
    gen = torch.Generator().manual_seed(0)
    # 512: one partial block; 2100: two blocks of 2048, the second almost empty
    for vocab, dtype in ((512, torch.float32), (512, torch.bfloat16), (2100, torch.float32)):
        logits = (40 * torch.randn(24, vocab, generator=gen)).to(dtype).requires_grad_()
        targets = torch.randint(0, vocab, (24,), generator=gen)
        weights = torch.rand(24, generator=gen)
        fused = softcapped_cross_entropy(logits, targets, 30.0)
        eager = F.cross_entropy(30.0 * torch.tanh(logits.float() / 30.0), targets, reduction="none")
        (fused_grad,) = torch.autograd.grad(fused, logits, weights)
        (eager_grad,) = torch.autograd.grad(eager, logits, weights)
        assert fused.dtype == torch.float32 and fused_grad.dtype == dtype, (fused.dtype, fused_grad.dtype)
        torch.testing.assert_close(fused, eager, atol=2e-5, rtol=1e-5)
        atol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: one rounding of the gradient
        torch.testing.assert_close(fused_grad, eager_grad, atol=atol, rtol=0)
    outside = softcapped_cross_entropy(torch.randn(2, 8), torch.tensor([3, 8]), 30.0)
    assert torch.isfinite(outside[0]) and torch.isnan(outside[1]), outside
    print("ok")
""")


@interpreter_only
def test_interpreted_kernels_match_eager_loss_and_gradient_on_cpu():
    run_interpreted(INTERPRETED_CHECK, timeout=120)


@pytest.mark.parametrize(("logits", "targets", "softcap", "message"), [
    (torch.zeros(4, 8, 2), torch.zeros(4, dtype=torch.long), SOFTCAP, r"logits \[N, V\] and targets \[N\]"),
    (torch.zeros(4, 8), torch.zeros(5, dtype=torch.long), SOFTCAP, r"got \(4, 8\) and \(5,\)"),
    (torch.zeros(4, 8), torch.zeros(4), SOFTCAP, "integer targets, got torch.float32 and torch.float32"),
    (torch.zeros(4, 8), torch.zeros(4, dtype=torch.long), 0.0, "softcap=0.0 must be > 0"),
])
def test_bad_inputs_fail_with_one_line(logits, targets, softcap, message):
    with pytest.raises(ValueError, match=message):
        softcapped_cross_entropy(logits, targets, softcap)


def test_cpu_tensors_outside_the_interpreter_fail_with_one_line(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"needs Triton and CUDA tensors \(got cpu\); use the eager loss"):
        softcapped_cross_entropy(torch.zeros(4, 8), torch.zeros(4, dtype=torch.long), SOFTCAP)


def record_sized_inputs(tokens: int = 8192, vocab: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (25 * torch.randn(tokens, vocab, device="cuda", generator=gen)).bfloat16().requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device="cuda", generator=gen)
    weights = torch.rand(tokens, device="cuda", generator=gen)
    return logits, targets, weights


@needs_cuda
def test_cuda_loss_and_gradient_match_eager_at_record_size():
    logits, targets, weights = record_sized_inputs()
    fused = softcapped_cross_entropy(logits, targets, SOFTCAP)
    eager = eager_loss(logits, targets)
    (fused_grad,) = torch.autograd.grad(fused, logits, weights)
    (eager_grad,) = torch.autograd.grad(eager, logits, weights)
    assert fused.dtype == torch.float32 and fused_grad.dtype == torch.bfloat16
    torch.testing.assert_close(fused, eager, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fused_grad.float(), eager_grad.float(), atol=1e-3, rtol=1e-2)


@needs_cuda
def test_cuda_never_allocates_fp32_logits():
    logits, targets, weights = record_sized_inputs()
    fp32_logits_bytes = logits.numel() * 4
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    (grad,) = torch.autograd.grad(softcapped_cross_entropy(logits, targets, SOFTCAP), logits, weights)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - baseline < fp32_logits_bytes
    del grad
    torch.cuda.reset_peak_memory_stats()  # the eager loss does need it: the check can tell them apart
    (grad,) = torch.autograd.grad(eager_loss(logits, targets), logits, weights)
    assert torch.cuda.max_memory_allocated() - baseline >= fp32_logits_bytes


@needs_cuda
def test_compiles_with_fullgraph_and_matches_eager():
    gen = torch.Generator(device="cuda").manual_seed(1)
    hidden = torch.randn(2, 300, 64, device="cuda", generator=gen, requires_grad=True)
    head = torch.randn(1000, 64, device="cuda", generator=gen, requires_grad=True)
    targets = torch.randint(0, 1000, (2, 300), device="cuda", generator=gen)

    def mean_loss(h, w, t, loss_fn):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = F.linear(h, w).flatten(0, 1)
            return loss_fn(logits, t.flatten()).mean()

    compiled = torch.compile(mean_loss, fullgraph=True)
    fused = compiled(hidden, head, targets, fused_loss)
    fused_grads = torch.autograd.grad(fused, (hidden, head))
    eager = mean_loss(hidden, head, targets, eager_loss)
    eager_grads = torch.autograd.grad(eager, (hidden, head))
    torch.testing.assert_close(fused, eager, atol=1e-4, rtol=1e-4)
    for got, want in zip(fused_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=2e-2)
