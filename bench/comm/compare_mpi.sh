#!/usr/bin/env bash
# Side-by-side allreduce benchmark: hmcomm (`hetmix bench comm allreduce`) against Debian's
# Open MPI (MPI_Allreduce, bench/comm/mpi_allreduce_bench.c), 2 ranks, f32 sum, out of place,
# same sizes, warmup and iterations, in one run. Prints per size both busbw figures and
# their ratio, for shared memory (hetmix shm vs Open MPI's default, vader) and for TCP on
# loopback (hetmix tcp vs `--mca btl tcp,self`). Each time is the median of REPEATS runs, the
# two sides alternating so that background load hits both alike; busbw and the ratio are
# computed from those times (full precision, also for the microsecond sizes).
#   bench/comm/compare_mpi.sh [shm|tcp|both]
# Open MPI runs with its own defaults (it binds 2 ranks to cores); OMPI_ARGS adds mpirun flags.
#   env: BUILD=build-bench REPEATS=5 NP=2 SMALL_ITERS=2000 (8 B..64 KiB) LARGE_ITERS=10 (128 KiB..64 MiB)
#        SETTLE_S=1 (pause before each run, so one run's exiting processes do not load the next)
#        HUGEPAGES=0 (1: both sides' buffers 2 MiB-aligned with MADV_HUGEPAGE)
# Targets checked in the last column: shm ratio >= 1 at every size and >= 2 from 8 MiB;
# tcp ratio >= 1 from 1 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-both}
build=${BUILD:-build-bench}
repeats=${REPEATS:-5}
np=${NP:-2}
# HUGEPAGES=1: both sides allocate their buffers 2 MiB-aligned and advised for transparent huge
# pages (default 0: 4 KiB-aligned buffers on both sides, as malloc gives them)
huge=${HUGEPAGES:-0}
[ "$huge" = 0 ] && huge=
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

if [ ! -x "$build/hetmix" ] || [ ! -x "$build/bench/mpi_allreduce_bench" ] || [ -n "${REBUILD:-}" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j2 --target hetmix_cli mpi_allreduce_bench >/dev/null
fi
hetmix="$build/hetmix"
mpib="$build/bench/mpi_allreduce_bench"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Small sizes get many iterations (microsecond latencies), large ones few; both sides alike.
ranges=("8 64K ${SMALL_ITERS:-2000} 50" "128K 64M ${LARGE_ITERS:-10} 3")

run_side() { # side transport repeat -> $tmp/<side>-<transport>-<repeat>.txt (size time_us)
  local side=$1 tr=$2 rep=$3 out="$tmp/$1-$2-$3.txt"
  : >"$out"
  for range in "${ranges[@]}"; do
    set -- $range
    sleep "${SETTLE_S:-1}" # let the previous run's processes (mpirun's daemon, forked ranks) exit first
    if [ "$side" = hetmix ]; then
      "$hetmix" bench comm allreduce -b "$1" -e "$2" -f 2 -n "$3" -w "$4" -c 0 -d f32 -o sum \
        --ranks "$np" -t "$tr" ${huge:+--hugepages} | awk '!/^#/ && NF >= 8 {print $1, $6}' >>"$out"
    else
      local mca=()
      [ "$tr" = tcp ] && mca=(--mca btl tcp,self)
      # shellcheck disable=SC2086
      mpirun -np "$np" ${OMPI_ARGS:-} "${mca[@]}" "$mpib" -b "$1" -e "$2" -f 2 -n "$3" -w "$4" \
        --hugepages "${huge:-0}" |
        awk '!/^#/ && NF >= 8 {print $1, $6}' >>"$out"
    fi
  done
}

median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

report() { # transport
  local tr=$1 peer
  [ "$tr" = shm ] && peer="Open MPI (vader)" || peer="Open MPI (tcp)"
  echo
  echo "# allreduce f32 sum, $np ranks, $tr; median of $repeats runs each; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# busbw = size / time x 2(n-1)/n; ratio = hetmix busbw / Open MPI busbw (= Open MPI time / hetmix time)"
  printf "# %10s %12s %12s %12s %12s %8s  %s\n" "size(B)" "hetmix(us)" "ompi(us)" "hetmix GB/s" "ompi GB/s" "ratio" "target"
  local sizes pass=1
  sizes=$(awk '{print $1}' "$tmp/hetmix-$tr-1.txt")
  for s in $sizes; do
    local h m line
    h=$(cat "$tmp"/hetmix-"$tr"-*.txt | awk -v s="$s" '$1 == s {print $2}' | median)
    m=$(cat "$tmp"/mpi-"$tr"-*.txt | awk -v s="$s" '$1 == s {print $2}' | median)
    line=$(awk -v h="$h" -v m="$m" -v s="$s" -v tr="$tr" -v np="$np" 'BEGIN {
      f = 2.0 * (np - 1) / np;
      hb = (h > 0) ? s / (h * 1e-6) * 1e-9 * f : 0; mb = (m > 0) ? s / (m * 1e-6) * 1e-9 * f : 0;
      r = (mb > 0) ? hb / mb : 0; need = 0;
      if (tr == "shm") need = (s >= 8388608) ? 2 : 1; else if (s >= 1048576) need = 1;
      v = (need == 0) ? "-" : sprintf(">=%dx %s", need, (r >= need) ? "ok" : "MISSED");
      printf "  %10d %12.2f %12.2f %12.4f %12.4f %8.2f  %s\n", s, h, m, hb, mb, r, v }')
    [[ "$line" == *MISSED* ]] && pass=0
    echo "$line"
  done
  [ $pass = 1 ] && echo "# $tr: every target met" || echo "# $tr: some targets MISSED"
}

transports=()
case "$mode" in
  shm | tcp) transports=("$mode") ;;
  both) transports=(shm tcp) ;;
  *) echo "usage: bench/comm/compare_mpi.sh [shm|tcp|both]" >&2; exit 2 ;;
esac
for tr in "${transports[@]}"; do
  for rep in $(seq 1 "$repeats"); do
    run_side hetmix "$tr" "$rep"
    run_side mpi "$tr" "$rep"
  done
  report "$tr"
done
