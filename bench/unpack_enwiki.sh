#!/usr/bin/env bash
# Unpack the carried enwiki2015 SP-8192 shards into an upstream-layout data dir on the GPU box.
# Usage: bash bench/unpack_enwiki.sh DATA_DIR [VAL_DOCS]   (xz shards + tokenizer in $ENWIKI_XZ_DIR/data, default .gpu/data)
set -euo pipefail
shopt -s nullglob  # an eval-only box carries no train shards
here=${ENWIKI_XZ_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.gpu}
out=$1; val_docs=${2:-1000}
mkdir -p "$out/datasets/fineweb10B_sp8192" "$out/tokenizers"
cp "$here/data/fineweb_8192_bpe.model" "$out/tokenizers/"
for f in "$here"/data/fineweb_train_*.bin.xz; do
  xz -dc -T4 "$f" > "$out/datasets/fineweb10B_sp8192/$(basename "${f%.xz}")" &
done
xz -dc -T4 "$here/data/fineweb_val_000000.bin.xz" > /tmp/full_val.bin
rm -f /tmp/full_val_bytes.bin
# A CaseOps dataset carries its byte sidecar: it is cut at the same document as the shard.
[ -e "$here/data/fineweb_val_bytes_000000.bin.xz" ] && xz -dc "$here/data/fineweb_val_bytes_000000.bin.xz" > /tmp/full_val_bytes.bin
wait
python3 - "$val_docs" "$out/datasets/fineweb10B_sp8192" <<'PY'
import os, sys, numpy as np
n_docs, dst = int(sys.argv[1]), sys.argv[2]
tok = np.fromfile("/tmp/full_val.bin", dtype="<u2", offset=1024)
bos = np.flatnonzero(tok == 1)
end = int(bos[n_docs]) if n_docs < len(bos) else len(tok)
header = np.zeros(256, dtype="<i4"); header[:3] = (20240520, 1, end)
pairs = [("/tmp/full_val.bin", "fineweb_val_000000.bin"), ("/tmp/full_val_bytes.bin", "fineweb_val_bytes_000000.bin")]
for src, name in pairs:
    if os.path.exists(src):
        values = np.fromfile(src, dtype="<u2", offset=1024)[:end]
        with open(f"{dst}/{name}", "wb") as f:
            f.write(header.tobytes()); f.write(values.astype("<u2").tobytes())
print(f"val: first {min(n_docs, len(bos))} docs, {end} tokens -> {dst}")
PY
ls -la "$out/datasets/fineweb10B_sp8192"
