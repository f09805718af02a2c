#!/usr/bin/env bash
# The demo: build Sluice, build a client / LB / 3-backend topology of
# network namespaces on veth, start Sluice on examples/demo.yaml, send real
# HTTP and UDP requests to the VIP from the client namespace, show which
# backend answered each, print Sluice's counters, and tear everything down
# (also on failure or Ctrl-C). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-sldemo}
VIP=198.18.100.10
REQUESTS=${REQUESTS:-9}

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: needs root (network namespaces, XDP, AF_XDP): run it as root" >&2
  exit 1
fi

scripts/deps.sh
echo "== building (release)"
cargo build --release --bins -q
BIN=$PWD/target/release
LOG=$(mktemp -t sluice-demo.XXXXXX)
SOCK="$LOG.sock"

pids=()
cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  scripts/topology.sh down "$PREFIX" >/dev/null 2>&1
  rm -rf "$LOG" "$LOG.out" "$SOCK" "$LOG.state"
}
trap cleanup EXIT INT TERM

echo "== topology"
scripts/topology.sh down "$PREFIX" >/dev/null 2>&1 || true
FAST_PATH=1 scripts/topology.sh up "$PREFIX"

echo "== backends"
for i in 1 2 3; do
  ip netns exec "$PREFIX-b$i" "$BIN/sluice-testsrv" serve --name "b$i" --http 8080 --udp 5353 --bulk 9000 &
  pids+=($!)
done

echo "== sluice run --config examples/demo.yaml --iface front --iface back --cluster-cidr 198.18.1.0/24 --fast-path xdp --host-traffic on --api-socket $SOCK"
ip netns exec "$PREFIX-lb" "$BIN/sluice" run --config examples/demo.yaml \
  --iface front --iface back --workers 1 --cluster-cidr 198.18.1.0/24 --stats-interval 0 \
  --fast-path xdp --host-traffic on \
  --api-socket "$SOCK" --state-dir "$LOG.state" --metrics-bind-address 127.0.0.1:10249 \
  --healthz-bind-address 127.0.0.1:10256 >"$LOG.out" 2>"$LOG" &
sluice_pid=$!
pids+=($sluice_pid)
for _ in $(seq 1 100); do
  grep -q "sluice ready" "$LOG" && break
  if ! kill -0 "$sluice_pid" 2>/dev/null; then cat "$LOG" >&2; echo "demo.sh: sluice exited" >&2; exit 1; fi
  sleep 0.1
done
grep -q "sluice ready" "$LOG" || { cat "$LOG" >&2; echo "demo.sh: sluice did not become ready" >&2; exit 1; }
sed 's/^/  sluice| /' "$LOG"

echo "== $REQUESTS HTTP requests from the client (198.18.0.2) to http://$VIP/"
for i in $(seq 1 "$REQUESTS"); do
  printf '  request %d -> ' "$i"
  ip netns exec "$PREFIX-client" curl -sS --max-time 3 "http://$VIP/"
done

echo "== UDP request to $VIP:5353"
ip netns exec "$PREFIX-client" "$BIN/sluice-testsrv" udp-query "$VIP:5353" --count 3 --timeout-ms 1000 | sed 's/^/  /'

echo "== from the LB node itself (--host-traffic on): 3 HTTP requests to http://$VIP/"
for i in 1 2 3; do
  printf '  request %d -> ' "$i"
  ip netns exec "$PREFIX-lb" curl -sS --max-time 3 "http://$VIP/"
done

echo "== the objects, through the API: sluice get svc / endpointslices -o wide"
"$BIN/sluice" get svc --api-socket "$SOCK" | sed 's/^/  /'
"$BIN/sluice" get endpointslices -o wide --api-socket "$SOCK" | sed 's/^/  /'

echo "== a live change: sluice apply -f examples/demo-change.yaml (198.18.1.13 not ready)"
"$BIN/sluice" apply -f examples/demo-change.yaml --api-socket "$SOCK" | sed 's/^/  /'
echo "== 6 more HTTP requests: only b1 and b2 answer; no restart, no reload"
for i in $(seq 1 6); do
  printf '  request %d -> ' "$i"
  ip netns exec "$PREFIX-client" curl -sS --max-time 3 "http://$VIP/"
done

echo "== IPVS: a virtual service built with ipvsadm (wrr, b1 weight 1, b2 weight 2)"
IPVSADM=("$BIN/sluice" ipvsadm --api-socket "$SOCK")
"${IPVSADM[@]}" -A -t 198.18.100.20:80 -s wrr
"${IPVSADM[@]}" -a -t 198.18.100.20:80 -r 198.18.1.11:8080 -m -w 1
"${IPVSADM[@]}" -a -t 198.18.100.20:80 -r 198.18.1.12:8080 -m -w 2
echo "== 6 HTTP requests to http://198.18.100.20/"
for i in $(seq 1 6); do
  printf '  request %d -> ' "$i"
  ip netns exec "$PREFIX-client" curl -sS --max-time 3 "http://198.18.100.20/"
done
echo "== ipvsadm -Ln (the Kubernetes Service is listed too)"
"${IPVSADM[@]}" -Ln | sed 's/^/  /'
echo "== ipvsadm -Ln --stats (connections, packets and bytes per service and real server)"
"${IPVSADM[@]}" -Ln --stats | sed 's/^/  /'
echo "== ipvsadm -Lnc (the connection table, first lines)"
"${IPVSADM[@]}" -Lnc | head -6 | sed 's/^/  /'
echo "== sluice describe svc web (front ends, endpoints, counters)"
"$BIN/sluice" describe svc web --api-socket "$SOCK" | sed 's/^/  /'
echo "== sluice stats (per service and backend, from the workers' counters)"
"$BIN/sluice" stats --api-socket "$SOCK" | sed 's/^/  /'
echo "== /metrics (a few lines) and /healthz"
ip netns exec "$PREFIX-lb" curl -sS http://127.0.0.1:10249/metrics | grep -E '^sluice_(backend_new_flows|sync_duration_seconds_count|table_generation)' | head -8 | sed 's/^/  /'
printf '  healthz: '; ip netns exec "$PREFIX-lb" curl -sS http://127.0.0.1:10256/healthz; echo

echo "== stopping sluice; its counters:"
kill -TERM "$sluice_pid"
wait "$sluice_pid" || true
pids=("${pids[@]/$sluice_pid}")
grep -E '^counter (rx|tx|new_flows|snat_flows|flows_live|xdp_)|^counter drop_.* [1-9]' "$LOG.out" | sed 's/^/  /'
rm -f "$LOG.out"
echo "== done; tearing down"
