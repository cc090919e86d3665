#!/usr/bin/env bash
# Build the two-part FA4 (CuTe DSL) carry that lease/install_fa4.sh installs on the GPU box, in the git-ignored
# .fa4a/ (first call) and .fa4b/ (second call to the warm box). The CUTLASS DSL cu13 libraries wheel is 92 MB,
# over the 64 MiB one call carries, so its contents travel as one tar.xz split in two; every other wheel (cp312,
# no dependencies: the box has torch 2.11 cu130) goes in .fa4b/.
# Usage (repo root; needs the package index): bash lease/build_fa4_carry.sh
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
download() { bash lease/download_wheels.sh "$work/wheels" "$@"; }
download --pre flash-attn-4==4.0.0b40  # FA4 is only published as betas
download nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 \
  nvidia-cutlass-dsl-libs-cu13==4.8.1 "apache-tvm-ffi>=0.1.11,<0.2" torch-c-dlpack-ext "quack-kernels>=0.5.3" \
  einops cuda-bindings cuda-pathfinder protobuf
rm -rf .fa4a .fa4b && mkdir -p .fa4a .fa4b "$work/libs"
libs=$(ls "$work"/wheels/nvidia_cutlass_dsl_libs_cu13-*.whl)
python3 -m zipfile -e "$libs" "$work/libs"
tar -C "$work/libs" -cf - . | xz -6 -T0 > "$work/libs_cu13.tar.xz"
split -n 2 -d "$work/libs_cu13.tar.xz" .fa4a/libs_cu13.tar.xz.part  # part00 ...
mv .fa4a/libs_cu13.tar.xz.part01 .fa4b/                             # ... and part01: cat .fa4a/* .fa4b/* in order
rm "$libs" && mv "$work"/wheels/*.whl .fa4b/
du -sh .fa4a .fa4b
