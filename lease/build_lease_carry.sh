#!/usr/bin/env bash
# Build what a device lease carries (lease/gpu_queue.sh), all in git-ignored folders of the repo root:
#   .whl/                cp312 wheels the GPU box lacks (brotli, jsonargparse + its two, python-minifier, zpaq)
#   .gpu/data/           the six enwiki2015 SP-8192 train shards (xz) + val cut to its first $VAL_DOCS documents
#                        (default 1,000; 5000 = the whole val split, as the 600-s runs use) + tokenizer
#   .gpu/more/           MORE_SHARDS=1: train shards 5-10 (5 moved out of .gpu/data) (the rest of the 109M-token train split, same stream:
#                        shards 0-5 of a full re-tokenization equal the published ones) + the 11-shard manifest;
#                        too big to travel with .gpu/data, so a second call carries it (lease/long_run_*.queue)
#   .gpu/caseops/data/   the same documents as CaseOps (shard i = plain shard i's documents) + val + byte sidecar
#   .gpu/enwiki_plain/data/  ENWIKI_PLAIN=1: the same documents, an SP-8192 trained like the CaseOps one but on
#                        the untransformed text (the control that separates the case transform from the
#                        in-domain vocabulary)
#   .gpu/code.tar        a snapshot of HEAD (git archive + COMMIT); .gpu/code_before.tar of $BEFORE if set
# Each enwiki pack needs ~6 minutes of a 2-core box (tokenizer + 71,000 documents); SKIP_CASEOPS=1 skips CaseOps.
# Usage (repo root, ../shared beside it):
#   [BEFORE=b926105] [SKIP_CASEOPS=1] [ENWIKI_PLAIN=1] [VAL_DOCS=5000] [MORE_SHARDS=1] bash lease/build_lease_carry.sh
#   CODE_ONLY=1 bash lease/build_lease_carry.sh   # only .gpu/code.tar, a snapshot of HEAD
set -euo pipefail
shared=${SHARED:-$(cd .. && pwd)/shared}; enwiki=$shared/corpora/enwiki2015; py=${PYTHON:-.venv/bin/python}
val_docs=${VAL_DOCS:-1000}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT  # this build's own scratch: two builds never share it

snapshot() {  # snapshot REV TAR: git archive of REV with a COMMIT file naming it
  mkdir -p "$(dirname "$2")"
  git archive "$1" > "$2"
  echo "commit $(git rev-parse "$1") $(git log -1 --format=%s "$1" | cut -c1-80)" > "$work/COMMIT"
  tar -rf "$2" -C "$work" COMMIT
}
if [ -n "${CODE_ONLY:-}" ]; then  # a lease of new code on packs already built: the snapshot alone (seconds)
  snapshot HEAD .gpu/code.tar && tar -xOf .gpu/code.tar COMMIT && exit 0
fi

pack_val() {  # pack_val SHARD PACK: its first $val_docs documents (and byte sidecar) as xz into PACK
  local cut; cut=$(mktemp -d)
  "$py" lease/cut_val.py "$1" "$cut/fineweb_val_000000.bin" "$val_docs"
  for file in "$cut"/*.bin; do xz -9 -c "$file" > "$2/$(basename "$file").xz"; done
  rm -rf "$cut"
}

mkdir -p .whl .gpu/data
wheels=(brotli jsonargparse docstring-parser typeshed-client python-minifier zpaq==0.3.7)
bash lease/download_wheels.sh .whl "${wheels[@]}"
for wheel in "${wheels[@]}"; do  # a lease without one fails late; a wheel file spells '-' as '_'
  name=${wheel%%==*}; name=${name//-/_}
  compgen -G ".whl/$name-*.whl" > /dev/null || { echo "no $name wheel in .whl/ after pip download" >&2; exit 1; }
done

cp "$enwiki"/sp8192/fineweb_train_*.bin.xz .gpu/data/
cp "$shared/tokenizers/fineweb_8192_bpe.model" .gpu/data/
xz -dc "$enwiki/sp8192/fineweb_val_000000.bin.xz" > "$work/fineweb_val_000000.bin"
pack_val "$work/fineweb_val_000000.bin" .gpu/data

if [ -n "${MORE_SHARDS:-}" ]; then  # the whole train split with the published tokenizer (~2 minutes)
  "$py" -m lit_golf.cli prepare-data --input "$enwiki/docs_first15000.jsonl.xz" --input "$enwiki/docs_rest.jsonl.xz" \
    --tokenizer "$shared/tokenizers/fineweb_8192_bpe.model" --num-val-docs 5000 --shard-tokens 10000000 \
    --workers 2 --quiet --out "$work/full"
  full=$work/full/datasets/fineweb10B_sp8192; mkdir -p .gpu/more
  for i in 0 5; do  # the same stream as the published shards, or the extra shards would not continue it
    xz -dc "$enwiki/sp8192/fineweb_train_00000$i.bin.xz" | cmp -s - "$full/fineweb_train_00000$i.bin" \
      || { echo "re-tokenized shard $i differs from the published one: not carrying shards 6-10" >&2; exit 1; }
  done
  for shard in "$full"/fineweb_train_0000{06..10}.bin; do xz -6 -T2 -c "$shard" > ".gpu/more/$(basename "$shard").xz"; done
  cp "$full/manifest.json" .gpu/data/
  # Shard 5 travels with the second call too: with all five wheels' files, code.tar and the whole val split,
  # the first call's carry would exceed 64 MiB (2026-12-07: 66.9 MB refused).
  mv .gpu/data/fineweb_train_000005.bin.xz .gpu/more/
fi

enwiki_pack() {  # enwiki_pack NAME [--caseops]: re-tokenize with a tokenizer trained on 40,000 train documents
  local full=$work/$1 aligned=$work/$1_aligned pack=.gpu/$1/data src shard
  "$py" -m lit_golf.cli prepare-data --input "$enwiki/docs_first15000.jsonl.xz" --input "$enwiki/docs_rest.jsonl.xz" \
    --out "$full" --train-tokenizer --vocab-size 8192 --tokenizer-train-docs 40000 --num-val-docs 5000 \
    --shard-tokens 10000000 --max-docs 71000 --workers 2 --quiet --overwrite "${@:2}"
  "$py" lease/caseops_aligned_shards.py --caseops-dir "$full" --shards 6 --out "$aligned"  # shard i = plain shard i's docs
  mkdir -p "$pack"; src=$full/datasets/fineweb10B_sp8192
  cp "$full/tokenizers/fineweb_8192_bpe.model" "$src/manifest.json" "$pack/"
  pack_val "$src/fineweb_val_000000.bin" "$pack"
  for shard in "$aligned"/fineweb_train_*.bin; do xz -9 -T2 -c "$shard" > "$pack/$(basename "$shard").xz"; done
}
if [ -z "${SKIP_CASEOPS:-}" ]; then enwiki_pack caseops --caseops; fi
# The CaseOps control: the same documents and tokenizer recipe without the case transform (~6 minutes).
if [ -n "${ENWIKI_PLAIN:-}" ]; then enwiki_pack enwiki_plain; fi

snapshot HEAD .gpu/code.tar
if [ -n "${BEFORE:-}" ]; then snapshot "$BEFORE" .gpu/code_before.tar; fi
du -sh .whl .gpu/*  # each pack (.gpu/NAME) and snapshot that a lease carries
bash lease/carry_size.sh .gpu/data .gpu/code.tar .whl \
  || echo "the first call's carry is over 64 MiB with the tree: move a train shard of .gpu/data to a later call" >&2
