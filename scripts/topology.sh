#!/usr/bin/env bash
# Build or remove Sluice's test network (the same one tests/src/topology.rs
# builds for every integration test).
#
#   scripts/topology.sh up   [PREFIX] [BACKENDS]   # default PREFIX=sl, BACKENDS=3
#   scripts/topology.sh down [PREFIX]
#   scripts/topology.sh exec [PREFIX] ROLE CMD...  # ROLE: client lb lb2 sw b1 b2 ...
#   scripts/topology.sh show [PREFIX]
#
#  PREFIX-client          PREFIX-lb                 PREFIX-sw (br0)     PREFIX-bN
#  eth0 198.18.0.2/24  -- front 198.18.0.1/24
#       198.18.0.130/24   back  198.18.1.1/24  ---- p0
#                                                   pN ---------------- eth0 198.18.1.(10+N)/24
#  client: 198.18.100.0/24 (VIPs) via 198.18.0.1; backends: default via 198.18.1.1
#
# Environment (same variants as tests/src/topology.rs TopologyOpts):
#   IPV6=1      also 2001:db8::/64 in front (client ::2, lb ::1, lb2 ::3) and
#               2001:db8:1::/64 behind (lb ::1, lb2 ::2, bN ::(10+N)), DAD off;
#               client 2001:db8:100::/64 via 2001:db8::1, backends default6
#               via 2001:db8:1::1
#   LB_NODES=2  a second LB node PREFIX-lb2 (front 198.18.0.3, back
#               198.18.1.2); client, lb and lb2 meet on bridge brf in
#               PREFIX-sw (ports f0 f1 f2), lb2's back joins br0 (port q0)
#
# Veths are created directly inside their namespaces, so nothing appears in
# the root namespace. Offloads are off on every veth (veth TX checksum
# offload leaves partial checksums that break after NAT in user space) and
# the LB's two links get 2 queues. Kernel ip_forward stays 0 in the LB:
# sluice forwards, not the kernel. `up` and `down` are idempotent.
# Addresses are from 198.18.0.0/15 (benchmarking range) only.
set -euo pipefail

die() { echo "topology.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (CAP_NET_ADMIN)"

cmd=${1:-}
shift || true

ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }
link_exists() { ip -n "$1" link show dev "$2" >/dev/null 2>&1; }

ensure_ns() {
  local ns=$1
  if ! ns_exists "$ns"; then
    ip netns add "$ns"
    echo "netns $ns"
  fi
  ip -n "$ns" link set lo up
  if [[ ${IPV6:-0} == 1 ]]; then
    ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  else
    ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  fi
}

# ensure_veth NS_A A NS_B B QUEUES
ensure_veth() {
  local nsa=$1 a=$2 nsb=$3 b=$4 q=$5
  if ! link_exists "$nsa" "$a"; then
    link_exists "$nsb" "$b" && ip -n "$nsb" link del "$b"
    ip link add "$a" netns "$nsa" numtxqueues "$q" numrxqueues "$q" type veth \
      peer name "$b" netns "$nsb" numtxqueues "$q" numrxqueues "$q"
    echo "veth $nsa/$a <-> $nsb/$b ($q queues)"
  fi
}

# tune NS IF QUEUES: offloads off, queue count, link up
tune() {
  local ns=$1 ifc=$2 q=$3
  ip netns exec "$ns" ethtool -K "$ifc" tx off tso off gso off gro off >/dev/null
  if [[ $q -gt 1 ]]; then
    ip netns exec "$ns" ethtool -L "$ifc" rx "$q" tx "$q" 2>/dev/null || true
  fi
  ip -n "$ns" link set "$ifc" up
}

addr() {
  if [[ $2 == *:* ]]; then ip -n "$1" addr replace "$2" dev "$3" nodad
  else ip -n "$1" addr replace "$2" dev "$3"; fi
}

up() {
  local p=${1:-sl} n=${2:-3}
  [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 50 ]] || die "BACKENDS must be 1..50"
  local c=$p-client l=$p-lb s=$p-sw l2=$p-lb2 two=0 v6=0
  [[ ${LB_NODES:-1} == 2 ]] && two=1
  [[ ${IPV6:-0} == 1 ]] && v6=1
  for ns in "$c" "$l" "$s"; do ensure_ns "$ns"; done
  [[ $two == 1 ]] && ensure_ns "$l2"
  for i in $(seq 1 "$n"); do ensure_ns "$p-b$i"; done
  ip netns exec "$l" sysctl -q -w net.ipv4.ip_forward=0
  [[ $two == 1 ]] && ip netns exec "$l2" sysctl -q -w net.ipv4.ip_forward=0

  link_exists "$s" br0 || { ip -n "$s" link add br0 type bridge; echo "bridge $s/br0"; }
  ip -n "$s" link set br0 up
  ensure_veth "$l" back "$s" p0 2
  ip -n "$s" link set p0 master br0
  if [[ $two == 1 ]]; then
    link_exists "$s" brf || { ip -n "$s" link add brf type bridge; echo "bridge $s/brf"; }
    ip -n "$s" link set brf up
    ensure_veth "$c" eth0 "$s" f0 2
    ensure_veth "$l" front "$s" f1 2
    ensure_veth "$l2" front "$s" f2 2
    ensure_veth "$l2" back "$s" q0 2
    for f in f0 f1 f2; do ip -n "$s" link set "$f" master brf; done
    ip -n "$s" link set q0 master br0
  else
    ensure_veth "$c" eth0 "$l" front 2
  fi
  for i in $(seq 1 "$n"); do
    ensure_veth "$p-b$i" eth0 "$s" "p$i" 1
    ip -n "$s" link set "p$i" master br0
  done

  tune "$c" eth0 2; tune "$l" front 2; tune "$l" back 2; tune "$s" p0 2
  if [[ $two == 1 ]]; then
    tune "$l2" front 2; tune "$l2" back 2
    for f in f0 f1 f2 q0; do tune "$s" "$f" 2; done
  fi
  for i in $(seq 1 "$n"); do tune "$p-b$i" eth0 1; tune "$s" "p$i" 1; done
  if [[ ${FAST_PATH:-0} == 1 ]]; then
    # For `sluice run --fast-path xdp`: XDP_REDIRECT into a veth needs NAPI
    # on the receiving end, which GRO turned on after the link is up gives.
    ip netns exec "$c" ethtool -K eth0 gro on >/dev/null
    ip netns exec "$s" ethtool -K p0 gro on >/dev/null
  fi

  addr "$c" 198.18.0.2/24 eth0
  addr "$c" 198.18.0.130/24 eth0
  addr "$l" 198.18.0.1/24 front
  addr "$l" 198.18.1.1/24 back
  if [[ $two == 1 ]]; then
    addr "$l2" 198.18.0.3/24 front
    addr "$l2" 198.18.1.2/24 back
  fi
  ip -n "$c" route replace 198.18.100.0/24 via 198.18.0.1
  if [[ $v6 == 1 ]]; then
    addr "$c" 2001:db8::2/64 eth0
    addr "$l" 2001:db8::1/64 front
    addr "$l" 2001:db8:1::1/64 back
    if [[ $two == 1 ]]; then
      addr "$l2" 2001:db8::3/64 front
      addr "$l2" 2001:db8:1::2/64 back
    fi
    ip -n "$c" -6 route replace 2001:db8:100::/64 via 2001:db8::1
  fi
  for i in $(seq 1 "$n"); do
    addr "$p-b$i" "198.18.1.$((10 + i))/24" eth0
    ip -n "$p-b$i" route replace default via 198.18.1.1
    if [[ $v6 == 1 ]]; then
      addr "$p-b$i" "2001:db8:1::$((10 + i))/64" eth0
      ip -n "$p-b$i" -6 route replace default via 2001:db8:1::1
    fi
  done
  echo "up: $c ($c eth0 198.18.0.2,198.18.0.130) -> $l (front 198.18.0.1, back 198.18.1.1) -> $s br0 -> $n backends 198.18.1.11..$((10 + n))"
  echo "run sluice: ip netns exec $l target/release/sluice run --config FILE --iface front --iface back"
}

down() {
  local p=${1:-sl} ns
  [[ -n $p ]] || die "empty prefix"
  # Only namespaces of exactly this topology: PREFIX-{client,lb,sw,bN}.
  for ns in $(ip netns list | awk '{print $1}' | grep -E -- "^${p}-(client|lb|lb2|sw|b[0-9]+)$" || true); do
    if [[ -n $(ip netns pids "$ns" 2>/dev/null) ]]; then
      echo "warning: processes still in $ns: $(ip netns pids "$ns" | tr '\n' ' ')" >&2
    fi
    ip netns del "$ns"
    echo "deleted netns $ns"
  done
}

case $cmd in
  up) up "$@" ;;
  down) down "$@" ;;
  show)
    p=${1:-sl}
    for ns in $(ip netns list | awk '{print $1}' | grep -E -- "^${p}-(client|lb|lb2|sw|b[0-9]+)$" || true); do
      echo "== $ns"; ip -n "$ns" -br addr
    done ;;
  exec)
    # exec [PREFIX] ROLE CMD...: PREFIX may be left out when ROLE comes first.
    if [[ $# -ge 2 && ! $1 =~ ^(client|lb|lb2|sw|b[0-9]+)$ ]]; then p=$1; shift; else p=sl; fi
    role=${1:?ROLE}; shift
    exec ip netns exec "$p-$role" "$@" ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
