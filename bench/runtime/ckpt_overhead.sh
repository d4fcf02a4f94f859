#!/usr/bin/env bash
# Checkpoint overhead: the same 2-stage pipeline job with periodic checkpoints every N steps
# (snapshot to host memory, ring copy to the peer's memory folder, background write of the
# shard and the manifest), the same with snapshots into memory only every M steps between them
# (--mem-every M: snapshot, ring copy, own and peer copy in tmpfs, no disk), and without any,
# side by side. Step time = (elapsed at the last step -
# elapsed at the first) / (steps - 1) from rank 0's metrics.jsonl, so it includes everything done
# between steps (the snapshot, the ring exchange, the progress exchange), not only the step.
#
# Made for a noisy machine: the two kinds of run are interleaved in rounds, in alternating order
# (none-with, with-none, ...: a drift of the machine's speed within a round hits both alike and
# cancels over two rounds), each round gives the ratios with/none, and each figure is the median
# ratio over the rounds with its spread (min, max and interquartile range), next to the medians
# of the step times; the load average is printed before and after.
#
#   bench/runtime/ckpt_overhead.sh [--short] [hetmix executable] [model] [steps] [every] [rounds] [folder] [mem every]
# defaults: build/release/hetmix, L4,C256,NH4,V256,T128, 41, 10, 7, a new folder under /tmp, 1
# (the disk checkpoints go there: pick a folder on the file system to measure). --short: 21
# steps, 3 rounds (a check that it works, not a figure).
set -euo pipefail
short=0
if [ "${1:-}" = "--short" ]; then
  short=1
  shift
fi
hetmix=${1:-build/release/hetmix}
model=${2:-L4,C256,NH4,V256,T128}
steps=${3:-$([ $short = 1 ] && echo 21 || echo 41)}
every=${4:-10}
rounds=${5:-$([ $short = 1 ] && echo 3 || echo 7)}
mem_every=${7:-1}
hetmix=$(readlink -f "$hetmix")
work=$(mktemp -d "${6:-/tmp}/hm-ckpt-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
IFS=, read -r L C NH V T <<<"$(echo "$model" | tr -d 'LCNHVT')"
mid=$(((L + 2) / 2))

run() { # name extra-args...
  local name=$1
  shift
  rm -rf "$work/$name"
  "$hetmix" launch -n 2 -- "$hetmix" worker --model "$model" --batch 4 --micro 4 --stages "0,$mid,$((L + 2))" \
    --steps "$steps" --data-dir "$work/data" --out "$work/$name" --dump "$work/$name/stages" --quiet "$@" \
    >"$work/$name.log" 2>&1 || { cat "$work/$name.log" >&2; exit 1; }
  python3 - "$work/$name/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
span = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
# the training thread's checkpoint work between the steps measured (ckpt_s: after the previous step)
print(span / (len(rows) - 1), sum(r.get("ckpt_s", 0) for r in rows[1:]) / span)
EOF
}

echo "model $model, 2 stages, batch 4 x 4 micro-batches, $steps steps, checkpoint every $every," \
  "memory snapshots every $mem_every, $rounds rounds; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-6s %-14s %12s %12s %12s %8s %8s %10s %10s\n" round order "none s/step" "ckpt s/step" "+mem s/step" ckpt mem \
  "ckpt work" "+mem work"
nones=()
withs=()
mems=()
shares=()
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then
    order=none-ckpt-mem
    read -r none _ < <(run none)
    read -r with wshare < <(run ckpt --ckpt-every "$every" --keep 2)
    read -r mem mshare < <(run mem --ckpt-every "$every" --keep 2 --mem-every "$mem_every")
  else
    order=mem-ckpt-none
    read -r mem mshare < <(run mem --ckpt-every "$every" --keep 2 --mem-every "$mem_every")
    read -r with wshare < <(run ckpt --ckpt-every "$every" --keep 2)
    read -r none _ < <(run none)
  fi
  nones+=("$none")
  withs+=("$with")
  mems+=("$mem")
  shares+=("$wshare,$mshare")
  printf "%-6s %-14s %12.4f %12.4f %12.4f %8.4f %8.4f %9.2f%% %9.2f%%\n" "$r" "$order" "$none" "$with" "$mem" \
    "$(python3 -c "print($with / $none)")" "$(python3 -c "print($mem / $none)")" \
    "$(python3 -c "print(100 * $wshare)")" "$(python3 -c "print(100 * $mshare)")"
done
echo "ckpt: --ckpt-every $every; mem: the same plus --mem-every $mem_every; ratios to none; work: the share of the"
echo "run the training thread spent on checkpoint work between steps (metrics.jsonl ckpt_s: snapshot, ring copy,"
echo "memory copies, progress exchange), a figure the machine's speed drift between runs does not blur"
ls "$work/ckpt/stages" | sed 's/^/kept: /' | tr '\n' ' '
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "${nones[*]}" "${withs[*]}" "${mems[*]}" "$every" "$mem_every" "${shares[*]}" <<'EOF'
import statistics, sys
sh = [tuple(float(v) for v in x.split(",")) for x in sys.argv[6].split()]
print(f"checkpoint work, median share of the run: every {sys.argv[4]} steps {100 * statistics.median(s[0] for s in sh):.2f}%, "
      f"plus memory snapshots every {sys.argv[5]} {100 * statistics.median(s[1] for s in sh):.2f}%")
none = [float(x) for x in sys.argv[1].split()]
with_ = [float(x) for x in sys.argv[2].split()]
mem = [float(x) for x in sys.argv[3].split()]
print(f"step time, median of {len(none)} rounds: none {statistics.median(none):.4f} s, checkpoint every {sys.argv[4]} "
      f"steps {statistics.median(with_):.4f} s, plus memory snapshots every {sys.argv[5]} {statistics.median(mem):.4f} s")
for name, xs, goal in (("checkpoint/none", with_, "; goal <= +3%"), ("with memory snapshots/none", mem, "")):
    r = sorted(w / n for n, w in zip(none, xs))
    m = statistics.median(r)
    q = statistics.quantiles(r, n=4, method="inclusive") if len(r) >= 2 else [r[0], r[0], r[0]]
    print(f"ratio {name} per round: median {m:.4f} ({(m - 1) * 100:+.2f}%{goal}), min {r[0]:.4f}, "
          f"max {r[-1]:.4f}, interquartile range {q[0]:.4f}..{q[2]:.4f}")
EOF
