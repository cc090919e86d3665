#!/usr/bin/env bash
# One lit_golf run on the GPU box (device tool): unpack data, fit the record config for a fixed number
# of steps on one GPU, export, then evaluate the artifact. Logs go to $OUT.
# Usage (repo root, wheels in .whl/, xz shards in .gpu/data/):
#   STEPS=100 SEED=1337 VAL_DOCS=1000 bash bench/gpu_run.sh
# Knobs (env): GPU_TESTS=1 runs the CUDA tests first and stops on a failure; SKIP_FIT=1 ARTIFACT=PATH only
# evaluates PATH; SKIP_TEST=1 only fits; RUN_DIR keeps runs (default logs/gpu, git-ignored, so a warm box
# keeps them between calls); SAVE_CACHE=1 / SAVE_ARTIFACT=1 copy the compile cache / artifact to $OUT;
# FIT_TIMEOUT, TEST_TIMEOUT (s); EXTRA_ARGS (fit and test), TEST_ARGS (test only).
set -uo pipefail
steps=${STEPS:-100}; seed=${SEED:-1337}; val_docs=${VAL_DOCS:-1000}; out=${OUT:-/tmp/out}
run_dir=${RUN_DIR:-logs/gpu}; data=/tmp/data
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH} PYTHONUNBUFFERED=1
# Unpack once per box; again when this run fits but an earlier eval-only run unpacked no train shards.
if [ ! -d "$data/datasets" ] || { [ "${SKIP_FIT:-0}" != 1 ] && ! ls "$data"/datasets/*/fineweb_train_* >/dev/null 2>&1; }; then
  rm -rf "$data" && bash bench/unpack_enwiki.sh "$data" "$val_docs" > "$out/data.txt" 2>&1 || exit 1
fi
stamp() { python3 -u -c "import sys,time;t=float(sys.argv[1]);[print(f'[{time.time()-t:7.1f}s] {l}',end='',flush=True) for l in sys.stdin]" "$1"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, lightning, triton; print('torch', torch.__version__, 'lightning', lightning.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
if [ "${GPU_TESTS:-0}" = 1 ]; then
  python3 -m pytest -q -x -p no:cacheprovider tests/test_eval_plain.py tests/test_attention.py tests/test_fused_mlp.py \
    2>&1 | tee "$out/gpu_tests.txt" | tail -3
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "CUDA tests failed: see gpu_tests.txt"; exit 1; }
fi
common=(--config configs/record.yaml --config configs/overrides/fixed_steps_1gpu.yaml --data.data_dir "$data"
        --trainer.logger.init_args.save_dir "$run_dir/seed$seed" --seed_everything "$seed" ${EXTRA_ARGS:-})
if [ "${SKIP_FIT:-0}" != 1 ]; then
  start=$(date +%s.%N)
  timeout "${FIT_TIMEOUT:-480}" python3 -m lit_golf.cli fit "${common[@]}" --trainer.max_steps "$steps" 2>&1 | stamp "$start" | tee "$out/fit_seed$seed.log"
  artifact=$(ls -t "$run_dir/seed$seed"/record/*/artifact/artifact.ptz 2>/dev/null | head -1)
  [ -n "$artifact" ] && cp "$(dirname "$artifact")/artifact.json" "$out/artifact_seed$seed.json"
  [ -f .compile_cache/record.bin ] && [ "${SAVE_CACHE:-0}" = 1 ] && cp .compile_cache/record.bin "$out/"
  [ -n "$artifact" ] && [ "${SAVE_ARTIFACT:-0}" = 1 ] && cp "$artifact" "$out/artifact_seed$seed.ptz"
else
  artifact=${ARTIFACT:?SKIP_FIT=1 needs ARTIFACT=path}
fi
if [ -n "$artifact" ] && [ "${SKIP_TEST:-0}" != 1 ]; then
  start=$(date +%s.%N)
  timeout "${TEST_TIMEOUT:-300}" python3 -m lit_golf.cli test "${common[@]}" --artifact "$artifact" ${TEST_ARGS:-} 2>&1 | stamp "$start" | tee "$out/test_seed$seed.log"
fi
tar -C "$run_dir/seed$seed" -czf "$out/tb_seed$seed.tgz" record 2>/dev/null
exit 0
