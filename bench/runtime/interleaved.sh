#!/usr/bin/env bash
# Interleaved 1F1B on this machine: predicted vs measured step time, beside plain 1F1B.
#   bench/runtime/interleaved.sh [build-dir] [steps]
# This machine as two one-thread cpu devices that cannot hold the model alone (so the plan is a
# 2-stage pipeline) and cannot share a tensor-parallel stage (two "hosts"), a small GPT, global
# batch 8 of micro-batch 1 (m = 8). One profile (`hetmix profile --concurrent`: both workers'
# load), then `hetmix plan --max-chunks 1` (plain 1F1B, 2 stages) and `--max-chunks 2`
# (interleaved, 2 stages x 2 chunks), each launched with `hetmix launch --plan` right after
# the other. Prints per plan the predicted step (plan.json), the measured one (mean of the
# metrics' step_time_s after the first step) and the error; then interleaved / plain of both,
# and the load average (the figures mean little on a loaded machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/release}
steps=${2:-12}
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j2 --target hetmix_cli >/dev/null
hm=$build/hetmix
work=${HETMIX_BENCH_DIR:-$build/interleaved-bench}
mkdir -p "$work"
cat > "$work/cluster.json" <<'JSON'
{"version": 1, "name": "local-2cpu-pipe",
 "note": "This machine as two one-thread cpu devices in two hosts (no tensor parallelism across them), each with too little memory for the whole model: a 2-stage pipeline.",
 "device_types": [{"name": "cpu", "backend": "cpu:threads=1", "peak_flops": {"fp32": 100e9},
   "memory_bytes": 30000000, "memory_bandwidth": 10e9, "efficiency": 0.7}],
 "hosts": [{"name": "localhost", "count": 2, "devices": [{"type": "cpu", "count": 1}],
   "host_link": {"bandwidth": 6e9, "latency": 2e-6}, "nic": {"bandwidth": 6e9, "latency": 2e-6},
   "hostnames": ["localhost", "localhost"]}]}
JSON
cat > "$work/model.json" <<'JSON'
{"version": 1, "name": "bench-ilv", "dtype": "fp32", "config": {"arch": "gpt2", "L": 6, "C": 128, "NH": 4, "V": 256, "T": 128}}
JSON
cat > "$work/train.json" <<'JSON'
{"version": 1, "global_batch": 8, "micro_batch_sizes": [1], "precision": "fp32"}
JSON
data=${HETMIX_DATA:-$work/data.tok}
if [ ! -f "$data" ]; then # a deterministic text corpus of byte tokens
  python3 -c "import random; random.seed(1); w='the cat sat on a mat and ran far away'.split(); print(' '.join(random.choice(w) for _ in range(40000)))" > "$work/corpus.txt"
  "$hm" prepare "$work/corpus.txt" -o "$data" >/dev/null
fi
"$hm" profile --cluster "$work/cluster.json" --model "$work/model.json" --train "$work/train.json" --concurrent \
  --no-links -o "$work/profile.json" > "$work/profile.log" 2>&1
for v in 1 2; do
  "$hm" plan --cluster "$work/cluster.json" --model "$work/model.json" --train "$work/train.json" \
    --profile "$work/profile.json" --max-chunks $v --top 1 -o "$work/plan-v$v.json" > "$work/plan-v$v.log" 2>&1
  rm -rf "$work/run-v$v"
  "$hm" launch --plan "$work/plan-v$v.json" -- --data "$data" --steps "$steps" --out "$work/run-v$v" --quiet \
    > "$work/run-v$v.log" 2>&1
done
python3 - "$work" <<'PY'
import json, os, sys
w = sys.argv[1]
res = {}
for v in (1, 2):
    plan = json.load(open(f"{w}/plan-v{v}.json"))
    cls = plan["classes"][0]
    pred = plan["predicted"]["step_time_s"]
    steps = [json.loads(l)["step_time_s"] for l in open(f"{w}/run-v{v}/metrics.jsonl") if l.strip()][1:]
    meas = sum(steps) / len(steps)
    res[v] = (pred, meas)
    name = "interleaved 1F1B" if cls.get("chunks", 1) > 1 else "plain 1F1B"
    print(f"{name:17s} chunks {cls.get('chunks', 1)}  m={cls['micro_batches']}  predicted {pred:.4f} s  "
          f"measured {meas:.4f} s (mean of {len(steps)} steps after the first)  error {100 * (meas / pred - 1):+.1f}%")
(p1, m1), (p2, m2) = res[1], res[2]
print(f"interleaved / plain: predicted {p2 / p1:.3f}, measured {m2 / m1:.3f}")
print("load average (1, 5, 15 min): %.2f %.2f %.2f on %d cores" % (*os.getloadavg(), os.cpu_count()))
PY
