#!/usr/bin/env bash
# The main job on its embedded default: installs what is missing, builds, and runs
# `hetmix train` end to end: profile this machine as a two-device cluster, plan, launch the
# workers and train gpt-mini on the bundled corpus. `--device`, `--single` or `--resume` select
# the single-process trainer instead.
# Arguments are passed to `hetmix train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release -j"$(nproc)" >/dev/null
case " $* " in
  *" --cluster "*|*" --device "*|*" --single "*|*" --resume "*) exec ./build/release/hetmix train "$@" ;;
  *) exec ./build/release/hetmix train --cluster local "$@" ;;
esac
