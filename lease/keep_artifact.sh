#!/usr/bin/env bash
# Keep an artifact a lease brought back (16 MB, git-ignored as *.ptz) in git history, not in the tree: one commit
# adds it under bench/artifacts/, the next removes it, so a new checkout can restore it (`git show COMMIT:PATH`)
# while device calls, which carry the tree, do not carry it. Prints the restore command and adds a line to
# bench/artifacts/README.md (committed with the removal).
#   bash lease/keep_artifact.sh PTZ NAME "what it is (config, box, seed, code commit)"
set -euo pipefail
ptz=$1 name=$2 what=$3
[ -f "$ptz" ] || { echo "$ptz: no such file; pass the artifact the lease brought back" >&2; exit 1; }
[[ $name =~ ^[A-Za-z0-9_.-]+\.ptz$ ]] || { echo "$name: name it <words>.ptz (letters, digits, . _ -)" >&2; exit 1; }
path=bench/artifacts/$name
# In the tree now or ever: one name, one artifact. Captured, not piped into `grep -q`: grep quits at the first
# line, git log can then die of SIGPIPE, and under pipefail that made the test false (a name kept twice, seen in CI).
if [ -n "$(git log --all --format=%h -- "$path")" ]; then
  echo "$path was kept before (git log -- $path); choose another name" >&2; exit 1
fi
git diff --cached --quiet || { echo "the index holds staged changes; commit or unstage them first" >&2; exit 1; }
sha=$(sha256sum "$ptz" | cut -d' ' -f1)
mkdir -p bench/artifacts
cp "$ptz" "$path"
git add -f "$path"
git commit -q -m "bench/artifacts/$name: kept in history ($what; sha256 $sha)"
added=$(git rev-parse --short HEAD)
git rm -q --cached "$path" && rm "$path"
echo "| \`git show $added:$path\` | $sha | $what |" >> bench/artifacts/README.md
git add bench/artifacts/README.md
git commit -q -m "bench/artifacts/$name: out of the tree again (restore: git show $added:$path)"
echo "kept: git show $added:$path > FILE   (sha256 $sha)"
