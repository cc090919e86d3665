#!/usr/bin/env bash
# Will a device call take this carry? The device tool copies the tracked tree, untracked files git does not
# ignore, and the carried paths, 64 MiB in all, and refuses the call otherwise (2026-12-07: 65.8 MB of carry
# plus the 3.5-MB tree). Prints the three sums and exits 1 when they exceed 64 MiB.
#   bash lease/carry_size.sh .gpu/data .gpu/code.tar .whl .gpu/upstream
set -euo pipefail
limit=$((64 * 1024 * 1024))
bytes() { if [ $# -eq 0 ]; then echo 0; else du -cb "$@" | tail -1 | cut -f1; fi; }
mapfile -d '' tree < <(git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -f "$f" ] && printf '%s\0' "$f"; done)
for path in "$@"; do [ -e "$path" ] || { echo "$path: no such file or folder to carry" >&2; exit 2; }; done
tree_bytes=$(bytes "${tree[@]}")
carry_bytes=$(bytes "$@")
total=$((tree_bytes + carry_bytes))
printf 'tree %d B + carry %d B = %d B of %d (64 MiB): ' "$tree_bytes" "$carry_bytes" "$total" "$limit"
if [ "$total" -le "$limit" ]; then echo "fits ($((limit - total)) B left)"; else echo "too big by $((total - limit)) B"; exit 1; fi
