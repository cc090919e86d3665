"""Bad input to the TTT settings that spend more compute per token (issue 29), on the command line and in
`bench/ttt_throughput.py`: one line, exit code 2, before any evaluation or GPU work."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from test_bad_inputs_cli import assert_one_line_error, common

from lit_golf.cli import main

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_test_refuses_ttt_settings_it_cannot_run(tiny_data, tmp_path, capsys):
    rc = main(["test", *common(tiny_data, tmp_path), "--artifact", str(tmp_path / "a.ptz"),
               "--model.evaluation.ttt.lr_schedule", "cosine", "--model.evaluation.ttt.replay_chunks", "-1"])
    assert_one_line_error(rc, capsys.readouterr().err, "test", [
        "invalid EvalConfig: evaluation.ttt.replay_chunks=-1 must not be negative; evaluation.ttt.lr_schedule='cosine'; "
        "choose from ['constant', 'warmup', 'inverse_sqrt']"])


def test_ttt_throughput_bench_refuses_bad_settings_before_the_gpu(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("ttt_throughput")
    out = tmp_path / "ttt.jsonl"
    with pytest.raises(SystemExit) as stop:
        bench.main(["--artifact", "a.ptz", "--data-dir", str(tmp_path), "--out", str(out), "--replay-chunks", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and "Traceback" not in "\n".join(err) and not out.exists()
    assert err[-1] == "ttt_throughput.py: error: invalid EvalConfig: evaluation.ttt.replay_chunks=-1 must not be negative"
