"""`GolfOptimizer`: Muon on the weight banks and AdamW on everything else, as one optimizer object.

One object because Lightning's manual optimization counts a global step per optimizer step, and
because the step owns the whole gradient pipeline, which no other layer does (there is no DDP
wrapper, see `lit_golf/strategy.py`):

1. sync: bank gradients are reduce-scattered (bf16, averaged) so each rank owns a slice of rows;
   the other gradients are all-reduced, small ones packed into one buffer per dtype;
2. clip: one global gradient norm over the synced gradients, applied as a device-side factor;
3. Muon on the owned bank rows (momentum, row normalization, Newton-Schulz), then an all-gather
   of the updates, each bank's gather overlapping the next bank's orthogonalization;
4. AdamW on the replicated parameters, identically on every rank.

A single process does the same arithmetic with no communication. `step()` never synchronizes
with the host. In a multi-process run `state_dict()` is a collective (the Muon momentum slices are
gathered into whole banks, so checkpoints do not depend on the world size): call it on every rank,
as Lightning's checkpointing does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.adamw import adamw as adamw_functional

from lit_golf.distributed import Collectives, PackedAllReduce
from lit_golf.optim.config import OptimConfig, muon_momentum
from lit_golf.optim.newton_schulz import compiled_orthogonalize, get_schedule, orthogonalize

BANK_NAMES = ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank")
EMBEDDING_NAME = "tok_emb"
# Replicated gradients at most this large share one all-reduce per dtype; larger ones go alone.
PACKED_GRAD_MAX_NUMEL = 1 << 15
CLIP_EPS = 1e-6
ROW_NORM_EPS = 1e-7
MOMENTUM_DTYPE = torch.bfloat16

_KIND_DEFAULTS = {
    "muon": {"weight_decay": 0.0, "momentum": 0.95, "nesterov": True, "row_normalize": False,
             "ns_schedule": "muon5"},
    "adamw": {"weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8},
}


class ParamGroupError(ValueError):
    """A parameter group that `GolfOptimizer` cannot run."""


class ModelContractError(ValueError):
    """The model lacks an attribute that `build_golf_optimizer` groups parameters by."""


# ---------------------------------------------------------------- the pieces of a Muon update
def nesterov_momentum(grad: torch.Tensor, buffer: torch.Tensor, momentum: float, nesterov: bool) -> torch.Tensor:
    """Accumulate `grad` into `buffer` in place and return the direction to orthogonalize.

    Nesterov looks one step ahead: ``grad + momentum * buffer`` with the already-updated buffer.
    """
    buffer.mul_(momentum).add_(grad)
    return grad.add(buffer, alpha=momentum) if nesterov else buffer


def normalize_rows(update: torch.Tensor) -> torch.Tensor:
    """Scale every row to unit L2 norm (MuonEq-R), so no output unit dominates the orthogonalization."""
    norms = torch.linalg.vector_norm(update, dim=-1, keepdim=True, dtype=torch.float32)
    return update / norms.clamp_min(ROW_NORM_EPS).to(update.dtype)


def muon_shape_scale(shape: torch.Size | tuple[int, ...]) -> float:
    """``sqrt(max(1, rows / cols))``: keeps the per-element update size of tall matrices in line."""
    return math.sqrt(max(1.0, shape[-2] / shape[-1]))


def apply_decoupled_update(param: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float,
                           scale: float) -> None:
    """``param <- param * (1 - lr * wd) - lr * scale * update`` (decay decoupled from the gradient)."""
    if weight_decay:
        param.mul_(1.0 - lr * weight_decay)
    param.add_(update.to(param.dtype), alpha=-lr * scale)


# ---------------------------------------------------------------- per-bank sharding
@dataclass
class _BankShard:
    """The rows of one bank this rank updates, and reusable bf16 communication buffers.

    A bank of ``n`` rows is padded to ``rows * world_size`` rows; rank ``r`` owns rows
    ``r * rows : (r + 1) * rows`` (padding rows carry zero gradient and so a zero update).
    """

    param: nn.Parameter
    world_size: int
    rank: int
    rows: int
    grad: torch.Tensor  # [rows, ...]: this rank's averaged (then clipped) gradient rows
    staging: torch.Tensor | None  # [rows * world, ...]: reduce-scatter input, then all-gather output

    @classmethod
    def create(cls, param: nn.Parameter, comm: Collectives | None) -> _BankShard:
        world_size, rank = (comm.world_size, comm.rank) if comm else (1, 0)
        rows = -(-param.shape[0] // world_size)
        grad = torch.empty((rows, *param.shape[1:]), dtype=torch.bfloat16, device=param.device)
        staging = None
        if comm is not None:
            staging = torch.zeros((rows * world_size, *param.shape[1:]), dtype=torch.bfloat16, device=param.device)
        return cls(param, world_size, rank, rows, grad, staging)

    def matches(self, comm: Collectives | None) -> bool:
        world_size, rank = (comm.world_size, comm.rank) if comm else (1, 0)
        return (self.world_size, self.rank, self.grad.device) == (world_size, rank, self.param.device)

    def own_rows(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole-bank tensor, zero-padded past the bank's end, as a new bf16 tensor."""
        start = self.rank * self.rows
        taken = full[start:start + self.rows]
        out = torch.zeros_like(self.grad, dtype=MOMENTUM_DTYPE)
        out[: taken.shape[0]].copy_(taken)
        return out


@dataclass
class _PendingGather:
    """A bank update still being all-gathered; `finish` waits for it and applies it."""

    group: dict
    shard: _BankShard
    local_update: torch.Tensor  # kept alive until the collective has read it
    work: object

    def finish(self) -> None:
        self.work.wait()
        bank = self.shard.param
        apply_decoupled_update(bank, self.shard.staging[: bank.shape[0]], self.group["lr"],
                               self.group["weight_decay"], muon_shape_scale(bank.shape))


# ---------------------------------------------------------------- the optimizer
class GolfOptimizer(torch.optim.Optimizer):
    """Muon + AdamW with built-in gradient sync and global clipping (see the module docstring).

    Args:
        param_groups: dicts with ``params``, ``kind`` ("muon" or "adamw") and ``lr``. Optional keys:
            ``weight_decay``; muon: ``momentum``, ``nesterov``, ``row_normalize``, ``ns_schedule``;
            adamw: ``betas``, ``eps``; any: ``base_lr`` (defaults to ``lr``), ``name``.
            Muon parameters must be 3-D banks ``[n, rows, cols]``.
        grad_clip_norm: clip the global gradient norm to this value; 0 disables clipping.
        distributed: communicate when torch.distributed runs more than one process; False leaves
            gradient averaging to someone else.
        compile_newton_schulz: run Newton-Schulz under torch.compile for CUDA tensors.

    The trainer sets each step's numbers with `set_lr_multiplier` and `set_muon_momentum` (or by
    writing ``group["lr"]`` / ``group["momentum"]``). After `step`, `last_grad_norm` holds the
    pre-clip global gradient norm as a device tensor (None when clipping is off); replicated
    gradients are left averaged and clipped, bank ``.grad`` tensors untouched (local, unclipped).
    Distributed, every rank must hold gradients for the same parameters, as data parallelism gives.
    """

    def __init__(self, param_groups: Iterable[dict], *, grad_clip_norm: float = 0.0, distributed: bool = True,
                 compile_newton_schulz: bool = True) -> None:
        if grad_clip_norm < 0:
            raise ValueError(f"GolfOptimizer: grad_clip_norm={grad_clip_norm} must be >= 0 (0 disables clipping)")
        self.grad_clip_norm = grad_clip_norm
        self.distributed = distributed
        self.compile_newton_schulz = compile_newton_schulz
        self.last_grad_norm: torch.Tensor | None = None
        self._shards: dict[nn.Parameter, _BankShard] = {}
        super().__init__(list(param_groups), defaults={})

    def add_param_group(self, param_group: dict) -> None:
        group = dict(param_group)
        label = group.get("name", f"#{len(self.param_groups)}")
        kind = group.get("kind")
        if kind not in _KIND_DEFAULTS:
            raise ParamGroupError(f"GolfOptimizer param group {label}: kind={kind!r} must be 'muon' or 'adamw'")
        if "lr" not in group:
            raise ParamGroupError(f"GolfOptimizer param group {label}: missing 'lr'")
        for key, value in _KIND_DEFAULTS[kind].items():
            group.setdefault(key, value)
        group.setdefault("base_lr", group["lr"])
        params = group["params"]
        group["params"] = [params] if isinstance(params, torch.Tensor) else list(params)
        if kind == "muon":
            get_schedule(group["ns_schedule"])
            for p in group["params"]:
                if p.ndim != 3:
                    raise ParamGroupError(
                        f"GolfOptimizer param group {label}: muon takes 3-D banks [n, rows, cols], "
                        f"got a parameter of shape {tuple(p.shape)}; put it in an adamw group"
                    )
        super().add_param_group(group)

    # -------------------------------------------------------- schedule hooks for the trainer
    def set_lr_multiplier(self, multiplier: float) -> None:
        """Set every group's lr to ``base_lr * multiplier`` (the LR schedule's value this step)."""
        for group in self.param_groups:
            group["lr"] = group["base_lr"] * multiplier

    def set_muon_momentum(self, momentum: float) -> None:
        """Set the momentum of every Muon group (e.g. to `muon_momentum(step, cfg)`)."""
        for group in self._groups("muon"):
            group["momentum"] = momentum

    # -------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        comm = Collectives.detect(self.distributed)
        banks = self._banks_with_grad(comm)
        replicated = [p.grad for group in self._groups("adamw") for p in group["params"] if p.grad is not None]
        scatters = [self._start_bank_gradient(shard, comm) for _, shard in banks]
        self._average_replicated(replicated, comm)
        for work in scatters:
            if work is not None:
                work.wait()
        self._clip([shard.grad for _, shard in banks], replicated, comm)
        last_gather = self._muon_step(banks, comm)
        self._adamw_step()  # overlaps the last bank's all-gather
        if last_gather is not None:
            last_gather.finish()
        return loss

    def _groups(self, kind: str) -> list[dict]:
        return [group for group in self.param_groups if group["kind"] == kind]

    def _bank_shard(self, param: nn.Parameter, comm: Collectives | None) -> _BankShard:
        shard = self._shards.get(param)
        if shard is None or not shard.matches(comm):
            shard = self._shards[param] = _BankShard.create(param, comm)
        return shard

    def _banks_with_grad(self, comm: Collectives | None) -> list[tuple[dict, _BankShard]]:
        """Largest bank first, so the longest all-gather starts earliest."""
        banks = [(group, self._bank_shard(p, comm)) for group in self._groups("muon")
                 for p in group["params"] if p.grad is not None]
        return sorted(banks, key=lambda item: -item[1].param.numel())

    @staticmethod
    def _start_bank_gradient(shard: _BankShard, comm: Collectives | None):
        """Fill `shard.grad` with this rank's rows of the averaged bf16 gradient (async when distributed)."""
        grad = shard.param.grad
        if comm is None:
            shard.grad.copy_(grad)
            return None
        n = grad.shape[0]
        torch.mul(grad, 1.0 / comm.world_size, out=shard.staging[:n])
        shard.staging[n:].zero_()
        return comm.reduce_scatter_sum(shard.grad, shard.staging)

    @staticmethod
    def _average_replicated(grads: list[torch.Tensor], comm: Collectives | None) -> None:
        """All-reduce-average the non-bank gradients in place: small ones packed per (device, dtype)."""
        if comm is None or not grads:
            return
        PackedAllReduce(grads, comm, scale=1.0 / comm.world_size, max_packed_numel=PACKED_GRAD_MAX_NUMEL).wait()

    def _clip(self, bank_grads: list[torch.Tensor], replicated: list[torch.Tensor],
              comm: Collectives | None) -> None:
        """Scale all synced gradients by ``min(1, max_norm / (norm + 1e-6))``, a device tensor."""
        if self.grad_clip_norm <= 0 or not (bank_grads or replicated):
            self.last_grad_norm = None
            return
        norm = _global_grad_norm(bank_grads, replicated, comm)
        self.last_grad_norm = norm
        coefficient = (self.grad_clip_norm / (norm + CLIP_EPS)).clamp(max=1.0)
        for grad in bank_grads:
            grad.mul_(coefficient)
        if replicated:
            torch._foreach_mul_(replicated, coefficient)

    def _muon_step(self, banks: list[tuple[dict, _BankShard]], comm: Collectives | None) -> _PendingGather | None:
        """Update every bank; distributed, return the last all-gather still in flight."""
        pending = None
        for group, shard in banks:
            update = self._muon_direction(group, shard)
            if comm is None:
                apply_decoupled_update(shard.param, update, group["lr"], group["weight_decay"],
                                       muon_shape_scale(shard.param.shape))
                continue
            update = update.contiguous()
            work = comm.all_gather(shard.staging, update)
            if pending is not None:
                pending.finish()
            pending = _PendingGather(group, shard, update, work)
        return pending

    def _muon_direction(self, group: dict, shard: _BankShard) -> torch.Tensor:
        state = self.state[shard.param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(shard.grad, dtype=MOMENTUM_DTYPE)
        update = nesterov_momentum(shard.grad, state["momentum_buffer"], group["momentum"], group["nesterov"])
        if group["row_normalize"]:
            update = normalize_rows(update)
        use_compiled = self.compile_newton_schulz and update.is_cuda
        orthogonalize_fn = compiled_orthogonalize() if use_compiled else orthogonalize
        return orthogonalize_fn(update, get_schedule(group["ns_schedule"]))

    def _adamw_step(self) -> None:
        for group in self._groups("adamw"):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._adamw_state(p) for p in params]
            fused = all(p.is_cuda for p in params)
            beta1, beta2 = group["betas"]
            adamw_functional(
                params, [p.grad for p in params], [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                foreach=not fused, fused=fused, capturable=False, differentiable=False,
                grad_scale=None, found_inf=None, amsgrad=False, beta1=beta1, beta2=beta2,
                lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
            )

    def _adamw_state(self, param: nn.Parameter) -> dict:
        state = self.state[param]
        if not state:
            # The step count lives on the parameter's device: fused CUDA AdamW reads it there,
            # and on CPU it is a CPU tensor, so reading it never waits for a device.
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    # -------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """torch's state dict, with each Muon momentum as the whole bank [n, rows, cols] in bf16.

        Distributed, the per-rank slices are all-gathered, so every rank must call this.
        """
        state_dict = super().state_dict()
        comm = Collectives.detect(self.distributed)
        if comm is None:
            return state_dict
        index = 0
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param)
                if group["kind"] == "muon" and state and "momentum_buffer" in state:
                    entry = dict(state_dict["state"][index])
                    entry["momentum_buffer"] = self._gather_bank(param, state["momentum_buffer"], comm)
                    state_dict["state"][index] = entry
                index += 1
        return state_dict

    def _gather_bank(self, param: nn.Parameter, rows: torch.Tensor, comm: Collectives) -> torch.Tensor:
        shard = self._bank_shard(param, comm)
        padded = torch.empty((shard.rows * comm.world_size, *param.shape[1:]), dtype=rows.dtype, device=rows.device)
        comm.all_gather(padded, rows).wait()
        return padded[: param.shape[0]].clone()

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a `state_dict()` (from any world size): each rank keeps its own rows of the momentum."""
        super().load_state_dict(state_dict)
        comm = Collectives.detect(self.distributed)
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param)
                if not state:
                    continue
                if group["kind"] == "muon":
                    full = state["momentum_buffer"]
                    if full.shape != param.shape:
                        raise ValueError(
                            f"GolfOptimizer.load_state_dict: Muon momentum has shape {tuple(full.shape)} but its "
                            f"bank has shape {tuple(param.shape)}; load a state dict saved by GolfOptimizer.state_dict()"
                        )
                    state["momentum_buffer"] = self._bank_shard(param, comm).own_rows(full)
                else:
                    state["step"] = state["step"].to(device=param.device, dtype=torch.float32)


def _global_grad_norm(bank_grads: list[torch.Tensor], replicated: list[torch.Tensor],
                      comm: Collectives | None) -> torch.Tensor:
    """L2 norm over all synced gradients: bank slices summed over ranks, replicated ones counted once."""
    squares = []
    if bank_grads:
        bank_sq = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in bank_grads]).square().sum()
        if comm is not None:
            comm.all_reduce_sum(bank_sq).wait()
        squares.append(bank_sq)
    if replicated:
        norms = torch._foreach_norm(replicated)
        squares.append(torch.stack([n.float() for n in norms]).square().sum())
    return torch.stack(squares).sum().sqrt()


# ---------------------------------------------------------------- builder
def build_golf_optimizer(gpt: nn.Module, cfg: OptimConfig | None = None) -> GolfOptimizer:
    """Group `gpt`'s parameters by the model contract: the four banks -> Muon, ``tok_emb`` -> AdamW
    (embedding numbers), everything else that trains -> AdamW (scalar numbers).

    Only the attribute names in `BANK_NAMES` and `EMBEDDING_NAME` are relied on.
    """
    cfg = cfg or OptimConfig()
    banks = [_model_bank(gpt, name) for name in BANK_NAMES]
    embedding = _model_embedding(gpt)
    claimed = {id(p) for p in (*banks, embedding)}
    scalars = [p for p in gpt.parameters() if p.requires_grad and id(p) not in claimed]
    adamw = {"kind": "adamw", "betas": (cfg.beta1, cfg.beta2), "eps": cfg.adam_eps}
    groups = [
        {"name": "banks", "kind": "muon", "params": banks, "lr": cfg.matrix_lr,
         "weight_decay": cfg.muon_weight_decay, "momentum": muon_momentum(0, cfg), "nesterov": cfg.muon_nesterov,
         "row_normalize": cfg.muon_row_normalize, "ns_schedule": cfg.muon_backend},
        {"name": "embedding", "params": [embedding], "lr": cfg.embed_lr,
         "weight_decay": cfg.embed_weight_decay, **adamw},
    ]
    if scalars:
        groups.append({"name": "scalars", "params": scalars, "lr": cfg.scalar_lr,
                       "weight_decay": cfg.scalar_weight_decay, **adamw})
    return GolfOptimizer(groups, grad_clip_norm=cfg.grad_clip_norm, distributed=cfg.distributed,
                         compile_newton_schulz=cfg.compile_newton_schulz)


def _model_bank(gpt: nn.Module, name: str) -> nn.Parameter:
    bank = getattr(gpt, name, None)
    if not isinstance(bank, nn.Parameter) or bank.ndim != 3:
        found = "nothing" if bank is None else f"{type(bank).__name__} of shape {tuple(getattr(bank, 'shape', ()))}"
        raise ModelContractError(
            f"build_golf_optimizer: {type(gpt).__name__}.{name} must be a 3-D nn.Parameter weight bank, "
            f"found {found} (see the model contract in docs/ARCHITECTURE.md)"
        )
    return bank


def _model_embedding(gpt: nn.Module) -> nn.Parameter:
    weight = getattr(getattr(gpt, EMBEDDING_NAME, None), "weight", None)
    if not isinstance(weight, nn.Parameter):
        raise ModelContractError(
            f"build_golf_optimizer: {type(gpt).__name__}.{EMBEDDING_NAME} must be an nn.Embedding "
            "with a .weight parameter (see the model contract in docs/ARCHITECTURE.md)"
        )
    return weight
