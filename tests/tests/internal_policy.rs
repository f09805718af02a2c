//! `internalTrafficPolicy` on ClusterIP services, sluice running as `node1`.
//! Endpoints b1 (on node1) and b2 (on node2):
//!
//! * `Local` (198.18.100.10): only node1's endpoints are used; all requests
//!   land on b1.
//! * `Local` with only node2 endpoints (198.18.100.11): there is no local
//!   endpoint, so the traffic is dropped, not rejected (kube-proxy: "no
//!   local endpoints" drops); the client times out, and the counters show
//!   `drop_no_backend`, with `rejected` 0.
//! * `Cluster`, the default (198.18.100.12): both endpoints are used.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::{
    parse_backend_reply, require_root, topology, Role, Sluice, Topology, TopologyOpts,
};

/// A ClusterIP service `name` at `ip`, port 80 → 8080, with the
/// `internalTrafficPolicy` line `policy` (empty: the default), and its
/// EndpointSlice over `(backend index, node)`.
fn service(name: &str, ip: &str, policy: &str, eps: &[(usize, &str)]) -> String {
    let endpoints: Vec<Ep> = eps
        .iter()
        .map(|&(i, node)| Ep::ready(Topology::backend_ip(i)).on(node))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {ip}
{policy}  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
---
{}"#,
        endpoint_slice(
            &format!("{name}-1"),
            name,
            &[("http", 8080, "TCP")],
            &endpoints
        )
    )
}

fn config() -> String {
    [
        service(
            "local",
            "198.18.100.10",
            "  internalTrafficPolicy: Local\n",
            &[(1, "node1"), (2, "node2")],
        ),
        service(
            "remote-only",
            "198.18.100.11",
            "  internalTrafficPolicy: Local\n",
            &[(2, "node2")],
        ),
        service(
            "cluster",
            "198.18.100.12",
            "",
            &[(1, "node1"), (2, "node2")],
        ),
    ]
    .join("---\n")
}

/// `n` requests to `http://ip/`, counted per backend name.
fn spread(topo: &Topology, sluice: &Sluice, ip: &str, n: usize) -> BTreeMap<String, usize> {
    let url = format!("http://{ip}/");
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let out = topo.curl(&url, None);
        assert!(
            out.success(),
            "{url} request {i}: {out}\nsluice log:\n{}",
            sluice.logs()
        );
        let (name, peer, _) = parse_backend_reply(&out.stdout).expect("backend reply");
        assert_eq!(peer, "198.18.0.2", "client SNATed: {out}");
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

#[test]
fn internal_traffic_policy_local_and_cluster() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2));
    let sluice = Sluice::start(
        &topo,
        &config(),
        &["--workers", "1", "--node-name", "node1"],
    );

    let local = spread(&topo, &sluice, "198.18.100.10", 20);
    assert_eq!(
        local,
        BTreeMap::from([("b1".to_string(), 20)]),
        "Local: only node1's endpoint may be used"
    );

    let cluster = spread(&topo, &sluice, "198.18.100.12", 20);
    assert_eq!(
        cluster.keys().map(String::as_str).collect::<Vec<_>>(),
        ["b1", "b2"],
        "Cluster: both endpoints must be used: {cluster:?}"
    );

    // No local endpoint: dropped, so curl gives up at its own timeout
    // (exit 28) instead of being refused (exit 7).
    let t = Instant::now();
    let out = topo.curl_in(
        Role::Client,
        &[
            "--connect-timeout",
            "2",
            "--max-time",
            "3",
            "http://198.18.100.11/",
        ],
    );
    let took = t.elapsed();
    assert!(!out.success(), "no local endpoint, yet answered: {out}");
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(28),
        "expected a timeout, not a refusal: {out}\nsluice log:\n{}",
        sluice.logs()
    );
    assert!(
        took >= Duration::from_millis(1800),
        "gave up after {took:?}: {out}"
    );

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(
        report.counter("drop_no_backend") > 0,
        "the SYNs to the service without local endpoints: {:?}",
        report.counters
    );
    assert_eq!(
        report.counter("rejected"),
        0,
        "dropped, not rejected: {:?}",
        report.counters
    );
}
