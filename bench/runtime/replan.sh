#!/usr/bin/env bash
# Elastic re-plan (docs/runtime.md, "Elastic re-plan"; issue acceptance 4): a 3-device plan
# (three one-thread cpu workers as three device types whose memory holds the model only split,
# profiled together, planned with that profile) loses rank 1's device for good: its worker is
# killed at step K1 and again, on the restart, at step K2 (--drop-after 2), so the launcher
# re-plans on the 2 devices left with the same spec files and profile, re-shards the newest
# checkpoint and finishes. Printed side by side with an uninterrupted 3-device run of the same
# plan, in the same command: the loss of every step (the re-planned run's and the difference),
# the step-to-step change of the uninterrupted run (its noise), and the new plan's predicted
# step time against the measured one (mean over the steps after the re-plan, from metrics.jsonl).
#   bench/runtime/replan.sh [hetmix] [steps, 30] [model L,C,NH,V,T: L6,C128,NH4,V256,T64] [memory bytes per device, 2e7]
# HETMIX_BENCH_DIR: the work folder [build/replan-bench].
set -euo pipefail
cd "$(dirname "$0")/../.."
hetmix=$(realpath "${1:-build/release/hetmix}")
steps=${2:-30}
shape=${3:-L6,C128,NH4,V256,T64}
mem=${4:-2e7}
work=$(realpath -m "${HETMIX_BENCH_DIR:-build/replan-bench}")
[ -x "$hetmix" ] || { echo "replan: no hetmix at $hetmix (build it first)" >&2; exit 2; }
[ "$steps" -ge 12 ] || { echo "replan: steps must be >= 12" >&2; exit 2; }
k1=$((steps / 3 + 1)) k2=$((steps / 2 + 1)) every=$((steps / 10 > 2 ? steps / 10 : 2))
rm -rf "$work" && mkdir -p "$work" && cd "$work"
IFS=, read -r L C NH V T <<<"$shape"
cat >model.json <<J
{"version": 1, "name": "replan-bench", "dtype": "fp32",
 "config": {"arch": "gpt2", "L": ${L#L}, "C": ${C#C}, "NH": ${NH#NH}, "V": ${V#V}, "T": ${T#T}}}
J
echo '{"version": 1, "global_batch": 8, "micro_batch_sizes": [1, 2, 4], "precision": "fp32"}' >train.json
types="" devs=""
for t in a b c; do
  types+="${types:+,}{\"name\": \"cpu-$t\", \"backend\": \"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11}, \"memory_bytes\": $mem, \"memory_bandwidth\": 1e10, \"efficiency\": 0.5}"
  devs+="${devs:+,}{\"type\": \"cpu-$t\", \"count\": 1}"
done
echo "{\"version\": 1, \"name\": \"three-cpus\", \"device_types\": [$types], \"hosts\": [{\"name\": \"localhost\", \"count\": 1, \"devices\": [$devs], \"host_link\": {\"bandwidth\": 5e9, \"latency\": 5e-6}}]}" >cluster.json
cat "$OLDPWD"/docs/*.md >text.txt && "$hetmix" prepare text.txt -o data.tok >/dev/null
"$hetmix" profile --cluster cluster.json --model model.json --train train.json -o profile.json --reps 2 --concurrent >profile.out 2>&1
"$hetmix" plan --cluster cluster.json --model model.json --train train.json --profile profile.json -o plan.json --top 1 >plan.out
grep -E "^  1 " plan.out | sed 's/^/3-device plan: /'
wargs=(--data data.tok --steps "$steps" --warmup 3 --ckpt-every "$every" --quiet)
"$hetmix" launch --plan plan.json -- "${wargs[@]}" --dump ref-ckpt --out ref-out >ref.out 2>ref.err
HETMIX_FAULT="kill:rank=1:step=$k1;kill:rank=1:step=$k2:attempt=1" "$hetmix" launch --plan plan.json \
  --max-restarts 4 --drop-after 2 --profile profile.json -- "${wargs[@]}" --dump drop-ckpt --out drop-out >drop.out 2>drop.err ||
  { echo "replan: the re-planned run failed:" >&2; tail -20 drop.err >&2; exit 1; }
grep -E "re-plan 1: dropped" drop.err | sed 's/^hetmix: launch: //'
python3 - "$steps" "$(grep -o 'resuming from [^ ]* (step [0-9]*' drop.err | tail -1 | grep -o '[0-9]*$')" <<'PY'
import json, statistics, sys
steps, resume = int(sys.argv[1]), int(sys.argv[2] or 0)
def read(p):
    d = {}
    for l in open(p):
        j = json.loads(l)
        if "loss" in j and "step" in j: d[j["step"]] = j  # a step a restart repeated: its last line
    return d
ref, got = read("ref-out/metrics.jsonl"), read("drop-out/metrics.jsonl")
noise = [abs(ref[s + 1]["loss"] - ref[s]["loss"]) for s in range(1, steps) if s in ref and s + 1 in ref]
print("step  loss 3 devices   loss re-planned   difference   (re-planned on 2 devices from step %d)" % resume)
for s in range(1, steps + 1):
    a, b = ref[s]["loss"], got[s]["loss"]
    mark = "  <- re-plan" if s == resume + 1 else ""
    print("%4d  %14.6f  %16.6f  %+11.2e%s" % (s, a, b, b - a, mark))
diff = max(abs(got[s]["loss"] - ref[s]["loss"]) for s in range(resume + 1, steps + 1))
print("largest |difference| after the re-plan: %.3g; step-to-step change of the uninterrupted run: median %.3g, min %.3g"
      % (diff, statistics.median(noise), min(noise)))
plan = json.load(open("replan1/plan.json"))
pred = plan["predicted"]["step_time_s"]
after = [got[s]["step_time_s"] for s in range(resume + 2, steps + 1)]  # the first step after a start is not timed
ref_t = [ref[s]["step_time_s"] for s in range(2, steps + 1)]
p3 = json.load(open("plan.json"))["predicted"]["step_time_s"]
print("3-device plan: predicted step %.4f s, measured %.4f s (median of %d steps), ratio %.2f"
      % (p3, statistics.median(ref_t), len(ref_t), statistics.median(ref_t) / p3))
print("2-device plan: predicted step %.4f s, measured %.4f s (median of %d steps after the re-plan), ratio %.2f"
      % (pred, statistics.median(after), len(after), statistics.median(after) / pred))
PY
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
