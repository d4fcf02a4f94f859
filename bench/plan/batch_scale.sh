#!/usr/bin/env bash
# Planner time and peak memory against the global batch (docs/plan.md, section 6): the 10,240-
# device example, micro-batch size 1, global batch 1e3 .. 1e9 (the largest docs/spec.md allows),
# each `hetmix plan` measured with /usr/bin/time -v.
#   bench/plan/batch_scale.sh [build-dir] [cluster.json] [model.json]
# Prints: global batch, wall seconds, peak RSS (MB), predicted step and tokens/s of the best plan.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/release}
cluster=${2:-examples/mixed-10240-3types.json}
model=${3:-examples/llama2-70b.json}
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j2 --target hetmix_cli >/dev/null
[ -x /usr/bin/time ] || { echo "batch_scale.sh: needs /usr/bin/time (GNU time)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%14s %9s %12s %16s %14s\n' global_batch wall_s peak_rss_MB predicted_step_s tokens_per_s
for g in 1000 1000000 100000000 1000000000; do
  sed -e "s/\"global_batch\": *[0-9]*/\"global_batch\": $g/" \
      -e 's/"micro_batch_sizes": *\[[^]]*\]/"micro_batch_sizes": [1]/' \
      examples/train-default.json > "$work/train.json"
  /usr/bin/time -v "$build/hetmix" plan --cluster "$cluster" --model "$model" \
      --train "$work/train.json" --top 1 > "$work/out.txt" 2> "$work/time.txt"
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, a, ":"); s = 0;
                      for (i = 1; i <= n; i++) s = s * 60 + a[i]; print s}' "$work/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2 / 1024}' "$work/time.txt")
  step=$(sed -n 's/^predicted: step \([0-9.]*\) s, \([0-9]*\) tokens.*/\1 \2/p' "$work/out.txt")
  printf '%14s %9s %12s %16s %14s\n' "$g" "$wall" "$rss" ${step:-? ?}
done
