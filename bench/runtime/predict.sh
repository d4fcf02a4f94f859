#!/usr/bin/env bash
# Predicted vs measured step time of several plans on this machine (the planner on a profile
# measured here, against training the same layout with hetmix launch + hetmix worker).
#   bench/runtime/predict.sh [build-dir] [-- predict_bench options, e.g. --runs 3 --steps 10]
# Prints a table per plan: predicted, measured, error; per stage predicted and measured compute.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build/release
if [ $# -gt 0 ] && [ "$1" != "--" ]; then build=$1; shift; fi
[ "${1:-}" = "--" ] && shift
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j2 --target hetmix_cli predict_bench >/dev/null
work=${HETMIX_BENCH_DIR:-$build/predict-bench}
mkdir -p "$work"
exec "$build/bench/predict_bench" --hetmix "$build/hetmix" --dir "$work" --data-dir "${HETMIX_DATA_DIR:-$build/data}" "$@"
