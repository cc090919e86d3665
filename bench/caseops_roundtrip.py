"""CaseOps on every enwiki2015 document: exact round trips, token counts with and without CaseOps, bytes per token.

Per document, checked (any failure is counted, and the first few are written out):

- `inverse(transform(text)) == text` (the transform alone, on the raw text);
- `inverse(decode(encode(transform(normalized)))) == normalized`: the whole token path, where
  `normalized = caseops.normalized_text(sp, text)` is the text the plain path scores;
- the document's sidecar sums to `len(normalized.encode())`, and the plain SP-8192 path counts the same
  number of bytes for the same text (`target_bytes` over its tokens).

    .venv/bin/python bench/caseops_roundtrip.py --tokenizer /work/data_caseops/tokenizers/fineweb_8192_bpe.model \
        [--max-docs N] [--workers 2] [--out bench/results/caseops.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from provenance import commit  # bench/ (the script's folder)

from lit_golf.data.caseops import SidecarCounter, encode_document, inverse, transform
from lit_golf.data.prepare import iter_documents
from lit_golf.data.tokenizer import build_byte_luts, target_bytes

CORPUS = Path("/work/shared/corpora/enwiki2015")
PLAIN_TOKENIZER = Path("/work/shared/tokenizers/fineweb_8192_bpe.model")
CHUNK = 500

_plain = _caseops = _plain_luts = _sidecar = None


def _init(plain_path: str, caseops_path: str) -> None:
    global _plain, _caseops, _plain_luts, _sidecar
    torch.set_num_threads(1)
    _plain = spm.SentencePieceProcessor(model_file=plain_path)
    _caseops = spm.SentencePieceProcessor(model_file=caseops_path)
    _plain_luts = build_byte_luts(_plain, int(_plain.vocab_size()))
    _sidecar = SidecarCounter(_caseops)


def _plain_bytes(ids: list[int]) -> int:
    stream = torch.tensor([1, *ids], dtype=torch.int64)
    return int(target_bytes(stream[:-1], stream[1:], _plain_luts).sum())


def measure(chunk: list[str]) -> dict:
    out = dict(docs=0, transform_ok=0, token_roundtrip_ok=0, sidecar_ok=0, plain_bytes_equal=0,
               tokens_plain=0, tokens_caseops=0, bytes=0, raw_bytes=0, failures=[])
    plain_ids = _plain.encode(chunk)
    for text, plain in zip(chunk, plain_ids, strict=True):
        ids, normalized = encode_document(_caseops, text)
        nbytes = len(normalized.encode("utf-8"))
        sidecar = _sidecar(np.array([1, *ids], dtype=np.int64))
        checks = {
            "transform_ok": inverse(transform(text)) == text,
            "token_roundtrip_ok": inverse(_caseops.decode(ids)) == normalized,
            "sidecar_ok": int(sidecar.sum()) == nbytes,
            "plain_bytes_equal": _plain_bytes(plain) == nbytes,
        }
        for name, ok in checks.items():
            out[name] += ok
        if not all(checks.values()) and len(out["failures"]) < 3:
            out["failures"].append({"text": text[:200], "failed": [k for k, ok in checks.items() if not ok]})
        out["docs"] += 1
        out["tokens_plain"] += len(plain) + 1  # + BOS, as in the shards
        out["tokens_caseops"] += len(ids) + 1
        out["bytes"] += nbytes
        out["raw_bytes"] += len(text.encode("utf-8"))
    return out


def chunks(max_docs: int | None):
    inputs = [CORPUS / "docs_first15000.jsonl.xz", CORPUS / "docs_rest.jsonl.xz"]
    batch: list[str] = []
    for text in iter_documents(inputs, max_docs=max_docs):
        batch.append(text)
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="CaseOps SentencePiece model")
    parser.add_argument("--plain-tokenizer", default=str(PLAIN_TOKENIZER))
    parser.add_argument("--max-docs", type=int)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/results/caseops.json")
    args = parser.parse_args()

    started = time.perf_counter()
    total: dict = {}
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, initializer=_init, initargs=(args.plain_tokenizer, args.tokenizer)) as pool:
        for part in pool.imap(measure, chunks(args.max_docs), chunksize=1):
            for key, value in part.items():
                total[key] = total.get(key, 0 if key != "failures" else []) + value
            print(f"{total['docs']} docs, {time.perf_counter() - started:.0f}s", flush=True)
    docs = total["docs"]
    result = {
        "commit": commit() or "",
        "tokenizer_caseops": args.tokenizer,
        "tokenizer_plain": args.plain_tokenizer,
        "docs": docs,
        "roundtrip_ok": total["transform_ok"] == total["token_roundtrip_ok"] == docs,
        "transform_roundtrip_docs": total["transform_ok"],
        "token_roundtrip_docs": total["token_roundtrip_ok"],
        "sidecar_sum_equal_docs": total["sidecar_ok"],
        "plain_bytes_equal_docs": total["plain_bytes_equal"],
        "tokens_plain": total["tokens_plain"],
        "tokens_caseops": total["tokens_caseops"],
        "tokens_ratio": total["tokens_caseops"] / total["tokens_plain"],
        "bytes": total["bytes"],
        "raw_utf8_bytes": total["raw_bytes"],
        "bytes_per_token_plain": total["bytes"] / total["tokens_plain"],
        "bytes_per_token_caseops": total["bytes"] / total["tokens_caseops"],
        "failures": total["failures"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=2))


if __name__ == "__main__":
    main()
