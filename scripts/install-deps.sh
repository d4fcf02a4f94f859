#!/usr/bin/env bash
# Installs the Debian packages that hetmix's build, tests and benchmarks use.
# libdnnl-dev (oneDNN): the cpu backend's bf16 matmuls (OpenBLAS 0.3.21 exports no sbgemm).
# Slurm and munge (about 5 MB, for the srun launch test) are included unless HETMIX_WITH_SLURM=0.
# OpenCL: the ICD loader and headers, CLBlast, and pocl (OpenCL on this CPU) for the opencl
# backend and its tests. hipcc (AMD's HIP compiler, about 40 s to install) for the check that the
# cuda backend's sources also compile as HIP; the CUDA toolkit itself is not a Debian package
# (CMake finds it under /usr/local/cuda).
# Idempotent: packages already present are not touched, apt-get update runs only when something is missing.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config git
  libopenblas-dev libdnnl-dev libcmocka-dev libcjson-dev libzstd-dev liblz4-dev libssl-dev libxxhash-dev
  openmpi-bin libopenmpi-dev
  clang libclang-rt-14-dev
  python3 python3-numpy python3-torch
  fortunes fortunes-min
  procps psmisc
  ocl-icd-opencl-dev opencl-c-headers pocl-opencl-icd libclblast-dev
  hipcc
)
if [ "${HETMIX_WITH_SLURM:-1}" = 1 ]; then
  pkgs+=(slurm-wlm slurmctld slurmd slurm-client munge)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
