"""The model's training-kernel switches (`fused_qk_norm_rope`, `fused_xsa`): where the kernel cannot run they change
nothing, and on CUDA a bf16 training step with one on matches the eager model's loss and gradients."""

from __future__ import annotations

import pytest
import torch

from lit_golf.config import GPTConfig
from lit_golf.kernels.qk_norm_rope import qk_norm_rope_available
from lit_golf.kernels.xsa import xsa_available
from lit_golf.model import GPT

SWITCHES = ["fused_qk_norm_rope", "fused_xsa"]
needs_cuda = pytest.mark.skipif(not (qk_norm_rope_available() and xsa_available()),
                                reason="the training kernels need CUDA and Triton")


def twin_models(switch: str, device: str, **config) -> tuple[GPT, GPT]:
    """The same weights without and with `switch`, in training mode."""
    torch.manual_seed(0)
    plain = GPT(GPTConfig(**config)).to(device).train()
    fused = GPT(GPTConfig(**config, **{switch: True})).to(device).train()
    fused.load_state_dict(plain.state_dict())
    return plain, fused


@pytest.mark.parametrize("switch", SWITCHES)
def test_a_switch_keeps_the_eager_path_where_its_kernel_cannot_run(switch):
    """On a CPU (or any box without the kernel) the switch leaves the model's function and gradients unchanged."""
    plain, fused = twin_models(switch, "cpu", vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2,
                               rope_dims=4, num_loops=0, xsa_last_n=2, parallel_start_layer=0)
    tokens = torch.randint(1, 64, (2, 16))
    losses = [model(tokens[:, :-1], tokens[:, 1:]) for model in (plain, fused)]
    for loss in losses:
        loss.backward()
    assert torch.equal(losses[0], losses[1])
    for (name, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters(), strict=True):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad), name


@needs_cuda
@pytest.mark.parametrize("switch", SWITCHES)
def test_cuda_training_step_with_a_switch_matches_the_eager_model(switch):
    plain, fused = twin_models(switch, "cuda", vocab_size=512, num_layers=2, model_dim=256, num_heads=4,
                               num_kv_heads=2, num_loops=0, xsa_last_n=2, parallel_start_layer=0)
    tokens = torch.randint(1, 512, (2, 257), device="cuda")
    losses = []
    for model in (plain, fused):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=2e-3)
    for (name, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters(), strict=True):
        if a.grad is None:
            assert b.grad is None, name
        else:
            torch.testing.assert_close(b.grad, a.grad, atol=2e-3, rtol=5e-2, msg=name)
