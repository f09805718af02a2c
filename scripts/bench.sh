#!/usr/bin/env bash
# End-to-end benchmark: Sluice beside the kernel's iptables DNAT (kube-proxy's
# chain shape), nftables DNAT (verdict map + numgen) and a raw AF_XDP
# MAC-rewriting forwarder (the ceiling), on veth, in one run.
#
#   scripts/bench.sh [sluice-bench run options...]
#
# Builds the release binaries (sluice, sluice-bench), then runs
# `sluice-bench run` with CSV and PNG output in bench-results/ (or
# $BENCH_OUT). The defaults finish in about three minutes on a 2-core
# machine. Useful options (see `sluice-bench run --help`):
#   --contenders sluice,iptables   --tests udp,conn,tcp   --seconds 2
#   --flows 10000 --flows-sweep 1,100,10000 --services-sweep 1,1000,10000
#   --lb-cpu 1 --load-cpu 0 --busy-poll --threaded-napi --iptables nft
#   --repeat 3 (best of 3 per measurement: steadier on a busy machine)
#
# Everything runs in namespaces the tool creates (prefix sb<random>), with
# addresses from 198.18.0.0/15 only; every load is bounded in packets and
# seconds. The namespaces are removed at the end, and also by the trap below
# if the tool is killed.
set -euo pipefail

die() { echo "bench.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (namespaces, XDP, AF_XDP)"

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
out=${BENCH_OUT:-$root/bench-results}
prefix="sb$(printf '%04x' $((RANDOM % 65536)))"

need=()
for t in ip taskset ethtool iperf3 iptables-legacy nft; do
  command -v "$t" >/dev/null 2>&1 || need+=("$t")
done
if ((${#need[@]})); then
  echo "bench.sh: missing ${need[*]}; installing iproute2 util-linux ethtool iperf3 iptables nftables" >&2
  apt-get install -y iproute2 util-linux ethtool iperf3 iptables nftables >/dev/null ||
    die "could not install ${need[*]} (run scripts/deps.sh)"
fi

echo "== building (release)"
cargo build --release -p sluice-control --bin sluice -p sluice-bench --bin sluice-bench

pid=""
cleanup() {
  local rc=$?
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # Whatever the tool could not remove itself (it was killed): its own
  # namespaces only, and the processes it left inside them.
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}-(client|lb|sw|b[0-9]+)$" || true); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  exit "$rc"
}
trap cleanup EXIT INT TERM

mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
echo "== running (namespaces ${prefix}-*, results in $out)"
"$target/release/sluice-bench" run --prefix "$prefix" \
  --sluice "$target/release/sluice" \
  --csv "$out/bench-$stamp.csv" --plot "$out/bench-$stamp.png" "$@" \
  > >(tee "$out/bench-$stamp.md") &
pid=$!
wait "$pid"
