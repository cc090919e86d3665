"""`Throughput`: tokens/s, step time and MFU every n steps, from host timestamps.

Only the logging steps synchronize the device (and read the loss), so the steps in between run with
the GPU queue full. Over an interval bounded by two synchronized timestamps, host time is device time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_golf.callbacks.wallclock import log_to_loggers
from lit_golf.config import GPTConfig
from lit_golf.progress import TrainingClock, TrainingProgress, synchronize_device

log = logging.getLogger("lit_golf")

# Lightning's table has no entry for the name an H200 SXM reports ("NVIDIA H200"), and its H200 rows
# are the with-sparsity figures; the dense bf16 peak is the H100 SXM's (same tensor cores).
H200_DENSE_BF16_FLOPS = 989.4e12


def device_peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of a CUDA device (Lightning's `get_available_flops`), or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    if "H200" in torch.cuda.get_device_name(device):
        return H200_DENSE_BF16_FLOPS
    return get_available_flops(device, torch.bfloat16)


def flops_per_token(model: nn.Module, seq_len: int | None) -> float:
    """Training FLOPs per token: 6 per parameter use, plus causal attention over `seq_len`.

    For a `GPTConfig` model, blocks that layer looping runs again count again, and attention adds
    6 * d_model * seq_len per executed layer (QK^T and AV, forward and backward, causal half).
    """
    n_params = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    if not isinstance(config, GPTConfig):
        return 6.0 * n_params
    encoder, decoder = config.layer_schedule(bool(getattr(model, "looping_active", False)))
    executed_layers = len(encoder) + len(decoder)
    d = config.model_dim
    matrix_params_per_layer = 2 * d * d + 2 * config.kv_dim * d + 2 * config.hidden_dim * d
    repeated = (executed_layers - config.num_layers) * matrix_params_per_layer
    attention = 6.0 * executed_layers * d * seq_len if seq_len else 0.0
    return 6.0 * (n_params + repeated) + attention


class StepRate:
    """Steps and training seconds (of the module's clock) since the previous `take()`."""

    def __init__(self, clock: TrainingClock, steps: int = 0) -> None:
        self.clock = clock
        self.steps = steps
        self._taken_steps = steps
        self._taken_seconds = clock.read()

    def step(self) -> None:
        self.steps += 1

    def take(self) -> tuple[int, float]:
        seconds = self.clock.read()
        interval = (self.steps - self._taken_steps, seconds - self._taken_seconds)
        self._taken_steps, self._taken_seconds = self.steps, seconds
        return interval


@dataclass
class ThroughputSample:
    step: int
    max_steps: int
    loss: float
    tokens_per_second: float
    step_ms: float
    train_seconds: float
    mfu: float | None
    max_steps_estimated: bool = False  # a time budget's estimate, shown as "~N"

    def metrics(self) -> dict[str, float]:
        values = {
            "train/tokens_per_s": self.tokens_per_second,
            "train/step_ms": self.step_ms,
        }
        if self.mfu is not None:
            values["train/mfu"] = self.mfu
        return values

    def line(self) -> str:
        total = f"~{self.max_steps}" if self.max_steps_estimated else str(self.max_steps)
        step = f"{self.step}/{total}" if self.max_steps > 0 else str(self.step)
        parts = [f"step {step}", f"loss {self.loss:.4f}", f"tok/s {self.tokens_per_second:,.0f}",
                 f"step {self.step_ms:.1f}ms"]
        if self.mfu is not None:
            parts.append(f"mfu {100 * self.mfu:.1f}%")
        parts.append(f"train_time {self.train_seconds / 60:.1f}m")
        return " ".join(parts)


class Throughput(Callback):
    """Logs throughput and the step's numbers every n optimizer steps (validation time excluded).

    Each logging step synchronizes the device once and logs `train/loss`, `train/lr_multiplier`,
    `train/muon_momentum`, `train/grad_norm` (from `pl_module.progress`) with tokens/s, step time and MFU.

    Args:
        log_every_n_steps: steps between measurements (only these steps synchronize); None follows
            the Trainer's `log_every_n_steps`.
        peak_flops: peak FLOP/s of one device for MFU; None asks Lightning's `get_available_flops`
            (dense bf16) and skips MFU where unknown (CPU).
    """

    def __init__(self, log_every_n_steps: int | None = None, peak_flops: float | None = None) -> None:
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"Throughput: log_every_n_steps={log_every_n_steps} must be at least 1")
        self.log_every_n_steps = log_every_n_steps
        self.peak_flops = peak_flops
        self._every = log_every_n_steps or 1
        self._rate: StepRate | None = None
        self._resumed_steps = 0
        self._total_peak: float | None = None
        self.last: ThroughputSample | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._every = self.log_every_n_steps or max(trainer.log_every_n_steps, 1)
        self._rate = StepRate(pl_module.progress.clock, steps=self._resumed_steps)
        peak = self.peak_flops if self.peak_flops is not None else device_peak_flops(pl_module.device)
        # tokens_per_step is global, so the whole job's peak is the reference.
        self._total_peak = peak * trainer.world_size if peak is not None else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._rate.step()
        if self._rate.steps % self._every == 0:
            self.last = self._measure(trainer, pl_module)
            log_to_loggers(trainer, {**pl_module.progress.step_scalars(), **self.last.metrics()})
            if trainer.is_global_zero:
                log.info(self.last.line())

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ThroughputSample:
        synchronize_device(pl_module.device)
        progress: TrainingProgress = pl_module.progress
        steps, seconds = self._rate.take()
        seconds = max(seconds, 1e-9)  # a clock that did not advance must not divide by zero
        tokens_per_second = steps * progress.tokens_per_step / seconds
        mfu = None
        if self._total_peak:
            seq_len = getattr(trainer.datamodule, "train_seq_len", None)
            mfu = flops_per_token(pl_module.gpt, seq_len) * tokens_per_second / self._total_peak
        estimate = progress.time_budget.estimated_total_steps if progress.time_budget is not None else None
        return ThroughputSample(
            step=trainer.global_step,
            max_steps=estimate or trainer.max_steps,
            loss=float(progress.last_loss),
            tokens_per_second=tokens_per_second,
            step_ms=1e3 * seconds / steps,
            train_seconds=progress.clock.read(),
            mfu=mfu,
            max_steps_estimated=estimate is not None,
        )

    def state_dict(self) -> dict:
        """Steps counted so far (the training seconds resume with the module's clock)."""
        return {"steps": self._rate.steps if self._rate is not None else self._resumed_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed_steps = int(state_dict["steps"])
