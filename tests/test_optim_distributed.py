"""GolfOptimizer's sharded step in 2 real processes (gloo on CPU) against a single-process step.

Exactness: with gradients whose bf16 average is exact and no clipping, sharding must not change a
single bit (row ownership, padding, gather order, replicated all-reduce are all checked there).

Tolerance with realistic gradients: the single-process step rounds the fp32 *average* bank gradient
to bf16 once; the sharded step rounds each rank's half to bf16 and sums in bf16 (the
reduce-scatter), so an element can differ by one bf16 ulp (2**-8 relative). bf16 Newton-Schulz on
these tiny matrices turns that into a few percent of the update (perturbing the single-process
gradients by one ulp moves the banks as much), times lr 0.026: below BF16_BANK_ATOL over 3 steps.
AdamW parameters get fp32-exact averages, but the clip factor is computed from the bf16 bank
gradients (~1e-4 relative apart); Adam is nearly scale invariant, leaving ~1e-5 absolute.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from test_eval_support import run_on_ranks
from test_optim import BF16_BANK_ATOL, params_of, set_grads, tiny_model

from lit_golf.optim import BANK_NAMES, OptimConfig, build_golf_optimizer, muon_momentum

WORLD_SIZE = 2
STEPS = 3
SNAPSHOT_AT = 1
REPLICATED_ATOL = 3e-5


def random_grads(model, step: int, rank: int) -> None:
    set_grads(model, seed=1000 * step + rank)


def integer_grads(model, step: int, rank: int) -> None:
    """Multiples of 1/16 in [-0.5, 0.5]: halves, sums and bf16 casts of these are all exact."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    for p in model.parameters():
        p.grad = torch.randint(-8, 9, p.shape, generator=gen) / 16.0


def optimizer_config(**overrides) -> OptimConfig:
    return OptimConfig(muon_momentum_warmup_steps=2, compile_newton_schulz=False, **overrides)


def train(model, opt, steps, grads_for_step) -> None:
    cfg = optimizer_config()
    for step in steps:
        grads_for_step(model, step)
        opt.set_muon_momentum(muon_momentum(step, cfg))
        opt.set_lr_multiplier(1.0 - 0.1 * step)
        opt.step()
        opt.zero_grad(set_to_none=True)


def run(grads_for_step, **overrides):
    model = tiny_model()
    opt = build_golf_optimizer(model, optimizer_config(**overrides))
    train(model, opt, range(STEPS), grads_for_step)
    return params_of(model), opt.state_dict()


def _rank_run() -> dict:
    rank = dist.get_rank()

    def local_random(model, step):
        random_grads(model, step, rank)

    model = tiny_model()
    opt = build_golf_optimizer(model, optimizer_config())
    train(model, opt, range(SNAPSHOT_AT), local_random)
    snapshot = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(model, opt, range(SNAPSHOT_AT, STEPS), local_random)
    result = {"params": params_of(model), "state": opt.state_dict()}

    model.load_state_dict(snapshot[0])
    opt.load_state_dict(snapshot[1])
    train(model, opt, range(SNAPSHOT_AT, STEPS), local_random)
    result["replayed"] = params_of(model)

    result["exact"], result["exact_state"] = run(lambda model, step: integer_grads(model, step, rank),
                                                 grad_clip_norm=0.0)
    result["unsynced"], _ = run(local_random, distributed=False)
    return result


def averaged(grads_for_rank):
    """A gradient function that sets the fp32 mean of every rank's gradients."""
    def set_mean(model, step):
        per_rank = []
        for rank in range(WORLD_SIZE):
            grads_for_rank(model, step, rank)
            per_rank.append([p.grad for p in model.parameters()])
        for p, grads in zip(model.parameters(), zip(*per_rank, strict=True), strict=True):
            p.grad = torch.stack(grads).mean(0)
    return set_mean


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    return run_on_ranks(_rank_run, WORLD_SIZE, tmp_path_factory.mktemp("gloo"), threads=None)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sharded_step_matches_single_process_on_averaged_gradients(rank_results):
    reference, reference_state = run(averaged(random_grads))
    rank0, rank1 = rank_results
    for name, value in reference.items():
        assert torch.equal(rank0["params"][name], rank1["params"][name]), f"ranks diverged on {name}"
        atol = BF16_BANK_ATOL if name in BANK_NAMES else REPLICATED_ATOL
        torch.testing.assert_close(rank0["params"][name], value, atol=atol, rtol=0, msg=name)
        assert not torch.equal(value, tiny_model().get_parameter(name)), f"{name} never moved"
    # the gathered momentum is the whole bank, like the single-process one, within bf16 rounding
    for index, bank in enumerate(BANK_NAMES):
        sharded = rank0["state"]["state"][index]["momentum_buffer"]
        expected = reference_state["state"][index]["momentum_buffer"]
        assert sharded.shape == expected.shape == reference[bank].shape
        torch.testing.assert_close(sharded.float(), expected.float(), atol=2e-3, rtol=2**-6)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sharded_step_is_exact_when_averaging_is_exact(rank_results):
    """Gradients whose bf16 average is exact, no clip: sharding itself must not change one bit."""
    reference, reference_state = run(averaged(integer_grads), grad_clip_norm=0.0)
    for result in rank_results:
        for name, value in reference.items():
            assert torch.equal(result["exact"][name], value), name
        for index, state in reference_state["state"].items():
            for key, value in state.items():
                assert torch.equal(result["exact_state"]["state"][index][key], value), (index, key)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sharded_state_dict_round_trip_replays_bit_identically(rank_results):
    for result in rank_results:
        for name, value in result["params"].items():
            assert torch.equal(result["replayed"][name], value), name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_distributed_false_leaves_each_rank_on_its_own_gradients(rank_results):
    for rank, result in enumerate(rank_results):
        own, _ = run(lambda model, step, rank=rank: random_grads(model, step, rank))
        for name, value in own.items():
            assert torch.equal(result["unsynced"][name], value), name
    assert not torch.equal(rank_results[0]["unsynced"]["qo_bank"], rank_results[1]["unsynced"]["qo_bank"])
