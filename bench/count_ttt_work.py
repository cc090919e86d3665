"""Count the positions phased TTT runs through the model on a validation shard (no model, CPU, seconds).

Uses the evaluator's own planning (documents, stages, batches, window widths, row groups) and sums
rows x width over every chunk, next to the number of scored tokens (rows of ended documents do not run).

    xz -dc ../shared/corpora/enwiki2015/sp8192/fineweb_val_000000.bin.xz > /tmp/val.bin
    python bench/count_ttt_work.py /tmp/val.bin --max-docs 1000 --prefix-docs 400
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_golf.data.documents import find_documents, truncate_to_documents  # noqa: E402
from lit_golf.data.shards import (
    BOS_ID,
    read_shard,  # noqa: E402
)
from lit_golf.eval.config import EvalConfig, GlobalSGDConfig, TTTConfig  # noqa: E402
from lit_golf.eval.plan import num_chunks, plan_batches, window_width  # noqa: E402
from lit_golf.eval.ttt import DocumentBatchScorer, build_stages  # noqa: E402


def positions(cfg: EvalConfig, tokens: torch.Tensor) -> int:
    scorer = SimpleNamespace(cfg=cfg, rows=cfg.ttt.batch_docs)  # all `_row_groups` reads
    total = 0
    for stage in build_stages(find_documents(tokens, BOS_ID), cfg):
        for docs in plan_batches(stage.docs, cfg.ttt.batch_docs, 0, 1, cfg.ttt.chunk_size, cfg.ttt.context_len,
                                 cfg.ttt.window_bucket):
            lengths = [d.num_targets for d in docs] + [0] * (cfg.ttt.batch_docs - len(docs))
            for ci in range(num_chunks(lengths[0], cfg.ttt.chunk_size)):
                width = window_width(ci, cfg.ttt.chunk_size, cfg.ttt.context_len, cfg.ttt.window_bucket)
                groups = DocumentBatchScorer._row_groups(scorer, lengths, ci * cfg.ttt.chunk_size, width)
                total += sum(g.stop - g.start for g in groups) * width
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shard", type=Path)
    parser.add_argument("--max-docs", type=int, default=None)
    parser.add_argument("--prefix-docs", type=int, default=GlobalSGDConfig().prefix_docs)
    parser.add_argument("--window-bucket", type=int, default=TTTConfig().window_bucket)
    args = parser.parse_args()
    cfg = EvalConfig(ttt=TTTConfig(window_bucket=args.window_bucket),
                     global_sgd=GlobalSGDConfig(prefix_docs=args.prefix_docs), max_docs=args.max_docs)
    tokens = truncate_to_documents(torch.from_numpy(read_shard(args.shard).astype("int64")), BOS_ID, cfg.max_docs)
    docs = find_documents(tokens, BOS_ID)
    scored = sum(d.num_targets for d in docs)
    run = positions(cfg, tokens)
    print(f"{len(docs)} docs, {scored:,} scored tokens; TTT runs {run:,} positions ({run / scored:.1f}x)")


if __name__ == "__main__":
    main()
