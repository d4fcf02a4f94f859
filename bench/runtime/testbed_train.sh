#!/usr/bin/env bash
# Training on a 2-pool network-namespace testbed (scripts/testbed.sh): `hetmix train --cluster
# --netns` profiles, plans (the planner prices the shaped link between the pools), trains across
# the namespaces, and reports predicted vs measured step time and utilization against the
# measured bound (each device type training alone).
#   BUILD=build/release bench/runtime/testbed_train.sh
# Knobs (environment): MODEL=gpt-mini STEPS=10 BATCH=16 TYPES=cpu,cpu-half (pool 0, pool 1)
# INTRA=800mbit INTER=80mbit (per host; inter-pool 10x slower), OUT=out-testbed. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/release}
MODEL=${MODEL:-gpt-mini} STEPS=${STEPS:-10} BATCH=${BATCH:-16} TYPES=${TYPES:-cpu,cpu-half}
INTRA=${INTRA:-800mbit} INTER=${INTER:-80mbit} OUT=${OUT:-out-testbed}
name="tbt$(( $$ % 100000 ))"
trap 'scripts/testbed.sh down --name "$name" >/dev/null 2>&1' EXIT
mkdir -p "$OUT"
scripts/testbed.sh up --name "$name" --pools 2 --hosts 1 --types "$TYPES" --intra-rate "$INTRA" \
  --inter-rate "$INTER" --out "$OUT/testbed-cluster.json"
echo "# load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
"$BUILD/hetmix" train --cluster "$OUT/testbed-cluster.json" --netns --model "$MODEL" --steps "$STEPS" \
  --global-batch "$BATCH" --measure-bound --sample 0 --out "$OUT"
