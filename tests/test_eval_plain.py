"""Documents, batch plans and plain/sliding evaluation: every target scored exactly once, values by hand."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from test_eval_support import BOS, small_eval_config, synthetic_luts, synthetic_val, tiny_model

from lit_golf.data.documents import find_documents, truncate_to_documents
from lit_golf.data.tokenizer import target_bytes
from lit_golf.eval.plain import document_masked_nll, eval_plain, eval_sliding, plain_windows, sliding_windows
from lit_golf.eval.plan import phase_boundaries, plan_batches
from lit_golf.eval.valset import ValidationDataError, ValSet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def target_positions_of(docs) -> list[int]:
    return [p for d in docs for p in range(d.start + 1, d.start + d.num_targets + 1)]


@pytest.mark.parametrize(
    "tokens",
    [
        [1, 5, 6, 1, 7, 1, 8, 9, 9],  # ordinary
        [4, 5, 1, 6, 7],  # no BOS at the start: the leading stretch is a document
        [1, 1, 5, 1, 1],  # empty documents and a trailing BOS
        [1, 5],
    ],
)
def test_documents_tile_the_targets_exactly(tokens):
    tokens = torch.tensor(tokens)
    docs = find_documents(tokens, BOS)
    positions = target_positions_of(docs)
    assert sorted(positions) == positions == list(range(1, tokens.numel()))
    assert all(tokens[d.start] == BOS or d.start == 0 for d in docs)
    assert [d.index for d in docs] == list(range(len(docs)))


def test_truncation_keeps_whole_first_documents():
    tokens = synthetic_val([5, 9, 3, 12])
    docs = find_documents(tokens, BOS)
    cut = truncate_to_documents(tokens, BOS, 2)
    assert find_documents(cut, BOS) == docs[:2]
    assert cut[-1] == BOS  # the end of document 2 (the next BOS) is its last target
    assert truncate_to_documents(tokens, BOS, None) is tokens
    assert truncate_to_documents(tokens, BOS, 10).equal(tokens)


def test_phase_boundaries_of_the_record():
    assert phase_boundaries(50_000, 2000, 3) == [666, 1333, 2000]
    assert phase_boundaries(5, 2000, 3) == [1, 3, 5]


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_batch_plan_scores_every_document_once_and_balances_ranks(world):
    lengths = torch.randint(1, 300, (101,), generator=torch.Generator().manual_seed(world)).tolist()
    docs = find_documents(synthetic_val(lengths), BOS)
    plans = [plan_batches(docs, 8, rank, world, 8, 64, 16) for rank in range(world)]
    seen = sorted(d.index for plan in plans for batch in plan for d in batch)
    assert seen == list(range(len(docs)))
    assert all(0 < len(batch) <= 8 for plan in plans for batch in plan)
    for plan in plans:  # each batch holds neighbours in the length order: similar lengths
        for batch in plan:
            assert [d.num_targets for d in batch] == sorted((d.num_targets for d in batch), reverse=True)
    assert plans == [plan_batches(docs, 8, rank, world, 8, 64, 16) for rank in range(world)]


@pytest.mark.parametrize(("num_targets", "seq_len", "stride"), [(100, 32, 8), (96, 32, 8), (20, 32, 8), (65, 16, 16)])
def test_windows_score_every_target_once(num_targets, seq_len, stride):
    for windows, min_context in ((plain_windows(num_targets, seq_len), 0), (sliding_windows(num_targets, seq_len, stride), seq_len - stride)):
        scored = []
        for start, length, score_from in zip(windows.start.tolist(), windows.length.tolist(), windows.score_from.tolist(), strict=True):
            assert 0 < length <= seq_len
            for t in range(start + score_from, start + length):
                scored.append(t)
                assert t - start >= min(t, min_context)  # sliding: full context once available
        assert scored == list(range(num_targets))
        halves = [windows.shard(r, 2) for r in range(2)]
        assert torch.cat([h.start for h in halves]).equal(windows.start)


def hand_scored(model, tokens, luts, windows) -> tuple[float, float]:
    """NLL and bytes of each window's scored tail, one window at a time, straight from the model: each
    document piece of the window (cut at the window start and at every BOS) runs on its own."""
    nll_sum, nbytes = 0.0, 0.0
    for start, length, score_from in zip(windows.start.tolist(), windows.length.tolist(), windows.score_from.tolist(), strict=True):
        x, y = tokens[start : start + length], tokens[start + 1 : start + length + 1]
        cuts = sorted({0, *(x == BOS).nonzero().flatten().tolist()}) + [length]
        with torch.no_grad():
            nll = torch.cat([model(x[None, a:b], y[None, a:b], reduction="none")[0] for a, b in pairwise(cuts)])
        nll_sum += nll[score_from:].double().sum().item()
        nbytes += target_bytes(x, y, luts)[score_from:].sum().item()
    return nll_sum, nbytes


@pytest.mark.parametrize("sliding", [False, True])
def test_plain_and_sliding_equal_hand_computation(sliding):
    model, luts = tiny_model(), synthetic_luts()
    tokens = synthetic_val([40, 7, 90, 3, 25])  # 170 tokens: a partial final window
    cfg = small_eval_config()
    val = ValSet.build(tokens, luts, "cpu")
    evaluator, windows = (
        (eval_sliding, sliding_windows(val.num_targets, cfg.plain.seq_len, cfg.sliding.stride))
        if sliding
        else (eval_plain, plain_windows(val.num_targets, cfg.plain.seq_len))
    )
    totals = evaluator(model, val, cfg).totals()
    nll_sum, nbytes = hand_scored(model, tokens, luts, windows)
    assert totals["tokens"] == tokens.numel() - 1
    assert totals["bytes"] == nbytes == target_bytes(tokens[:-1], tokens[1:], luts).sum().item()
    assert totals["bpb"] == pytest.approx(nll_sum / math.log(2) / nbytes, rel=1e-6)


def with_first_body_rewritten(tokens: torch.Tensor) -> torch.Tensor:
    """`tokens` with the body of its first document (40 tokens after the leading BOS) replaced, never by a BOS."""
    changed = tokens.clone()
    changed[1:41] = (changed[1:41] + 3) % 60 + 2
    return changed


def test_window_tokens_never_see_earlier_documents():
    """A document's scores inside a window do not depend on the documents before it in that window."""
    model, luts = tiny_model(), synthetic_luts()
    tokens = synthetic_val([40, 7, 30])
    changed = with_first_body_rewritten(tokens)
    scores = []
    for t in (tokens, changed):
        val = ValSet.build(t, luts, "cpu")
        batch = val.gather(torch.tensor([0]), torch.tensor([val.num_targets]), val.num_targets)
        with torch.no_grad():
            scores.append(document_masked_nll(model, batch.inputs, batch.targets, BOS)[0])
    second_doc = slice(41, val.num_targets)  # targets from the second document's BOS on
    assert torch.equal(scores[0][second_doc], scores[1][second_doc])
    assert not torch.equal(scores[0][:40], scores[1][:40])


def test_bad_validation_tokens_are_one_line_errors():
    luts = synthetic_luts()
    with pytest.raises(ValidationDataError, match="token id 64 is outside the tokenizer's 64 ids"):
        ValSet.build(torch.tensor([1, 5, 64]), luts, "cpu")
    with pytest.raises(ValidationDataError, match="at least 2 ids"):
        ValSet.build(torch.tensor([1]), luts, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA varlen attention kernel")
def test_packed_rows_on_cuda_match_one_row_per_call():
    """On CUDA the varlen kernels score all window rows as one packed row; the result must equal the
    portable path (one row per call, dense document mask, fp32) within bf16 error, and a document's
    scores must not move when an earlier document in its row changes."""
    from dataclasses import replace

    from lit_golf.attention import available_backends
    from lit_golf.model import GPT

    fast = next(n for n in available_backends("cuda") if n not in ("pure", "sdpa"))
    trained = tiny_model()
    with torch.no_grad():  # std 0.1 keeps the tiny model well conditioned in bf16 (0.3 amplifies rounding to ~1 nat)
        for p in trained.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    reference, packed = (GPT(replace(trained.config, attention_backend=name)).cuda().eval() for name in ("pure", fast))
    for model in (reference, packed):
        model.load_state_dict(trained.state_dict())
        model.looping_active = trained.looping_active
    tokens = synthetic_val([40, 7, 90, 3, 25, 61]).cuda()
    changed = with_first_body_rewritten(tokens)
    width = 64
    rows = (tokens.numel() - 1) // width

    def windows(t):
        return t[: rows * width].view(rows, width), t[1 : rows * width + 1].view(rows, width)

    with torch.no_grad():
        want = document_masked_nll(reference, *windows(tokens), BOS)
        with torch.autocast("cuda", torch.bfloat16):
            got, got_changed = (document_masked_nll(packed, *windows(t), BOS).float() for t in (tokens, changed))
    assert got.shape == want.shape == (rows, width)
    assert (got - want).abs().max() < 0.15
    assert torch.allclose(got[0, 41:], got_changed[0, 41:], atol=1e-3)  # from the second document's BOS on
    assert (got[0, :40] - got_changed[0, :40]).abs().max() > 0.1
