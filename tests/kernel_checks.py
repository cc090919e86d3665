"""What the Triton kernel tests share: a check script run through Triton's interpreter on the CPU, and a kernel
compared with its eager reference, gradients included, eager and compiled."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]



def interpreter_only(test: Callable) -> Callable:
    """Skip `test` unless Triton's interpreter can run it: Triton installed, and no GPU (there the CUDA tests run the
    kernels themselves; Triton 3.6's interpreter fails on a GPU box, 3.9's passes). CI installs no Triton, so these
    run where a developer has it (bench/NOTES.md: `pip install --target` and PYTHONPATH); under Triton 3.6 the fused
    cross-entropy's check fails on the CPU too (its `range` over a scalar argument), the q/k and XSA checks pass."""
    test = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only coverage: on a GPU the CUDA tests run "
                              "the kernels")(test)
    return pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                              reason="Triton's interpreter needs Triton installed")(test)


def run_interpreted(code: str, timeout: int = 300) -> None:
    """Run `code` in a subprocess with TRITON_INTERPRET=1 (read at import) and no GPU; it must print "ok"."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def assert_kernel_matches(kernel: Callable, reference: Callable, args: tuple, inputs: tuple[torch.Tensor, ...],
                          weights: torch.Tensor, **tolerance) -> None:
    """`kernel(*args)`, eager and compiled with `fullgraph=True`, equals `reference(*args)` in value and dtype, and
    so do the gradients of `(output * weights).sum()` with respect to `inputs`."""
    for fn in (kernel, torch.compile(kernel, fullgraph=True)):
        out, ref = fn(*args), reference(*args)
        assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
        torch.testing.assert_close(out.float(), ref.float(), **tolerance)
        got = torch.autograd.grad((out.float() * weights).sum(), inputs)
        want = torch.autograd.grad((ref.float() * weights).sum(), inputs)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a.float(), b.float(), **tolerance)
