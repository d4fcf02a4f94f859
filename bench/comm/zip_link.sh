#!/usr/bin/env bash
# Effective bandwidth of hmcomm's link compression on a shaped link, side by side with sending
# uncompressed (docs/comm.md, "Compression"). Trains gpt-mini a few steps to get real gradients
# (bench_comm_zip ratio, which also prints the compression ratios), then, inside a private network
# namespace whose loopback is shaped with tc tbf to RATE, sends them between two ranks over TCP
# with compression off, zstd and lz4 (bench_comm_zip link). Needs root; the namespace (and with it
# the qdisc) is removed on exit, also on error or interrupt.
#   BUILD=build/release bench/comm/zip_link.sh [RATE=1gbit] [ROUNDS=5]
# STEPS (training steps before the data is taken) defaults to 4.
set -euo pipefail
BUILD=${BUILD:-build/release}
RATE=${1:-1gbit}
ROUNDS=${2:-5}
bin=$(realpath "$BUILD/bench/bench_comm_zip")
if [ "$(id -u)" != 0 ] || ! command -v tc >/dev/null || ! command -v ip >/dev/null; then
  echo "zip_link.sh: needs root, ip and tc (iproute2) for the shaped namespace" >&2
  exit 77
fi
case "$RATE" in
  *gbit) bw=$(( ${RATE%gbit} * 125000000 )) ;;
  *mbit) bw=$(( ${RATE%mbit} * 125000 )) ;;
  *) echo "zip_link.sh: RATE must be <n>gbit or <n>mbit, not '$RATE'" >&2; exit 2 ;;
esac
ns=hmzip-$$
tmp=$(mktemp -d /tmp/hmzip.XXXXXX)
cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

(cd "$tmp" && "$bin" ratio --steps "${STEPS:-4}" --save "$tmp")
ip netns add "$ns"
ip -n "$ns" link set lo up
# burst above the loopback's 64 KiB packets; the queue holds 50 ms at the rate
tc -n "$ns" qdisc add dev lo root tbf rate "$RATE" burst 256kb latency 50ms
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
for dt in bf16 f32; do
  ip netns exec "$ns" "$bin" link --file "$tmp/gradients.$dt" --dtype "$dt" --link-bw "$bw" --rounds "$ROUNDS"
done
