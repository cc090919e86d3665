#!/usr/bin/env bash
# The upstream 04-14 record's train_gpt.py (harness: lease/build_upstream_harness.sh, copied to $UPSTREAM_DIR)
# for a fixed number of steps at world size 1, as issue 27's side by side runs it: the step-based schedule
# (MAX_WALLCLOCK_SECONDS=0, as lit_golf's configs/overrides/fixed_steps_1gpu.yaml), EMA 0.95 on both sides, a
# log line every 5 steps, no TTT. Its own warm-up compiles both loop states before the clock starts. The log
# carries the launch clock (lease/stamped.sh) for bench/compare_runs.py; the run is stopped once the EMA
# weights are scored (upstream's quantization and serialization are not what is compared).
#   bash lease/run_upstream.sh SEED STEPS LOG      # LOG: <dir>/upstream_seed<SEED>.log (compare_runs' name)
set -uo pipefail
seed=$1 steps=$2 log=$3
up=${UPSTREAM_DIR:-/tmp/upstream}; here=$(cd "$(dirname "$0")" && pwd)
[ -f "$up/train_gpt.py" ] || { echo "$up/train_gpt.py: no upstream harness; build it with lease/build_upstream_harness.sh" >&2; exit 2; }
export DATA_DIR=${DATA:-/tmp/data}/ SEED=$seed ITERATIONS=$steps MAX_WALLCLOCK_SECONDS=0 TRAIN_LOG_EVERY=5 \
  VAL_LOSS_EVERY=0 EMA_DECAY=0.95 TTT_ENABLED=0 ARTIFACT_DIR=/tmp/upstream_artifacts_$seed RUN_ID=upstream_s$seed \
  PYTHONPATH=$up:${PYTHONPATH:-}
done_line="pre-quantization post-ema"
setsid bash "$here/stamped.sh" "$log" python3 "$up/train_gpt.py" &
runner=$!
until grep -q "$done_line" "$log" 2>/dev/null || ! kill -0 "$runner" 2>/dev/null; do sleep 5; done
kill -- "-$runner" 2>/dev/null; wait "$runner" 2>/dev/null
grep -q "$done_line" "$log" || { echo "$log: upstream ended before scoring its EMA weights (tail above)" >&2; tail -20 "$log" >&2; exit 1; }
