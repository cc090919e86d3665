"""The `torch.distributed` helpers of lit_golf, over the default process group.

Everything runs inside whatever group the caller (Lightning, a test, a script) set up; without one,
every helper behaves as a single rank. Sums only: averaging is the caller pre-scaling by
``1 / world_size``, which is exact for power-of-two worlds and works on every backend (gloo in tests,
NCCL on GPUs). Asynchronous handles are waited with ``.wait()``, which on NCCL orders the streams
without blocking the host.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
import torch.distributed as dist

# torch 2.13 renamed the tensor-in/tensor-out collectives; older releases only have the old names.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def all_reduce_max(value: float, device: torch.device) -> float:
    """Largest `value` over all ranks (the value itself without a process group)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


class Collectives:
    """Process-group facts plus async SUM collectives; `detect` says whether to communicate at all."""

    def __init__(self, world_size: int, rank: int) -> None:
        self.world_size = world_size
        self.rank = rank

    @classmethod
    def detect(cls, enabled: bool = True) -> Collectives | None:
        """A `Collectives` when `enabled` and torch.distributed runs more than one process, else None."""
        if not enabled or not is_distributed():
            return None
        world_size = dist.get_world_size()
        return cls(world_size, dist.get_rank()) if world_size > 1 else None

    def reduce_scatter_sum(self, output: torch.Tensor, input: torch.Tensor):
        """Sum `input` ([world * n, ...]) over ranks; this rank keeps rows ``rank * n : (rank + 1) * n``."""
        return _reduce_scatter(output, input, op=dist.ReduceOp.SUM, async_op=True)

    def all_gather(self, output: torch.Tensor, input: torch.Tensor):
        """Concatenate every rank's `input` along dim 0 into `output`, in rank order."""
        return _all_gather(output, input, async_op=True)

    def all_reduce_sum(self, tensor: torch.Tensor):
        return dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)


class PackedAllReduce:
    """An in-flight SUM all-reduce of many tensors (each first multiplied by `scale`); `wait()` writes back.

    Tensors of at most `max_packed_numel` elements (all of them when None) are concatenated into one
    buffer per (device, dtype): one collective instead of dozens of tiny ones. Larger ones go alone.
    """

    def __init__(self, tensors: Iterable[torch.Tensor], comm: Collectives, scale: float = 1.0,
                 max_packed_numel: int | None = None) -> None:
        self._singles, self._packs = [], []
        small: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        for tensor in tensors:
            if max_packed_numel is not None and tensor.numel() > max_packed_numel:
                self._singles.append(comm.all_reduce_sum(tensor.mul_(scale) if scale != 1.0 else tensor))
            else:
                small[(tensor.device, tensor.dtype)].append(tensor)
        for members in small.values():
            flat = torch.cat([t.reshape(-1) for t in members])
            if scale != 1.0:
                flat.mul_(scale)
            self._packs.append((members, flat, comm.all_reduce_sum(flat)))

    def wait(self) -> None:
        for work in self._singles:
            work.wait()
        for members, flat, work in self._packs:
            work.wait()
            for tensor, part in zip(members, flat.split([t.numel() for t in members]), strict=True):
                tensor.copy_(part.view_as(tensor))
