"""Export schemes on one trained checkpoint: brotli-11 vs per-group ZPAQ (with and without row
reordering), GPTQ vs GPTQ + LQER-asym (paired, same Hessians and validation tokens).

Measures bytes per section and in total, plain val bpb before quantization and from each scheme's
dequantized weights on the first `--val_docs` validation documents, and the seconds to serialize
(pack + compress) and to decompress (unpack + dequantize) each artifact. Every packed artifact is
read back and checked bit-exact against the weights it was packed from. Writes `OUT/export.json`.

    python bench/export_schemes.py --ckpt PATH --data_dir DIR --out DIR [--val_docs N] [--zpaq_level L]

Bytes and timings only (no weights, so no LQER and no gap), from the codes of an existing artifact:

    python bench/export_schemes.py --artifact PATH --out DIR [--zpaq_level L]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import commit  # noqa: E402  (bench/)

from lit_golf.eval.config import EvalConfig  # noqa: E402
from lit_golf.eval.runner import plain_bpb  # noqa: E402
from lit_golf.export.config import ExportConfig, PerGroupCompression, SchemeChoice  # noqa: E402
from lit_golf.export.hessians import collect_hessians  # noqa: E402
from lit_golf.export.pipeline import (  # noqa: E402
    artifact_header,
    calibration_batches,
    gpt_from_checkpoint,
    is_gate,
    pack_stored,
    quantize_model,
)
from lit_golf.export.schemes import int8_row, passthrough  # noqa: E402
from lit_golf.export.schemes.registry import dequantize_tensors  # noqa: E402
from lit_golf.export.serialize import StoredTensor, pack, read_artifact, unpack  # noqa: E402
from lit_golf.model import rebank_state_dict, unbank_state_dict  # noqa: E402

log = logging.getLogger("lit_golf")


def _val_bpb(gpt, datamodule, eval_cfg: EvalConfig, flat: dict[str, torch.Tensor] | None = None) -> float:
    """Plain val bpb of `gpt`, or of `flat` (unbanked weights) swapped in; the trained weights are put back."""
    extra = {"token_bytes": datamodule.val_token_bytes()} if hasattr(datamodule, "val_token_bytes") else {}
    if flat is None:
        return plain_bpb(gpt, datamodule.val_tokens(), datamodule.byte_luts(), eval_cfg, **extra)
    trained = {k: v.detach().clone() for k, v in gpt.state_dict().items()}
    gpt.load_state_dict(rebank_state_dict(flat, gpt.config))
    try:
        return plain_bpb(gpt, datamodule.val_tokens(), datamodule.byte_luts(), eval_cfg, **extra)
    finally:
        gpt.load_state_dict(trained)


def _pack_and_read(header: dict, stored: dict[str, StoredTensor], cfg: ExportConfig,
                   expected: dict[str, torch.Tensor]) -> dict:
    """Pack with `cfg`'s compression, read back, check bit-exactness; bytes per section and both timings."""
    started = time.perf_counter()
    blob, sizes = pack_stored(header, stored, cfg)
    serialize_s = time.perf_counter() - started
    started = time.perf_counter()
    _, loaded = unpack(blob)
    flat = dequantize_tensors(loaded)
    decompress_s = time.perf_counter() - started
    wrong = [n for n, t in expected.items() if not torch.equal(flat[n], t)]
    if wrong:
        raise RuntimeError(f"round trip is not bit-exact for {len(wrong)} tensors, e.g. {wrong[0]}")
    return {"bytes": len(blob), "sections": {name: size.compressed for name, size in sizes.items()},
            "serialize_s": serialize_s, "decompress_s": decompress_s}


def _gate_bytes(cfg: ExportConfig, originals: dict[str, torch.Tensor]) -> dict:
    """Compressed bytes of the gate tensors as float16 (passthrough) and as int8 rows (QuantGate)."""
    gates = [n for n, t in originals.items() if is_gate(n, t, cfg)]
    as_fp16 = {n: StoredTensor.from_parts(passthrough.NAME, "passthrough", passthrough.quantize(originals[n]))
               for n in gates}
    as_int8 = {n: StoredTensor.from_parts(int8_row.NAME, "gate", int8_row.quantize(originals[n]), int8_row.BITS)
               for n in gates}
    size = (lambda t: len(pack({}, t, cfg.compressor, cfg.brotli_quality)[0]) if t else 0)
    return {"tensors": gates, "fp16_bytes": size(as_fp16), "int8_row_bytes": size(as_int8)}


def measure(gpt, datamodule, out_dir: str | Path, val_docs: int | None = 2000, cfg: ExportConfig | None = None,
            zpaq_level: int = 5, device: str | None = None) -> dict:
    """All measurements for `gpt` (a trained GPT) on `datamodule`'s calibration and validation data."""
    cfg = cfg or ExportConfig()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpt = gpt.to(device).eval()
    eval_cfg = EvalConfig(max_docs=val_docs)
    started = time.perf_counter()
    hessians = collect_hessians(gpt, calibration_batches(datamodule, cfg), device)
    hessian_s = time.perf_counter() - started
    pre_quant = _val_bpb(gpt, datamodule, eval_cfg)
    originals = {k: v.detach().float().cpu() for k, v in unbank_state_dict(gpt.state_dict(), gpt.config).items()}

    gptq_cfg = replace(cfg, schemes=SchemeChoice(), per_group=PerGroupCompression(enabled=False))
    lqer_cfg = replace(gptq_cfg, schemes=SchemeChoice(attn="lqer_asym", mlp="lqer_asym", embed="lqer_asym"))
    results, flats = {}, {}
    for name, scheme_cfg in (("gptq", gptq_cfg), ("lqer", lqer_cfg)):
        started = time.perf_counter()
        stored, errors = quantize_model(gpt, hessians, scheme_cfg)
        quantize_s = time.perf_counter() - started
        flats[name] = dequantize_tensors(stored)
        header = artifact_header(gpt, scheme_cfg)
        variants = {"brotli": _pack_and_read(header, stored, scheme_cfg, flats[name])}
        if name == "gptq":
            for label, roles in (("pergroup", []), ("pergroup_reorder", list(PerGroupCompression().reorder_roles))):
                grouped = replace(scheme_cfg, per_group=PerGroupCompression(True, zpaq_level, roles))
                variants[label] = _pack_and_read(header, stored, grouped, flats[name])
        post_quant = _val_bpb(gpt, datamodule, eval_cfg, flats[name])
        results[name] = {"quantize_s": quantize_s, "relative_errors": errors, "val_bpb": post_quant,
                         "quant_gap": post_quant - pre_quant, "variants": variants,
                         "corrected": sorted(n for n, s in stored.items() if s.scheme == "lqer_asym")}
        log.info("export bench: %s gap %+.5f bpb, %s", name, post_quant - pre_quant,
                 {k: v["bytes"] for k, v in variants.items()})

    gptq, lqer = results["gptq"], results["lqer"]
    best = min(("pergroup", "pergroup_reorder"), key=lambda k: gptq["variants"][k]["bytes"])
    summary = {
        "brotli_bytes": gptq["variants"]["brotli"]["bytes"],
        "pergroup_bytes": gptq["variants"][best]["bytes"],
        "pergroup_variant": best,
        "pergroup_no_reorder_bytes": gptq["variants"]["pergroup"]["bytes"],
        "pergroup_reorder_bytes": gptq["variants"]["pergroup_reorder"]["bytes"],
        "saved_bytes": gptq["variants"]["brotli"]["bytes"] - gptq["variants"][best]["bytes"],
        "lqer_bytes": lqer["variants"]["brotli"]["sections"].get("lqer_asym", 0),
        "lqer_total_delta_bytes": lqer["variants"]["brotli"]["bytes"] - gptq["variants"]["brotli"]["bytes"],
        "quant_gap_gptq": gptq["quant_gap"],
        "quant_gap_lqer": lqer["quant_gap"],
        "serialize_s": gptq["variants"][best]["serialize_s"],
        "decompress_s": gptq["variants"][best]["decompress_s"],
        "brotli_serialize_s": gptq["variants"]["brotli"]["serialize_s"],
        "brotli_decompress_s": gptq["variants"]["brotli"]["decompress_s"],
        "val_bpb_pre_quant": pre_quant,
        "val_docs": val_docs,
        "hessian_s": hessian_s,
        "zpaq_level": zpaq_level,
        "gates": _gate_bytes(cfg, originals),
        "schemes": results,
        "export_config": asdict(cfg),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "commit": (commit() or "unknown"),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def repack(artifact_path: str | Path, out_dir: str | Path, zpaq_level: int = 5) -> dict:
    """brotli vs per-group ZPAQ (+- reordering) bytes and timings on the stored tensors of an artifact."""
    header, stored = read_artifact(artifact_path)
    header = {k: header[k] for k in ("gpt_config", "looping_active", "quantization") if k in header}
    expected = dequantize_tensors(stored)
    cfg = ExportConfig()
    variants = {"brotli": _pack_and_read(header, stored, cfg, expected)}
    for label, roles in (("pergroup", []), ("pergroup_reorder", list(PerGroupCompression().reorder_roles))):
        variants[label] = _pack_and_read(header, stored, replace(cfg, per_group=PerGroupCompression(True, zpaq_level,
                                                                                                      roles)), expected)
    best = min(("pergroup", "pergroup_reorder"), key=lambda k: variants[k]["bytes"])
    summary = {"artifact": str(artifact_path), "brotli_bytes": variants["brotli"]["bytes"],
               "pergroup_bytes": variants[best]["bytes"], "pergroup_variant": best,
               "saved_bytes": variants["brotli"]["bytes"] - variants[best]["bytes"],
               "serialize_s": variants[best]["serialize_s"], "decompress_s": variants[best]["decompress_s"],
               "zpaq_level": zpaq_level, "variants": variants, "commit": (commit() or "unknown")}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_repack.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint written by `lit-golf fit` (needs --data_dir)")
    source.add_argument("--artifact", help="artifact.ptz: bytes and timings of its codes only")
    parser.add_argument("--data_dir", help="data directory of the run (datasets/, tokenizers/)")
    parser.add_argument("--out", required=True, help="folder for export.json")
    parser.add_argument("--val_docs", type=int, default=2000, help="validation documents for the bpb gap")
    parser.add_argument("--zpaq_level", type=int, default=5, help="ZPAQ level of the per-group code sections")
    parser.add_argument("--calibration_batches", type=int, default=ExportConfig.calibration_batches)
    parser.add_argument("--calibration_batch_seqs", type=int, default=ExportConfig.calibration_batch_seqs)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.artifact:
        summary = repack(args.artifact, args.out, args.zpaq_level)
    else:
        if not args.data_dir:
            parser.error("--ckpt needs --data_dir")
        summary = measure_checkpoint(args)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, indent=2))
    return 0


def measure_checkpoint(args: argparse.Namespace) -> dict:
    from lit_golf.data.datamodule import GolfDataModule

    gpt = gpt_from_checkpoint(args.ckpt)
    datamodule = GolfDataModule(data_dir=args.data_dir, vocab_size=gpt.config.vocab_size)
    datamodule.setup("validate")
    return measure(gpt, datamodule, args.out, args.val_docs,
                   ExportConfig(calibration_batches=args.calibration_batches,
                                calibration_batch_seqs=args.calibration_batch_seqs), args.zpaq_level)


if __name__ == "__main__":
    sys.exit(main())
