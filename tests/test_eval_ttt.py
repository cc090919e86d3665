"""Phased LoRA TTT: causal (score before learn), SGD only on scored documents, exact coverage on 1 and 2 ranks."""

from __future__ import annotations

import bisect
import json

import pytest
import torch
from test_eval_support import (
    BOS,
    VOCAB,
    run_on_ranks,
    small_eval_config,
    synthetic_luts,
    synthetic_val,
    tiny_model,
)

from lit_golf.data.documents import find_documents
from lit_golf.data.tokenizer import target_bytes
from lit_golf.eval.config import LEGACY_FIELDS, EvalConfig, TTTConfig
from lit_golf.eval.global_sgd import global_sgd
from lit_golf.eval.plain import eval_plain
from lit_golf.eval.runner import evaluate
from lit_golf.eval.ttt import TTTTrace, build_stages
from lit_golf.eval.valset import ValSet

# 14 documents of mixed length: some longer than the 32-token context, some a single target
LENGTHS = [70, 5, 33, 12, 90, 0, 20, 45, 8, 60, 17, 28, 3, 50]
CHUNK = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def val_tokens() -> torch.Tensor:
    return synthetic_val(LENGTHS, seed=3)


def run_ttt(tokens: torch.Tensor, cfg: EvalConfig, model=None) -> tuple[dict, TTTTrace]:
    trace = TTTTrace()
    results = evaluate(model or tiny_model(), tokens, synthetic_luts(), cfg, progress=False, trace=trace)
    return results, trace


def chunk_targets(doc, ci: int) -> range:
    """Stream positions of the targets of chunk `ci` of `doc`."""
    return range(doc.start + 1 + ci * CHUNK, doc.start + 1 + min((ci + 1) * CHUNK, doc.num_targets))


def test_stages_follow_the_record_phases(val_tokens):
    docs = find_documents(val_tokens, BOS)
    stages = build_stages(docs, small_eval_config())
    assert [s.name for s in stages] == ["phase1", "phase2", "rest"]
    assert [len(s.docs) for s in stages] == [3, 3, len(docs) - 6]
    assert [None if s.sgd_docs is None else len(s.sgd_docs) for s in stages] == [3, 6, None]
    assert build_stages(docs, small_eval_config(global_sgd={"enabled": False}))[0].docs == docs


def test_prefix_is_the_longest_documents_or_the_stream_start(val_tokens):
    """The record's prefix: the first documents of its processing order (longest first), not of the stream."""
    docs = find_documents(val_tokens, BOS)
    longest = sorted(docs, key=lambda d: -d.num_targets)
    stages = build_stages(docs, small_eval_config())
    assert [d.num_targets for s in stages[:2] for d in s.docs] == [d.num_targets for d in longest[:6]]
    assert stages[1].sgd_docs == stages[0].docs + stages[1].docs  # documents in scored order
    assert sorted(d.index for s in stages for d in s.docs) == [d.index for d in docs]
    stream = build_stages(docs, small_eval_config(global_sgd={"prefix_order": "stream"}))
    assert [d.index for s in stream[:2] for d in s.docs] == list(range(6))


def test_every_target_is_scored_once_with_exact_bytes(val_tokens):
    results, trace = run_ttt(val_tokens, small_eval_config())
    docs = find_documents(val_tokens, BOS)
    scored = [p for (d, ci) in trace.chunk_nll for p in chunk_targets(docs[d], ci)]
    assert sorted(scored) == list(range(1, val_tokens.numel()))
    all_bytes = target_bytes(val_tokens[:-1], val_tokens[1:], synthetic_luts()).sum().item()
    assert (results["ttt_tokens"], results["ttt_bytes"]) == (val_tokens.numel() - 1, all_bytes)
    assert (results["val_tokens"], results["val_bytes"]) == (val_tokens.numel() - 1, all_bytes)
    assert sum(trace.chunk_nll.values()) == pytest.approx(results["ttt_loss"] * results["ttt_tokens"], rel=1e-9)


MORE_COMPUTE = {"grad_steps": 2, "replay_chunks": 1, "lr_schedule": "warmup", "lr_schedule_chunks": 2}


@pytest.mark.parametrize("ttt", [{}, MORE_COMPUTE], ids=["default", "more_compute_per_token"])
def test_later_tokens_never_change_earlier_chunk_scores(val_tokens, ttt):
    """Rewrite document 0 from chunk 3 on: its chunks 0-2 and every other phase-1 document score the same."""
    cfg = small_eval_config(ttt=ttt)
    docs = find_documents(val_tokens, BOS)
    doc, k = docs[0], 3
    edited = val_tokens.clone()
    span = slice(doc.start + 1 + k * CHUNK, doc.end - 1)  # targets of chunks >= k, keeping the closing BOS
    edited[span] = (edited[span] - 2 + 7) % (VOCAB - 2) + 2  # every token changes, none becomes BOS
    _, before = run_ttt(val_tokens, cfg)
    _, after = run_ttt(edited, cfg)
    assert before.chunk_nll.keys() == after.chunk_nll.keys()
    phase1 = {d.index for d in build_stages(docs, cfg)[0].docs}
    for key, nll in before.chunk_nll.items():
        d, ci = key
        if d == doc.index and ci < k or d != doc.index and d in phase1:
            assert after.chunk_nll[key] == pytest.approx(nll, rel=1e-12, abs=1e-12), key
    assert after.chunk_nll[(doc.index, k)] != pytest.approx(before.chunk_nll[(doc.index, k)], rel=1e-6)
    later = [key for key in before.chunk_nll if key[0] not in phase1]  # the SGD did learn from the edit
    assert any(after.chunk_nll[key] != pytest.approx(before.chunk_nll[key], rel=1e-9) for key in later)


def sgd_trained_positions(sgd_docs, chunk: int) -> set[int]:
    """Stream positions (inputs and targets) of all SGD chunks but the last, documents laid end to end in order."""
    left = (sum(d.num_targets for d in sgd_docs) - 1) // chunk * chunk
    positions = set()
    for doc in sgd_docs:
        take = min(left, doc.num_targets)
        if take:
            positions.update(range(doc.start, doc.start + take + 1))
        left -= take
    return positions


def assert_score_first(events_by_rank: list[list[tuple]], tokens: torch.Tensor, cfg: EvalConfig) -> None:
    """Score first, on any number of ranks, for the adapters (`assert_adapters_learn_only_scored_text`) and the
    global SGD: each phase's SGD reads only documents that some rank had scored before it entered that phase's
    SGD (the SGD's all-reduce waits for every rank, so no weight a document is scored with has seen it), all
    ranks together read exactly the prefix so far but its last chunk (as the record does), every epoch, and the
    rest is scored after the last SGD."""
    docs = find_documents(tokens, BOS)
    stages = build_stages(docs, cfg)
    sgd_phases = [phase for phase, stage in enumerate(stages, 1) if stage.sgd_docs is not None]
    starts = [d.start for d in docs]
    scored_before: dict[int, set[int]] = {}  # phase -> documents any rank scored before its SGD of that phase
    owners_read: dict[int, set[int]] = {}
    read_by_phase: dict[int, set[int]] = {}
    scored_by_rank, rest_scored = [], set()
    for events in events_by_rank:
        assert_adapters_learn_only_scored_text(events, docs, cfg)
        scored, phases = set(), []
        for event in events:
            if event[0] == "scored":
                scored.add(event[1])
            if event[0] != "sgd_read":
                continue
            _, phase, a, b = event
            if phase not in phases:
                phases.append(phase)
                scored_before.setdefault(phase, set()).update(scored)
            owners_read.setdefault(phase, set()).update(bisect.bisect_left(starts, p) - 1 for p in range(a + 1, b))
            read_by_phase.setdefault(phase, set()).update(range(a, b))
        assert phases == sgd_phases  # every rank takes part in each phase's SGD, in order
        last_sgd = max(i for i, e in enumerate(events) if e[0] == "sgd_read")
        rest_scored |= {e[1] for e in events[last_sgd:] if e[0] == "scored"}
        scored_by_rank.append(scored)
    for phase, owners in owners_read.items():
        early = owners - scored_before[phase]
        assert not early, f"phase {phase} SGD read documents {sorted(early)} before any rank scored them"
    for phase in sgd_phases:
        assert read_by_phase[phase] == sgd_trained_positions(stages[phase - 1].sgd_docs, cfg.global_sgd.chunk_tokens)
    assert rest_scored == {d.index for d in stages[-1].docs}
    assert sorted(i for scored in scored_by_rank for i in scored) == [d.index for d in docs]  # each once


def assert_adapters_learn_only_scored_text(events: list[tuple], docs, cfg: EvalConfig) -> None:
    """One rank's per-document TTT: every adapter step reads (inputs and targets) only its own document's
    tokens scored before the step, and learns from each chunk exactly as often as the settings say: `grad_steps`
    times once it is scored, and once more at each of the next `replay_chunks` chunks, while the document goes
    on (no step learns for a document that has nothing left to score)."""
    chunk, scored, reads = cfg.ttt.chunk_size, set(), {}
    for event in events:
        if event[0] == "chunk":
            _, d, a, b = event
            assert scored.isdisjoint(range(a, b)), f"document {d}: targets {a}..{b} scored twice"
            scored.update(range(a, b))
        elif event[0] == "ttt_read":
            _, d, a, b = event
            doc = docs[d]
            assert doc.start <= a < b <= doc.end, f"document {d}: step read {a}..{b} outside the document"
            unscored = set(range(max(a, doc.start + 1), b)) - scored
            assert not unscored, f"document {d}: an adapter step read targets {sorted(unscored)} before they were scored"
            key = (d, (b - 2 - doc.start) // chunk)  # the chunk whose last target is b - 1
            reads[key] = reads.get(key, 0) + 1
    expected = {}
    for d in {key[0] for key in reads} | {e[1] for e in events if e[0] == "chunk"}:
        n = docs[d].num_targets
        for ci in range(-(-n // chunk)):
            goes_on = [at for at in range(ci, ci + cfg.ttt.replay_chunks + 1) if n > (at + 1) * chunk]
            count = (cfg.ttt.grad_steps if ci in goes_on else 0) + len(goes_on) - (ci in goes_on)
            if count:
                expected[(d, ci)] = count
    assert reads == expected


@pytest.mark.parametrize("order", ["longest_first", "stream"])
def test_global_sgd_reads_only_documents_already_scored(val_tokens, order):
    cfg = small_eval_config(global_sgd={"prefix_order": order})
    _, trace = run_ttt(val_tokens, cfg)
    assert_score_first([trace.events], val_tokens, cfg)


def _score_first_traces_on_rank(tokens: torch.Tensor) -> dict[str, list[tuple]]:
    """This rank's TTT events under each prefix order (one process launch for both)."""
    events = {}
    for order in ("longest_first", "stream"):
        trace = TTTTrace()
        cfg = small_eval_config(global_sgd={"prefix_order": order})
        evaluate(tiny_model(), tokens, synthetic_luts(), cfg, progress=False, trace=trace)
        events[order] = trace.events
    return events


@pytest.mark.slow
def test_global_sgd_reads_only_documents_already_scored_on_two_gloo_ranks(val_tokens, tmp_path):
    """The read trace of both ranks, both prefix orders: a rank's SGD may read a document the other rank scored."""
    ranks = run_on_ranks(_score_first_traces_on_rank, 2, tmp_path, val_tokens, start_method="fork")
    for order in ("longest_first", "stream"):
        events_by_rank = [rank[order] for rank in ranks]
        assert all(any(e[0] == "scored" for e in events) for events in events_by_rank)
        assert_score_first(events_by_rank, val_tokens, small_eval_config(global_sgd={"prefix_order": order}))


@pytest.mark.parametrize("context_len", [32, 128])
def test_without_learning_each_chunk_is_scored_from_its_own_document_window(val_tokens, context_len):
    """lr 0 and no phases: chunk scores equal the plain model on the chunk's own-document window."""
    cfg = small_eval_config(ttt={"lr": 0.0, "context_len": context_len}, global_sgd={"enabled": False})
    model = tiny_model()
    _, trace = run_ttt(val_tokens, cfg, model)
    for (d, ci), nll in trace.chunk_nll.items():
        doc = find_documents(val_tokens, BOS)[d]
        lo, hi = ci * CHUNK, min((ci + 1) * CHUNK, doc.num_targets)
        first = doc.start + max(0, hi - context_len)
        x, y = val_tokens[first : doc.start + hi], val_tokens[first + 1 : doc.start + hi + 1]
        with torch.no_grad():
            expected = model(x[None], y[None], reduction="none")[0, doc.start + lo - first :].double().sum()
        assert nll == pytest.approx(expected.item(), rel=1e-5), (d, ci)


def test_ttt_off_is_plain_eval_and_the_model_is_left_untouched(val_tokens):
    model = tiny_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():  # as in Lightning's test loop
        full = evaluate(model, val_tokens, synthetic_luts(), small_eval_config(sliding={"enabled": True}), progress=False)
    plain_only = evaluate(model, val_tokens, synthetic_luts(), small_eval_config(ttt={"enabled": False}), progress=False)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(k.startswith("ttt") for k in plain_only)
    plain = eval_plain(model, ValSet.build(val_tokens, synthetic_luts(), "cpu"), small_eval_config()).totals()
    assert plain_only["val_bpb"] == full["val_bpb"] == pytest.approx(plain["bpb"], rel=1e-12)
    assert full["ttt_gain"] == pytest.approx(full["val_bpb"] - full["ttt_bpb"])
    assert full["ttt_bpb"] != pytest.approx(full["val_bpb"], rel=1e-4)  # TTT did adapt
    assert full["sliding_tokens"] == full["val_tokens"] == full["ttt_tokens"] == val_tokens.numel() - 1


def test_max_docs_limits_every_evaluator_to_the_first_documents(val_tokens):
    results = evaluate(tiny_model(), val_tokens, synthetic_luts(), small_eval_config(max_docs=4), progress=False)
    docs = find_documents(val_tokens, BOS)
    assert results["ttt_docs"] == 4
    assert results["val_tokens"] == results["ttt_tokens"] == docs[3].end - 1


def _evaluate_on_rank(tokens: torch.Tensor) -> tuple[dict, dict, dict, list]:
    """evaluate() with a trace, the weights one global SGD on the phase-1 documents produces, and the stages."""
    cfg = small_eval_config(sliding={"enabled": True})
    trace = TTTTrace()
    results = evaluate(tiny_model(), tokens, synthetic_luts(), cfg, progress=False, trace=trace)
    model = tiny_model()
    stages = build_stages(find_documents(tokens, BOS), cfg)
    global_sgd(model, ValSet.build(tokens, synthetic_luts(), "cpu"), stages[0].docs, cfg)
    return results, trace.chunk_nll, model.state_dict(), [[d.index for d in s.docs] for s in stages]


@pytest.mark.slow
def test_two_gloo_ranks_score_every_token_once_and_match_one_rank(val_tokens, tmp_path):
    single, single_chunks, single_sgd, single_stages = _evaluate_on_rank(val_tokens)
    ranks = run_on_ranks(_evaluate_on_rank, 2, tmp_path, val_tokens)
    assert [stages for *_, stages in ranks] == [single_stages, single_stages]  # the same prefix on every rank
    all_bytes = target_bytes(val_tokens[:-1], val_tokens[1:], synthetic_luts()).sum().item()
    chunks = [set(chunk_nll) for _, chunk_nll, _, _ in ranks]
    assert chunks[0] and chunks[1] and not chunks[0] & chunks[1]
    assert chunks[0] | chunks[1] == set(single_chunks)
    merged = {**ranks[0][1], **ranks[1][1]}
    phase1 = {d.index for d in build_stages(find_documents(val_tokens, BOS), small_eval_config())[0].docs}
    for key, nll in single_chunks.items():  # same batches and adapters: same scores before any SGD
        if key[0] in phase1:
            assert merged[key] == pytest.approx(nll, rel=1e-9), key
    for results, _, sgd, _ in ranks:
        for prefix in ("val", "sliding", "ttt"):
            assert (results[f"{prefix}_tokens"], results[f"{prefix}_bytes"]) == (val_tokens.numel() - 1, all_bytes)
        assert results["val_bpb"] == pytest.approx(single["val_bpb"], rel=1e-12)
        assert results["sliding_bpb"] == pytest.approx(single["sliding_bpb"], rel=1e-12)
        # the SGD step is rank-count invariant up to float rounding ...
        assert all(torch.allclose(sgd[k], v, rtol=0, atol=1e-6) for k, v in single_sgd.items())
        # ... which AdamW's sign-like first steps (beta1 = 0, toy lr) then amplify over later chunks
        assert results["ttt_bpb"] == pytest.approx(single["ttt_bpb"], rel=2e-2)


def test_bounding_rows_per_pass_changes_nothing(val_tokens):
    """Rows run in slices of one (`ttt.tokens_per_pass` below a row's width) score like the whole batch at once."""
    whole = run_ttt(val_tokens, small_eval_config(global_sgd={"enabled": False}))[1].chunk_nll
    sliced = run_ttt(val_tokens, small_eval_config(ttt={"tokens_per_pass": 16}, global_sgd={"enabled": False}))[1].chunk_nll
    assert sliced.keys() == whole.keys()
    for key, nll in whole.items():
        assert sliced[key] == pytest.approx(nll, rel=1e-6), key


def test_bad_eval_config_is_one_line_error():
    with pytest.raises(ValueError, match=r"evaluation\.ttt\.chunk_size=0 must be positive; evaluation\.ttt\.lora_targets "
                       r"has unknown sites \['x'\]"):
        TTTConfig(chunk_size=0, lora_targets=("q", "x"))
    with pytest.raises(ValueError, match=r"evaluation\.ttt\.chunk_size=64 must not exceed evaluation\.ttt\.context_len=32"):
        EvalConfig(ttt=TTTConfig(chunk_size=64, context_len=32))
    with pytest.raises(ValueError, match=r"unknown TTTConfig fields \['rank'\]"):
        EvalConfig.from_dict({"ttt": {"rank": 4}})


def test_eval_config_round_trips_as_nested_dicts():
    cfg = small_eval_config(max_docs=7, ttt={"lora_targets": ("q", "v"), "lora_alpha": 8.0},
                            global_sgd={"prefix_order": "stream"})
    values = cfg.to_dict()
    assert values["ttt"]["lora_alpha"] == 8.0 and values["global_sgd"]["prefix_order"] == "stream"
    assert values["plain"] == {"seq_len": 32, "batch_seqs": 3} and values["max_docs"] == 7
    restored = EvalConfig.from_dict(json.loads(json.dumps(values)))  # as results.json stores it: tuples become lists
    assert restored == cfg and isinstance(restored.ttt, TTTConfig) and restored.ttt.lora_targets == ("q", "v")
    assert EvalConfig.from_dict({}) == EvalConfig()


def test_flat_legacy_eval_keys_name_their_new_place():
    """A results.json written before issue 15 keeps flat keys: one line says where each one went."""
    with pytest.raises(ValueError, match=r"^flat EvalConfig fields of an older lit_golf .*: ttt_lora_rank -> "
                       r"evaluation\.ttt\.lora_rank, phased_enabled -> evaluation\.global_sgd\.enabled, "
                       r"eval_seq_len -> evaluation\.plain\.seq_len$") as error:
        EvalConfig.from_dict({"ttt_lora_rank": 4, "phased_enabled": False, "eval_seq_len": 64, "max_docs": 3})
    assert "\n" not in str(error.value)
    assert LEGACY_FIELDS["global_sgd_chunk_tokens"] == "global_sgd.chunk_tokens"
    assert LEGACY_FIELDS["sliding_stride"] == "sliding.stride" and LEGACY_FIELDS["ttt_compile"] == "ttt.compile"
