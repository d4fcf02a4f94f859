#!/usr/bin/env bash
# bf16-mixed learns like fp32 at gpt-mini's scale: trains gpt-mini twice from the same seed on the
# same data, fp32 and bf16-mixed, and prints both validation losses at the same step count side
# by side with their relative difference (Acceptance: within 2%) and both runs' tokens/s.
# usage: bench/model/bf16_train.sh [HETMIX] [STEPS] [DEVICE]   (defaults: build/release/hetmix,
#        300, cpu:threads=2); the working folder (data/, runs) is $BF16_WORK or a temporary one.
set -euo pipefail
hetmix=$(realpath "${1:-build/release/hetmix}")
steps=${2:-300}
device=${3:-cpu:threads=2}
work=${BF16_WORK:-$(mktemp -d)}
cd "$work"
declare -A val tps
for prec in fp32 bf16-mixed; do
  log="$work/$prec.log"
  "$hetmix" train --model gpt-mini --device "$device" --precision "$prec" --steps "$steps" \
    --eval-every "$steps" --eval-batches 8 --seed 1337 --log-every "$steps" --out "$work/out-$prec" >"$log"
  val[$prec]=$(sed -n 's/.* val loss \([0-9.]*\).*/\1/p' "$log" | tail -1)
  tps[$prec]=$(sed -n 's/^done: .* \([0-9]*\) tok\/s.*/\1/p' "$log")
done
echo "gpt-mini, $steps steps on $device (same seed and data)"
printf '%-11s %10s %10s\n' precision "val loss" "tok/s"
for prec in fp32 bf16-mixed; do printf '%-11s %10s %10s\n' "$prec" "${val[$prec]}" "${tps[$prec]}"; done
awk -v a="${val[fp32]}" -v b="${val[bf16-mixed]}" 'BEGIN {
  d = (b - a) / a * 100; printf "bf16-mixed vs fp32 validation loss: %+.2f%% (bound 2%%)\n", d
  exit (d < -2 || d > 2) ? 1 : 0 }'
