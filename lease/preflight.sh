#!/usr/bin/env bash
# Parse every `lit_golf.cli` command of lease queues here, before a lease spends device time on a typo: each
# runs with `--print_config` (flag names, types and config files checked; not value ranges, which the
# configs' dataclasses check when a run starts; nothing trained), with the queue's variables ($RUNS, $LEASE,
# $DATA, $ART, $a) pointed at a scratch folder. One line per job; exit 1 if any failed.
#   bash lease/preflight.sh lease/ttt_budget.queue [QUEUE ...]
set -uo pipefail
py=${PYTHON:-.venv/bin/python}; scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
failed=0
for queue in "$@"; do
  [ -f "$queue" ] || { echo "$queue: no such queue file" >&2; failed=1; continue; }
  while IFS= read -r line; do
    [ -z "$line" ] && continue
    name=${line%%|*}; command=${line#*|}
    cli=$(grep -o 'python3 -m lit_golf\.cli [^;|&]*' <<< "$command" | head -1)
    [ -z "$cli" ] && { echo "$queue $name: no lit_golf.cli command (not checked)"; continue; }
    args=${cli#python3 -m lit_golf.cli }
    args=$(sed -e "s#\$RUNS#$scratch/runs#g; s#\$LEASE#$scratch#g; s#\$DATA#$scratch/data#g" \
               -e "s#\$ART#$scratch/artifact.ptz#g; s#\$a\b#$scratch/artifact.ptz#g" <<< "$args")
    # shellcheck disable=SC2086  # the queue line's own words
    if message=$("$py" -m lit_golf.cli $args --print_config 2>&1 > /dev/null); then
      echo "$queue $name: parses"
    else
      echo "$queue $name: FAILS: $(tail -1 <<< "$message")"; failed=1
    fi
  done < "$queue"
done
exit $failed
