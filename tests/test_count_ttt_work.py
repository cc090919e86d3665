"""bench/count_ttt_work.py: the positions phased TTT runs, from the evaluator's own plan, per TTT setting."""

from __future__ import annotations

import re

import numpy as np
import torch
from script_output import load_bench_script

from lit_golf.data.documents import find_documents
from lit_golf.data.shards import BOS_ID, write_shard
from lit_golf.eval.config import EvalConfig, GlobalSGDConfig, TTTConfig
from lit_golf.eval.ttt import planned_positions

bench = load_bench_script("count_ttt_work")


def counted(capsys, *argv) -> tuple[int, int]:
    """(scored tokens, positions) that the script prints for `argv`."""
    bench.main([str(a) for a in argv])
    printed = capsys.readouterr().out
    scored, positions = re.search(r"([\d,]+) scored tokens; TTT runs ([\d,]+) positions", printed).groups()
    return int(scored.replace(",", "")), int(positions.replace(",", ""))


def test_chunk_size_reaches_the_plan(tmp_path, capsys):
    rng = np.random.default_rng(0)
    stream = np.concatenate([np.concatenate([[BOS_ID], rng.integers(2, 500, size=n)])
                             for n in (700, 300, 1200, 90, 2500, 450)]).astype(np.uint16)
    shard = tmp_path / "val.bin"
    write_shard(shard, stream)
    scored, at_48 = counted(capsys, shard, "--prefix-docs", 2)
    _, at_16 = counted(capsys, shard, "--prefix-docs", 2, "--chunk-size", 16)
    assert scored == len(stream) - 1  # every token after the first BOS is a target (the next document's BOS too)
    # smaller chunks: each chunk's window runs again, so the same scored tokens cost more positions
    assert at_16 > 2 * at_48
    docs = find_documents(torch.from_numpy(stream.astype("int64")), BOS_ID)
    assert at_16 == planned_positions(docs, EvalConfig(ttt=TTTConfig(chunk_size=16),
                                                       global_sgd=GlobalSGDConfig(prefix_docs=2)))
