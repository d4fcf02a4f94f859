#!/usr/bin/env bash
# hmcomm across the testbed: `hetmix launch --cluster C --netns` starts 8 ranks in 4 namespaces
# (2 pools x 2 hosts x 2 ranks: shared memory inside a host, TCP between hosts) and
# `hetmix bench comm -c 1` checks every result of allreduce (ring, hierarchical, the tuner's
# choice; hier again over 4 TCP streams per pair), reduce_scatter and allgather, 4 KiB - 1 MiB,
# with exactly representable values;
# `hetmix profile --netns` measures the link inside a pool and the link between pools, and
# `hetmix launch --netns --profile` hands those figures to the ranks' tuner.
# Exits 77 (skipped) where network namespaces cannot be made.
#   tests/testbed/test_testbed_comm.sh <scripts/testbed.sh> <hetmix>
set -uo pipefail
tb=$(readlink -f "$1") hetmix=$(readlink -f "$2")
name="tc$(( $$ % 1000000 ))"
work=$(mktemp -d)
trap '"$tb" down --name "$name" >/dev/null 2>&1; rm -rf "$work"' EXIT
if [ "$(id -u)" != 0 ]; then echo "SKIPPED: needs root for network namespaces and tc"; exit 77; fi
if ! "$tb" up --name "$name" --pools 2 --hosts 2 --devices 2 --intra-rate 800mbit --inter-rate 80mbit \
     --types cpu --out "$work/c.json" 2>"$work/up.err"; then
  echo "SKIPPED: cannot make the testbed here: $(tail -2 "$work/up.err")"; exit 77
fi
fail=0
run() { # what, bench args...
  local what=$1; shift
  if ! timeout 120 "$hetmix" launch --cluster "$work/c.json" --netns --timeout 100 -- "$hetmix" bench comm "$@" \
       -n 1 -w 1 -c 1 >"$work/out" 2>&1; then
    echo "FAIL ($what): exit status"; cat "$work/out"; fail=1; return
  fi
  grep -q "^# Out of bounds values : 0 OK" "$work/out" || { echo "FAIL ($what): wrong values"; cat "$work/out"; fail=1; return; }
  grep -q "8 ranks" "$work/out" || { echo "FAIL ($what): not 8 ranks"; cat "$work/out"; fail=1; return; }
  echo "ok   $what"
}
"$hetmix" launch --cluster "$work/c.json" --netns -- "$hetmix" worker --selftest >"$work/self" 2>&1 &&
  [ "$(grep -c 'selftest ok' "$work/self")" = 8 ] && echo "ok   worker selftest on 8 ranks" ||
  { echo "FAIL: worker selftest"; cat "$work/self"; fail=1; }
for algo in ring hier auto; do run "allreduce $algo" allreduce -b 4K -e 1M -f 16 --algo "$algo" -d all; done
HETMIX_TCP_STREAMS=4 run "allreduce hier, 4 TCP streams per pair" allreduce -b 4K -e 1M -f 16 --algo hier -d float
run "reduce_scatter" reduce_scatter -b 4K -e 1M -f 16
run "allgather" allgather -b 4K -e 1M -f 16
# hetmix profile --netns probes both link classes between namespaces (a 1 MiB message takes
# 0.1 s on the 80 Mbit/s link: the peer's BYE used to overtake it and fail the receive)
cat >"$work/model.json" <<'JSON'
{"version": 1, "name": "tb-tiny", "dtype": "fp32", "config": {"arch": "gpt2", "L": 1, "C": 32, "NH": 2, "V": 256, "T": 16}}
JSON
if ! (cd "$work" && timeout 200 "$hetmix" profile --cluster c.json --model model.json --netns --micro-batches 1 \
      --reps 1 --budget 0.1 -o p.json) >"$work/prof" 2>&1; then
  echo "FAIL: profile --netns"; cat "$work/prof"; fail=1
elif ! grep -q "^pool " "$work/prof" || ! grep -q "^cross " "$work/prof"; then
  echo "FAIL: profile --netns did not probe the pool and cross links"; cat "$work/prof"; fail=1
else
  echo "ok   profile --netns: $(grep -E '^(pool|cross) ' "$work/prof" | awk '{printf "%s %s us %s GB/s; ", $1, $2, $3}')"
  # the measured classes are in the profile, and `launch --netns --profile` hands them to the
  # ranks as the tuner's figures instead of the cluster file's
  want=$(python3 -c 'import json, sys
h = json.load(open(sys.argv[1])).get("host_links", {})
print(" ".join("%.17g" % h[k][f] for k in ("pool", "cross") for f in ("bandwidth", "latency", "burst")) if len(h) == 2 else "")' \
         "$work/p.json")
  got=$("$hetmix" launch --cluster "$work/c.json" --netns --profile "$work/p.json" -- \
        sh -c '[ "$HETMIX_RANK" = 0 ] && echo "$HETMIX_LINK_POOL $HETMIX_LINK_CROSS" | tr , " " || true' 2>&1)
  filed=$("$hetmix" launch --cluster "$work/c.json" --netns -- \
          sh -c '[ "$HETMIX_RANK" = 0 ] && echo "$HETMIX_LINK_POOL $HETMIX_LINK_CROSS" | tr , " " || true' 2>&1)
  if [ -z "$want" ]; then
    echo "FAIL: profile --netns wrote no host_links (pool and cross)"; cat "$work/p.json"; fail=1
  elif [ "$got" != "$want" ]; then # both %.17g of the same doubles (JSON keeps them exactly)
    echo "FAIL: launch --profile: ranks got '$got', the profile measured '$want'"; fail=1
  elif [ "$got" = "$filed" ]; then
    echo "FAIL: launch --profile gave the cluster file's figures '$filed'"; fail=1
  elif ! awk -v a="$got" -v b="$filed" 'BEGIN { split(a, x, " "); split(b, y, " ");
         exit !(x[1] > 0.85 * y[1] && x[1] < 1.15 * y[1] && x[4] > 0.85 * y[4] && x[4] < 1.15 * y[4]) }'; then
    # the shaped rates (the file's bandwidths) within 15%: the bandwidth is the slope between the
    # two largest ping-pongs (256 KiB, 1 MiB), 7.9 ms apart on the pool link, where a 1 ms
    # wake-up delay of a loaded machine is 13% (htb itself measures about 3% above its rate)
    echo "FAIL: profiled bandwidths ($got) are not within 15% of the shaped rates ($filed)"; fail=1
  else
    echo "ok   launch --netns --profile: tuner figures from the profile ($got; the file's: $filed)"
  fi
fi
# a host missing from the testbed is named before anything starts
sed "s/$name-p1h1/$name-p9h9/" "$work/c.json" >"$work/bad.json"
if "$hetmix" launch --cluster "$work/bad.json" --netns -- true 2>"$work/err"; then
  echo "FAIL: a missing namespace was accepted"; fail=1
elif ! grep -q "network namespace $name-p9h9" "$work/err"; then
  echo "FAIL: the missing namespace is not named"; cat "$work/err"; fail=1
else
  echo "ok   missing namespace named"
fi
exit $fail
