#!/usr/bin/env bash
# One lit_golf run on the GPU box (device tool): unpack data, fit the record config for a fixed number
# of steps on one GPU, export, then evaluate the artifact. Logs go to $OUT.
# Usage (repo root, wheels in .whl/, xz shards in .gpu/data/):
#   STEPS=100 SEED=1337 VAL_DOCS=1000 TEST_DOCS= bash bench/gpu_run.sh
set -uo pipefail
steps=${STEPS:-100}; seed=${SEED:-1337}; val_docs=${VAL_DOCS:-1000}; out=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
bash bench/unpack_enwiki.sh /tmp/data "$val_docs" > "$out/data.txt" 2>&1 || exit 1
stamp() { python3 -u -c "import sys,time;t=float(sys.argv[1]);[print(f'[{time.time()-t:7.1f}s] {l}',end='',flush=True) for l in sys.stdin]" "$1"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, lightning, triton; print('torch', torch.__version__, 'lightning', lightning.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
common=(--config configs/record.yaml --config configs/overrides/fixed_steps_1gpu.yaml --data.data_dir /tmp/data
        --trainer.logger.init_args.save_dir /tmp/logs --seed_everything "$seed" ${EXTRA_ARGS:-})
start=$(date +%s.%N)
timeout "${FIT_TIMEOUT:-480}" python3 -m lit_golf.cli fit "${common[@]}" --trainer.max_steps "$steps" 2>&1 | stamp "$start" | tee "$out/fit_seed$seed.log"
artifact=$(ls -t /tmp/logs/record/*/artifact/artifact.ptz 2>/dev/null | head -1)
[ -n "$artifact" ] && cp "$(dirname "$artifact")/artifact.json" "$out/artifact_seed$seed.json"
[ -f .compile_cache/record.bin ] && [ "${SAVE_CACHE:-0}" = 1 ] && cp .compile_cache/record.bin "$out/"
[ -n "$artifact" ] && [ "${SAVE_ARTIFACT:-0}" = 1 ] && cp "$artifact" "$out/artifact_seed$seed.ptz"
if [ -n "$artifact" ] && [ "${SKIP_TEST:-0}" != 1 ]; then
  start=$(date +%s.%N)
  timeout "${TEST_TIMEOUT:-300}" python3 -m lit_golf.cli test "${common[@]}" --artifact "$artifact" ${TEST_ARGS:-} 2>&1 | stamp "$start" | tee "$out/test_seed$seed.log"
fi
tar -C /tmp/logs -czf "$out/tb_seed$seed.tgz" record 2>/dev/null
