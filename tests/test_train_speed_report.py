"""bench/train_speed_report.py on side-by-side logs written here in both systems' formats: issue 27's
train_speed.json fields, the paired quality deltas, the equal-time pair, and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_output import error_line, load_bench_script, run_main

GPU = "1x NVIDIA H100 80GB HBM3"
bench = load_bench_script("train_speed_report")


def stamped(lines: list[tuple[float, str]]) -> str:
    return "".join(f"[{t:7.1f}s] {text}\n" for t, text in lines)


def upstream_log(seconds_per_step: tuple[float, float]) -> str:
    """Upstream's step lines every 5 steps of 100, looping at step 35 (launch clock from 100 s)."""
    lines, t = [], 100.0
    for step in range(5, 101, 5):
        t += 5 * (seconds_per_step[0] if step <= 35 else seconds_per_step[1])
        lines.append((t, f"{step}/100 train_loss: {5 - step / 50:.4f} train_time: 1.0m tok/s: 1"))
        if step == 35:
            lines.append((t, "layer_loop:enabled step:35 frac:0.350 encoder:[0] decoder:[1]"))
    lines.append((t + 5, "diagnostic pre-quantization post-ema val_loss:4.0 val_bpb:1.6400 eval_time:9ms"))
    return stamped(lines)


def lit_log(seconds_per_step: tuple[float, float], raw_bpb: float, gap: float, mfu: tuple[float, float]) -> str:
    """lit_golf's fit log lines: steps every 5 (with MFU), the loop switch, the last validation, the export's gap."""
    lines, t = [(10.0, "12:00:00 compile warm-up: 90.0s for 2 loop states")], 100.0
    for step in range(5, 101, 5):
        t += 5 * (seconds_per_step[0] if step <= 35 else seconds_per_step[1])
        part = mfu[0] if step <= 35 else mfu[1]
        lines.append((t, f"12:00:00 step {step}/100 loss {5 - step / 50:.4f} tok/s 1,000 step 700.0ms "
                         f"mfu {part:.1f}% train_time 1.0m"))
        if step == 35:
            lines.append((t, "12:00:00 layer looping on at step 35 (fraction 0.350): encoder [0] decoder [1]"))
    lines.append((t + 2, f"12:00:00 step 100 val_loss 4.0 val_bpb {raw_bpb:.4f}"))
    lines.append((t + 9, f"12:00:00 export: plain val bpb 1.63000 before quantization, {1.63 + gap:.5f} from the "
                         f"artifact (gap +{gap:.5f})"))
    return stamped(lines)


def side_by_side(tmp_path: Path) -> Path:
    """Upstream and two lit_golf settings (bf16 with FA2; FA4), seeds 1 and 2, in their logs' formats."""
    logs = tmp_path / "sbs" / "logs"
    logs.mkdir(parents=True)
    for seed, (fa2_bpb, fa4_bpb) in {1: (1.6000, 1.5990), 2: (1.6100, 1.6096)}.items():
        (logs / f"upstream_seed{seed}.log").write_text(upstream_log((0.8, 1.2)))
        (logs / f"lit_golf_fa2_fit_seed{seed}.log").write_text(lit_log((0.8, 1.2), fa2_bpb, 0.0053, (28.0, 28.2)))
        (logs / f"lit_golf_fa4_fit_seed{seed}.log").write_text(lit_log((0.64, 1.0), fa4_bpb, 0.0052, (31.8, 32.0)))
    return tmp_path / "sbs"


def wallclock_run(folder: Path, seed: int, steps: int, raw_bpb: float) -> Path:
    """A wall-clock fit's run folder as long_run_report reads it (results, metrics with the last validation)."""
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("fit\n")
    (folder / "config.yaml").write_text(f"seed_everything: {seed}\n")
    (folder / "results.json").write_text(json.dumps({"seed": seed, "steps": steps, "train_seconds": 300.0}))
    (folder / "metrics.csv").write_text(f"step,train/loss,val/bpb\n{steps - 2},3.0,\n{steps - 1},,{raw_bpb}\n")
    return folder


def run_report(*argv, capsys) -> tuple[int, str, str]:
    return run_main(bench.main, argv, capsys)


def test_the_report_holds_issue_27s_fields_from_the_logs(tmp_path, capsys):
    out = tmp_path / "train_speed.json"
    fast = wallclock_run(tmp_path / "fast", 1, 420, 1.2100)
    base = wallclock_run(tmp_path / "base", 1, 380, 1.2160)
    rc, stdout, err = run_report(side_by_side(tmp_path), "--gpu", GPU, "--commit", "abc1234", "--equal-time", fast,
                                 base, "--out", out, capsys=capsys)
    assert rc == 0, err
    report = json.loads(out.read_text())
    assert report["gpu"] == GPU and report["commit"] == "abc1234"
    assert report["fastest_system"] == "lit_golf_fa4" and report["base_system"] == "lit_golf_fa2"
    # steady state from the launch clock: 786,432 tokens per step over the logged seconds per step
    assert report["upstream_tok_s_before_loop"] == pytest.approx(786_432 / 0.8)
    assert report["upstream_tok_s_after_loop"] == pytest.approx(786_432 / 1.2)
    assert report["tok_s_before_loop"] == pytest.approx(786_432 / 0.64)
    assert report["tok_s_after_loop"] == pytest.approx(786_432 / 1.0)
    assert report["speedup_before_loop"] == pytest.approx(1.25) and report["speedup_after_loop"] == pytest.approx(1.2)
    assert report["target_met"] is False  # 1.25x / 1.2x against 1.35x / 1.30x
    assert report["mfu"] == {"before_loop": pytest.approx(0.318), "after_loop": pytest.approx(0.32)}
    assert report["paired_raw_bpb_delta"] == pytest.approx(((1.5990 - 1.6000) + (1.6096 - 1.6100)) / 2)
    assert report["paired_raw_bpb_delta_per_seed"] == {"1": pytest.approx(-0.0010), "2": pytest.approx(-0.0004)}
    assert report["paired_quant_gap_delta"] == pytest.approx(-0.0001)
    assert report["equal_time_bpb_delta"] == pytest.approx(1.2100 - 1.2160)
    assert report["equal_time"]["fast"]["steps"] == 420 and report["levers"] is None
    assert "1.250x / 1.200x upstream (targets 1.35x / 1.3x: not met)" in stdout


def levers_file(path: Path, record: dict | str) -> Path:
    """A levers JSON holding `record` as its record model's levers (a str: the file's whole text)."""
    if not isinstance(record, str):
        record = json.dumps({"gpu": GPU, "commit": "abc1234", "levers": {"record": record}})
    path.write_text(record)
    return path


def test_levers_come_from_the_benchmarks_json(tmp_path, capsys):
    levers = levers_file(tmp_path / "levers.json", {"bf16": {"tok_s_before_loop": 1000}, "fa4": {"skipped": "no FA4"}})
    out = tmp_path / "train_speed.json"
    rc, _, err = run_report(side_by_side(tmp_path), "--gpu", GPU, "--commit", "c", "--levers", levers, "--out", out,
                            capsys=capsys)
    assert rc == 0, err
    report = json.loads(out.read_text())
    assert report["levers"]["record"]["bf16"]["speedup_before_loop"] == 1.0 and report["equal_time_bpb_delta"] is None
    assert report["levers"]["record"]["fa4"]["skipped"] == "no FA4"


def test_levers_of_a_later_call_are_chained_through_a_lever_both_timed(tmp_path, capsys):
    first = levers_file(tmp_path / "a.json", {"bf16": {"tok_s_before_loop": 1000}, "fa4": {"tok_s_before_loop": 1200}})
    later = levers_file(tmp_path / "b.json", {"fa4": {"tok_s_before_loop": 1100}, "fa4+k": {"tok_s_before_loop": 1210}})
    out = tmp_path / "train_speed.json"
    rc, _, err = run_report(side_by_side(tmp_path), "--gpu", GPU, "--commit", "c", "--levers", first, later,
                            "--out", out, capsys=capsys)
    assert rc == 0, err
    report = json.loads(out.read_text())
    record = report["levers"]["record"]
    # 1,210 / 1,100 on the later box, times fa4's 1.2 over bf16 on the first
    assert record["fa4+k"]["speedup_before_loop"] == pytest.approx(1.32) and record["fa4+k"]["chained_via"] == "fa4"
    assert record["fa4"]["tok_s_before_loop"] == 1200 and record["fa4"]["remeasured"][0]["tok_s_before_loop"] == 1100
    # the fixture's FA2 lit_golf and upstream run at the same speed: the estimate is the chained speedup
    estimate = report["levers_vs_upstream_estimate"]
    assert estimate["base_over_upstream"] == 1.0 and estimate["before_loop"]["fa4+k"] == pytest.approx(1.32)
    assert "NOT the issue's same-call ratio" in estimate["what"]


@pytest.mark.parametrize("records, expected", [
    ([{"fa4": {"tok_s_before_loop": 1}}], "the first file needs a timed `bf16` lever"),
    ([{"bf16": {"tok_s_before_loop": 1}}, {"fa4": {"tok_s_before_loop": 1}}], "no timed lever in common"),
    # a lever the first call could not run is no link
    ([{"bf16": {"tok_s_before_loop": 1}, "fa4": {"skipped": "no FA4"}}, {"fa4": {"tok_s_before_loop": 1}}],
     "no timed lever in common"),
    (["{not json"], "not JSON"),
])
def test_levers_that_cannot_be_chained_are_one_line(tmp_path, capsys, records, expected):
    files = [levers_file(tmp_path / f"{i}.json", record) for i, record in enumerate(records)]
    rc, _, err = run_report(side_by_side(tmp_path), "--gpu", GPU, "--commit", "c", "--levers", *files,
                            "--out", tmp_path / "out.json", capsys=capsys)
    assert rc != 0 and expected in error_line(err, "train_speed_report.py") and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("change, expected", [
    (lambda sbs: (sbs / "logs" / "upstream_seed1.log").unlink() or (sbs / "logs" / "upstream_seed2.log").unlink(),
     "no upstream_seed<N>.log; run `lease/run_upstream.sh`"),
    (lambda sbs: [p.unlink() for p in (sbs / "logs").glob("lit_golf_*")],
     "no lit_golf <system>_fit_seed<N>.log beside upstream's"),
    (lambda sbs: (sbs / "logs" / "lit_golf_fa4_fit_seed1.log").write_text(
        "[   1.0s] 12:00:00 step 5/100 loss 4.0 tok/s 1 step 1.0ms\n"),
     "lit_golf_fa4_fit_seed1: no tokens_per_s_before_loop"),
])
def test_logs_that_cannot_give_the_numbers_are_one_line(tmp_path, capsys, change, expected):
    sbs = side_by_side(tmp_path)
    change(sbs)
    out = tmp_path / "train_speed.json"
    rc, _, err = run_report(sbs, "--gpu", GPU, "--commit", "c", "--out", out, capsys=capsys)
    assert rc == 1 and expected in error_line(err, "train_speed_report.py")
    assert not out.exists()


def test_unknown_systems_and_missing_inputs_are_one_line(tmp_path, capsys):
    sbs = side_by_side(tmp_path)
    for extra, expected in ((["--base", "lit_golf_fp8"], "--base lit_golf_fp8: no such system among the logs"),
                            (["--levers", str(tmp_path / "none.json")], "no such file; pass bench/train_step_levers.py"),
                            ([], "no such folder")):
        folder = tmp_path / "nowhere" if not extra else sbs
        rc, _, err = run_report(folder, "--gpu", GPU, "--commit", "c", "--out", tmp_path / "o.json", *extra,
                                capsys=capsys)
        assert rc == 1 and expected in error_line(err, "train_speed_report.py"), err
