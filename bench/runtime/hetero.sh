#!/usr/bin/env bash
# Heterogeneous training on this machine against its upper bound, all measured in one run.
#
# Two unlike workers: `cpu` (one OpenBLAS thread) and `cpu-half` (one OpenBLAS thread that
# emulates a chip half as fast: device option slow=2). Each trains the model alone first (its
# standalone throughput); their sum is the upper bound of mixing them. Then hetmix profiles both,
# plans the mixed cluster, and runs the plan with one worker per device. Prints the three
# throughputs, utilization = mixed / (sum of standalone), the plan's layout (micro-batches m,
# stages, replicas) and the measured bubble.
#
#   bench/runtime/hetero.sh [hetmix executable] [model] [global batch] [steps]
# defaults: build/release/hetmix, L4,C256,NH4,V256,T128, 24, 6
set -euo pipefail
hetmix=${1:-build/release/hetmix}
model=${2:-L4,C256,NH4,V256,T128}
gb=${3:-24}
steps=${4:-6}
hetmix=$(readlink -f "$hetmix")
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

# mean step time over metrics.jsonl without the first step
mean_step() { python3 -c '
import json,sys
v=[json.loads(l)["step_time_s"] for l in open(sys.argv[1])][1:]
print(sum(v)/len(v))' "$1"; }

"$hetmix" profile --cluster cluster.json --model model.json --train train.json -o profile.json --reps 3 >profile.log 2>&1
"$hetmix" plan --cluster cluster.json --model model.json --train train.json --profile profile.json -o plan.json \
  --top 1 >plan.log 2>&1
read -r mb layout < <(python3 -c '
import json
p=json.load(open("plan.json"))
cls=p["classes"]
desc=" + ".join("%dx[%s] m=%d" % (c["replicas"], "+".join("%s:%d-%d" % (s["device_type"], s["layers"][0], s["layers"][1]-1) for s in c["stages"]), c["micro_batches"]) for c in cls)
print(p["micro_batch"], desc)')
micro_total=$((gb / mb))

# standalone: each worker alone trains the same global batch (micro-batch mb, gb/mb micro-batches)
for dev in "cpu:threads=1" "cpu:threads=1,slow=2"; do
  d=alone-${dev//[:=,]/_}
  "$hetmix" launch -n 1 -- "$hetmix" worker --model "$model" --batch "$mb" --micro "$micro_total" \
    --device "$dev" --steps "$steps" --data-dir "$work/data" --out "$d" --quiet >"$d.log" 2>&1
done
"$hetmix" launch --plan plan.json -- --steps "$steps" --data-dir "$work/data" --out mixed --quiet >mixed.log 2>&1

tok_step=$((gb * T))
s_cpu=$(mean_step alone-cpu_threads_1/metrics.jsonl)
s_half=$(mean_step alone-cpu_threads_1_slow_2/metrics.jsonl)
s_mix=$(mean_step mixed/metrics.jsonl)
python3 - "$tok_step" "$s_cpu" "$s_half" "$s_mix" "$layout" "$mb" <<'EOF'
import json, sys
tok, s_cpu, s_half, s_mix = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
layout, mb = sys.argv[5], sys.argv[6]
t_cpu, t_half, t_mix = tok / s_cpu, tok / s_half, tok / s_mix
bound = t_cpu + t_half
p = json.load(open("plan.json"))
busy = [json.loads(l)["stage_busy_s"] for l in open("mixed/metrics.jsonl")][1:]
steps = [json.loads(l)["step_time_s"] for l in open("mixed/metrics.jsonl")][1:]
nst = len(busy[0])
bubble = 1 - sum(sum(b) for b in busy) / (nst * sum(steps))
print("%-34s %12s %10s" % ("run", "tokens/s", "vs bound"))
print("%-34s %12.0f %9.1f%%" % ("cpu alone (cpu:threads=1)", t_cpu, 100 * t_cpu / bound))
print("%-34s %12.0f %9.1f%%" % ("cpu-half alone (slow=2, emulated)", t_half, 100 * t_half / bound))
print("%-34s %12.0f %9s" % ("upper bound (sum of the two)", bound, "100.0%"))
print("%-34s %12.0f %9.1f%%" % ("mixed, the planner's plan", t_mix, 100 * t_mix / bound))
print("plan: micro-batch %s, %s; predicted %.0f tokens/s, bubble %.1f%%" % (mb, layout, p["predicted"]["tokens_per_s"], 100 * p["predicted"]["bubble_fraction"]))
print("measured bubble (1 - compute / (stages x step)) over replica 0's stages: %.1f%%" % (100 * bubble))
EOF
