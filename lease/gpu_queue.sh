#!/usr/bin/env bash
# A queue of GPU jobs that outlives one device call, so a session's 30 minutes of device time become one
# lease with one warm Inductor cache instead of three cold boxes. A device call lasts at most 10 minutes
# and the machine stays warm 30 s after it: `start` (first call) installs the carried wheels, unpacks the
# carried code snapshot(s) and data, and starts a runner in its own session (setsid: it survives the
# call) that runs the jobs of $LEASE/queue one after another; `collect` (every call, the next one made
# within those 30 s) unpacks any newly carried data, waits until the queue is done or the call's time is
# nearly spent, and copies each finished job's tarball (its log and run folder, no checkpoints or
# artifacts) and one finished job's artifact (as <job>_artifact.ptz) into $OUT. Jobs run in a snapshot of a commit, never in the working tree that later calls
# overwrite.
#
# Queue lines: `name|command` runs in order (timeout $JOB_TIMEOUT); `name&|command` starts in the
# background and the runner goes on. `name@PATTERN|command` runs only where the GPU's name (`start` writes it first
# in machine.txt) matches the extended regex PATTERN, `name@!PATTERN|command` only where it does not; otherwise its
# status line says it was skipped. A lease asked for one kind often gets the other (2026-12-08: an H200 call gave
# an H100), and a setting paired against a kept H100 baseline needs its own baseline on any other GPU.
# Commands run in $LEASE/code with $DATA (plain SP-8192 enwiki2015) and $RUNS ($RUNS/<name> is the job's run folder)
# set; a pack carried as .gpu/NAME/data by a later call is unpacked to /tmp/data_NAME ($CASEOPS for .gpu/caseops),
# with a READY file a job can wait for.
#   bash lease/gpu_queue.sh start QUEUE_FILE   # carry .gpu/code.tar (git archive + COMMIT), .gpu/data, .whl
#   bash lease/gpu_queue.sh add 'name|command'  # append a job (a later call)
#   bash lease/gpu_queue.sh next 'name|command' # run this job as soon as the running one ends
#   bash lease/gpu_queue.sh stop                # end the running job now (status rc 143); the queue goes on
#   bash lease/gpu_queue.sh halt                # start no further job and end the running one: the GPU is yours
#                                               # (after a `stop`, the next queued job shared the GPU with a
#                                               # benchmark timed by hand, 2026-12-07)
#   bash lease/gpu_queue.sh collect [SECONDS]   # SECONDS: this call's time left (default 570)
set -uo pipefail
lease=${LEASE:-/tmp/lease}; out=${OUT:-/tmp/out}
export LEASE=$lease DATA=/tmp/data CASEOPS=/tmp/data_caseops RUNS=$lease/runs PYTHONUNBUFFERED=1
# FA4 (lease/install_fa4.sh into /tmp/site) needs its DSL packages folder too, which a .pth would add in site-packages
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$lease/code
repo=$PWD

unpack_data() {  # unpack_data XZ_PARENT DEST: the carried xz shards into an upstream-layout data dir
  [ -e "$2/READY" ] || [ ! -d "$1/data" ] && return 0
  ENWIKI_XZ_DIR=$1 bash "$repo/lease/unpack_enwiki.sh" "$2" "${VAL_DOCS:-1000}" > "$lease/unpack_$(basename "$2").txt" 2>&1 \
    && { [ -e "$1/data/manifest.json" ] && cp "$1/data/manifest.json" "$2/datasets/fineweb10B_sp8192/"; touch "$2/READY"; }
}

run_job() {  # run_job NAME COMMAND: log, status line, tarball of what it wrote
  local name=$1 cmd=$2 started rc touched pid
  started=$(date +%s); mkdir -p "$RUNS/$name"; touch "$lease/logs/$name.started"
  # timeout in the background, its pid kept: `stop` ends this job and no other process (a `pkill -f` from a
  # device call matches that call's own command line too, and ended it, 2026-12-07)
  (cd "$lease/code" && exec timeout "${JOB_TIMEOUT:-900}" bash -c "$cmd") > "$lease/logs/$name.log" 2>&1 &
  pid=$!; echo "$pid" > "$lease/running.pid"
  wait "$pid"
  rc=$?
  echo "$name rc $rc $(( $(date +%s) - started ))s ended $(date -u +%H:%M:%S)" >> "$lease/status"
  # Every run folder the job wrote into, not only its own: a `test --artifact` adds its scores and its
  # test_N folder to the fit's folder, and those came back with no tarball before.
  touched=$(cd "$lease" && find runs -type f -newer "logs/$name.started" ! -name '*.ckpt' ! -name '*.ptz' \
    | cut -d/ -f1-2 | sort -u | grep -vx "runs/$name")
  # shellcheck disable=SC2086  # one run folder per word
  tar --exclude='*.ckpt' --exclude='*.ptz' -C "$lease" -cJf "$lease/done/$name.tar.xz" "logs/$name.log" "runs/$name" $touched
  # last: while the pid file exists the job is not done (`halt` and `collect` wait for its status line and tarball)
  [ "$(cat "$lease/running.pid" 2>/dev/null)" = "$pid" ] && rm -f "$lease/running.pid"
}

gpu_matches() {  # gpu_matches CONDITION: PATTERN or !PATTERN against the GPU name in machine.txt's first line
  local gpu; gpu=$(head -n 1 "$lease/machine.txt" 2>/dev/null)
  if [[ $1 == '!'* ]]; then ! grep -qE -- "${1#!}" <<< "$gpu"; else grep -qE -- "$1" <<< "$gpu"; fi
}

runner() {
  local i=0 line name background condition
  while :; do
    line=$(sed -n "$((i + 1))p" "$lease/queue")
    [ -z "$line" ] || [ -e "$lease/halt" ] && { sleep 2; continue; }
    i=$((i + 1)); name=${line%%|*}; background=; condition=
    [[ $name == *'&' ]] && { background=1; name=${name%&}; }
    [[ $name == *@* ]] && { condition=${name#*@}; name=${name%%@*}; }
    if [ -n "$condition" ] && ! gpu_matches "$condition"; then
      echo "$name skipped: the GPU is not @$condition" >> "$lease/status"
      echo "$(date -u +%H:%M:%S) skip $name (@$condition)" >> "$lease/runner.log"; continue
    fi
    echo "$(date -u +%H:%M:%S) start $name" >> "$lease/runner.log"
    if [ -n "$background" ]; then run_job "$name" "${line#*|}" & else run_job "$name" "${line#*|}"; fi
  done
}

case ${1:-} in
  start)
    mkdir -p "$lease"/{logs,done,runs,code} "$out" && touch "$lease/status"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    tar -xf .gpu/code.tar -C "$lease/code"
    for snapshot in .gpu/code_*.tar; do  # other commits (e.g. a before/after smoke): $lease/code_<name>
      [ -e "$snapshot" ] || continue
      dir=$lease/$(basename "$snapshot" .tar); mkdir -p "$dir"; tar -xf "$snapshot" -C "$dir"
    done
    unpack_data "$repo/.gpu" "$DATA"
    cp "$2" "$lease/queue"
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
      cat "$lease/code/COMMIT"; } | tee "$lease/machine.txt"
    setsid bash "$0" runner < /dev/null > "$lease/runner.out" 2>&1 &
    shift 2; exec bash "$0" collect "$@"
    ;;
  runner) runner ;;
  add) echo "$2" >> "$lease/queue" ;;
  next)  # after the jobs already started or skipped (one "start" / "skip" line each in runner.log), before the rest
    started=$(grep -cE ' (start|skip) ' "$lease/runner.log" 2>/dev/null); started=${started:-0}
    if [ "$started" -eq 0 ]; then sed -i "1i $2" "$lease/queue"; else sed -i "${started}a $2" "$lease/queue"; fi ;;
  halt)
    touch "$lease/halt"
    for _ in 1 2 3 4 5; do  # a job the runner was starting as the flag appeared is ended too
      [ -e "$lease/running.pid" ] && kill -TERM "$(cat "$lease/running.pid")" 2>/dev/null; sleep 0.5
    done
    until [ ! -e "$lease/running.pid" ]; do sleep 1; done  # its status line and tarball are written
    echo "halted: no further job starts" ;;
  stop)
    [ -e "$lease/running.pid" ] && kill -TERM "$(cat "$lease/running.pid")" 2>/dev/null \
      || { echo "no running job to stop" >&2; exit 1; } ;;
  collect)
    mkdir -p "$out"; begun=$SECONDS; budget=${2:-570}
    for snapshot in .gpu/code_*.tar; do
      [ -e "$snapshot" ] || continue
      dir=$lease/$(basename "$snapshot" .tar); [ -d "$dir" ] && continue
      mkdir -p "$dir"; tar -xf "$snapshot" -C "$dir"
    done
    for pack in "$repo"/.gpu/*/data; do  # each other pack this call carried (~20 s): .gpu/NAME -> /tmp/data_NAME
      [ -d "$pack" ] && unpack_data "$(dirname "$pack")" "/tmp/data_$(basename "$(dirname "$pack")")"
    done
    # Done: every queued job has a status line (and nothing is still being unpacked for a job).
    # Or halted. Either way nothing is running: the last job's tarball is written.
    until { [ "$(wc -l < "$lease/status" 2>/dev/null || echo 0)" -ge "$(grep -c . "$lease/queue")" ] \
            || [ -e "$lease/halt" ]; } && [ ! -e "$lease/running.pid" ] \
        || [ $(( SECONDS - begun )) -ge "$budget" ]; do sleep 5; done
    n=0
    for f in "$lease"/done/*.tar.xz; do
      [ -e "$f" ] && [ ! -e "$f.sent" ] && [ $n -lt 6 ] || continue
      cp "$f" "$out/" && touch "$f.sent" && n=$((n + 1))
    done
    # A finished job's artifact (left out of its tarball), one a call (16 MB of the 64 MiB that come back):
    # the next session's tests and submission need it, and a lease can end before anyone copies it by hand.
    # Back on the dev box, `lease/keep_artifact.sh` keeps it in git history (scratch does not outlive a session).
    mkdir -p "$lease/sent"
    for ptz in "$RUNS"/*/version_*/artifact/artifact.ptz "$RUNS"/*/*/version_*/artifact/artifact.ptz; do
      job=${ptz#"$RUNS/"}; job=${job%%/*}
      [ -e "$ptz" ] && [ ! -e "$lease/sent/$job" ] && grep -q "^$job rc " "$lease/status" || continue
      cp "$ptz" "$out/${job}_artifact.ptz" && touch "$lease/sent/$job"; break
    done
    { cat "$lease/machine.txt"; echo "== status"; cat "$lease/status" 2>/dev/null; echo "== runner"; cat "$lease/runner.log"
      echo "== queue"; cat "$lease/queue"; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
      for log in "$lease"/logs/*.log; do echo "== tail $log"; tail -c 1500 "$log"; echo; done; } > "$out/lease.txt" 2>&1
    tail -c 6000 "$out/lease.txt"
    ;;
  *) echo "usage: bash lease/gpu_queue.sh start QUEUE | add 'name|cmd' | next 'name|cmd' | stop | halt | collect [SECONDS]" >&2
     exit 2 ;;
esac
