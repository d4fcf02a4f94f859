#!/usr/bin/env bash
# Soak benchmark of automatic restarts (hetmix launch --max-restarts): N trials per fault kind on
# gpt-mini, each injecting one fault (HETMIX_FAULT, src/runtime/heartbeat.h) at a random rank and
# step (seeded; the seed is printed) into a pipeline of 2-4 workers checkpointing every 2 steps.
# Per kind: runs that finished, detection time (fault -> failed rank named; goal <= 3 s),
# recovery time (fault -> the next completed step; goal <= 15 s median), work lost (completed
# steps that had to be redone: the steps completed when the fault struck less the step the
# restart resumed from; goal <= one checkpoint interval, 0 when resumed from memory right after
# a snapshot) and where the restart resumed from (memory or disk), median and worst, next to
# the uninterrupted run's time. Fail-slow: a worker slowed 3x
# at a random step (steps until named, goal <= 5) and clean runs (false reports, goal 0).
#   bench/runtime/restart_soak.sh [--short] [hetmix] [trials per kind, 20] [workers 2|3|4, 2] [kinds] [steps, 10]
#   kinds: any of "kill stop hang ckptkill kill2 slow clean" (default: all)
#   --short: 2 trials per kind (a check that it works, not a figure; other arguments still apply)
# HETMIX_BENCH_SEED fixes the seed; HETMIX_BENCH_DIR the work folder; extra worker options in
# HETMIX_SOAK_WORKER_ARGS [--batch 1 --seq 64] (a shorter step than gpt-mini's T=256), e.g.
# "--batch 1 --seq 64 --mem-every 1" for snapshots into memory every step.
# The load average is printed before and after: compare figures of quiet runs only.
set -euo pipefail
cd "$(dirname "$0")/../.."
short=0
if [ "${1:-}" = "--short" ]; then
  short=1
  shift
fi
hetmix=$(realpath "${1:-build/release/hetmix}")
trials=${2:-$([ $short = 1 ] && echo 2 || echo 20)}
workers=${3:-2}
kinds=${4:-"kill stop hang ckptkill kill2 slow clean"}
steps=${5:-10}
[ "$steps" -ge 6 ] || { echo "restart_soak: steps must be >= 6 (10 or more for the slow kind)" >&2; exit 2; }
seed=${HETMIX_BENCH_SEED:-$(date +%s)}
work=$(realpath -m "${HETMIX_BENCH_DIR:-build/restart-soak}")
extra=${HETMIX_SOAK_WORKER_ARGS:-"--batch 1 --seq 64"}
case $workers in
  2) layout="--stages 0,4,8" ;;
  3) layout="--stages 0,3,6,8" ;;
  4) layout="--stages 0,2,4,6,8" ;;
  *) echo "restart_soak: workers must be 2, 3 or 4" >&2; exit 2 ;;
esac
[ -x "$hetmix" ] || { echo "restart_soak: no hetmix at $hetmix (build it first)" >&2; exit 2; }
rm -rf "$work"
mkdir -p "$work"
echo "restart_soak: seed $seed (HETMIX_BENCH_SEED=$seed repeats it), $trials trials per kind, $workers workers," \
  "gpt-mini, $steps steps, checkpoint every 2, worker options: $extra; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
RANDOM=$seed

# run <dir> <fault or ""> -> exit status; files <dir>.err, <dir>.events, <dir>.time
run() {
  local dir=$1 fault=$2 t0 t1 rc=0
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  HETMIX_FAULT=$fault "$hetmix" launch -n "$workers" --max-restarts 3 --timeout 900 --events "$dir.events" -- \
    "$hetmix" worker --model gpt-mini $layout $extra --steps "$steps" --data-dir "$work/data" --quiet \
    --dump "$dir" --ckpt-every 2 --keep 2 >"$dir.out" 2>"$dir.err" || rc=$?
  t1=$(date +%s.%N)
  echo "$t0 $t1" >"$dir.time"
  return $rc
}

run "$work/reference" "" || { echo "restart_soak: the uninterrupted run failed:" >&2; cat "$work/reference.err" >&2; exit 1; }

for kind in $kinds; do
  for t in $(seq 1 "$trials"); do
    rank=$((RANDOM % workers))
    step=$((2 + RANDOM % (steps - 3)))
    case $kind in
      kill | stop | hang) fault="$kind:rank=$rank:step=$step" ;;
      ckptkill) fault="ckptkill:rank=$rank:step=$(((step / 2) * 2))" ;;
      kill2) other=$(((rank + 1 + RANDOM % (workers - 1)) % workers))
        fault="kill:rank=$rank:step=$step;kill:rank=$other:step=$step" ;;
      # after the 3 baseline steps that follow the warm-up step, with 5 steps left to be named in
      slow) fault="slow:rank=$rank:step=$((4 + RANDOM % (steps > 9 ? steps - 8 : 1))):factor=3" ;;
      clean) fault="" ;;
      *) echo "restart_soak: unknown kind $kind" >&2; exit 2 ;;
    esac
    dir="$work/$kind-$t"
    run "$dir" "$fault" || true
    echo "$kind $t $fault" >"$dir.fault"
  done
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work" "$kinds" "$trials" <<'PY'
import json, os, re, statistics, sys
work, kinds, trials = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
def span(d):
    a, b = open(d + ".time").read().split()
    return float(b) - float(a)
def med_worst(v):
    return ("%.2f" % statistics.median(v), "%.2f" % max(v)) if v else ("-", "-")
ref = span(os.path.join(work, "reference"))
print("uninterrupted run: %.1f s" % ref)
print("%-9s %8s %14s %14s %12s %7s %10s %s" % ("kind", "finished", "detect s", "recover s", "lost steps", "memory",
                                                 "run/ref", "(median / worst; stop, hang: the deadline applied)"))
for kind in kinds:
    det, rec, lost, ratio, done, named, notes, dl, mem = [], [], [], [], 0, 0, [], [], 0
    for t in range(1, trials + 1):
        d = os.path.join(work, "%s-%d" % (kind, t))
        if not os.path.exists(d + ".time"): continue
        err = open(d + ".err", errors="replace").read()
        evs = [json.loads(l) for l in open(d + ".events")] if os.path.exists(d + ".events") else []
        ok = bool(evs) and evs[-1]["status"] == "ok"
        done += ok
        ratio.append(span(d) / ref)
        if kind == "slow":
            m = re.search(r"fail-slow: rank (\d+) .* at step (\d+)", err)
            f = re.search(r"slow:rank=(\d+):step=(\d+)", open(d + ".fault").read())
            if m and f and m.group(1) == f.group(1):
                named += 1
                lost.append(int(m.group(2)) - int(f.group(2)))  # steps from the slowdown to the report
            continue
        if kind == "clean":
            named += err.count("fail-slow:")
            continue
        fault = [float(x) for x in re.findall(r"hetmix fault: \S+ rank \d+ step (?:\d+) at ([0-9.]+)", err)]
        fstep = [int(x) for x in re.findall(r"hetmix fault: \S+ rank \d+ step (\d+) at", err)]
        if not fault or len(evs) < 2: notes.append("trial %d: no fault or no restart" % t); continue
        f0, a0, a1 = min(fault), evs[0], evs[1]
        det.append(a0["failed_wall_s"] - f0)
        m = re.search(r"deadline ([0-9.]+) s", a0.get("message", ""))
        if m: dl.append(float(m.group(1)))  # the silence or watchdog deadline it was judged against
        if a1["first_step_wall_s"] > 0: rec.append(a1["first_step_wall_s"] - f0)
        # work lost: completed steps redone. A fault "at step K" strikes before step K+1 starts (the
        # loop's index K: K steps done; ckptkill: before the snapshot of step K, K steps done)
        resume = a0["resume_step"] if a0["resume_step"] >= 0 else 0
        lost.append(max(0, min(fstep) - resume))
        mem += a0.get("resume_from") == "memory"
    if kind == "slow":
        print("%-9s %8s %29s %12s %7s %10s  named %d of %d; steps from slowdown to report (goal <= 5)" %
              (kind, "%d/%d" % (done, trials), "", "%s / %s" % med_worst(lost), "", "%.2f" % statistics.median(ratio) if ratio else "-", named, trials))
        continue
    if kind == "clean":
        print("%-9s %8s %29s %12s %7s %10s  fail-slow reports (false positives): %d in %d runs" %
              (kind, "%d/%d" % (done, trials), "", "", "", "%.2f" % statistics.median(ratio) if ratio else "-", named, trials))
        continue
    print("%-9s %8s %14s %14s %12s %7s %10s %s" % (kind, "%d/%d" % (done, trials), "%s / %s" % med_worst(det),
          "%s / %s" % med_worst(rec), "%s / %s" % med_worst(lost), "%d/%d" % (mem, len(lost)),
          "%.2f" % statistics.median(ratio) if ratio else "-",
          " deadline %s / %s s" % med_worst(dl) if dl else ""))
    for n in notes: print("          " + n)
# every run without a slowed worker is also a clean run for fail-slow
fp = runs = 0
for f in os.listdir(work):
    if f.endswith(".err") and not f.startswith("slow-"):
        runs += 1
        fp += open(os.path.join(work, f), errors="replace").read().count("fail-slow:")
print("fail-slow reports in all %d runs without a slowed worker (false positives): %d" % (runs, fp))
PY
