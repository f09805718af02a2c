//! `externalTrafficPolicy: Local` on two LB nodes. The only local endpoint
//! is b1 on `node1` (b2 is on a third node that runs no sluice): through
//! node1's NodePort the backend sees the client's own address (no SNAT) and
//! only b1 is used; node2 has no local endpoint and drops the packets
//! silently (the client times out, it is not refused). The
//! healthCheckNodePort reports this to an external LB: 200 with
//! `localEndpoints: 1` on node1, 503 on node2.
//!
//! Replies from b1 to the client's preserved address go out by b1's default
//! route, via node1 (198.18.1.1), the node that forwarded the request.

use std::time::{Duration, Instant};

use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::{
    json_number, parse_backend_reply, require_root, topology, Role, Sluice, Topology, TopologyOpts,
};

const HC_PORT: &str = "32100";

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: LoadBalancer
  clusterIP: 198.18.100.10
  externalTrafficPolicy: Local
  healthCheckNodePort: {HC_PORT}
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
    nodePort: 30080
---
{}"#,
        endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &[
                Ep::ready(Topology::backend_ip(1)).on("node1"),
                Ep::ready(Topology::backend_ip(2)).on("node3"),
            ],
        )
    )
}

#[test]
fn local_policy_preserves_the_client_and_drops_without_local_endpoints() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2).lb_nodes(2));
    // b1's replies to the client go back through node1 (its default route
    // already is 198.18.1.1); b2 is not local anywhere that matters.
    topo.set_backend_gateway(1, "198.18.1.1");
    let cfg = config();
    let node1 = Sluice::start_in(
        &topo,
        Role::Lb,
        &cfg,
        &["--workers", "1", "--node-name", "node1"],
    );
    let node2 = Sluice::start_in(
        &topo,
        Role::Lb2,
        &cfg,
        &["--workers", "1", "--node-name", "node2"],
    );

    for i in 0..6 {
        let out = topo.curl_in(
            Role::Client,
            &["--max-time", "3", "http://198.18.0.1:30080/"],
        );
        assert!(
            out.success(),
            "node1 NodePort (try {i}): {out}\nnode1 log:\n{}",
            node1.logs()
        );
        let (name, peer, _) = parse_backend_reply(&out.stdout).expect("backend reply");
        assert_eq!(name, "b1", "only the local endpoint may be used");
        assert_eq!(peer, "198.18.0.2", "client address not preserved");
    }

    let t = Instant::now();
    let out = topo.curl_in(
        Role::Client,
        &[
            "--connect-timeout",
            "2",
            "--max-time",
            "3",
            "http://198.18.0.3:30080/",
        ],
    );
    let took = t.elapsed();
    assert!(!out.success(), "node2 has no local endpoint: {out}");
    // Dropped, not rejected: curl gives up at its own timeout (exit 28).
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(28),
        "expected a timeout, not a refusal: {out}"
    );
    assert!(
        took >= Duration::from_millis(1800),
        "answered in {took:?}: {out}"
    );

    // Health checks, on each node's own address.
    let hc = |addr: &str| {
        let url = format!("http://{addr}:{HC_PORT}/healthz");
        topo.curl_in(
            Role::Client,
            &["--max-time", "3", "-w", "\nstatus=%{http_code}", &url],
        )
    };
    let out = hc("198.18.0.1");
    assert!(
        out.success(),
        "node1 health check: {out}\nlog:\n{}",
        node1.logs()
    );
    assert!(out.stdout.ends_with("status=200"), "{out}");
    assert_eq!(json_number(&out.stdout, "localEndpoints"), Some(1), "{out}");
    let out = hc("198.18.0.3");
    assert!(
        out.success(),
        "node2 health check: {out}\nlog:\n{}",
        node2.logs()
    );
    assert!(out.stdout.ends_with("status=503"), "{out}");

    let r2 = node2.stop();
    let r1 = node1.stop();
    assert!(r1.status.is_some_and(|s| s.success()), "{r1:?}");
    assert!(r2.status.is_some_and(|s| s.success()), "{r2:?}");
    assert_eq!(
        r2.counter("new_flows"),
        0,
        "node2 forwarded: {:?}",
        r2.counters
    );
    assert_eq!(
        r2.counter("rejected"),
        0,
        "dropped, not rejected: {:?}",
        r2.counters
    );
}
