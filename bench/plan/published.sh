#!/usr/bin/env bash
# The planner's compute cost model against published training throughput (docs/plan.md,
# "Validation against published runs"): builds and runs bench_plan_published on
# bench/plan/published_mfu.csv (sources in its header).
#   bench/plan/published.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/release}
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j2 --target bench_plan_published >/dev/null
"$build/bench/plan/bench_plan_published" bench/plan/published_mfu.csv
