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
    recipe_world_size: int | None = None
    """GPUs the step-counted knobs were tuned for (EMA decay, Muon momentum warm-up, checkpoint cadence). A wall-clock run
    on W GPUs takes about W / recipe_world_size as many steps, so those knobs are rescaled by that ratio
    (`recipe_step_scale`); None keeps them as written. Fixed-step runs are never rescaled."""

    def __post_init__(self) -> None:
        if self.recipe_world_size is not None and self.recipe_world_size < 1:
            raise ValueError(f"recipe_world_size={self.recipe_world_size} must be at least 1 (or null)")
        if not 0.0 <= self.warmdown_frac <= 1.0:
            raise ValueError(f"warmdown_frac={self.warmdown_frac} must lie in [0, 1]")
        if not 0.0 <= self.enable_looping_at <= 1.0:
            raise ValueError(f"enable_looping_at={self.enable_looping_at} must lie in [0, 1]")


def lr_multiplier(fraction: float, warmdown_frac: float, min_lr: float) -> float:
    """Constant 1.0, then a linear ramp to `min_lr` over the last `warmdown_frac` of training."""
    if warmdown_frac <= 0.0 or fraction < 1.0 - warmdown_frac:
        return 1.0
    return max((1.0 - fraction) / warmdown_frac, min_lr)


def recipe_step_scale(world_size: int, recipe_world_size: int | None, wall_clock: bool) -> float:
    """Steps this run takes per step of the run its recipe was tuned on.

    Tokens per step are fixed, so a wall-clock run's step count grows with the GPUs that share the work:
    on one GPU the 8-GPU record takes ~1/8 of its steps. Only a wall clock makes the length depend on
    the GPU count; a fixed-step run's length is the one its config states.
    """
    if recipe_world_size is None or not wall_clock:
        return 1.0
    return world_size / recipe_world_size


def scaled_decay(decay: float, step_scale: float) -> float:
    """An averaging decay with the same horizon as a fraction of the run: `decay ** (1 / step_scale)`.

    0.9965 averages over ~286 of the 8-GPU record's steps; at scale 1/8 the same share of a
    one-GPU run is ~36 steps (decay 0.972), so the average forgets the initial weights in time.
    """
    return decay ** (1.0 / step_scale)


def scaled_steps(steps: int, step_scale: float) -> int:
    """A step count rescaled to this run's length (at least 1 when `steps` is)."""
    return max(round(steps * step_scale), 1) if steps > 0 else 0
