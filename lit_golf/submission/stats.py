"""The numbers a submission states about its seeds: mean and spread of the scores, each seed's bytes and
clocks, and the significance test the challenge asks of a record (a 0.005-nat improvement at p < 0.01).

`submit` writes `seed_summary` into submission.json and `check` recomputes it from the seeds' results, so
one function states them both ways.

The rule is stated in nats (upstream records quote the gain as val_loss, nats per token), while runs
are ranked in bits per byte; a seed's gain in bpb is converted with its own loss/bpb ratio
(nats per token per bit per byte = ln 2 x bytes per token). The test is a one-sided one-sample t-test
of the per-seed gains against the threshold; the Student t tail is computed in closed form for the
integer degrees of freedom a t-test has, so no scipy is needed.
"""

from __future__ import annotations

import math
import statistics

THRESHOLD_NATS = 0.005
SIGNIFICANCE = 0.01


def student_t_two_sided_inner(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with `dof` >= 1 degrees of freedom, t >= 0 (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2:  # odd: (2/pi) (theta + sin cos (1 + sum_{k=1}^{(dof-3)/2} (2*4..2k)/(3*5..(2k+1)) cos^2k))
        term, series = 1.0, 1.0 if dof > 1 else 0.0
        for k in range(1, (dof - 1) // 2):
            term *= (2 * k) / (2 * k + 1) * cos2
            series += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    term, series = 1.0, 1.0  # even: sin (1 + sum_{k=1}^{(dof-2)/2} (1*3..(2k-1))/(2*4..2k) cos^2k)
    for k in range(1, dof // 2):
        term *= (2 * k - 1) / (2 * k) * cos2
        series += term
    return math.sin(theta) * series


def t_upper_tail(t: float, dof: int) -> float:
    """P(T > t) for Student's t with `dof` degrees of freedom."""
    inner = student_t_two_sided_inner(abs(t), dof)
    return (1 - inner) / 2 if t >= 0 else (1 + inner) / 2


def gains_in_nats(baseline_bpb: float, seed_bpbs: list[float], seed_losses: list[float]) -> list[float]:
    """Each seed's improvement over `baseline_bpb` in nats per token (its bpb gain x its loss/bpb ratio)."""
    return [(baseline_bpb - bpb) * loss / bpb for bpb, loss in zip(seed_bpbs, seed_losses, strict=True)]


def improvement_p_value(gains: list[float], threshold: float = THRESHOLD_NATS) -> float | None:
    """One-sided p-value of "mean gain > threshold" over the seeds; None with fewer than 2 seeds."""
    if len(gains) < 2:
        return None
    mean, spread = statistics.fmean(gains), statistics.stdev(gains)
    if spread == 0:
        return 0.0 if mean > threshold else 1.0
    t = (mean - threshold) / (spread / math.sqrt(len(gains)))
    return t_upper_tail(t, len(gains) - 1)


def seed_summary(seeds: list[dict], baseline_bpb: float | None) -> dict:
    """submission.json's fields that follow from the seeds' results (each with seed, final_bpb, final_loss,
    model_bytes and code_bytes): a seed's bytes are its artifact plus the `train_gpt.py` its own run counted."""
    bpbs = [r["final_bpb"] for r in seeds]
    summary = {
        "val_bpb": round(statistics.fmean(bpbs), 8),
        "val_bpb_std": round(statistics.stdev(bpbs), 8) if len(bpbs) > 1 else 0.0,
        "seeds": [r["seed"] for r in seeds],
        "seed_results": {
            str(r["seed"]): {
                "val_bpb": r["final_bpb"], "val_loss": r["final_loss"],
                "artifact_bytes": r["model_bytes"] + r["code_bytes"],
                "train_time_s": r.get("train_seconds"), "eval_time_s": r.get("eval_seconds"),
            } for r in seeds
        },
        "baseline_bpb": baseline_bpb,
        "p_value": None,
    }
    if baseline_bpb is not None:
        gains = gains_in_nats(baseline_bpb, bpbs, [r["final_loss"] for r in seeds])
        summary["improvement_nats"] = round(statistics.fmean(gains), 6)
        summary["p_value"] = improvement_p_value(gains)
    return summary
