#!/usr/bin/env bash
# `hetmix bench comm` end to end: every collective, small sizes, 3 forked ranks, all dtypes
# (reductions: all ops on f32 and i8), odd sizes on every allreduce algorithm, with -c 1
# verification; every row must report 0 wrong, the table must have nccl-tests' columns, a rank
# that dies is named, and bad flags must fail with a hint.
#   tests/comm/bench_smoke.sh <path-to-hetmix>
set -euo pipefail
hetmix=$1
fail=0
check() { # description, command...
  local what=$1
  shift
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  if [ $rc -ne 0 ]; then
    echo "FAIL ($what): exit status $rc"; echo "$out"; fail=1; return
  fi
  if ! grep -q "^# Out of bounds values : 0 OK" <<<"$out"; then
    echo "FAIL ($what): wrong values or no summary"; echo "$out"; fail=1; return
  fi
  if ! grep -q "size.*count.*type.*redop.*root.*time.*algbw.*busbw.*#wrong.*time.*algbw.*busbw.*#wrong" <<<"$out"; then
    echo "FAIL ($what): header lacks nccl-tests' columns"; echo "$out"; fail=1; return
  fi
  local rows
  rows=$(grep -vc '^#' <<<"$out" || true)
  if [ "$rows" -lt 1 ]; then echo "FAIL ($what): no rows"; echo "$out"; fail=1; return; fi
  echo "ok   $what ($rows rows)"
}
for op in allreduce reduce reduce_scatter; do
  check "$op f32 all ops" "$hetmix" bench comm $op --ranks 3 -b 8 -e 4K -f 8 -n 2 -w 1 -c 1 -d f32 -o all
  check "$op i8 all ops" "$hetmix" bench comm $op --ranks 3 -b 8 -e 4K -f 8 -n 2 -w 1 -c 1 -d i8 -o all
  check "$op all dtypes" "$hetmix" bench comm $op --ranks 3 -b 64 -e 64K -f 32 -n 2 -w 1 -c 1 -d all
done
for op in broadcast allgather alltoall gather scatter sendrecv; do
  check "$op all dtypes" "$hetmix" bench comm $op --ranks 3 -b 24 -e 96K -f 64 -n 2 -w 1 -c 1 -d all -r 1
done
check "allreduce tcp ring" "$hetmix" bench comm allreduce --ranks 2 -b 8 -e 1M -f 16 -n 2 -w 1 -c 1 -t tcp --algo ring
check "allreduce rd" "$hetmix" bench comm allreduce --ranks 4 -b 8 -e 1M -f 16 -n 2 -w 1 -c 1 --algo rd
check "allreduce bound ranks" "$hetmix" bench comm allreduce --ranks 3 --bind -b 8 -e 1M -f 16 -n 2 -w 1 -c 1
check "allreduce each call after a barrier" "$hetmix" bench comm allreduce --ranks 3 --sync -b 8 -e 1M -f 16 -n 3 -w 1 -c 1
# Odd sizes (counts 1, 3, 9, ... 59049 f32, none a multiple of 2 or 4 ranks): a segment, block
# or chunk boundary that is off by one loses or repeats elements only when the count does not
# divide evenly.
for algo in ring rd tree; do
  for np in 2 3 4; do
    check "allreduce odd sizes $algo $np ranks" "$hetmix" bench comm allreduce --ranks $np -b 4 -e 240K -f 3 \
      -n 1 -w 0 -c 1 --algo $algo -d f32
  done
done
check "allreduce odd sizes tcp ring" "$hetmix" bench comm allreduce --ranks 3 -b 4 -e 240K -f 3 -n 1 -w 0 -c 1 \
  -t tcp --algo ring
for op in reduce_scatter allgather broadcast reduce alltoall; do
  check "$op odd sizes" "$hetmix" bench comm $op --ranks 3 -b 36 -e 240K -f 3 -n 1 -w 0 -c 1 -d f32 -r 2
done
# A rank that dies is named with how it ended (rank 0 too, whose output is the table's).
for victim in "0 KILL 9" "1 TERM 15"; do
  read -r rank sig signo <<<"$victim"
  log=$(mktemp)
  timeout 60 "$hetmix" bench comm allreduce --ranks 2 -b 1M -e 1M -n 1000000 -w 0 -c 0 >"$log" 2>&1 &
  bench=$!
  pid=""
  for _ in $(seq 200); do # the ranks exist and run (0.05 s steps, 10 s at most)
    pid=$(pgrep -P "$(pgrep -P $bench -x hetmix || echo $bench)" -x "hetmix-rank$rank" || true)
    [ -n "$pid" ] && grep -q "^# *size" "$log" && break
    sleep 0.05
  done
  if [ -z "$pid" ]; then
    echo "FAIL: rank $rank of the bench never appeared"; cat "$log"; fail=1
    kill "$bench" 2>/dev/null || true
  else
    kill -"$sig" "$pid"
  fi
  wait $bench || true
  if grep -q "rank $rank was killed by signal $signo" "$log"; then
    echo "ok   rank $rank killed by SIG$sig is named"
  else
    echo "FAIL: the death of rank $rank (SIG$sig) was not reported:"; cat "$log"; fail=1
  fi
  rm -f "$log"
done
# Bad input is refused with a hint, never run.
for bad in "bench comm allreduce -b 1X" "bench comm nosuchop" "bench comm allreduce -d f33" \
           "bench comm allreduce --ranks 0" "bench comm allreduce -t carrier" "bench comm allreduce -b 64 -e 8"; do
  if out=$("$hetmix" $bad 2>&1); then
    echo "FAIL: '$bad' succeeded"; fail=1
  elif ! grep -q "^hetmix: error:" <<<"$out" || ! grep -q "^hint:" <<<"$out"; then
    echo "FAIL: '$bad' did not print an error and a hint:"; echo "$out"; fail=1
  else
    echo "ok   refused: $bad"
  fi
done
exit $fail
