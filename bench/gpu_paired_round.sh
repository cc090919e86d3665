#!/usr/bin/env bash
# One device call: install the carried wheels, unpack the carried enwiki2015 shards, then run the
# `lit-golf run` launches in $RUNS side by side on the one GPU (their compiles overlap on the CPU
# cores; training shares the GPU, so their tokens/s are not solo figures), with $PRE and $POST
# commands before/after (STAGGER=1: each launch waits for the previous one's compile warm-up, so a
# second run of the same config compiles from the cache and trains while the first one exports/evaluates).
# Everything the runs wrote (logs, results.json, artifact.json, hparams, events)
# comes back as one tarball per run ($OUT/<name>.tar.xz, packed when the run ends); $OUT/summary.txt has
# the headline lines.
# Usage (repo root; wheels in .whl/, xz shards + tokenizer in ${DATA_XZ:-.gpu/data}):
#   RUNS="record_s1337|--config configs/record.yaml ... --seed_everything 1337;frontier_s1337|..." \
#     PRE="python3 -m pytest -q tests/test_fused_ce.py" bash bench/gpu_paired_round.sh
# Each run gets `--data.data_dir $DATA --trainer.logger.init_args.save_dir logs/gpu/<name>` appended.
set -uo pipefail
out=${OUT:-/tmp/out}; data=${DATA:-/tmp/data}; started=$(date +%s)
mkdir -p "$out" logs/gpu
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ ! -d "$data/datasets" ]; then
  ENWIKI_XZ_DIR=${DATA_XZ_PARENT:-$PWD/.gpu} bash bench/unpack_enwiki.sh "$data" "${VAL_DOCS:-1000}" > "$out/data.txt" 2>&1 \
    || { cat "$out/data.txt"; exit 1; }
  [ -e "${DATA_XZ_PARENT:-$PWD/.gpu}/data/manifest.json" ] \
    && cp "${DATA_XZ_PARENT:-$PWD/.gpu}/data/manifest.json" "$data/datasets/fineweb10B_sp8192/"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
  git log -1 --format='commit %H %s' 2>/dev/null || cat COMMIT 2>/dev/null; } | tee "$out/summary.txt"
[ -n "${PRE:-}" ] && { echo "== PRE: $PRE"; bash -c "$PRE"; echo "PRE rc $?"; } > "$out/pre.txt" 2>&1 &
pre_pid=$!
IFS=';' read -ra runs <<< "${RUNS:-}"
pids=()
prev=""
for run in "${runs[@]}"; do
  name=${run%%|*}; args=${run#*|}
  if [ -n "${STAGGER:-}" ] && [ -n "$prev" ]; then
    # Start when the previous launch has compiled (or ended): its Inductor cache makes this compile short,
    # and this run's training then overlaps the other's CPU-bound phases instead of its training.
    until grep -q "compile warm-up" "logs/gpu/$prev.log" 2>/dev/null || ! kill -0 "${pids[-1]}" 2>/dev/null; do sleep 2; done
  fi
  prev=$name
  # shellcheck disable=SC2086
  # Each run is packed into $OUT as soon as it ends (killed by RUN_TIMEOUT included): a device call that
  # runs out of time returns what finished.
  ( s=$(date +%s); timeout "${RUN_TIMEOUT:-480}" python3 -m lit_golf.cli ${LAUNCH:-run} $args --data.data_dir "$data" \
      --trainer.logger.init_args.save_dir "logs/gpu/$name" > "logs/gpu/$name.log" 2>&1
    echo "$name rc $? launch->exit $(( $(date +%s) - s ))s" >> "$out/summary.txt"
    tar --exclude='*.ckpt' --exclude='*.ptz' -cJf "$out/$name.tar.xz" "logs/gpu/$name" "logs/gpu/$name.log" 2>/dev/null ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
wait "$pre_pid" 2>/dev/null
# POST gets what is left of a 10-minute device call (minus the packing below), at most POST_TIMEOUT.
left=$(( ${CALL_SECONDS:-585} - SECONDS - 15 )); [ "$left" -gt "${POST_TIMEOUT:-240}" ] && left=${POST_TIMEOUT:-240}
[ -n "${POST:-}" ] && [ "$left" -gt 20 ] && { echo "== POST ($left s): $POST"; timeout "$left" bash -c "$POST"; echo "POST rc $?"; } > "$out/post.txt" 2>&1
for run in "${runs[@]}"; do
  name=${run%%|*}
  { echo "== $name"; grep -E "tok/s|val_bpb|bpb|artifact .*bytes|quant|checkpoint:|looping|export:|compile|peak memory|error|Error" \
      "logs/gpu/$name.log" | grep -v "^ *warn" | tail -40; } >> "$out/summary.txt"
done
echo "round ${SECONDS}s (started $(date -d @"$started" -u +%H:%M:%S) UTC)" >> "$out/summary.txt"
exit 0
