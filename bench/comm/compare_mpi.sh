#!/usr/bin/env bash
# Side-by-side allreduce benchmark: hmcomm (`hetmix bench comm allreduce`) against Debian's
# Open MPI (MPI_Allreduce, bench/comm/mpi_allreduce_bench.c), 2 ranks, f32 sum, out of place,
# same sizes, warmup and iterations, in one run. Prints per size both busbw figures and
# their ratio, for shared memory (hetmix shm vs Open MPI's default, vader) and for TCP on
# loopback (hetmix tcp vs `--mca btl tcp,self`). Each figure is the median of REPEATS runs,
# the two sides alternating so that background load hits both alike.
#   bench/comm/compare_mpi.sh [shm|tcp|both]      (env: BUILD=build-bench REPEATS=3 NP=2)
# Targets checked in the last column: shm ratio >= 1 at every size and >= 2 from 8 MiB;
# tcp ratio >= 1 from 1 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-both}
build=${BUILD:-build-bench}
repeats=${REPEATS:-3}
np=${NP:-2}
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
ranges=("8 64K 2000 200" "128K 64M 20 5")

run_side() { # side transport repeat -> $tmp/<side>-<transport>-<repeat>.txt (size busbw)
  local side=$1 tr=$2 rep=$3 out="$tmp/$1-$2-$3.txt"
  : >"$out"
  for range in "${ranges[@]}"; do
    set -- $range
    if [ "$side" = hetmix ]; then
      "$hetmix" bench comm allreduce -b "$1" -e "$2" -f 2 -n "$3" -w "$4" -c 0 -d f32 -o sum \
        --ranks "$np" -t "$tr" | awk '!/^#/ && NF >= 8 {print $1, $8}' >>"$out"
    else
      local mca=()
      [ "$tr" = tcp ] && mca=(--mca btl tcp,self)
      mpirun -np "$np" "${mca[@]}" "$mpib" -b "$1" -e "$2" -f 2 -n "$3" -w "$4" |
        awk '!/^#/ && NF >= 8 {print $1, $8}' >>"$out"
    fi
  done
}

median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

report() { # transport
  local tr=$1 peer
  [ "$tr" = shm ] && peer="Open MPI (vader)" || peer="Open MPI (btl tcp,self)"
  echo
  echo "# allreduce f32 sum, $np ranks, $tr: busbw GB/s, median of $repeats runs ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
  printf "# %10s %14s %24s %8s  %s\n" "size(B)" "hetmix $tr" "$peer" "ratio" "target"
  local sizes
  sizes=$(awk '{print $1}' "$tmp/hetmix-$tr-1.txt")
  local pass=1
  for s in $sizes; do
    local h m
    h=$(cat "$tmp"/hetmix-"$tr"-*.txt | awk -v s="$s" '$1 == s {print $2}' | median)
    m=$(cat "$tmp"/mpi-"$tr"-*.txt | awk -v s="$s" '$1 == s {print $2}' | median)
    local verdict
    verdict=$(awk -v h="$h" -v m="$m" -v s="$s" -v tr="$tr" 'BEGIN {
      r = (m > 0) ? h / m : 0; need = 0;
      if (tr == "shm") need = (s >= 8388608) ? 2 : 1; else if (s >= 1048576) need = 1;
      if (need == 0) printf "%8.2f  -\n", r; else printf "%8.2f  >=%dx %s\n", r, need, (r >= need) ? "ok" : "MISSED" }')
    [[ "$verdict" == *MISSED* ]] && pass=0
    printf "  %10s %14s %24s %s\n" "$s" "$h" "$m" "$verdict"
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
