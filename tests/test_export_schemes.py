"""Export schemes: each scheme and compressor round-trips bit-exactly, LQER-asym beats GPTQ alone, per-group
ZPAQ code sections, format 1 still loads, unknown schemes/compressors and damage are refused in one line."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch
from test_export import SMALL_EXPORT, correlated_inputs, tiny_gpt, token_batches

from lit_golf import artifact
from lit_golf.export import serialize
from lit_golf.export.budget import ArtifactTooLarge
from lit_golf.export.config import ExportConfig
from lit_golf.export.gptq import output_error
from lit_golf.export.hessians import collect_hessians
from lit_golf.export.pipeline import artifact_header, export_model, pack_stored, quantize_model
from lit_golf.export.schemes import gptq, int8_row, lqer_asym
from lit_golf.export.schemes.registry import SCHEMES, dequantize_tensors
from lit_golf.export.serialize import ArtifactFormatError, StoredTensor, nearest_neighbour_order, pack, unpack
from lit_golf.model import rebank_state_dict, unbank_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_zpaq = pytest.mark.skipif(importlib.util.find_spec("zpaq") is None, reason="needs `pip install zpaq`")

FORMAT_1 = Path(__file__).parent / "data" / "artifact_format_v1.ptz"
LQER_ON = dict(schemes={"attn": "lqer_asym", "mlp": "lqer_asym", "embed": "lqer_asym", "gates": "int8_row"},
               lqer={"top_k": 3, "rank": 2, "b_group_size": 16})
PER_GROUP = dict(per_group={"enabled": True, "zpaq_level": 1})
# (compressor, zpaq level or None, reordered roles): every way a part can be stored
STORAGE = [("brotli", None, ()), ("lzma", None, ()), pytest.param("brotli", 1, (), marks=needs_zpaq),
           pytest.param("brotli", 2, ("attn.q", "tok_emb"), marks=needs_zpaq)]
ROW_ORDER = serialize.ROW_ORDER


def correlated_layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = correlated_inputs(4096, 256, seed)
    weight = torch.randn(128, 256, generator=torch.Generator().manual_seed(seed)) * 0.05
    return weight, inputs.T @ inputs / inputs.shape[0]


def one_of_each_scheme() -> dict[str, StoredTensor]:
    weight, hessian = correlated_layer()
    cfg = ExportConfig(**LQER_ON)
    gate = torch.randn(8, 48, generator=torch.Generator().manual_seed(1))
    return {
        "blocks.0.attn.q": StoredTensor.from_parts("gptq", "attn", gptq.quantize(weight, hessian, cfg, "attn"), 6),
        "blocks.1.attn.q": StoredTensor.from_parts("lqer_asym", "attn",
                                                   lqer_asym.quantize(weight * 2, hessian, cfg, "attn"), 6),
        "skip_gates": StoredTensor.from_parts("int8_row", "gate", int8_row.quantize(gate), 8),
        "gain": StoredTensor.from_parts("passthrough", "passthrough",
                                        SCHEMES["passthrough"].quantize(torch.randn(24))),
    }


@pytest.mark.parametrize(("compressor", "zpaq_level", "reorder"), STORAGE)
def test_every_scheme_round_trips_bit_exactly_through_every_compressor(compressor, zpaq_level, reorder):
    tensors = one_of_each_scheme()
    assert {s.scheme for s in tensors.values()} == set(SCHEMES)
    blob, sizes = pack({}, tensors, compressor, 5, zpaq_level, reorder)
    assert blob == pack({}, tensors, compressor, 5, zpaq_level, reorder)[0]
    assert sum(p.compressed for p in sizes.values()) == len(blob)
    header, loaded = unpack(blob)
    for name, stored in tensors.items():
        got = loaded[name]
        assert (got.scheme, got.group, got.bits) == (stored.scheme, stored.group, stored.bits), name
        assert set(got.parts) == set(stored.parts), name
        for part, t in stored.parts.items():
            assert got.parts[part].dtype == t.dtype and torch.equal(got.parts[part], t), (name, part)
    expected, restored = dequantize_tensors(tensors), dequantize_tensors(loaded)
    assert all(torch.equal(restored[n], expected[n]) for n in tensors)
    codecs = {s["name"]: s["compressor"] for s in header["sections"]}
    if zpaq_level is None:
        assert set(codecs.values()) == {compressor}
    else:  # the codes of every role in a ZPAQ section; scales, factors and float16 tensors stay with brotli
        assert codecs["attn.q"] == "zpaq" and codecs["attn"] == codecs["lqer_asym"] == codecs["gate"] == "brotli"
        assert (ROW_ORDER in codecs) == bool(reorder)
        entry = next(e for e in header["tensors"] if e["name"] == "blocks.1.attn.q")
        assert entry["parts"]["data"]["transposed"] and entry["parts"]["data"]["section"] == "attn.q"



@needs_zpaq
def test_zpaq_sections_cut_into_equal_pieces_decode_to_the_same_tensors():
    """Pieces decompress in parallel at load time; the reader joins them, so the tensors cannot tell."""
    tensors = one_of_each_scheme()  # attn.q codes: 2 x 128 x 256 = 65,536 B
    whole, _ = pack({}, tensors, "brotli", 5, 1, ())
    cut, _ = pack({}, tensors, "brotli", 5, 1, (), zpaq_chunk_bytes=20_000)
    sections = {s["name"]: s for s in unpack(cut)[0]["sections"]}
    assert len(next(s for s in unpack(whole)[0]["sections"] if s["name"] == "attn.q")["chunks"]) == 1
    assert len(sections["attn.q"]["chunks"]) == 4  # ceil(65,536 / 20,000) pieces of 16,384 B, not 3 + a stub
    assert len(sections["attn"]["chunks"]) == 1  # brotli sections keep their own cut
    assert cut == pack({}, tensors, "brotli", 5, 1, (), zpaq_chunk_bytes=20_000)[0]  # still deterministic
    loaded, expected = dequantize_tensors(unpack(cut)[1]), dequantize_tensors(tensors)
    assert all(torch.equal(loaded[name], expected[name]) for name in tensors)
    assert serialize._piece_bytes(65_536, 20_000) == 16_384 and serialize._piece_bytes(65_536, None) == 65_536
    assert serialize._piece_bytes(10, 20_000) == 10 and serialize._piece_bytes(0, 5) == 1

def test_lqer_lowers_weight_and_output_error_versus_gptq_alone_on_a_correlated_layer():
    cfg = ExportConfig()  # the frontier's rank 4, INT2 A, INT4 B in groups of 64
    for seed in range(4):
        weight, hessian = correlated_layer(seed)
        plain = gptq.dequantize(gptq.quantize(weight, hessian, cfg, "attn"))
        corrected_parts = lqer_asym.quantize(weight, hessian, cfg, "attn")
        corrected = lqer_asym.dequantize(corrected_parts)
        assert torch.linalg.norm(weight - corrected) < torch.linalg.norm(weight - plain), seed
        assert output_error(weight, corrected, hessian)[0] < output_error(weight, plain, hessian)[0], seed
        a, b = corrected_parts["lqer_a"], corrected_parts["lqer_b"]
        assert a.shape == (128, 4) and int(a.min()) >= -2 and int(a.max()) <= 1  # INT2
        assert b.shape == (4, 256) and int(b.min()) >= -8 and int(b.max()) <= 7  # INT4
        assert corrected_parts["lqer_a_scale"].numel() == 1 and corrected_parts["lqer_b_scale"].numel() == 4 * 256 // 64


def test_int8_row_is_within_half_a_step_and_half_the_bytes_of_float16():
    gate = torch.randn(8, 512, generator=torch.Generator().manual_seed(0))
    gate[3] = 0.0
    parts = int8_row.quantize(gate)
    assert parts["data"].dtype == torch.int8 and parts["scale"].dtype == torch.float16
    step = parts["scale"].float()[:, None]
    assert bool(((gate - int8_row.dequantize(parts)).abs() <= step / 2 * (1 + 1e-3)).all())
    assert int(parts["data"].abs().max()) == 127 and not parts["data"][3].any()
    stored = parts["data"].numel() + 2 * parts["scale"].numel()
    assert stored < 0.51 * 2 * gate.numel()


def test_nearest_neighbour_order_is_a_greedy_permutation():
    rows = torch.tensor([[0, 0], [9, 9], [1, 0], [8, 9], [1, 1]], dtype=torch.int8)
    assert nearest_neighbour_order(rows).tolist() == [0, 2, 4, 3, 1]
    big = torch.randint(-31, 32, (300, 16), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    order = nearest_neighbour_order(big)
    assert sorted(order.tolist()) == list(range(300)) and order[0] == 0


@pytest.fixture(scope="module")
def exported_tiny():
    gpt, batches = tiny_gpt(sparse_attn_gate=True), token_batches(3)
    return gpt, batches, collect_hessians(gpt, batches)


def test_default_config_writes_the_format_1_sections_byte_for_byte():
    """The record's settings (GPTQ, brotli) store exactly the bytes format 1 stored; only the header grew."""
    old = FORMAT_1.read_bytes()
    header, tensors = unpack(old, str(FORMAT_1))
    assert header["format_version"] == 1 and {s.scheme for s in tensors.values()} == {"gptq", "passthrough"}
    new = pack({k: header[k] for k in ("gpt_config", "looping_active")}, tensors, "brotli", 5)[0]
    _, old_end, _ = serialize._read_preamble(old, "old")
    _, new_end, version = serialize._read_preamble(new, "new")
    assert version == serialize.FORMAT_VERSION == 2
    assert new[new_end:] == old[old_end:]
    model = artifact.load(FORMAT_1)
    expected = rebank_state_dict(dequantize_tensors(tensors), model.config)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert any(s.scale is not None and s.data.abs().max() > 1 for s in tensors.values())  # real codes
    assert torch.isfinite(model(torch.randint(0, 64, (1, 8)))).all()


@needs_zpaq
def test_lqer_gates_and_per_group_export_loads_bit_exactly_and_lowers_the_error(exported_tiny, tmp_path):
    gpt, batches, hessians = exported_tiny
    base = ExportConfig(**SMALL_EXPORT)
    plain, plain_errors = quantize_model(gpt, hessians, base)
    cfg = ExportConfig(**SMALL_EXPORT, **LQER_ON, **PER_GROUP)
    stored, errors = quantize_model(gpt, hessians, cfg)
    corrected = [n for n, s in stored.items() if s.scheme == "lqer_asym"]
    assert len(corrected) == 3
    gaps = {n: float(torch.linalg.norm(gptq.dequantize(plain[n].parts) - gpt_weight(gpt, n))) for n in plain
            if plain[n].quantized}
    assert set(corrected) == set(sorted(gaps, key=gaps.get)[-3:])  # the three largest GPTQ errors
    gates = {n for n, s in stored.items() if s.scheme == "int8_row"}  # QuantGate: the attention gates, as 04-23
    assert gates == {f"blocks.{i}.attn.gate_weight" for i in range(gpt.config.num_layers)}
    assert all(stored[n].group == "gate" for n in gates) and stored["skip_gates"].scheme == "passthrough"
    assert sum(errors.values()) < sum(plain_errors.values())
    report = export_model(gpt, batches, cfg, tmp_path)
    loaded = artifact.load(report.artifact_path)
    expected = dequantize_tensors(stored)
    flat = unbank_state_dict(loaded.state_dict(), loaded.config)
    assert all(torch.equal(flat[n], expected[n]) for n in expected)
    parts = [row.part for row in report.rows]
    assert parts[:3] == ["attn", "mlp", "embed"] and parts[-3:] == ["passthrough", "header", "code"]
    for part in ("attn.q", "mlp.up", "tok_emb", "row_order", "lqer_asym", "gate"):
        assert part in parts, part
    summary = json.loads(report.json_path.read_text())
    assert summary["serialize_s"] > 0 and summary["export_config"]["per_group"]["enabled"]


def gpt_weight(gpt, name: str) -> torch.Tensor:
    return unbank_state_dict(gpt.state_dict(), gpt.config)[name].float()


@needs_zpaq
def test_budget_table_has_rows_for_the_new_parts_and_still_trips(exported_tiny, tmp_path):
    gpt, batches, _ = exported_tiny
    cfg = ExportConfig(**{**SMALL_EXPORT, "budget_bytes": 1000}, **LQER_ON, **PER_GROUP)
    with pytest.raises(ArtifactTooLarge) as info:
        export_model(gpt, batches, cfg, tmp_path)
    first, *table = str(info.value).splitlines()
    assert re.match(r"artifact \+ code = [\d,]+ bytes, [\d,]+ over the 1,000-byte budget; ", first)
    for part in ("attn.q", "mlp.down", "tok_emb", "row_order", "lqer_asym", "gate", "header", "code", "total"):
        assert any(line.split()[0] == part for line in table if line.strip()), part


# ----------------------------------------------------------------------------- refusals
def rewrite_header(blob: bytes, change) -> bytes:
    """The artifact with its header JSON changed by `change(meta)` (checksums made consistent again)."""
    compressor, end, version = serialize._read_preamble(blob, "x")
    meta = json.loads(serialize.decompress(blob[serialize.PREAMBLE.size:end], compressor))
    change(meta)
    header = serialize.compress(json.dumps(meta).encode(), compressor)
    preamble = serialize.PREAMBLE.pack(serialize.MAGIC, version, serialize.COMPRESSOR_IDS[compressor], 0,
                                       len(header), zlib.crc32(header))
    return preamble + header + blob[end:]


@needs_zpaq
def test_unknown_scheme_compressor_version_or_corrupt_section_is_refused_in_one_line(tmp_path):
    blob = pack({}, one_of_each_scheme(), "brotli", 5, 1, ("attn.q",))[0]

    def rename_scheme(meta):
        meta["tensors"][0]["scheme"] = "nf4"

    def rename_compressor(meta):
        meta["sections"][0]["compressor"] = "lrzip"

    def drop_a_part(meta):
        del next(e for e in meta["tensors"] if e["scheme"] == "lqer_asym")["parts"]["lqer_b"]

    zpaq_at = len(blob) - 1
    _, end, _ = serialize._read_preamble(blob, "x")
    meta = json.loads(serialize.decompress(blob[serialize.PREAMBLE.size:end], "brotli"))
    offset = end
    for section in meta["sections"]:
        if section["compressor"] == "zpaq":
            zpaq_at = offset + section["chunks"][0][0] // 2
            break
        offset += sum(c[0] for c in section["chunks"])
    cases = {
        "scheme.ptz": (rewrite_header(blob, rename_scheme), r"unknown quantization scheme 'nf4'; this lit_golf knows"),
        "codec.ptz": (rewrite_header(blob, rename_compressor), r"section 'row_order' uses unknown compressor 'lrzip'; this lit_golf reads"),
        "part.ptz": (rewrite_header(blob, drop_a_part),
                     r"corrupt artifact \(tensor 'blocks.1.attn.q' of scheme 'lqer_asym' has no part 'lqer_b'\)"),
        "zpaq.ptz": (blob[:zpaq_at] + bytes([blob[zpaq_at] ^ 0xFF]) + blob[zpaq_at + 1:],
                     r"corrupt artifact \(checksum mismatch in section 'attn.q'\)"),
        "future.ptz": (blob[:8] + struct.pack("<H", 3) + blob[10:],
                       r"artifact format version 3, this lit_golf reads versions 1, 2; load it with"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ArtifactFormatError, match=f"{re.escape(str(path))}: {message}") as info:
            artifact.load(path)
        assert "\n" not in str(info.value), name


def test_without_the_zpaq_package_per_group_compression_fails_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "zpaq", None)  # import zpaq now raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"needs the zpaq package: pip install zpaq") as info:
        pack({}, one_of_each_scheme(), "brotli", 5, 1)
    assert "\n" not in str(info.value)


def test_config_defaults_reproduce_the_record_and_bad_fields_are_one_line(exported_tiny):
    gpt, _, hessians = exported_tiny
    cfg = ExportConfig(**SMALL_EXPORT)
    assert not cfg.per_group.enabled and cfg.schemes.attn == cfg.schemes.mlp == cfg.schemes.embed == "gptq"
    stored, _ = quantize_model(gpt, hessians, cfg)
    assert {s.scheme for s in stored.values()} == {"gptq", "passthrough"}
    header = artifact_header(gpt, cfg)
    sections = json.loads(json.dumps(unpack(pack_stored(header, stored, cfg)[0])[0]["sections"]))
    assert {s["compressor"] for s in sections} == {"brotli"}
    assert ExportConfig(**cfg.to_dict()) == cfg  # a report's export_config round-trips
    for bad, message in [({"schemes": {"attn": "nf4"}}, r"schemes\.attn='nf4' must be one of"),
                         ({"schemes": {"gates": "gptq"}}, r"schemes\.gates='gptq' must be one of"),
                         ({"lqer": {"a_bits": 1}}, r"lqer\.a_bits=1 must be in 2\.\.8"),
                         ({"per_group": {"zpaq_level": 9}}, r"per_group\.zpaq_level=9 must be in 1\.\.5"),
                         ({"per_group": {"zpaq_chunk_bytes": 0}}, r"per_group\.zpaq_chunk_bytes=0 must be at least 1")]:
        with pytest.raises(ValueError, match=message):
            ExportConfig(**bad)
