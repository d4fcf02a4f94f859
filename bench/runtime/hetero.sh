#!/usr/bin/env bash
# Heterogeneous training on this machine against its upper bound, all measured in one run.
#
# Two unlike workers: `cpu` (one OpenBLAS thread) and `cpu-half` (one OpenBLAS thread that
# emulates a chip half as fast: device option slow=2). Each trains the model alone (its
# standalone throughput); their sum is the upper bound of mixing them. Two bounds are measured:
# isolated (each worker alone on the machine, one after the other) and concurrent (both train
# alone at the same time, so each sees the other's load on the shared caches and memory, as in
# the mixed run). hetmix profiles both devices, plans the mixed cluster, and runs the plan with
# one worker per device. The runs are repeated `rounds` times, interleaved, so that a change in
# the machine's speed hits them alike; each round's utilization (mixed / bound) and measured
# bubble are printed, then the medians, with the plan's layout (micro-batches m per replica).
#
#   bench/runtime/hetero.sh [hetmix executable] [model] [global batch] [steps] [rounds]
# defaults: build/release/hetmix, L4,C256,NH4,V256,T128, 48, 6, 3 (48 sequences: micro-batch
# counts fine enough that a split can match the devices' speed ratio)
set -euo pipefail
hetmix=${1:-build/release/hetmix}
model=${2:-L4,C256,NH4,V256,T128}
gb=${3:-48}
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

# both device types timed at once (as the mixed run loads the host), 5 rounds each
"$hetmix" profile --cluster cluster.json --model model.json --train train.json -o profile.json --reps 5 \
  --concurrent >profile.log 2>&1
"$hetmix" plan --cluster cluster.json --model model.json --train train.json --profile profile.json -o plan.json \
  --top 1 >plan.log 2>&1
read -r mb layout < <(python3 "$here/hetero_stats.py" layout plan.json)
micro_total=$((gb / mb))
tok_step=$((gb * T))

echo "model $model, global batch $gb x $T tokens, $steps steps per run; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-6s %10s %10s %10s %10s %10s %10s %10s %9s %9s %8s   %8s %9s %9s  %s\n" round "cpu" "half" "isolated" "cpu conc" "half conc" "concurrent" "mixed" "util iso" "util conc" "bubble" "rebal" "util iso" "util conc" "split"
utils=()
alone() { # device steps out
  "$hetmix" launch -n 1 -- "$hetmix" worker --model "$model" --batch "$mb" --micro "$micro_total" \
    --device "$1" --steps "$2" --data-dir "$work/data" --out "$3" --quiet >"$3.log" 2>&1
}
for r in $(seq 1 "$rounds"); do
  # isolated: each worker alone on the machine trains the same global batch (micro-batch mb)
  alone "cpu:threads=1" "$steps" "r$r-alone-cpu"
  alone "cpu:threads=1,slow=2" "$steps" "r$r-alone-half"
  # concurrent: both train alone at the same time (no communication): what each device gives
  # while the other one loads the host too, as in the mixed run; the faster one runs more steps
  # so that it outlasts the slower one, and only its steps within the slower one's run count
  fast_steps=$(python3 "$here/hetero_stats.py" outlast "$steps" "r$r-alone-cpu" "r$r-alone-half")
  alone "cpu:threads=1" "$fast_steps" "r$r-conc-cpu" &
  alone "cpu:threads=1,slow=2" "$steps" "r$r-conc-half"
  wait
  "$hetmix" launch --plan plan.json -- --steps "$steps" --data-dir "$work/data" --out "r$r-mixed" --quiet \
    >"r$r-mixed.log" 2>&1
  # the same plan with --rebalance: the runtime moves micro-batches between the replicas from
  # their measured pace (the split it ends with is printed below the table)
  "$hetmix" launch --plan plan.json -- --steps "$steps" --data-dir "$work/data" --out "r$r-rebal" --quiet \
    --rebalance >"r$r-rebal.log" 2>&1
  read -r c h b cc hc cb m ui uc bu mr ri rc rs < <(python3 "$here/hetero_stats.py" round "$tok_step" "r$r")
  printf "%-6s %10.0f %10.0f %10.0f %10.0f %10.0f %10.0f %10.0f %8.1f%% %8.1f%% %7.1f%%   %8.0f %8.1f%% %8.1f%%  %s\n" \
    "$r" "$c" "$h" "$b" "$cc" "$hc" "$cb" "$m" "$ui" "$uc" "$bu" "$mr" "$ri" "$rc" "$rs"
  utils+=("$ui/$uc/$ri/$rc")
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tokens/s; isolated = cpu + half, each alone on the machine; concurrent = both alone at the same time;"
echo "util = mixed / bound; bubble = idle share of replica 0's last stage in the mixed run;"
echo "rebal = the plan run with --rebalance (split: micro-batches per replica in its last step)"
python3 "$here/hetero_stats.py" summary plan.json "$mb" "$layout" "${utils[@]}"
