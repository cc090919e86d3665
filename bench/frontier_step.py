"""Cost of each frontier switch on the record GPT: compiled forward+backward of one 786K-token step.

Same measurement as `bench/profile_step.py` (its packed batch and timing loop), one variant per switch
and one with all of them, in training mode (the fused loss runs only there). Results go to
`<out>/frontier_step.json`, kernel tables to `<out>/profile_<variant>.txt`.

    python bench/frontier_step.py --out $OUT [--variants record frontier] [--looping]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from profile_step import MICRO_STEPS, packed_batch, run_variant

from lit_golf.config import GPTConfig
from lit_golf.model import GPT

VARIANTS = {
    "record": {},
    "smear_gate": {"smear_gate": True},
    "sparse_attn_gate": {"sparse_attn_gate": True, "sparse_attn_gate_scale": 0.5},
    "fused_softcap_ce": {"fused_softcap_ce": True},
    "frontier": {"smear_gate": True, "sparse_attn_gate": True, "sparse_attn_gate_scale": 0.5, "fused_softcap_ce": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--looping", action="store_true", help="also time with depth recurrence on")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    batches = [packed_batch(i, device) for i in range(MICRO_STEPS)]
    results = []
    for name in args.variants:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**VARIANTS[name])).to(device).train()
        if VARIANTS[name].get("fused_softcap_ce") and model.fused_loss is None:
            raise SystemExit(f"{name}: the fused loss kernel is not available (Triton missing?)")
        for looping in [False, True] if args.looping else [False]:
            results.append(run_variant(name, model, batches, looping, out))
            (out / "frontier_step.json").write_text(json.dumps(results, indent=1))
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
