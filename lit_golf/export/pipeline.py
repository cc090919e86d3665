"""Trained GPT -> `artifact.ptz` + `artifact.json`: Hessians, a quantization scheme per tensor, packing,
size table, budget.

`export_model` is the whole pipeline for one process; the Lightning callback splits it into
`collect_hessians` (all ranks) and `build_artifact` (rank 0); `export_from_checkpoint` serves
`lit-golf export --ckpt PATH`.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import time
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

import lit_golf
from lit_golf.config import GPTConfig
from lit_golf.data.vocab import check_vocab
from lit_golf.export.budget import SizeRow, check_budget, size_table, total_bytes
from lit_golf.export.code_size import SCRIPT_NAME, CodeSize, measure_code
from lit_golf.export.config import GROUPS, ExportConfig
from lit_golf.export.gptq import output_error
from lit_golf.export.hessians import collect_hessians
from lit_golf.export.schemes import gptq, int8_row, lqer_asym, passthrough
from lit_golf.export.schemes.registry import scheme
from lit_golf.export.serialize import PASSTHROUGH, StoredTensor, pack, write_artifact
from lit_golf.files import write_atomic
from lit_golf.model import GPT, unbank_state_dict
from lit_golf.results import RESULTS_NAME

log = logging.getLogger("lit_golf")

ARTIFACT_NAME = "artifact.ptz"
REPORT_NAME = "artifact.json"


@dataclass
class ExportReport:
    """What an export wrote and how many bytes each part takes."""

    artifact_path: Path
    json_path: Path
    rows: list[SizeRow]
    code: CodeSize
    budget_bytes: int
    table: str
    relative_errors: dict[str, float] = field(default_factory=dict)
    serialize_s: float = 0.0  # packing and compression (counts toward the post-training budget)

    @property
    def total_bytes(self) -> int:
        return total_bytes(self.rows)

    @property
    def summary(self) -> str:
        """The size table under one line naming the artifact and its total (what the log and TensorBoard show)."""
        return f"artifact {self.artifact_path}: {self.total_bytes:,} bytes with code\n{self.table}"

    def check_budget(self) -> None:
        """Raise `ArtifactTooLarge` (summary line + table) when model + code exceed the budget."""
        check_budget(self.rows, self.budget_bytes, self.table)


def check_artifact_target(out_dir: str | Path, overwrite: bool, flag: str) -> None:
    """Raise one line when writing an artifact into `out_dir` would replace one silently or falsify a record.

    A run's own artifact folder (beside its results.json, which states the artifact's bytes and scores) is
    never written over, even with `overwrite`; any other existing artifact only with `overwrite`.
    """
    out_dir = Path(out_dir)
    existing = out_dir / ARTIFACT_NAME
    if not existing.is_file():
        return
    results = out_dir.parent / RESULTS_NAME
    if results.is_file():
        raise ValueError(
            f"{flag} {out_dir}: the artifact of run {out_dir.parent}, whose {RESULTS_NAME} records its bytes and "
            f"scores; a run's record is not rewritten: export into another {flag}"
        )
    if not overwrite:
        raise ValueError(
            f"{flag} {out_dir} already holds {ARTIFACT_NAME} ({existing.stat().st_size:,} bytes); pass --overwrite "
            f"true to replace it, or export into another {flag}"
        )


def is_gate(key: str, tensor: torch.Tensor, cfg: ExportConfig) -> bool:
    """Whether `key` is a small gate tensor by `cfg.schemes.gate_patterns` (2-D float tensors only)."""
    return tensor.is_floating_point() and tensor.dim() == 2 and \
        any(fnmatch.fnmatchcase(key, pattern) for pattern in cfg.schemes.gate_patterns)


@torch.no_grad()
def quantize_model(
    gpt: GPT, hessians: dict[str, torch.Tensor], cfg: ExportConfig
) -> tuple[dict[str, StoredTensor], dict[str, float]]:
    """Unbanked state dict of `gpt` as stored tensors, and each group's relative output error.

    Matrices from `gpt.quantized_matrices()` with more than `cfg.passthrough_max_numel` elements are
    GPTQ-quantized with their group's bits and clip sigmas; then, among those of groups whose scheme is
    'lqer_asym', the `cfg.lqer.top_k` with the largest ||W - Q(W)||_F get the LQER correction. Small
    2-D tensors matching `cfg.schemes.gate_patterns` take the gate scheme; every other tensor is float16.
    """
    matrices = {m.state_key: m for m in gpt.quantized_matrices()}
    stored: dict[str, StoredTensor] = {}
    originals: dict[str, torch.Tensor] = {}
    flat = unbank_state_dict(gpt.state_dict(), gpt.config)
    bar = tqdm(flat.items(), total=len(flat), desc="export: quantize", unit="tensor", leave=False)
    for key, tensor in bar:
        matrix = matrices.get(key)
        if matrix is None or tensor.numel() <= cfg.passthrough_max_numel:
            if cfg.schemes.gates == int8_row.NAME and is_gate(key, tensor, cfg):
                stored[key] = StoredTensor.from_parts(int8_row.NAME, "gate", int8_row.quantize(tensor), int8_row.BITS)
            else:
                stored[key] = StoredTensor.from_parts(passthrough.NAME, PASSTHROUGH, passthrough.quantize(tensor))
            continue
        bits, _ = cfg.group_quantization(matrix.group)
        bar.set_postfix(group=matrix.group, refresh=False)
        parts = gptq.quantize(tensor, hessians[matrix.name], cfg, matrix.group)
        stored[key] = StoredTensor.from_parts(gptq.NAME, matrix.group, parts, bits)
        originals[key] = tensor.detach().float().cpu()
    candidates = {key: float(torch.linalg.norm(originals[key] - gptq.dequantize(stored[key].parts)))
                  for key in originals if getattr(cfg.schemes, stored[key].group) == lqer_asym.NAME}
    for key in sorted(candidates, key=candidates.get, reverse=True)[:cfg.lqer.top_k]:
        base = stored[key]
        stored[key] = StoredTensor.from_parts(lqer_asym.NAME, base.group,
                                              lqer_asym.correct(originals[key], base.parts, hessians[matrices[key].name], cfg.lqer), base.bits)
    sums = {group: [0.0, 0.0] for group in GROUPS}
    for key, weight in originals.items():
        matrix, approx = matrices[key], scheme(stored[key].scheme).dequantize(stored[key].parts)
        error, signal = output_error(weight, approx, hessians[matrix.name])
        sums[matrix.group][0] += error
        sums[matrix.group][1] += signal
    errors = {group: err / sig for group, (err, sig) in sums.items() if sig > 0}
    return stored, errors


def artifact_header(gpt: GPT, cfg: ExportConfig, tokenizer: dict | None = None) -> dict:
    """What the loader needs besides the tensors: architecture, looping state, quantization, versions,
    and the tokenizer the model was trained with (`{"file", "sha256"}`, checked when it is evaluated)."""
    quantization = {}
    for group in GROUPS:
        bits, clip_sigmas = cfg.group_quantization(group)
        quantization[group] = {"bits": bits, "clip_sigmas": clip_sigmas, "scheme": getattr(cfg.schemes, group)}
    return {
        "gpt_config": gpt.config.to_dict(),
        "looping_active": bool(gpt.looping_active),
        "quantization": quantization,
        "lit_golf_version": lit_golf.__version__,
        "torch_version": torch.__version__.split("+")[0],
        **({"tokenizer": dict(tokenizer)} if tokenizer else {}),
    }


def tokenizer_record(datamodule) -> dict | None:
    """The datamodule's tokenizer file and sha256 for the artifact header (None when it cannot say)."""
    record = getattr(datamodule, "tokenizer_record", None)
    return record() if callable(record) else None


def _size_rows(parts: dict, errors: dict[str, float], code: CodeSize) -> list[SizeRow]:
    """One row per section (groups first, passthrough last), then header and code."""
    sections = [name for name in parts if name != "header"]
    order = [*(g for g in GROUPS if g in sections), *(n for n in sections if n not in (*GROUPS, PASSTHROUGH)),
             *([PASSTHROUGH] if PASSTHROUGH in sections else [])]
    rows = [SizeRow(name, parts[name].compressed, parts[name].raw, parts[name].tensors, parts[name].params,
                    errors.get(name)) for name in order]
    rows.append(SizeRow("header", parts["header"].compressed, parts["header"].raw))
    rows.append(SizeRow("code", code.compressed_bytes, code.minified_bytes, len(code.files)))
    return rows


def pack_stored(header: dict, stored: dict[str, StoredTensor], cfg: ExportConfig) -> tuple[bytes, dict]:
    """`serialize.pack` with the compression settings of `cfg`."""
    per_group = cfg.per_group
    return pack(header, stored, cfg.compressor, cfg.brotli_quality,
                zpaq_level=per_group.zpaq_level if per_group.enabled else None,
                reorder_roles=tuple(per_group.reorder_roles), zpaq_chunk_bytes=per_group.zpaq_chunk_bytes)


def build_artifact(
    gpt: GPT, hessians: dict[str, torch.Tensor], cfg: ExportConfig, out_dir: str | Path, tokenizer: dict | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Quantize `gpt`, write `artifact.ptz`, `train_gpt.py` and `artifact.json` into `out_dir` (each atomically),
    and report the sizes. An existing artifact there is refused unless `overwrite` (`check_artifact_target`).

    Does not check the budget (the caller decides when to fail: `report.check_budget()`), so an
    oversized artifact is still on disk for inspection.
    """
    out_dir = Path(out_dir)
    check_artifact_target(out_dir, overwrite, "out_dir")
    started = time.perf_counter()
    stored, errors = quantize_model(gpt, hessians, cfg)
    log.info("export: %d tensors quantized in %.1fs (%s); packing and compressing", len(stored),
             time.perf_counter() - started, ", ".join(sorted({t.scheme for t in stored.values()})))
    started = time.perf_counter()
    blob, parts = pack_stored(artifact_header(gpt, cfg, tokenizer), stored, cfg)
    serialize_s = time.perf_counter() - started
    log.info("export: packed and compressed (%s%s) in %.1fs", cfg.compressor,
             " + per-group zpaq" if cfg.per_group.enabled else "", serialize_s)
    artifact_path = write_artifact(out_dir / ARTIFACT_NAME, blob)
    code = measure_code(cfg.compressor, cfg.brotli_quality)
    write_atomic(out_dir / SCRIPT_NAME, code.script)  # the counted code, beside the artifact it ships with
    rows = _size_rows(parts, errors, code)
    report = ExportReport(artifact_path, out_dir / REPORT_NAME, rows, code, cfg.budget_bytes,
                          size_table(rows, cfg.budget_bytes), errors, serialize_s)
    summary = {
        "artifact": ARTIFACT_NAME,
        "artifact_bytes": len(blob),
        "code_bytes": code.compressed_bytes,
        "total_bytes": report.total_bytes,
        "budget_bytes": cfg.budget_bytes,
        "margin_bytes": cfg.budget_bytes - report.total_bytes,
        "serialize_s": serialize_s,
        "parts": [asdict(row) for row in rows],
        "code_files": code.files,
        "table": report.table.splitlines(),
        "export_config": cfg.to_dict(),
        "gpt_config": gpt.config.to_dict(),
        "looping_active": bool(gpt.looping_active),
    }
    write_atomic(report.json_path, json.dumps(summary, indent=2) + "\n")
    return report


def export_model(
    gpt: GPT, batches: Iterable, cfg: ExportConfig, out_dir: str | Path | None = None, tokenizer: dict | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Single-process export: Hessians on `batches`, GPTQ, write files, then the budget check (raises)."""
    hessians = collect_hessians(gpt, batches)
    report = build_artifact(gpt, hessians, cfg, out_dir or cfg.out_dir or "artifact", tokenizer, overwrite)
    report.check_budget()
    return report


def calibration_batches(datamodule, cfg: ExportConfig, rank: int = 0, world_size: int = 1) -> Iterable:
    """This rank's share of the datamodule's calibration batches (every `world_size`-th from `rank`).

    Assumes `datamodule.calibration_batches(n, seq_len, batch_seqs, seed)` yields the same batches on
    every rank (seeded), so the shares are disjoint and together cover all `n`.
    """
    if not hasattr(datamodule, "calibration_batches"):
        raise ValueError(
            f"{type(datamodule).__name__} has no calibration_batches(n, seq_len, batch_seqs, seed); "
            "GPTQ export needs a GolfDataModule (trainer.datamodule) for its calibration data"
        )
    batches = datamodule.calibration_batches(cfg.calibration_batches, cfg.calibration_seq_len,
                                             cfg.calibration_batch_seqs, cfg.calibration_seed)
    return itertools.islice(batches, rank, None, world_size)


def load_checkpoint(ckpt_path: str | Path, weights_only: bool = True) -> dict:
    """The dict of a Lightning checkpoint written by `lit-golf fit` (`state_dict` with `gpt.*` weights).

    Anything else (a missing file, a folder, garbage, a plain tensor or state dict, another model's
    checkpoint) raises one line that names the file; torch's own unpickling advice never reaches the user.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what}; pass --ckpt PATH of a fit run's .ckpt")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4" for a pickle that is no checkpoint
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # torch's message may advise weights_only=False: do not pass that on
        why = ("not a complete file written by torch.save: truncated, e.g. by a full disk, or another kind of file"
               if not zipfile.is_zipfile(path) else f"torch.load fails: {type(exc).__name__}")
        raise ValueError(f"{path} is not a Lightning checkpoint written by `lit-golf fit` ({why})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(
            f"{path} is not a Lightning checkpoint written by `lit-golf fit` (a torch file without 'state_dict'); "
            "pass a fit run's .ckpt"
        )
    if not any(k.startswith("gpt.") for k in ckpt["state_dict"]):
        raise ValueError(
            f"{path} is not a Lightning checkpoint written by `lit-golf fit` (its state_dict has no 'gpt.*' weights)"
        )
    return ckpt


def check_checkpoint(ckpt_path: str | Path) -> None:
    """Raise one line unless `ckpt_path` is a checkpoint written by `lit-golf fit` (cheap: memory-mapped).

    `last` is Lightning's name for the latest checkpoint of the run (`RunCheckpoint` finds it); it passes."""
    if str(ckpt_path) == "last":
        return
    load_checkpoint(ckpt_path, weights_only=True)


def checkpoint_weights(
    ckpt: dict, state: dict[str, torch.Tensor], use_ema: bool = True, source: str | Path = "checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """The GPT weights to evaluate or export from `ckpt`, and which they are (for the log).

    `state` holds the checkpoint's raw `gpt.*` weights without the prefix. When the fit ran the `EMA`
    callback, its fp32 average sits in `ckpt["callbacks"]["EMA"]["shadow"]`; as the fit's own artifact
    does, that average is used (cast to each weight's dtype) unless `use_ema` is False.
    """
    ema = next((v for k, v in (ckpt.get("callbacks") or {}).items()
                if k.split("{")[0] == "EMA" and isinstance(v, dict) and v.get("shadow")), None)
    if ema is None:
        return state, "raw weights (the checkpoint holds no EMA average)"
    if not use_ema:
        return state, "raw weights (--model.use_ema_weights false; the checkpoint also holds an EMA average)"
    shadow = ema["shadow"]
    missing = sorted(k for k, v in state.items() if v.is_floating_point() and k not in shadow)
    extra = sorted(set(shadow) - set(state))
    if missing or extra:
        raise ValueError(
            f"{source}: the EMA average does not match the weights (no average for {missing}, unknown {extra}); "
            "--model.use_ema_weights false uses the raw weights"
        )
    averaged = {k: shadow[k].to(v.dtype) if k in shadow else v for k, v in state.items()}
    return averaged, f"EMA average (decay {ema.get('decay')}; --model.use_ema_weights false selects the raw weights)"


def gpt_from_checkpoint(
    ckpt_path: str | Path, fallback_config: GPTConfig | None = None, use_ema: bool = True
) -> GPT:
    """The inner GPT of a Lightning checkpoint written by `GolfLightningModule`.

    Assumes what that module saves: hyperparameters with the GPTConfig as a dict under 'gpt' (used
    when present, else `fallback_config`), weights under 'state_dict' with the prefix 'gpt.' (a
    'gpt._orig_mod.' prefix from a compiled model is accepted too), and optionally a top-level
    'looping_active'; without it the model is exported looping when the config loops (the record
    turns looping on mid-training, so a finished run ends with it on). The weights are the EMA
    average when the checkpoint holds one and `use_ema` (see `checkpoint_weights`).
    """
    ckpt_path = Path(ckpt_path)
    # weights_only=False: Lightning checkpoints hold plain Python hyperparameters; the file is the user's own.
    ckpt = load_checkpoint(ckpt_path, weights_only=False)
    saved = ckpt.get("hyper_parameters", {}).get("gpt")
    if isinstance(saved, GPTConfig):
        config = saved
    elif isinstance(saved, dict):
        config = GPTConfig.from_dict(saved)
    else:
        config = fallback_config or GPTConfig()
    state = {}
    for prefix in ("gpt._orig_mod.", "gpt."):
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if state:
            break
    state, which = checkpoint_weights(ckpt, state, use_ema, ckpt_path)
    gpt = GPT(config)
    try:
        gpt.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise ValueError(f"{ckpt_path} does not fit GPTConfig {config}: {first}") from None
    gpt.looping_active = bool(ckpt.get("looping_active", config.num_loops > 0))
    log.info("checkpoint %s: %s", ckpt_path, which)
    return gpt


def export_from_checkpoint(
    module: nn.Module | None, datamodule, ckpt_path: str | Path | None, out_dir: str | Path, cfg: ExportConfig,
    device: torch.device | str | None = None, overwrite: bool = False,
) -> ExportReport:
    """`lit-golf export`: GPTQ-export the GPT stored in `ckpt_path` with `datamodule`'s calibration batches.

    `module` (a GolfLightningModule or None) supplies the GPTConfig when the checkpoint has none, and
    `use_ema_weights` (default True: the checkpoint's EMA average when it holds one).
    Runs on CUDA when available. Raises `ArtifactTooLarge` (with the size table) after writing the files
    when over budget; else logs the size table.
    """
    if ckpt_path is None:
        raise ValueError("export needs a checkpoint: pass --ckpt PATH (a .ckpt written by `lit-golf fit`)")
    gpt = gpt_from_checkpoint(ckpt_path, getattr(module, "gpt_config", None), getattr(module, "use_ema_weights", True))
    check_vocab(gpt.config.vocab_size, datamodule, f"checkpoint {ckpt_path}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpt.to(device)
    report = export_model(gpt, calibration_batches(datamodule, cfg), cfg, out_dir, tokenizer_record(datamodule),
                          overwrite)
    log.info(report.summary)
    return report
