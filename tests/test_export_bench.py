"""bench/export_schemes.py on the CPU: a tiny model on the tiny real data set, every number in export.json."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from script_output import load_bench_script
from test_export import SMALL_EXPORT, tiny_gpt

from lit_golf.export.config import ExportConfig

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(importlib.util.find_spec("zpaq") is None, reason="needs `pip install zpaq`")]


def load_bench():
    return load_bench_script("export_schemes")


def test_export_bench_measures_bytes_gaps_and_timings_on_cpu(tiny_data, tmp_path):
    from lit_golf.data.datamodule import GolfDataModule

    bench = load_bench()
    gpt = tiny_gpt(vocab_size=tiny_data.vocab_size, sparse_attn_gate=True)
    state = {f"gpt.{k}": v for k, v in gpt.state_dict().items()}
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"gpt": gpt.config.to_dict()}}, ckpt)
    datamodule = GolfDataModule(data_dir=str(tiny_data.data_dir), vocab_size=tiny_data.vocab_size)
    datamodule.setup("validate")
    cfg = ExportConfig(**{**SMALL_EXPORT, "lqer": {"top_k": 2, "rank": 2, "b_group_size": 16}})
    summary = bench.measure(gpt, datamodule, tmp_path / "out", val_docs=4, cfg=cfg, zpaq_level=1, device="cpu")
    written = json.loads((tmp_path / "out" / "export.json").read_text())
    assert written["brotli_bytes"] == summary["brotli_bytes"]
    for key in ("brotli_bytes", "pergroup_bytes", "saved_bytes", "lqer_bytes", "quant_gap_gptq", "quant_gap_lqer",
                "serialize_s", "decompress_s", "commit"):
        assert key in written, key
    assert written["saved_bytes"] == written["brotli_bytes"] - written["pergroup_bytes"]
    assert written["lqer_bytes"] > 0 and len(written["schemes"]["lqer"]["corrected"]) == 2
    assert written["serialize_s"] > 0 and written["decompress_s"] > 0
    gptq = written["schemes"]["gptq"]
    for variant in gptq["variants"].values():  # the per-section bytes add up to the artifact
        assert sum(variant["sections"].values()) == variant["bytes"]
    assert "mlp.up" in gptq["variants"]["pergroup_reorder"]["sections"]
    assert "row_order" in gptq["variants"]["pergroup_reorder"]["sections"]
    assert "row_order" not in gptq["variants"]["pergroup"]["sections"]
    gap = written["schemes"]["lqer"]["val_bpb"] - written["val_bpb_pre_quant"]
    assert written["quant_gap_lqer"] == pytest.approx(gap)
    # QuantGate as the references do it: the sparse attention gates, never the U-Net skip gates
    gates = written["gates"]["tensors"]
    assert gates == [f"blocks.{i}.attn.gate_weight" for i in range(gpt.config.num_layers)]
    assert "skip_gates" not in gates and written["gates"]["int8_row_bytes"] > 0

    argv = ["--ckpt", str(ckpt), "--data_dir", str(tiny_data.data_dir), "--out", str(tmp_path / "cli"), "--val_docs",
            "2", "--zpaq_level", "1", "--calibration_batches", "1", "--calibration_batch_seqs", "2"]
    assert bench.main(argv) == 0
    assert json.loads((tmp_path / "cli" / "export.json").read_text())["val_docs"] == 2
