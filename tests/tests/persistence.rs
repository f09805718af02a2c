//! Persistence netmask (`ipvsadm -M`, `sluice.dev/persistence-netmask`)
//! on `sessionAffinity: ClientIP` with `timeoutSeconds: 2`: two clients
//! of one /24 share one affinity entry and land on one backend for many
//! connections, while clients of other /24s are spread by the scheduler;
//! after the timeout the stickiness ends.
//!
//! The clients are addresses of the client namespace in 198.18.20.0/24 ..
//! 198.18.26.0/24 (bound with curl's `--interface`); the LB reaches them
//! through a route via the client's front address.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{parse_backend_reply, require_root, topology, Role, Sluice, Topology};

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations:
    sluice.dev/persistence-netmask: "24"
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

fn hit(topo: &Topology, from: &str) -> String {
    let out = topo.curl("http://198.18.100.10/", Some(from));
    assert!(out.success(), "from {from}: {out}");
    parse_backend_reply(&out.stdout)
        .unwrap_or_else(|| panic!("from {from}: not a backend reply: {out}"))
        .0
}

#[test]
fn a_slash_24_sticks_to_one_backend_then_expires() {
    require_root();
    let topo = topology!();
    let (a1, a2) = ("198.18.20.5", "198.18.20.77");
    let others: Vec<String> = (21..=26).map(|n| format!("198.18.{n}.5")).collect();
    for c in [a1, a2]
        .into_iter()
        .chain(others.iter().map(String::as_str))
    {
        topo.add_address(Role::Client, &format!("{c}/32"), "eth0");
    }
    topo.ip(
        Role::Lb,
        &[
            "route",
            "add",
            "198.18.16.0/20",
            "via",
            "198.18.0.2",
            "dev",
            "front",
        ],
    );
    // One worker: one round-robin cursor, so the picks below are in order.
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    // a1 then a2 first: without the netmask they would be two new clients
    // and round robin would give them two backends.
    let first = hit(&topo, a1);
    let mut subnet = BTreeSet::from([first.clone(), hit(&topo, a2)]);
    let mut spread = BTreeSet::new();
    for o in &others {
        spread.insert(hit(&topo, o));
    }
    for i in 0..20 {
        subnet.insert(hit(&topo, if i % 2 == 0 { a1 } else { a2 }));
    }
    assert_eq!(
        subnet.len(),
        1,
        "two clients of one /24 reached several backends: {subnet:?}\nlog:\n{}",
        sluice.logs()
    );
    assert_eq!(
        spread.len(),
        3,
        "six other /24s are spread over the three backends: {spread:?}"
    );

    // Seven new picks so far (a1's and six others'): the cursor is one
    // past a1's backend, so once the entry has expired a1 moves on.
    std::thread::sleep(Duration::from_millis(3500));
    let after = hit(&topo, a2);
    assert_ne!(
        after,
        first,
        "the /24's affinity outlived timeoutSeconds\nlog:\n{}",
        sluice.logs()
    );
    assert_eq!(hit(&topo, a1), after, "and sticks again, for the whole /24");
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
