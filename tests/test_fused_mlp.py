"""Fused Triton MLP: agrees with the eager MLP in forward and backward (CUDA), and stays out of the way on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_golf.config import GPTConfig
from lit_golf.kernels import fused_mlp
from lit_golf.model import GPT

needs_cuda = pytest.mark.skipif(not fused_mlp.is_available(), reason="fused MLP needs CUDA and Triton")


def eager_mlp(x, up, down):
    return F.linear(F.leaky_relu(F.linear(x, up), negative_slope=0.5).square(), down)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def test_cpu_model_uses_the_eager_mlp():
    model = GPT(GPTConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, rope_dims=8,
                          num_loops=0, parallel_start_layer=0, xsa_last_n=1, fused_mlp=True))
    if not torch.cuda.is_available():
        assert all(block.mlp.fused_fn is None for block in model.blocks)
    model.train()
    loss = model(torch.randint(0, 64, (1, 8)), torch.randint(0, 64, (1, 8)))
    loss.backward()
    assert model.mlp_up_bank.grad is not None


@needs_cuda
@pytest.mark.parametrize("tokens", [256, 300])
def test_fused_matches_eager_forward_and_backward(tokens):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, tokens, 512, device="cuda", generator=gen).bfloat16().requires_grad_()
    up = (torch.randn(2048, 512, device="cuda", generator=gen) / 512**0.5).bfloat16().requires_grad_()
    down = (torch.randn(512, 2048, device="cuda", generator=gen) / 2048**0.5).bfloat16().requires_grad_()
    grad = torch.randn(2, tokens, 512, device="cuda", generator=gen).bfloat16()

    fused_out = fused_mlp.fused_leaky_relu_square_mlp(x, up, down)
    fused_grads = torch.autograd.grad(fused_out, (x, up, down), grad)
    eager_out = eager_mlp(x, up, down)
    eager_grads = torch.autograd.grad(eager_out, (x, up, down), grad)

    assert fused_out.shape == eager_out.shape and fused_out.dtype == torch.bfloat16
    assert relative_error(fused_out, eager_out) < 1e-2
    for name, got, want in zip(("x", "up", "down"), fused_grads, eager_grads, strict=True):
        assert relative_error(got, want) < 2e-2, name


@needs_cuda
def test_model_trains_through_fused_path_and_calibrates_eagerly():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, num_layers=4, model_dim=128, num_heads=2, num_kv_heads=1, rope_dims=16,
                          num_loops=1, loop_start=1, loop_end=2, parallel_start_layer=2)).cuda()
    with torch.no_grad():
        model.mlp_down_bank.normal_(0, 0.02)
    assert model.blocks[0].mlp.fused_fn is not None
    tokens = torch.randint(0, 512, (1, 256), device="cuda")
    seen = []
    model.blocks[0].mlp.down_tap.register_forward_hook(lambda *_: seen.append(1))
    with torch.autocast("cuda", torch.bfloat16):
        fused_loss = model.train()(tokens, tokens)
        assert not seen, "training mode must take the fused path"
        eager_loss = model.eval()(tokens, tokens)
        assert seen, "eval mode must take the eager path (calibration taps)"
    assert abs(fused_loss.item() - eager_loss.item()) < 2e-2
    fused_loss.backward()  # bf16 activations against fp32 banks: the kernel must see one dtype
    assert torch.isfinite(model.mlp_up_bank.grad).all() and model.mlp_up_bank.grad.abs().sum() > 0
