#!/usr/bin/env bash
# Both prediction checks of this machine with default settings, one after the other, with the
# load average around them (quiet rerun: run it alone on the machine):
#   1. bench/runtime/predict.sh: predicted vs measured step of five plans (one data-parallel
#      with overlapped gradient sync), medians over the runs;
#   2. bench/runtime/predict_spread.sh: one plan's prediction on five fresh profiles.
#   bench/runtime/predict_check.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/release}
echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
bench/runtime/predict.sh "$build"
echo
bench/runtime/predict_spread.sh "$build"
echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)"
