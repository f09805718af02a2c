//! UDP through the VIP: request/response works and replies come back from the
//! VIP. `sluice-testsrv udp-query` uses a socket connected to the VIP, so the
//! kernel drops a reply from any other source (a missing reverse NAT) and the
//! query fails instead of passing by accident.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{parse_backend_reply, require_root, topology, Role, Sluice};

fn config(backends: &[usize]) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  ports:
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
---
{}"#,
        endpoint_slice(
            "dns-1",
            "dns",
            &[("dns", 5353, "UDP")],
            &ready_backends(backends)
        )
    )
}

#[test]
fn udp_replies_come_from_the_vip() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &config(&[1, 2, 3]), &["--workers", "1"]);

    let mut used = BTreeSet::new();
    for q in 0..3 {
        // A new socket (new source port) per run: a new flow each time.
        let out = topo.testsrv(
            Role::Client,
            &[
                "udp-query",
                "198.18.100.10:5353",
                "--count",
                "5",
                "--timeout-ms",
                "2000",
            ],
            Duration::from_secs(15),
        );
        assert!(
            out.success(),
            "query run {q}: {out}\nsluice log:\n{}",
            sluice.logs()
        );
        let names: BTreeSet<String> = out
            .stdout
            .lines()
            .map(|l| {
                parse_backend_reply(l)
                    .unwrap_or_else(|| panic!("bad reply {l:?}"))
                    .0
            })
            .collect();
        assert_eq!(out.stdout.lines().count(), 5, "{out}");
        // All datagrams of one flow go to one backend.
        assert_eq!(names.len(), 1, "one flow hit several backends: {out}");
        used.extend(names);
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    // Three flows, round robin, one worker: each backend once.
    assert_eq!(used.len(), 3, "{used:?}\nlogs:\n{}", report.logs);
}
