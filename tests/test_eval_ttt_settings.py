"""TTT settings that spend more compute per scored token (issue 29): more steps per chunk, a second pass over a
document's scored chunks, a learning-rate schedule within a document, more global-SGD phases, prefix documents and
epochs; and adapters whose A stays as drawn. Each is legal on 1 and 2 gloo ranks (the score-first read trace of
`test_eval_ttt`), changes the score, runs exactly the passes it plans, and is the default bit for bit at its neutral
value."""

from __future__ import annotations

import pytest
import torch
from test_eval_support import BOS, run_on_ranks, small_eval_config, synthetic_luts, synthetic_val, tiny_model
from test_eval_ttt import LENGTHS, assert_score_first, run_ttt

from lit_golf.data.documents import find_documents
from lit_golf.eval.config import TTTConfig
from lit_golf.eval.metric import BitsPerByte
from lit_golf.eval.plan import chunk_forwards
from lit_golf.eval.runner import evaluate
from lit_golf.eval.ttt import (
    DocumentBatchScorer,
    TTTTrace,
    build_stages,
    lr_scale,
    planned_positions,
    stage_plan,
)
from lit_golf.eval.valset import ValSet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Each setting at a value that spends more; in one, rows go through in slices (`tokens_per_pass` 32: 1-2 rows).
SETTINGS = {
    "grad_steps": {"ttt": {"grad_steps": 3}},
    "replay": {"ttt": {"replay_chunks": 2}},
    "replay_sliced": {"ttt": {"replay_chunks": 1, "tokens_per_pass": 32}},
    "warmup": {"ttt": {"lr_schedule": "warmup", "lr_schedule_chunks": 4}},
    "inverse_sqrt": {"ttt": {"lr_schedule": "inverse_sqrt", "lr_schedule_chunks": 2}},
    "more_global_sgd": {"global_sgd": {"num_phases": 3, "prefix_docs": 9, "epochs": 2}},
    "fixed_a": {"ttt": {"train_a": False, "grad_steps": 2}},
}
SPENDS_MORE_POSITIONS = ("grad_steps", "replay", "replay_sliced", "fixed_a")


@pytest.fixture(scope="module")
def val_tokens() -> torch.Tensor:
    return synthetic_val(LENGTHS, seed=3)


@pytest.fixture(scope="module")
def default_run(val_tokens) -> tuple[dict, TTTTrace]:
    return run_ttt(val_tokens, small_eval_config())


@pytest.mark.parametrize("name", SETTINGS)
def test_each_setting_is_score_first_changes_the_score_and_runs_what_it_plans(name, val_tokens, default_run):
    cfg = small_eval_config(**SETTINGS[name])
    results, trace = run_ttt(val_tokens, cfg)
    assert_score_first([trace.events], val_tokens, cfg)
    default, default_trace = default_run
    assert trace.chunk_nll.keys() == default_trace.chunk_nll.keys()
    assert results["ttt_bpb"] != pytest.approx(default["ttt_bpb"], rel=1e-6)
    assert results["ttt_positions"] == planned_positions(find_documents(val_tokens, BOS), cfg)
    if name in SPENDS_MORE_POSITIONS:
        assert results["ttt_positions"] > default["ttt_positions"]


ON_TWO_RANKS = [name for name in SETTINGS if name not in ("replay_sliced", "inverse_sqrt")]  # each knob once: CI time


def _traces_of_every_setting(tokens: torch.Tensor) -> dict[str, list[tuple]]:
    """This rank's TTT events under each setting (one process launch for all)."""
    events = {}
    for name in ON_TWO_RANKS:
        groups = SETTINGS[name]
        trace = TTTTrace()
        evaluate(tiny_model(), tokens, synthetic_luts(), small_eval_config(**groups), progress=False, trace=trace)
        events[name] = trace.events
    return events


@pytest.mark.slow
def test_each_setting_is_score_first_on_two_gloo_ranks(val_tokens, tmp_path):
    ranks = run_on_ranks(_traces_of_every_setting, 2, tmp_path, val_tokens, start_method="fork")
    for name in ON_TWO_RANKS:
        events_by_rank = [rank[name] for rank in ranks]
        assert all(any(e[0] == "scored" for e in events) for events in events_by_rank), name
        assert_score_first(events_by_rank, val_tokens, small_eval_config(**SETTINGS[name]))


def test_neutral_values_are_the_default_bit_for_bit(val_tokens, default_run):
    """A schedule whose factor is 1 at every chunk runs the schedule's code and changes nothing."""
    default, default_trace = default_run
    longest = -(-max(LENGTHS) // small_eval_config().ttt.chunk_size)
    for ttt in ({"lr_schedule": "warmup", "lr_schedule_chunks": 1},
                {"lr_schedule": "inverse_sqrt", "lr_schedule_chunks": longest}):
        results, trace = run_ttt(val_tokens, small_eval_config(ttt=ttt))
        assert trace.chunk_nll == default_trace.chunk_nll, ttt
        assert results["ttt_bpb"] == default["ttt_bpb"]


def test_schedules_and_passes_by_chunk():
    warmup, decay = TTTConfig(lr_schedule="warmup", lr_schedule_chunks=4), TTTConfig(lr_schedule="inverse_sqrt",
                                                                                       lr_schedule_chunks=4)
    assert [lr_scale(warmup, i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [lr_scale(decay, i) for i in (0, 3, 15)] == [1.0, 1.0, 0.5]
    assert lr_scale(TTTConfig(), 100) == 1.0
    assert chunk_forwards(3, 10, grad_steps=2, replay_chunks=2) == [3, 3, 1, 2]
    assert chunk_forwards(1, 10, grad_steps=1, replay_chunks=5) == [1, 0]
    assert chunk_forwards(9, 10, grad_steps=2, replay_chunks=2) == [9]  # the last chunk is only scored


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match=r"evaluation\.ttt\.lr_schedule_chunks=0 must be positive; evaluation\.ttt\."
                       r"replay_chunks=-1 must not be negative; evaluation\.ttt\.lr_schedule='cosine'; choose from "
                       r"\['constant', 'warmup', 'inverse_sqrt'\]$"):
        TTTConfig(replay_chunks=-1, lr_schedule="cosine", lr_schedule_chunks=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_settings_add_no_compiled_graph(val_tokens):
    """The compiled TTT path compiles as many graphs with replay, extra steps and a schedule as without."""
    from torch._dynamo.utils import counters

    def graphs(**ttt) -> int:
        torch._dynamo.reset()
        counters.clear()
        cfg = small_eval_config(ttt={"compile": True, **ttt}, global_sgd={"enabled": False})
        model = tiny_model().cuda().eval().requires_grad_(False)
        val = ValSet.build(val_tokens, synthetic_luts(), "cuda")
        scorer = DocumentBatchScorer(model, val, cfg, BitsPerByte().cuda(), None)
        scorer.warm_up()
        for stage in build_stages(find_documents(val.tokens, BOS), cfg):
            for batch in stage_plan(stage, cfg, 0, 1):
                scorer.score(batch)
        return counters["stats"]["unique_graphs"]

    assert graphs(replay_chunks=2, grad_steps=2, lr_schedule="warmup") == graphs()
