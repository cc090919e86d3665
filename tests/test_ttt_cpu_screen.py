"""bench/ttt_cpu_screen.py: the frontier's TTT settings on a CPU, changed by --set, paired with a baseline."""

from __future__ import annotations

import json

import pytest
from script_output import load_bench_script
from test_bad_inputs_data import write_tiny_artifact

from lit_golf.data.shards import dataset_dir, shard_name

bench = load_bench_script("ttt_cpu_screen")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_frontier_settings_with_the_cpu_changes_and_sets():
    cfg, changed = bench.screen_config(["ttt.eps=1e-6", "ttt.lora_targets=[q, v]", "global_sgd.epochs=2"], 4)
    assert (cfg.ttt.lora_rank, cfg.ttt.lora_alpha, cfg.ttt.warm_start_a, cfg.ttt.beta2) == (80, 144.0, True, 0.99)
    assert (cfg.ttt.compile, cfg.ttt.batch_docs, cfg.global_sgd.enabled) == (False, 4, False)
    assert (cfg.ttt.eps, cfg.ttt.lora_targets, cfg.global_sgd.epochs) == (1e-6, ("q", "v"), 2)
    assert changed == {"ttt": {"eps": 1e-6, "lora_targets": ["q", "v"]}, "global_sgd": {"epochs": 2}}


@pytest.mark.parametrize("item, message", [
    ("eps=1e-6", r"--set 'eps=1e-6' is not group\.field=value"),
    ("ttt.chunk_size=0", r"evaluation\.ttt\.chunk_size=0 must be positive"),
    ("ttt.nope=1", r"unrecognized arguments: --model\.evaluation\.ttt\.nope=1"),
    ("ttt.eps=abc", r"model\.evaluation\.ttt\.eps.*Expected a <class 'float'>"),
])
def test_a_bad_set_is_one_line(item, message):
    with pytest.raises(SystemExit, match=message):
        bench.screen_config([item], 8)


def test_a_screen_pairs_each_setting_with_the_baseline(tiny_data, tmp_path, capsys):
    val = dataset_dir(tiny_data.data_dir, tiny_data.vocab_size) / shard_name("val", 0)
    art = write_tiny_artifact(tmp_path / "a.ptz", None)
    out = tmp_path / "screen.json"
    common = ["--artifact", str(art), "--val", str(val), "--tokenizer", str(tiny_data.tokenizer), "--docs", "6",
              "--min-tokens", "20", "--max-tokens", "120", "--batch-docs", "4", "--out", str(out),
              "--set", "ttt.chunk_size=16", "--set", "ttt.context_len=64"]
    bench.main([*common, "--name", "baseline"])
    bench.main([*common, "--name", "frozen", "--set", "ttt.lr=0.0"])
    bench.main([*common, "--name", "baseline"])  # a rerun replaces its own entry
    settings = {s["name"]: s for s in json.loads(out.read_text())["settings"]}
    assert list(settings) == ["frozen", "baseline"]
    base, frozen = settings["baseline"], settings["frozen"]
    assert base["ttt_bpb_vs_baseline"] == 0.0 and base["docs_sha"] == frozen["docs_sha"] and base["commit"]
    assert frozen["changed"] == {"ttt": {"chunk_size": 16, "context_len": 64, "lr": 0.0}}
    # without learning, TTT scores each document as plain evaluation does: the gain is zero
    assert frozen["ttt_gain"] == pytest.approx(0.0, abs=1e-5)
    assert frozen["ttt_bpb_vs_baseline"] == pytest.approx(frozen["ttt_bpb"] - base["ttt_bpb"])
    assert base["ttt_gain"] != pytest.approx(0.0, abs=1e-5)
    with pytest.raises(SystemExit, match=r"has \d+ documents of 20-30 tokens, not 6; lower --docs"):
        bench.main([*common, "--name", "x", "--max-tokens", "30"])
