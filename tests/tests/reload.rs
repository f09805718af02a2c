//! A config reload under traffic: adding an endpoint while a paced bulk
//! transfer runs through the VIP neither drops nor corrupts that transfer
//! (the stream is checked byte for byte), and new connections then use the
//! new endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{
    parse_backend_reply, require_root, topology, ReloadOutcome, Role, Sluice, TopologyOpts,
};

fn config(backends: &[usize]) -> String {
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
  - name: bulk
    protocol: TCP
    port: 9000
    targetPort: 9000
---
{}"#,
        endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP"), ("bulk", 9000, "TCP")],
            &ready_backends(backends)
        )
    )
}

#[test]
fn adding_an_endpoint_keeps_running_flows_and_serves_new_ones() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(4));
    let mut sluice = Sluice::start(&topo, &config(&[1, 2, 3]), &["--workers", "1"]);

    // 20 MB at 5 MB/s: about 4 s on the wire.
    let mut bulk = topo.spawn_testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.100.10:9000",
            "--bytes",
            "20000000",
            "--rate",
            "5000000",
            "--timeout-ms",
            "20000",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(bulk.is_running(), "bulk transfer ended before the reload");

    sluice.rewrite_config(&config(&[1, 2, 3, 4]));
    let outcome = sluice.reload();
    assert!(
        matches!(outcome, ReloadOutcome::Applied(_)),
        "{outcome:?}\nlog:\n{}",
        sluice.logs()
    );
    assert!(
        bulk.is_running(),
        "the reload did not happen during the transfer"
    );

    let out = bulk.wait(Duration::from_secs(25));
    assert!(
        out.success(),
        "bulk transfer across the reload: {out}\nlog:\n{}",
        sluice.logs()
    );
    assert!(out.stdout.starts_with("ok 20000000 "), "{out}");

    let mut hits = BTreeMap::new();
    for i in 0..12 {
        let out = topo.curl("http://198.18.100.10/", None);
        assert!(out.success(), "connection {i} after reload: {out}");
        let (name, _, _) = parse_backend_reply(&out.stdout).expect("backend reply");
        *hits.entry(name).or_insert(0usize) += 1;
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(
        hits.get("b4").copied().unwrap_or(0) >= 1,
        "b4 never used: {hits:?}"
    );
    // Twelve consecutive round-robin picks over four endpoints: three each.
    let expected: BTreeMap<String, usize> = (1..=4).map(|i| (format!("b{i}"), 3)).collect();
    assert_eq!(hits, expected, "logs:\n{}", report.logs);
}
