"""The fused q/k norm + rotary + gain kernel: output and gradients equal the eager chain, on CPU through Triton's
interpreter (a subprocess: TRITON_INTERPRET is read at import) and on CUDA at the record's sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_golf.kernels.qk_norm_rope import qk_norm_rope, qk_norm_rope_available
from lit_golf.model import apply_rotary, rotary_tables
from tests.kernel_checks import assert_kernel_matches, interpreter_only, run_interpreted

needs_cuda = pytest.mark.skipif(not qk_norm_rope_available(), reason="the fused q/k kernel needs CUDA and Triton")


def eager(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
    """The model's eager chain in fp32 (as autocast runs the norm), rounded to x's dtype."""
    y = apply_rotary(F.rms_norm(x.float(), (x.size(-1),)), cos.float(), sin.float())
    return (y if gain is None else y * gain[:, None]).to(x.dtype)


INTERPRETED_CHECK = """
import torch
from lit_golf.kernels.qk_norm_rope import qk_norm_rope
from lit_golf.model import rotary_tables
from tests.kernel_checks import assert_kernel_matches
from tests.test_qk_norm_rope import eager
gen = torch.Generator().manual_seed(0)
# head_dim 12 (a masked block of 16), 30 rows (one partial block of 32), 70 positions over 2 blocks,
# a rotation over the whole head, and k's case (no gain)
cases = ((2, 5, 3, 12, 4, torch.float32, True), (1, 70, 8, 64, 16, torch.float32, True),
         (2, 9, 4, 64, 16, torch.bfloat16, False), (1, 40, 2, 64, 64, torch.bfloat16, True))
for b, t, h, d, rope, dtype, with_gain in cases:
    x = (3 * torch.randn(b, t, h, d, generator=gen)).to(dtype).requires_grad_()
    cos, sin = rotary_tables(t, rope, 10000.0, torch.device("cpu"), dtype)
    gain = (5 + torch.randn(h, generator=gen)).requires_grad_() if with_gain else None
    # fp32: the same math; bf16: one rounding of each output (values up to ~16 with the gain: ulp 0.0625)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=7e-2, rtol=1e-2)
    assert_kernel_matches(qk_norm_rope, eager, (x, cos, sin, gain), (x,) if gain is None else (x, gain),
                          torch.randn(b, t, h, d, generator=gen), **tol)
print("ok")
"""


@interpreter_only
def test_interpreted_kernels_match_the_eager_chain_and_its_gradients_on_cpu():
    run_interpreted(INTERPRETED_CHECK)


@pytest.mark.parametrize("x_shape, table_shape, gain_shape", [
    ((2, 5, 3, 12), (1, 6, 1, 2), (3,)),   # tables for another number of positions
    ((2, 5, 3, 12), (1, 5, 1, 8), (3,)),   # rope dims 16 > head_dim 12
    ((2, 5, 3, 12), (1, 5, 1, 2), (4,)),   # a gain per head of another head count
    ((10, 3, 12), (1, 10, 1, 2), None),    # x without its batch dimension
])
def test_wrong_shapes_are_refused_before_any_kernel(x_shape, table_shape, gain_shape):
    gain = None if gain_shape is None else torch.ones(gain_shape)
    with pytest.raises(ValueError, match="qk_norm_rope"):
        qk_norm_rope(torch.randn(x_shape), torch.ones(table_shape), torch.zeros(table_shape), gain)


def test_cpu_tensors_outside_the_interpreter_fail_with_one_line(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cos, sin = rotary_tables(5, 4, 10000.0, torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeError, match=r"needs Triton and CUDA tensors \(got cpu\); use the eager path"):
        qk_norm_rope(torch.randn(2, 5, 3, 12), cos, sin, torch.ones(3))


@needs_cuda
@pytest.mark.parametrize("heads, gain", [(8, True), (4, False)])  # the record's q and k
def test_cuda_kernel_matches_the_eager_chain_at_the_record_sizes(heads, gain):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 2048, heads, 64, device="cuda", generator=gen).mul(3).bfloat16().requires_grad_()
    cos, sin = rotary_tables(2048, 16, 10000.0, torch.device("cuda"), torch.bfloat16)
    g = (5 + torch.randn(heads, device="cuda", generator=gen)).requires_grad_() if gain else None
    assert_kernel_matches(qk_norm_rope, eager, (x, cos, sin, g), (x,) if g is None else (x, g),
                          torch.randn(x.shape, device="cuda", generator=gen), atol=7e-2, rtol=2e-2)
