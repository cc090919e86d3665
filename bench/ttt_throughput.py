"""Phased-TTT throughput of an artifact on one GPU: launch -> final TTT bpb, every second counted.

Loads the artifact and the validation shard, runs `run_phased_ttt` with the record's TTT settings
(prefix scaled to the document count) and writes one JSON line of numbers: scored tokens/s, positions/s
(rows x width actually run, counted by the evaluator), compile seconds, launch -> bpb, TTT bpb, peak
memory, and the FineWeb 8×H100 evaluation seconds projected from them (`lit_golf.eval.projection`; TTT
only, `test` adds a plain pass; `--fineweb-prefix-docs` documents in FineWeb's prefix, which the run's
prefix stands for at its document count). Run it twice on one box for a cold and a warm (Inductor cache)
compile. `--grad-steps`, `--replay-chunks`, `--lr-schedule` try the settings that spend more per token.

    python bench/ttt_throughput.py --artifact A.ptz --data-dir DATA --max-docs 5000 --prefix-docs 200 --out r.json
"""

from __future__ import annotations

import time

LAUNCH = time.time()  # before the heavy imports: they are part of an evaluation's wall clock

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import commit  # noqa: E402

from lit_golf import artifact  # noqa: E402
from lit_golf.data.datamodule import GolfDataModule  # noqa: E402
from lit_golf.data.documents import find_documents, truncate_to_documents  # noqa: E402
from lit_golf.data.shards import BOS_ID  # noqa: E402
from lit_golf.eval.config import EvalConfig, GlobalSGDConfig, TTTConfig  # noqa: E402
from lit_golf.eval.projection import measured_eval, project, ttt_throughput  # noqa: E402
from lit_golf.eval.runtime import Stopwatch  # noqa: E402
from lit_golf.eval.ttt import run_phased_ttt  # noqa: E402
from lit_golf.eval.valset import ValSet  # noqa: E402
from lit_golf.module import CompileCache  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--max-docs", type=int, default=5000)
    parser.add_argument("--prefix-docs", type=int, default=200)
    parser.add_argument("--fineweb-prefix-docs", type=int, default=GlobalSGDConfig().prefix_docs,
                        help="documents in the prefix of the FineWeb evaluation the run stands for (projection)")
    parser.add_argument("--grad-steps", type=int, default=TTTConfig().grad_steps)
    parser.add_argument("--replay-chunks", type=int, default=TTTConfig().replay_chunks)
    parser.add_argument("--lr-schedule", default=TTTConfig().lr_schedule)
    parser.add_argument("--lr-schedule-chunks", type=int, default=TTTConfig().lr_schedule_chunks)
    parser.add_argument("--eager", action="store_true", help="no torch.compile (the path before this benchmark)")
    parser.add_argument("--window-bucket", type=int, default=TTTConfig().window_bucket)
    parser.add_argument("--tokens-per-pass", type=int, default=TTTConfig().tokens_per_pass)
    parser.add_argument("--attention-backend", default=None, help="override the artifact's runtime backend")
    parser.add_argument("--compile-cache", default=None,
                        help="mega-cache file: loaded first when present (a warm launch on a fresh box), saved at the end")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        ttt = TTTConfig(compile=not args.eager, window_bucket=args.window_bucket, tokens_per_pass=args.tokens_per_pass,
                        grad_steps=args.grad_steps, replay_chunks=args.replay_chunks,
                        lr_schedule=args.lr_schedule, lr_schedule_chunks=args.lr_schedule_chunks)
        cfg = EvalConfig(ttt=ttt, global_sgd=GlobalSGDConfig(prefix_docs=args.prefix_docs), max_docs=args.max_docs)
    except ValueError as error:
        parser.error(str(error))  # one line, exit 2, before the GPU is touched
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    device = torch.device("cuda")
    cache = CompileCache(args.compile_cache)
    cache.load()
    overrides = {"attention_backend": args.attention_backend} if args.attention_backend else {}
    model = artifact.load(args.artifact, device, **overrides)
    data = GolfDataModule(data_dir=args.data_dir, vocab_size=model.config.vocab_size)
    tokens = truncate_to_documents(data.val_tokens(), BOS_ID, cfg.max_docs)
    sidecar = data.val_token_bytes()  # CaseOps data: bytes per token from the sidecar (a prefix is kept)
    val = ValSet.build(tokens, data.byte_luts(), device, None if sidecar is None else sidecar[: tokens.numel()])
    loaded = time.time()
    stopwatch = Stopwatch(device)
    torch.cuda.reset_peak_memory_stats(device)
    counts: dict[str, int] = {}
    with stopwatch.section("ttt"):
        metric = run_phased_ttt(model, val, cfg, stopwatch=stopwatch, progress=True, counts=counts)
        totals = metric.totals()
    done = time.time()
    cache.save()
    scored = int(totals["tokens"])
    compile_s = stopwatch.seconds.get("ttt_compile", 0.0)
    docs = len(find_documents(tokens, BOS_ID))
    # the clocks and counts as `evaluate` reports them, for the projection's one reading of them
    scores = {**{f"time_{k}_s": v for k, v in stopwatch.seconds.items()}, "val_tokens": scored,
              "ttt_tokens": scored, "ttt_docs": docs, "ttt_positions": counts["positions"]}
    tokens_per_s, positions_per_s = ttt_throughput(scores)
    gpu = torch.cuda.get_device_name(device)
    projection = project(measured_eval(scores, done - LAUNCH, cfg, 1, f"1x {gpu}"), args.fineweb_prefix_docs)
    result = {
        "label": args.label,
        "gpu": gpu,
        "commit": commit(),
        "artifact": args.artifact,
        "attention_backend": model.attention_backend_name,
        "compiled": cfg.ttt.compile,
        "docs": docs,
        "prefix_docs": cfg.global_sgd.prefix_docs,
        "window_bucket": cfg.ttt.window_bucket,
        "scored_tokens": scored,
        "positions": counts["positions"],
        "ttt_s_after_compile": stopwatch.seconds["ttt"] - compile_s,
        "scored_tokens_per_s": tokens_per_s,
        "positions_per_s": positions_per_s,
        "compile_s": compile_s,
        "load_s": loaded - LAUNCH,
        "launch_to_bpb_s": done - LAUNCH,
        "fineweb_8xh100_eval_s_projected": projection.seconds,
        "fineweb_projection": {
            "fineweb_prefix_docs": args.fineweb_prefix_docs, "fixed_s": projection.fixed_seconds,
            "scoring_s": projection.scoring_seconds, "global_sgd_s": projection.global_sgd_seconds,
            "h100_speed": projection.h100_speed,
        },
        "ttt_bpb": totals["bpb"],
        "sections_s": {k: round(v, 2) for k, v in stopwatch.seconds.items()},
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9,
        "config": {k: v for k, v in cfg.to_dict().items() if k in ("ttt", "global_sgd")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
