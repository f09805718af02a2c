#!/usr/bin/env python3
"""Sustained single-object writes through Sluice's API (scripts/bench-sync.sh rate).

CONC client threads, each with its own keep-alive HTTP/1.1 connection to the
API's Unix socket, PUT (unconditional replace) the EndpointSlice of their own
Services in turn, flipping one endpoint's readiness, for SECONDS seconds and at
most MAX writes in all. Each write is answered once every worker has loaded the
table that holds it. Prints writes/s and the per-write round trip.

  api-load.py SOCKET SERVICES CONC SECONDS MAX
"""
import http.client
import json
import socket
import sys
import threading
import time

sock_path, n, conc, seconds, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def body(i, ready):
    return json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"s{i}-a", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": f"s{i}"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.18.1.11"]}, {"addresses": ["198.18.1.12"]},
                      {"addresses": ["198.18.1.13"], "conditions": {"ready": ready}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    }).encode()


lock = threading.Lock()
times, failures = [], []
budget = [cap]
deadline = time.monotonic() + seconds


def take():
    with lock:
        if budget[0] <= 0 or time.monotonic() >= deadline:
            return False
        budget[0] -= 1
        return True


def client(t):
    conn = UnixConnection(sock_path)
    # Thread t owns Services t, t + conc, ... (distinct objects per thread).
    mine = list(range(t, n, conc))
    k = 0
    while take():
        i = mine[k % len(mine)]
        ready = (k // len(mine)) % 2 == 1
        k += 1
        s = time.monotonic()
        conn.request("PUT", f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/s{i}-a",
                     body=body(i, ready), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        e = time.monotonic() - s
        with lock:
            times.append(e)
            if r.status != 200:
                failures.append(r.status)


start = time.monotonic()
threads = [threading.Thread(target=client, args=(t,)) for t in range(conc)]
for th in threads:
    th.start()
for th in threads:
    th.join()
elapsed = time.monotonic() - start
times.sort()
q = lambda p: times[min(len(times) - 1, int(len(times) * p))] * 1000
print(f"services={n} sustained single-object writes through the API: {conc} clients, "
      f"{len(times)} writes in {elapsed:.1f} s = {len(times) / elapsed:.0f} writes/s; "
      f"round trip p50 {q(0.5):.1f} ms p99 {q(0.99):.1f} ms max {times[-1] * 1000:.1f} ms; "
      f"{len(failures)} refused {sorted(set(failures))}")
sys.exit(1 if failures else 0)
