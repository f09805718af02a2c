//! `--host-traffic on` with more endpoints than the socket programs once
//! had slots for (256): a ClusterIP over 300 endpoints reaches every one of
//! them from the node, in the scheduler's rotation, and session affinity
//! still holds on such a service (its check is one `members` lookup, not a
//! walk of the slots).
//!
//! The endpoints are addresses of 198.18.2.0/23, routed from the LB
//! namespace via backend 1 (nobody answers: the test reads the peer the
//! kernel connected each UDP socket to, from `/proc/net/udp`, which the
//! `getpeername` hook does not rewrite).

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::{require_root, topology, Role, Sluice, Topology, TopologyOpts};

const ENDPOINTS: usize = 300;

fn endpoint(i: usize) -> String {
    format!("198.18.{}.{}", 2 + i / 250, 1 + i % 250)
}

fn service(name: &str, ip: &str, affinity: bool) -> String {
    let eps: Vec<Ep> = (0..ENDPOINTS).map(|i| Ep::ready(endpoint(i))).collect();
    let aff = if affinity {
        "  sessionAffinity: ClientIP\n"
    } else {
        ""
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {ip}
{aff}  ports:
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
---
{}"#,
        endpoint_slice(&format!("{name}-1"), name, &[("dns", 5353, "UDP")], &eps)
    )
}

/// Connects `n` UDP sockets from the LB namespace to `vip`:5353 (all open
/// at once) and counts the peers the kernel holds for them.
fn peers(topo: &Topology, vip: &str, n: usize) -> BTreeMap<String, usize> {
    let script = format!(
        r#"
import socket
socks = []
for _ in range({n}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("{vip}", 5353))
    socks.append(s)
mine = set(s.getsockname()[1] for s in socks)
for line in open("/proc/net/udp").readlines()[1:]:
    f = line.split()
    lport = int(f[1].split(":")[1], 16)
    ip, port = f[2].split(":")
    if lport in mine and int(port, 16) == 5353:
        b = bytes.fromhex(ip)[::-1]
        print(".".join(str(x) for x in b))
"#
    );
    let out = topo.exec(
        Role::Lb,
        &["python3", "-c", &script],
        Duration::from_secs(20),
    );
    assert!(out.success(), "{out}");
    let mut m = BTreeMap::new();
    for l in out.stdout.lines() {
        *m.entry(l.trim().to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn the_node_reaches_every_one_of_300_endpoints_and_affinity_holds() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1));
    topo.ip(
        Role::Lb,
        &[
            "route",
            "add",
            "198.18.2.0/23",
            "via",
            &Topology::backend_ip(1),
        ],
    );
    let config = format!(
        "{}\n---\n{}",
        service("many", "198.18.100.10", false),
        service("sticky", "198.18.100.11", true)
    );
    let sluice = Sluice::start(&topo, &config, &["--workers", "1", "--host-traffic", "on"]);

    // Round robin over 300: two turns reach every endpoint twice.
    let got = peers(&topo, "198.18.100.10", 2 * ENDPOINTS);
    assert_eq!(
        got.len(),
        ENDPOINTS,
        "the node reached {} endpoints of {ENDPOINTS}: {got:?}\n{}",
        got.len(),
        sluice.logs()
    );
    assert!(got.values().all(|&n| n == 2), "uneven rotation: {got:?}");
    assert!(
        (0..ENDPOINTS).all(|i| got.contains_key(&endpoint(i))),
        "{got:?}"
    );

    // ClientIP affinity on a 300-endpoint service: one endpoint for all.
    let got = peers(&topo, "198.18.100.11", 20);
    assert_eq!(got.len(), 1, "affinity broke: {got:?}");

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(
        report.counter("host_traffic_redirected") >= (2 * ENDPOINTS + 20) as u64,
        "{:?}",
        report.counters
    );
}
