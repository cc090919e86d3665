"""`TrainingProgress`: what the training module and its callbacks share during a fit.

The module owns one instance (`pl_module.progress`) and writes the step's numbers into it; callbacks
only read it, except a time budget, which also sets the training fraction. Declaring the contract
here means the module imports no callback and no callback scans the trainer for another one.
Nothing here touches the device on its own: tensors are read to host only by whoever already syncs
on that step (the wall clock's agreement points, the throughput logging steps).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

Clock = Callable[[], float]


def synchronize_device(device: torch.device) -> None:
    """Wait for queued kernels, so that a host timestamp taken next covers the work issued before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainingClock:
    """Seconds spent training: starts at the first training batch and pauses during validation.

    Starting at the first batch leaves compile warm-up and the sanity check out. With `synchronize`,
    every start/pause/resume first waits for the device, so queued training kernels are not counted
    as validation time (or the other way round); these transitions are rare. `offset` is the time a
    resumed run had already trained.
    """

    def __init__(self, clock: Clock = time.perf_counter, synchronize: bool = True, offset: float = 0.0) -> None:
        self._clock = clock
        self._synchronize = synchronize
        self._total = offset
        self._running_since: float | None = None
        self.started = False

    def _sync(self, device: torch.device) -> None:
        if self._synchronize:
            synchronize_device(device)

    def train_batch_started(self, device: torch.device) -> None:
        if not self.started:
            self._sync(device)
            self.started = True
            self._running_since = self._clock()

    def validation_started(self, device: torch.device) -> None:
        if self._running_since is not None:
            self._sync(device)
            self._total += self._clock() - self._running_since
            self._running_since = None

    def validation_ended(self, device: torch.device) -> None:
        if self.started and self._running_since is None:
            self._sync(device)
            self._running_since = self._clock()

    def read(self) -> float:
        """Training seconds so far (host time: synchronize first if queued work must be included)."""
        if self._running_since is None:
            return self._total
        return self._total + self._clock() - self._running_since

    def resume_at(self, seconds: float) -> None:
        """Continue a checkpointed run: `seconds` already trained, the clock not yet running."""
        self._total, self._running_since, self.started = seconds, None, False


class WeightAverage(Protocol):
    """A running average of the weights that replaces them at the end of training (the EMA)."""

    def copy_to(self, model: torch.nn.Module) -> None: ...


@dataclass
class TimeBudget:
    """A wall-clock budget's state, as every rank agrees on it (written by `WallClockBudget`)."""

    budget_seconds: float
    reserve_seconds: float
    sync_every_steps: int
    """Steps between the budget's device syncs; other host reads (the finite-loss check) ride along."""
    elapsed_seconds: float = 0.0
    """Training seconds the budget has counted after the last finished step."""
    estimated_total_steps: int | None = None
    """The step at which the budget will run out at the current pace (for progress bars)."""

    @property
    def effective_seconds(self) -> float:
        return self.budget_seconds - self.reserve_seconds

    @property
    def fraction(self) -> float:
        return min(self.elapsed_seconds / self.effective_seconds, 1.0)

    @property
    def remaining_seconds(self) -> float:
        return max(self.effective_seconds - self.elapsed_seconds, 0.0)


class TrainingProgress:
    """The fit's shared state. Written by the module unless noted; read by callbacks.

    Attributes:
        clock: the one training clock (validation and compile warm-up excluded).
        tokens_per_step: global batch in tokens.
        time_budget: the wall-clock budget's state, set by the budget callback; None when no budget
            governs, and the training fraction is then `step / max_steps`.
        last_loss: mean loss of the last step, a device tensor.
        grad_norm: global gradient norm before clipping of the last step, a device tensor (None
            when the optimizer does not compute it).
        lr_multiplier, muon_momentum: the schedules' values at the last step.
        weight_average: registered by an averaging callback; the export loads it before quantizing.
        step_scale: steps of this run per step of the run the recipe was tuned on (set at fit start,
            `lit_golf.schedule.recipe_step_scale`); step-counted knobs such as the EMA decay follow it.
    """

    def __init__(self, clock: Clock = time.perf_counter, synchronize: bool = True) -> None:
        self.clock = TrainingClock(clock, synchronize)
        self.tokens_per_step = 0
        self.time_budget: TimeBudget | None = None
        self.last_loss = torch.zeros(())
        self.grad_norm: torch.Tensor | None = None
        self.lr_multiplier = 1.0
        self.muon_momentum = 0.0
        self.weight_average: WeightAverage | None = None
        self.step_scale = 1.0

    def fraction(self, step: int, max_steps: int | None) -> float:
        """Training fraction for schedules: the time budget's when one is set, else steps done / max steps."""
        if self.time_budget is not None:
            return self.time_budget.fraction
        return step / max_steps if max_steps and max_steps > 0 else 0.0

    def step_scalars(self) -> dict[str, float]:
        """The step's numbers for the loggers. Reads device tensors: call only where the device is synced."""
        values = {"train/loss": float(self.last_loss), "train/lr_multiplier": self.lr_multiplier}
        if self.muon_momentum:
            values["train/muon_momentum"] = self.muon_momentum
        if self.grad_norm is not None:
            values["train/grad_norm"] = float(self.grad_norm)
        return values
