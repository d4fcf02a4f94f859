#!/usr/bin/env bash
# Tensor parallelism on this machine: one stage of a model with C >= 512 trained by one worker on
# 2 cores (TP1, cpu:threads=2) and by two tensor-parallel workers on 1 core each (TP2,
# cpu:threads=1, hmcomm over shared memory), side by side: median step time, the speed-up, and
# the share of TP2's step spent in the tensor-parallel allreduces (metrics' stage_tp_allreduce_s).
#   bench/runtime/tp.sh [build-dir] [-- --model L2,C512,NH8,V256,T128 --steps 8 --batch 4 --rounds 1]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build/release
if [ $# -gt 0 ] && [ "$1" != "--" ]; then build=$1; shift; fi
[ "${1:-}" = "--" ] && shift
model=L2,C512,NH8,V256,T128 steps=8 batch=4 rounds=1
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "tp.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j2 --target hetmix_cli >/dev/null
hetmix=$build/hetmix
work=${HETMIX_BENCH_DIR:-$build/tp-bench}
data_dir=${HETMIX_DATA_DIR:-$build/data}
mkdir -p "$work"
run() { # name workers extra-args...
  local name=$1 n=$2; shift 2
  rm -rf "$work/$name"
  "$hetmix" launch -n "$n" -- "$hetmix" worker --model "$model" --data-dir "$data_dir" --steps "$steps" \
    --batch "$batch" --warmup 1 --out "$work/$name" --quiet "$@"
}
echo "# model $model, batch $batch, $steps steps (the first is not timed), $rounds round(s), load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do # alternate, so load changes hit both
  run "tp1-$r" 1 --device cpu:threads=2
  run "tp2-$r" 2 --tp 2 --device cpu:threads=1
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def read(name):
    steps, tp = [], []
    for r in range(1, rounds + 1):
        lines = [json.loads(l) for l in open(f"{work}/{name}-{r}/metrics.jsonl")][1:]
        steps += [l["step_time_s"] for l in lines]
        tp += [sum(l.get("stage_tp_allreduce_s", [0])) for l in lines]
    return statistics.median(steps), statistics.median(tp)
s1, _ = read("tp1")
s2, a2 = read("tp2")
print(f"{'layout':<28}{'step (s)':>10}{'TP allreduce (s)':>18}{'share':>8}")
print(f"{'TP1: 1 worker x 2 threads':<28}{s1:>10.4f}{'-':>18}{'-':>8}")
print(f"{'TP2: 2 workers x 1 thread':<28}{s2:>10.4f}{a2:>18.4f}{a2 / s2:>7.1%}")
print(f"speed-up TP2 / TP1: {s1 / s2:.2f}x (goal >= 1.6x)")
PY
