"""The FineWeb 8×H100 evaluation projection: its arithmetic by hand, its inputs as `evaluate` reports them, and
where it shows (results.json's record, the run summary, `lit-golf check` beside the measured seconds)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_check import legal_results, write_run
from test_eval_support import small_eval_config, synthetic_luts, synthetic_val, tiny_model

from lit_golf.eval.projection import (
    FINEWEB_VAL_DOCS,
    FINEWEB_VAL_TOKENS,
    H100_PER_H200_THROUGHPUT,
    MeasuredEval,
    fineweb_prefix_docs,
    measured_eval,
    project,
    project_record,
    ttt_throughput,
)
from lit_golf.eval.runner import evaluate
from lit_golf.results import summary_lines
from lit_golf.submission.check import check

# bench/results/ttt.json's warm H200 run: 5,000 enwiki docs, prefix 200 (standing for FineWeb's 2,000)
H200_RUN = MeasuredEval(eval_seconds=184.9, eval_scoring_seconds=148.65, global_sgd_seconds=5.45,
                        eval_tokens=4_583_609, eval_docs=5000, ttt_prefix_docs=200, world_size=1,
                        hardware="1x NVIDIA H200")


def test_projection_by_hand():
    """fixed as measured; scoring x tokens / 8 GPUs / H100 speed; SGD x prefix tokens (docs x mean doc) the same."""
    projection = project(H200_RUN, 2000)
    fixed = 184.9 - 148.65 - 5.45
    scoring = 148.65 * (40_540_160 / 4_583_609) / 8 / 0.97
    sgd = 5.45 * (2000 * 40_540_160 / 50_000) / (200 * 4_583_609 / 5000) / 8 / 0.97
    assert projection.fixed_seconds == pytest.approx(fixed, rel=1e-12)
    assert projection.scoring_seconds == pytest.approx(scoring, rel=1e-12)
    assert projection.global_sgd_seconds == pytest.approx(sgd, rel=1e-12)
    assert projection.seconds == pytest.approx(fixed + scoring + sgd, rel=1e-12)
    assert projection.h100_speed == H100_PER_H200_THROUGHPUT and projection.estimate
    assert "on 8xH100 (from 1x NVIDIA H200; an H100 at 0.97x its speed)" in projection.describe()


def test_the_fineweb_evaluation_itself_projects_to_its_own_seconds():
    """Measured on 8 H100s on all of FineWeb with the same prefix: nothing to scale."""
    own = replace(H200_RUN, eval_tokens=FINEWEB_VAL_TOKENS, eval_docs=FINEWEB_VAL_DOCS, ttt_prefix_docs=2000,
                  world_size=8, hardware="8x NVIDIA H100 80GB HBM3")
    assert project(own, 2000).seconds == pytest.approx(own.eval_seconds, rel=1e-12)
    on_four = project(replace(own, world_size=4), 2000)  # 4 GPUs did all the work in that time: 8 take half
    assert on_four.seconds == pytest.approx(184.9 - (148.65 + 5.45) / 2, rel=1e-12)


def test_an_unknown_device_is_arithmetic_not_an_estimate():
    cpu = project(replace(H200_RUN, hardware="1x CPU (x86_64)"), 2000)
    assert cpu.h100_speed == 1.0 and not cpu.estimate
    assert "taken as an H100: arithmetic only, not an estimate" in cpu.describe()
    assert project(replace(H200_RUN, global_sgd_seconds=0.0, ttt_prefix_docs=0), 0).global_sgd_seconds == 0.0


def test_record_round_trip_and_a_malformed_record_is_one_line():
    record = H200_RUN.record(2000)
    assert project_record(record) == project(H200_RUN, 2000)
    for broken, words in (({k: v for k, v in record.items() if k != "eval_tokens"}, "lacks ['eval_tokens']"),
                          ({**record, "eval_seconds": "fast"}, "not a count, seconds or a device name"),
                          ({**record, "eval_tokens": 0}, "not a count"),
                          ({**record, "ttt_prefix_docs": 6000}, "not a count")):
        with pytest.raises(ValueError, match="^fineweb_projection ") as error:
            project_record(broken)
        assert words in str(error.value) and "\n" not in str(error.value)


def test_fineweb_prefix_follows_the_settings():
    assert fineweb_prefix_docs(small_eval_config(global_sgd={"prefix_docs": 2500})) == 2500
    assert fineweb_prefix_docs(small_eval_config(global_sgd={"prefix_docs": 60_000})) == FINEWEB_VAL_DOCS
    assert fineweb_prefix_docs(small_eval_config(global_sgd={"enabled": False})) == 0
    assert fineweb_prefix_docs(small_eval_config(ttt={"enabled": False})) == 0


def test_inputs_are_read_from_what_evaluate_reports(one_torch_thread):
    """Every clock of `evaluate` lands in exactly one part: scoring, global SGD or fixed (compile and the rest)."""
    cfg = small_eval_config(sliding={"enabled": True})
    tokens = synthetic_val([70, 5, 33, 12, 90, 20, 45, 8], seed=3)
    scores = evaluate(tiny_model(), tokens, synthetic_luts(), cfg, progress=False)
    measured = measured_eval(scores, 10.0, cfg, 1, "1x CPU")
    sections = {k: v for k, v in scores.items() if k.startswith("time_")}
    scoring = ["time_plain_s", "time_sliding_s", *(f"time_ttt_score_{s}_s" for s in ("phase1", "phase2", "rest"))]
    sgd = ["time_ttt_sgd_phase1_s", "time_ttt_sgd_phase2_s"]
    assert sections.keys() == {*scoring, *sgd, "time_ttt_s"}  # "ttt" holds the others (compile: CUDA only)
    assert measured.eval_scoring_seconds == pytest.approx(sum(sections[k] for k in scoring), rel=1e-12)
    assert measured.global_sgd_seconds == pytest.approx(sum(sections[k] for k in sgd), rel=1e-12)
    assert (measured.eval_tokens, measured.eval_docs, measured.ttt_prefix_docs) == (tokens.numel() - 1, 8, 6)
    tokens_per_s, positions_per_s = ttt_throughput(scores)
    assert tokens_per_s * (measured.eval_scoring_seconds - sections["time_plain_s"] - sections["time_sliding_s"]
                           + measured.global_sgd_seconds) == pytest.approx(tokens.numel() - 1, rel=1e-9)
    assert positions_per_s / tokens_per_s == pytest.approx(scores["ttt_positions"] / scores["ttt_tokens"], rel=1e-12)
    plain_only = evaluate(tiny_model(), tokens, synthetic_luts(), small_eval_config(ttt={"enabled": False}),
                          progress=False)
    assert ttt_throughput(plain_only) is None
    assert measured_eval(plain_only, 1.0, small_eval_config(ttt={"enabled": False}), 1, "1x CPU").ttt_prefix_docs == 0


def test_summary_and_check_show_the_projection_beside_the_measured_seconds(tmp_path):
    """`check` words it beside the eval-time verdict, which stays the measured seconds' (✓ at 400 s measured,
    whatever the projection); a malformed record is said, not a traceback."""
    results = {**legal_results(1, tmp_path), "fineweb_projection": replace(H200_RUN, eval_seconds=400.0).record(2000)}
    line = next(v for v in check(write_run(tmp_path / "run", results)) if v.rule.startswith("evaluation launch"))
    assert line.ok and "longest 400.0 s" in line.detail
    projection = project_record(results["fineweb_projection"])
    assert projection.seconds > 400 and line.detail.endswith(f"; {projection.describe()}")
    assert f"FineWeb 8xH100 eval {projection.describe()}" in summary_lines(results)
    broken = {**results, "fineweb_projection": {"eval_seconds": 1.0}}
    line = next(v for v in check(write_run(tmp_path / "broken", broken)) if v.rule.startswith("evaluation launch"))
    assert line.ok and "; no FineWeb projection: fineweb_projection lacks [" in line.detail
    assert "FineWeb 8xH100 eval -" in "\n".join(summary_lines(legal_results(1, tmp_path)))
