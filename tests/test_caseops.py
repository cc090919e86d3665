"""CaseOps: the lossless case transform, `prepare-data --caseops` byte sidecars, and evaluation reading them."""

from __future__ import annotations

import itertools
import json
import random
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import torch
from conftest import SHARED

from lit_golf.data.caseops import (
    ALLCAPS,
    ESC,
    OPERATORS,
    TITLE,
    UPPER,
    CaseOpsError,
    inverse,
    normalized_text,
    transform,
)
from lit_golf.data.datamodule import GolfDataModule
from lit_golf.data.prepare import cli_main, iter_documents
from lit_golf.data.shards import (
    BOS_ID,
    ShardError,
    dataset_dir,
    find_shards,
    manifest_path,
    read_shard,
    sidecar_path,
    tokenizer_path,
    write_shard,
)
from lit_golf.data.tokenizer import TokenizerError, build_byte_luts, target_bytes

ENWIKI_DOCS = SHARED / "corpora/enwiki2015/docs_first15000.jsonl.xz"
SP8192 = SHARED / "tokenizers/fineweb_8192_bpe.model"
VOCAB = 600
VAL_DOCS = 60
needs_enwiki = pytest.mark.skipif(not ENWIKI_DOCS.is_file(), reason="needs the shared enwiki2015 corpus")

EDGE_CASES = [
    "",
    " ",
    "  \t\n\n   \r\n ",
    "a",
    "A",
    "Hello World",
    "NASA's HTMLParser McDonald iPhone eBay I A",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ" * 20 + " " + "Q" * 1000,
    "123 4A5 A1B 2B2 X-Y_Z",
    "ÉCOLE Émile ΑΒΓ Δέλτα Straße STRASSE İstanbul ǅ",
    "W\u030a A\u0301b Ab\u0301 ABc\u0301 ABC\u0301 AB\u0301",
    "".join(OPERATORS) + " x" + ESC + "A " + TITLE + " A" + ESC + ESC + TITLE + "a",
    ESC,
    ESC + ESC,
    "caps at end: ABC",
    "Mixed  spaces   Before\tTabs\nAnd Lines",
    "日本語 テキスト Ｆｕｌｌｗｉｄｔｈ ﬁ ™ №",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_inverse_restores_every_edge_case(text):
    encoded = transform(text)
    assert inverse(encoded) == text
    plain_capitals = [c for i, c in enumerate(encoded) if "A" <= c <= "Z" and not _before_mark(encoded, i)]
    assert not plain_capitals  # every ASCII capital became an operator (except before a combining mark)


def _before_mark(text: str, i: int) -> bool:
    import unicodedata

    return i + 1 < len(text) and unicodedata.category(text[i + 1]).startswith("M")


def test_each_operator_does_what_it_says():
    assert transform("Hello world") == TITLE + "hello world"
    assert transform("say Hello") == "say" + TITLE + " hello"  # the operator goes before the word's space
    assert transform("the NASA rover") == "the" + ALLCAPS + " nasa rover"
    assert transform("McDonald") == TITLE + "mc" + UPPER + "donald"
    assert transform("iPhone") == "i" + UPPER + "phone"
    assert transform("I A") == TITLE + "i" + TITLE + " a"  # one capital is TitleCase, not ALLCAPS
    assert transform(TITLE) == ESC + TITLE and transform(ESC) == ESC + ESC
    assert transform("plain lowercase, 123") == "plain lowercase, 123"


def test_random_strings_round_trip():
    alphabet = list("aAbBzZ  \t\n-'1É日\u0301\u030a") + list(OPERATORS)
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert inverse(transform(text)) == text, repr(text)


@pytest.mark.parametrize("broken", [TITLE, "a" + ALLCAPS, UPPER + " a", TITLE + "1", ALLCAPS + "É", "x" + ESC])
def test_dangling_operators_are_refused(broken):
    with pytest.raises(CaseOpsError, match=r"operator U\+E00\d has nothing to act on"):
        inverse(broken)


@needs_enwiki
def test_enwiki_sample_round_trips():
    docs = list(iter_documents([ENWIKI_DOCS], max_docs=1500))
    assert all(inverse(transform(doc)) == doc for doc in docs)
    assert sum(transform(doc) != doc for doc in docs) > 1400  # nearly every article has a capital


# ---------------------------------------------------------------------------------------------
# prepare-data --caseops on a small enwiki sample (tiny vocabulary, so it stays fast)


@pytest.fixture(scope="module")
def caseops_data(tmp_path_factory):
    if not ENWIKI_DOCS.is_file():
        pytest.skip("needs the shared enwiki2015 corpus")
    root = tmp_path_factory.mktemp("caseops")
    docs = list(iter_documents([ENWIKI_DOCS], max_docs=220))
    docs[3] = "Literal operators " + TITLE + ESC + " and " + ESC + ESC + TITLE + "X stay, ESC" + ESC + "Ab " + docs[3]
    docs[4] = "ALL CAPS RUN " * 50 + docs[4].upper()
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    out = root / "data"
    argv = ["--input", str(corpus), "--out", str(out), "--caseops", "--train-tokenizer", "--vocab-size", str(VOCAB),
            "--num-val-docs", str(VAL_DOCS), "--shard-tokens", "30000", "--workers", "1", "--quiet"]
    assert cli_main(argv) == 0
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path(out, VOCAB)))
    return out, docs, sp


def _val_documents(out):
    """(tokens, sidecar) of each validation document, split at BOS."""
    shards = find_shards(out, "val", VOCAB)
    tokens = np.concatenate([read_shard(p) for p in shards]).astype(np.int64)
    sidecar = np.concatenate([read_shard(sidecar_path(p)) for p in shards]).astype(np.int64)
    starts = [*np.flatnonzero(tokens == BOS_ID), tokens.size]
    return [(tokens[a:b], sidecar[a:b]) for a, b in itertools.pairwise(starts)]


def test_manifest_and_sidecars_of_a_caseops_dataset(caseops_data):
    out, _, sp = caseops_data
    manifest = json.loads(manifest_path(out, VOCAB).read_text())
    assert manifest["caseops"]["operators"] == {"title": "U+E001", "allcaps": "U+E002", "upper": "U+E003",
                                                "esc": "U+E004"}
    shards = find_shards(out, "val", VOCAB)
    assert len(shards) == manifest["caseops"]["sidecar_shards"] > 1  # several, cut at the same token counts
    assert all(read_shard(sidecar_path(p)).size == read_shard(p).size for p in shards)
    assert all(sp.piece_to_id(op) not in (sp.unk_id(),) and sp.id_to_piece(sp.piece_to_id(op)) == op for op in OPERATORS)


def test_sidecar_counts_exactly_the_normalized_original_bytes(caseops_data):
    """Per validation document: the sidecar sums to the UTF-8 length of the tokenizer-normalized original
    text, which is what `sp.decode(sp.encode(text))` returns; decoding the tokens and inverting the transform
    gives that text back; operators count 0 bytes, BOS counts 0."""
    out, docs, sp = caseops_data
    val = _val_documents(out)
    assert len(val) == VAL_DOCS
    for doc, (tokens, sidecar) in zip(docs, val, strict=False):
        normalized = normalized_text(sp, doc)
        assert normalized == sp.decode(sp.encode(doc))
        assert int(sidecar.sum()) == len(normalized.encode("utf-8"))
        assert inverse(sp.decode(tokens[1:].tolist())) == normalized
        assert sidecar[0] == 0 and tokens[0] == BOS_ID
    tokens, sidecar = val[3]  # the document with literal operators: ESC counts 0, an escaped operator 3 bytes
    pieces = [sp.id_to_piece(int(t)) for t in tokens]
    escaped, acting = set(), []  # read left to right: an operator acts unless an acting ESC precedes it
    for i, piece in enumerate(pieces):
        if piece in OPERATORS and i not in escaped:
            acting.append(i)
            escaped |= {i + 1} if piece == ESC else set()
    assert len(escaped) >= 4 and all(sidecar[i] == 3 for i in escaped)
    assert acting and all(sidecar[i] == 0 for i in acting)


@needs_enwiki
def test_without_capitals_the_sidecar_is_what_the_plain_tables_count(caseops_data):
    """On lowercased documents CaseOps changes nothing: the sidecar equals the tables' count token by token,
    and the plain SP-8192 path counts the same total on the same text."""
    _, docs, sp = caseops_data
    from lit_golf.data.caseops import SidecarCounter, encode_document

    counter, luts = SidecarCounter(sp), build_byte_luts(sp, VOCAB)
    plain = spm.SentencePieceProcessor(model_file=str(SP8192))
    plain_luts = build_byte_luts(plain, 8192)
    checked = 0
    for doc in docs[:VAL_DOCS]:
        text = doc.lower()
        ids, normalized = encode_document(sp, text)
        if transform(normalized) != normalized:  # NFKC can make capitals ("™" -> "TM"): not this test's case
            continue
        tokens = torch.tensor([BOS_ID, *ids])
        sidecar = counter(tokens.numpy())
        assert sidecar[0] == 0 and sidecar[1:].tolist() == target_bytes(tokens[:-1], tokens[1:], luts).tolist()
        plain_tokens = torch.tensor([BOS_ID, *plain.encode(text)])
        assert int(sidecar.sum()) == int(target_bytes(plain_tokens[:-1], plain_tokens[1:], plain_luts).sum())
        checked += 1
    assert checked > VAL_DOCS - 5


def test_datamodule_takes_bytes_from_the_sidecar_and_refuses_a_broken_one(caseops_data, tmp_path):
    out, _, sp = caseops_data
    data = tmp_path / "data"
    shutil.copytree(out, data)

    def dm():
        return GolfDataModule(data_dir=str(data), vocab_size=VOCAB, eval_seq_len=64, val_batch_seqs=4)

    shards = find_shards(data, "val", VOCAB)
    sidecar = np.concatenate([read_shard(sidecar_path(p)) for p in shards]).astype(np.int64)
    assert dm().val_token_bytes().tolist() == sidecar.tolist()
    table = dm().val_byte_table()
    assert table[0] == 0 and table[1:].tolist() == sidecar[1:].tolist()
    assert sum(int(b.sum()) for _, _, b in dm().val_dataloader()) == int(sidecar.sum())

    write_shard(sidecar_path(shards[1]), read_shard(sidecar_path(shards[1]))[:-1])
    with pytest.raises(ShardError, match=r"fineweb_val_bytes_000001\.bin holds \d+ counts but its shard "
                                         r"fineweb_val_000001\.bin holds \d+ tokens"):
        dm().val_token_bytes()
    for p in shards:
        sidecar_path(p).unlink()
    with pytest.raises(ShardError, match=r"manifest\.json says the tokens are CaseOps but .* has no byte sidecar"):
        dm().setup("validate")
    manifest_path(data, VOCAB).unlink()  # no manifest either: the tokenizer still gives CaseOps away
    assert dm().val_token_bytes() is None
    with pytest.raises(TokenizerError, match="holds CaseOps operators but the validation shards have no byte sidecar"):
        dm().val_byte_table()


def test_plain_tokenizer_tables_are_not_caseops(tiny_data):
    assert not build_byte_luts(spm.SentencePieceProcessor(model_file=str(tiny_data.tokenizer)), 512).caseops


def test_caseops_refuses_a_tokenizer_without_operators(tiny_data, tmp_path, capsys):
    argv = ["--input", str(tiny_data.corpus), "--out", str(tmp_path / "o"), "--caseops", "--tokenizer",
            str(tiny_data.tokenizer), "--num-val-docs", "5", "--max-docs", "20", "--quiet"]
    assert cli_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "has no piece for the CaseOps operator(s) U+E001" in error
    assert not dataset_dir(tmp_path / "o", 512).exists()


def test_evaluation_valset_counts_bytes_from_the_sidecar_only(caseops_data):
    """Every evaluator (plain, sliding, TTT) gathers bytes from ValSet's table: the sidecar, never the tables."""
    from lit_golf.eval.valset import ValSet

    out, _, sp = caseops_data
    shard = find_shards(out, "val", VOCAB)[0]
    tokens = torch.from_numpy(read_shard(shard).astype(np.int64))
    sidecar = torch.from_numpy(read_shard(sidecar_path(shard)).astype(np.int64))
    luts = build_byte_luts(sp, VOCAB)
    assert luts.caseops
    table = ValSet.build(tokens, luts, "cpu", sidecar).byte_table
    assert table[0] == 0 and torch.equal(table[1:], sidecar[1:].to(torch.int32))
    with pytest.raises(TokenizerError, match="holds CaseOps operators"):
        ValSet.build(tokens, luts, "cpu")
    with pytest.raises(ValueError, match=r"the byte sidecar holds \d+ counts for \d+ validation tokens"):
        ValSet.build(tokens, luts, "cpu", sidecar[:-1])
