//! Hairpin: an endpoint reaching its own service. b1 connects to the VIP 30
//! times; every connection succeeds, including those scheduled back to b1
//! itself (sluice masquerades them, so b1's reply to itself returns through
//! the LB instead of short-circuiting inside b1's kernel).

use std::collections::BTreeMap;

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
  type: ClusterIP
  clusterIP: 198.18.100.10
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

#[test]
fn an_endpoint_reaches_its_own_service() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    let mut hits = BTreeMap::new();
    for i in 0..30 {
        let out = topo.curl_in(
            Role::Backend(1),
            &["--max-time", "3", "http://198.18.100.10/"],
        );
        assert!(
            out.success(),
            "b1 -> VIP (try {i}): {out}\nhits so far {hits:?}\nlog:\n{}",
            sluice.logs()
        );
        let (name, _, _) = parse_backend_reply(&out.stdout).expect("backend reply");
        *hits.entry(name).or_insert(0usize) += 1;
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(
        hits.get("b1").copied().unwrap_or(0) >= 1,
        "no connection was hairpinned back to b1: {hits:?}"
    );
    assert_eq!(hits.values().sum::<usize>(), 30);
}
