//! Early drop on a full flow table, through the real binary: with live UDP
//! flows and half-open or closed TCP flows in a table of 8, new TCP flows
//! evict the TCP leftovers (the embryonic class), never the UDP flows,
//! although those are older; the evictions are counted by class in the
//! `early_drop_*` counters printed at exit.
//!
//! The TCP flows are connections to a service port whose endpoint has no
//! listener: the backend's kernel answers each SYN with a RST, which leaves
//! the flow in `CLOSE` (10 s) and the client with `Connection refused`.

use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{require_root, topology, Role, Sluice};

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: mix
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  ports:
  - name: closed
    protocol: TCP
    port: 81
    targetPort: 8081
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
---
{}"#,
        endpoint_slice(
            "mix-1",
            "mix",
            &[("closed", 8081, "TCP"), ("dns", 5353, "UDP")],
            &ready_backends(&[1])
        )
    )
}

#[test]
fn new_flows_evict_embryonic_tcp_before_live_udp() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(
        &topo,
        &config(),
        &["--workers", "1", "--flow-capacity", "8"],
    );
    // Four UDP flows (a new socket, so a new source port, each).
    for q in 0..4 {
        let out = topo.testsrv(
            Role::Client,
            &["udp-query", "198.18.100.10:5353", "--timeout-ms", "2000"],
            Duration::from_secs(5),
        );
        assert!(
            out.success(),
            "UDP query {q}: {out}\nlog:\n{}",
            sluice.logs()
        );
    }
    // Make every TCP flow younger than every UDP one (ages are in seconds).
    std::thread::sleep(Duration::from_millis(1100));
    // Four refused connections fill the table; six more must each evict
    // one of the TCP leftovers.
    for c in 0..10 {
        let out = topo.curl_in(
            Role::Client,
            &[
                "--connect-timeout",
                "3",
                "--max-time",
                "4",
                "http://198.18.100.10:81/",
            ],
        );
        assert!(
            out.stderr.contains("Connection refused")
                || out.status.and_then(|s| s.code()) == Some(7),
            "connection {c} not refused by the backend: {out}\nlog:\n{}",
            sluice.logs()
        );
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    let c = |k: &str| {
        *report
            .counters
            .get(k)
            .unwrap_or_else(|| panic!("no counter {k}: {:?}", report.counters))
    };
    assert_eq!(c("new_flows"), 14, "{:?}", report.counters);
    assert_eq!(c("early_drop_embryonic"), 6, "{:?}", report.counters);
    assert_eq!(
        c("early_drop_idle"),
        0,
        "a live UDP flow was evicted: {:?}",
        report.counters
    );
    assert_eq!(c("early_drop_expired"), 0, "{:?}", report.counters);
    assert_eq!(c("flows_live"), 8, "{:?}", report.counters);
}
