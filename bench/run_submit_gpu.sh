#!/usr/bin/env bash
# `lit-golf run` -> `submit` -> `check` on a GPU box, everything under OUT_DIR (from the repo root):
#   bash bench/run_submit_gpu.sh DATA_DIR OUT_DIR [extra lit-golf run args...]
# e.g. bash bench/run_submit_gpu.sh /tmp/data /tmp/out --trainer.max_steps 100
# Writes OUT_DIR/run.log (the run's log and its one summary), runs/ (the run folder: results.json,
# train.log, train_gpt.py, artifact/), submission/ (the records/ folder), check_run.txt and
# check_submission.txt (one line per rule; their exit codes in summary.json), summary.json.
# Env: SEED (default 1337); CONFIGS (default: record + fixed_steps_1gpu); BASELINE_BPB (p-value in
# submission.json); REPRODUCE=1 also runs the submission's train_gpt.py from a copy of the folder
# (DATA_DIR, SEED as the challenge passes them) and compares its results.json with the run's.
set -uo pipefail
data=${1:?usage: run_submit_gpu.sh DATA_DIR OUT_DIR [run args...]}; out=${2:?usage: run_submit_gpu.sh DATA_DIR OUT_DIR}
shift 2
seed=${SEED:-1337}
read -r -a configs <<< "${CONFIGS:---config configs/record.yaml --config configs/overrides/fixed_steps_1gpu.yaml}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
python3 -m lit_golf.cli run "${configs[@]}" --data.data_dir "$data" --seed_everything "$seed" \
  --trainer.logger.init_args.save_dir "$out/runs" "$@" > "$out/run.log" 2>&1
run_rc=$?
run_dir=$(dirname "$(ls -t "$out"/runs/*/*/results.json 2>/dev/null | head -1)")
submit_rc=1; check_run_rc=1; check_sub_rc=1; reproduce_rc=null
if [ -f "$run_dir/results.json" ]; then
  python3 -m lit_golf.cli check "$run_dir" > "$out/check_run.txt" 2>&1; check_run_rc=$?
  python3 -m lit_golf.cli submit "$run_dir" --out "$out/submission" ${BASELINE_BPB:+--baseline-bpb "$BASELINE_BPB"} \
    > "$out/submit.log" 2>&1; submit_rc=$?
  python3 -m lit_golf.cli check "$out/submission" > "$out/check_submission.txt" 2>&1; check_sub_rc=$?
fi
if [ "${REPRODUCE:-0}" = 1 ] && [ "$submit_rc" = 0 ]; then
  rm -rf "$out/reproduce" && cp -r "$out/submission" "$out/reproduce"
  (cd "$out/reproduce" && DATA_DIR="$data" SEED="$seed" python3 train_gpt.py \
    --trainer.logger.init_args.save_dir logs > "$out/reproduce.log" 2>&1); reproduce_rc=$?
fi
python3 - "$out" "$run_dir" "$run_rc" "$submit_rc" "$check_run_rc" "$check_sub_rc" "$reproduce_rc" <<'PY'
import glob, json, sys
out, run_dir, *codes = sys.argv[1:]
names = ("run_rc", "submit_rc", "check_run_rc", "check_submission_rc", "reproduce_rc")
summary = {name: json.loads(code) for name, code in zip(names, codes)}
try:
    summary["results"] = json.load(open(f"{run_dir}/results.json"))
except OSError:
    summary["results"] = None
again = sorted(glob.glob(f"{out}/reproduce/**/results.json", recursive=True))
if again and summary["results"]:
    rerun = json.load(open(again[-1]))
    keys = ("steps", "model_bytes", "code_bytes", "artifact_bytes", "final_bpb")
    summary["reproduce"] = {k: [summary["results"].get(k), rerun.get(k)] for k in keys}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
PY
