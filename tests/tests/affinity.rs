//! `sessionAffinity: ClientIP` with `timeoutSeconds: 2`: every new
//! connection of one client goes to the same endpoint while the client is
//! active; after more than the timeout of idleness the affinity is gone and
//! the scheduler (round robin over three endpoints, one worker) picks
//! another endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{parse_backend_reply, require_root, topology, Sluice, Topology};

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 2
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
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

fn hit(topo: &Topology, i: usize) -> String {
    let out = topo.curl("http://198.18.100.10/", None);
    assert!(out.success(), "connection {i}: {out}");
    parse_backend_reply(&out.stdout)
        .unwrap_or_else(|| panic!("connection {i}: not a backend reply: {out}"))
        .0
}

#[test]
fn client_ip_affinity_sticks_then_expires() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    let mut hits = BTreeMap::new();
    for i in 0..50 {
        *hits.entry(hit(&topo, i)).or_insert(0usize) += 1;
    }
    assert_eq!(
        hits.len(),
        1,
        "one client, 50 connections, several endpoints: {hits:?}\nlog:\n{}",
        sluice.logs()
    );
    let first = hits.keys().next().cloned().unwrap_or_default();

    std::thread::sleep(Duration::from_secs(3));
    let after = hit(&topo, 50);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_ne!(
        after, first,
        "affinity outlived timeoutSeconds (round robin over 3 must move on)\nlogs:\n{}",
        report.logs
    );
}
