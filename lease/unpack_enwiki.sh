#!/usr/bin/env bash
# Unpack the carried enwiki2015 SP-8192 shards into an upstream-layout data dir on the GPU box.
# Usage: bash lease/unpack_enwiki.sh DATA_DIR [VAL_DOCS]   (xz shards + tokenizer in $ENWIKI_XZ_DIR/data, default .gpu/data)
set -euo pipefail
shopt -s nullglob  # an eval-only box carries no train shards
here=${ENWIKI_XZ_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.gpu}
out=$1; val_docs=${2:-1000}
mkdir -p "$out/datasets/fineweb10B_sp8192" "$out/tokenizers"
cp "$here/data/fineweb_8192_bpe.model" "$out/tokenizers/"
for f in "$here"/data/fineweb_train_*.bin.xz; do
  xz -dc -T4 "$f" > "$out/datasets/fineweb10B_sp8192/$(basename "${f%.xz}")" &
done
full=$(mktemp -d)
xz -dc -T4 "$here/data/fineweb_val_000000.bin.xz" > "$full/fineweb_val_000000.bin"
# A CaseOps dataset carries its byte sidecar: it is cut at the same document as the shard.
[ -e "$here/data/fineweb_val_bytes_000000.bin.xz" ] && xz -dc "$here/data/fineweb_val_bytes_000000.bin.xz" > "$full/fineweb_val_bytes_000000.bin"
wait
python3 "$(dirname "$0")/cut_val.py" "$full/fineweb_val_000000.bin" "$out/datasets/fineweb10B_sp8192/fineweb_val_000000.bin" "$val_docs"
rm -rf "$full"
ls -la "$out/datasets/fineweb10B_sp8192"
