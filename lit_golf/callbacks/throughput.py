"""`Throughput`: tokens/s, step time and MFU every n steps, from host timestamps.

Only the logging steps synchronize the device (and read the loss), so the steps in between run with
the GPU queue full. Over an interval bounded by two synchronized timestamps, host time is device time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_golf.callbacks.wallclock import Clock, TrainingClock, log_to_loggers, synchronize_device
from lit_golf.config import GPTConfig

log = logging.getLogger("lit_golf")

# Dense bf16 tensor-core peak per device (no sparsity), keyed by a substring of the device name.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def device_peak_flops(device: torch.device) -> float | None:
    """Known bf16 peak of a CUDA device, or None (CPU, unknown GPU: MFU is then not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


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
    """Counts steps and training seconds; `take()` returns both since the previous `take()`."""

    def __init__(self, clock: Clock = time.perf_counter, synchronize: bool = True, steps: int = 0,
                 seconds: float = 0.0) -> None:
        self.timer = TrainingClock(clock, synchronize, offset=seconds)  # a resumed run starts at its checkpoint's
        self.steps = steps
        self._taken_steps = steps
        self._taken_seconds = seconds

    def step(self) -> None:
        self.steps += 1

    def take(self) -> tuple[int, float]:
        seconds = self.timer.read()
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

    def metrics(self) -> dict[str, float]:
        values = {
            "train/loss": self.loss,
            "train/tokens_per_s": self.tokens_per_second,
            "train/step_ms": self.step_ms,
        }
        if self.mfu is not None:
            values["train/mfu"] = self.mfu
        return values

    def line(self) -> str:
        step = f"{self.step}/{self.max_steps}" if self.max_steps > 0 else str(self.step)
        parts = [f"step {step}", f"loss {self.loss:.4f}", f"tok/s {self.tokens_per_second:,.0f}",
                 f"step {self.step_ms:.1f}ms"]
        if self.mfu is not None:
            parts.append(f"mfu {100 * self.mfu:.1f}%")
        parts.append(f"train_time {self.train_seconds / 60:.1f}m")
        return " ".join(parts)


class Throughput(Callback):
    """Logs throughput every `log_every_n_steps` optimizer steps (validation time excluded).

    Args:
        log_every_n_steps: steps between measurements; only these steps synchronize.
        peak_flops: peak FLOP/s of one device for MFU; None picks it from the device name
            (H100/H200/A100 bf16 dense) and skips MFU where unknown (CPU).
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self, log_every_n_steps: int = 50, peak_flops: float | None = None, clock: Clock = time.perf_counter
    ) -> None:
        if log_every_n_steps < 1:
            raise ValueError(f"Throughput: log_every_n_steps={log_every_n_steps} must be at least 1")
        self.log_every_n_steps = log_every_n_steps
        self.peak_flops = peak_flops
        self._clock = clock
        self._rate = StepRate(clock)
        self._total_peak: float | None = None
        self.last: ThroughputSample | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        peak = self.peak_flops if self.peak_flops is not None else device_peak_flops(pl_module.device)
        # tokens_per_step is global, so the whole job's peak is the reference.
        self._total_peak = peak * trainer.world_size if peak is not None else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._rate.timer.train_batch_started(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._rate.step()
        if self._rate.steps % self.log_every_n_steps == 0:
            self.last = self._measure(trainer, pl_module)
            log_to_loggers(trainer, self.last.metrics())
            if trainer.is_global_zero:
                log.info(self.last.line())

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ThroughputSample:
        synchronize_device(pl_module.device)
        steps, seconds = self._rate.take()
        seconds = max(seconds, 1e-9)  # a clock that did not advance must not divide by zero
        tokens_per_second = steps * pl_module.tokens_per_step / seconds
        mfu = None
        if self._total_peak:
            seq_len = getattr(trainer.datamodule, "train_seq_len", None)
            mfu = flops_per_token(pl_module.gpt, seq_len) * tokens_per_second / self._total_peak
        return ThroughputSample(
            step=trainer.global_step,
            max_steps=trainer.max_steps,
            loss=float(pl_module.last_train_loss),
            tokens_per_second=tokens_per_second,
            step_ms=1e3 * seconds / steps,
            train_seconds=self._rate.timer.read(),
            mfu=mfu,
        )

    def on_validation_start(self, trainer, pl_module) -> None:
        self._rate.timer.validation_started(pl_module.device)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._rate.timer.validation_ended(pl_module.device)

    def state_dict(self) -> dict:
        """Steps and training seconds so far: a resumed run's `train_time` continues from here."""
        return {"steps": self._rate.steps, "train_seconds": self._rate.timer.read()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rate = StepRate(self._clock, steps=int(state_dict["steps"]), seconds=float(state_dict["train_seconds"]))
