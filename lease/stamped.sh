#!/usr/bin/env bash
# Run a command with every output line prefixed by the seconds since launch, `[  12.3s] `, the launch clock
# that bench/compare_runs.py reads from side-by-side training logs (lit_golf's and upstream's alike).
#   bash lease/stamped.sh LOG COMMAND [ARGS ...]     # stdout + stderr -> LOG; exit status: the command's
set -uo pipefail
log=$1; shift
mkdir -p "$(dirname "$log")"
launched=$(date +%s.%N)
"$@" 2>&1 | python3 -u -c '
import sys, time
launched = float(sys.argv[1])
for line in iter(sys.stdin.buffer.readline, b""):  # line by line as it comes (no block buffering)
    sys.stdout.buffer.write(b"[%7.1fs] " % (time.time() - launched) + line)
    sys.stdout.buffer.flush()
' "$launched" > "$log"
exit "${PIPESTATUS[0]}"
