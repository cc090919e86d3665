"""Count the positions phased TTT runs through the model on a validation shard (no model, CPU, seconds).

Uses the evaluator's own plan (`lit_golf.eval.ttt.planned_positions`: documents, stages, batches, passes,
window widths, row groups) and sums rows x width over every pass, scoring and learning, next to the number
of scored tokens (rows of ended documents do not run).

    xz -dc ../shared/corpora/enwiki2015/sp8192/fineweb_val_000000.bin.xz > /tmp/val.bin
    python bench/count_ttt_work.py /tmp/val.bin --max-docs 1000 --prefix-docs 400 [--replay-chunks 2] [--chunk-size 32]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_golf.data.documents import find_documents, truncate_to_documents  # noqa: E402
from lit_golf.data.shards import BOS_ID, read_shard  # noqa: E402
from lit_golf.eval.config import EvalConfig, GlobalSGDConfig, TTTConfig  # noqa: E402
from lit_golf.eval.ttt import planned_positions  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shard", type=Path)
    parser.add_argument("--max-docs", type=int, default=None)
    parser.add_argument("--prefix-docs", type=int, default=GlobalSGDConfig().prefix_docs)
    parser.add_argument("--chunk-size", type=int, default=TTTConfig().chunk_size)
    parser.add_argument("--window-bucket", type=int, default=TTTConfig().window_bucket)
    parser.add_argument("--grad-steps", type=int, default=TTTConfig().grad_steps)
    parser.add_argument("--replay-chunks", type=int, default=TTTConfig().replay_chunks)
    args = parser.parse_args(argv)
    cfg = EvalConfig(ttt=TTTConfig(chunk_size=args.chunk_size, window_bucket=args.window_bucket,
                                   grad_steps=args.grad_steps, replay_chunks=args.replay_chunks),
                     global_sgd=GlobalSGDConfig(prefix_docs=args.prefix_docs), max_docs=args.max_docs)
    tokens = truncate_to_documents(torch.from_numpy(read_shard(args.shard).astype("int64")), BOS_ID, cfg.max_docs)
    docs = find_documents(tokens, BOS_ID)
    scored = sum(d.num_targets for d in docs)
    run = planned_positions(docs, cfg)
    print(f"{len(docs)} docs, {scored:,} scored tokens; TTT runs {run:,} positions ({run / scored:.1f}x)")


if __name__ == "__main__":
    main()
