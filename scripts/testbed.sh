#!/usr/bin/env bash
# A cluster of many hosts in pools on this one machine: every host is a network namespace with
# a veth link into a bridge (the bridge lives in a namespace of its own, so nothing is added to
# the machine's own network namespace), and each host's outgoing traffic is shaped by tc: an HTB
# class per link class (same pool, other pool) with a token rate and a netem delay below it.
# Traffic to other pools leaves through a second veth (eth1) of 1500-byte frames (add_cross_link).
#
#   scripts/testbed.sh up   --name NAME [--pools 2] [--hosts 2] [--intra-rate 400mbit]
#                           [--intra-delay 50us] [--inter-rate 40mbit] [--inter-delay 1ms]
#                           [--types cpu,ref] [--devices 1] [--out cluster.json]
#     --types: the device type of each pool in turn (cpu, cpu-half: the cpu backend emulating a
#     chip half as fast, ref, opencl); --devices: ranks (devices) per host
#   scripts/testbed.sh down --name NAME
#   scripts/testbed.sh list [--name NAME]     namespaces of NAME (or of every testbed)
#
# Hosts are the namespaces NAME-p<P>h<H>; host H of pool P has the address 127.1.P.(H+1)/16 on
# its interface eth0 (loopback range only, route_localnet=1; lo keeps only 127.0.0.1/32, so the
# rest of 127/8 is routed through eth0). `up` writes the matching cluster file (hostnames = the
# namespace names; `hetmix launch --cluster FILE --netns` runs each host's workers in its
# namespace) and undoes everything if a step fails. `down` kills what still runs in the
# namespaces (it was started there by the testbed's user) and deletes them; their veth links and
# qdiscs go with them. NAME keeps parallel testbeds apart (letters, digits, '-'; at most 8).
#
# Rates: hundreds of Mbit/s at most by default, so that the two loaded cores of a CI machine can
# drive every shaped link at its configured rate (a shaped link that the CPU cannot fill measures
# the CPU, not the link). The delays are netem's, added once per direction on the sender's side;
# a kernel without netem (sch_netem) gets rate shaping only, with a warning, and the cluster file
# then gives the veth's own latency (about 30 us here).
set -euo pipefail

die() { echo "testbed: error: $*" >&2; exit 1; }
usage() { sed -n '7,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

name="" pools=2 hosts=2 intra_rate=400mbit intra_delay=50us inter_rate=40mbit inter_delay=1ms
types="cpu,ref" devices=1 out=""
cmd="${1:-}"; [ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case "$1" in
    --name) name="$2" ;; --pools) pools="$2" ;; --hosts) hosts="$2" ;;
    --intra-rate) intra_rate="$2" ;; --intra-delay) intra_delay="$2" ;;
    --inter-rate) inter_rate="$2" ;; --inter-delay) inter_delay="$2" ;;
    --types) types="$2" ;; --devices) devices="$2" ;; --out) out="$2" ;;
    *) usage ;;
  esac
  shift 2
done

check_name() {
  [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,7}$ ]] ||
    die "--name '$name': give 1-8 letters, digits or '-' (it prefixes the namespace names)"
}

# Netem and HTB speak tc units; the cluster file wants bytes/s and seconds.
rate_bytes() { # 400mbit -> 50000000
  local v="${1%bit}" m=1
  case "$v" in *[kK]) m=1000; v="${v%?}" ;; *[mM]) m=1000000; v="${v%?}" ;; *[gG]) m=1000000000; v="${v%?}" ;; esac
  [[ "$v" =~ ^[0-9]+$ ]] || die "rate '$1': give an integer with kbit, mbit or gbit"
  echo $(( v * m / 8 ))
}
delay_s() { # 50us -> 5e-05; 0us (no netem) -> the veth's own latency, about 30 us here
  local v="$1"
  [ "$v" != 0us ] || { echo 3e-05; return; }
  case "$v" in
    *us) awk -v x="${v%us}" 'BEGIN { printf "%.9g", x / 1e6 }' ;;
    *ms) awk -v x="${v%ms}" 'BEGIN { printf "%.9g", x / 1e3 }' ;;
    *) die "delay '$v': give it in us or ms" ;;
  esac
}

namespaces() { ip netns list | awk '{print $1}' | grep -E "^${1}-(br|p[0-9]+h[0-9]+)$" || true; }

down() {
  local ns pid IFS=$' \t\n'

  for ns in $(namespaces "$name"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for ns in $(namespaces "$name"); do
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "/etc/netns/${name}-br"
  [ -z "$(namespaces "$name")" ] || die "namespaces of '$name' are still there: $(namespaces "$name" | tr '\n' ' ')"
}

# A host's TCP congestion control: Linux's default, cubic, where this machine allows it in a
# namespace, else reno (built in, always allowed; the same as cubic at these links' tiny
# bandwidth-delay products), never whatever the machine's own namespace chose. With BBR (this
# machine's choice) an exchange of 16 KiB in both directions at once over the 80 Mbit/s class
# took 1.8-3.6 ms against 1.5-1.6 ms one way: BBR keeps a window of a few frames from the veth's
# tens of microseconds of round trip, and each direction's acknowledgements then wait behind the
# other direction's frames in the shaper's queue. With reno the exchange takes the one-way time.
set_congestion_control() {
  ip netns exec "$1" sysctl -qw net.ipv4.tcp_congestion_control=cubic 2>/dev/null ||
    ip netns exec "$1" sysctl -qw net.ipv4.tcp_congestion_control=reno 2>/dev/null ||
    echo "testbed: warning: $1 keeps TCP congestion control $(ip netns exec "$1" sysctl -n net.ipv4.tcp_congestion_control)" >&2
}

# One host: namespace, veth into the bridge, address, and the two shaped classes.
add_host() {
  local p="$1" h="$2" ns="$name-p${1}h${2}" port="v${1}h${2}" addr="127.1.$1.$(($2 + 1))"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr del 127.0.0.1/8 dev lo
  ip -n "$ns" addr add 127.0.0.1/32 dev lo
  ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.default.route_localnet=1
  set_congestion_control "$ns"
  ip -n "$ns" link add eth0 type veth peer name "$port" netns "$name-br"
  ip netns exec "$ns" sysctl -qw net.ipv4.conf.eth0.route_localnet=1
  ip -n "$ns" addr add "$addr/16" dev eth0 scope global
  ip -n "$ns" link set eth0 mtu 9000 up
  ip -n "$name-br" link set "$port" mtu 9000 master br0 up
  # egress shaping: 1:10 same pool, 1:20 other pools (the default), netem delay under each
  ip netns exec "$ns" tc qdisc add dev eth0 root handle 1: htb default 20
  ip netns exec "$ns" tc class add dev eth0 parent 1: classid 1:10 htb rate "$intra_rate" ceil "$intra_rate" quantum 30000
  ip netns exec "$ns" tc class add dev eth0 parent 1: classid 1:20 htb rate "$inter_rate" ceil "$inter_rate" quantum 30000
  if [ "$netem" = 1 ]; then
    ip netns exec "$ns" tc qdisc add dev eth0 parent 1:10 handle 10: netem delay "$intra_delay" limit 10000
    ip netns exec "$ns" tc qdisc add dev eth0 parent 1:20 handle 20: netem delay "$inter_delay" limit 10000
  else
    ip netns exec "$ns" tc qdisc add dev eth0 parent 1:10 handle 10: pfifo limit 10000
    ip netns exec "$ns" tc qdisc add dev eth0 parent 1:20 handle 20: pfifo limit 10000
  fi
  ip netns exec "$ns" tc filter add dev eth0 parent 1: protocol ip prio 1 u32 \
    match ip dst "127.1.$p.0/24" flowid 1:10
  # ARP and other non-IP frames: same-pool class (tiny, never the bottleneck)
  ip netns exec "$ns" tc filter add dev eth0 parent 1: protocol arp prio 2 u32 match u32 0 0 flowid 1:10
  [ "$pools" -lt 2 ] || add_cross_link "$p" "$h" "$ns" "$addr"
}

# The link to the other pools: a second veth (eth1) with 1500-byte packets handed to the shaper
# one at a time (gso_max_segs 1), and routes to the other pools through it. A token bucket (htb,
# tbf) lets a packet go when the bucket is not in debt and charges it afterwards, so after an
# idle spell the first packet crosses at once; with TCP's segmentation offload a "packet" was up
# to 64 KiB (BBR sizes them to about 1 ms of its rate, at least 2 segments of 8948 bytes), and a
# message of up to 18-32 KiB crossed the 80 Mbit/s link in 0.2 ms where the rate allows 1.6-3.3
# ms. One 1514-byte frame (0.15 ms at 80 Mbit/s) is what a link of that rate takes for it anyway.
# The shaper counts what TCP carries in a frame (stab overhead -66: less its Ethernet, IP and TCP
# headers, 4.4% of a 1514-byte frame), so that the rate is that of a stream's bytes, as the
# cluster file gives it (the same-pool link's 9000-byte frames carry 0.7% of headers).
add_cross_link() {
  local p="$1" h="$2" ns="$3" addr="$4" q
  ip -n "$ns" link add eth1 type veth peer name "x${p}h${h}" netns "$name-br"
  # eth1 has no address of its own: packets to other pools leave through it from eth0's address,
  # and every frame for this host must come to eth0 (the bridge drops a 9000-byte frame sent to
  # eth1's 1500-byte port, and TCP then stalls for good): only eth0 answers ARP (arp_ignore 1),
  # and eth1 sends none, its neighbours being fixed (cross_neighbours): an ARP request from eth1
  # carries eth0's address with eth1's MAC and would repoint the same-pool hosts' entries
  ip netns exec "$ns" sysctl -qw net.ipv4.conf.eth1.route_localnet=1 net.ipv4.conf.all.rp_filter=0 \
    net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.eth1.rp_filter=0 net.ipv4.conf.all.arp_ignore=1
  ip -n "$ns" link set eth1 mtu 1500 gso_max_segs 1 up
  ip -n "$name-br" link set "x${p}h${h}" mtu 1500 master br0 up
  ip netns exec "$ns" tc qdisc add dev eth1 root handle 1: stab overhead -66 htb default 20
  ip netns exec "$ns" tc class add dev eth1 parent 1: classid 1:20 htb rate "$inter_rate" ceil "$inter_rate" quantum 30000
  if [ "$netem" = 1 ]; then
    ip netns exec "$ns" tc qdisc add dev eth1 parent 1:20 handle 20: netem delay "$inter_delay" limit 10000
  else
    ip netns exec "$ns" tc qdisc add dev eth1 parent 1:20 handle 20: pfifo limit 10000
  fi
  for ((q = 0; q < pools; q++)); do
    [ "$q" = "$p" ] || ip -n "$ns" route add "127.1.$q.0/24" dev eth1 src "$addr" mtu 1500
  done
}

# Every host's eth1 knows the eth0 MAC of every host of the other pools (permanent entries).
cross_neighbours() {
  local p h q g mac
  local -a macs
  for ((p = 0; p < pools; p++)); do for ((h = 0; h < hosts; h++)); do
    mac=$(ip -n "$name-p${p}h${h}" -o link show eth0 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
    [ -n "$mac" ] || die "no MAC address on $name-p${p}h${h}'s eth0"
    macs[p * hosts + h]=$mac
  done; done
  for ((p = 0; p < pools; p++)); do for ((h = 0; h < hosts; h++)); do
    for ((q = 0; q < pools; q++)); do
      [ "$q" = "$p" ] && continue
      for ((g = 0; g < hosts; g++)); do
        echo "neigh replace 127.1.$q.$((g + 1)) lladdr ${macs[q * hosts + g]} dev eth1 nud permanent"
      done
    done >"$work_batch"
    ip -n "$name-p${p}h${h}" -batch "$work_batch"
  done; done
}

write_cluster() {
  local p h sep="" first=1 ty
  IFS=, read -r -a ty <<<"$types"
  [ "${#ty[@]}" -ge 1 ] || die "--types: give one device type per pool (cpu, cpu-half, ref or opencl), comma-separated"
  local intra_bw inter_bw intra_s inter_s
  intra_bw=$(rate_bytes "$intra_rate"); inter_bw=$(rate_bytes "$inter_rate")
  intra_s=$(delay_s "$intra_delay"); inter_s=$(delay_s "$inter_delay")
  # the spec adds a pool link's latency to the NICs': the pool link holds what the delay adds
  local pool_s
  pool_s=$(awk -v a="$inter_s" -v b="$intra_s" 'BEGIN { d = a - b; printf "%.9g", (d > 0 ? d : 0) }')
  {
    echo '{'
    echo '  "version": 1,'
    echo "  \"name\": \"testbed-$name\","
    echo "  \"note\": \"scripts/testbed.sh: $pools pools of $hosts hosts (network namespaces); same pool $intra_rate $intra_delay, other pool $inter_rate $inter_delay per host\","
    echo '  "device_types": ['
    local seen=" " t
    for t in "${ty[@]}"; do
      case "$seen" in *" $t "*) continue ;; esac
      [ "$first" = 1 ] || echo ','
      first=0; seen="$seen$t "
      case "$t" in
        cpu) printf '    {"name": "cpu", "backend": "cpu:threads=1", "peak_flops": {"fp32": 100e9}, "memory_bytes": 4294967296, "memory_bandwidth": 10e9, "efficiency": 0.7, "intra_host_link": {"bandwidth": 6e9, "latency": 2e-6}}' ;;
        cpu-half) printf '    {"name": "cpu-half", "backend": "cpu:threads=1,slow=2", "peak_flops": {"fp32": 5e10}, "memory_bytes": 4294967296, "memory_bandwidth": 10e9, "efficiency": 0.7, "intra_host_link": {"bandwidth": 6e9, "latency": 2e-6}}' ;;
        ref) printf '    {"name": "ref", "backend": "ref", "peak_flops": {"fp32": 8e9}, "memory_bytes": 4294967296, "memory_bandwidth": 10e9, "efficiency": 0.5, "intra_host_link": {"bandwidth": 6e9, "latency": 2e-6}}' ;;
        opencl) printf '    {"name": "opencl", "backend": "opencl:threads=1", "peak_flops": {"fp32": 50e9}, "memory_bytes": 4294967296, "memory_bandwidth": 10e9, "efficiency": 0.5, "intra_host_link": {"bandwidth": 6e9, "latency": 2e-6}}' ;;
        *) die "--types: unknown device type '$t' (cpu, cpu-half, ref or opencl)" ;;
      esac
    done
    echo; echo '  ],'
    printf '  "pools": ['
    for ((p = 0; p < pools; p++)); do printf '%s{"name": "pool%d"}' "$sep" "$p"; sep=", "; done
    echo '],'
    echo '  "pool_links": ['
    sep=""
    for ((p = 0; p < pools; p++)); do for ((q = p + 1; q < pools; q++)); do
      printf '%s    {"pools": ["pool%d", "pool%d"], "bandwidth": %s, "latency": %s}' "$sep" "$p" "$q" "$inter_bw" "$pool_s"
      sep=$',\n'
    done; done
    echo; echo '  ],'
    echo '  "hosts": ['
    sep=""
    for ((p = 0; p < pools; p++)); do
      t="${ty[$((p % ${#ty[@]}))]}"
      printf '%s    {"name": "pool%d-hosts", "count": %d, "pool": "pool%d",\n' "$sep" "$p" "$hosts" "$p"
      printf '     "devices": {"type": "%s", "count": %d},\n' "$t" "$devices"
      printf '     "nic": {"bandwidth": %s, "latency": %s},\n' "$intra_bw" "$intra_s"
      printf '     "hostnames": ['
      local s2=""
      for ((h = 0; h < hosts; h++)); do printf '%s"%s-p%dh%d"' "$s2" "$name" "$p" "$h"; s2=", "; done
      printf ']}'
      sep=$',\n'
    done
    echo; echo '  ]'
    echo '}'
  } >"$out.tmp.$$"
  mv -f "$out.tmp.$$" "$out"
}

up() {
  [[ "$pools" =~ ^[1-9][0-9]?$ && "$pools" -le 16 ]] || die "--pools $pools: give 1..16"
  [[ "$hosts" =~ ^[1-9][0-9]?$ && "$hosts" -le 64 ]] || die "--hosts $hosts: give 1..64 per pool"
  [[ "$devices" =~ ^[1-9][0-9]?$ ]] || die "--devices $devices: give 1..99 per host"
  rate_bytes "$intra_rate" >/dev/null; rate_bytes "$inter_rate" >/dev/null
  delay_s "$intra_delay" >/dev/null; delay_s "$inter_delay" >/dev/null
  [ -z "$(namespaces "$name")" ] || die "a testbed named '$name' exists already (scripts/testbed.sh down --name $name)"
  work_batch=""
  trap 'rc=$?; trap - EXIT INT TERM; rm -f "$work_batch"; down >/dev/null 2>&1 || true; echo "testbed: error: up failed (status $rc); removed what was made" >&2; exit $rc' EXIT
  trap 'exit 130' INT TERM
  ip netns add "$name-br"
  ip -n "$name-br" link add br0 type bridge
  netem=1
  ip -n "$name-br" link add nt0 type veth peer name nt1
  ip netns exec "$name-br" tc qdisc add dev nt0 root netem delay 1ms 2>/dev/null || netem=0
  ip -n "$name-br" link del nt0
  if [ "$netem" = 0 ]; then
    echo "testbed: warning: this kernel has no netem qdisc (sch_netem): links are rate-shaped only, with the veth's own latency" >&2
    intra_delay=0us inter_delay=0us
  fi
  ip -n "$name-br" link set br0 up
  local p h
  for ((p = 0; p < pools; p++)); do for ((h = 0; h < hosts; h++)); do add_host "$p" "$h"; done; done
  if [ "$pools" -ge 2 ]; then
    work_batch=$(mktemp)
    cross_neighbours
    rm -f "$work_batch"
  fi
  [ -z "$out" ] || write_cluster
  trap - EXIT INT TERM
  echo "testbed $name: $pools pools x $hosts hosts, same pool $intra_rate $intra_delay, other pool $inter_rate $inter_delay, tcp $(ip netns exec "$name-p0h0" sysctl -n net.ipv4.tcp_congestion_control)${out:+; cluster file $out}"
}

case "$cmd" in
  up) check_name; [ "$(id -u)" = 0 ] || die "needs root (network namespaces, tc)"; up ;;
  down) check_name; down ;;
  list) if [ -n "$name" ]; then namespaces "$name"; else ip netns list | awk '{print $1}' | grep -E -- '-(br|p[0-9]+h[0-9]+)$' || true; fi ;;
  *) usage ;;
esac
