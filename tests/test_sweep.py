"""`lit-golf sweep`: the grid x seeds plan, the tables, and a real resumable sweep of tiny_cpu fits."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from lit_golf.cli import main
from lit_golf.sweep import Trial, parse_grid, trials, write_tables

REPO = Path(__file__).resolve().parent.parent


def test_grid_times_seeds_and_trial_names():
    grid = parse_grid(["model.optim.matrix_lr=0.02,0.03", "--model.training.min_lr=0,0.1"])
    planned = trials(grid, [1, 2])
    assert len(planned) == 8
    assert planned[0] == Trial((("model.optim.matrix_lr", "0.02"), ("model.training.min_lr", "0")), 1)
    assert planned[0].name == "matrix_lr=0.02__min_lr=0__seed=1"
    assert planned[0].argv("fit", ["tiny_cpu"], ["--x", "1"], Path("d"))[-6:] == [
        "--model.optim.matrix_lr", "0.02", "--model.training.min_lr", "0", "--x", "1"]
    assert trials([], [7]) == [Trial((), 7)]


@pytest.mark.parametrize("entry", ["model.optim.matrix_lr", "=0.1", "model.optim.matrix_lr="])
def test_malformed_grid_entry_is_one_line(entry, capsys):
    assert main(["sweep", "--config", "tiny_cpu", "--out", "unused", "--grid", entry]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit-golf sweep: error: --grid") and "DOTTED.KEY=VALUE1,VALUE2" in err and "\n" not in err


def test_tables_hold_every_trial_and_the_mean_over_seeds(tmp_path):
    rows = [{"setting": "lr=1", "seed": 1, "final_bpb": 2.0, "steps": 4},
            {"setting": "lr=1", "seed": 2, "final_bpb": 3.0, "steps": 4},
            {"setting": "lr=2", "seed": 1, "final_bpb": None, "steps": None}]
    csv_path, md_path = write_tables(rows, tmp_path)
    assert [r["final_bpb"] for r in csv.DictReader(csv_path.open())] == ["2.0", "3.0", ""]
    means = md_path.read_text().split("Mean over seeds:")[1]
    mean_row = next(line for line in means.splitlines() if line.startswith("| lr=1 | 2 |"))
    assert mean_row.split(" | ")[-2] == "2.50000"  # final_bpb, the last column but one


@pytest.mark.slow
def test_sweep_of_tiny_fits_writes_the_table_and_resumes(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "sweep"
    argv = ["sweep", "--config", "tiny_cpu", "--config", str(REPO / "configs/overrides/fixed_steps_cpu.yaml"),
            "--grid", "model.optim.matrix_lr=0.02,0.04", "--seeds", "3", "--out", str(out), "--",
            "--data.data_dir", str(tiny_data.data_dir), "--model.gpt.vocab_size", str(tiny_data.vocab_size), "--model.evaluation.max_docs", "20",
            "--data.train_batch_tokens", "1024", "--data.tokens_per_microbatch", "512",
            "--trainer.max_steps", "3", "--trainer.val_check_interval", "3"]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["setting"] for r in rows] == ["model.optim.matrix_lr=0.02", "model.optim.matrix_lr=0.04"]
    assert all(r["steps"] == "3" and 0.5 < float(r["val_bpb_post_quant"]) < 20 for r in rows)
    assert rows[0]["val_bpb_post_quant"] != rows[1]["val_bpb_post_quant"]  # the override reached the trial
    before = {p: p.stat().st_mtime for p in out.rglob("results.json")}
    assert main(argv) == 0  # resumed: both trials are complete, nothing runs again
    assert {p: p.stat().st_mtime for p in out.rglob("results.json")} == before
    assert os.path.getsize(out / "results.md") > 0
