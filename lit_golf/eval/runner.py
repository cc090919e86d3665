"""`evaluate`: plain (+ sliding) evaluation, then phased LoRA TTT on a copy of the model, as one dict of numbers."""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from lit_golf.data.documents import find_documents, truncate_to_documents
from lit_golf.data.shards import BOS_ID
from lit_golf.data.tokenizer import ByteLUTs
from lit_golf.distributed import rank_and_world
from lit_golf.eval.config import EvalConfig
from lit_golf.eval.metric import BitsPerByte
from lit_golf.eval.plain import eval_plain, eval_sliding
from lit_golf.eval.runtime import Stopwatch, model_device
from lit_golf.eval.ttt import TTTTrace, run_phased_ttt
from lit_golf.eval.valset import ValSet

log = logging.getLogger("lit_golf")


def evaluate(
    model: nn.Module,
    val_tokens: torch.Tensor,
    luts: ByteLUTs,
    cfg: EvalConfig | None = None,
    *,
    progress: bool = True,
    trace: TTTTrace | None = None,
    token_bytes: torch.Tensor | None = None,
) -> dict[str, float]:
    """Score `val_tokens` with `model` (left unchanged) on every rank of the current process group.

    Returns `val_bpb`, `val_loss`, `val_tokens`, `val_bytes`; with sliding, `sliding_*` alike; with
    TTT, `ttt_*` alike plus `ttt_gain` (plain minus TTT bpb), `ttt_docs`, `ttt_positions` (this rank's rows x
    width run, `ttt.planned_positions`), `ttt_tokens_per_second`,
    `ttt_bpb_after_<stage>` (everything scored by the end of each phase);
    `time_<section>_s` per section and `eval_seconds` in total. Safe to call under
    `torch.inference_mode()` (Lightning's test loop): TTT needs autograd, so it is switched back on.
    `token_bytes`: the byte sidecar of `val_tokens` (CaseOps data), else bytes come from `luts`.
    """
    cfg = cfg or EvalConfig()
    device = model_device(model)
    stopwatch = Stopwatch(device)
    results: dict[str, float] = {}
    with torch.inference_mode(False), stopwatch.section("eval"):
        val = _valset(val_tokens, luts, cfg, device, token_bytes)
        with stopwatch.section("plain"):
            results.update(_scores("val", eval_plain(model, val, cfg, progress)))
        _log_section("plain", results["val_bpb"], stopwatch.seconds["plain"])
        if cfg.sliding.enabled:
            with stopwatch.section("sliding"):
                results.update(_scores("sliding", eval_sliding(model, val, cfg, progress)))
            _log_section("sliding", results["sliding_bpb"], stopwatch.seconds["sliding"])
        if cfg.ttt.enabled:
            ttt_model = copy.deepcopy(model)
            phase_bpb: dict[str, float] = {}
            counts: dict[str, int] = {}
            with stopwatch.section("ttt"):
                metric = run_phased_ttt(ttt_model, val, cfg, stopwatch=stopwatch, progress=progress, trace=trace,
                                        phase_bpb=phase_bpb, counts=counts)
            del ttt_model
            results.update(_scores("ttt", metric))
            results.update({f"ttt_bpb_after_{name}": bpb for name, bpb in phase_bpb.items()})
            results["ttt_gain"] = results["val_bpb"] - results["ttt_bpb"]
            results["ttt_docs"] = len(find_documents(val.tokens, BOS_ID))
            results["ttt_positions"] = counts["positions"]
            results["ttt_tokens_per_second"] = results["ttt_tokens"] / stopwatch.seconds["ttt"]
    results.update({f"time_{name}_s": seconds for name, seconds in stopwatch.seconds.items() if name != "eval"})
    results["eval_seconds"] = stopwatch.seconds["eval"]
    if rank_and_world()[0] == 0:
        log.info("evaluation: %s", " ".join(f"{k}={v:.6g}" for k, v in results.items()))
    return results


def plain_bpb(
    model: nn.Module,
    val_tokens: torch.Tensor,
    luts: ByteLUTs,
    cfg: EvalConfig | None = None,
    token_bytes: torch.Tensor | None = None,
) -> float:
    """Plain-eval bits per byte of `model` (every rank takes part): the cheap number for before/after checks.
    It says what it scores when it starts and the result when done: on a CPU it can take minutes."""
    cfg = cfg or EvalConfig()
    with torch.inference_mode(False):
        val = _valset(val_tokens, luts, cfg, model_device(model), token_bytes)
        if rank_and_world()[0] == 0:
            log.info("evaluation plain: scoring %s validation tokens in windows of %d on %s", f"{val.num_targets:,}",
                     cfg.plain.seq_len, val.device)
        stopwatch = Stopwatch(val.device)
        with stopwatch.section("plain"):
            bpb = eval_plain(model, val, cfg).totals()["bpb"]
        _log_section("plain", bpb, stopwatch.seconds["plain"])
        return bpb


def _valset(
    val_tokens: torch.Tensor, luts: ByteLUTs, cfg: EvalConfig, device: torch.device, token_bytes: torch.Tensor | None
) -> ValSet:
    tokens = torch.as_tensor(val_tokens).to(device=device, dtype=torch.int64)
    tokens = truncate_to_documents(tokens, BOS_ID, cfg.max_docs, cfg.max_tokens)
    kept = None if token_bytes is None else torch.as_tensor(token_bytes)[: tokens.numel()]  # a prefix is kept
    return ValSet.build(tokens, luts, device, kept)


def _log_section(name: str, bpb: float, seconds: float) -> None:
    """Each section's result as soon as it is known, so a long TTT pass never hides the earlier numbers."""
    if rank_and_world()[0] == 0:
        log.info("evaluation %s: bpb %.5f in %.1fs", name, bpb, seconds)


def _scores(prefix: str, metric: BitsPerByte) -> dict[str, float]:
    totals = metric.totals()
    return {
        f"{prefix}_bpb": totals["bpb"],
        f"{prefix}_loss": totals["loss"],
        f"{prefix}_tokens": int(totals["tokens"]),
        f"{prefix}_bytes": int(totals["bytes"]),
    }
