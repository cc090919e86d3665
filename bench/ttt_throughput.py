"""Phased-TTT throughput of an artifact on one GPU: launch -> final TTT bpb, every second counted.

Loads the artifact and the validation shard, runs `run_phased_ttt` with the record's TTT settings
(prefix scaled to the document count) and writes one JSON line of numbers: scored tokens/s, positions/s
(rows x width actually run, from the evaluator's own planning), compile seconds, launch -> bpb,
TTT bpb, peak memory. Run it twice on one box for a cold and a warm (Inductor cache) compile.

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

from count_ttt_work import positions  # noqa: E402
from provenance import commit  # noqa: E402

from lit_golf import artifact  # noqa: E402
from lit_golf.data.datamodule import GolfDataModule  # noqa: E402
from lit_golf.data.documents import find_documents, truncate_to_documents  # noqa: E402
from lit_golf.data.shards import BOS_ID  # noqa: E402
from lit_golf.eval.config import EvalConfig, GlobalSGDConfig, TTTConfig  # noqa: E402
from lit_golf.eval.runtime import Stopwatch  # noqa: E402
from lit_golf.eval.ttt import run_phased_ttt  # noqa: E402
from lit_golf.eval.valset import ValSet  # noqa: E402
from lit_golf.module import CompileCache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--max-docs", type=int, default=5000)
    parser.add_argument("--prefix-docs", type=int, default=200)
    parser.add_argument("--eager", action="store_true", help="no torch.compile (the path before this benchmark)")
    parser.add_argument("--window-bucket", type=int, default=TTTConfig().window_bucket)
    parser.add_argument("--tokens-per-pass", type=int, default=TTTConfig().tokens_per_pass)
    parser.add_argument("--attention-backend", default=None, help="override the artifact's runtime backend")
    parser.add_argument("--compile-cache", default=None,
                        help="mega-cache file: loaded first when present (a warm launch on a fresh box), saved at the end")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    device = torch.device("cuda")
    cache = CompileCache(args.compile_cache)
    cache.load()
    cfg = EvalConfig(
        ttt=TTTConfig(compile=not args.eager, window_bucket=args.window_bucket, tokens_per_pass=args.tokens_per_pass),
        global_sgd=GlobalSGDConfig(prefix_docs=args.prefix_docs), max_docs=args.max_docs,
    )
    overrides = {"attention_backend": args.attention_backend} if args.attention_backend else {}
    model = artifact.load(args.artifact, device, **overrides)
    data = GolfDataModule(data_dir=args.data_dir, vocab_size=model.config.vocab_size)
    tokens = truncate_to_documents(data.val_tokens(), BOS_ID, cfg.max_docs)
    sidecar = data.val_token_bytes()  # CaseOps data: bytes per token from the sidecar (a prefix is kept)
    val = ValSet.build(tokens, data.byte_luts(), device, None if sidecar is None else sidecar[: tokens.numel()])
    loaded = time.time()
    stopwatch = Stopwatch(device)
    torch.cuda.reset_peak_memory_stats(device)
    with stopwatch.section("ttt"):
        metric = run_phased_ttt(model, val, cfg, stopwatch=stopwatch, progress=True)
        totals = metric.totals()
    done = time.time()
    cache.save()
    scored = int(totals["tokens"])
    run_positions = positions(cfg, tokens)
    compile_s = stopwatch.seconds.get("ttt_compile", 0.0)
    ttt_s = stopwatch.seconds["ttt"] - compile_s
    result = {
        "label": args.label,
        "gpu": torch.cuda.get_device_name(device),
        "commit": commit(),
        "artifact": args.artifact,
        "attention_backend": model.attention_backend_name,
        "compiled": cfg.ttt.compile,
        "docs": len(find_documents(tokens, BOS_ID)),
        "prefix_docs": cfg.global_sgd.prefix_docs,
        "window_bucket": cfg.ttt.window_bucket,
        "scored_tokens": scored,
        "positions": run_positions,
        "ttt_s_after_compile": ttt_s,
        "scored_tokens_per_s": scored / ttt_s,
        "positions_per_s": run_positions / ttt_s,
        "compile_s": compile_s,
        "load_s": loaded - LAUNCH,
        "launch_to_bpb_s": done - LAUNCH,
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
