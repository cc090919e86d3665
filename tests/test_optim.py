"""GolfOptimizer and its pieces against hand-written references, on tiny CPU tensors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lit_golf.optim import (
    NS_SCHEDULES,
    GolfOptimizer,
    ModelContractError,
    OptimConfig,
    ParamGroupError,
    UnknownScheduleError,
    build_golf_optimizer,
    get_schedule,
    muon_momentum,
    orthogonalize,
    register_schedule,
)
from lit_golf.optim.golf_optimizer import (
    apply_decoupled_update,
    muon_shape_scale,
    nesterov_momentum,
    normalize_rows,
)
from lit_golf.optim.newton_schulz import NewtonSchulzSchedule

MUON5 = NS_SCHEDULES["muon5"]
# Two correct runs whose bank gradients differ by one bf16 rounding (another device, another
# reduction order) drift apart visibly on these tiny banks: bf16 Newton-Schulz turns a 2**-8 input
# difference into a few percent of the update, times lr 0.026, over a few steps.
BF16_BANK_ATOL = 1e-2


class TinyGPT(nn.Module):
    """Just the parameter names the optimizer contract relies on, plus a few 'scalar' parameters."""

    def __init__(self, layers: int = 3, dim: int = 8, kv_dim: int = 4, hidden: int = 16, vocab: int = 13) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)
        self.qo_bank = nn.Parameter(0.1 * torch.randn(2 * layers, dim, dim))
        self.kv_bank = nn.Parameter(0.1 * torch.randn(2 * layers, kv_dim, dim))
        self.mlp_up_bank = nn.Parameter(0.1 * torch.randn(layers, hidden, dim))
        self.mlp_down_bank = nn.Parameter(0.1 * torch.randn(layers, dim, hidden))
        self.attn_scales = nn.Parameter(torch.ones(layers, dim))
        self.skip_weights = nn.Parameter(torch.full((2, dim), 0.5))
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied, as in the GPT


def tiny_model(seed: int = 0, **kwargs) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(**kwargs)


def set_grads(model: nn.Module, seed: int, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = scale * torch.randn(p.shape, generator=gen)


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def no_clip(**overrides) -> OptimConfig:
    return OptimConfig(grad_clip_norm=0.0, **overrides)


# ---------------------------------------------------------------- Newton-Schulz
def explicit_newton_schulz(matrix: torch.Tensor, schedule: NewtonSchulzSchedule) -> torch.Tensor:
    """One matrix, float64, the polynomial written out term by term."""
    x = matrix.double()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (schedule.safety_factor * torch.linalg.matrix_norm(x) + 1e-7)
    for a, b, c in schedule.coefficients:
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(3, 4, 8), (2, 16, 8), (5, 8, 8)])
def test_orthogonalize_matches_explicit_loop_per_matrix(shape):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = orthogonalize(G, MUON5)
    assert out.dtype == torch.bfloat16 and out.shape == G.shape
    for i in range(shape[0]):
        expected = explicit_newton_schulz(G[i], MUON5)
        torch.testing.assert_close(out[i].double(), expected, atol=0.06, rtol=0.0)


def test_orthogonalize_pushes_singular_values_towards_one():
    G = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(2))
    singular = torch.linalg.svdvals(orthogonalize(G, MUON5).float())
    # muon5 deliberately trades exactness for speed: it lands every singular value in roughly [0.7, 1.2]
    assert singular.min() > 0.5 and singular.max() < 1.3
    raw = torch.linalg.svdvals(G)
    assert (raw.max(-1).values / raw.min(-1).values).min() > 2.0  # the input really was far from orthogonal


def test_orthogonalize_applies_per_step_triples_in_order():
    G = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(3))
    X = G.bfloat16() / (G.bfloat16().norm(dim=(-2, -1), keepdim=True) + 1e-7)
    # (1,0,0) then (2,0,0) is a pure scaling by 2; (0,1,0) is X X^T X: both checkable exactly.
    torch.testing.assert_close(orthogonalize(G, NewtonSchulzSchedule(((1.0, 0.0, 0.0), (2.0, 0.0, 0.0)))), 2 * X)
    torch.testing.assert_close(orthogonalize(G, NewtonSchulzSchedule(((0.0, 1.0, 0.0),))), (X @ X.mT) @ X)


def test_orthogonalize_divides_by_the_safety_factor_times_the_norm():
    G = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(3))
    norm = G.bfloat16().norm(dim=(-2, -1), keepdim=True)
    identity = ((1.0, 0.0, 0.0),)
    torch.testing.assert_close(orthogonalize(G, NewtonSchulzSchedule(identity, 1.02)),
                               G.bfloat16() / (norm * 1.02 + 1e-7))


def orthogonality_error(X: torch.Tensor) -> tuple[float, float]:
    """Worst matrix's (max |sigma - 1|, RMS of X X^T - I over the short side), in fp32."""
    X = X.float()
    if X.size(-2) > X.size(-1):
        X = X.mT
    sigma_gap = (torch.linalg.svdvals(X) - 1).abs().amax()
    gram_gap = (X @ X.mT - torch.eye(X.size(-2))).norm(dim=(-2, -1)) / X.size(-2) ** 0.5
    return sigma_gap.item(), gram_gap.amax().item()


# the record's banks (qo, kv, mlp up, mlp down: [n, rows, cols]) scaled down 8-16x, and a ragged one
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("shape", [(4, 64, 64), (4, 32, 64), (2, 128, 32), (2, 32, 128), (3, 24, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_polar_express_gets_closer_to_orthogonal_than_muon5_in_five_steps(shape, dtype):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).to(dtype)
    assert len(NS_SCHEDULES["polar_express"].coefficients) == len(MUON5.coefficients) == 5
    pe_sigma, pe_gram = orthogonality_error(orthogonalize(G, NS_SCHEDULES["polar_express"]))
    ns_sigma, ns_gram = orthogonality_error(orthogonalize(G, MUON5))
    assert pe_gram < 0.7 * ns_gram
    if shape[-1] != shape[-2]:  # square Gaussian matrices have singular values near 0 that neither reaches
        assert pe_sigma < 0.7 * ns_sigma


def test_orthogonalize_transposes_tall_matrices_consistently():
    G = torch.randn(3, 12, 5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(orthogonalize(G, MUON5), orthogonalize(G.mT, MUON5).mT)


def test_orthogonalize_of_zero_stays_zero():
    assert torch.count_nonzero(orthogonalize(torch.zeros(2, 4, 8), MUON5)) == 0


@pytest.fixture
def scratch_schedule():
    yield "test_scratch"
    NS_SCHEDULES.pop("test_scratch", None)


def test_register_schedule_selects_by_name(scratch_schedule):
    triples = [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5)]
    register_schedule(scratch_schedule, triples)
    assert get_schedule(scratch_schedule) == NewtonSchulzSchedule(tuple(tuple(t) for t in triples), 1.0)
    assert OptimConfig(muon_backend=scratch_schedule).muon_backend == scratch_schedule
    register_schedule(scratch_schedule, triples)  # the same schedule again: a no-op
    with pytest.raises(ValueError, match="already registered with other coefficients; .* replace=True"):
        register_schedule(scratch_schedule, triples, safety_factor=1.01)
    register_schedule(scratch_schedule, triples[:1], replace=True)
    assert len(get_schedule(scratch_schedule).coefficients) == 1


def test_yaml_selects_polar_express_by_name_or_inline_triples(scratch_schedule):
    # the 04-23 record's normalization (plain Frobenius) by name; modded-nanogpt's 2% margin by its own name
    assert get_schedule(OptimConfig(muon_backend="polar_express").muon_backend).safety_factor == 1.0
    safe = get_schedule(OptimConfig(muon_backend="polar_express_safe").muon_backend)
    assert safe == NewtonSchulzSchedule(NS_SCHEDULES["polar_express"].coefficients, 1.02)
    triples = [list(t) for t in NS_SCHEDULES["polar_express"].coefficients]
    cfg = OptimConfig(muon_backend=scratch_schedule, ns_coefficients=triples, ns_safety_factor=1.02)
    assert get_schedule(cfg.muon_backend) == safe
    OptimConfig(muon_backend=scratch_schedule, ns_coefficients=triples, ns_safety_factor=1.02)  # again (resume): fine
    opt = build_golf_optimizer(tiny_model(), cfg)
    assert opt.param_groups[0]["ns_schedule"] == scratch_schedule


@pytest.mark.parametrize(("overrides", "message"), [
    ({"ns_coefficients": [[1.0, 0.0, 0.0]]}, r"muon_backend='muon5' already names another .* set muon_backend to a new"),
    ({"ns_safety_factor": 1.02}, "ns_safety_factor=1.02 applies only to inline ns_coefficients"),
    ({"muon_backend": "test_scratch", "ns_coefficients": [[1.0, 0.0, 0.0]], "ns_safety_factor": 0.5},
     r"safety_factor=0.5 must be a finite number >= 1"),
    ({"muon_backend": "test_scratch", "ns_coefficients": [[1.0, 0.0]]}, "three finite numbers"),
])
def test_bad_inline_schedules_fail_with_one_line(scratch_schedule, overrides, message):
    with pytest.raises(ValueError, match=f"invalid OptimConfig: .*{message}"):
        OptimConfig(**overrides)
    assert scratch_schedule not in NS_SCHEDULES and NS_SCHEDULES["muon5"] == MUON5


def test_register_schedule_rejects_bad_triples(scratch_schedule):
    with pytest.raises(ValueError, match="iteration 1 has .* three finite numbers"):
        register_schedule(scratch_schedule, [(1.0, 0.0, 0.0), (1.0, 2.0)])
    with pytest.raises(ValueError, match="has no iterations"):
        register_schedule(scratch_schedule, [])
    assert scratch_schedule not in NS_SCHEDULES


def test_unknown_schedule_names_the_known_ones():
    with pytest.raises(UnknownScheduleError, match=r"unknown Newton-Schulz schedule 'nope' \(known: .*muon5"):
        get_schedule("nope")
    with pytest.raises(UnknownScheduleError, match="register_schedule"):
        OptimConfig(muon_backend="nope")


# ---------------------------------------------------------------- Muon pieces
@pytest.mark.parametrize("nesterov", [True, False])
def test_nesterov_momentum_matches_hand_reference(nesterov):
    gen = torch.Generator().manual_seed(5)
    buffer = torch.zeros(2, 3, 4)
    expected_buffer = torch.zeros(2, 3, 4)
    for _ in range(3):
        grad = torch.randn(2, 3, 4, generator=gen)
        direction = nesterov_momentum(grad, buffer, 0.9, nesterov)
        expected_buffer = 0.9 * expected_buffer + grad
        expected = grad + 0.9 * expected_buffer if nesterov else expected_buffer
        torch.testing.assert_close(buffer, expected_buffer)
        torch.testing.assert_close(direction, expected)


def test_normalize_rows_gives_unit_rows_and_keeps_zero_rows():
    update = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(6))
    update[1, 2] = 0.0
    out = normalize_rows(update)
    norms = out.norm(dim=-1)
    torch.testing.assert_close(norms[0], torch.ones(3))
    torch.testing.assert_close(norms[1, :2], torch.ones(2))
    assert torch.count_nonzero(out[1, 2]) == 0
    torch.testing.assert_close(out[0, 1], update[0, 1] / update[0, 1].norm())


def test_shape_scale_only_boosts_tall_matrices():
    assert muon_shape_scale((3, 16, 8)) == pytest.approx(math.sqrt(2.0))
    assert muon_shape_scale((3, 8, 16)) == 1.0
    assert muon_shape_scale((3, 8, 8)) == 1.0


def test_decoupled_weight_decay_and_update():
    param = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(7))
    update = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(8)).bfloat16()
    expected = param * (1 - 0.1 * 0.5) - 0.1 * 1.5 * update.float()
    apply_decoupled_update(param, update, lr=0.1, weight_decay=0.5, scale=1.5)
    torch.testing.assert_close(param, expected)


@pytest.mark.parametrize("backend", ["muon5", "polar_express"])
def test_muon_steps_match_hand_composed_reference(backend):
    model = tiny_model()
    opt = build_golf_optimizer(model, no_clip(muon_backend=backend))
    group = opt.param_groups[0]
    assert group["kind"] == "muon"
    bank = model.mlp_up_bank  # tall: exercises the transpose and the shape scale
    expected = bank.detach().clone()
    buffer = torch.zeros_like(bank, dtype=torch.bfloat16)
    for step in range(3):
        set_grads(model, seed=10 + step)
        grad = bank.grad.bfloat16()
        buffer = group["momentum"] * buffer + grad
        # one rounding, as the optimizer does: bf16 Newton-Schulz amplifies a second rounding visibly
        direction = grad.add(buffer, alpha=group["momentum"])
        direction = direction / direction.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).bfloat16()
        update = orthogonalize(direction, NS_SCHEDULES[backend]).float()
        expected = expected * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * math.sqrt(2.0) * update
        opt.step()
        torch.testing.assert_close(bank.detach(), expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- AdamW, clipping, schedules
def test_adamw_groups_match_torch_adamw():
    model, reference = tiny_model(), tiny_model()
    opt = build_golf_optimizer(model, no_clip())
    cfg = OptimConfig()
    torch_opt = torch.optim.AdamW(
        [{"params": [reference.tok_emb.weight], "lr": cfg.embed_lr, "weight_decay": cfg.embed_weight_decay},
         {"params": [reference.attn_scales, reference.skip_weights], "lr": cfg.scalar_lr,
          "weight_decay": cfg.scalar_weight_decay}],
        betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, foreach=True,
    )
    for step in range(4):
        set_grads(model, seed=20 + step)
        set_grads(reference, seed=20 + step)
        multiplier = 1.0 - 0.2 * step
        opt.set_lr_multiplier(multiplier)
        for group, base in zip(torch_opt.param_groups, (cfg.embed_lr, cfg.scalar_lr), strict=True):
            group["lr"] = base * multiplier
        opt.step()
        torch_opt.step()
    for name in ("tok_emb.weight", "attn_scales", "skip_weights"):
        torch.testing.assert_close(model.get_parameter(name), reference.get_parameter(name), atol=1e-7, rtol=0)


def bf16_exact_grads(model: nn.Module, seed: int, scale: float) -> None:
    """Gradients already representable in bf16, so the banks' bf16 copy loses nothing."""
    set_grads(model, seed, scale)
    for p in model.parameters():
        p.grad = p.grad.bfloat16().float()


@pytest.mark.parametrize("scale, clipped", [(1.0, True), (1e-3, False)])
def test_global_clip_matches_clip_grad_norm(scale, clipped):
    model, reference = tiny_model(), tiny_model()
    cfg = OptimConfig()
    opt = build_golf_optimizer(model, cfg)
    bf16_exact_grads(model, seed=30, scale=scale)
    bf16_exact_grads(reference, seed=30, scale=scale)
    total = torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.grad_clip_norm)
    assert (total > cfg.grad_clip_norm) == clipped
    opt.step()
    torch.testing.assert_close(opt.last_grad_norm, total, rtol=1e-5, atol=0)
    # replicated gradients are clipped in place; the bank's clipped gradient is what momentum received
    for name in ("tok_emb.weight", "attn_scales", "skip_weights"):
        torch.testing.assert_close(model.get_parameter(name).grad, reference.get_parameter(name).grad)
    momentum = opt.state[model.qo_bank]["momentum_buffer"]
    torch.testing.assert_close(momentum, reference.qo_bank.grad.bfloat16(), atol=0, rtol=2**-7)


def test_momentum_warmup_schedule():
    cfg = OptimConfig()
    assert muon_momentum(0, cfg) == pytest.approx(0.92)
    assert muon_momentum(750, cfg) == pytest.approx(0.945)
    assert muon_momentum(1500, cfg) == pytest.approx(0.97)
    assert muon_momentum(10_000, cfg) == pytest.approx(0.97)
    assert muon_momentum(0, OptimConfig(muon_momentum_warmup_steps=0)) == 0.97


def test_set_muon_momentum_only_touches_muon_groups():
    opt = build_golf_optimizer(tiny_model())
    opt.set_muon_momentum(0.5)
    assert [g.get("momentum") for g in opt.param_groups] == [0.5, None, None]


def test_lr_multiplier_scales_from_base_lr_and_steps_like_a_smaller_lr():
    scaled_model, small_model = tiny_model(), tiny_model()
    scaled = build_golf_optimizer(scaled_model, no_clip())
    small = build_golf_optimizer(small_model, no_clip(matrix_lr=0.013, embed_lr=0.015, scalar_lr=0.01))
    scaled.set_lr_multiplier(0.5)
    scaled.set_lr_multiplier(0.5)  # idempotent: always relative to base_lr
    assert [g["lr"] for g in scaled.param_groups] == pytest.approx([0.013, 0.015, 0.01])
    assert [g["base_lr"] for g in scaled.param_groups] == pytest.approx([0.026, 0.03, 0.02])
    for step in range(2):
        set_grads(scaled_model, seed=40 + step)
        set_grads(small_model, seed=40 + step)
        scaled.step()
        small.step()
    for name, value in params_of(scaled_model).items():
        torch.testing.assert_close(value, small_model.get_parameter(name), atol=1e-7, rtol=0)


# ---------------------------------------------------------------- builder and validation
def test_builder_groups_parameters_by_contract():
    model = tiny_model()
    opt = build_golf_optimizer(model)
    banks, embedding, scalars = opt.param_groups
    assert [p is b for p, b in zip(banks["params"], (model.qo_bank, model.kv_bank, model.mlp_up_bank,
                                                     model.mlp_down_bank), strict=True)] == [True] * 4
    assert banks["kind"] == "muon" and banks["lr"] == 0.026 and banks["weight_decay"] == 0.095
    assert banks["momentum"] == pytest.approx(0.92) and banks["row_normalize"] and banks["nesterov"]
    assert banks["ns_schedule"] == "muon5"
    assert embedding["kind"] == "adamw" and embedding["params"] == [model.tok_emb.weight]
    assert (embedding["lr"], embedding["weight_decay"], embedding["betas"], embedding["eps"]) == (
        0.03, 0.085, (0.9, 0.95), 1e-8)
    assert {id(p) for p in scalars["params"]} == {id(model.attn_scales), id(model.skip_weights)}
    assert (scalars["lr"], scalars["weight_decay"]) == (0.02, 0.02)
    assert opt.grad_clip_norm == 0.3


def test_builder_names_the_missing_attribute():
    model = tiny_model()
    del model.kv_bank
    with pytest.raises(ModelContractError, match=r"TinyGPT\.kv_bank must be a 3-D nn.Parameter weight bank, found nothing"):
        build_golf_optimizer(model)


def test_param_group_validation():
    bank = nn.Parameter(torch.zeros(2, 3, 4))
    with pytest.raises(ParamGroupError, match="kind='sgd' must be 'muon' or 'adamw'"):
        GolfOptimizer([{"params": [bank], "kind": "sgd", "lr": 0.1}])
    with pytest.raises(ParamGroupError, match="missing 'lr'"):
        GolfOptimizer([{"params": [bank], "kind": "muon"}])
    with pytest.raises(ParamGroupError, match=r"muon takes 3-D banks .* shape \(3, 4\); put it in an adamw group"):
        GolfOptimizer([{"name": "flat", "params": [nn.Parameter(torch.zeros(3, 4))], "kind": "muon", "lr": 0.1}])
    with pytest.raises(ValueError, match="grad_clip_norm=-1"):
        GolfOptimizer([{"params": [bank], "kind": "muon", "lr": 0.1}], grad_clip_norm=-1)
    with pytest.raises(ValueError, match=r"invalid OptimConfig: muon_momentum=1.0 must lie in \[0, 1\)"):
        OptimConfig(muon_momentum=1.0)


def test_params_without_grad_are_left_alone():
    model = tiny_model()
    opt = build_golf_optimizer(model)
    set_grads(model, seed=50)
    model.kv_bank.grad = None
    model.skip_weights.grad = None
    before = params_of(model)
    opt.step()
    assert torch.equal(model.kv_bank, before["kv_bank"]) and torch.equal(model.skip_weights, before["skip_weights"])
    assert not torch.equal(model.qo_bank, before["qo_bank"])
    assert model.kv_bank not in opt.state


# ---------------------------------------------------------------- checkpoints
def run_steps(model: nn.Module, opt: GolfOptimizer, seeds, lr_multiplier: float = 1.0) -> None:
    cfg = OptimConfig()
    for seed in seeds:
        set_grads(model, seed)
        opt.set_lr_multiplier(lr_multiplier)
        opt.set_muon_momentum(muon_momentum(seed, cfg))
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("snapshot_after", [0, 2])
def test_state_dict_round_trip_continues_bit_identically(snapshot_after):
    fresh_model = tiny_model()
    fresh = build_golf_optimizer(fresh_model)
    run_steps(fresh_model, fresh, seeds=range(5))

    model = tiny_model()
    opt = build_golf_optimizer(model)
    run_steps(model, opt, seeds=range(snapshot_after))
    weights = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(opt.state_dict())
    run_steps(model, opt, seeds=[97, 98, 99], lr_multiplier=3.0)  # a detour the restore must erase
    model.load_state_dict(weights)
    opt.load_state_dict(optimizer_state)
    run_steps(model, opt, seeds=range(snapshot_after, 5))

    for name, value in params_of(fresh_model).items():
        assert torch.equal(model.get_parameter(name), value), name
    assert opt.state[model.qo_bank]["momentum_buffer"].dtype == torch.bfloat16


def test_load_state_dict_rejects_a_momentum_slice():
    model = tiny_model()
    opt = build_golf_optimizer(model)
    run_steps(model, opt, seeds=[0])
    state = copy.deepcopy(opt.state_dict())
    state["state"][0]["momentum_buffer"] = state["state"][0]["momentum_buffer"][:1]
    with pytest.raises(ValueError, match=r"Muon momentum has shape \(1, 8, 8\) but its bank has shape \(6, 8, 8\)"):
        opt.load_state_dict(state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: fused AdamW, compiled Newton-Schulz")
def test_cuda_step_never_syncs_with_the_host_and_matches_cpu():
    cpu_model = tiny_model()
    cpu_opt = build_golf_optimizer(cpu_model)
    cuda_model = tiny_model().cuda()
    cuda_opt = build_golf_optimizer(cuda_model)
    for seed in range(3):  # first steps compile; the check covers steady state
        set_grads(cpu_model, seed)
        for p, q in zip(cuda_model.parameters(), cpu_model.parameters(), strict=True):
            p.grad = q.grad.cuda()
        cpu_opt.step()
        if seed == 2:
            torch.cuda.set_sync_debug_mode("error")
        try:
            cuda_opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for name, value in params_of(cpu_model).items():
        atol = BF16_BANK_ATOL if name.endswith("_bank") else 1e-5
        torch.testing.assert_close(cuda_model.get_parameter(name).cpu(), value, atol=atol, rtol=0, msg=name)
