"""bench/seams_smoke_numbers.py: the committed seams-smoke numbers come back from the committed launch logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_output import load_bench_script

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "bench" / "results" / "logs" / "lease_2026-12-02b"


def load_bench():
    return load_bench_script("seams_smoke_numbers")


def test_the_committed_results_are_what_the_committed_logs_say(tmp_path):
    bench = load_bench()
    out = tmp_path / "smoke.json"
    assert bench.main([str(LOGS / "smoke_before" / "launch.log"), str(LOGS / "smoke_after" / "launch.log"),
                       "--out", str(out), "--commit-before", "b926105", "--commit-after", "aa3742b",
                       "--machine", "1x NVIDIA H200"]) == 0
    committed = json.loads((ROOT / "bench" / "results" / "seams_smoke.json").read_text())
    assert json.loads(out.read_text())["runs"] == committed["runs"]
    assert committed["runs"]["smoke_before"]["val_bpb_raw_step20"] == committed["runs"]["smoke_after"]["val_bpb_raw_step20"]


def test_a_log_that_stopped_early_is_refused_in_one_line(tmp_path):
    bench = load_bench()
    cut = tmp_path / "launch.log"
    text = (LOGS / "smoke_after" / "launch.log").read_text(errors="replace")
    cut.write_text(text[: text.index("evaluation: val_bpb=")])
    with pytest.raises(SystemExit, match=r"launch\.log: no line for val_bpb_post_quant"):
        bench.numbers(cut)
