//! Terminating endpoints (EndpointSlice `ready: false, serving: true,
//! terminating: true`) take no new flows while a ready endpoint exists, and
//! the flows they already have continue: a paced bulk transfer to b1 runs
//! across a reload that marks b1 terminating and adds b2, completes intact
//! (checked byte for byte), and new connections all go to b2.

use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::{
    parse_backend_reply, require_root, topology, ReloadOutcome, Role, Sluice, Topology,
};

fn config(endpoints: &[Ep]) -> String {
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
            endpoints
        )
    )
}

#[test]
fn terminating_endpoint_keeps_its_flows_and_gets_no_new_ones() {
    require_root();
    let topo = topology!();
    let b1 = Topology::backend_ip(1);
    let mut sluice = Sluice::start(&topo, &config(&[Ep::ready(&b1)]), &["--workers", "1"]);

    // 15 MB at 5 MB/s: about 3 s on the wire.
    let mut bulk = topo.spawn_testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.100.10:9000",
            "--bytes",
            "15000000",
            "--rate",
            "5000000",
            "--timeout-ms",
            "20000",
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(bulk.is_running(), "bulk transfer ended before the reload");

    sluice.rewrite_config(&config(&[
        Ep::terminating(&b1),
        Ep::ready(Topology::backend_ip(2)),
    ]));
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

    for i in 0..6 {
        let out = topo.curl("http://198.18.100.10/", None);
        assert!(out.success(), "new connection {i}: {out}");
        let (name, _, _) = parse_backend_reply(&out.stdout).expect("backend reply");
        assert_eq!(name, "b2", "a new flow went to the terminating endpoint");
    }

    let out = bulk.wait(Duration::from_secs(20));
    assert!(
        out.success(),
        "transfer to the terminating endpoint: {out}\nlog:\n{}",
        sluice.logs()
    );
    assert!(out.stdout.starts_with("ok 15000000 "), "{out}");
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
