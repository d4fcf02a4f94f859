#!/usr/bin/env bash
# scripts/testbed.sh end to end: `up` makes the namespaces, links and qdiscs and a cluster file;
# a same-pool and an other-pool link each carry one TCP stream within 5% of their configured
# rate (the same-pool one again after other-pool traffic), and a message after an idle spell
# takes the time the other-pool rate allows (no token-bucket burst); `down` leaves no namespace, link or qdisc behind, also after `up` was killed half-way and
# with a process still running inside a host. Exits 77 (skipped) where network namespaces cannot
# be made (not root, no CAP_NET_ADMIN, no veth/bridge/htb in the kernel).
#   tests/testbed/test_testbed.sh <scripts/testbed.sh> <tb_rate> [<hetmix>]
set -uo pipefail
tb=$1 rate=$2
name="tt$(( $$ % 1000000 ))"
work=$(mktemp -d)
cleanup() { "$tb" down --name "$name" >/dev/null 2>&1; "$tb" down --name "${name}k" >/dev/null 2>&1; rm -rf "$work"; }
trap cleanup EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }

probe="${name}probe"
if [ "$(id -u)" != 0 ]; then echo "SKIPPED: needs root for network namespaces and tc"; exit 77; fi
if ! ip netns add "$probe" 2>"$work/err"; then echo "SKIPPED: cannot make a network namespace: $(cat "$work/err")"; exit 77; fi
if ! ip -n "$probe" link add tbva type veth peer name tbvb 2>"$work/err" ||
   ! ip -n "$probe" link add br0 type bridge 2>>"$work/err" ||
   ! ip netns exec "$probe" tc qdisc add dev tbva root htb 2>>"$work/err"; then
  ip netns del "$probe"; echo "SKIPPED: no veth, bridge or htb here: $(cat "$work/err")"; exit 77
fi
ip netns del "$probe"

links_before=$(ip -o link show | wc -l)
qdiscs_before=$(tc qdisc show | wc -l)
leftovers() { # what of testbed $1 is still there
  ip netns list | awk '{print $1}' | grep -E "^$1-" || true
  ip -o link show | grep -E "v[0-9]+h[0-9]+|$1" || true
}

# 1. up: namespaces, cluster file, the two link classes at their rates
"$tb" up --name "$name" --pools 2 --hosts 2 --intra-rate 400mbit --inter-rate 40mbit --out "$work/c.json" \
  2>"$work/up.err" || { cat "$work/up.err"; bad "up failed"; exit 1; }
n=$(ip netns list | awk '{print $1}' | grep -cE "^$name-" || true)
[ "$n" = 5 ] || bad "expected 5 namespaces (4 hosts + bridge), found $n"
grep -q '"hostnames": \["'"$name"'-p0h0", "'"$name"'-p0h1"\]' "$work/c.json" || bad "cluster file lacks pool 0's hosts"
grep -q '"pool_links"' "$work/c.json" || bad "cluster file lacks pool_links"
if [ $# -ge 3 ]; then
  "$3" plan --cluster "$work/c.json" --model "$(dirname "$0")/../../examples/gpt-mini.json" \
    --train "$(dirname "$0")/../../examples/train-local.json" -o "$work/plan.json" >"$work/plan.out" 2>&1 ||
    { cat "$work/plan.out"; bad "hetmix plan refuses the testbed's cluster file"; }
fi
measure() { # from-ns to-ns to-addr configured-bits/s what
  local out
  ip netns exec "$2" "$rate" recv 5201 3 >"$work/rate" 2>&1 &
  local rpid=$!
  sleep 0.3
  timeout 20 ip netns exec "$1" "$rate" send "$3" 5201 3 || bad "$5: sender failed"
  wait "$rpid" || bad "$5: receiver failed: $(cat "$work/rate")"
  out=$(cat "$work/rate")
  awk -v m="$out" -v c="$4" -v w="$5" 'BEGIN { d = (m - c) / c * 100;
    printf "%s: measured %.1f Mbit/s, configured %.1f Mbit/s (%+.1f%%)\n", w, m / 1e6, c / 1e6, d;
    exit (d < -5 || d > 5) }' || bad "$5 is not within 5% of its configured rate"
}
measure "$name-p0h0" "$name-p0h1" 127.1.0.2 400000000 "same-pool link"
measure "$name-p0h0" "$name-p1h0" 127.1.1.1 40000000 "other-pool link"
# the same-pool link still carries 9000-byte frames after traffic to the other pool (an ARP
# request from the other-pool interface used to repoint the same-pool hosts' neighbour entries
# to its 1500-byte port, where the bridge dropped them: the stream stalled)
measure "$name-p0h1" "$name-p0h0" 127.1.0.1 400000000 "same-pool link after other-pool traffic"
# a message after an idle spell takes the time the rate allows (a token bucket sends a packet
# when not in debt and charges it after: with 64 KiB offload packets, 16 KiB crossed the link
# at once): 16 KiB at 40 Mbit/s is 3.3 ms, less the one 1448-byte packet that goes at once
ip netns exec "$name-p1h0" "$rate" echo 5202 9 >"$work/echo" 2>&1 &
epid=$!
sleep 0.3
t=$(timeout 30 ip netns exec "$name-p0h0" "$rate" ping 127.1.1.1 5202 16384 9 50) || bad "ping after idle failed"
wait "$epid" || bad "echo failed: $(cat "$work/echo")"
awk -v t="${t:-0}" 'BEGIN { want = (16384 - 1448) / 5e6;
  printf "16 KiB after 50 ms idle over the other-pool link: %.2f ms (the rate allows %.2f ms)\n", t * 1e3, want * 1e3;
  exit (t < 0.8 * want) }' || bad "a message after idle crossed the other-pool link faster than its rate"
# an address outside 127.0.0.0/8 must not appear anywhere
for ns in $(ip netns list | awk '{print $1}' | grep -E "^$name-"); do
  ip -n "$ns" -4 -o addr show | awk '{print $4}' | grep -v '^127\.' && bad "$ns has an address outside 127.0.0.0/8"
done

# 2. down with a process still running inside a host
ip netns exec "$name-p1h1" sleep 300 &
sleeper=$!
sleep 0.2
"$tb" down --name "$name" || bad "down failed"
sleep 0.2
kill -0 "$sleeper" 2>/dev/null && { bad "a process inside a host outlived down"; kill -9 "$sleeper"; }
wait "$sleeper" 2>/dev/null
[ -z "$(leftovers "$name")" ] || bad "down left: $(leftovers "$name" | tr '\n' ' ')"

# 3. up killed half-way (no trap runs on SIGKILL), then down
"$tb" up --name "${name}k" --pools 2 --hosts 8 --out "$work/k.json" 2>/dev/null &
upid=$!
for _ in $(seq 200); do ip netns list | grep -q "^${name}k-p0h1" && break; sleep 0.02; done
kill -9 "$upid"; wait "$upid" 2>/dev/null
[ -n "$(leftovers "${name}k")" ] || echo "note: up finished before it was killed"
"$tb" down --name "${name}k" || bad "down after a killed up failed"
[ -z "$(leftovers "${name}k")" ] || bad "down after a killed up left: $(leftovers "${name}k" | tr '\n' ' ')"

# 4. the machine's own namespace: as many links and qdiscs as before
[ "$(ip -o link show | wc -l)" = "$links_before" ] || bad "links in the root namespace changed"
[ "$(tc qdisc show | wc -l)" = "$qdiscs_before" ] || bad "qdiscs in the root namespace changed"

# 5. bad input is refused with a reason, and leaves nothing
"$tb" up --name "bad name" 2>"$work/e" && bad "a bad --name was accepted"
grep -q "give 1-8 letters" "$work/e" || bad "bad --name: no reason given"
"$tb" up --name "${name}k" --types cpu,gpu9 --out "$work/x.json" 2>"$work/e" && bad "an unknown device type was accepted"
grep -q "unknown device type 'gpu9'" "$work/e" || bad "unknown type: no reason given"
[ -z "$(leftovers "${name}k")" ] || bad "a failed up left: $(leftovers "${name}k" | tr '\n' ' ')"
[ -e "$work/x.json" ] && bad "a failed up wrote its cluster file"

[ $fail = 0 ] && echo "ok: testbed up/down, rates within 5%, nothing left behind"
exit $fail
