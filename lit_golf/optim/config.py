"""Optimizer numbers (record values as defaults) and the Muon momentum warm-up they imply.

A plain dataclass so the LightningCLI can expose every field in YAML and the lead can log it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lit_golf.optim.newton_schulz import NS_SCHEDULES, get_schedule, make_schedule, register_schedule


@dataclass
class OptimConfig:
    """Muon for the four weight banks, AdamW for the embedding and the small parameters."""

    # Muon (qo_bank, kv_bank, mlp_up_bank, mlp_down_bank)
    matrix_lr: float = 0.026
    muon_weight_decay: float = 0.095
    muon_momentum: float = 0.97
    muon_momentum_warmup_start: float = 0.92
    muon_momentum_warmup_steps: int = 1500
    muon_nesterov: bool = True
    muon_row_normalize: bool = True
    muon_backend: str = "muon5"
    """Newton-Schulz schedule name ("muon5", "polar_express", ...), or the name given to `ns_coefficients`."""
    ns_coefficients: list[list[float]] | None = None
    """Inline per-iteration ``[a, b, c]`` triples, registered under `muon_backend` (a new name) at validation."""
    ns_safety_factor: float = 1.0
    """Input normalization of `ns_coefficients`: divide by this times the Frobenius norm (>= 1)."""
    # AdamW: tied token embedding
    embed_lr: float = 0.03
    embed_weight_decay: float = 0.085
    # AdamW: gains, mixes, skip weights, lane lambdas
    scalar_lr: float = 0.02
    scalar_weight_decay: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    # whole step
    grad_clip_norm: float = 0.3
    distributed: bool = True
    compile_newton_schulz: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("matrix_lr", "embed_lr", "scalar_lr", "muon_weight_decay", "embed_weight_decay",
                     "scalar_weight_decay", "grad_clip_norm", "muon_momentum_warmup_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("muon_momentum", "muon_momentum_warmup_start", "beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name}={getattr(self, name)} must lie in [0, 1)")
        if self.adam_eps <= 0:
            problems.append(f"adam_eps={self.adam_eps} must be > 0")
        if self.ns_coefficients is None and self.ns_safety_factor != 1.0:
            problems.append(f"ns_safety_factor={self.ns_safety_factor} applies only to inline ns_coefficients; "
                            "a named muon_backend carries its own")
        if problems:
            raise ValueError("invalid OptimConfig: " + "; ".join(problems))
        if self.ns_coefficients is not None:
            self._register_inline_schedule()
        get_schedule(self.muon_backend)

    def _register_inline_schedule(self) -> None:
        """Register `ns_coefficients` under `muon_backend`; the same triples again (resume, DDP) are fine."""
        name = self.muon_backend
        try:
            schedule = make_schedule(name, self.ns_coefficients, self.ns_safety_factor)
        except ValueError as err:
            raise ValueError(f"invalid OptimConfig: ns_coefficients: {err}") from None
        if NS_SCHEDULES.get(name, schedule) != schedule:
            raise ValueError(f"invalid OptimConfig: muon_backend={name!r} already names another Newton-Schulz "
                             "schedule; set muon_backend to a new name for the inline ns_coefficients")
        register_schedule(name, schedule.coefficients, safety_factor=schedule.safety_factor)


def muon_momentum(step: int, cfg: OptimConfig, warmup_steps: int | None = None) -> float:
    """Muon momentum at optimizer step `step`: linear from the warm-up start to the final value.

    Low momentum early lets the first, noisy updates forget quickly; the ramp ends at `warmup_steps`
    (default ``muon_momentum_warmup_steps``; a run of another length passes its rescaled count) and
    stays at ``muon_momentum`` afterwards.
    """
    warmup_steps = cfg.muon_momentum_warmup_steps if warmup_steps is None else warmup_steps
    if warmup_steps <= 0:
        return cfg.muon_momentum
    frac = min(step / warmup_steps, 1.0)
    return (1.0 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum
