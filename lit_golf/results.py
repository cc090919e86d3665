"""`results.json`: what a run measured, in its run folder, for `lit-golf submit` and `lit-golf check`.

`fit` writes the training and export part, `test` the evaluation part, `run` both in one launch. A
separate `lit-golf test` of a fit's own artifact records in a folder of its own inside the run
(`<run>/test_N/`) and adds its scores to the run's file only while that has none: a later command never
changes what an earlier one recorded. Numbers are measured by the run itself (clocks, file sizes,
scores); settings the legality rules need are recorded next to them. Plain JSON, so a submission folder
can be checked without torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from lit_golf.eval.config import EvalConfig
from lit_golf.eval.projection import project_record
from lit_golf.files import append_atomic, write_atomic

RESULTS_NAME = "results.json"
TRAIN_LOG_NAME = "train.log"
CONFIG_NAME = "config.yaml"  # LightningCLI's copy of the resolved config in the run folder


@dataclass
class RunResults:
    """One run's record; None = not measured by the stages that ran."""

    seed: int | None = None
    """`seed_everything` of the run."""
    world_size: int | None = None
    hardware: str | None = None
    """Accelerators of the run, e.g. `8x NVIDIA H100 80GB HBM3`."""
    torch_version: str | None = None
    lit_golf_version: str | None = None
    steps: int | None = None
    """Optimizer steps taken."""
    train_seconds: float | None = None
    """Training time as the budget counts it (first training batch to the last step, validation excluded)."""
    train_budget_seconds: float | None = None
    """WallClockBudget's budget (None: fixed steps, no wall-clock stop)."""
    reserve_seconds: float | None = None
    """WallClockBudget's reserve kept for the GPTQ calibration pass."""
    calibration_seconds: float | None = None
    """Seconds from the end of training until the calibration pass (Hessians over training data) has read
    its last batch: whatever the export does first (pre-quantization eval) counts too."""
    calibration_split: str | None = None
    """The data split the calibration batches are read from."""
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    model_bytes: int | None = None
    """Size of `artifact.ptz`."""
    code_bytes: int | None = None
    """Size of the `train_gpt.py` that ships this run (`lit_golf.export.code_size`)."""
    artifact_bytes: int | None = None
    """model_bytes + code_bytes: what the 16,000,000-byte limit covers."""
    budget_bytes: int | None = None
    val_bpb_pre_quant: float | None = None
    val_bpb_post_quant: float | None = None
    evaluated: str | None = None
    """What `test` scored: `artifact` (the quantized submission) or `checkpoint`."""
    val_bpb: float | None = None
    """Plain bits per byte of what `test` scored."""
    val_loss: float | None = None
    ttt_bpb: float | None = None
    ttt_loss: float | None = None
    final_bpb: float | None = None
    """The submission's score: TTT bits per byte when TTT ran, else plain."""
    final_loss: float | None = None
    """Mean cross-entropy in nats per token matching `final_bpb`."""
    eval_seconds: float | None = None
    """Evaluation wall clock, from the test stage's start (artifact read and decompressed, compile included) to the final bpb."""
    eval_load_seconds: float | None = None
    """Of which the test stage's start to the evaluation's: the artifact read and decompressed (ZPAQ, brotli),
    the model on its device."""
    ttt_compile_seconds: float | None = None
    """Of which TTT's compile (its timed warm-up; 0 when eager)."""
    global_sgd_seconds: float | None = None
    """Of which the global SGD between TTT phases."""
    ttt_tokens_per_second_after_compile: float | None = None
    """Scored tokens per second of TTT after its compile (scoring and global SGD, on rank 0), as
    `bench/ttt_throughput.py` counts them (the evaluation line's `ttt_tokens_per_second` includes the
    compile)."""
    ttt_positions_per_second_after_compile: float | None = None
    """Positions (rows x width of every TTT pass, scoring and learning) per second, over the same seconds."""
    fineweb_8xh100_eval_s_projected: float | None = None
    """The FineWeb evaluation's wall clock on 8×H100, projected from this test's clocks
    (`lit_golf.eval.projection`)."""
    fineweb_projection: dict = field(default_factory=dict)
    """The projection's inputs: the test's own clocks, counts, world size and hardware
    (`projection.MeasuredEval`) and `fineweb_prefix_docs`; `lit-golf check` recomputes the projection
    from them."""
    evaluation: dict = field(default_factory=dict)
    """The EvalConfig the evaluation ran with (`EvalConfig.to_dict`: one dict per group)."""
    val_tokens_limited: bool | None = None
    """True when `evaluation.max_docs` (linked to `data.max_val_docs`) cut the validation set."""
    test_dir: str | None = None
    """The folder, inside the run folder, of the separate `lit-golf test` whose scores these are (its own
    results.json, metrics and config); None when the run's own launch (`lit-golf run`) scored it."""

    def updates(self) -> dict:
        """The measured keys (None and empty values left out), for merging into an existing file."""
        return {k: v for k, v in asdict(self).items() if v not in (None, [], {})}


KEYS = tuple(f.name for f in fields(RunResults))
# What a test measures; every other key is the fit's (or the launch's: seed, hardware, versions, files).
TEST_KEYS = ("evaluated", "val_bpb", "val_loss", "ttt_bpb", "ttt_loss", "final_bpb", "final_loss", "eval_seconds",
             "eval_load_seconds", "ttt_compile_seconds", "global_sgd_seconds",
             "ttt_tokens_per_second_after_compile", "ttt_positions_per_second_after_compile",
             "fineweb_8xh100_eval_s_projected", "fineweb_projection", "evaluation", "val_tokens_limited")


def update_results(run_dir: str | Path, results: RunResults) -> Path:
    """Merge `results` into `<run_dir>/results.json` (created if absent); returns the file."""
    path = Path(run_dir) / RESULTS_NAME
    merged = read_results(path) if path.is_file() else {}
    merged.update(results.updates())
    return write_results(path, merged)


def write_results(path: Path, results: dict) -> Path:
    return write_atomic(path, json.dumps(results, indent=2, sort_keys=True) + "\n")


# The sub-folders in which a fit writes its artifact and its checkpoints.
FIT_FOLDERS = ("artifact", "checkpoints")


def fit_run_of(path: str | Path) -> Path | None:
    """The run folder of a file a fit wrote (`<run>/artifact/artifact.ptz`, `<run>/checkpoints/last.ckpt`, the
    run holding the fit's `config.yaml`); None for a file anywhere else."""
    folder = Path(path).resolve().parent
    run = folder.parent
    return run if folder.name in FIT_FOLDERS and (run / CONFIG_NAME).is_file() else None


def add_test_scores(run_dir: Path, test_dir: Path, test_log: str) -> bool:
    """Complete a fit's record with the scores of a test of its artifact (`test_dir`'s results.json).

    Only the test's keys are added, and only while the run has no scores: a fit's seed, config and steps,
    and an earlier test's scores, stay as recorded. The test's log lines are appended to the run's
    `train.log`, so the run's log shows the evaluation its results state. Returns whether it added them.
    """
    path = run_dir / RESULTS_NAME
    recorded = read_results(path) if path.is_file() else {}
    if recorded.get("final_bpb") is not None:
        return False
    scores = {k: v for k, v in read_results(test_dir).items() if k in TEST_KEYS}
    write_results(path, {**recorded, **scores, "test_dir": test_dir.name})
    append_atomic(run_dir / TRAIN_LOG_NAME, test_log)
    return True


def read_results(path: str | Path) -> dict:
    """A results.json (or the one in a run folder) as a dict; a missing or broken file is one clear line."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results file; `lit-golf run` (or fit + test) writes it into the run folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); rerun the stage that writes it") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; it was written by another lit_golf version")
    if data.get("evaluation"):  # what `check` and `submit` read of it must be what the evaluation ran with
        try:
            EvalConfig.from_dict(data["evaluation"])
        except ValueError as exc:
            raise ValueError(f"{path}: evaluation: {exc}") from None
    return data


def projection_words(results: dict) -> str:
    """The FineWeb 8×H100 evaluation seconds projected from what `results` records, in words ("-": none)."""
    record = results.get("fineweb_projection")
    return project_record(record).describe() if record else "-"


def summary_lines(results: dict) -> list[str]:
    """The run's end-of-launch summary, one quantity per line."""

    def number(key: str, fmt: str) -> str:
        value = results.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "-"

    return [
        f"steps               {number('steps', 'd')}",
        f"train seconds       {number('train_seconds', '.1f')}  (+ calibration {number('calibration_seconds', '.1f')})",
        f"artifact bytes      {number('artifact_bytes', ',')}  (model {number('model_bytes', ',')} + code "
        f"{number('code_bytes', ',')}; budget {number('budget_bytes', ',')})",
        f"bpb pre/post-quant  {number('val_bpb_pre_quant', '.5f')} / {number('val_bpb_post_quant', '.5f')}",
        f"TTT bpb             {number('ttt_bpb', '.5f')}",
        f"eval seconds        {number('eval_seconds', '.1f')}  (launch -> final bpb)",
        f"FineWeb 8xH100 eval {projection_words(results)}",
        f"final bpb           {number('final_bpb', '.5f')}",
    ]
