"""`WallClockBudget`: stop training when the time budget is spent, identically on every rank.

The challenge allows a fixed wall-clock for training, minus a reserve for GPTQ. The LR schedule and
the loop switch follow the training fraction (training seconds / effective budget), so every rank must
see the same fraction and stop at the same step. Reading the clock is cheap but agreeing on it needs
a collective and a device sync; doing that every step would stall the GPU pipeline. Instead the ranks
agree (all-reduce MAX of measured time, after a device sync) every `sync_every_steps` steps and, in
between, all extrapolate from the last agreed time and step time, which is the same arithmetic on the
same numbers everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_golf.distributed import all_reduce_max
from lit_golf.progress import TimeBudget, TrainingProgress, synchronize_device

log = logging.getLogger("lit_golf")


def log_to_loggers(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Send metrics straight to the loggers (rank zero), bypassing `self.log`'s per-n-steps flushing."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


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
    """Sets the training fraction in `pl_module.progress` before each step; stops when the budget is spent.

    Reads the module's one training clock (`pl_module.progress.clock`) and publishes its state as
    `pl_module.progress.time_budget` (a `TimeBudget`).

    Args:
        budget_seconds: total training wall-clock allowed; None switches the budget off (a fixed-step
            run: `trainer.max_steps` ends training and the schedules follow steps).
        reserve_seconds: kept back for GPTQ calibration after training, on a run of the recipe's GPU count;
            the effective budget is the difference. Each rank computes Hessians over its 1/W share of the
            calibration batches, so a run on fewer GPUs than the recipe's does more of that work per rank
            and reserves proportionally more (`reserve_in_use` = reserve_seconds / step scale: 4 s for 8
            GPUs is 32 s on one, where the measured calibration took 7.3 s on an H200 and 604.2 s of
            training + calibration broke the rule with 4 s).
        sync_every_steps: steps between agreement points (one device sync + one all-reduce each).
    """

    def __init__(
        self, budget_seconds: float | None = 600.0, reserve_seconds: float = 4.0, sync_every_steps: int = 10
    ) -> None:
        if budget_seconds is not None and not 0.0 <= reserve_seconds < budget_seconds:
            raise ValueError(
                f"WallClockBudget: need 0 <= reserve_seconds ({reserve_seconds}) < budget_seconds ({budget_seconds})"
            )
        if sync_every_steps < 1:
            raise ValueError(f"WallClockBudget: sync_every_steps={sync_every_steps} must be at least 1")
        self.budget_seconds = budget_seconds
        self.reserve_seconds = reserve_seconds
        self.reserve_in_use = reserve_seconds
        self.effective_budget = budget_seconds - reserve_seconds if budget_seconds is not None else float("inf")
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

    @property
    def active(self) -> bool:
        return self.budget_seconds is not None

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.active:
            self._publish(pl_module.progress)

    def on_train_start(self, trainer, pl_module) -> None:
        """Scale the reserve to this run's calibration share (the module has set the step scale at fit start)."""
        if not self.active:
            return
        scale = pl_module.progress.step_scale
        self.reserve_in_use = self.reserve_seconds / scale
        if not self.reserve_in_use < self.budget_seconds:
            raise ValueError(
                f"wallclock.reserve_seconds {self.reserve_seconds:g} for the recipe's GPU count is "
                f"{self.reserve_in_use:g} s on {trainer.world_size} GPU(s) (step scale {scale:g}), not below "
                f"budget_seconds {self.budget_seconds:g}: lower reserve_seconds or raise budget_seconds"
            )
        self.effective_budget = self.budget_seconds - self.reserve_in_use
        if self.reserve_in_use != self.reserve_seconds:
            log.info("wallclock: GPTQ reserve %.1f s for the recipe's calibration share per rank, %.1f s for this "
                     "run's (step scale %.4g): training stops at %.1f s", self.reserve_seconds, self.reserve_in_use,
                     scale, self.effective_budget)
        self._publish(pl_module.progress)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.active:
            self._publish(pl_module.progress)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.active:
            return
        self._steps += 1
        if self._agreement.is_due(self._steps, self.effective_budget):
            self._agree(trainer, pl_module.device, pl_module.progress)
        # Never step backwards: a too-high extrapolation is held until measured time catches up.
        self._elapsed = max(self._elapsed, self._agreement.estimate(self._steps))
        self._publish(pl_module.progress)
        if self._elapsed >= self.effective_budget:
            trainer.should_stop = True

    def _publish(self, progress: TrainingProgress) -> None:
        per_step = self._agreement.seconds_per_step
        progress.time_budget = TimeBudget(
            self.budget_seconds, self.reserve_in_use, self.sync_every_steps, self._elapsed,
            estimated_final_step(self._steps, self.remaining_seconds, per_step) if per_step > 0 else None,
        )

    def _agree(self, trainer: L.Trainer, device: torch.device, progress: TrainingProgress) -> None:
        synchronize_device(device)
        agreed = all_reduce_max(progress.clock.read(), device)
        self._agreement.agree(self._steps, agreed)
        log_to_loggers(trainer, {"train/time_s": agreed, "train/fraction": min(agreed / self.effective_budget, 1.0)})

    def state_dict(self) -> dict:
        return {
            "steps": self._steps,
            "elapsed_seconds": self._elapsed,
            "seconds_per_step": self._agreement.seconds_per_step,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume the budget where the checkpoint left it: the time already spent still counts.

        The module's clock resumes from the same checkpoint (`GolfLightningModule.on_load_checkpoint`).
        """
        self._steps = state_dict["steps"]
        self._elapsed = state_dict["elapsed_seconds"]
        self._agreement = BudgetAgreement(
            self._agreement.sync_every_steps, self._steps, self._elapsed, state_dict["seconds_per_step"]
        )


def estimated_final_step(steps_done: int, remaining_seconds: float, seconds_per_step: float) -> int:
    """Steps the run will have taken when the budget runs out, at the current pace (rounded up)."""
    return steps_done + max(int(-(-remaining_seconds // seconds_per_step)), 0)
