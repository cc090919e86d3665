"""`EMA`: exponential moving average of the model's weights, swapped in when training ends.

The record evaluates and exports the EMA of the weights, not the last iterate. The shadow is fp32
(the model may hold bf16 tensors, whose rounding would swallow updates of weight 1 - decay), lives on
the model's device and is updated with a few fused foreach kernels after every optimizer step.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn


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
        decay: weight of the old average at each step.
    """

    def __init__(self, decay: float = 0.9965) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay={decay} must lie in [0, 1)")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}
        self._live: dict[str, torch.Tensor] = {}
        self._groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self._loaded: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.progress.weight_average = self  # the export loads the average, whatever the callback order

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
        weight = 1.0 - self.decay
        for shadow, live in self._groups:
            if live[0].dtype == torch.float32:
                torch._foreach_lerp_(shadow, live, weight)
            else:  # lerp needs matching dtypes; mul+add promotes the bf16 operand on the fly
                torch._foreach_mul_(shadow, self.decay)
                torch._foreach_add_(shadow, live, alpha=weight)

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
