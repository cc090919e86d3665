"""The record GPT: shapes, init loss, document masking, loop order, LoRA sites, banks and taps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_eval_support import TINY_GPT

from lit_golf.config import LORA_SITES, GPTConfig
from lit_golf.model import (
    GPT,
    quantized_matrices,
    rebank_state_dict,
    unbank_state_dict,
)

TINY = {**TINY_GPT, "vocab_size": 256, "num_layers": 6, "model_dim": 64, "num_heads": 4, "num_kv_heads": 2,
        "mlp_mult": 4.0, "xsa_last_n": 3, "loop_start": 2, "loop_end": 3, "parallel_start_layer": 4, "fused_mlp": True}


def tiny_model(seed: int = 0, trained: bool = True, **overrides) -> GPT:
    """A small model with every feature on; `trained` replaces the identity-like init by random weights."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    if trained:
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def random_tokens(shape, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def cu_seqlens(lengths: list[int], pad_to: int) -> torch.Tensor:
    ends = torch.tensor([0, *lengths]).cumsum(0).tolist()
    return torch.tensor(ends + [ends[-1]] * (pad_to - len(ends)), dtype=torch.int32)


# ----------------------------------------------------------------------------- shapes and init


def test_forward_shapes_and_reductions():
    model = tiny_model()
    tokens = random_tokens((2, 10), 256, seed=1)
    targets = random_tokens((2, 10), 256, seed=2)
    logits = model(tokens)
    assert logits.shape == (2, 10, 256)
    assert logits.abs().max() <= model.config.logit_softcap
    per_token = model(tokens, targets, reduction="none")
    assert per_token.shape == (2, 10) and per_token.dtype == torch.float32
    torch.testing.assert_close(model(tokens, targets), per_token.mean())


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction='sum'"):
        tiny_model()(random_tokens((1, 4), 256, 0), random_tokens((1, 4), 256, 1), reduction="sum")


def test_record_config_parameter_count_initial_loss_and_pinned_forward():
    """configs/record.yaml builds the default architecture with every frontier switch off, and computes what
    it computed before the switches existed: the parameter count, and the loss of the seeded model perturbed
    by seeded noise (values recorded at 831c95c, the last commit without the switches)."""
    import yaml

    record = yaml.safe_load((Path(__file__).parents[1] / "configs" / "record.yaml").read_text())
    config = GPTConfig(**{**record["model"]["gpt"], "attention_backend": "sdpa"})
    assert config.architecture() == GPTConfig().architecture()
    assert not (config.smear_gate or config.sparse_attn_gate or config.fused_softcap_ce)
    torch.manual_seed(0)
    model = GPT(config)
    assert sum(p.numel() for p in model.parameters()) == 35_944_602
    tokens, targets = random_tokens((1, 32), 8192, 3), random_tokens((1, 32), 8192, 4)
    with torch.no_grad():
        assert abs(model(tokens, targets).item() - math.log(8192)) < 0.05
        model.looping_active = True
        assert abs(model(tokens, targets).item() - math.log(8192)) < 0.05
        model.looping_active = False
        noise = torch.Generator().manual_seed(1)
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=noise) * 0.02)
        loss = model.eval()(tokens, targets)
        model.looping_active = True
        looped = model(tokens, targets)
    assert loss.item() == pytest.approx(9.508655548095703, abs=1e-4)
    assert looped.item() == pytest.approx(9.505376815795898, abs=1e-4)


def test_initial_model_passes_embeddings_through():
    """Zero output projections make every block an identity at init; the gates then average skip and stream."""
    model = tiny_model(trained=False)
    tokens = random_tokens((1, 12), 256, 5)
    logits = model(tokens)
    normed = torch.nn.functional.rms_norm(model.tok_emb.weight, (64,))
    emb = torch.nn.functional.rms_norm(normed, (64,))  # the final norm sees a rescaled x0
    expected = 30.0 * torch.tanh(emb[tokens] @ model.tok_emb.weight.T / 30.0)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_bf16_banks_run_with_fp32_activations():
    model = tiny_model()
    for name in ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank"):
        getattr(model, name).data = getattr(model, name).data.bfloat16()
    assert torch.isfinite(model(random_tokens((1, 8), 256, 0))).all()


def test_residual_stream_runs_in_the_autocast_dtype():
    """Under bf16 autocast every block reads and writes bf16 (as upstream's bf16 embedding makes it);
    without autocast the stream keeps the fp32 parameters' dtype."""
    model = tiny_model()
    seen = []
    model.blocks[0].register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    tokens = random_tokens((1, 16), 256, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(tokens)
    plain = model(tokens)
    assert seen == [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]
    assert model.tok_emb.weight.dtype == torch.float32  # the master weights stay fp32
    # bf16 rounding of the stream moves the softcapped logits only slightly.
    assert (mixed.float() - plain).abs().max() < 0.5


# ----------------------------------------------------------------------------- document masking


@pytest.mark.parametrize("looping", [False, True])
def test_token_logits_ignore_other_documents(looping):
    model = tiny_model()
    model.looping_active = looping
    lengths = [7, 11, 6]
    tokens = random_tokens((1, 24), 256, 6)
    cu = cu_seqlens(lengths, pad_to=6)
    base = model(tokens, cu_seqlens=cu, max_seqlen=11)
    changed = tokens.clone()
    changed[0, :7] = random_tokens((7,), 256, 7)
    changed[0, 18:] = random_tokens((6,), 256, 8)
    other = model(changed, cu_seqlens=cu, max_seqlen=11)
    torch.testing.assert_close(other[0, 7:18], base[0, 7:18], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other[0, :7], base[0, :7])


def test_packed_document_matches_the_document_alone():
    """RoPE is relative, so a document's logits do not depend on where it sits in the packed row."""
    model = tiny_model()
    tokens = random_tokens((1, 20), 256, 9)
    packed = model(tokens, cu_seqlens=cu_seqlens([8, 12], pad_to=4), max_seqlen=12)
    alone = model(tokens[:, 8:])
    torch.testing.assert_close(packed[:, 8:], alone, atol=1e-4, rtol=1e-4)


def test_without_cu_seqlens_documents_see_each_other():
    model = tiny_model()
    tokens = random_tokens((1, 16), 256, 10)
    changed = tokens.clone()
    changed[0, 0] = (tokens[0, 0] + 1) % 256
    assert not torch.allclose(model(tokens)[0, 8:], model(changed)[0, 8:])


# ----------------------------------------------------------------------------- depth recurrence


def test_record_loop_schedule():
    encoder, decoder = GPTConfig().layer_schedule(True)
    assert encoder == [0, 1, 2, 3, 4, 5, 3, 4]
    assert decoder == [5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert GPTConfig().layer_schedule(False) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])


@pytest.mark.parametrize("looping", [False, True])
def test_blocks_execute_in_schedule_order(looping):
    model = tiny_model()
    model.looping_active = looping
    executed = []
    for index, block in enumerate(model.blocks):
        block.attn.register_forward_hook(lambda *_, index=index: executed.append(index))
    model(random_tokens((1, 6), 256, 0))
    encoder, decoder = model.config.layer_schedule(looping)
    assert executed == encoder + decoder
    assert executed == ([0, 1, 2, 3, 2, 3, 4, 5] if looping else [0, 1, 2, 3, 4, 5])


def test_looping_changes_the_function():
    model = tiny_model()
    tokens = random_tokens((1, 8), 256, 0)
    plain = model(tokens)
    model.looping_active = True
    assert not torch.allclose(model(tokens), plain)


# ----------------------------------------------------------------------------- LoRA


class ProbeLoRA:
    """Rank-2 adapters per (site, slot); records the inputs it was shown."""

    def __init__(self, model: GPT, sites=LORA_SITES, scale: float = 0.0, seed: int = 0):
        cfg = model.config
        out_dims = {"q": cfg.model_dim, "k": cfg.kv_dim, "v": cfg.kv_dim, "o": cfg.model_dim,
                    "mlp": cfg.model_dim, "head": cfg.vocab_size}
        gen = torch.Generator().manual_seed(seed)
        self.sites = set(sites)
        self.a = {site: torch.randn(cfg.model_dim, 2, generator=gen) for site in out_dims}
        self.b = {site: torch.randn(2, dim, generator=gen) * scale for site, dim in out_dims.items()}
        self.calls: list[tuple[str, int, tuple[int, ...]]] = []

    def delta(self, site, slot, x):
        self.calls.append((site, slot, tuple(x.shape)))
        if site not in self.sites:
            return None
        return x @ self.a[site] @ self.b[site]


def test_zero_lora_leaves_logits_unchanged_and_sees_every_slot():
    model = tiny_model()
    model.looping_active = True
    tokens = random_tokens((2, 8), 256, 0)
    lora = ProbeLoRA(model, scale=0.0)
    torch.testing.assert_close(model(tokens, lora=lora), model(tokens))
    slots = len(sum(model.config.layer_schedule(True), []))
    for site in ("q", "k", "v", "o", "mlp"):
        assert sorted(slot for s, slot, _ in lora.calls if s == site) == list(range(slots))
    assert {shape for _, _, shape in lora.calls} == {(2, 8, 64)}
    assert [c for c in lora.calls if c[0] == "head"] == [("head", 0, (2, 8, 64))]


@pytest.mark.parametrize("site", LORA_SITES)
def test_nonzero_lora_changes_output_at_each_site(site):
    model = tiny_model()
    tokens, targets = random_tokens((2, 8), 256, 0), random_tokens((2, 8), 256, 1)
    plain = model(tokens, targets, reduction="none")
    adapted = model(tokens, targets, lora=ProbeLoRA(model, sites=[site], scale=0.5), reduction="none")
    assert adapted.shape == plain.shape
    assert not torch.allclose(adapted, plain)


@pytest.mark.parametrize("with_lora", [False, True])
def test_score_columns_equal_the_full_forward_at_those_columns(with_lora):
    """TTT's fast path: the head only at the scored columns gives the full forward's per-token loss there,
    and the same gradients reach the adapter."""
    model = tiny_model()
    model.looping_active = True
    tokens, targets = random_tokens((3, 12), 256, 0), random_tokens((3, 12), 256, 1)
    columns = torch.tensor([[4, 5, 6], [9, 10, 11], [0, 1, 11]])
    lora = ProbeLoRA(model, scale=0.5) if with_lora else None
    if with_lora:
        for b in lora.b.values():
            b.requires_grad_(True)
    full = model(tokens, targets, lora=lora, reduction="none").gather(1, columns)
    picked = model(tokens, targets.gather(1, columns), lora=lora, reduction="none", score_columns=columns)
    torch.testing.assert_close(picked, full, rtol=1e-6, atol=1e-6)
    if with_lora:
        grads = [torch.autograd.grad(nll.sum(), list(lora.b.values())) for nll in (full, picked)]
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # fp32 sums over 3 vs 12 positions


# ----------------------------------------------------------------------------- banks, export names, taps


def test_unbank_rebank_round_trip():
    model = tiny_model()
    state = model.state_dict()
    flat = unbank_state_dict(state, model.config)
    assert "qo_bank" not in flat and flat["blocks.1.attn.o"].shape == (64, 64)
    torch.testing.assert_close(flat["blocks.2.attn.v"], state["kv_bank"][6 + 2])
    torch.testing.assert_close(flat["blocks.5.mlp.down"], state["mlp_down_bank"][5])
    restored = rebank_state_dict(flat, model.config)
    assert restored.keys() == state.keys()
    for key in state:
        assert torch.equal(restored[key], state[key]), key
    fresh = GPT(model.config)
    fresh.load_state_dict(restored)
    tokens = random_tokens((1, 8), 256, 0)
    torch.testing.assert_close(fresh.eval()(tokens), model(tokens))


def test_rebank_names_missing_matrix():
    model = tiny_model()
    flat = unbank_state_dict(model.state_dict(), model.config)
    del flat["blocks.3.mlp.up"]
    with pytest.raises(ValueError, match=r"lacks 1 matrices \(first: blocks.3.mlp.up\)"):
        rebank_state_dict(flat, model.config)


def test_quantized_matrices_cover_every_bank_slice_once():
    cfg = GPTConfig(**TINY)
    matrices = quantized_matrices(cfg)
    assert len(matrices) == 6 * cfg.num_layers + 1
    flat_keys = set(unbank_state_dict(GPT(cfg).state_dict(), cfg))
    assert {m.state_key for m in matrices} <= flat_keys
    slices = {(m.bank, m.index) for m in matrices if m.index is not None}
    assert len(slices) == 6 * cfg.num_layers
    assert {m.group for m in matrices} == {"attn", "mlp", "embed"}
    assert matrices[-1].name == "tok_emb" and matrices[-1].state_key == "tok_emb.weight"


@pytest.mark.parametrize("looping", [False, True])
def test_taps_see_each_matrix_input(looping):
    model = tiny_model()
    model.looping_active = looping
    seen: dict[str, list[tuple[int, ...]]] = {}
    for matrix in model.quantized_matrices():
        tap = model.get_submodule(matrix.tap)
        if matrix.tap not in seen:
            seen[matrix.tap] = []
            tap.register_forward_hook(lambda _m, inputs, _o, key=matrix.tap: seen[key].append(tuple(inputs[0].shape)))
    model(random_tokens((2, 5), 256, 0))
    encoder, decoder = model.config.layer_schedule(looping)
    executions = encoder + decoder
    for matrix in model.quantized_matrices():
        in_features = matrix.weight(model).shape[1]
        expected_calls = 1 if matrix.index is None else executions.count(int(matrix.name.split(".")[1]))
        assert seen[matrix.tap] == [(2, 5, in_features)] * expected_calls, matrix.name
    assert model.quantized_matrices()[0].weight(model).data_ptr() == model.qo_bank.data_ptr()


# ----------------------------------------------------------------------------- compile


@pytest.mark.slow
def test_forward_traces_as_one_graph():
    """fullgraph=True fails on any graph break (data-dependent control flow, .item(), ...)."""
    model = tiny_model()
    model.looping_active = True
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="eager")
    tokens, targets = random_tokens((1, 16), 256, 0), random_tokens((1, 16), 256, 1)
    cu = cu_seqlens([5, 11], pad_to=4)
    torch.testing.assert_close(compiled(tokens, targets, cu_seqlens=cu, max_seqlen=11),
                               model(tokens, targets, cu_seqlens=cu, max_seqlen=11))


# ----------------------------------------------------------------------------- rotary tables


def test_rotary_tables_built_once_equal_the_per_call_tables_and_are_not_saved():
    from lit_golf.model import rotary_tables

    model = tiny_model(rope_table_positions=64)
    cos, sin = model.rotary(40, torch.float32)
    want_cos, want_sin = rotary_tables(40, model.rope_dims, model.config.rope_base, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(cos, want_cos)
    torch.testing.assert_close(sin, want_sin)
    assert cos.shape == (1, 40, 1, model.rope_dims // 2)
    # rows longer than the tables compute theirs; the dtype is the caller's
    cos, _ = model.rotary(100, torch.bfloat16)
    assert cos.shape[1] == 100 and cos.dtype == torch.bfloat16
    # buffers that move with the model but never reach a checkpoint or an artifact
    assert not {"rope_cos", "rope_sin"} & model.state_dict().keys()
    assert model.double().rope_cos.dtype == torch.float64


@pytest.mark.parametrize("positions", [0, 12, 4096])
def test_the_forward_is_the_same_with_or_without_the_built_tables(positions):
    """0: every forward computes its tables; 12: a 16-token row is longer than the tables; 4096: sliced."""
    tokens, targets = random_tokens((1, 16), 256, 0), random_tokens((1, 16), 256, 1)
    cu = cu_seqlens([5, 11], pad_to=4)
    loss = tiny_model(rope_table_positions=positions)(tokens, targets, cu_seqlens=cu, max_seqlen=11)
    reference = tiny_model()(tokens, targets, cu_seqlens=cu, max_seqlen=11)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: the step under autocast, as the fit runs it"))])
def test_the_compiled_step_reads_the_tables_instead_of_recomputing_them(device):
    """The lever itself: with per-call tables the compiled step computes `cos`/`sin` (Inductor then inlines them
    into every q/k kernel, forward and backward); with the tables built at construction neither the forward nor
    the backward graph that AOT autograd partitions, as Inductor's does, computes a sine. Graphs, not kernels:
    no kernel compile, so the check costs seconds."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    def graph_ops(positions: int) -> set[str]:
        ops: set[str] = set()

        def capture(graph, example_inputs):
            ops.update(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
            return make_boxed_func(graph)

        torch._dynamo.reset()
        model = tiny_model(rope_table_positions=positions, num_layers=2, xsa_last_n=1, loop_start=0, loop_end=0,
                           num_loops=0, parallel_start_layer=0).train().to(device)
        backend = aot_autograd(fw_compiler=capture, bw_compiler=capture,
                               partition_fn=min_cut_rematerialization_partition)
        compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=backend)
        tokens, targets = (random_tokens((1, 32), 256, seed).to(device) for seed in (0, 1))
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = compiled(tokens, targets, cu_seqlens=cu_seqlens([9, 23], pad_to=4).to(device), max_seqlen=23)
        loss.backward()
        return ops

    assert {"aten.sin.default", "aten.cos.default"} <= graph_ops(0)  # the probe sees the per-call tables
    assert not {op for op in graph_ops(4096) if op.startswith(("aten.sin", "aten.cos"))}
