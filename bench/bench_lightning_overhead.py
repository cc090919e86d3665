"""Lightning's overhead: the same GolfLightningModule stepped by `Trainer.fit` and by a bare loop.

Both paths run the same compiled GPT, optimizer, schedules and data stream; the Trainer path adds
Lightning's loop, hooks and the batch transfer. Timed steps exclude the first `--skip` steps
(compilation, allocator warm-up). Usage:

    python bench/bench_lightning_overhead.py --data-dir DATA --vocab-size 8192 --preset record   # GPU
    python bench/bench_lightning_overhead.py --data-dir demo_run/data --vocab-size 1024 --preset tiny  # CPU
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch

from lit_golf.config import GPTConfig
from lit_golf.data.datamodule import GolfDataModule
from lit_golf.module import GolfLightningModule
from lit_golf.optim import OptimConfig, build_golf_optimizer
from lit_golf.schedule import TrainingConfig

PRESETS = {
    "record": dict(gpt={}, data=dict(train_batch_tokens=786_432, tokens_per_microbatch=98_304, train_seq_len=2048)),
    "tiny": dict(gpt=dict(num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2, xsa_last_n=4,
                          parallel_start_layer=3, num_loops=1, loop_start=1, loop_end=2),
                 data=dict(train_batch_tokens=8192, tokens_per_microbatch=4096, train_seq_len=256, cu_min_len=64)),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]


class StepTimes(L.Callback):
    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _sync(self.device)
        self.stamps.append(time.perf_counter())


def build(args, device):
    preset = PRESETS[args.preset]
    module = GolfLightningModule(
        gpt=GPTConfig(vocab_size=args.vocab_size, **preset["gpt"]), optim=OptimConfig(),
        training=TrainingConfig(compile=device.type == "cuda", compile_warmup=False),
    )
    data = GolfDataModule(data_dir=args.data_dir, vocab_size=args.vocab_size, **preset["data"])
    return module, data


def time_trainer(args, device) -> list[float]:
    module, data = build(args, device)
    times = StepTimes(device)
    trainer = L.Trainer(accelerator=device.type, devices=1, max_steps=args.steps, max_epochs=-1, logger=False,
                        precision="bf16-mixed" if device.type == "cuda" else "32-true", callbacks=[times],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module, data)
    return _intervals(times.stamps)


def time_bare_loop(args, device) -> list[float]:
    module, data = build(args, device)
    data.set_distributed(0, 1)
    module.to(device)
    model = torch.compile(module.gpt, fullgraph=True, dynamic=False) if device.type == "cuda" else module.gpt
    optimizer = build_golf_optimizer(module.gpt, module.optim_config)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    stamps = []
    steps = iter(data.train_stream())
    for step in range(args.steps):
        fraction = step / args.steps  # the module's step-based schedule, as under Trainer.fit
        module._maybe_enable_looping(fraction)
        module._apply_schedules(optimizer, fraction)
        micro_batches = next(steps)
        for input_ids, target_ids, cu_seqlens in micro_batches:
            with autocast:
                loss = model(input_ids.to(device, non_blocking=True), target_ids.to(device, non_blocking=True),
                             cu_seqlens=cu_seqlens.to(device, non_blocking=True), max_seqlen=data.train_seq_len)
            (loss / len(micro_batches)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        stamps.append(time.perf_counter())
    return _intervals(stamps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="record")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    for name, fn in (("bare loop", time_bare_loop), ("Trainer.fit", time_trainer)):
        steps = fn(args, device)[args.skip:]
        results[name] = sorted(steps)[len(steps) // 2]
        print(f"{name:12s} median step {results[name] * 1e3:8.2f} ms over {len(steps)} steps", flush=True)
    overhead = results["Trainer.fit"] / results["bare loop"] - 1
    print(f"Lightning overhead: {overhead * 100:+.2f}% ({device.type}, preset {args.preset})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
