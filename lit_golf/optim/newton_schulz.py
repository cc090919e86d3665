"""Newton–Schulz orthogonalization: the part of Muon that turns a momentum matrix into an update.

Each iteration applies the odd quintic ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, which pushes
every singular value of ``X`` towards 1 without an SVD. A *schedule* is the sequence of ``(a, b, c)``
triples, one per iteration, plus the safety factor of the input normalization the triples were
derived for, so a fixed-coefficient recipe ("muon5": the record's 5 x the same triple) and a
per-step recipe ("polar_express") are the same kind of object and are picked by name.

Adding a schedule::

    from lit_golf.optim import register_schedule
    register_schedule("mine", [(a1, b1, c1), (a2, b2, c2), ...], safety_factor=1.01)

after which ``OptimConfig(muon_backend="mine")`` selects it; YAML can give the triples inline instead
(``ns_coefficients``, see `OptimConfig`). Registration has to happen before the config is validated.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

Coefficients = tuple[tuple[float, float, float], ...]


class NewtonSchulzSchedule(NamedTuple):
    """Per-iteration ``(a, b, c)`` triples and the normalization they assume.

    The input is divided by ``safety_factor * ||G||_F``: the Frobenius norm bounds the spectral norm,
    and a factor above 1 leaves room for bf16 rounding to push a singular value past 1, where
    coefficients tuned on ``[l, 1]`` can blow up. A tuple, so torch.compile guards on its values.
    """

    coefficients: Coefficients
    safety_factor: float = 1.0


MUON5_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express (Amsel et al. 2025, arXiv:2505.16932): one minimax-optimal quintic per iteration for
# 5 iterations, as computed for modded-nanogpt. "polar_express" applies them as the 2026-04-23 record
# (openai/parameter-golf, PR #1344 -> #1787) does: input divided by its plain Frobenius norm.
# "polar_express_safe" adds modded-nanogpt's 2% safety margin (input / (1.02 x norm)) against bf16
# rounding pushing a singular value past 1.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY_FACTOR = 1.02

NS_SCHEDULES: dict[str, NewtonSchulzSchedule] = {
    "muon5": NewtonSchulzSchedule((MUON5_COEFFICIENTS,) * 5),
    "polar_express": NewtonSchulzSchedule(POLAR_EXPRESS_COEFFICIENTS),
    "polar_express_safe": NewtonSchulzSchedule(POLAR_EXPRESS_COEFFICIENTS, POLAR_EXPRESS_SAFETY_FACTOR),
}


class UnknownScheduleError(ValueError):
    """A Newton–Schulz schedule name that is not in `NS_SCHEDULES`."""


def make_schedule(name: str, coefficients: Sequence[Sequence[float]], safety_factor: float = 1.0) -> NewtonSchulzSchedule:
    """A validated schedule; `name` only labels the errors, so a typo fails here, not mid-training."""
    triples = []
    for step, triple in enumerate(coefficients):
        values = tuple(float(v) for v in triple)
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ValueError(
                f"Newton-Schulz schedule {name!r}: iteration {step} has {tuple(triple)!r}; "
                "each iteration needs three finite numbers (a, b, c)"
            )
        triples.append(values)
    if not triples:
        raise ValueError(f"Newton-Schulz schedule {name!r} has no iterations; give at least one (a, b, c) triple")
    if not (math.isfinite(safety_factor) and safety_factor >= 1.0):
        raise ValueError(
            f"Newton-Schulz schedule {name!r}: safety_factor={safety_factor!r} must be a finite number >= 1 "
            "(it only ever shrinks the normalized input)"
        )
    return NewtonSchulzSchedule(tuple(triples), float(safety_factor))


def register_schedule(
    name: str, coefficients: Sequence[Sequence[float]], *, safety_factor: float = 1.0, replace: bool = False
) -> None:
    """Add a schedule of per-iteration ``(a, b, c)`` triples under `name`.

    Registering the same schedule again is a no-op (a config is validated once per process and
    again on resume); a different one under a taken name is refused unless ``replace=True``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Newton-Schulz schedule name must be a non-empty string, got {name!r}")
    schedule = make_schedule(name, coefficients, safety_factor)
    if NS_SCHEDULES.get(name, schedule) != schedule and not replace:
        raise ValueError(
            f"Newton-Schulz schedule {name!r} is already registered with other coefficients; "
            "pick another name or pass replace=True to overwrite it"
        )
    NS_SCHEDULES[name] = schedule


def get_schedule(name: str) -> NewtonSchulzSchedule:
    """The schedule registered under `name`, or a one-line error listing the known names."""
    try:
        return NS_SCHEDULES[name]
    except KeyError:
        known = ", ".join(sorted(NS_SCHEDULES))
        raise UnknownScheduleError(
            f"unknown Newton-Schulz schedule {name!r} (known: {known}); "
            "add one with lit_golf.optim.register_schedule(name, triples) or ns_coefficients in the config"
        ) from None


def orthogonalize(G: torch.Tensor, schedule: NewtonSchulzSchedule, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal polar factor of every matrix in `G` (``[..., rows, cols]``), in bf16.

    Wide orientation keeps ``X X^T`` the small side, so tall matrices are transposed in and out.
    Dividing by the (safety-scaled) Frobenius norm bounds the spectral norm by 1, inside the basin.
    """
    X = G.to(torch.bfloat16)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    norm = X.norm(dim=(-2, -1), keepdim=True)
    if schedule.safety_factor != 1.0:  # decided at trace time: muon5 compiles to the same graph as before
        norm = norm * schedule.safety_factor
    X = X / (norm + eps)
    for a, b, c in schedule.coefficients:
        gram = X @ X.mT
        X = a * X + (b * gram + c * (gram @ gram)) @ X
    return X.mT if tall else X


@functools.cache
def compiled_orthogonalize() -> Callable[..., torch.Tensor]:
    """`orthogonalize` under torch.compile, built once; fuses the scalar-matrix ops on GPU."""
    return torch.compile(orthogonalize, dynamic=False)
