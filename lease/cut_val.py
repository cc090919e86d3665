"""Keep the first N documents of a validation shard, and of its CaseOps byte sidecar when it has one.

The one cut every data pack and smoke run uses (the GPU box's 1,000- or 200-document validation sets):
the shard ends just before the (N+1)-th BOS, the sidecar at the same token.

    python lease/cut_val.py SRC/fineweb_val_000000.bin DST/fineweb_val_000000.bin N
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_golf.data.shards import BOS_ID, read_shard, read_sidecar, sidecar_path, write_shard  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("docs", type=int)
    args = parser.parse_args()
    for path in (args.src, args.dst):  # the sidecar is found (and written) by the shard's name
        if sidecar_path(path) == path:
            parser.error(f"{path}: not a validation shard name (fineweb_val_NNNNNN.bin)")
    tokens = read_shard(args.src)
    starts = np.flatnonzero(tokens == BOS_ID)
    end = int(starts[args.docs]) if args.docs < starts.size else tokens.size
    write_shard(args.dst, tokens[:end])
    sidecar = read_sidecar(args.src)
    if sidecar is not None:
        write_shard(sidecar_path(args.dst), sidecar[:end])
    print(f"val: first {min(args.docs, starts.size)} docs, {end} tokens -> {args.dst}"
          + (" (+ byte sidecar)" if sidecar is not None else ""))


if __name__ == "__main__":
    main()
