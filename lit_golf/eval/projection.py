"""The FineWeb evaluation's wall clock on 8×H100, projected from one test's measured clocks.

The challenge scores on FineWeb's validation set (`FINEWEB_VAL_TOKENS` targets in `FINEWEB_VAL_DOCS`
documents) on `FINEWEB_GPUS` H100s, launch to final bpb in at most 600 s. A test here runs on other
hardware (one GPU, often an H200) and often on part of another corpus, so the projection keeps what does
not grow with the data as measured and scales what does:

    projected = fixed + (scoring x token_ratio + global_sgd x prefix_ratio) x world_size / 8 / h100_speed

* fixed = the test's evaluation wall clock minus the two parts below: reading and decompressing the
  artifact (ZPAQ), the TTT compile, setting up. Every rank pays it once, in parallel, on any GPU.
* scoring = plain, sliding and TTT scoring seconds; token_ratio = FineWeb targets / targets scored.
* global_sgd = the phases' SGD seconds; they grow with the prefix documents' tokens, estimated as documents
  x mean tokens per document of each set: prefix_ratio = (FineWeb prefix docs x FineWeb tokens per doc) /
  (the test's prefix docs x its tokens per doc). The FineWeb run uses the test's settings.
* world_size / 8: the ranks split both as the 8 would; `h100_speed`: an H100's throughput relative to the
  device measured (`H100_PER_H200_THROUGHPUT` for an H200).

Not modelled: imbalance between ranks (the plan balances positions; each phase ends in a sync), the
positions per scored token of FineWeb's length distribution against the test's (results.json records
`ttt_positions_per_second_after_compile` beside), global SGD's gradient all-reduce across 8 GPUs. Plain
Python: `check` uses it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from lit_golf.eval.config import EvalConfig

FINEWEB_VAL_TOKENS = 40_540_160
FINEWEB_VAL_DOCS = 50_000
FINEWEB_GPUS = 8

H100_PER_H200_THROUGHPUT = 0.97
"""An H100's compiled-TTT throughput as a fraction of an H200's, measured: the frontier's 600-s artifacts (same
model shape, settings and 5,000 enwiki2015 val docs; two runs, so two weight sets) scored 31,250 TTT tokens/s
after compile on 1xH100 80GB HBM3 (eighth session, commit 4fd98ce) and 32,069 on 1xH200 (seventh, 365ec6b):
0.974, positions/s alike (527k / 541k); bench/NOTES.md. The compiled step is compute-bound (equal bf16 peak),
which the 0.84 of two eager measurements used before did not show."""

# The device names whose speed relative to an H100 is known (the first match in a `hardware` string counts).
H100_SPEED = {"H200": H100_PER_H200_THROUGHPUT, "H100": 1.0}


@dataclass(frozen=True)
class MeasuredEval:
    """What one test measured, the projection's inputs (named as `results.json` records them)."""

    # Launch (the test stage's start) to the final bpb.
    eval_seconds: float
    # Of which plain, sliding and TTT scoring (TTT's compile and global SGD excluded).
    eval_scoring_seconds: float
    # Of which the global SGD between TTT phases.
    global_sgd_seconds: float
    # Targets scored (each evaluation scores every one once).
    eval_tokens: int
    # Validation documents scored.
    eval_docs: int
    # Documents in the phased prefix global SGD trains on (0: none).
    ttt_prefix_docs: int
    world_size: int
    # `RunResults.hardware`, e.g. `1x NVIDIA H200`.
    hardware: str

    def record(self, fineweb_prefix: int) -> dict:
        """What `results.json` keeps (`fineweb_projection`): these inputs and the FineWeb prefix assumed."""
        return {**asdict(self), "fineweb_prefix_docs": fineweb_prefix}

    @classmethod
    def from_record(cls, record: dict) -> tuple[MeasuredEval, int]:
        """The inputs and FineWeb prefix of a `record`; ValueError (one line) when one is missing or not a count,
        a non-negative number of seconds or a device name."""
        names = [f.name for f in fields(cls)]
        missing = sorted(set(names + ["fineweb_prefix_docs"]) - set(record))
        if missing:
            raise ValueError(f"fineweb_projection lacks {missing}")
        measured = cls(**{name: record[name] for name in names})
        numbers = [record[name] for name in names if name != "hardware"] + [record["fineweb_prefix_docs"]]
        readable = isinstance(measured.hardware, str) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in numbers)
        if not readable or measured.eval_tokens == 0 or measured.world_size == 0 \
                or measured.ttt_prefix_docs > measured.eval_docs:
            raise ValueError("fineweb_projection holds a value that is not a count, seconds or a device name")
        return measured, record["fineweb_prefix_docs"]


@dataclass(frozen=True)
class Projection:
    # Projected FineWeb evaluation wall clock on 8×H100.
    seconds: float
    fixed_seconds: float
    scoring_seconds: float
    global_sgd_seconds: float
    # The H100's throughput relative to the measured device's that the projection used.
    h100_speed: float
    # False when the measured device's speed relative to an H100 is unknown (a CPU, another GPU): the
    # projection then takes it as an H100's, which is arithmetic, not an estimate.
    estimate: bool
    # The device measured.
    hardware: str

    def describe(self) -> str:
        """One line: the projected seconds and what they were scaled from."""
        if not self.estimate:
            source = f"{self.hardware} taken as an H100: arithmetic only, not an estimate"
        elif self.h100_speed == 1.0:
            source = self.hardware
        else:
            source = f"{self.hardware}; an H100 at {self.h100_speed:.2f}x its speed"
        return (f"{self.seconds:,.1f} s projected for FineWeb ({FINEWEB_VAL_TOKENS:,} tokens) on "
                f"{FINEWEB_GPUS}xH100 (from {source})")


def h100_speed(hardware: str) -> float | None:
    """An H100's throughput relative to the device named in `hardware`; None when unknown."""
    return next((speed for name, speed in H100_SPEED.items() if name in hardware), None)


def fineweb_prefix_docs(cfg: EvalConfig) -> int:
    """Documents in the phased prefix of a FineWeb evaluation with `cfg`."""
    phased = cfg.ttt.enabled and cfg.global_sgd.enabled
    return min(cfg.global_sgd.prefix_docs, FINEWEB_VAL_DOCS) if phased else 0


def project(measured: MeasuredEval, fineweb_prefix: int) -> Projection:
    """The FineWeb 8×H100 evaluation seconds from `measured`, with `fineweb_prefix` documents in its prefix."""
    m = measured
    speed = h100_speed(m.hardware)
    per_gpu = m.world_size / FINEWEB_GPUS / (speed or 1.0)
    scoring = m.eval_scoring_seconds * FINEWEB_VAL_TOKENS / m.eval_tokens * per_gpu
    global_sgd = 0.0
    if m.global_sgd_seconds and m.ttt_prefix_docs:
        fineweb_prefix_tokens = fineweb_prefix * FINEWEB_VAL_TOKENS / FINEWEB_VAL_DOCS
        prefix_tokens = m.ttt_prefix_docs * m.eval_tokens / m.eval_docs
        global_sgd = m.global_sgd_seconds * fineweb_prefix_tokens / prefix_tokens * per_gpu
    fixed = m.eval_seconds - m.eval_scoring_seconds - m.global_sgd_seconds
    return Projection(fixed + scoring + global_sgd, fixed, scoring, global_sgd, speed or 1.0, speed is not None,
                      m.hardware)


def project_record(record: dict) -> Projection:
    """`project` of a results.json's `fineweb_projection` (ValueError, one line, when it is malformed)."""
    return project(*MeasuredEval.from_record(record))


def measured_eval(
    scores: dict, eval_seconds: float, cfg: EvalConfig, world_size: int, hardware: str
) -> MeasuredEval:
    """The inputs from `lit_golf.eval.runner.evaluate`'s results: its `time_<section>_s` clocks (`plain`,
    `sliding`, TTT's `ttt_score_<stage>` and `ttt_sgd_<stage>`, as `run_phased_ttt` names them) and counts."""
    plain = sum(scores.get(f"time_{name}_s", 0.0) for name in ("plain", "sliding"))
    docs = scores.get("ttt_docs", 0)
    prefix = min(cfg.global_sgd.prefix_docs, docs) if cfg.ttt.enabled and cfg.global_sgd.enabled else 0
    return MeasuredEval(eval_seconds, plain + _ttt_seconds(scores, "score"), _ttt_seconds(scores, "sgd"),
                        int(scores["val_tokens"]), docs, prefix, world_size, hardware)


def ttt_throughput(scores: dict) -> tuple[float, float] | None:
    """TTT's scored tokens and positions per second after its compile (scoring and global SGD), as
    `bench/ttt_throughput.py` counts them; None without TTT."""
    seconds = _ttt_seconds(scores, "score") + _ttt_seconds(scores, "sgd")
    if "ttt_tokens" not in scores or not seconds > 0:
        return None
    return scores["ttt_tokens"] / seconds, scores["ttt_positions"] / seconds


def _ttt_section(key: str, kind: str) -> bool:
    return key.startswith(f"time_ttt_{kind}_") and key.endswith("_s")


def _ttt_seconds(scores: dict, kind: str) -> float:
    return sum(v for k, v in scores.items() if _ttt_section(k, kind))
