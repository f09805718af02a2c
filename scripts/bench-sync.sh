#!/usr/bin/env bash
# End-to-end cost of one API change at scale: starts the real `sluice run`
# in the test network (scripts/topology.sh) with N Services (ClusterIP, one
# port, an EndpointSlice of 3 endpoints each), then applies CHANGES
# single-endpoint EndpointSlice changes (one endpoint going not ready and
# back) through the API with `sluice apply`, each answered only once every
# worker has loaded its table. Prints the round trip's p50/p90/max and the
# daemon's own sluice_sync_duration_seconds (write to table loaded).
# KIND=service instead adds one more Service with its slice (its own front
# end and a new endpoint port: the steering maps change), then deletes the
# slice (untimed) and the Service (timed), in turn.
# KIND=rate instead sustains single-object writes (scripts/api-load.py):
# CONC clients (default 16), each on its own connection and its own
# Services' slices, write for DURATION seconds (default 10) and at most CHANGES
# writes in all; prints writes/s, the round trip, and how many commits
# (tables published) carried them (the API commits concurrent writes
# together: control/src/api/group.rs).
#
#   scripts/bench-sync.sh [N=10000] [CHANGES=40] [KIND=endpoint|service|rate]
#
# KEEP_LOG=FILE keeps the daemon's log there (the work dir is removed).
#
# Release build (cargo build --release --bins) first. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}; K=${2:-40}; KIND=${3:-endpoint}
[[ $KIND == endpoint || $KIND == service || $KIND == rate ]] || { echo "bench-sync.sh: KIND is endpoint, service or rate, not $KIND" >&2; exit 2; }
CONC=${CONC:-16}; DURATION=${DURATION:-10}
BIN=$PWD/target/release
P=bsync
[[ $(id -u) -eq 0 ]] || { echo "bench-sync.sh: needs root (CAP_NET_ADMIN)" >&2; exit 1; }
[[ -x $BIN/sluice ]] || { echo "bench-sync.sh: build first: cargo build --release --bins" >&2; exit 1; }
work=$(mktemp -d /tmp/sluice-bench-sync.XXXXXX)
spid=
cleanup() {
  [[ -n "$spid" ]] && kill "$spid" 2>/dev/null && wait "$spid" 2>/dev/null
  scripts/topology.sh down $P >/dev/null || true
  [[ -n "${KEEP_LOG:-}" ]] && cp "$work/log" "$KEEP_LOG"
  rm -rf "$work"
}
trap cleanup EXIT
python3 - "$N" "$work" <<'PY'
import ipaddress, sys
n, work = int(sys.argv[1]), sys.argv[2]
base = ipaddress.IPv4Address("198.18.16.1")  # up to 198.19.255.x: 198.18.0.0/15 only
assert n <= 2**17 - 4096 - 3, "at most 126973 services fit in 198.18.16.1-198.19.255.254 beside the added one"
def slice_(i, ready=True):
    cond = "" if ready else "\n    conditions: {ready: false}"
    return f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s{i}-a, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}
addressType: IPv4
endpoints:
  - addresses: ["198.18.1.11"]
  - addresses: ["198.18.1.12"]
  - addresses: ["198.18.1.13"]{cond}
ports: [{{name: http, protocol: TCP, port: 8080}}]
"""
with open(f"{work}/services.yaml", "w") as f:
    for i in range(n):
        f.write(f"""---
apiVersion: v1
kind: Service
metadata: {{name: s{i}, namespace: default}}
spec:
  clusterIP: {base + i}
  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080}}]
---
""" + slice_(i))
open(f"{work}/down.yaml", "w").write(slice_(n // 2, False))
open(f"{work}/up.yaml", "w").write(slice_(n // 2, True))
new_svc = f"""apiVersion: v1
kind: Service
metadata: {{name: snew, namespace: default}}
spec:
  clusterIP: {base + n}
  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8081}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: snew-a, namespace: default, labels: {{kubernetes.io/service-name: snew}}}}
addressType: IPv4
endpoints:
  - addresses: ["198.18.1.11"]
ports: [{{name: http, protocol: TCP, port: 8081}}]
"""
open(f"{work}/new.yaml", "w").write(new_svc)
PY
scripts/topology.sh up $P 3 >/dev/null
sock=$work/api.sock
t0=$(date +%s%N)
ip netns exec $P-lb "$BIN/sluice" run --config "$work/services.yaml" --iface front --iface back \
  --workers 1 --stats-interval 0 --api-socket "$sock" --state-dir "$work/state" \
  --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 \
  >"$work/out" 2>"$work/log" &
spid=$!
for _ in $(seq 1 3000); do  # at most 300 s
  grep -q "sluice ready" "$work/log" && break
  kill -0 "$spid" 2>/dev/null || { cat "$work/log" >&2; echo "bench-sync.sh: sluice exited" >&2; exit 1; }
  sleep 0.1
done
grep -q "sluice ready" "$work/log" || { echo "bench-sync.sh: sluice not ready after 300 s" >&2; exit 1; }
echo "services=$N: sluice ready after $(( ($(date +%s%N) - t0) / 1000000 )) ms (file parse, compile, steering maps, workers)"
commits() {
  ip netns exec $P-lb curl -s 127.0.0.1:10249/metrics | awk '/^sluice_sync_duration_seconds_count/ {print $2}'
}
if [[ $KIND == rate ]]; then
  c0=$(commits)
  scripts/api-load.py "$sock" "$N" "$CONC" "$DURATION" "$K"
  c1=$(commits)
  echo "commits (tables published) for these writes: $(( c1 - c0 ))"
  exit 0
fi
: >"$work/times"
for i in $(seq 1 "$K"); do
  f=$work/down.yaml; (( i % 2 )) || f=$work/up.yaml
  verb=apply
  args=(-f "$f")
  if [[ $KIND == service ]]; then
    args=(-f "$work/new.yaml")
    if (( i % 2 == 0 )); then
      # The slice first, untimed, so that the timed delete takes back what the add brought.
      verb=delete; args=(services snew)
      "$BIN/sluice" delete endpointslices snew-a --api-socket "$sock" >/dev/null
    fi
  fi
  s=$(date +%s%N)
  "$BIN/sluice" $verb "${args[@]}" --api-socket "$sock" >/dev/null
  echo $(( ($(date +%s%N) - s) / 1000 )) >>"$work/times"
done
sort -n "$work/times" | awk -v n="$N" -v kind="$KIND" '{a[NR]=$1} END {
  printf "services=%d one " kind " change through the API (sluice apply round trip, answered once every worker loaded the table): n=%d p50 %.1f ms p90 %.1f ms max %.1f ms\n",
    n, NR, a[int(NR*0.5)+1]/1000, a[int(NR*0.9)]/1000, a[NR]/1000 }'
ip netns exec $P-lb curl -s 127.0.0.1:10249/metrics \
  | awk '/^sluice_sync_duration_seconds_sum/ {s=$2} /^sluice_sync_duration_seconds_count/ {c=$2}
         /^sluice_sync_duration_seconds_bucket/ { match($0, /le="[^"]*"/); le[++n]=substr($0, RSTART+4, RLENGTH-5); cum[n]=$2 }
         END { if (c == 0) exit
               for (i = 1; i <= n; i++) { if (p50 == "" && cum[i] >= 0.5 * c) p50 = le[i]; if (p99 == "" && cum[i] >= 0.99 * c) p99 = le[i] }
               printf "daemon sluice_sync_duration_seconds (write arrived to every worker on the new table): %d writes, mean %.1f ms, p50 <= %s s, p99 <= %s s (histogram buckets)\n", c, s / c * 1000, p50, p99 }'
