"""Optimizer: Newton-Schulz schedules, the combined Muon + AdamW `GolfOptimizer` and its builder."""

from __future__ import annotations

from lit_golf.optim.config import OptimConfig, muon_momentum
from lit_golf.optim.golf_optimizer import (
    BANK_NAMES,
    EMBEDDING_NAME,
    GolfOptimizer,
    ModelContractError,
    ParamGroupError,
    build_golf_optimizer,
)
from lit_golf.optim.newton_schulz import (
    NS_SCHEDULES,
    UnknownScheduleError,
    get_schedule,
    orthogonalize,
    register_schedule,
)

__all__ = [
    "BANK_NAMES",
    "EMBEDDING_NAME",
    "NS_SCHEDULES",
    "GolfOptimizer",
    "ModelContractError",
    "OptimConfig",
    "ParamGroupError",
    "UnknownScheduleError",
    "build_golf_optimizer",
    "get_schedule",
    "muon_momentum",
    "orthogonalize",
    "register_schedule",
]
