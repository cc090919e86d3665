#!/usr/bin/env bash
# Build .gpu/upstream/ (git-ignored), the harness bench/profile_step.py times upstream's model step with: the
# 04-14 record's train_gpt.py, read from a mirror of openai/parameter-golf (its code never enters this repo), and
# an FA2 stand-in for the FA3 module it imports (flash_attn_interface), through lit_golf's torch_varlen kernel,
# as the 2026-11-24 side by side did. Carry .gpu/upstream and copy it to /tmp/upstream on the box.
# Usage: bash lease/build_upstream_harness.sh [MIRROR_GIT_DIR]   (default: the search tool's fetch location)
set -euo pipefail
mirror=${1:-/work/.mirror/openai+parameter-golf/repo}
record=records/track_10min_16mb/2026-04-14_MultiPhaseGlobalSGD_PhasedTTT/train_gpt.py
mkdir -p .gpu/upstream
git -C "$mirror" show "HEAD:$record" > .gpu/upstream/train_gpt.py
cat > .gpu/upstream/flash_attn_interface.py <<'PY'
"""FA2 stand-in for upstream's FA3 import (benchmark harness only): torch's varlen attention via lit_golf.

The backend is chosen here, at import: choosing it inside upstream's compiled forward would trace its log call,
which Dynamo's fullgraph refuses."""
from lit_golf.attention import select_backend

_VARLEN = select_backend("torch_varlen", "cuda")


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=True,
                           window_size=(-1, -1)):
    return _VARLEN(q[None], k[None], v[None], cu_seqlens=cu_seqlens_q, max_seqlen=max_seqlen_q)[0]


def flash_attn_func(q, k, v, causal=True):
    return _VARLEN(q, k, v, cu_seqlens=None, max_seqlen=q.size(1))
PY
echo "built .gpu/upstream from $mirror at $(git -C "$mirror" rev-parse --short HEAD)"
