"""Time and profile the compiled forward+backward of one 786K-token step (8 micro-batches of 98,304).

Each variant is built, compiled (fullgraph, static shapes), warmed up, timed, and profiled for one
step; the kernel table shows where GPU time goes, and `kernel_classes` sums it per kind of kernel. The `upstream` variant imports the record's
`train_gpt.py` from `--upstream-dir` (kept outside this repository) to compare like with like on the
same synthetic packed batch. No optimizer step: this isolates the model.

    python bench/profile_step.py --variants ours upstream --upstream-dir .gpu/upstream --out $OUT
"""

from __future__ import annotations

import argparse
import functools
import importlib
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType

MICRO_TOKENS, MICRO_STEPS, SEQ_LEN, CU_LEN, VOCAB = 98_304, 8, 2048, 256, 8192

# Kernel classes, first match wins, on CUDA kernel names (aten op names on CPU); anything else is
# "elementwise" (Inductor's fused Triton kernels: norms, residual mixes, gates, optimizer updates).
KERNEL_CLASSES = (
    ("fused_mlp", r"leaky_relu_square"),
    # Inductor names a kernel after every op it fused, and a per-layer XSA kernel once carried "nll_loss_forward"
    # in its name (13 ms of the 2026-12-07 FA4 step counted as loss): only the loss's own ops name the class.
    # aten::nll_loss*: CPU profiles; softcap_ce: fused_ce.py. lit_golf's Triton kernels carry their module's name:
    # until 2026-12-08 three modules named theirs `_forward_kernel` / `_backward_kernel`, and the q/k norm + rotary
    # and XSA kernels counted as loss; as elementwise fusions they now fall to the default class.
    ("loss", r"cross_entropy|log_softmax|^aten::nll_loss|softcap_ce"),
    ("attention", r"flash|fmha|attention"),
    ("fp8_gemm", r"scaled_mm|f8f8|e4m3.*gemm|gemm.*e4m3"),
    ("fp8_cast", r"amax|float8|fp8|e4m3"),  # the rowwise amax + scale + cast of lit_golf.kernels.fp8
    ("gemm", r"gemm|cutlass|cublas|nvjet|xmma|aten::mm$|aten::addmm$|aten::bmm$"),
    ("memory", r"memcpy|memset"),
)


def packed_batch(seed: int, device: torch.device, tokens: int = MICRO_TOKENS, seq_len: int = SEQ_LEN,
                 vocab: int = VOCAB, cu_len: int = CU_LEN):
    """Random tokens with document lengths drawn like web pages (mean ~700), split at `seq_len`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (1, tokens + 1), generator=gen)
    starts, pos = [0], 0
    while True:
        pos += min(int(torch.empty(()).exponential_(1 / 700, generator=gen)) + 16, seq_len)
        if pos >= tokens:
            break
        starts.append(pos)
    cu = torch.full((max(cu_len, len(starts) + 1),), tokens, dtype=torch.int32)
    cu[: len(starts)] = torch.tensor(starts, dtype=torch.int32)
    ids[0, torch.tensor(starts)] = 1
    return ids[:, :-1].to(device), ids[:, 1:].to(device), cu.to(device)


TOP_KERNELS = 15  # kernel names listed per profiled step, costliest first
TOP_PER_CLASS = 12  # ... and per kernel class: what an elementwise fusion changes hides below the GEMMs otherwise
KERNEL_NAME_CHARS = 300  # Inductor names a kernel after the ops it fused: keep enough of the list to read it


@functools.cache  # a step launches thousands of kernels under a few hundred names
def kernel_class(name: str) -> str:
    return next((kind for kind, pattern in KERNEL_CLASSES if re.search(pattern, name, re.IGNORECASE)), "elementwise")


def kernel_classes(prof: torch.profiler.profile, device: torch.device) -> dict:
    """Kernels of a profiled span and their time per class: `{"kernels": n, "ms": {class: ms}, "count": {class: n}}`,
    with the costliest names overall (`top`) and in each class (`top_per_class`).

    CUDA: every device kernel and its GPU time (busy time, not wall time). CPU, the nearest analog: every
    aten op and its self time.
    """
    if device.type == "cuda":
        kernels = [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type == DeviceType.CUDA]
    else:
        kernels = [(e.name, e.self_cpu_time_total) for e in prof.events()
                   if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    by_name: dict[str, list] = {}  # name -> [ms, count]; the class totals are sums over names
    for name, us in kernels:
        entry = by_name.setdefault(name, [0.0, 0])
        entry[0] += us / 1e3
        entry[1] += 1
    ms: dict[str, float] = {}
    count: dict[str, int] = {}
    for name, (t, n) in by_name.items():
        kind = kernel_class(name)
        ms[kind] = ms.get(kind, 0.0) + t
        count[kind] = count.get(kind, 0) + n
    # the costliest names say what to fuse next: a class total alone does not
    ranked = sorted(by_name.items(), key=lambda item: -item[1][0])

    def entry(name: str, t: float, n: int) -> dict:
        return {"name": name[:KERNEL_NAME_CHARS], "class": kernel_class(name), "ms": round(t, 3), "count": n}

    per_class: dict[str, list[dict]] = {}
    for name, (t, n) in ranked:
        kind = per_class.setdefault(kernel_class(name), [])
        if len(kind) < TOP_PER_CLASS:
            kind.append(entry(name, t, n))
    return {"kernels": len(kernels), "ms": {k: round(v, 3) for k, v in sorted(ms.items())},
            "count": dict(sorted(count.items())),
            "top": [entry(name, t, n) for name, (t, n) in ranked[:TOP_KERNELS]],
            "top_per_class": dict(sorted(per_class.items()))}


def build_ours(attention: str = "auto"):
    from lit_golf.config import GPTConfig
    from lit_golf.model import GPT

    return GPT(GPTConfig(attention_backend=attention)).cuda()


def build_upstream(upstream_dir: str):
    sys.path.insert(0, upstream_dir)
    tg = importlib.import_module("train_gpt")
    model = tg.GPT(tg.Hyperparameters()).cuda().bfloat16()
    tg.restore_fp32_params(model)
    return model


def run_variant(name: str, model: torch.nn.Module, batches, looping: bool, out: Path) -> dict:
    model.looping_active = looping
    compiled = torch.compile(model, fullgraph=True, dynamic=False)

    def step():
        for ids, tgt, cu in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = compiled(ids, tgt, cu_seqlens=cu, max_seqlen=SEQ_LEN)
            (loss / len(batches)).backward()
        model.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=110)
    tag = f"{name.replace(':', '_')}{'_loop' if looping else ''}"
    (out / f"profile_{tag}.txt").write_text(table)
    result = dict(variant=tag, compile_s=round(compile_s, 1), fwd_bwd_s=round(step_s, 4),
                  tokens_per_s=round(MICRO_TOKENS * MICRO_STEPS / step_s),
                  peak_mib=torch.cuda.max_memory_allocated() // 2**20,
                  kernel_classes=kernel_classes(prof, torch.device("cuda")))
    print(result, flush=True)
    torch._dynamo.reset()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["ours"],
                        help="ours, ours:<attention backend> (e.g. ours:fa4), upstream")
    parser.add_argument("--looping", action="store_true", help="also time with depth recurrence on")
    parser.add_argument("--upstream-dir", default=".gpu/upstream")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    batches = [packed_batch(i, device) for i in range(MICRO_STEPS)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        probe = torch.ones(4, 8, device=device, dtype=torch.bfloat16)
        print(f"autocast: rms_norm(bf16) -> {F.rms_norm(probe, (8,)).dtype}, torch {torch.__version__}", flush=True)
    for name in args.variants:
        torch.manual_seed(0)
        system, _, attention = name.partition(":")
        model = build_upstream(args.upstream_dir) if system == "upstream" else build_ours(attention or "auto")
        for looping in [False, True] if args.looping else [False]:
            run_variant(name, model, batches, looping, out)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
