#!/usr/bin/env bash
# The GPU checks of the cuda backend in one run, for a machine with an NVIDIA GPU, the CUDA
# toolkit and PyTorch (about 5-8 minutes on a 16-core H200 machine). Prints every figure:
#   1. the GPU, its driver and the toolkit (nvidia-smi, nvcc --version)
#   2. a Release build with the cuda backend for this GPU (CMAKE_CUDA_ARCHITECTURES=native)
#   3. `ctest -L gpu`: every kernel against ref within the derived bounds, gradients, async
#      copies, the PyTorch oracle on the cuda backend, and the pipeline with a cuda stage beside
#      a cpu stage (TensorFloat-32 off there, so the f32 bounds hold)
#   4. a bitwise rerun: gpt-mini trained twice for 20 steps on cuda, final checkpoints compared
#   5. GPT-2 124M, B16 T1024, tokens/s against PyTorch eager on the same GPU in the same command,
#      TF32 (both sides) and strict f32 (both sides), with peak memory side by side
#   6. the mixed job: `hetmix train` on this machine's local default (the GPU and host cores),
#      predicted against measured step time and utilization against the measured bound
# usage: scripts/device-check.sh [BUILD_DIR]       (default build/gpu)
# Steps run on after a failure; the exit status is the number of failed steps (0: all passed).
# A dry run of the script's own logic on a machine without a GPU (the gpu tests then skip):
#   HETMIX_CUDA_ARCH=90 HETMIX_CHECK_DEVICE=cpu HETMIX_CHECK_MODEL=tiny HETMIX_CHECK_BATCH=2 \
#     HETMIX_CHECK_RERUN_MODEL=tiny HETMIX_CHECK_MIXED=0 scripts/device-check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
build=${1:-build/gpu}
jobs=$(nproc)
failed=0
t0=$(date +%s)
dev=${HETMIX_CHECK_DEVICE:-cuda}         # the device of steps 4 and 5
model=${HETMIX_CHECK_MODEL:-gpt2-124m}   # the model of step 5
batch=${HETMIX_CHECK_BATCH:-16}
rerun_model=${HETMIX_CHECK_RERUN_MODEL:-gpt-mini}
python=${HETMIX_PYTHON:-python3}
if ! "$python" -c 'import torch' 2>/dev/null && [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; fi
export HETMIX_PYTHON=$python
step() { printf '\n==== %s (%d s so far)\n' "$1" $(($(date +%s) - t0)); }
check() { if ! "$@"; then echo "FAILED: $*"; failed=$((failed + 1)); fi; }

step "1. GPU, driver and toolkit"
nvidia-smi || echo "nvidia-smi: not available"
nvcc=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
"$nvcc" --version | tail -2 || echo "nvcc: not found"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' ||
  echo "PyTorch: not importable"

step "2. build ($build, Release, cuda backend on)"
if ! { cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DHETMIX_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
         -DCMAKE_CUDA_ARCHITECTURES="${HETMIX_CUDA_ARCH:-native}" >/dev/null &&
       cmake --build "$build" -j"$jobs" >/dev/null; }; then
  echo "FAILED: the build; nothing else can run"
  exit 1
fi
hetmix=$build/hetmix
echo "built $hetmix"

step "3. ctest -L gpu"
check ctest --test-dir "$build" -L gpu --output-on-failure

step "4. bitwise rerun on $dev ($rerun_model, 20 steps, twice)"
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
rerun() {
  for r in a b; do
    "$hetmix" train --single --device "$dev" --model "$rerun_model" --steps 20 --warmup 5 --log-every 10 \
      --out "$data/$r" --keep 1 || return 1
  done
  local fa fb
  fa=$(ls "$data"/a/ckpt-*.hmc | tail -1) fb=$(ls "$data"/b/ckpt-*.hmc | tail -1)
  # the 256-byte header differs by the run's random identity (docs/model.md); the tensor table,
  # every tensor and the trailer must be identical
  if cmp <(tail -c +257 "$fa") <(tail -c +257 "$fb"); then
    echo "rerun: the final checkpoints' tensors are bitwise identical ($fa, $fb)"
  else
    return 1
  fi
}
check rerun

step "5. $model B$batch against PyTorch eager on $dev"
for tf32 in 1 0; do
  echo "-- HETMIX_CUDA_TF32=$tf32 (PyTorch: allow_tf32 the same)"
  check env HETMIX_CUDA_TF32=$tf32 "$build/bench_model_train" --model "$model" --batch "$batch" \
    --device "$dev" --torch-device "${dev%%:*}" --steps 20 --warmup 3 --rounds 2 --threads 4
done
echo "-- bf16-mixed: not measured (the cuda backend trains in f32/TF32 only so far)"

if [ "${HETMIX_CHECK_MIXED:-1}" = 1 ]; then
  step "6. mixed job: the local default on this machine (cuda + cpu), measured bound"
  check "$hetmix" train --steps 20 --measure-bound --out "$data/mixed"
fi

step "done"
echo "failed steps: $failed; total $(($(date +%s) - t0)) s"
exit "$failed"
