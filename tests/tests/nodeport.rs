//! NodePort: the nodePort answers on every address of the node (here the
//! LB's front address 198.18.0.1 and its back address 198.18.1.1), not on
//! addresses the node does not own, and not on the ClusterIP. With
//! `externalTrafficPolicy: Cluster` (the default) the client is masqueraded,
//! so the backend sees the LB's address.

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{parse_backend_reply, require_root, topology, Role, Sluice};

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: NodePort
  clusterIP: 198.18.100.10
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
            &ready_backends(&[1, 2, 3])
        )
    )
}

#[test]
fn node_port_answers_on_every_node_address_only() {
    require_root();
    let topo = topology!();
    // The LB's back address and an address nobody owns, both reached via
    // the LB's front link.
    topo.ip(
        Role::Client,
        &["route", "add", "198.18.1.1/32", "via", "198.18.0.1"],
    );
    topo.ip(
        Role::Client,
        &["route", "add", "198.18.1.99/32", "via", "198.18.0.1"],
    );
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    for node_addr in ["198.18.0.1", "198.18.1.1"] {
        for i in 0..3 {
            let url = format!("http://{node_addr}:30080/");
            let out = topo.curl_in(Role::Client, &["--max-time", "3", &url]);
            assert!(
                out.success(),
                "{url} (try {i}): {out}\nlog:\n{}",
                sluice.logs()
            );
            let (_, peer, _) = parse_backend_reply(&out.stdout).expect("backend reply");
            assert_eq!(
                peer, "198.18.1.1",
                "externalTrafficPolicy Cluster: the client must be masqueraded: {}",
                out.stdout
            );
        }
    }
    // The ClusterIP still answers on the service port.
    let out = topo.curl("http://198.18.100.10/", None);
    assert!(out.success(), "ClusterIP: {out}");

    // Not a node address: the VIP, and an address the LB does not own.
    for url in ["http://198.18.100.10:30080/", "http://198.18.1.99:30080/"] {
        let out = topo.curl_in(
            Role::Client,
            &["--connect-timeout", "1", "--max-time", "2", url],
        );
        assert!(!out.success(), "{url} must not answer: {out}");
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(report.counter("new_flows") >= 7, "{:?}", report.counters);
}
