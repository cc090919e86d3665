"""Screen TTT settings on a CPU: an artifact's per-document TTT on short validation documents, paired.

When no GPU is lent, a CPU can still tell a setting that moves TTT bpb by thousandths from one that does not:
the same documents, the same artifact and the same adapter draws make every comparison paired. It runs the
evaluator the GPU runs (`lit_golf.eval.runner.evaluate`), with the TTT settings of `configs/record.yaml` +
`configs/frontier.yaml` and these differences, each for speed on 2 cores and each stated in the result:
fp32 (CUDA evaluates under bf16 autocast), no compile, no global SGD (neutral on the H100 screens, and its
prefix would be a few documents here), `--batch-docs` rows, and only documents of `--min-tokens` to
`--max-tokens` tokens (long ones cost quadratically). About 400 positions/s: 80 documents of 150-900 tokens
(252k positions) take ~10 minutes per setting.

    xz -dc ../shared/corpora/enwiki2015/sp8192/fineweb_val_000000.bin.xz > /tmp/val.bin
    python bench/ttt_cpu_screen.py --artifact A.ptz --val /tmp/val.bin --tokenizer T.model --name eps1e-6 \
        --set ttt.eps=1e-6 --out bench/results/ttt_cpu_screen.json

Each run adds (or replaces) its setting in `--out`, written atomically, with the commit, the machine, the
command and the bpb: plain, TTT and the gain; `--set` takes `group.field=value` of `EvalConfig`'s groups.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path

import sentencepiece as spm
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from provenance import commit  # noqa: E402

from lit_golf import artifact  # noqa: E402
from lit_golf.cli import one_line  # noqa: E402
from lit_golf.data.shards import BOS_ID, ShardError, file_sha256, read_shard  # noqa: E402
from lit_golf.data.tokenizer import build_byte_luts  # noqa: E402
from lit_golf.eval.config import EvalConfig  # noqa: E402
from lit_golf.eval.runner import evaluate  # noqa: E402
from lit_golf.files import write_atomic  # noqa: E402
from lit_golf.lightning_cli import printed_config  # noqa: E402

CPU_CHANGES = {"ttt.compile": "false", "ttt.tokens_per_pass": 16384, "global_sgd.enabled": "false",
               "plain.batch_seqs": 4}


def screen_config(sets: list[str], batch_docs: int) -> tuple[EvalConfig, dict]:
    """The evaluation settings `lit-golf test --config record --config frontier` resolves to (the CLI's own parse,
    types and defaults), with the CPU's changes and then `sets` (`group.field=value`) as its flags; and what `sets`
    changed, as resolved."""
    flags, keys = [], []
    for item in sets:
        key, sep, raw = item.partition("=")
        group, dot, field = key.partition(".")
        if not (sep and dot and field):
            raise SystemExit(f"ttt_cpu_screen: --set {item!r} is not group.field=value (e.g. ttt.eps=1e-6)")
        flags.append(f"--model.evaluation.{key}={raw}")
        keys.append((group, field))
    cpu = [f"--model.evaluation.{key}={value}" for key, value in {**CPU_CHANGES, "ttt.batch_docs": batch_docs}.items()]
    try:
        resolved = printed_config(["test", "--config", "record", "--config", "frontier", *cpu, *flags])
        cfg = EvalConfig.from_dict(resolved["model"]["evaluation"])
    except (argparse.ArgumentError, TypeError, ValueError) as err:
        raise SystemExit(f"ttt_cpu_screen: {one_line(str(err))}") from None
    changed: dict = {}
    for group, field in keys:
        value = getattr(getattr(cfg, group), field)
        changed.setdefault(group, {})[field] = list(value) if isinstance(value, tuple) else value
    return cfg, changed


def screen_tokens(path: Path, docs: int, min_tokens: int, max_tokens: int) -> torch.Tensor:
    """The first `docs` documents of the shard with `min_tokens`..`max_tokens` tokens (BOS included), in order."""
    try:
        tokens = torch.from_numpy(read_shard(path).astype("int64"))
    except (OSError, ShardError) as err:
        raise SystemExit(f"ttt_cpu_screen: {err} (pass an uncompressed val shard: xz -dc SHARD.xz > val.bin)") from None
    starts = (tokens == BOS_ID).nonzero().flatten().tolist() + [tokens.numel()]
    kept = [tokens[a:b] for a, b in pairwise(starts) if min_tokens <= b - a <= max_tokens][:docs]
    if len(kept) < docs:
        raise SystemExit(f"ttt_cpu_screen: {path} has {len(kept)} documents of {min_tokens}-{max_tokens} tokens, "
                         f"not {docs}; lower --docs or widen the range")
    return torch.cat(kept + [torch.tensor([BOS_ID])])


def record(out: Path, entry: dict) -> None:
    """Add `entry` to the screen file by name (a rerun replaces its own entry), atomically."""
    settings = json.loads(out.read_text())["settings"] if out.is_file() else []
    settings = [s for s in settings if s["name"] != entry["name"]] + [entry]
    base = next((s for s in settings if s["name"] == "baseline"), None)
    for s in settings:
        paired = base is not None and s["docs_sha"] == base["docs_sha"] and s["artifact"] == base["artifact"]
        s["ttt_bpb_vs_baseline"] = s["ttt_bpb"] - base["ttt_bpb"] if paired else None
    write_atomic(out, json.dumps({"what": __doc__.splitlines()[0], "settings": settings}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True, help="an uncompressed validation shard")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the setting's name; 'baseline' is what others pair with")
    parser.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE")
    parser.add_argument("--docs", type=int, default=80)
    parser.add_argument("--min-tokens", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=900)
    parser.add_argument("--batch-docs", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    cfg, changed = screen_config(args.set, args.batch_docs)
    tokens = screen_tokens(args.val, args.docs, args.min_tokens, args.max_tokens)
    if not args.tokenizer.is_file():
        raise SystemExit(f"ttt_cpu_screen: no tokenizer at {args.tokenizer}")
    model = artifact.load(args.artifact, "cpu", attention_backend="sdpa")
    luts = build_byte_luts(spm.SentencePieceProcessor(model_file=str(args.tokenizer)), model.config.vocab_size)
    start = time.time()
    res = evaluate(model, tokens, luts, cfg, progress=False)
    record(args.out, {
        "name": args.name, "changed": changed, "commit": commit(),
        "machine": f"{platform.node()}: {torch.get_num_threads()} CPU threads, torch {torch.__version__}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "bench/ttt_cpu_screen.py", *(argv if argv is not None else sys.argv[1:])]),
        "artifact": f"sha256:{file_sha256(args.artifact)}", "docs": args.docs,
        "docs_sha": hashlib.sha256(tokens.numpy().tobytes()).hexdigest()[:16],
        "positions": res["ttt_positions"], "seconds": round(time.time() - start, 1),
        "val_bpb": res["val_bpb"], "ttt_bpb": res["ttt_bpb"], "ttt_gain": res["ttt_gain"],
    })
    print(f"{args.name}: plain {res['val_bpb']:.5f} TTT {res['ttt_bpb']:.5f} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
