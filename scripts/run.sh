#!/usr/bin/env bash
# The main job on its embedded default: installs what is missing, builds, and runs
# `hetmix train` (gpt-mini on the bundled corpus, on this machine's devices).
# Arguments are passed to `hetmix train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release -j"$(nproc)" >/dev/null
exec ./build/release/hetmix train "$@"
