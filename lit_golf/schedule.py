"""Training schedules that depend only on the training fraction or the step.

The record schedules the learning rate by *wall-clock* fraction (so a run always ends in warmdown,
whatever its speed) and switches layer looping on at a fraction too; both live here as pure functions
so they can be tested and plotted without a Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainingConfig:
    """Knobs of the training loop itself (the optimizer's own numbers live in `OptimConfig`)."""

    warmdown_frac: float = 0.75
    min_lr: float = 0.0
    enable_looping_at: float = 0.35
    compile: bool = True
    compile_warmup: bool = True
    compile_cache: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmdown_frac <= 1.0:
            raise ValueError(f"warmdown_frac={self.warmdown_frac} must lie in [0, 1]")
        if not 0.0 <= self.enable_looping_at <= 1.0:
            raise ValueError(f"enable_looping_at={self.enable_looping_at} must lie in [0, 1]")


def lr_multiplier(fraction: float, warmdown_frac: float, min_lr: float) -> float:
    """Constant 1.0, then a linear ramp to `min_lr` over the last `warmdown_frac` of training."""
    if warmdown_frac <= 0.0 or fraction < 1.0 - warmdown_frac:
        return 1.0
    return max((1.0 - fraction) / warmdown_frac, min_lr)
