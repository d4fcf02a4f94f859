#!/usr/bin/env bash
# Allreduce on a network-namespace testbed (scripts/testbed.sh), flat ring and hierarchical side
# by side, each against the cost model's prediction and its bottleneck-link bound.
#   BUILD=build/release bench/comm/testbed_allreduce.sh
# Knobs (environment): INTRA=800mbit INTER=80mbit (per host; 10x slower across pools),
# POOLS=2 HOSTS=2 (per pool) DEVICES=2 (ranks per host), MIN=64K MAX=64M, ITERS=3 (sizes from
# 1 MiB), SMALL_ITERS=20 (sizes below), WARMUP=1, SYNC=0 (calls back to back after one barrier,
# nccl-tests' way: a rank that finished starts the next call while its peers finish this one;
# SYNC=1: each call timed alone after a barrier until its slowest rank is done, `bench comm
# --sync`: the time the cost model predicts).
# Rates stay at hundreds of Mbit/s so that the two loaded cores of a CI machine can drive every
# shaped link at its rate: a link the CPU cannot fill would measure the CPU, not the link.
# Compression is off (HETMIX_COMPRESS=off): the bench's small-integer values would compress far
# below the links' bound (bench/comm/zip_link.sh measures compression on real gradients).
# HETMIX_TCP_STREAMS=N in the environment stripes each TCP pair over N connections.
# Needs root (network namespaces). Columns:
#   ring, hier        measured time per allreduce (f32 sum, out of place; back to back: the mean
#                     over ranks of each rank's time per call; SYNC=1: the slowest rank's)
#   speedup           ring time / hier time
#   pred, err         the cost model's time (hm_cost_collective ring over the link between pools;
#                     hm_cost_hier) from the links hetmix profile --netns measured (latency,
#                     bandwidth and burst: the figures the ranks' tuner gets; docs/comm.md),
#                     and (measured - predicted) / predicted
#   pick              the algorithm the tuner runs at that size (hier, or the best flat one)
#   %bound            the algorithm's bandwidth-only time over the bottleneck links (no
#                     latency) / measured time: busbw as a share of what the links allow
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/release}
hetmix=$BUILD/hetmix predict=$BUILD/bench/testbed_predict
INTRA=${INTRA:-800mbit} INTER=${INTER:-80mbit} POOLS=${POOLS:-2} HOSTS=${HOSTS:-2} DEVICES=${DEVICES:-2}
MIN=${MIN:-64K} MAX=${MAX:-64M} ITERS=${ITERS:-3} SMALL_ITERS=${SMALL_ITERS:-20} WARMUP=${WARMUP:-1} SYNC=${SYNC:-0}
[ -x "$hetmix" ] && [ -x "$predict" ] || { echo "build first: cmake --build $BUILD" >&2; exit 1; }
name="tba$(( $$ % 100000 ))"
work=$(mktemp -d)
trap 'scripts/testbed.sh down --name "$name" >/dev/null 2>&1; rm -rf "$work"' EXIT
scripts/testbed.sh up --name "$name" --pools "$POOLS" --hosts "$HOSTS" --devices "$DEVICES" \
  --intra-rate "$INTRA" --inter-rate "$INTER" --types cpu --out "$work/c.json" >&2
# the links measured (hetmix profile --netns: each class's latency, an 8-byte message's one-way
# time, its rate, and its burst: what the shaper lets through at once after idling), as the
# ranks' tuner and the planner get them (launch --profile)
cat >"$work/model.json" <<'JSON'
{"version": 1, "name": "tb-tiny", "dtype": "fp32", "config": {"arch": "gpt2", "L": 1, "C": 32, "NH": 2, "V": 256, "T": 16}}
JSON
hetmix_abs=$(realpath "$hetmix")
(cd "$work" && "$hetmix_abs" profile --cluster c.json --model model.json --netns --micro-batches 1 --reps 1 \
  --budget 0.1 -o p.json >prof.out 2>&1) || { cat "$work/prof.out" >&2; echo "hetmix profile --netns failed" >&2; exit 1; }
# the link figures the launcher hands the ranks (HETMIX_LINK_POOL / _CROSS: bytes/s,seconds,burst bytes)
read -r pool_bw pool_lat pool_burst cross_bw cross_lat cross_burst < <("$hetmix" launch --cluster "$work/c.json" --netns --profile "$work/p.json" -- \
  sh -c '[ "$HETMIX_RANK" = 0 ] && echo "$HETMIX_LINK_POOL $HETMIX_LINK_CROSS" | tr , " " || true')
export HETMIX_COMPRESS=off
# sizes below 1 MiB take SMALL_ITERS iterations (a few ms each: three would leave the mean to
# chance), the larger ones ITERS (up to seconds each)
to_bytes() { local v=${1%[KkMmGg]}; case $1 in *[Kk]) echo $((v << 10));; *[Mm]) echo $((v << 20));; *[Gg]) echo $((v << 30));; *) echo "$v";; esac; }
lo=$(to_bytes "$MIN") hi=$(to_bytes "$MAX") small_end=0 large_begin=$lo
while [ "$large_begin" -lt $((1 << 20)) ] && [ "$large_begin" -le "$hi" ]; do small_end=$large_begin; large_begin=$((large_begin * 4)); done
sync_flag=; [ "$SYNC" = 1 ] && sync_flag=--sync
run_sizes() { # algo begin end iters
  "$hetmix" launch --cluster "$work/c.json" --netns --profile "$work/p.json" --timeout 3000 -- "$hetmix" bench comm allreduce \
    -b "$2" -e "$3" -f 4 -n "$4" -w "$WARMUP" -c 0 --algo "$1" $sync_flag
}
for algo in ring hier; do
  : >"$work/$algo.out"
  [ "$small_end" -gt 0 ] && run_sizes "$algo" "$lo" "$small_end" "$SMALL_ITERS" >>"$work/$algo.out"
  [ "$large_begin" -le "$hi" ] && run_sizes "$algo" "$large_begin" "$hi" "$ITERS" >>"$work/$algo.out"
done
sizes=$(awk '!/^#/ && NF > 5 { print $1 }' "$work/ring.out")
n=$((POOLS * HOSTS * DEVICES))
# shellcheck disable=SC2086
"$predict" "$POOLS" $((HOSTS * DEVICES)) "$DEVICES" "$pool_bw" "$pool_lat" "$pool_burst" "$cross_bw" "$cross_lat" \
  "$cross_burst" $sizes >"$work/pred"
"$predict" "$POOLS" $((HOSTS * DEVICES)) "$DEVICES" "$pool_bw" 0 0 "$cross_bw" 0 0 $sizes >"$work/bound"
echo "# allreduce f32 sum on the testbed: $POOLS pools x $HOSTS hosts x $DEVICES ranks ($n ranks), same pool $INTRA, other pool $INTER per host; $SMALL_ITERS iterations below 1 MiB, $ITERS from 1 MiB, $([ "$SYNC" = 1 ] && echo "each call timed alone after a barrier" || echo "calls back to back")"
echo "# links measured (hetmix profile --netns): same pool $(awk -v b="$pool_bw" -v l="$pool_lat" -v u="$pool_burst" 'BEGIN { printf "%.1f MB/s, %.0f us, burst %.0f B", b / 1e6, l * 1e6, u }'), other pool $(awk -v b="$cross_bw" -v l="$cross_lat" -v u="$cross_burst" 'BEGIN { printf "%.2f MB/s, %.0f us, burst %.0f B", b / 1e6, l * 1e6, u }')"
echo "# testbed_predict's link figures (bandwidth B/s, latency s, burst B): same pool $pool_bw $pool_lat $pool_burst, other pool $cross_bw $cross_lat $cross_burst"
echo "# load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
printf '#%11s %11s %11s %8s %11s %7s %7s %11s %7s %7s %5s\n' size "ring(us)" "hier(us)" speedup "ring pred" err "%bound" "hier pred" err "%bound" pick
paste <(awk '!/^#/ && NF > 5 { print $1, $6 }' "$work/ring.out") <(awk '!/^#/ && NF > 5 { print $6 }' "$work/hier.out") \
  "$work/pred" "$work/bound" | awk '{
    size = $1; ring = $2; hier = $3; pr = $5 * 1e6; ph = $6 * 1e6; pick = $7; br = $9 * 1e6; bh = $10 * 1e6;
    printf "%12d %11.0f %11.0f %7.2fx %11.0f %+6.1f%% %6.1f%% %11.0f %+6.1f%% %6.1f%% %5s\n", size, ring, hier, ring / hier,
      pr, (ring - pr) / pr * 100, br / ring * 100, ph, (hier - ph) / ph * 100, bh / hier * 100, pick }'
