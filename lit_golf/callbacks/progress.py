"""`GolfProgressBar`: step, loss, tok/s and remaining budget, without per-step device syncs.

Lightning's default bar shows `prog_bar=True` metrics, which turns logged device tensors into
Python numbers (a sync) on every refresh of its own choosing. This bar reads the loss only when it
refreshes, and measures tok/s from host timestamps between refreshes.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar

from lit_golf.callbacks.throughput import StepRate


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


class GolfProgressBar(TQDMProgressBar):
    """TQDM bar whose postfix is `step`, `loss`, `tok/s` and `left` (of a time budget, if one governs).

    Under a time budget the bar's total (and so tqdm's ETA) is the budget's estimate of the final
    step, updated at each refresh; otherwise it is Lightning's (`max_steps`).

    Args:
        refresh_rate: steps between refreshes; only refreshes read the loss (one sync).
        process_position, leave: as in `TQDMProgressBar`.
    """

    def __init__(self, refresh_rate: int = 10, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self._rate: StepRate | None = None
        self._tokens_per_second: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._rate = StepRate(pl_module.progress.clock)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._rate.step()
        budget = pl_module.progress.time_budget
        estimate = budget.estimated_total_steps if budget is not None else None
        if estimate is not None and self._train_progress_bar is not None:
            # tqdm counts this launch's batches; the estimate counts the run's steps (a resumed run's too).
            steps_before_launch = trainer.global_step - (batch_idx + 1)
            self.train_progress_bar.total = max(estimate - steps_before_launch, batch_idx + 1)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str]:
        """Called by the base class only when the bar refreshes (and at epoch/validation ends)."""
        progress = pl_module.progress
        metrics: dict[str, int | str] = {"step": trainer.global_step}
        metrics["loss"] = f"{float(progress.last_loss):.4f}"  # the sync: device work up to here is done
        if self._rate is not None:
            steps, seconds = self._rate.take()
            if steps > 0 and seconds > 0:
                self._tokens_per_second = steps * progress.tokens_per_step / seconds
        if self._tokens_per_second is not None:
            metrics["tok/s"] = f"{self._tokens_per_second:,.0f}"
        if progress.time_budget is not None:
            metrics["left"] = format_duration(progress.time_budget.remaining_seconds)
        return metrics
