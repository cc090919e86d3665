"""Newton–Schulz orthogonalization: the part of Muon that turns a momentum matrix into an update.

Each iteration applies the odd quintic ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, which pushes
every singular value of ``X`` towards 1 without an SVD. A *schedule* is the sequence of ``(a, b, c)``
triples, one per iteration, so a fixed-coefficient recipe ("muon5": the record's 5 x the same triple)
and a per-step recipe such as Polar Express are the same kind of object and are picked by name.

Adding a schedule (for example the Polar Express coefficients, one tuned triple per iteration)::

    from lit_golf.optim import register_schedule
    register_schedule("polar_express", [(a1, b1, c1), (a2, b2, c2), ...])

after which ``OptimConfig(muon_backend="polar_express")`` selects it. Registration has to happen
before the config is validated, e.g. at import time of the module that defines the coefficients.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

Coefficients = tuple[tuple[float, float, float], ...]

MUON5_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

NS_SCHEDULES: dict[str, Coefficients] = {"muon5": (MUON5_COEFFICIENTS,) * 5}


class UnknownScheduleError(ValueError):
    """A Newton–Schulz schedule name that is not in `NS_SCHEDULES`."""


def register_schedule(name: str, coefficients: Sequence[Sequence[float]], *, replace: bool = False) -> None:
    """Add a schedule of per-iteration ``(a, b, c)`` triples under `name`.

    Refuses to silently overwrite an existing name (pass ``replace=True`` to do it on purpose) and
    rejects malformed triples here, so a typo fails at registration instead of mid-training.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Newton-Schulz schedule name must be a non-empty string, got {name!r}")
    if name in NS_SCHEDULES and not replace:
        raise ValueError(f"Newton-Schulz schedule {name!r} is already registered; pass replace=True to overwrite it")
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
    NS_SCHEDULES[name] = tuple(triples)


def get_schedule(name: str) -> Coefficients:
    """The coefficients registered under `name`, or a one-line error listing the known names."""
    try:
        return NS_SCHEDULES[name]
    except KeyError:
        known = ", ".join(sorted(NS_SCHEDULES))
        raise UnknownScheduleError(
            f"unknown Newton-Schulz schedule {name!r} (known: {known}); "
            "add one with lit_golf.optim.register_schedule(name, triples)"
        ) from None


def orthogonalize(G: torch.Tensor, coefficients: Coefficients, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal polar factor of every matrix in `G` (``[..., rows, cols]``), in bf16.

    Wide orientation keeps ``X X^T`` the small side, so tall matrices are transposed in and out.
    Dividing by the Frobenius norm bounds the spectral norm by 1, inside the iteration's basin.
    """
    X = G.to(torch.bfloat16)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for a, b, c in coefficients:
        gram = X @ X.mT
        X = a * X + (b * gram + c * (gram @ gram)) @ X
    return X.mT if tall else X


@functools.cache
def compiled_orthogonalize() -> Callable[..., torch.Tensor]:
    """`orthogonalize` under torch.compile, built once; fuses the scalar-matrix ops on GPU."""
    return torch.compile(orthogonalize, dynamic=False)
