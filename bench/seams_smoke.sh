#!/usr/bin/env bash
# The seams issue's before/after smoke on the GPU box: the record config, 20 fixed steps of 196,608 tokens
# (eager: both sides compile nothing, so the comparison costs no compile), the artifact the fit exports,
# then `test --artifact` (plain + phased TTT) on the first 200 validation documents. Same command line
# for any commit since b926105; EXTRA holds the flags only newer code has.
# Usage: bash bench/seams_smoke.sh CODE_DIR RUN_DIR   (env: DATA = an unpacked enwiki2015 data dir, EXTRA,
# EXTRA_TEST; eager TTT on current code: EXTRA_TEST="--model.evaluation.ttt.compile false", before fab90a0
# "--model.evaluation.ttt_compile false", b926105 has no TTT compile)
set -uo pipefail
code=$1; run_dir=$2; small=/tmp/data200
if [ ! -e "$small/READY" ]; then  # the same train shards, validation cut to its first 200 documents
  mkdir -p "$small/datasets/fineweb10B_sp8192" "$small/tokenizers"
  ln -sf "$DATA"/datasets/fineweb10B_sp8192/fineweb_train_*.bin "$small/datasets/fineweb10B_sp8192/"
  cp "$DATA"/tokenizers/* "$small/tokenizers/"
  python3 "$(dirname "$0")/../lease/cut_val.py" "$DATA/datasets/fineweb10B_sp8192/fineweb_val_000000.bin" \
    "$small/datasets/fineweb10B_sp8192/fineweb_val_000000.bin" 200
  touch "$small/READY"
fi
cd "$code" && export PYTHONPATH=/tmp/site:$code
common=(--config configs/record.yaml --config configs/overrides/fixed_steps_1gpu.yaml --data.data_dir "$small"
        --seed_everything 1337 --trainer.logger.init_args.save_dir "$run_dir" --model.evaluation.max_docs 200)
# shellcheck disable=SC2086
python3 -m lit_golf.cli fit "${common[@]}" --trainer.max_steps 20 --trainer.val_check_interval 20 \
  --data.train_batch_tokens 196608 --data.tokens_per_microbatch 49152 --model.training.compile false \
  --model.training.compile_cache null ${EXTRA:-}
echo "fit rc $?"
artifact=$(find "$run_dir" -name artifact.ptz | head -1)
# shellcheck disable=SC2086
python3 -m lit_golf.cli test "${common[@]}" --artifact "$artifact" ${EXTRA_TEST:-}
echo "test rc $?"
