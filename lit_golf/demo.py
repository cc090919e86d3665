"""`lit-golf demo`: the whole pipeline on one CPU, on text every Python install ships.

Builds a corpus from the standard library's docstrings, trains a small SentencePiece tokenizer,
prepares shards, fits `configs/tiny_cpu.yaml`, exports the GPTQ artifact and evaluates it with
plain and phased test-time training — the same commands a user runs on real data, in a few minutes.
Run again, it reuses the tokenizer and shards of the earlier run when they were made from the same
corpus with the same settings (and says so), and rebuilds them otherwise; a failing step fails the demo.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from jsonargparse import ArgumentParser

from lit_golf.config_files import CONFIG_DIR, config_names, resolve_config
from lit_golf.files import write_atomic
from lit_golf.tool_output import disk_errors_as_one_line, output_folder
from lit_golf.tool_parser import tool_parser

DEFAULT_CONFIG = CONFIG_DIR / "tiny_cpu.yaml"


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def prepare_demo_data(corpus: Path, data_dir: Path, vocab_size: int, num_val_docs: int) -> tuple[dict, bool] | None:
    """Tokenizer + shards for the demo: `(manifest, reused)`, or None when prepare-data failed (it printed why).

    Reused only when a stamp left by an earlier demo names the same corpus (sha256), vocabulary and
    validation split, and the manifest's tokenizer and shards are all still there; rebuilt otherwise.
    """
    from lit_golf.data import prepare
    from lit_golf.data.shards import (
        SPLITS,
        dataset_dir,
        file_sha256,
        manifest_path,
        shard_glob,
        tokenizer_path,
    )

    directory = dataset_dir(data_dir, vocab_size)
    stamp = directory / "demo_stamp.json"
    wanted = {"corpus_sha256": file_sha256(corpus), "vocab_size": vocab_size, "num_val_docs": num_val_docs}
    try:
        manifest = json.loads(manifest_path(data_dir, vocab_size).read_text())
        tokenizer = tokenizer_path(data_dir, vocab_size)
        intact = (
            json.loads(stamp.read_text()) == wanted
            and file_sha256(tokenizer) == manifest["tokenizer"]["sha256"]
            and all(len(list(directory.glob(shard_glob(s)))) == manifest["splits"][s]["shards"] for s in SPLITS)
        )
    except (OSError, ValueError, KeyError, TypeError):
        intact = False
    if intact:
        return manifest, True
    stamp.unlink(missing_ok=True)
    code = prepare.cli_main([
        "--input", str(corpus), "--train-tokenizer", "--vocab-size", str(vocab_size),
        "--num-val-docs", str(num_val_docs), "--out", str(data_dir), "--overwrite",
    ])
    if code != 0:
        return None
    write_atomic(stamp, json.dumps(wanted) + "\n")
    return json.loads(manifest_path(data_dir, vocab_size).read_text()), False


def build_parser() -> ArgumentParser:
    parser = tool_parser("lit-golf demo", __doc__.splitlines()[0], config_file=False)
    parser.add_argument("--out", default="demo_run", help="folder for corpus, data, logs and artifact")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="fit/test config: a file or a shipped name (default: tiny_cpu)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="size of the tokenizer trained on the corpus")
    parser.add_argument("--max-docs", type=int, default=20_000, help="at most this many documents from the standard library")
    parser.add_argument("--num-val-docs", type=int, default=300, help="first documents kept for validation")
    parser.add_argument("--max-steps", type=int, default=None, help="override the config's trainer.max_steps")
    return parser


def _check_args(args) -> Path:
    """The training config's path, once every number is one the demo can run with."""
    for name in ("max_docs", "num_val_docs", "max_steps"):  # --vocab-size: prepare-data says which sizes work
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    config = Path(resolve_config(args.config))
    if not config.is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file or config; pass a file or one of "
                                f"{', '.join(config_names())}")
    return config


def cli_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = _check_args(args)
    out = output_folder(args.out, "--out")
    with disk_errors_as_one_line("--out", out):
        return _run(args, config, out)


def _run(args, config: Path, out: Path) -> int:
    """Corpus, data, fit, test: each step says what it made, and a failing step stops the demo."""
    from lit_golf.data.demo_corpus import write_stdlib_corpus
    from lit_golf.lightning_cli import run_lightning_cli

    data_dir = out / "data"
    started = time.perf_counter()

    corpus = out / "corpus.jsonl"
    n_docs = write_stdlib_corpus(corpus, max_docs=args.max_docs)
    _say(f"1/4 corpus: {n_docs} documents from the Python standard library's docstrings -> {corpus}")

    prepared = prepare_demo_data(corpus, data_dir, args.vocab_size, args.num_val_docs)
    if prepared is None:
        _say("2/4 data: prepare-data failed (its error is above); demo stopped")
        return 2
    manifest, reused = prepared
    if reused:
        _say(f"2/4 data: reusing the tokenizer and shards an earlier demo made from this corpus under {data_dir} "
             "(delete that folder to rebuild)")
    else:
        _say(f"2/4 data: SentencePiece BPE vocab {args.vocab_size} trained on the training documents; "
             f"shards + manifest under {data_dir}")

    common = [
        "--config", str(config), "--data.data_dir", str(data_dir), "--model.gpt.vocab_size", str(args.vocab_size),
        "--trainer.logger.init_args.save_dir", str(out / "logs"),
    ]
    fit_args = ["fit", *common]
    if args.max_steps is not None:
        fit_args += ["--trainer.max_steps", str(args.max_steps)]
    fit = run_lightning_cli(fit_args)
    export = fit.trainer.named_callbacks["gptq"]
    pre_quant = float(fit.trainer.callback_metrics.get("val/bpb", float("nan")))
    gap = export.quant_gap["quant_gap_bpb"] if export.quant_gap else float("nan")
    _say(f"3/4 fit: {fit.trainer.global_step} steps, val bpb {pre_quant:.4f}; artifact {export.artifact_path} "
         f"(quantization gap {gap:+.4f} bpb)")

    test = run_lightning_cli(["test", *common, "--artifact", str(export.artifact_path)])
    results = test.model.test_results
    _say(
        "4/4 test (artifact): plain bpb {:.4f}, test-time-trained bpb {:.4f} (TTT gain {:.4f} bpb)".format(
            results["val_bpb"], results["ttt_bpb"], results["ttt_gain"]
        )
    )
    summary = {
        "documents": n_docs, "manifest": manifest, "steps": fit.trainer.global_step,
        "pre_quant_val_bpb": pre_quant, "artifact": str(export.artifact_path), "quant_gap": export.quant_gap,
        "test": {k: v for k, v in results.items() if isinstance(v, (int, float, str))},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_atomic(out / "demo_summary.json", json.dumps(summary, indent=2))
    _say(f"done in {summary['seconds']}s; summary in {out / 'demo_summary.json'}")
    return 0
