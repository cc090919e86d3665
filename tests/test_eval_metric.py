"""BitsPerByte: exact float64 sums, immune to module casts, equal to a hand computation on real text (1 and 2 ranks)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from conftest import SHARED
from test_eval_support import run_on_ranks

from lit_golf.data.tokenizer import build_byte_luts, load_tokenizer, target_bytes
from lit_golf.eval.metric import BitsPerByte

SP8192 = SHARED / "tokenizers/fineweb_8192_bpe.model"
needs_tokenizer = pytest.mark.skipif(not SP8192.is_file(), reason="shared SP-8192 tokenizer absent")

TEXTS = [
    "The quick brown fox jumps over the lazy dog, twice.",
    "Bits per byte counts every UTF-8 byte: café, naïve, 42 €.",
    "Contractions like don't, e-mail and U.S.A. count too.",
    "Numbers 3.14159 and symbols #@%& are scored as well.",
]


def real_text_tokens() -> tuple[torch.Tensor, int]:
    """Several documents `[BOS, ...]` of real text through SP-8192, and their UTF-8 length by hand."""
    sp = load_tokenizer(SP8192, vocab_size=8192)
    ids, nbytes = [], 0
    for text in TEXTS:
        assert sp.decode(sp.encode(text)) == text, "test text must round-trip for the hand byte count"
        ids += [sp.bos_id(), *sp.encode(text)]
        nbytes += len(text.encode("utf-8"))
    return torch.tensor(ids), nbytes


def nll_and_bytes(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    luts = build_byte_luts(load_tokenizer(SP8192), 8192)
    nll = torch.rand(ids.numel() - 1, generator=torch.Generator().manual_seed(0)) * 6
    return nll, target_bytes(ids[:-1], ids[1:], luts)


def _metric_on_rank(parts: int) -> dict:
    """Rank r updates with its (uneven) share of the tokens, in `parts` pieces of different shapes."""
    rank, world = dist.get_rank(), dist.get_world_size()
    ids, _ = real_text_tokens()
    nll, nbytes = nll_and_bytes(ids)
    cut = nll.numel() // 3  # rank 0 gets a third, rank 1 the rest
    share = slice(0, cut) if rank == 0 else slice(cut, None)
    metric = BitsPerByte()
    for nll_piece, bytes_piece in zip(nll[share].chunk(parts), nbytes[share].chunk(parts), strict=True):
        metric.update(nll_piece[None], bytes_piece[None])
    assert world == 2
    return {"bpb": float(metric.compute()), "loss": float(metric.loss()), **metric.totals()}


@needs_tokenizer
def test_bpb_equals_hand_computation_on_real_text():
    ids, utf8_bytes = real_text_tokens()
    nll, nbytes = nll_and_bytes(ids)
    assert int(nbytes.sum()) == utf8_bytes
    metric = BitsPerByte()
    for nll_piece, bytes_piece in zip(nll.split(7), nbytes.split(7), strict=True):
        metric.update(nll_piece, bytes_piece)
    expected_bpb = nll.double().sum().item() / math.log(2) / utf8_bytes
    assert metric.compute().item() == pytest.approx(expected_bpb, rel=1e-12)
    assert metric.loss().item() == pytest.approx(nll.double().mean().item(), rel=1e-12)
    assert metric.totals()["tokens"] == nll.numel() and metric.totals()["bytes"] == utf8_bytes


@needs_tokenizer
@pytest.mark.slow
def test_bpb_on_two_gloo_ranks_equals_hand_computation(tmp_path):
    ids, utf8_bytes = real_text_tokens()
    nll, _ = nll_and_bytes(ids)
    expected_bpb = nll.double().sum().item() / math.log(2) / utf8_bytes
    for result in run_on_ranks(_metric_on_rank, 2, tmp_path, 3):
        assert result["bpb"] == pytest.approx(expected_bpb, rel=1e-12)
        assert result["loss"] == pytest.approx(nll.double().mean().item(), rel=1e-12)
        assert (result["tokens"], result["bytes"]) == (nll.numel(), utf8_bytes)


def test_mask_selects_scored_tokens_without_counting_padding():
    nll = torch.tensor([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]])
    nbytes = torch.tensor([[2, 3, 50], [5, 50, 50]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    metric = BitsPerByte()
    metric.update(nll, nbytes, mask)
    assert metric.totals() == pytest.approx({"nll_sum": 6.0, "tokens": 3, "bytes": 10, "loss": 2.0, "bpb": 0.6 / math.log(2)})


@pytest.mark.parametrize(
    "cast",
    [
        lambda m: m.to(torch.bfloat16),
        lambda m: m.to(dtype=torch.float16),
        lambda m: m.bfloat16(),
        lambda m: m.half(),
        lambda m: m.float(),
        lambda m: nn.ModuleDict({"metric": m}).to(torch.bfloat16)["metric"],
    ],
    ids=["to_bf16", "to_fp16", "bfloat16", "half", "float", "parent_to_bf16"],
)
def test_states_stay_float64_through_module_casts(cast):
    metric = BitsPerByte()
    metric.update(torch.tensor([1234567.891], dtype=torch.float64), torch.tensor([3]))
    metric = cast(metric)
    for name in ("nll_sum", "token_count", "byte_count"):
        assert getattr(metric, name).dtype == torch.float64
    assert metric.nll_sum.item() == 1234567.891  # a bf16 round trip would have lost the digits
    metric.update(torch.tensor([1.0], dtype=torch.bfloat16), torch.tensor([1]))
    assert metric.compute().dtype == torch.float64
    metric.reset()
    assert metric.nll_sum.dtype == torch.float64


def test_mismatched_shapes_are_one_line_error():
    with pytest.raises(ValueError, match=r"nll \(2, 3\), token_bytes \(6,\) .* must have the same shape"):
        BitsPerByte().update(torch.zeros(2, 3), torch.zeros(6))
