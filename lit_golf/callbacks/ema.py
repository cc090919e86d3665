"""`EMA`: exponential moving average of the model's weights, swapped in when training ends.

The record evaluates and exports the EMA of the weights, not the last iterate. Its decay is tuned for
the record's run length; a wall-clock run of another length (fewer GPUs) averages over the same share
of its steps (`lit_golf.schedule.scaled_decay`), so one GPU does not export a still-initial average.
The shadow is fp32
(the model may hold bf16 tensors, whose rounding would swallow updates of weight 1 - decay), lives on
the model's device and is updated with a few fused foreach kernels after every optimizer step.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_golf.schedule import scaled_decay

log = logging.getLogger("lit_golf")


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Live floating-point tensors of `model.state_dict()` (parameters and persistent buffers).

    Tied weights appear once, under their first name, so they are averaged once.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_floating_point() and id(tensor) not in seen:
            seen.add(id(tensor))
            tensors[name] = tensor
    return tensors


class EMA(Callback):
    """fp32 EMA of `pl_module.gpt`, updated after every step and copied into the model at train end.

    The shadow is taken at the first training batch, i.e. after any compile warm-up has restored the
    initial weights. Order the callback before anything that reads the final weights at train end
    (e.g. the export callback).

    Args:
        decay: weight of the old average at each step of a run of the recipe's length; the decay in use
            (`decay_in_use`) is rescaled to this run's length (`pl_module.progress.step_scale`).
    """

    def __init__(self, decay: float = 0.9965) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay={decay} must lie in [0, 1)")
        self.decay = decay
        self.decay_in_use = decay
        self.shadow: dict[str, torch.Tensor] = {}
        self._live: dict[str, torch.Tensor] = {}
        self._groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self._loaded: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.progress.weight_average = self  # the export loads the average, whatever the callback order

    def on_train_start(self, trainer, pl_module) -> None:
        self.decay_in_use = scaled_decay(self.decay, pl_module.progress.step_scale)
        if self.decay_in_use != self.decay:
            log.info("ema: decay %.4f for the recipe's run length, %.4f for this run (step scale %.4g)",
                     self.decay, self.decay_in_use, pl_module.progress.step_scale)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._live:
            self._attach(pl_module.gpt)

    def _attach(self, model: nn.Module) -> None:
        self._live = float_state(model)
        source = self._loaded if self._loaded is not None else self._live
        missing = sorted(set(self._live) - set(source))
        if missing:
            raise ValueError(f"EMA: checkpoint has no average for {missing}; resume with the model it was saved from")
        with torch.no_grad():
            self.shadow = {
                name: source[name].detach().to(device=live.device, dtype=torch.float32, copy=True)
                for name, live in self._live.items()
            }
        self._groups = self._groups_by_dtype()
        self._loaded = None

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        decay = self.decay_in_use
        for shadow, live in self._groups:
            if live[0].dtype == torch.float32:
                torch._foreach_lerp_(shadow, live, 1.0 - decay)
            else:  # lerp needs matching dtypes; mul+add promotes the bf16 operand on the fly
                torch._foreach_mul_(shadow, decay)
                torch._foreach_add_(shadow, live, alpha=1.0 - decay)

    def _groups_by_dtype(self) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        groups: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for name, live in self._live.items():
            shadows, lives = groups.setdefault(live.dtype, ([], []))
            shadows.append(self.shadow[name])
            lives.append(live)
        return list(groups.values())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the average into `model`, cast to each tensor's own dtype."""
        live = float_state(model)
        for name, average in self.shadow.items():
            live[name].copy_(average)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.shadow:
            self.copy_to(pl_module.gpt)

    def state_dict(self) -> dict:
        shadow = self.shadow if self.shadow else (self._loaded or {})
        return {"decay": self.decay, "shadow": shadow}

    def load_state_dict(self, state_dict: dict) -> None:
        """Keep the saved average; it replaces the fresh snapshot at the first training batch."""
        self._loaded = dict(state_dict["shadow"]) or None
        self._live, self.shadow, self._groups = {}, {}, []
