"""`GPTConfig.fused_qkv`: q, k and v as one GEMM over the stacked bank slices compute what three GEMMs compute,
in training (loss and every gradient), in evaluation and in phased LoRA TTT (per-site adapters after the split)."""

from __future__ import annotations

import pytest
import torch
from test_eval_support import TINY_GPT, small_eval_config, synthetic_luts, synthetic_val

import lit_golf.model
from lit_golf.config import GPTConfig
from lit_golf.eval.runner import evaluate
from lit_golf.model import GPT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pair(seed: int = 0) -> tuple[GPT, GPT]:
    """The same random weights (std 0.05) with the switch off and on; frontier gates on, looping on."""
    config = {**TINY_GPT, "model_dim": 64, "num_heads": 4, "num_kv_heads": 2, "sparse_attn_gate": True,
              "smear_gate": True}
    torch.manual_seed(seed)
    separate = GPT(GPTConfig(**config, fused_qkv=False))
    with torch.no_grad():
        for p in separate.parameters():
            p.normal_(0.0, 0.05)
    fused = GPT(GPTConfig(**config, fused_qkv=True))
    fused.load_state_dict(separate.state_dict())
    for model in (separate, fused):
        model.looping_active = True
    return separate, fused


def test_training_step_loss_and_gradients_match_three_gemms(monkeypatch):
    tokens = torch.randint(2, TINY_GPT["vocab_size"], (1, 97), generator=torch.Generator().manual_seed(5))
    cu = torch.tensor([0, 40, 96, 96], dtype=torch.int32)
    gemm_widths = []  # output width of every bank GEMM the forward runs
    bank_linear = lit_golf.model.bank_linear
    monkeypatch.setattr(lit_golf.model, "bank_linear",
                        lambda x, weight, fp8: gemm_widths.append(weight.size(0)) or bank_linear(x, weight, fp8))
    results, widths = [], []
    for model in pair():
        gemm_widths.clear()
        loss = model.train()(tokens[:, :-1], tokens[:, 1:], cu_seqlens=cu, max_seqlen=96)
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters()}))
        widths.append(list(gemm_widths))
    # the switch reaches the model: q, k, v (widths 64, 32, 32) run as one GEMM of width 128 in every block
    blocks = len(sum(model.config.layer_schedule(True), []))
    assert widths[0][:3] == [64, 32, 32] and widths[1][0] == 128
    assert len(widths[0]) - len(widths[1]) == 2 * blocks
    (loss, grads), (fused_loss, fused_grads) = results
    assert fused_loss == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == fused_grads.keys()
    for name in lit_golf.model.BANK_NAMES:  # q/k/v slices of the banks: the gradients the fusion reroutes
        assert grads[name].abs().sum() > 0
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_evaluation_and_phased_ttt_match_three_gemms():
    """LoRA adapters on q, k and v act after the split, as they act on the separate GEMMs' outputs."""
    val = synthetic_val([40, 12, 33, 25, 18, 50, 9, 30], seed=3)
    cfg = small_eval_config(global_sgd={"prefix_docs": 4})
    assert {"q", "k", "v"} <= set(cfg.ttt.lora_targets)
    separate, fused = (evaluate(model, val, synthetic_luts(), cfg, progress=False) for model in pair(1))
    for key in ("val_bpb", "ttt_bpb", "ttt_bpb_after_phase2"):
        assert fused[key] == pytest.approx(separate[key], rel=1e-5), key


def test_the_switch_is_a_kernel_choice_not_architecture():
    config = GPTConfig.from_dict({**GPTConfig().to_dict(), "fused_qkv": True})
    assert config.fused_qkv and "fused_qkv" in GPTConfig.RUNTIME_FIELDS
    assert config.architecture() == GPTConfig().architecture()  # an artifact is the same model either way
