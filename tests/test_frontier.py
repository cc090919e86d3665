"""Frontier switches (issue 17): SmearGate with the BOS fix, sparse attention gate, fused training loss,
TTT LoRA alpha and warm-start A, and `configs/frontier.yaml` layered on the record."""

from __future__ import annotations

import copy

import pytest
import torch
from test_eval_support import BOS, TINY_GPT, VOCAB, small_eval_config, synthetic_luts, synthetic_val

from lit_golf import artifact
from lit_golf.config import GPTConfig
from lit_golf.data.documents import Document, find_documents
from lit_golf.data.shards import BOS_ID
from lit_golf.eval.config import TTTConfig
from lit_golf.eval.lora import BatchedLoRA
from lit_golf.eval.metric import BitsPerByte
from lit_golf.eval.plan import plan_batches
from lit_golf.eval.runner import evaluate
from lit_golf.eval.ttt import DocumentBatchScorer, TTTTrace
from lit_golf.eval.valset import ValSet
from lit_golf.export.config import ExportConfig
from lit_golf.export.pipeline import export_model
from lit_golf.model import GPT
from lit_golf.optim import OptimConfig, build_golf_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = TINY_GPT
SWITCHES = dict(smear_gate=True, sparse_attn_gate=True, sparse_attn_gate_scale=0.5)
NEW_PARAMETERS = {"smear.weight", "smear.lam", *(f"blocks.{i}.attn.gate_weight" for i in range(TINY["num_layers"]))}


def tiny_model(seed: int = 0, trained: bool = True, looping: bool = True, **overrides) -> GPT:
    """A tiny GPT; `trained` adds random weights to every parameter, the new gates included (non-zero)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    if trained:
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.3)
    model.looping_active = looping
    return model.eval()


def with_switches(model: GPT, **switches) -> GPT:
    """`model`'s weights in a model with `switches`: gates it lacks keep their zero init, gates switched off are dropped."""
    other = GPT(GPTConfig(**{**model.config.to_dict(), **switches}))
    missing, unexpected = other.load_state_dict(model.state_dict(), strict=False)
    assert set(missing) | set(unexpected) <= NEW_PARAMETERS
    other.looping_active = model.looping_active
    return other.eval()


def words(shape, seed: int) -> torch.Tensor:
    """Random tokens that are never BOS."""
    return torch.randint(2, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def cu_seqlens(lengths: list[int], pad_to: int) -> torch.Tensor:
    ends = torch.tensor([0, *lengths]).cumsum(0).tolist()
    return torch.tensor(ends + [ends[-1]] * (pad_to - len(ends)), dtype=torch.int32)


def first_block_input(model: GPT, tokens: torch.Tensor, **kwargs) -> torch.Tensor:
    """The stream entering the first block: the (smeared, normed) embeddings."""
    seen = []
    handle = model.blocks[0].register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(tokens, **kwargs)
    finally:
        handle.remove()
    return seen[0]


# ----------------------------------------------------------------------------- initialisation


def test_switches_draw_nothing_from_the_random_stream_and_start_at_zero():
    """Same seed, switches on or off: every shared parameter starts identical and the stream ends in the same state."""
    torch.manual_seed(0)
    off = GPT(GPTConfig(**TINY))
    after_off = torch.get_rng_state()
    torch.manual_seed(0)
    on = GPT(GPTConfig(**TINY, **SWITCHES))
    assert torch.equal(torch.get_rng_state(), after_off)
    on_state, off_state = on.state_dict(), off.state_dict()
    assert set(on_state) - set(off_state) == NEW_PARAMETERS
    for name, value in off_state.items():
        assert torch.equal(on_state[name], value), name
    for name in NEW_PARAMETERS:
        assert on_state[name].dtype == torch.float32 and not on_state[name].any(), name


def test_new_parameters_train_in_the_scalar_adamw_group():
    model = tiny_model(**SWITCHES)
    optimizer = build_golf_optimizer(model, OptimConfig(distributed=False, compile_newton_schulz=False))
    groups = {group["name"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    named = dict(model.named_parameters())
    assert all(id(named[name]) in groups["scalars"] for name in NEW_PARAMETERS)


def test_smear_gate_at_zero_is_the_identity_for_any_weights():
    model = tiny_model()
    smeared = with_switches(model, smear_gate=True)
    tokens = words((2, 20), seed=1)
    tokens[:, 9] = BOS_ID
    with torch.no_grad():
        assert torch.equal(smeared(tokens), model(tokens))
        cu = cu_seqlens([9, 11], pad_to=4)
        assert torch.equal(smeared(tokens[:1], cu_seqlens=cu, max_seqlen=11), model(tokens[:1], cu_seqlens=cu, max_seqlen=11))


def test_sparse_gate_at_zero_halves_the_heads_so_a_fresh_model_is_unchanged():
    """sigmoid(0) = 1/2 on every head: a trained model equals the gate-less one with half its output projections;
    a fresh model's output projections are zero, so switching the gate on changes nothing at init."""
    tokens = words((2, 16), seed=2)
    with torch.no_grad():
        torch.manual_seed(3)
        fresh_off = GPT(GPTConfig(**TINY)).eval()
        torch.manual_seed(3)
        fresh_on = GPT(GPTConfig(**TINY, sparse_attn_gate=True)).eval()
        assert torch.equal(fresh_on(tokens), fresh_off(tokens))

        trained = tiny_model()
        gated = with_switches(trained, sparse_attn_gate=True)
        layers = trained.config.num_layers
        trained.qo_bank[layers:].mul_(0.5)
        torch.testing.assert_close(gated(tokens), trained(tokens), atol=1e-6, rtol=1e-6)


class RecordingBackend:
    """An attention backend that keeps what it returns: each head's output before the sparse gate."""

    def __init__(self, backend):
        self.backend, self.outputs = backend, []

    def __call__(self, q, k, v, **kwargs):
        self.outputs.append(self.backend(q, k, v, **kwargs))
        return self.outputs[-1]


def test_sparse_gate_scales_each_head_by_its_learned_weight():
    """Every attention layer's heads leave scaled by `sigmoid(scale * W_h @ x[:gate_window])` with its own
    learned `W` (no smear and no XSA here, so nothing else acts between): checked against the head outputs
    the backend returned, with gates that differ per head and position."""
    model = tiny_model(looping=False, sparse_attn_gate=True, sparse_attn_gate_scale=0.5, xsa_last_n=0)
    tokens = words((2, 16), seed=16)
    taps: list[dict[str, list[torch.Tensor]]] = []
    for block in model.blocks:
        seen: dict[str, list[torch.Tensor]] = {"x": [], "gated": []}
        block.attn.backend = RecordingBackend(block.attn.backend)
        block.attn.qkv_tap.register_forward_hook(lambda m, args, out, seen=seen: seen["x"].append(args[0]))
        block.attn.out_tap.register_forward_hook(lambda m, args, out, seen=seen: seen["gated"].append(args[0]))
        taps.append(seen)
    with torch.no_grad():
        model(tokens)
    window = model.config.gate_window
    for block, seen in zip(model.blocks, taps, strict=True):
        attn = block.attn
        (x,), (heads,), (gated,) = seen["x"], attn.backend.outputs, seen["gated"]
        gate = torch.sigmoid(0.5 * x[..., :window] @ attn.gate_weight.T)
        torch.testing.assert_close(gated, (heads * gate[..., None]).flatten(2), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(gated, 0.5 * heads.flatten(2), atol=1e-3)  # not what a zero weight gives


def test_sparse_gate_weight_moves_the_loss_and_takes_its_gradient():
    """The loss differs between the learned gate weight and a zeroed one, and backward reaches every layer's
    `gate_weight` (a forward that ignored the weight would leave `.grad` empty)."""
    model = tiny_model(sparse_attn_gate=True, sparse_attn_gate_scale=0.5).train()
    tokens, targets = words((2, 16), seed=17), words((2, 16), seed=18)
    loss = model(tokens, targets)
    loss.backward()
    for i, block in enumerate(model.blocks):
        assert block.attn.gate_weight.grad is not None and block.attn.gate_weight.grad.abs().sum() > 0, i
    with torch.no_grad():
        for block in model.blocks:
            block.attn.gate_weight.zero_()
        assert not torch.allclose(model(tokens, targets), loss.detach(), atol=1e-4)


# ----------------------------------------------------------------------------- no leakage across documents


@pytest.mark.parametrize("looping", [False, True])
def test_packed_documents_ignore_the_previous_document(looping):
    """cu_seqlens rows: a document's logits do not move when the document before it (its last token too) changes."""
    model = tiny_model(looping=looping, **SWITCHES)
    tokens = words((1, 24), seed=4)
    tokens[0, [0, 7, 18]] = BOS_ID
    cu = cu_seqlens([7, 11, 6], pad_to=6)
    changed = tokens.clone()
    changed[0, 1:7] = words((6,), seed=5)
    with torch.no_grad():
        base = model(tokens, cu_seqlens=cu, max_seqlen=11)
        other = model(changed, cu_seqlens=cu, max_seqlen=11)
    assert torch.equal(other[0, 7:], base[0, 7:])
    assert not torch.allclose(other[0, :7], base[0, :7])


def test_a_packed_piece_starting_mid_document_computes_what_it_computes_alone():
    """Segments need not start at a BOS (evaluation packs windows that begin inside a document); the smear
    stops at every segment start, so a packed piece is scored exactly as its own row."""
    model = tiny_model(**SWITCHES)
    tokens = words((1, 20), seed=6)
    with torch.no_grad():
        packed = model(tokens, cu_seqlens=cu_seqlens([8, 12], pad_to=4), max_seqlen=12)
        alone = model(tokens[:, 8:])
    torch.testing.assert_close(packed[:, 8:], alone, atol=1e-5, rtol=1e-5)


def test_dense_rows_smear_stops_at_a_bos():
    """Without cu_seqlens attention spans the row, so look at the embeddings the blocks receive: a BOS never
    takes in the previous document's last token; any other token takes in its predecessor."""
    model = tiny_model(**SWITCHES)
    tokens = words((2, 16), seed=7)
    tokens[:, 0] = tokens[:, 9] = BOS_ID
    changed = tokens.clone()
    changed[:, 8] = (tokens[:, 8] + 1 - 2) % (VOCAB - 2) + 2  # the previous document's last token
    base, other = first_block_input(model, tokens), first_block_input(model, changed)
    assert torch.equal(other[:, 9:], base[:, 9:]) and torch.equal(other[:, :8], base[:, :8])

    no_bos = tokens.clone()
    no_bos[:, 9] = 5
    moved = no_bos.clone()
    moved[:, 8] = changed[:, 8]
    assert not torch.allclose(first_block_input(model, moved)[:, 9], first_block_input(model, no_bos)[:, 9])


# ----------------------------------------------------------------------------- one forward for TTT


@pytest.mark.parametrize("switch", ["sparse_attn_gate", "smear_gate"])
def test_the_ttt_forward_sees_the_gates_exactly_as_the_plain_forward(switch):
    """Fresh adapters (B = 0, alpha-scaled) at the chunk columns give the plain model's NLL, before and after
    one gate's weights change (each gate alone): the test-time-training path cannot miss a gate."""
    model = tiny_model(**{switch: True, "sparse_attn_gate_scale": 0.5})
    tokens, targets = words((2, 24), seed=8), words((2, 24), seed=9)
    columns = torch.tensor([[16, 17, 18, 19], [20, 21, 22, 23]])
    lora = BatchedLoRA(model, rows=2, rank=4, alpha=144.0)

    def plain_and_ttt():
        with torch.no_grad():
            plain = model(tokens, targets, reduction="none").gather(1, columns)
            ttt = model(tokens, targets.gather(1, columns), lora=lora, reduction="none", score_columns=columns)
        return plain, ttt

    plain, ttt = plain_and_ttt()
    torch.testing.assert_close(ttt, plain, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        if switch == "sparse_attn_gate":
            for block in model.blocks:
                block.attn.gate_weight.mul_(-2.0)
        else:
            model.smear.lam.add_(1.0)
    plain2, ttt2 = plain_and_ttt()
    assert not torch.allclose(plain2, plain, atol=1e-3)
    torch.testing.assert_close(ttt2 - ttt, plain2 - plain, atol=1e-5, rtol=1e-5)


def test_ttt_without_learning_scores_each_chunk_with_the_gated_model():
    """End to end through phased TTT (lr 0): every chunk's NLL is the gated model's on its own-document window."""
    lengths = [40, 5, 21, 12, 33, 9]
    tokens = synthetic_val(lengths, seed=3)
    model = tiny_model(**SWITCHES)
    cfg = small_eval_config(ttt={"lr": 0.0, "lora_alpha": 144.0, "warm_start_a": True}, global_sgd={"lr": 0.0})
    trace = TTTTrace()
    evaluate(model, tokens, synthetic_luts(), cfg, progress=False, trace=trace)
    docs = find_documents(tokens, BOS)
    assert len(trace.chunk_nll) == sum(-(-d.num_targets // cfg.ttt.chunk_size) for d in docs)
    for (d, ci), nll in trace.chunk_nll.items():
        doc = docs[d]
        lo, hi = ci * cfg.ttt.chunk_size, min((ci + 1) * cfg.ttt.chunk_size, doc.num_targets)
        first = doc.start + max(0, hi - cfg.ttt.context_len)
        x, y = tokens[first : doc.start + hi], tokens[first + 1 : doc.start + hi + 1]
        with torch.no_grad():
            expected = model(x[None], y[None], reduction="none")[0, doc.start + lo - first :].double().sum()
        assert nll == pytest.approx(expected.item(), rel=1e-5), (d, ci)


def test_frontier_forward_traces_as_one_graph():
    """fullgraph=True fails on any graph break: the packed training forward with both gates and the smear."""
    model = tiny_model(**SWITCHES)
    tokens, targets = words((1, 16), seed=14), words((1, 16), seed=15)
    tokens[0, 5] = BOS_ID
    cu = cu_seqlens([5, 11], pad_to=4)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="eager")
    torch.testing.assert_close(compiled(tokens, targets, cu_seqlens=cu, max_seqlen=11),
                               model(tokens, targets, cu_seqlens=cu, max_seqlen=11))


# ----------------------------------------------------------------------------- LoRA alpha and warm-start A


def test_lora_alpha_scales_the_delta_by_alpha_over_rank():
    model = tiny_model()
    plain, scaled = BatchedLoRA(model, 2, 4), BatchedLoRA(model, 2, 4, alpha=144.0)
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for b in plain.B["q"]:
            b.normal_()
        scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, TINY["model_dim"])
    torch.testing.assert_close(scaled.delta("q", 0, x), plain.delta("q", 0, x) * 36.0)


def batch_of(first: int, size: int = 4) -> list[Document]:
    """`size` documents from index `first` (a scorer's reset reads only their count and the first index)."""
    return [Document(first + i, 0, 1) for i in range(size)]


def warm_and_cold_scorers() -> tuple[DocumentBatchScorer, DocumentBatchScorer]:
    """Scorers of 4 rows on one model, with and without warm-start A."""
    model = tiny_model()
    val = ValSet.build(synthetic_val([10, 10], seed=1), synthetic_luts(), "cpu")
    return tuple(DocumentBatchScorer(model, val, small_eval_config(ttt={"lora_alpha": 144.0, "warm_start_a": warm}),
                                     BitsPerByte(), None) for warm in (True, False))


def a_and_b(scorer: DocumentBatchScorer) -> tuple[torch.Tensor, torch.Tensor]:
    return scorer.lora.A["q"][0].detach().clone(), scorer.lora.B["q"][0].detach().clone()


def train_adapters(*scorers: DocumentBatchScorer) -> None:
    """Move A and B as training on a batch would."""
    with torch.no_grad():
        for s in scorers:
            s.lora.A["q"][0].add_(1.0)
            s.lora.B["q"][0].add_(1.0)


def test_warm_start_keeps_a_between_batches_and_redraws_it_at_a_phase_start():
    warm, cold = warm_and_cold_scorers()
    warm._reset(batch_of(3))
    cold._reset(batch_of(3))
    drawn = a_and_b(cold)[0]
    assert torch.equal(a_and_b(warm)[0], drawn)  # the phase's first batch draws A as without warm start
    train_adapters(warm, cold)
    warm._reset(batch_of(7))
    cold._reset(batch_of(7))
    a, b = a_and_b(warm)
    assert torch.equal(a, drawn + 1.0) and not b.any()
    assert not torch.equal(a_and_b(cold)[0], drawn + 1.0) and not a_and_b(cold)[1].any()
    warm.start_phase()
    warm._reset(batch_of(7))
    assert torch.equal(a_and_b(warm)[0], a_and_b(cold)[0])


def test_warm_start_draws_a_short_batch_its_own_a():
    """The 04-23 record builds a fresh adapter for a batch with fewer documents than rows: the warm A
    does not carry into a short batch, and the batch after a short one draws too."""
    warm, cold = warm_and_cold_scorers()
    warm._reset(batch_of(3))
    train_adapters(warm)
    for scorer in (warm, cold):
        scorer._reset(batch_of(7, size=2))
    assert torch.equal(a_and_b(warm)[0], a_and_b(cold)[0]) and not a_and_b(warm)[1].any()
    train_adapters(warm)
    for scorer in (warm, cold):
        scorer._reset(batch_of(9))
    assert torch.equal(a_and_b(warm)[0], a_and_b(cold)[0])


def test_a_stage_runs_its_short_batch_last_on_its_rank():
    """At equal cost (one chunk, one window width) the full batch runs first, although its first document
    comes later in the stream: the short batch never sits between two warm-started full batches."""
    docs = [Document(0, 0, 5), Document(1, 6, 6), Document(2, 13, 7)]
    assert plan_batches(docs, 2, 0, 1, 8, 64, 16) == [[docs[2], docs[1]], [docs[0]]]


def test_phased_ttt_redraws_a_once_per_stage_with_warm_start(monkeypatch):
    """14 documents, 4 per batch, a 6-document prefix in 2 phases: stages of 3, 3 and 8 documents, i.e.
    four batches; A is drawn when the adapters are built and at each stage's first batch, and kept for
    the last stage's second batch."""
    lengths = [70, 5, 33, 12, 90, 0, 20, 45, 8, 60, 17, 28, 3, 50]
    tokens = synthetic_val(lengths, seed=3)
    keeps = []
    reset = BatchedLoRA.reset

    def recording_reset(self, generator=None, keep_a=False):
        keeps.append(keep_a)
        reset(self, generator, keep_a)

    monkeypatch.setattr(BatchedLoRA, "reset", recording_reset)
    cfg = small_eval_config(ttt={"lora_alpha": 144.0, "warm_start_a": True})
    warm = evaluate(tiny_model(**SWITCHES), tokens, synthetic_luts(), cfg, progress=False)
    assert keeps == [False, False, False, False, True]
    cold = evaluate(tiny_model(**SWITCHES), tokens, synthetic_luts(), small_eval_config(), progress=False)
    assert warm["ttt_tokens"] == cold["ttt_tokens"] == tokens.numel() - 1
    assert warm["ttt_bpb"] != pytest.approx(cold["ttt_bpb"], rel=1e-6)


def test_bad_lora_alpha_is_one_line_error():
    with pytest.raises(ValueError, match=r"evaluation\.ttt\.lora_alpha=0.0 must be positive"):
        TTTConfig(lora_alpha=0.0)


def test_bad_gate_window_is_one_line_error():
    with pytest.raises(ValueError, match="gate_window=40 must lie in 1..model_dim=32"):
        GPTConfig(**{**TINY, "smear_gate": True, "gate_window": 40})


# ----------------------------------------------------------------------------- artifact


def test_frontier_artifact_round_trips_its_switches_and_gates(tmp_path):
    model = tiny_model(**SWITCHES)
    batches = [words((2, 32), seed=s) for s in range(3)]
    cfg = ExportConfig(passthrough_max_numel=0, brotli_quality=5, budget_bytes=10**9, calibration_batches=3,
                       calibration_seq_len=32, calibration_batch_seqs=2)
    report = export_model(model, batches, cfg, tmp_path)
    loaded = artifact.load(report.artifact_path)
    again = artifact.load(report.artifact_path)
    assert loaded.config == model.config and loaded.config.smear_gate and loaded.config.sparse_attn_gate
    original = dict(model.named_parameters())
    for name, param in loaded.named_parameters():
        if name in NEW_PARAMETERS:
            assert torch.equal(param, original[name].half().float()), name
    tokens = words((2, 24), seed=11)
    with torch.no_grad():
        logits = loaded(tokens)
        assert torch.equal(logits, again(tokens))
        cosine = torch.nn.functional.cosine_similarity(logits.flatten(), model(tokens).flatten(), dim=0)
        assert cosine > 0.85, float(cosine)  # quantization noise, not another model
        assert not torch.allclose(logits, with_switches(copy.deepcopy(loaded), smear_gate=False)(tokens))


# ----------------------------------------------------------------------------- configs


def test_frontier_yaml_on_the_record_changes_exactly_the_frontier_fields(capsys):
    import yaml

    from lit_golf.cli import main

    def printed(*configs: str) -> dict:
        args = [a for name in configs for a in ("--config", name)]
        with pytest.raises(SystemExit) as done:
            main(["fit", *args, "--print_config"])
        assert done.value.code in (0, None)
        return flatten(yaml.safe_load(capsys.readouterr().out))

    record, frontier = printed("record"), printed("record", "frontier")
    expected = {
        "model.gpt.smear_gate": True, "model.gpt.sparse_attn_gate": True, "model.gpt.sparse_attn_gate_scale": 0.5,
        "model.gpt.fused_softcap_ce": True, "model.optim.muon_backend": "polar_express", "model.optim.beta2": 0.99,
        "model.training.warmdown_frac": 0.85, "model.training.min_lr": 0.1,
        "model.evaluation.ttt.lora_rank": 80, "model.evaluation.ttt.lora_alpha": 144.0,
        "model.evaluation.ttt.warm_start_a": True, "model.evaluation.ttt.beta2": 0.99,
        "model.evaluation.global_sgd.prefix_docs": 2500,
    }
    export = {  # the frontier's export (issue 18), wherever the config keeps the export's settings
        "mlp_clip_sigmas": 11.5, "embed_clip_sigmas": 14.0, "schemes.attn": "lqer_asym", "schemes.mlp": "lqer_asym",
        "schemes.embed": "lqer_asym", "schemes.gates": "int8_row", "per_group.enabled": True,
    }
    for suffix, value in export.items():
        keys = [key for key in frontier if key.endswith(f"config.{suffix}")]
        assert len(keys) == 1, suffix
        expected[keys[0]] = value
    changed = {key: value for key, value in frontier.items() if record.get(key) != value}
    assert changed == expected
    assert frontier["model.evaluation.ttt.weight_decay"] == 0.5 and frontier["model.gpt.gate_window"] == 12
    assert set(record) == set(frontier)


def flatten(tree, prefix: str = "") -> dict:
    """`{"a.b.0.c": leaf}` from nested dicts and lists (an empty one is a leaf)."""
    if not isinstance(tree, (dict, list)) or not tree:
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    flat = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# ----------------------------------------------------------------------------- fused training loss (CUDA)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused loss is a CUDA Triton kernel")
def test_fused_loss_trains_like_the_exact_loss_and_evaluation_keeps_the_exact_path():
    fused_ce = pytest.importorskip("lit_golf.kernels.fused_ce")
    if not fused_ce.fused_ce_available():
        pytest.skip("Triton is not available")
    exact = tiny_model(**SWITCHES).cuda()
    fused = with_switches(exact, fused_softcap_ce=True).cuda()
    assert fused.fused_loss is not None and exact.fused_loss is None
    tokens, targets = words((2, 32), seed=12).cuda(), words((2, 32), seed=13).cuda()
    lora = BatchedLoRA(exact, rows=2, rank=4, alpha=144.0)
    with torch.no_grad():
        lora.B["head"][0].normal_(0.0, 0.05)  # the head delta must reach the fused loss
    losses, grads = [], []
    for model in (exact, fused):
        model.train()
        loss = model(tokens, targets, lora=lora)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    assert grads[1].keys() == grads[0].keys() and NEW_PARAMETERS <= grads[0].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():
        exact.eval()
        fused.eval()
        assert torch.equal(fused(tokens, targets, reduction="none"), exact(tokens, targets, reduction="none"))
