#!/usr/bin/env bash
# Tensor parallelism on this machine: one Llama stage of llama-mini's kind at C >= 512 trained
# three ways, side by side in one command (rounds alternate, so a load change hits every row):
#   TP1 x 1 thread   one worker on one device (cpu:threads=1): the baseline of the speed-up, as
#                    tensor parallelism's scaling is measured (one device against two of its kind)
#   TP2 x 1 thread   two tensor-parallel workers on two such devices (cpu:threads=1 each,
#                    hmcomm over shared memory)
#   TP1 x 2 threads  one worker on one device of 2 threads: the same two cores as TP2 in one
#                    device, shown for honesty (on 2 cores no split can beat it by much)
# It prints the median step time of each, both ratios (TP2 against each TP1) and the share of
# TP2's step spent in the tensor-parallel allreduces (metrics' stage_tp_allreduce_s).
#   bench/runtime/tp.sh [build-dir] [-- --model FILE.json|NAME --steps 8 --batch 4 --rounds 1]
# The default model is written to the work folder: llama L2 C512 NH8 kv_heads 4 ffn 1536 V256 T128.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build/release
if [ $# -gt 0 ] && [ "$1" != "--" ]; then build=$1; shift; fi
[ "${1:-}" = "--" ] && shift
model="" steps=8 batch=4 rounds=1
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
if [ -z "$model" ]; then
  model=$work/llama-stage.json
  cat >"$model" <<'JSON'
{"version": 1, "name": "llama-stage-c512", "dtype": "fp32",
 "config": {"arch": "llama", "L": 2, "C": 512, "NH": 8, "kv_heads": 4, "ffn": 1536, "V": 256, "T": 128,
            "tied_embeddings": false}}
JSON
fi
run() { # name workers extra-args...
  local name=$1 n=$2; shift 2
  rm -rf "$work/$name"
  "$hetmix" launch -n "$n" -- "$hetmix" worker --model "$model" --data-dir "$data_dir" --steps "$steps" \
    --batch "$batch" --warmup 1 --out "$work/$name" --quiet "$@"
}
echo "# model $model, batch $batch, $steps steps (the first is not timed), $rounds round(s), load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do # alternate, so load changes hit every row
  run "tp1t1-$r" 1 --device cpu:threads=1
  run "tp2t1-$r" 2 --tp 2 --device cpu:threads=1
  run "tp1t2-$r" 1 --device cpu:threads=2
done
python3 - "$work" "$rounds" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, statistics, sys
work, rounds, load = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def read(name):
    steps, tp = [], []
    for r in range(1, rounds + 1):
        lines = [json.loads(l) for l in open(f"{work}/{name}-{r}/metrics.jsonl")][1:]
        steps += [l["step_time_s"] for l in lines]
        tp += [sum(l.get("stage_tp_allreduce_s", [0])) for l in lines]
    return statistics.median(steps), statistics.median(tp)
s1, _ = read("tp1t1")
s2, a2 = read("tp2t1")
s12, _ = read("tp1t2")
print(f"{'layout':<40}{'step (s)':>10}{'TP allreduce (s)':>18}{'share':>8}")
print(f"{'TP1: 1 device x 1 thread (baseline)':<40}{s1:>10.4f}{'-':>18}{'-':>8}")
print(f"{'TP2: 2 devices x 1 thread':<40}{s2:>10.4f}{a2:>18.4f}{a2 / s2:>7.1%}")
print(f"{'TP1: 1 device x 2 threads (same 2 cores)':<40}{s12:>10.4f}{'-':>18}{'-':>8}")
print(f"speed-up TP2 / TP1 (1 device of the same kind): {s1 / s2:.2f}x (goal >= 1.6x)")
print(f"TP2 against one 2-thread device on the same cores: {s12 / s2:.2f}x")
print(f"# load after: {load}")
PY
