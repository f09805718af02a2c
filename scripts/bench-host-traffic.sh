#!/usr/bin/env bash
# Cost of --host-traffic on for the node's own connections: in the test
# network (scripts/topology.sh), a client in the LB's namespace opens
# CONNS TCP connections (connect, send a request line, read the reply,
# close) to the ClusterIP 198.18.100.10:80 through the socket programs, and
# as many straight to the endpoint 198.18.1.11:8080; then the same with
# connected UDP (one datagram and its echo per socket). Prints µs per
# connection for each and the ratio. Bounded: CONNS (default 2000) per run,
# each socket with a 2 s timeout.
#
#   scripts/bench-host-traffic.sh [CONNS=2000]
#
# Release build (cargo build --release --bins) first. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
BIN=$PWD/target/release
P=bhost
[[ $(id -u) -eq 0 ]] || { echo "bench-host-traffic.sh: needs root" >&2; exit 1; }
[[ -x $BIN/sluice && -x $BIN/sluice-testsrv ]] || { echo "bench-host-traffic.sh: build first: cargo build --release --bins" >&2; exit 1; }
work=$(mktemp -d /tmp/sluice-bench-host.XXXXXX)
spid= bpid=
cleanup() {
  [[ -n "$spid" ]] && kill "$spid" 2>/dev/null && wait "$spid" 2>/dev/null
  [[ -n "$bpid" ]] && kill "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null
  scripts/topology.sh down $P >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cat >"$work/lb.yaml" <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.18.100.10
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
  - {name: dns, protocol: UDP, port: 5353, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ["198.18.1.11"]}]
ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 5353}]
EOF
scripts/topology.sh up $P 1 >/dev/null
ip netns exec $P-b1 "$BIN/sluice-testsrv" serve --name b1 --http 8080 --udp 5353 >/dev/null 2>&1 &
bpid=$!
ip netns exec $P-lb "$BIN/sluice" run --config "$work/lb.yaml" --iface front --iface back \
  --workers 1 --stats-interval 0 --host-traffic on --api-socket "$work/api.sock" \
  --state-dir "$work/state" --metrics-bind-address 127.0.0.1:10249 \
  --healthz-bind-address 127.0.0.1:10256 >"$work/out" 2>"$work/log" &
spid=$!
for _ in $(seq 1 200); do  # at most 20 s
  grep -q "sluice ready" "$work/log" && break
  kill -0 "$spid" 2>/dev/null || { cat "$work/log" >&2; echo "bench-host-traffic.sh: sluice exited" >&2; exit 1; }
  sleep 0.1
done
grep -q "sluice ready" "$work/log" || { echo "bench-host-traffic.sh: sluice not ready" >&2; exit 1; }
ip netns exec $P-lb python3 - "$N" <<'PY'
import socket, sys, time
n = int(sys.argv[1])
def tcp(addr):
    s = socket.create_connection(addr, timeout=2)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    while s.recv(4096):
        pass
    s.close()
def udp(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect(addr)
    s.send(b"q")
    s.recv(2048)
    s.close()
def per_conn(f, addr):
    f(addr)  # warm: neighbour entries, caches
    t = time.perf_counter()
    for _ in range(n):
        f(addr)
    return (time.perf_counter() - t) / n * 1e6
for name, f, vip, ep in [("tcp", tcp, ("198.18.100.10", 80), ("198.18.1.11", 8080)),
                         ("udp", udp, ("198.18.100.10", 5353), ("198.18.1.11", 5353))]:
    # Interleaved halves, so drift on a shared machine hits both alike.
    b1 = per_conn(f, ep)
    a1 = per_conn(f, vip)
    a2 = per_conn(f, vip)
    b2 = per_conn(f, ep)
    a, b = (a1 + a2) / 2, (b1 + b2) / 2
    print(f"{name}: {n}x2 per target: through the ClusterIP {a:.1f} us/conn, "
          f"straight to the endpoint {b:.1f} us/conn, ratio {a / b:.3f}")
PY
