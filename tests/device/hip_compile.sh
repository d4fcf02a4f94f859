#!/bin/bash
# Compiles the cuda backend's sources as HIP for gfx90a (AMD MI250) with hipcc: the kernels
# always, the host side (cuda.c, cuda_ops.c) when hipBLAS's headers are installed too (Debian 12
# ships hipcc but not hipBLAS). Warnings are errors. Exit 77 (skipped) without hipcc.
#   usage: hip_compile.sh SOURCE_DIR
# Install hipcc on Debian: apt-get install hipcc
set -euo pipefail
src=${1:?usage: hip_compile.sh SOURCE_DIR}
if ! command -v hipcc >/dev/null 2>&1; then
  echo "SKIP: hipcc is not installed (Debian: apt-get install hipcc)"
  exit 77
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flags=(--offload-arch=gfx90a -DHETMIX_HIP -I"$src/src" -I"$src/include" -Wall -Wextra -Werror)
hipcc "${flags[@]}" -x hip -c "$src/src/device/cuda_kernels.cu" -o "$out/kernels.o"
echo "hip: cuda_kernels.cu compiled for gfx90a"
if echo '#include <hipblas/hipblas.h>' | hipcc -DHETMIX_HIP -x c -E - >/dev/null 2>&1; then
  for f in cuda.c cuda_ops.c; do
    hipcc "${flags[@]}" -D_GNU_SOURCE -std=c11 -x c -c "$src/src/device/$f" -o "$out/$f.o"
    echo "hip: $f compiled"
  done
else
  echo "hip: cuda.c and cuda_ops.c not compiled: hipBLAS headers (hipblas/hipblas.h) are not installed"
fi
