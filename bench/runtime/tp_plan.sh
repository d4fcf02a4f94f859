#!/usr/bin/env bash
# Acceptance of a tensor-parallel heterogeneous plan on this machine, end to end: profile the
# cluster's device types (concurrently, as the workers run), plan, launch the plan, and print the
# planner's predicted step time next to the measured one (median over the steps after the first)
# with the error, per stage the predicted and measured busy time (forward + backward of every
# micro-batch) and the measured tensor-parallel allreduce time, and the load average around it.
#   bench/runtime/tp_plan.sh [build-dir] [-- --model examples/llama-mini.json
#       --cluster examples/local-tp-mini.json --train examples/train-tp.json --steps 4 --reps 3]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build/release
if [ $# -gt 0 ] && [ "$1" != "--" ]; then build=$1; shift; fi
[ "${1:-}" = "--" ] && shift
model=examples/llama-mini.json cluster=examples/local-tp-mini.json train=examples/train-tp.json steps=4 reps=3
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --cluster) cluster=$2; shift 2 ;;
    --train) train=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) echo "tp_plan.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j2 --target hetmix_cli >/dev/null
hetmix=$build/hetmix
work=${HETMIX_BENCH_DIR:-$build/tp-plan-bench}
data_dir=${HETMIX_DATA_DIR:-$build/data}
rm -rf "$work" && mkdir -p "$work"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
"$hetmix" profile --cluster "$cluster" --model "$model" --train "$train" --concurrent --reps "$reps" \
  -o "$work/profile.json" >"$work/profile.log" 2>&1 || { cat "$work/profile.log" >&2; exit 1; }
"$hetmix" plan --cluster "$cluster" --model "$model" --train "$train" --profile "$work/profile.json" \
  -o "$work/plan.json" >"$work/plan.log" 2>&1 || { cat "$work/plan.log" >&2; exit 1; }
# a llama-mini step takes tens of seconds here, and several times its prediction under a heavy
# load: the first stage may wait longer than hmcomm's default 30 s deadline for the first gradient
# to come back, and a step longer than the watchdog's 5 x prediction is not a hang
HETMIX_TIMEOUT_MS=${HETMIX_TIMEOUT_MS:-600000} \
  "$hetmix" launch --watchdog 1800 --plan "$work/plan.json" -- --steps "$steps" --data-dir "$data_dir" --out "$work/run" --quiet \
  >"$work/launch.log" 2>&1 || { cat "$work/launch.log" >&2; exit 1; }
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$work" "$model" "$cluster" "$load_before" "$load_after" <<'PY'
import json, statistics, sys
work, model, cluster, load0, load1 = sys.argv[1:6]
plan = json.load(open(f"{work}/plan.json"))
rows = [json.loads(l) for l in open(f"{work}/run/metrics.jsonl")]
timed = rows[1:] if len(rows) > 1 else rows  # the first step warms up
c0 = plan["classes"][0]
layout = " + ".join(f"{s['device_type']}/tp{s['tp']} layers [{s['layers'][0]},{s['layers'][1]})" for s in c0["stages"])
max_tp = max(s["tp"] for c in plan["classes"] for s in c["stages"])
print(f"# model {model}, cluster {cluster}; load average before {load0}, after {load1}")
print(f"# plan: {len(plan['classes'])} class(es); class 0: {c0['replicas']} x [{layout}] m={c0['micro_batches']}")
if max_tp < 2:
    print("# note: the planner chose no tensor parallelism for this cluster and model")
pred = plan["predicted"]["step_time_s"]
meas = statistics.median(r["step_time_s"] for r in timed)
print(f"{'stage':<30}{'predicted busy (s)':>20}{'measured busy (s)':>19}{'error':>9}{'TP allreduce (s)':>18}")
for s, st in enumerate(c0["stages"]):
    pb = st["predicted"]["busy_s"]
    mb = statistics.median(r["stage_busy_s"][s] for r in timed)
    tpa = statistics.median(r.get("stage_tp_allreduce_s", [0] * len(c0["stages"]))[s] for r in timed)
    name = f"{s}: {st['device_type']}/tp{st['tp']}"
    print(f"{name:<30}{pb:>20.4f}{mb:>19.4f}{mb / pb - 1:>+9.1%}{tpa:>18.4f}")
print(f"step time: predicted {pred:.4f} s, measured {meas:.4f} s (median of steps 2-{len(rows)}), "
      f"error {meas / pred - 1:+.1%} (goal: within 5%)")
PY
