"""Attention backends agree with the explicit fp32 reference; selection fails loudly and clearly."""

from __future__ import annotations

import pytest
import torch

from lit_golf.attention import (
    BACKEND_ORDER,
    AttentionBackendError,
    attend,
    available_backends,
    causal_mask,
    document_ids,
    select_backend,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_qkv(batch: int, seq_len: int, heads: int = 8, kv_heads: int = 2, head_dim: int = 16, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, seq_len, heads, head_dim, generator=gen)
    k = torch.randn(batch, seq_len, kv_heads, head_dim, generator=gen)
    v = torch.randn(batch, seq_len, kv_heads, head_dim, generator=gen)
    return (t.to(DEVICE, dtype) for t in (q, k, v))


def packed_boundaries(lengths: list[int], pad_to: int) -> torch.Tensor:
    """cu_seqlens of documents with `lengths`, padded with the total length like the data pipeline does."""
    ends = torch.tensor([0, *lengths]).cumsum(0)
    padding = torch.full((pad_to - len(ends),), int(ends[-1]))
    return torch.cat([ends, padding]).to(DEVICE, torch.int32)


def test_document_ids_ignore_trailing_padding():
    cu = torch.tensor([0, 3, 5, 9, 9, 9], dtype=torch.int32)
    assert document_ids(cu, 9).tolist() == [1, 1, 1, 2, 2, 3, 3, 3, 3]


def test_causal_mask_blocks_other_documents_and_the_future():
    mask = causal_mask(5, torch.device("cpu"), torch.tensor([0, 2, 5, 5], dtype=torch.int32))
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


def tolerance(name: str) -> float:
    return 1e-5 if name in ("sdpa", "pure") else 2e-2  # flash kernels run in bf16


@pytest.mark.parametrize("name", BACKEND_ORDER)
def test_backend_matches_pure_on_packed_documents(name):
    if name not in available_backends(DEVICE):
        pytest.skip(f"attention backend {name} is not available on {DEVICE}")
    dtype = torch.float32 if name in ("sdpa", "pure") else torch.bfloat16
    q, k, v = random_qkv(1, 96, dtype=dtype)
    cu = packed_boundaries([1, 17, 40, 5, 33], pad_to=10)
    expected = attend(q, k, v, cu_seqlens=cu, max_seqlen=40, backend="pure")
    got = attend(q, k, v, cu_seqlens=cu, max_seqlen=40, backend=select_backend(name, DEVICE))
    assert got.shape == q.shape and got.dtype == q.dtype
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance(name), rtol=tolerance(name))


@pytest.mark.parametrize("name", BACKEND_ORDER)
def test_backend_matches_pure_on_dense_rows(name):
    if name not in available_backends(DEVICE):
        pytest.skip(f"attention backend {name} is not available on {DEVICE}")
    dtype = torch.float32 if name in ("sdpa", "pure") else torch.bfloat16
    q, k, v = random_qkv(3, 24, dtype=dtype)
    expected = attend(q, k, v, backend="pure")
    got = attend(q, k, v, backend=select_backend(name, DEVICE))
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance(name), rtol=tolerance(name))


def test_pure_reference_is_plain_causal_softmax_per_document():
    """A packed document attends exactly like the same document alone in its own row."""
    q, k, v = random_qkv(1, 12)
    cu = packed_boundaries([5, 7], pad_to=4)
    packed = attend(q, k, v, cu_seqlens=cu, backend="pure")
    alone = attend(q[:, 5:], k[:, 5:], v[:, 5:], backend="pure")
    torch.testing.assert_close(packed[:, 5:], alone)


def test_unknown_backend_names_the_choices():
    with pytest.raises(AttentionBackendError, match=r"unknown attention backend 'flash'.*'sdpa'"):
        select_backend("flash", "cpu")


def test_cuda_backend_on_cpu_lists_available_ones():
    with pytest.raises(AttentionBackendError) as info:
        select_backend("fa3", "cpu")
    message = str(info.value)
    assert "\n" not in message and "needs CUDA" in message and "'sdpa'" in message and "'pure'" in message


def test_auto_on_cpu_picks_sdpa():
    assert select_backend("auto", "cpu").name == "sdpa"


def test_packed_input_must_be_one_row():
    q, k, v = random_qkv(2, 8)
    with pytest.raises(ValueError, match="batch 2"):
        attend(q, k, v, cu_seqlens=packed_boundaries([8], pad_to=3), backend="pure")


def test_varlen_custom_op_kernel_matches_pure_and_compiles_fullgraph():
    """The custom-op wrapper that FA4 runs behind carries output, LSE and gradients through autograd and
    through `torch.compile(fullgraph=True)`. The kernel inside is a pure-PyTorch one here, so it runs on CPU."""
    from lit_golf.attention import AttentionBackend, varlen_custom_op_kernel

    def scores_of(q, k, cu_seqlens):
        groups = q.shape[1] // k.shape[1]
        kf = k.float().transpose(0, 1).repeat_interleave(groups, dim=0)
        scores = (q.float().transpose(0, 1) @ kf.transpose(-1, -2)) / q.shape[-1] ** 0.5
        return scores.masked_fill(~causal_mask(q.shape[0], q.device, cu_seqlens), float("-inf"))

    def forward(q, k, v, cu_seqlens, max_seqlen):
        scores = scores_of(q, k, cu_seqlens)
        lse = scores.logsumexp(-1)  # [H, T], as FA4 returns it
        vf = v.float().transpose(0, 1).repeat_interleave(q.shape[1] // k.shape[1], dim=0)
        return ((scores - lse[..., None]).exp() @ vf).transpose(0, 1).to(q.dtype), lse

    def backward(grad, q, k, v, out, lse, cu_seqlens, max_seqlen):
        """FlashAttention's backward from the saved output and LSE (custom ops run without autograd)."""
        groups, scale = q.shape[1] // k.shape[1], q.shape[-1] ** -0.5
        p = (scores_of(q, k, cu_seqlens) - lse[..., None]).exp()  # [H, T, T]
        do, o = grad.float().transpose(0, 1), out.float().transpose(0, 1)
        vf = v.float().transpose(0, 1).repeat_interleave(groups, dim=0)
        kf = k.float().transpose(0, 1).repeat_interleave(groups, dim=0)
        ds = p * (do @ vf.transpose(-1, -2) - (do * o).sum(-1, keepdim=True))
        dq = (ds @ kf) * scale
        dk = ((ds.transpose(-1, -2) @ q.float().transpose(0, 1)) * scale).unflatten(0, (-1, groups)).sum(1)
        dv = (p.transpose(-1, -2) @ do).unflatten(0, (-1, groups)).sum(1)
        return tuple(t.transpose(0, 1).to(q.dtype) for t in (dq, dk, dv))

    backend = AttentionBackend("reference_ops", varlen_custom_op_kernel("reference_ops", forward, backward), False)
    cu = packed_boundaries([1, 17, 40, 5, 33], pad_to=10)

    def run(fn):
        q, k, v = (t.requires_grad_() for t in random_qkv(1, 96))
        out = fn(q, k, v)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
        return (out, *torch.autograd.grad(out, (q, k, v), grad))

    want = run(lambda q, k, v: attend(q, k, v, cu_seqlens=cu, max_seqlen=40, backend="pure"))
    eager = run(lambda q, k, v: backend(q, k, v, cu_seqlens=cu, max_seqlen=40))
    compiled = run(torch.compile(lambda q, k, v: backend(q, k, v, cu_seqlens=cu, max_seqlen=40),
                                 fullgraph=True, backend="aot_eager"))
    for got in (eager, compiled):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    # dense rows (test-time training) run as equal-length documents of one packed row
    q, k, v = (t.requires_grad_() for t in random_qkv(3, 24))
    for got, w in zip((backend(q, k, v), *[torch.autograd.grad(backend(q, k, v).sum(), t) for t in (q, k, v)]),
                      (attend(q, k, v, backend="pure"),
                       *[torch.autograd.grad(attend(q, k, v, backend="pure").sum(), t) for t in (q, k, v)]),
                      strict=True):
        torch.testing.assert_close(got, w, atol=1e-5, rtol=1e-5)
