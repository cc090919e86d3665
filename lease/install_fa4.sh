#!/usr/bin/env bash
# Install FlashAttention-4 (CuTe DSL) on the GPU box from carried files, into a --target site dir.
# Its CUTLASS DSL libraries wheel is 92 MB (66 MB as tar.xz), over the 64 MiB a device call carries, so
# the tar.xz travels split in two git-ignored folders over two calls to a warm box (.fa4a/ first,
# then .fa4b/ with the other part and the small wheels: flash_attn_4, nvidia_cutlass_dsl(+libs_base),
# apache_tvm_ffi, torch_c_dlpack_ext, quack_kernels, einops, cuda_bindings, protobuf).
# Usage: bash lease/install_fa4.sh SITE_DIR   (prints the PYTHONPATH to use)
set -euo pipefail
site=$1
# pip --target skips folders that already exist, so the wheels go first and the tar merges into them.
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .fa4b/*.whl
cat .fa4a/libs_cu13.tar.xz.part* .fa4b/libs_cu13.tar.xz.part* | xz -dc -T8 | tar -x -C "$site"
# The DSL's .pth puts dsl_packages on sys.path; a --target dir on PYTHONPATH does not run .pth files.
echo "PYTHONPATH=$site:$site/nvidia_cutlass_dsl/dsl_packages"
PYTHONPATH=$site:$site/nvidia_cutlass_dsl/dsl_packages:${PYTHONPATH:-} python3 -c "import flash_attn.cute as m; print('flash_attn.cute from', m.__file__)"
