"""Throughput of the packed train stream on one CPU core, with the record's batch settings.

The data pipeline must never be what a step waits for. A rank packs only its own micro-batches
(its 1/world_size share of a 786,432-token step, several steps a second), so the target of
>= 5M tokens/s on a single core leaves a wide margin.

Two numbers: `pack` calls `TrainStream.next_step` directly on the calling thread (the pure cost of
slicing, widening to int64 and building cu_seqlens), `iterate` drives the iterator with its prefetch
threads while the process is pinned to one core. Shards: the enwiki stand-in train shards
(decompressed to a temporary folder) when present, else synthetic documents.

    .venv/bin/python bench/bench_datastream.py [--shards DIR] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lit_golf.data.packing import ShardStream, TrainStream
from lit_golf.data.shards import BOS_ID, shard_name, write_shard

ENWIKI = Path("/work/shared/corpora/enwiki2015/sp8192")
RECORD = dict(tokens_per_microbatch=98304, grad_accum_steps=8, train_seq_len=2048, cu_bucket=64)


def enwiki_shards(folder: Path, count: int) -> list[Path]:
    paths = []
    for index in range(count):
        source = ENWIKI / f"{shard_name('train', index)}.xz"
        paths.append(folder / shard_name("train", index))
        with lzma.open(source) as src, open(paths[-1], "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return paths


def synthetic_shards(folder: Path, count: int, tokens: int = 10_000_000) -> list[Path]:
    """Documents of FineWeb-like lengths (log-uniform 50..5000 tokens) of random ids."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        data = rng.integers(2, 8192, tokens).astype(np.uint16)
        starts = np.cumsum(np.exp(rng.uniform(np.log(50), np.log(5000), tokens // 50)).astype(np.int64))
        data[starts[starts < tokens]] = BOS_ID
        data[0] = BOS_ID
        paths.append(folder / shard_name("train", index))
        write_shard(paths[-1], data)
    return paths


def measure_pack(files: list[Path], steps: int) -> float:
    train = TrainStream(files, vocab_size=8192, pin_memory=False, **RECORD)
    stream = ShardStream(files, train.seed, 8192)
    train.next_step(stream)  # first shard load
    start = time.perf_counter()
    for _ in range(steps):
        train.next_step(stream)
    elapsed = time.perf_counter() - start
    stream.close()
    return steps * train.tokens_per_step / elapsed


def measure_iterate(files: list[Path], steps: int) -> float:
    train = TrainStream(files, vocab_size=8192, pin_memory=False, **RECORD)
    iterator = iter(train)
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    elapsed = time.perf_counter() - start
    iterator.close()
    return steps * train.tokens_per_step / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, help="folder of fineweb_train_*.bin (default: enwiki or synthetic)")
    parser.add_argument("--num-shards", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps timed (786,432 tokens each)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            files, source = sorted(args.shards.glob("fineweb_train_*.bin"))[: args.num_shards], str(args.shards)
        elif ENWIKI.is_dir():
            files, source = enwiki_shards(Path(tmp), args.num_shards), "enwiki2015 sp8192 train shards"
        else:
            files, source = synthetic_shards(Path(tmp), args.num_shards), "synthetic shards"
        result = {
            "source": source,
            "shards": len(files),
            "steps": args.steps,
            "pack_tokens_per_s": round(measure_pack(files, args.steps)),
            "iterate_tokens_per_s": round(measure_iterate(files, args.steps)),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
