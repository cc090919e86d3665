"""`WallClockBudget`: stop training when the time budget is spent, identically on every rank.

The challenge allows a fixed wall-clock for training, minus a reserve for GPTQ. The LR schedule and
the loop switch follow `training_fraction = training seconds / effective budget`, so every rank must
see the same fraction and stop at the same step. Reading the clock is cheap but agreeing on it needs
a collective and a device sync; doing that every step would stall the GPU pipeline. Instead the ranks
agree (all-reduce MAX of measured time, after a device sync) every `sync_every_steps` steps and, in
between, all extrapolate from the last agreed time and step time, which is the same arithmetic on the
same numbers everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

Clock = Callable[[], float]


def synchronize_device(device: torch.device) -> None:
    """Wait for queued kernels, so that a host timestamp taken next covers the work issued before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def all_reduce_max(value: float, device: torch.device) -> float:
    """Largest `value` over all ranks (the value itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def log_to_loggers(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Send metrics straight to the loggers (rank zero), bypassing `self.log`'s per-n-steps flushing."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


class TrainingClock:
    """Seconds spent training: starts at the first training batch and pauses during validation.

    Starting at the first batch leaves compile warm-up and the sanity check out. With `synchronize`,
    every start/pause/resume first waits for the device, so queued training kernels are not
    counted as validation time (or the other way round); these transitions are rare.
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


@dataclass
class BudgetAgreement:
    """The elapsed-time estimate that all ranks share.

    At an agreement point every rank records the same (step, agreed seconds) and derives the same
    seconds per step from the previous point; between points the estimate is a pure function of the
    step count, so ranks never diverge. An agreement is also due as soon as the extrapolation reaches
    the budget, so training stops on measured time, never on an extrapolated guess.
    """

    sync_every_steps: int
    step: int = 0
    elapsed: float = 0.0
    seconds_per_step: float = 0.0

    def estimate(self, steps: int) -> float:
        return self.elapsed + (steps - self.step) * self.seconds_per_step

    def is_due(self, steps: int, budget: float) -> bool:
        return steps % self.sync_every_steps == 0 or self.estimate(steps) >= budget

    def agree(self, steps: int, elapsed: float) -> None:
        if steps > self.step:
            self.seconds_per_step = (elapsed - self.elapsed) / (steps - self.step)
        self.step, self.elapsed = steps, elapsed


class WallClockBudget(Callback):
    """Sets `pl_module.training_fraction` before each step and stops when the training budget is spent.

    Args:
        budget_seconds: total training wall-clock allowed.
        reserve_seconds: kept back for GPTQ after training; the effective budget is the difference.
        sync_every_steps: steps between agreement points (one device sync + one all-reduce each).
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        budget_seconds: float = 600.0,
        reserve_seconds: float = 4.0,
        sync_every_steps: int = 10,
        clock: Clock = time.perf_counter,
    ) -> None:
        if not 0.0 <= reserve_seconds < budget_seconds:
            raise ValueError(
                f"WallClockBudget: need 0 <= reserve_seconds ({reserve_seconds}) < budget_seconds ({budget_seconds})"
            )
        if sync_every_steps < 1:
            raise ValueError(f"WallClockBudget: sync_every_steps={sync_every_steps} must be at least 1")
        self.budget_seconds = budget_seconds
        self.reserve_seconds = reserve_seconds
        self.effective_budget = budget_seconds - reserve_seconds
        self._clock = clock
        self._timer = TrainingClock(clock)
        self._agreement = BudgetAgreement(sync_every_steps)
        self._steps = 0
        self._elapsed = 0.0

    @property
    def sync_every_steps(self) -> int:
        """Steps between agreement points, where the device is synchronized anyway (other checks ride along)."""
        return self._agreement.sync_every_steps

    @property
    def elapsed_seconds(self) -> float:
        """Agreed (or extrapolated) training seconds after the last finished step, the same on all ranks."""
        return self._elapsed

    @property
    def remaining_seconds(self) -> float:
        return max(self.effective_budget - self._elapsed, 0.0)

    @property
    def fraction(self) -> float:
        return min(self._elapsed / self.effective_budget, 1.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._timer.train_batch_started(pl_module.device)
        pl_module.training_fraction = self.fraction

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._steps += 1
        if self._agreement.is_due(self._steps, self.effective_budget):
            self._agree(trainer, pl_module.device)
        # Never step backwards: a too-high extrapolation is held until measured time catches up.
        self._elapsed = max(self._elapsed, self._agreement.estimate(self._steps))
        if self._elapsed >= self.effective_budget:
            trainer.should_stop = True

    def _agree(self, trainer: L.Trainer, device: torch.device) -> None:
        synchronize_device(device)
        agreed = all_reduce_max(self._timer.read(), device)
        self._agreement.agree(self._steps, agreed)
        log_to_loggers(trainer, {"train/time_s": agreed, "train/fraction": min(agreed / self.effective_budget, 1.0)})

    def on_validation_start(self, trainer, pl_module) -> None:
        self._timer.validation_started(pl_module.device)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._timer.validation_ended(pl_module.device)

    def state_dict(self) -> dict:
        return {
            "steps": self._steps,
            "elapsed_seconds": self._elapsed,
            "seconds_per_step": self._agreement.seconds_per_step,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume the budget where the checkpoint left it: the time already spent still counts."""
        self._steps = state_dict["steps"]
        self._elapsed = state_dict["elapsed_seconds"]
        self._agreement = BudgetAgreement(
            self._agreement.sync_every_steps, self._steps, self._elapsed, state_dict["seconds_per_step"]
        )
        self._timer = TrainingClock(self._clock, offset=self._elapsed)
