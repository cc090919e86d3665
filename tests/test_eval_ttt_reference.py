"""The batched TTT scorer against a plain reference: one document at a time, its own adapter and AdamW, a loop
over chunks. Every chunk's NLL must agree, so the batching (rows, padding, windows, row slices, the shared
optimizer) changes nothing but speed, whatever the steps per chunk, the replay or the schedule.

In float64: AdamW with beta1 = 0 moves every coordinate by about the learning rate whatever its gradient's size,
so float32 rounding (a batched matmul sums in another order) grows chunk by chunk into percent-level
differences of a chaotic toy run, bug or not. In float64 the two agree to 1e-9."""

from __future__ import annotations

import pytest
import torch
from test_eval_support import BOS, small_eval_config, synthetic_luts, synthetic_val, tiny_model

from lit_golf.data.documents import Document, find_documents
from lit_golf.eval.config import EvalConfig
from lit_golf.eval.lora import BatchedLoRA
from lit_golf.eval.metric import BitsPerByte
from lit_golf.eval.ttt import DocumentBatchScorer, TTTTrace, lr_scale
from lit_golf.eval.valset import ValSet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)

LENGTHS = [61, 40, 23, 9]  # one batch, longest first: rows end at different chunks, one inside its first window

SETTINGS = {
    "record": {},
    "grad_steps": {"grad_steps": 3},
    "replay": {"replay_chunks": 2, "lr_schedule": "warmup", "lr_schedule_chunks": 3},
    "sliced_rows": {"grad_steps": 2, "tokens_per_pass": 32},
    "frontier": {"lora_alpha": 8.0, "beta2": 0.99, "weight_decay": 0.5},
    "fixed_a": {"train_a": False, "grad_steps": 2},
}


def reference_chunk_nll(model, tokens: torch.Tensor, doc: Document, lora: BatchedLoRA, cfg: EvalConfig) -> list[float]:
    """Summed NLL of each chunk of `doc`, scored before the adapter learns from it: the loop the scorer batches."""
    ttt = cfg.ttt
    lora.A.requires_grad_(ttt.train_a)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=ttt.lr,
                                  betas=(ttt.beta1, ttt.beta2), eps=ttt.eps, weight_decay=ttt.weight_decay)
    n, size = doc.num_targets, ttt.chunk_size
    chunks = -(-n // size)

    def chunk_loss(ci: int) -> torch.Tensor:
        lo, hi = ci * size, min((ci + 1) * size, n)
        start = max(0, hi - ttt.context_len)  # inputs at document offsets start..hi-1 predict start+1..hi
        window = tokens[doc.start + start : doc.start + hi + 1]
        nll = model(window[None, :-1], window[None, 1:], lora=lora, reduction="none")[0]
        return nll[lo - start :]

    scores = []
    for ci in range(chunks):
        for group in optimizer.param_groups:
            group["lr"] = ttt.lr * lr_scale(ttt, ci)
        trained = [ci] * ttt.grad_steps + list(range(max(0, ci - ttt.replay_chunks), ci))
        for step, cj in enumerate(trained):
            loss = chunk_loss(cj)
            if step == 0:
                scores.append(loss.detach().double().sum().item())
            if ci + 1 == chunks:  # nothing left to score: no step
                break
            optimizer.zero_grad()
            loss.mean().backward()
            optimizer.step()
    return scores


@pytest.mark.parametrize("name", SETTINGS)
def test_batched_scorer_matches_one_document_at_a_time(name):
    torch.manual_seed(0)
    tokens = synthetic_val(LENGTHS, seed=5)
    cfg = small_eval_config(ttt={"lr": 3e-3, "batch_docs": len(LENGTHS), **SETTINGS[name]})
    model = tiny_model().eval().requires_grad_(False)
    docs = sorted(find_documents(tokens, BOS), key=lambda d: -d.num_targets)
    trace = TTTTrace()
    scorer = DocumentBatchScorer(model, ValSet.build(tokens, synthetic_luts(), "cpu"), cfg, BitsPerByte(), trace)
    scorer.score(docs)

    drawn = BatchedLoRA(model, len(docs), cfg.ttt.lora_rank, cfg.ttt.lora_targets, cfg.ttt.lora_alpha)
    drawn.reset(torch.Generator().manual_seed(docs[0].index))  # the scorer's draw for this batch

    def adapter(row: int) -> BatchedLoRA:
        lora = BatchedLoRA(model, 1, cfg.ttt.lora_rank, cfg.ttt.lora_targets, cfg.ttt.lora_alpha)
        with torch.no_grad():
            for site, slots in drawn.A.items():
                for mine, theirs in zip(lora.A[site], slots, strict=True):
                    mine.copy_(theirs[row : row + 1])
        return lora

    for row, doc in enumerate(docs):
        expected = reference_chunk_nll(model, tokens, doc, adapter(row), cfg)
        got = [trace.chunk_nll[(doc.index, ci)] for ci in range(len(expected))]
        assert got == pytest.approx(expected, rel=1e-9), (name, doc.num_targets)
    frozen = reference_chunk_nll(model, tokens, docs[0], adapter(0), small_eval_config(ttt={"lr": 0.0}))
    learned = [trace.chunk_nll[(docs[0].index, ci)] for ci in range(len(frozen))]
    assert learned[0] == pytest.approx(frozen[0], rel=1e-9)  # scored before any step
    assert all(a != pytest.approx(b, rel=1e-4) for a, b in zip(learned[1:], frozen[1:], strict=True))  # it learns


@pytest.mark.parametrize("train_a", [True, False])
def test_train_a_false_leaves_a_as_drawn_while_b_learns(train_a):
    tokens = synthetic_val(LENGTHS, seed=5)
    cfg = small_eval_config(ttt={"lr": 3e-3, "batch_docs": len(LENGTHS), "train_a": train_a})
    model = tiny_model().eval().requires_grad_(False)
    docs = sorted(find_documents(tokens, BOS), key=lambda d: -d.num_targets)
    scorer = DocumentBatchScorer(model, ValSet.build(tokens, synthetic_luts(), "cpu"), cfg, BitsPerByte(), None)
    scorer.score(docs)
    drawn = BatchedLoRA(model, len(docs), cfg.ttt.lora_rank, cfg.ttt.lora_targets, cfg.ttt.lora_alpha)
    drawn.reset(torch.Generator().manual_seed(docs[0].index))
    kept = [torch.equal(a, d) for a, d in zip(scorer.lora.A.parameters(), drawn.A.parameters(), strict=True)]
    assert all(kept) if not train_a else not any(kept)
    assert all(b.abs().sum() > 0 for b in scorer.lora.B.parameters())
