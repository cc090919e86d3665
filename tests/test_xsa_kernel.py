"""The fused XSA kernel: output and gradients equal `model.remove_value_direction`, on CPU through Triton's
interpreter (a subprocess: TRITON_INTERPRET is read at import) and on CUDA at the record's sizes."""

from __future__ import annotations

import pytest
import torch

from lit_golf.kernels.xsa import fused_remove_value_direction, xsa_available
from lit_golf.model import remove_value_direction
from tests.kernel_checks import assert_kernel_matches, interpreter_only, run_interpreted


def reference(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The model's XSA in fp32, rounded to y's dtype."""
    return remove_value_direction(y.float(), v.float()).to(y.dtype)


INTERPRETED_CHECK = """
import torch
from lit_golf.kernels.xsa import fused_remove_value_direction
from tests.kernel_checks import assert_kernel_matches
from tests.test_xsa_kernel import reference
gen = torch.Generator().manual_seed(0)
# head_dim 12 (a masked block of 16), 37 x 4 rows (partial blocks of 16), bf16, one KV head per query head
cases = ((2, 5, 4, 2, 12, torch.float32), (1, 37, 8, 4, 64, torch.float32), (2, 9, 8, 4, 64, torch.bfloat16),
         (1, 20, 4, 4, 64, torch.float32))
for b, t, h, kv, d, dtype in cases:
    y = torch.randn(b, t, h, d, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(b, t, kv, d, generator=gen)
    v[0, 0] = 0  # F.normalize clamps a zero norm: the gradient takes the clamped branch
    v = v.to(dtype).requires_grad_()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    assert_kernel_matches(fused_remove_value_direction, reference, (y, v), (y, v),
                          torch.randn(b, t, h, d, generator=gen), **tol)
print("ok")
"""


@interpreter_only
def test_interpreted_kernels_match_remove_value_direction_and_its_gradients_on_cpu():
    run_interpreted(INTERPRETED_CHECK)


@pytest.mark.parametrize("y_shape, v_shape", [
    ((2, 5, 6, 8), (2, 5, 4, 8)),   # heads not a multiple of the KV heads
    ((2, 5, 6, 8), (2, 5, 2, 8)),   # a group of 3: not a power of two
    ((2, 5, 4, 8), (2, 6, 2, 8)),   # other positions
    ((10, 4, 8), (10, 2, 8)),       # no batch dimension
])
def test_wrong_shapes_are_refused_before_any_kernel(y_shape, v_shape):
    with pytest.raises(ValueError, match="fused_remove_value_direction"):
        fused_remove_value_direction(torch.randn(y_shape), torch.randn(v_shape))


def test_cpu_tensors_outside_the_interpreter_fail_with_one_line(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"needs Triton and CUDA tensors \(got cpu\); use model.remove_value_direction"):
        fused_remove_value_direction(torch.randn(2, 5, 4, 8), torch.randn(2, 5, 2, 8))


@pytest.mark.skipif(not xsa_available(), reason="the fused XSA kernel needs CUDA and Triton")
def test_cuda_kernel_matches_remove_value_direction_at_the_record_sizes():
    gen = torch.Generator(device="cuda").manual_seed(0)
    y = torch.randn(4, 2048, 8, 64, device="cuda", generator=gen).bfloat16().requires_grad_()
    v = torch.randn(4, 2048, 4, 64, device="cuda", generator=gen).bfloat16().requires_grad_()
    assert_kernel_matches(fused_remove_value_direction, reference, (y, v), (y, v),
                          torch.randn(y.shape, device="cuda", generator=gen), atol=3e-2, rtol=2e-2)
