#!/usr/bin/env bash
# Parse every `lit_golf.cli` and `bench/train_step_levers.py` command of lease queues before a lease spends device
# time on a typo (lease/preflight.py: all in one process, with the queues' variables pointed at a scratch folder).
# One line per job; exit 1 if any failed.
#   bash lease/preflight.sh lease/ttt_budget.queue [QUEUE ...]
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-$here/../.venv/bin/python}" "$here/preflight.py" "$@"
