#!/usr/bin/env bash
# Checkpoint overhead: the same 2-stage pipeline job with periodic checkpoints every N steps
# (snapshot to host memory, ring copy to the peer's memory folder, background write of the
# shard and the manifest) and without, side by side, interleaved in rounds so that a change of
# the machine's speed hits both alike. Step time = (elapsed at the last step - elapsed at the
# first) / (steps - 1) from rank 0's metrics.jsonl, so it includes everything done between
# steps (the snapshot, the ring exchange, the progress exchange), not only the step itself.
#
#   bench/runtime/ckpt_overhead.sh [hetmix executable] [model] [steps] [every] [rounds] [folder]
# defaults: build/release/hetmix, L4,C256,NH4,V256,T128, 41, 10, 3, a new folder under /tmp
# (the disk checkpoints go there: pick a folder on the file system to measure)
set -euo pipefail
hetmix=${1:-build/release/hetmix}
model=${2:-L4,C256,NH4,V256,T128}
steps=${3:-41}
every=${4:-10}
rounds=${5:-3}
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
print((rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (len(rows) - 1))
EOF
}

echo "model $model, 2 stages, batch 4 x 4 micro-batches, $steps steps, checkpoint every $every; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-6s %14s %14s %8s\n" round "none s/step" "every $every s/step" ratio
ratios=()
for r in $(seq 1 "$rounds"); do
  none=$(run none)
  with=$(run ckpt --ckpt-every "$every" --keep 2)
  ratio=$(python3 -c "print(f'{$with / $none:.4f}')")
  ratios+=("$ratio")
  printf "%-6s %14.4f %14.4f %8s\n" "$r" "$none" "$with" "$ratio"
done
ls "$work/ckpt/stages" | sed 's/^/kept: /' | tr '\n' ' '
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 -c "
import statistics, sys
r = [float(x) for x in sys.argv[1:]]
m = statistics.median(r)
print(f'step time with checkpoints every $every steps / without, median of {len(r)} rounds: {m:.4f} ({(m - 1) * 100:+.2f}%; goal <= +3%)')
" "${ratios[@]}"
