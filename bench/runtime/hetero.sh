#!/usr/bin/env bash
# Heterogeneous training on this machine against its upper bound, all measured in one run.
#
# Two unlike workers: `cpu` (one OpenBLAS thread) and `cpu-half` (one OpenBLAS thread that
# emulates a chip half as fast: device option slow=2). Each trains the model alone (its
# standalone throughput); their sum is the upper bound of mixing them. hetmix profiles both,
# plans the mixed cluster, and runs the plan with one worker per device. The three runs are
# repeated `rounds` times, interleaved, so that a change in the machine's load hits all three
# alike; each round's utilization (mixed / sum of standalone) and measured bubble are printed,
# then the median, with the plan's layout (micro-batches m per replica, stages).
#
#   bench/runtime/hetero.sh [hetmix executable] [model] [global batch] [steps] [rounds]
# defaults: build/release/hetmix, L4,C256,NH4,V256,T128, 24, 6, 3
set -euo pipefail
hetmix=${1:-build/release/hetmix}
model=${2:-L4,C256,NH4,V256,T128}
gb=${3:-24}
steps=${4:-6}
rounds=${5:-3}
hetmix=$(readlink -f "$hetmix")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/hm-hetero-XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
IFS=, read -r L C NH V T <<<"$(echo "$model" | tr -d 'LCNHVT')"

cat >cluster.json <<EOF
{"version": 1, "name": "local-mixed",
 "device_types": [
  {"name": "cpu", "backend": "cpu:threads=1", "peak_flops": {"fp32": 1e11}, "memory_bytes": 4e9, "memory_bandwidth": 1e10},
  {"name": "cpu-half", "backend": "cpu:threads=1,slow=2", "peak_flops": {"fp32": 5e10}, "memory_bytes": 4e9, "memory_bandwidth": 1e10}],
 "hosts": [{"name": "localhost", "count": 1, "devices": [{"type": "cpu", "count": 1}, {"type": "cpu-half", "count": 1}],
            "host_link": {"bandwidth": 5e9, "latency": 5e-6}}]}
EOF
cat >model.json <<EOF
{"version": 1, "name": "bench", "dtype": "fp32", "config": {"arch": "gpt2", "L": $L, "C": $C, "NH": $NH, "V": $V, "T": $T}}
EOF
cat >train.json <<EOF
{"version": 1, "global_batch": $gb, "micro_batch_sizes": [1, 2, 4], "precision": "fp32"}
EOF

"$hetmix" profile --cluster cluster.json --model model.json --train train.json -o profile.json --reps 3 >profile.log 2>&1
"$hetmix" plan --cluster cluster.json --model model.json --train train.json --profile profile.json -o plan.json \
  --top 1 >plan.log 2>&1
read -r mb layout < <(python3 "$here/hetero_stats.py" layout plan.json)
micro_total=$((gb / mb))
tok_step=$((gb * T))

echo "model $model, global batch $gb x $T tokens, $steps steps per run; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-6s %12s %12s %12s %12s %8s %8s\n" round "cpu tok/s" "half tok/s" "bound" "mixed" "util" "bubble"
utils=()
for r in $(seq 1 "$rounds"); do
  # standalone: each worker alone trains the same global batch (micro-batch mb, gb/mb micro-batches)
  for dev in "cpu:threads=1" "cpu:threads=1,slow=2"; do
    d=r$r-alone-${dev//[:=,]/_}
    "$hetmix" launch -n 1 -- "$hetmix" worker --model "$model" --batch "$mb" --micro "$micro_total" \
      --device "$dev" --steps "$steps" --data-dir "$work/data" --out "$d" --quiet >"$d.log" 2>&1
  done
  "$hetmix" launch --plan plan.json -- --steps "$steps" --data-dir "$work/data" --out "r$r-mixed" --quiet \
    >"r$r-mixed.log" 2>&1
  read -r c h b m u bu < <(python3 "$here/hetero_stats.py" round "$tok_step" "r$r")
  printf "%-6s %12.0f %12.0f %12.0f %12.0f %7.1f%% %7.1f%%\n" "$r" "$c" "$h" "$b" "$m" "$u" "$bu"
  utils+=("$u")
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$here/hetero_stats.py" summary plan.json "$mb" "$layout" "${utils[@]}"
