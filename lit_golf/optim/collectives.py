"""The three asynchronous collectives `GolfOptimizer` needs, over the default process group.

Everything is a SUM: averaging is done by the caller pre-scaling by ``1 / world_size``, which is exact
for power-of-two worlds and works on every backend (gloo in tests, NCCL on GPUs). Handles are
waited with ``.wait()``, which on NCCL orders the streams without blocking the host.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# torch 2.13 renamed the tensor-in/tensor-out collectives; older releases only have the old names.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class Collectives:
    """Process-group facts plus async SUM collectives; `detect` says whether to communicate at all."""

    def __init__(self, world_size: int, rank: int) -> None:
        self.world_size = world_size
        self.rank = rank

    @classmethod
    def detect(cls, enabled: bool) -> Collectives | None:
        """A `Collectives` when `enabled` and torch.distributed runs more than one process, else None."""
        if not enabled or not dist.is_available() or not dist.is_initialized():
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
