"""bench/train_step_levers.py on the CPU (`--smoke`): whole training steps per lever, issue 27's `levers` fields."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def levers_bench(monkeypatch):
    """bench/train_step_levers.py as a module (it imports its bench/ siblings, as when run from there)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("train_step_levers")


def smoke_run(bench, tmp_path: Path, *args: str) -> dict:
    """`train_step_levers.py --smoke` of the record model, one warm-up and one timed step, with `args`: its JSON."""
    out = tmp_path / "levers.json"
    argv = ["--smoke", "--out", str(out), "--warmup", "1", "--steps", "1", "--models", "record", *args]
    assert bench.main(argv) == 0
    return json.loads(out.read_text())


def test_smoke_measures_each_lever_before_and_after_looping(monkeypatch, tmp_path):
    result = smoke_run(levers_bench(monkeypatch), tmp_path, "--levers", "bf16", "fp8_forward_dgrad", "fa4", "micro_x2")
    assert result["gpu"] == "cpu" and result["smoke"] and result["tokens_per_step"] == 512
    levers = result["levers"]["record"]
    assert "fa4" in levers["fa4"]["skipped"] and "needs CUDA" in levers["fa4"]["skipped"]
    for name in ("bf16", "fp8_forward_dgrad", "micro_x2"):
        lever = levers[name]
        for phase in ("before_loop", "after_loop"):
            assert lever[f"tok_s_{phase}"] > 0 and lever[f"ms_per_step_{phase}"] > 0
            assert lever[f"kernels_per_step_{phase}"] == sum(lever[f"kernels_per_class_{phase}"].values())
            assert {"gemm", "attention", "elementwise"} <= lever[f"ms_per_kernel_class_{phase}"].keys()
        # looping runs more blocks: more kernels per step
        assert lever["kernels_per_step_after_loop"] > lever["kernels_per_step_before_loop"]
    # the lever reaches the training step: only the FP8 one quantizes (its rowwise amax is the fp8_cast class)
    assert "fp8_cast" in levers["fp8_forward_dgrad"]["ms_per_kernel_class_before_loop"]
    assert "fp8_cast" not in levers["bf16"]["ms_per_kernel_class_before_loop"]
    assert levers["bf16"]["speedup_before_loop"] == 1.0 and levers["fp8_forward_dgrad"]["speedup_after_loop"] > 0
    # every lever starts from the plain path: record.yaml's own Triton kernels switched off, then the lever's switch
    plain = {"fused_qk_norm_rope": False, "fused_xsa": False}
    assert levers["bf16"]["overrides"] == plain
    assert levers["fp8_forward_dgrad"]["overrides"] == {**plain, "fp8_training": "forward_dgrad"}
    # micro_x2: the same 512-token step in one micro-batch of 512 instead of two of 256: fewer kernels
    assert levers["micro_x2"]["tokens_per_microbatch"] == 2 * levers["bf16"]["tokens_per_microbatch"] == 512
    assert levers["micro_x2"]["kernels_per_step_before_loop"] < levers["bf16"]["kernels_per_step_before_loop"]
    top = levers["bf16"]["top_kernels_before_loop"]  # the costliest kernel names, costliest first
    assert top and [k["ms"] for k in top] == sorted((k["ms"] for k in top), reverse=True)
    assert sum(k["count"] for k in top) <= levers["bf16"]["kernels_per_step_before_loop"]
    # and per class: each class's costliest names, costliest first, adding up to no more than the class total
    per_class = levers["bf16"]["top_kernels_per_class_before_loop"]
    assert per_class.keys() == levers["bf16"]["ms_per_kernel_class_before_loop"].keys()
    for kind, names in per_class.items():
        assert names and all(k["class"] == kind for k in names)
        assert [k["ms"] for k in names] == sorted((k["ms"] for k in names), reverse=True)
        assert sum(k["count"] for k in names) <= levers["bf16"]["kernels_per_class_before_loop"][kind]


def test_a_lever_that_crashes_is_recorded_and_the_rest_still_run(monkeypatch, tmp_path):
    bench = levers_bench(monkeypatch)
    measure = bench.StepRunner.measure

    def crash_under_fp8(runner, warmup, steps):
        if runner.model.config.fp8_training != "off":
            raise AssertionError("assert not isinstance(node1, FusedMixOrderReductions)")
        return measure(runner, warmup, steps)

    monkeypatch.setattr(bench.StepRunner, "measure", crash_under_fp8)
    levers = smoke_run(bench, tmp_path, "--levers", "fp8_forward", "bf16")["levers"]["record"]
    assert levers["fp8_forward"]["failed"] == "AssertionError: assert not isinstance(node1, FusedMixOrderReductions)"
    assert levers["bf16"]["tok_s_after_loop"] > 0


def test_one_phase_screens_a_lever_with_one_compile(monkeypatch, tmp_path):
    result = smoke_run(levers_bench(monkeypatch), tmp_path, "--levers", "bf16", "rope_per_call",
                       "--phases", "before_loop")
    assert result["phases"] == ["before_loop"]
    for lever in result["levers"]["record"].values():
        assert lever["tok_s_before_loop"] > 0 and not any(key.endswith("_after_loop") for key in lever)
    assert result["levers"]["record"]["rope_per_call"]["overrides"] == {
        "fused_qk_norm_rope": False, "fused_xsa": False, "rope_table_positions": 0}
    assert result["levers"]["record"]["rope_per_call"]["speedup_before_loop"] > 0


@pytest.mark.parametrize("name, kind", [
    # names from the 2026-12-07 H100 profile of the FA4 step (bench/results/levers_2026-12-07_h100_s12_record.json)
    ("triton_per_fused__to_copy__unsafe_view_add_clamp_min_div_eq_expand_ge_masked_fill_mul_neg_nll_loss_forward_"
     "squeeze_sum_view_where_6", "elementwise"),  # XSA's backward, 88 launches: once counted as loss
    ("triton_red_fused__log_softmax__to_copy__unsafe_view_div_mul_prepare_softmax_online_tanh_view_92", "loss"),
    ("_softcap_ce_forward_kernel", "loss"),  # lit_golf/kernels/fused_ce.py
    ("_qk_norm_rope_backward_kernel", "elementwise"),  # lit_golf/kernels/qk_norm_rope.py: a fused elementwise chain
    ("_xsa_forward_kernel", "elementwise"),  # lit_golf/kernels/xsa.py
    ("aten::nll_loss_forward", "loss"),  # a CPU profile
    ("_matmul_leaky_relu_square_kernel", "fused_mlp"),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "gemm"),
    ("kernel_cutlass_kernel_flash_attncuteflash_bwd_sm90FlashAttentionBackwardSm90_object_at__tensor000o111012",
     "attention"),
])
def test_kernel_classes_follow_what_a_kernel_computes_not_every_op_its_name_lists(monkeypatch, name, kind):
    monkeypatch.syspath_prepend(str(BENCH))
    assert importlib.import_module("profile_step").kernel_class(name) == kind
