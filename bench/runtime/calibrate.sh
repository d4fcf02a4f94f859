#!/usr/bin/env bash
# Self-calibration, side by side: does a run's measurements fed back into the profile
# (`hetmix calibrate`) reduce the next prediction's error on the same plans?
#   bench/runtime/calibrate.sh [build-dir] [-- predict_bench options, e.g. --steps 10]
# 1. bench/runtime/predict.sh with --runs 1: profiles, plans planN.json, run 1 of each plan (with
#    its worker trace) and the prediction on its profile;
# 2. hetmix calibrate folds run 1's stage compute into that profile (calibratedN.json);
# 3. run 2 of each plan trains it again; both profiles' predictions are compared with run 2's
#    measured step (median after the first step).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build/release
if [ $# -gt 0 ] && [ "$1" != "--" ]; then build=$1; shift; fi
[ "${1:-}" = "--" ] && shift
work=${HETMIX_BENCH_DIR:-$build/calibrate-bench}
data=${HETMIX_DATA_DIR:-$build/data}
steps=8
for ((i = 1; i <= $#; i++)); do [ "${!i}" = "--steps" ] && j=$((i + 1)) && steps=${!j}; done
echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
HETMIX_BENCH_DIR=$work bench/runtime/predict.sh "$build" -- --runs 1 "$@" > "$work.predict.log" 2>&1 ||
  { echo "predict.sh failed; see $work.predict.log" >&2; exit 1; }
hetmix=$build/hetmix
# "predicted on the profile" / "... calibrated profile" / "measured" lines of hetmix calibrate
step_of() { awk -v k="$1" 'index($0, k) == 1 { print $(NF - 1) }' "$2" | head -1; }
meas_of() { awk 'index($0, "measured (median") == 1 { print $NF }' "$1"; }
printf '\n%-4s %14s %16s %8s %16s %8s\n' plan "run 2 (s)" "profile (s)" error "calibrated (s)" error
for plan in "$work"/plan[0-9].json; do
  n=$(basename "$plan" .json); n=${n#plan}
  [ -f "$work/run$n-1/trace.json" ] || { echo "plan $n: run 1 has no trace; skipped"; continue; }
  "$hetmix" calibrate --plan "$plan" --run "$work/run$n-1" --profile "$work/profile-plan$n-run1.json" \
    -o "$work/calibrated$n.json" > "$work/calibrate$n.log" 2>&1
  rm -rf "$work/run$n-2"
  "$hetmix" launch --plan "$plan" -- --quiet --steps "$steps" --data-dir "$data" --out "$work/run$n-2" \
    --trace "$work/run$n-2/trace.json" \
    > "$work/run$n-2.log" 2>&1 || { echo "plan $n: run 2 failed; see $work/run$n-2.log"; continue; }
  for p in profile calibrated; do
    prof=$work/profile-plan$n-run1.json
    [ $p = calibrated ] && prof=$work/calibrated$n.json
    "$hetmix" calibrate --plan "$plan" --run "$work/run$n-2" --profile "$prof" -o "$work/check$n-$p.json" \
      > "$work/check$n-$p.log" 2>&1 || true
  done
  meas=$(meas_of "$work/check$n-profile.log")
  a=$(step_of "predicted on the profile" "$work/check$n-profile.log")
  b=$(step_of "predicted on the profile" "$work/check$n-calibrated.log")
  awk -v n="$n" -v m="$meas" -v a="$a" -v b="$b" 'BEGIN { printf "%-4s %14.4f %16.4f %+7.1f%% %16.4f %+7.1f%%\n",
    n, m, a, 100 * (a / m - 1), b, 100 * (b / m - 1) }'
done
echo "(error = predicted / measured on run 2 - 1; calibrated = the profile scaled by run 1's measured stage compute)"
echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)"
