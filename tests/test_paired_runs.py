"""bench/paired_runs.py: paired differences from run folders, complete (results.json) or stopped in training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_output import load_bench_script


def load_bench():
    return load_bench_script("paired_runs")


def write_run(folder: Path, val_bpb: float, results: dict | None = None, ttt_s: float = 0.0, compile_s: float = 0.0):
    """A run folder as `lit-golf run` leaves it: TensorBoard scalars, and results.json when it got that far."""
    from torch.utils.tensorboard import SummaryWriter

    run = folder / "record" / "version_0"
    writer = SummaryWriter(str(run))
    for step, loss in ((10, 5.0), (20, 4.0)):
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/tokens_per_s", 1000.0 * step, step)
    writer.add_scalar("val/bpb", val_bpb + 1.0, 10)
    writer.add_scalar("val/bpb", val_bpb, 20)  # the last step's value is the run's
    if results is not None:
        writer.add_scalar("test/time_ttt_s", ttt_s, 20)
        writer.add_scalar("test/time_ttt_compile_s", compile_s, 20)
        writer.add_scalar("test/ttt_tokens", 900.0, 20)
        (run / "results.json").write_text(json.dumps(results))
    writer.close()


def test_pairs_complete_and_stopped_runs_by_seed(tmp_path):
    bench = load_bench()
    runs = tmp_path / "runs"
    write_run(runs / "record_s1", 1.60, {"ttt_bpb": 1.58, "val_bpb_pre_quant": 1.62, "val_bpb_post_quant": 1.63},
              ttt_s=40.0, compile_s=30.0)
    write_run(runs / "frontier_s1", 1.57, {"ttt_bpb": 1.55, "val_bpb_pre_quant": 1.61, "val_bpb_post_quant": 1.615},
              ttt_s=42.0, compile_s=30.0)
    write_run(runs / "record_s2", 1.61)  # stopped before its export: training numbers only
    write_run(runs / "frontier_s2", 1.59)
    out = tmp_path / "out"
    assert bench.main(["--runs", str(runs), "--base", "record", "--other", "frontier", "--out", str(out),
                       "--ttt-positions", "record=9000", "frontier=9000"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    record = metrics["runs"]["record"]
    assert record["1"]["ttt_score_seconds"] == pytest.approx(10.0)
    assert record["1"]["ttt_scored_tokens_per_s"] == pytest.approx(90.0)
    assert record["1"]["ttt_positions_per_s"] == pytest.approx(900.0)
    assert record["1"]["quant_gap_bpb"] == pytest.approx(0.01)
    assert "ttt_bpb" not in record["2"] and record["2"]["val_bpb_raw"] == pytest.approx(1.61)
    diff = metrics["paired"]["frontier"]["difference_other_minus_base"]
    assert diff["val_bpb_raw"]["per_seed"] == {"1": pytest.approx(-0.03), "2": pytest.approx(-0.02)}
    assert diff["val_bpb_raw"]["mean"] == pytest.approx(-0.025)
    assert diff["ttt_bpb"]["per_seed"] == {"1": pytest.approx(-0.03)}  # only the seed that got that far
    assert diff["quant_gap_bpb"]["mean"] == pytest.approx(-0.005)
    assert (out / "train_loss.png").stat().st_size > 0
