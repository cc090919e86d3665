"""Input Hessians (mean x x^T) of every quantized matrix, from forward hooks on the model's input taps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from lit_golf.distributed import is_distributed


def _input_ids(batch) -> torch.Tensor:
    """Calibration batches may be bare `input_ids` or tuples whose first element is `input_ids`."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class _TapAccumulator:
    """Running sum of x^T x and row count for one tap (one tap may feed several matrices, e.g. q/k/v)."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.rows = 0

    def __call__(self, module: nn.Module, inputs: tuple, output) -> None:
        x = inputs[0].detach()
        x = x.reshape(-1, x.shape[-1]).float()
        if self.sum is None:
            self.sum = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
        self.sum.addmm_(x.T, x)
        self.rows += x.shape[0]


def _all_reduce(accumulators: dict[str, _TapAccumulator], device: torch.device) -> None:
    """Sum Hessians and row counts over ranks so every rank ends with the Hessian of all ranks' batches."""
    for acc in accumulators.values():
        rows = torch.tensor([float(acc.rows)], dtype=torch.float64, device=device)
        dist.all_reduce(acc.sum)
        dist.all_reduce(rows)
        acc.rows = int(rows.item())


@torch.no_grad()
def collect_hessians(
    gpt: nn.Module, batches: Iterable, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """{matrix name: mean of x x^T over every calibration token} for each `gpt.quantized_matrices()` entry.

    Runs `batches` (this rank's share) through `gpt` in eval mode without gradients, in whatever
    looping state the model is in (the trained model's final state, which the artifact keeps). A block
    that the layer schedule repeats contributes once per visit. With torch.distributed initialized,
    the sums and token counts are all-reduced, so every rank gets the same Hessians. Returned
    tensors are float32 on `device` (default: the model's device); matrices sharing a tap share one tensor.
    """
    device = torch.device(device) if device is not None else next(gpt.parameters()).device
    matrices = gpt.quantized_matrices()
    accumulators = {m.tap: _TapAccumulator() for m in matrices}
    handles = [gpt.get_submodule(tap).register_forward_hook(acc) for tap, acc in accumulators.items()]
    was_training = gpt.training
    gpt.eval()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    try:
        with autocast:
            for batch in batches:
                gpt(_input_ids(batch).to(device, non_blocking=True))
    finally:
        for handle in handles:
            handle.remove()
        gpt.train(was_training)

    for tap, acc in accumulators.items():
        if acc.sum is None:
            # A rank with no batches still joins the all-reduce, with zeros of the right size.
            width = _tap_width(gpt, matrices, tap)
            acc.sum = torch.zeros(width, width, dtype=torch.float32, device=device)
    if is_distributed():
        _all_reduce(accumulators, device)
    empty = [tap for tap, acc in accumulators.items() if acc.rows == 0]
    if empty:
        raise ValueError(
            f"no calibration tokens reached taps {empty[:3]}; give collect_hessians at least one batch "
            "(ExportConfig.calibration_batches >= number of ranks)"
        )
    means = {tap: acc.sum / acc.rows for tap, acc in accumulators.items()}
    return {m.name: means[m.tap] for m in matrices}


def _tap_width(gpt: nn.Module, matrices, tap: str) -> int:
    """Input width of the matrices fed by `tap` (their column count)."""
    return next(m.weight(gpt).shape[1] for m in matrices if m.tap == tap)
