"""CaseOps train shards that hold the same documents as the first K SP-8192 enwiki train shards.

A paired plain vs CaseOps run should read the same documents in the same order. Shards are read back to
back in their natural order in the first epoch and in a seeded shard permutation later, so both runs see
the same documents at the same point of the stream when CaseOps shard i holds exactly the documents of
plain shard i. Plain shards are cut at exactly 10M tokens, inside a document; the CaseOps cut of that
document falls at the same fraction of its tokens.

    .venv/bin/python lease/caseops_aligned_shards.py --caseops-dir /work/data_caseops --shards 5 --out DIR
"""

from __future__ import annotations

import argparse
import itertools
import lzma
from pathlib import Path

import numpy as np
import sentencepiece as spm

from lit_golf.data.prepare import iter_documents
from lit_golf.data.shards import (
    BOS_ID,
    HEADER_BYTES,
    TOKEN_DTYPE,
    find_shards,
    read_shard,
    shard_name,
    write_shard,
)

ENWIKI = Path("/work/shared/corpora/enwiki2015")
PLAIN_TOKENIZER = Path("/work/shared/tokenizers/fineweb_8192_bpe.model")
NUM_VAL_DOCS = 5000


def plain_shard(index: int) -> np.ndarray:
    with lzma.open(ENWIKI / "sp8192" / f"{shard_name('train', index)}.xz") as f:
        return np.frombuffer(f.read()[HEADER_BYTES:], dtype=TOKEN_DTYPE)


def plain_document_length(doc: int) -> int:
    """SP-8192 tokens (with BOS) of train document `doc`, for a cut in a document past the stored shards."""
    inputs = [ENWIKI / "docs_first15000.jsonl.xz", ENWIKI / "docs_rest.jsonl.xz"]
    text = next(itertools.islice(iter_documents(inputs), NUM_VAL_DOCS + doc, None))
    return 1 + len(spm.SentencePieceProcessor(model_file=str(PLAIN_TOKENIZER)).encode(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caseops-dir", required=True, help="data dir written by prepare-data --caseops")
    parser.add_argument("--shards", type=int, required=True, help="K: align with plain shards 0..K-1")
    parser.add_argument("--out", required=True, help="folder for fineweb_train_NNNNNN.bin")
    args = parser.parse_args()

    plain = [plain_shard(i) for i in range(args.shards)]
    shard_ends = np.cumsum([s.size for s in plain])
    plain_starts = np.flatnonzero(np.concatenate(plain) == BOS_ID)
    caseops = np.concatenate([read_shard(p) for p in find_shards(args.caseops_dir, "train", 8192)])
    caseops_starts = np.flatnonzero(caseops == BOS_ID)

    cuts = [0]
    for boundary in shard_ends:
        doc = int(np.searchsorted(plain_starts, boundary, side="right")) - 1
        inside = int(boundary - plain_starts[doc])
        plain_len = (int(plain_starts[doc + 1]) if doc + 1 < plain_starts.size else 0) - int(plain_starts[doc])
        if plain_len <= 0:
            plain_len = plain_document_length(doc)
        caseops_len = int(caseops_starts[doc + 1] - caseops_starts[doc])
        cuts.append(int(caseops_starts[doc]) + round(inside * caseops_len / plain_len))
        print(f"plain shard end {boundary:,}: train doc {doc}, {inside}/{plain_len} tokens in -> CaseOps {cuts[-1]:,}")
    out = Path(args.out)
    for index, (start, end) in enumerate(itertools.pairwise(cuts)):
        write_shard(out / shard_name("train", index), caseops[start:end])
        print(f"{shard_name('train', index)}: {end - start:,} tokens (plain {plain[index].size:,})")


if __name__ == "__main__":
    main()
