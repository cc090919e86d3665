"""`GolfProgressBar`: step, loss, tok/s and remaining budget, without per-step device syncs.

Lightning's default bar shows `prog_bar=True` metrics, which turns logged device tensors into
Python numbers (a sync) on every refresh of its own choosing. This bar reads the loss only when it
refreshes, and measures tok/s from host timestamps between refreshes.
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import TQDMProgressBar

from lit_golf.callbacks.throughput import StepRate
from lit_golf.callbacks.wallclock import Clock, WallClockBudget


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


class GolfProgressBar(TQDMProgressBar):
    """TQDM bar whose postfix is `step`, `loss`, `tok/s` and `left` (budget of `WallClockBudget`, if used).

    Args:
        refresh_rate: steps between refreshes; only refreshes read the loss (one sync).
        process_position, leave: as in `TQDMProgressBar`.
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self, refresh_rate: int = 10, process_position: int = 0, leave: bool = False, clock: Clock = time.perf_counter
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self._rate = StepRate(clock, synchronize=False)
        self._tokens_per_second: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._rate.timer.train_batch_started(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._rate.step()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._rate.timer.validation_started(pl_module.device)
        super().on_validation_start(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._rate.timer.validation_ended(pl_module.device)

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str]:
        """Called by the base class only when the bar refreshes (and at epoch/validation ends)."""
        metrics: dict[str, int | str] = {"step": trainer.global_step}
        loss = getattr(pl_module, "last_train_loss", None)
        if loss is not None:
            metrics["loss"] = f"{float(loss):.4f}"  # the sync: device work up to here is done
        steps, seconds = self._rate.take()
        if steps > 0 and seconds > 0:
            self._tokens_per_second = steps * pl_module.tokens_per_step / seconds
        if self._tokens_per_second is not None:
            metrics["tok/s"] = f"{self._tokens_per_second:,.0f}"
        budget = next((cb for cb in trainer.callbacks if isinstance(cb, WallClockBudget)), None)
        if budget is not None:
            metrics["left"] = format_duration(budget.remaining_seconds)
        return metrics
