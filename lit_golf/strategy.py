"""`GolfDDPStrategy`: Lightning's DDP launcher and process groups, without DDP's gradient all-reduce.

`GolfOptimizer` reduce-scatters the weight banks, orthogonalizes its shard and all-gathers the update;
wrapping the model in `DistributedDataParallel` as well would all-reduce every bank gradient a second
time. Everything else (torchrun or Lightning's own launcher, multi-node, barriers, broadcasts) is
Lightning's `DDPStrategy` unchanged.
"""

from __future__ import annotations

from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


class GolfDDPStrategy(DDPStrategy):
    strategy_name = "golf_ddp"

    def configure_ddp(self) -> None:
        # No DDP wrapper: the optimizer communicates. Start every rank from rank 0's weights.
        _sync_module_states(self.model)


if GolfDDPStrategy.strategy_name not in StrategyRegistry:
    StrategyRegistry.register(
        GolfDDPStrategy.strategy_name,
        GolfDDPStrategy,
        description="DDP processes whose gradients are synchronized by GolfOptimizer",
    )
