#!/usr/bin/env bash
# Training across two pools of the testbed: `hetmix plan` (analytic, so the same plan on every
# machine) puts a small GPT on a cpu in pool 0 and an emulated half-speed cpu in pool 1 as a
# two-stage pipeline; `hetmix launch --plan --cluster --netns` runs it, the activations and
# gradients crossing the shaped link between the pools; every step's loss must be finite and the
# stage checkpoints written. Exits 77 (skipped) where network namespaces cannot be made.
#   tests/testbed/test_testbed_train.sh <scripts/testbed.sh> <hetmix>
set -uo pipefail
tb=$1 hetmix=$2
name="tr$(( $$ % 1000000 ))"
work=$(mktemp -d)
trap '"$tb" down --name "$name" >/dev/null 2>&1; rm -rf "$work"' EXIT
if [ "$(id -u)" != 0 ]; then echo "SKIPPED: needs root for network namespaces and tc"; exit 77; fi
if ! "$tb" up --name "$name" --pools 2 --hosts 1 --types cpu,cpu-half --intra-rate 800mbit --inter-rate 400mbit \
     --out "$work/c.json" 2>"$work/up.err"; then
  echo "SKIPPED: cannot make the testbed here: $(tail -2 "$work/up.err")"; exit 77
fi
cat >"$work/model.json" <<'JSON'
{"version": 1, "name": "tb-small", "dtype": "fp32", "config": {"arch": "gpt2", "L": 4, "C": 128, "NH": 4, "V": 256, "T": 64}}
JSON
echo '{"version": 1, "global_batch": 16, "micro_batch_sizes": [1, 2, 4], "precision": "fp32"}' >"$work/train.json"
fail=0
"$hetmix" plan --cluster "$work/c.json" --model "$work/model.json" --train "$work/train.json" -o "$work/plan.json" \
  >"$work/plan.out" 2>&1 || { cat "$work/plan.out"; echo "FAIL: plan"; exit 1; }
grep -Eq "\"type\":[[:space:]]*\"cpu-half\"" "$work/plan.json" && grep -Eq "\"type\":[[:space:]]*\"cpu\"" "$work/plan.json" ||
  { sed -n 1,12p "$work/plan.out"; echo "FAIL: the plan does not use both pools"; fail=1; }
if ! timeout 240 "$hetmix" launch --plan "$work/plan.json" --cluster "$work/c.json" --netns --tag-output --timeout 200 -- \
     --steps 3 --out "$work/run" --dump "$work/run/stages" >"$work/train.out" 2>&1; then
  cat "$work/train.out"; echo "FAIL: training across the pools"; exit 1
fi
steps=$(grep -c 'step *[0-9]/3 | loss [0-9]' "$work/train.out" || true)
[ "$steps" -ge 3 ] || { cat "$work/train.out"; echo "FAIL: $steps finite-loss step lines, expected 3"; fail=1; }
ls "$work/run/stages/stage0.hmc" "$work/run/stages/stage1.hmc" >/dev/null 2>&1 ||
  { echo "FAIL: stage checkpoints missing"; fail=1; }
[ $fail = 0 ] && echo "ok: 2-pool pipeline trained 3 steps across the testbed ($(grep -m1 '^  1 ' "$work/plan.out" | sed 's/  */ /g'))"
exit $fail
