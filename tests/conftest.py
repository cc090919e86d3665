"""Shared fixtures: a small real data directory (stdlib-docstring corpus, trained tokenizer, shards)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

TINY_VOCAB = 512
# The read-only shared data (enwiki2015 corpus, SP-8192 tokenizer) sits beside the checkout, as on the
# dev machines and in CI; LIT_GOLF_SHARED points elsewhere. Tests that need it skip when it is absent.
SHARED = Path(os.environ.get("LIT_GOLF_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(autouse=True)
def no_leftover_process_group():
    """Lightning's DDP strategy (and the CLI's golf_ddp) keeps a process group for later Trainer calls;
    end it after each test so later tests (which fork their own groups) start clean, whatever the order."""
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@dataclass(frozen=True)
class TinyData:
    """A data_dir laid out like the real one: `datasets/fineweb10B_sp512/` + `tokenizers/fineweb_512_bpe.model`."""

    data_dir: Path
    vocab_size: int
    tokenizer: Path
    corpus: Path


@pytest.fixture(scope="session")
def stdlib_corpus(tmp_path_factory) -> Path:
    """About 1,500 standard-library docstrings as jsonl (`{"text": ...}` per line)."""
    from lit_golf.data.demo_corpus import write_stdlib_corpus

    path = tmp_path_factory.mktemp("corpus") / "stdlib.jsonl"
    write_stdlib_corpus(path, max_docs=1500)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, stdlib_corpus) -> TinyData:
    """A 512-token SentencePiece tokenizer trained on `stdlib_corpus`; 100 val docs (~19k tokens) and
    1,400 train docs (~225k tokens) in 20k-token shards (documents continue across shards, as upstream)."""
    from lit_golf.data.prepare import cli_main
    from lit_golf.data.shards import tokenizer_path

    data_dir = tmp_path_factory.mktemp("tiny_data")
    argv = [
        "--input", str(stdlib_corpus), "--out", str(data_dir), "--train-tokenizer", "--vocab-size", str(TINY_VOCAB),
        "--num-val-docs", "100", "--shard-tokens", "20000", "--workers", "1", "--quiet",
    ]
    assert cli_main(argv) == 0
    return TinyData(data_dir, TINY_VOCAB, tokenizer_path(data_dir, TINY_VOCAB), stdlib_corpus)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Many small ops (GPTQ's column loop, TTT chunks): on a shared 2-core box more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
