"""The seams smoke's numbers, before and after, from the two launch logs `bench/seams_smoke.sh` wrote.

The before side (b926105) predates results.json, so both sides are read from the same log lines: the
step-20 validation, the step-20 progress bar, the export's size and pre-quantization lines and the final
evaluation line.
    python bench/seams_smoke_numbers.py BEFORE_LOG AFTER_LOG --out bench/results/seams_smoke.json \
        --commit-before b926105 --commit-after aa3742b --machine "1x NVIDIA H200 ..."
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

PATTERNS = {
    "val_bpb_raw_step20": r"step 20 val_loss [0-9.]+ val_bpb ([0-9.]+)",
    "val_loss_raw_step20": r"step 20 val_loss ([0-9.]+)",
    "train_loss_step20": r"step=20, loss=([0-9.]+)",
    "train_tokens_per_s_step20": r"step=20, loss=[0-9.]+, tok/s=([0-9,]+)",
    "val_bpb_pre_quant": r"plain val bpb ([0-9.]+) before quantization",
    "val_bpb_post_quant": r"evaluation: val_bpb=([0-9.]+)",
    "ttt_bpb": r"ttt_bpb=([0-9.]+) ttt_loss",
    "artifact_bytes": r"artifact\.ptz: ([0-9,]+) bytes with code",
    "code_bytes_compressed": r"\ncode +[0-9]+ +[0-9,]+ +([0-9,]+)",
    "ttt_seconds_eager": r"time_ttt_s=([0-9.]+)",
}
INTEGERS = ("artifact_bytes", "code_bytes_compressed")


def numbers(log: Path) -> dict:
    """Each number's last occurrence in the log; a missing line is an error naming the log and the number."""
    text = log.read_text(errors="replace")
    found = {}
    for key, pattern in PATTERNS.items():
        matches = re.findall(pattern, text)
        if not matches:
            raise SystemExit(f"{log}: no line for {key} (pattern {pattern!r}): not a complete seams_smoke.sh log")
        value = float(matches[-1].replace(",", ""))
        found[key] = int(value) if key in INTEGERS else value
    found["model_bytes"] = found["artifact_bytes"] - found["code_bytes_compressed"]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--commit-before", required=True)
    parser.add_argument("--commit-after", required=True)
    parser.add_argument("--machine", required=True)
    parser.add_argument("--date", default=None)
    args = parser.parse_args(argv)
    before, after = numbers(args.before), numbers(args.after)
    result = {
        "commit_before": args.commit_before, "commit_after": args.commit_after, "machine": args.machine,
        "date": args.date,
        "command": "bash bench/seams_smoke.sh CODE_DIR RUN_DIR (record.yaml + fixed_steps_1gpu.yaml, seed 1337, "
                   "20 steps x 196,608 tokens, eager; test --artifact on the first 200 val docs; after: "
                   "EXTRA_TEST='--model.evaluation.ttt.compile false')",
        "runs": {"smoke_before": before, "smoke_after": after},
        "after_minus_before": {k: round(after[k] - before[k], 6) for k in before},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["after_minus_before"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
