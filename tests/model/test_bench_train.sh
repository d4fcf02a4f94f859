#!/usr/bin/env bash
# bench_model_train's comparison with PyTorch when PyTorch rounds fail: the mean is over the
# successful rounds only, failed rounds are reported, and with no successful PyTorch round no
# ratio is printed. PyTorch is replaced by a stand-in interpreter (HETMIX_PYTHON) that prints a
# fixed result or fails, as told by a schedule file, so the figures are known exactly.
#   test_bench_train.sh BENCH_BINARY
set -euo pipefail
bench=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/python" <<'PY'
#!/bin/sh
# one line of the schedule per call: "ok TOKENS_PER_S" or "fail"
dir=$(dirname "$0")
n=$(cat "$dir/calls" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" >"$dir/calls"
what=$(sed -n "${n}p" "$dir/schedule")
case "$what" in
  ok*) echo "torch tokens_per_s=${what#ok } step_ms=1.0 peak_rss_mib=10.0"; exit 0 ;;
  *) echo "stand-in: round $n fails" >&2; exit 1 ;;
esac
PY
chmod +x "$dir/python"
run() {  # schedule lines...
  printf '%s\n' "$@" >"$dir/schedule"
  rm -f "$dir/calls"
  HETMIX_PYTHON="$dir/python" "$bench" --model L1,C32,NH2,V64,T16 --batch 1 --steps 1 --warmup 0 \
    --threads 1 --rounds $# 2>/dev/null
}
fail() { echo "FAIL: $*"; echo "$out"; exit 1; }

# rounds 1 and 3 succeed at 100 and 300 tokens/s, round 2 fails: mean 200 over 2, 1 failed
out=$(run "ok 100" fail "ok 300")
grep -q "torch mean 200.0 tokens/s (best 300.0) over 2 successful round(s), 1 failed" <<<"$out" ||
  fail "the PyTorch mean must be over its successful rounds"
grep -q "ratio hetmix/torch" <<<"$out" || fail "a ratio is expected with successful rounds on both sides"
[ "$(grep -c 'PyTorch failed this round' <<<"$out")" = 1 ] || fail "the failed round must be reported"

# every PyTorch round fails: no mean, no ratio, and the reason
out=$(run fail fail)
grep -q "ratio hetmix/torch" <<<"$out" && fail "no ratio may be printed without a successful PyTorch round"
grep -q "no ratio: PyTorch had no successful round (2 failed)" <<<"$out" || fail "the missing ratio must be explained"
echo "bench_model_train: means over successful rounds, failed rounds reported, no ratio without data"
