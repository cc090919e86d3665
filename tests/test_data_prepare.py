"""`lit-golf prepare-data` and the stdlib demo corpus."""

from __future__ import annotations

import gzip
import json
import lzma
import re
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from conftest import SHARED

from lit_golf.data.demo_corpus import SKIPPED_MODULES, write_stdlib_corpus
from lit_golf.data.prepare import cli_main, iter_documents, sha256_of, split_into_chunks
from lit_golf.data.shards import BOS_ID, dataset_dir, find_shards, read_shard, tokenizer_path

ENWIKI = SHARED / "corpora/enwiki2015"
SP8192 = SHARED / "tokenizers/fineweb_8192_bpe.model"


def stream(data_dir: Path, split: str, vocab: int) -> np.ndarray:
    return np.concatenate([read_shard(p, vocab) for p in find_shards(data_dir, split, vocab)])


def expected_stream(sp: spm.SentencePieceProcessor, docs: list[str]) -> np.ndarray:
    return np.array([t for doc in docs for t in [BOS_ID, *sp.encode(doc)]], dtype=np.uint16)


@pytest.mark.slow
@pytest.mark.skipif(not (ENWIKI.is_dir() and SP8192.is_file()), reason="shared enwiki corpus absent")
def test_reproduces_the_published_enwiki_val_shard_exactly(tmp_path):
    argv = [
        "--input", str(ENWIKI / "docs_first15000.jsonl.xz"), "--tokenizer", str(SP8192), "--num-val-docs", "5000",
        "--max-docs", "5001", "--workers", "2", "--out", str(tmp_path / "out"), "--quiet",  # + 1 train document
    ]
    assert cli_main(argv) == 0
    reference = tmp_path / "reference.bin"
    reference.write_bytes(lzma.decompress((ENWIKI / "sp8192" / "fineweb_val_000000.bin.xz").read_bytes()))
    ours = find_shards(tmp_path / "out", "val", 8192)
    assert len(ours) == 1
    assert np.array_equal(read_shard(ours[0], 8192), read_shard(reference, 8192))
    manifest = json.loads((dataset_dir(tmp_path / "out", 8192) / "manifest.json").read_text())
    published = json.loads((ENWIKI / "manifest.json").read_text())["val"]
    assert manifest["splits"]["val"] == {"docs": 5000, "tokens": published["tokens"], "bytes": published["text_bytes"], "shards": 1}
    assert manifest["tokenizer"]["sha256"].startswith("4e979c92")
    assert tokenizer_path(tmp_path / "out", 8192).read_bytes() == SP8192.read_bytes()


def test_mixed_inputs_split_and_shard_exactly(tmp_path, tiny_data):
    docs = [f"document number {i} says hello {'again ' * (i % 7)}" for i in range(40)]
    (tmp_path / "a.txt").write_text("\n".join(docs[:10]) + "\n\n", encoding="utf-8")  # blank lines are no documents
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": d}) + "\n" for d in docs[10:25])
    with lzma.open(tmp_path / "c.txt.xz", "wt", encoding="utf-8") as f:
        f.write("\n".join(docs[25:]))
    out = tmp_path / "out"
    argv = [
        "--input", str(tmp_path / "a.txt"), "--input", str(tmp_path / "b.jsonl.gz"), "--input", str(tmp_path / "c.txt.xz"),
        "--text-field", "body", "--tokenizer", str(tiny_data.tokenizer), "--num-val-docs", "12", "--shard-tokens", "100",
        "--out", str(out), "--workers", "1", "--quiet",
    ]
    assert cli_main(argv) == 0
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data.tokenizer))
    vocab = tiny_data.vocab_size
    assert np.array_equal(stream(out, "val", vocab), expected_stream(sp, docs[:12]))
    assert np.array_equal(stream(out, "train", vocab), expected_stream(sp, docs[12:]))
    train_files = find_shards(out, "train", vocab)
    assert all(read_shard(p).size == 100 for p in train_files[:-1]) and 0 < read_shard(train_files[-1]).size <= 100
    manifest = json.loads((dataset_dir(out, vocab) / "manifest.json").read_text())
    assert manifest["splits"]["train"]["docs"] == 28 and manifest["splits"]["val"]["docs"] == 12
    assert manifest["splits"]["val"]["bytes"] == sum(len(d.encode()) for d in docs[:12])
    assert manifest["splits"]["train"]["shards"] == len(train_files)
    assert manifest["tokenizer"] == {"path": f"tokenizers/fineweb_{vocab}_bpe.model", "sha256": sha256_of(tiny_data.tokenizer)}


def test_parallel_workers_give_the_same_shards(tmp_path, tiny_data):
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        argv = [
            "--input", str(tiny_data.corpus), "--tokenizer", str(tiny_data.tokenizer), "--num-val-docs", "300",
            "--max-docs", "700", "--shard-tokens", "30000", "--out", str(out), "--workers", str(workers), "--quiet",
        ]
        assert cli_main(argv) == 0
        outputs.append([read_shard(p).tolist() for split in ("val", "train") for p in find_shards(out, split, 512)])
    assert outputs[0] == outputs[1] and len(outputs[0]) >= 3


def test_trained_tokenizer_follows_the_upstream_recipe(tiny_data):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tiny_data.tokenizer.read_bytes())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    assert (spec.vocab_size, spec.byte_fallback, spec.split_digits) == (512, True, True)
    assert (spec.pad_id, spec.bos_id, spec.eos_id, spec.unk_id) == (0, 1, 2, 3)
    assert norm.name == "nmt_nfkc" and not norm.add_dummy_prefix
    assert spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE


def test_chunks_never_straddle_the_val_boundary():
    chunks = list(split_into_chunks((str(i) for i in range(10)), num_val_docs=3, chunk_docs=2))
    assert [(s, len(t)) for s, t in chunks] == [("val", 2), ("val", 1), ("train", 2), ("train", 2), ("train", 2), ("train", 1)]
    assert [t for _, c in chunks for t in c] == [str(i) for i in range(10)]


def test_max_docs_stops_reading(tmp_path):
    (tmp_path / "d.txt").write_text("a\nb\nc\n")
    assert list(iter_documents([tmp_path / "d.txt"], max_docs=2)) == ["a", "b"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train-tokenizer"], r"--train-tokenizer needs --vocab-size V"),
        (["--tokenizer", "TOK", "--train-tokenizer", "--vocab-size", "512"], r"exactly one of --tokenizer PATH or --train-tokenizer"),
        ([], r"exactly one of --tokenizer PATH or --train-tokenizer"),
        (["--tokenizer", "TOK", "--vocab-size", "1024"], r"has vocab 512 but --vocab-size is 1024"),
        (["--tokenizer", "missing.model"], r"tokenizer missing\.model does not exist"),
        (["--train-tokenizer", "--vocab-size", "100"], r"--vocab-size 100 must exceed 260"),
        (["--tokenizer", "TOK", "--workers", "0"], r"--workers must be positive, got 0"),
        (["--tokenizer", "GARBAGE"], r"tokenizer .*garbage\.model is not a SentencePiece model: pass a \.model file"),
    ],
)
def test_bad_options_fail_with_one_line(tmp_path, tiny_data, capsys, extra, message):
    (tmp_path / "d.txt").write_text("hello\n")
    (tmp_path / "garbage.model").write_bytes(b"not a model")
    named = {"TOK": str(tiny_data.tokenizer), "GARBAGE": str(tmp_path / "garbage.model")}
    extra = [named.get(e, e) for e in extra]
    assert cli_main(["--input", str(tmp_path / "d.txt"), "--out", str(tmp_path / "o"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit-golf prepare-data: error: ") and "\n" not in err
    assert re.search(message, err)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("docs.csv", "a,b\n", r"docs\.csv has an unknown format: use \.jsonl .* or \.txt"),
        ("docs.jsonl", '{"text": "ok"}\n{"txt": "no"}\n', r"docs\.jsonl:2 is not a JSON object with a 'text' string"),
        ("docs.jsonl", "not json\n", r"docs\.jsonl:1 is not a JSON object"),
        ("docs.jsonl", '{"text": 5}\n', r"docs\.jsonl:1 field 'text' is not a string"),
    ],
)
def test_bad_input_files(tmp_path, tiny_data, capsys, name, content, message):
    (tmp_path / name).write_text(content)
    argv = ["--input", str(tmp_path / name), "--tokenizer", str(tiny_data.tokenizer), "--out", str(tmp_path / "o"), "--quiet", "--workers", "1"]
    assert cli_main(argv) == 2
    assert re.search(message, capsys.readouterr().err)


def test_missing_input_and_existing_shards(tmp_path, tiny_data, capsys):
    base = ["--tokenizer", str(tiny_data.tokenizer), "--out", str(tmp_path / "o"), "--quiet", "--workers", "1"]
    assert cli_main(["--input", str(tmp_path / "none.txt"), *base]) == 2
    assert "none.txt does not exist: pass an existing --input file" in capsys.readouterr().err
    (tmp_path / "d.txt").write_text("hello world\nsecond doc\n")
    assert cli_main(["--input", str(tmp_path / "d.txt"), "--num-val-docs", "1", *base]) == 0
    assert cli_main(["--input", str(tmp_path / "d.txt"), "--num-val-docs", "1", *base]) == 2
    assert "already holds 2 shards: pass --overwrite" in capsys.readouterr().err
    shards = dataset_dir(tmp_path / "o", 512)
    (shards / "fineweb_train_000007.bin").write_bytes((shards / "fineweb_train_000000.bin").read_bytes())  # stale
    assert cli_main(["--input", str(tmp_path / "d.txt"), "--num-val-docs", "1", "--overwrite", *base]) == 0
    assert sorted(p.name for p in shards.glob("*.bin")) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin"]


def test_too_little_text_for_the_vocabulary(tmp_path, capsys):
    (tmp_path / "d.txt").write_text("tiny corpus\n")
    argv = ["--input", str(tmp_path / "d.txt"), "--train-tokenizer", "--vocab-size", "4096", "--num-val-docs", "0",
            "--out", str(tmp_path / "o"), "--quiet"]
    assert cli_main(argv) == 2
    assert "only support a vocabulary of" in capsys.readouterr().err


def test_stdlib_corpus_is_deterministic_small_and_clean(tmp_path, stdlib_corpus):
    again = tmp_path / "again.jsonl"
    count = write_stdlib_corpus(again, max_docs=1500)
    assert count == 1500 and again.read_bytes() == stdlib_corpus.read_bytes()
    texts = [json.loads(line)["text"] for line in again.read_text(encoding="utf-8").splitlines()]
    assert len(set(texts)) == len(texts) and all(len(t) >= 40 for t in texts)
    roots = {t.split("\n", 1)[0].split(".")[0] for t in texts}
    assert not roots & SKIPPED_MODULES and {"abc", "argparse"} <= roots
    capped = write_stdlib_corpus(tmp_path / "capped.jsonl", max_bytes=50_000)
    assert 0 < capped < 1500 and (tmp_path / "capped.jsonl").stat().st_size < 60_000
