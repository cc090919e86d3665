"""Shared fixtures of the evaluation tests: a tiny GPT, synthetic documents, and a 2-process gloo launcher.

(No tests here; the module is imported by tests/test_eval_*.py.)
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_golf.config import GPTConfig
from lit_golf.data.tokenizer import ByteLUTs
from lit_golf.eval.config import EvalConfig
from lit_golf.model import GPT

VOCAB = 64
BOS = 1


# The suite's toy GPT: the record's structure (U-Net skips, a loop, parallel lanes, XSA) at toy sizes.
# Test files that need other sizes derive from it: `{**TINY_GPT, "model_dim": 64, ...}`.
TINY_GPT = dict(
    vocab_size=VOCAB, num_layers=4, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2, rope_dims=8,
    xsa_last_n=2, parallel_start_layer=3, num_loops=1, loop_start=1, loop_end=2, attention_backend="sdpa",
    fused_mlp=False,
)


def tiny_model(seed: int = 0, looping: bool = True) -> GPT:
    """4 layers (6 executed slots with looping), parallel lanes, XSA, random non-zero weights."""
    torch.manual_seed(seed)
    model = random_matrices(GPT(GPTConfig(**TINY_GPT)), std=0.3)
    model.looping_active = looping
    return model


def random_matrices(model: GPT, std: float) -> GPT:
    """Every matrix of `model` drawn from N(0, std) (the zero-initialised output projections included)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model


def small_gpt(vocab: int) -> GPTConfig:
    """The training and CLI tests' model: the toy structure at dim 64 with XSA everywhere."""
    return GPTConfig(**{**TINY_GPT, "vocab_size": vocab, "model_dim": 64, "num_heads": 4, "num_kv_heads": 2,
                        "mlp_mult": 4.0, "xsa_last_n": 4, "attention_backend": "auto", "fused_mlp": True})


def synthetic_val(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Documents `[BOS, w1..wn]` (words never BOS or 0) of the given lengths, concatenated."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.cat((torch.tensor([BOS]), torch.randint(2, VOCAB, (n,), generator=g))) for n in lengths]
    return torch.cat(docs)


def synthetic_luts(seed: int = 0) -> ByteLUTs:
    """Ids 0 and 1 are boundaries (no bytes); others 1-3 bytes, about a third with a leading space."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, 4, (VOCAB,), generator=g).to(torch.int16)
    base[:2] = 0
    space = torch.rand(VOCAB, generator=g) < 0.35
    space[:2] = False
    return ByteLUTs(base, space, torch.arange(VOCAB) < 2)


def small_eval_config(max_docs: int | None = None, **groups: dict) -> EvalConfig:
    """Record structure at toy scale: chunk 8, context 32, 4 docs per batch, 2 phases over 6 prefix docs.

    `groups` change fields of one group each: `small_eval_config(ttt={"lr": 0.0}, global_sgd={"enabled": False})`.
    """
    values = {
        "plain": dict(seq_len=32, batch_seqs=3),
        "sliding": dict(stride=8),
        "ttt": dict(lora_rank=4, lr=3e-2, chunk_size=8, context_len=32, batch_docs=4, window_bucket=16),
        "global_sgd": dict(prefix_docs=6, num_phases=2, lr=3e-2, chunk_tokens=96, batch_seqs=2),
    }
    for group, changes in groups.items():
        values[group].update(changes)
    return EvalConfig.from_dict({**values, "max_docs": max_docs})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Callable, out_dir: str, args: tuple, threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(fn(*args), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable, world: int, tmp_path: Path, *args, start_method: str = "spawn",
                 threads: int | None = 1) -> list:
    """Run module-level `fn(*args)` on `world` CPU processes joined by gloo; returns each rank's result.

    The one launcher of the test suite's multi-process tests: `fn` reads its rank from
    `torch.distributed`. `start_method="fork"` skips the children's re-import (when the parent has not
    started threads that a fork would break); `threads=None` keeps torch's default thread count.
    """
    mp.start_processes(_worker, args=(world, free_port(), fn, str(tmp_path), args, threads), nprocs=world,
                       join=True, start_method=start_method)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
