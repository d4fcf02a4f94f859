#!/usr/bin/env bash
# How far one plan's predicted step moves between fresh profiles: bench/runtime/predict.sh's
# setup, no training; the plan predicted on K profiles taken one after another, each beside the
# uncertainty it claims (`hetmix plan` prints the same from a profile's spread).
#   bench/runtime/predict_spread.sh [build-dir] [-- predict_bench options]
# Defaults: 5 profiles, plan "2 stages uneven" (--only NAME picks another, --profiles K).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build/release
if [ $# -gt 0 ] && [ "$1" != "--" ]; then build=$1; shift; fi
[ "${1:-}" = "--" ] && shift
exec bench/runtime/predict.sh "$build" -- --profiles 5 --only "2 stages uneven" "$@"
