#!/usr/bin/env bash
# One device call for the TTT benchmark: install carried wheels, unpack enwiki2015 (5,000 val docs),
# run the CUDA tests (TESTS=first or last) and optionally a short record-config fit + export, then each TTT run in $RUNS.
# Usage (repo root; wheels in .whl/, xz shards + tokenizer in .gpu/data/):
#   TESTS=first FIT_STEPS=40 RUNS="fast-1000:--max-docs 1000 --prefix-docs 40" bash bench/ttt_device_round.sh
#   ARTIFACT=.gpu/artifact.ptz RUNS="cold:--max-docs 5000;warm:--max-docs 5000" bash bench/ttt_device_round.sh
# RUNS: ';'-separated `label:bench/ttt_throughput.py args`; results append to $OUT/ttt.jsonl.
set -uo pipefail
out=${OUT:-/tmp/out}; data=/tmp/data
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -d "$data/datasets" ] || bash bench/unpack_enwiki.sh "$data" 5000 > "$out/data.txt" 2>&1 || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
run_tests() {
  timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider tests/test_eval_ttt_cuda.py tests/test_attention.py \
    > "$out/gpu_tests.txt" 2>&1
  tail -3 "$out/gpu_tests.txt"
}
[ "${TESTS:-0}" = first ] && run_tests
artifact=${ARTIFACT:-}
if [ "${FIT_STEPS:-0}" -gt 0 ]; then
  start=$(date +%s)
  timeout "${FIT_TIMEOUT:-330}" python3 -m lit_golf.cli fit --config configs/record.yaml \
    --config configs/overrides/fixed_steps_1gpu.yaml --data.data_dir "$data" --trainer.max_steps "$FIT_STEPS" \
    --trainer.logger.init_args.save_dir logs/gpu/ttt_bench --seed_everything 1337 > "$out/fit.log" 2>&1
  echo "fit rc $? in $(( $(date +%s) - start ))s"; grep -E "artifact|quant|bpb" "$out/fit.log" | tail -5
  artifact=$(ls -t logs/gpu/ttt_bench/record/*/artifact/artifact.ptz 2>/dev/null | head -1)
  [ -n "$artifact" ] && cp "$artifact" "$out/artifact.ptz" && cp "$(dirname "$artifact")/artifact.json" "$out/"
fi
[ -n "$artifact" ] || { echo "no artifact"; exit 1; }
IFS=';' read -ra runs <<< "${RUNS:-}"
for run in "${runs[@]}"; do
  label=${run%%:*}; args=${run#*:}
  # shellcheck disable=SC2086
  timeout "${RUN_TIMEOUT:-400}" python3 bench/ttt_throughput.py --artifact "$artifact" --data-dir "$data" \
    --label "$label" --out "$out/ttt.jsonl" $args > "$out/ttt_$label.log" 2>&1
  echo "run $label rc $?"; grep -E '"(scored_tokens_per_s|positions_per_s|compile_s|launch_to_bpb_s|ttt_bpb|peak_memory_gb)"' "$out/ttt_$label.log"
  grep -E "Error|error" "$out/ttt_$label.log" | tail -3
done
[ "${TESTS:-0}" = last ] && run_tests
exit 0
