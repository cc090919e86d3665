#!/usr/bin/env bash
# Download wheels for the GPU box (CPython 3.12, x86-64 Linux, no dependencies: it has torch and its stack)
# into DIR: the one platform list the lease carries use (build_lease_carry.sh, build_fa4_carry.sh).
# Usage: bash lease/download_wheels.sh DIR [pip download arguments: --pre, requirements ...]
set -euo pipefail
dir=$1; shift
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$dir" "$@"
