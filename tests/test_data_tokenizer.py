"""Tokenizer loading and the byte tables behind bits per byte, checked against real text."""

from __future__ import annotations

import json
import lzma

import pytest
import torch
from conftest import SHARED

from lit_golf.data.tokenizer import TokenizerError, build_byte_luts, load_tokenizer, target_bytes

SP8192 = SHARED / "tokenizers/fineweb_8192_bpe.model"
DOCS = SHARED / "corpora/enwiki2015/docs_first15000.jsonl.xz"
needs_real_data = pytest.mark.skipif(not (SP8192.is_file() and DOCS.is_file()), reason="shared corpus absent")


def first_docs(n: int) -> list[str]:
    with lzma.open(DOCS, "rt", encoding="utf-8") as f:
        return [json.loads(next(f))["text"] for _ in range(n)]


@pytest.fixture(scope="module")
def sp8192():
    return load_tokenizer(SP8192, vocab_size=8192)


@needs_real_data
def test_target_bytes_sum_to_utf8_length_of_round_tripping_text(sp8192):
    luts = build_byte_luts(sp8192, 8192)
    # nmt_nfkc turns newlines and some symbols into other text, so whole documents rarely round-trip;
    # their paragraphs mostly do, and each is scored as a document of its own (BOS first).
    paragraphs = [p for doc in first_docs(20) for p in doc.split("\n") if p]
    exact = [p for p in paragraphs if sp8192.decode(sp8192.encode(p)) == p]
    assert len(exact) > 0.8 * len(paragraphs)
    for text in exact:
        ids = torch.tensor([sp8192.bos_id(), *sp8192.encode(text)])
        assert int(target_bytes(ids[:-1], ids[1:], luts).sum()) == len(text.encode("utf-8"))


@needs_real_data
def test_target_bytes_count_the_normalized_text_of_whole_documents(sp8192):
    """On any document the byte count equals the UTF-8 length of what the tokens decode to."""
    luts = build_byte_luts(sp8192, 8192)
    for text in first_docs(5):
        ids = torch.tensor([sp8192.bos_id(), *sp8192.encode(text)])
        decoded = sp8192.decode(ids[1:].tolist())
        assert int(target_bytes(ids[:-1], ids[1:], luts).sum()) == len(decoded.encode("utf-8"))


@needs_real_data
def test_leading_space_after_boundary_is_not_counted(sp8192):
    luts = build_byte_luts(sp8192, 8192)
    the = sp8192.piece_to_id("▁the")
    assert bool(luts.has_leading_space[the]) and int(luts.base_bytes[the]) == 3
    bos, word = torch.tensor([sp8192.bos_id(), the]), torch.tensor([the, the])
    assert target_bytes(bos, word, luts).tolist() == [3, 4]


@needs_real_data
def test_luts_mark_control_ids_as_zero_byte_boundaries_and_bytes_as_one(sp8192):
    luts = build_byte_luts(sp8192, 8200)
    assert luts.base_bytes.shape == (8200,)
    for special in (0, 1, 2, 3, 8195):
        assert bool(luts.is_boundary[special]) and int(luts.base_bytes[special]) == 0
    byte_id = sp8192.piece_to_id("<0xE2>")
    assert int(luts.base_bytes[byte_id]) == 1 and not bool(luts.is_boundary[byte_id])
    moved = luts.to("cpu")
    assert torch.equal(moved.base_bytes, luts.base_bytes)


@needs_real_data
def test_vocab_mismatch_names_file_and_fix():
    with pytest.raises(TokenizerError, match=r"has vocab 8192 but the config says vocab_size=1024: pass the matching"):
        load_tokenizer(SP8192, vocab_size=1024)


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(TokenizerError, match=r"x\.model does not exist: run `lit-golf download`"):
        load_tokenizer(tmp_path / "x.model")


def test_unreadable_tokenizer_file(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"\x00garbage")
    with pytest.raises(TokenizerError, match=r"bad\.model is not a readable SentencePiece model .*: replace it"):
        load_tokenizer(tmp_path / "bad.model")
