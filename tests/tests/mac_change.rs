//! A backend whose MAC changes under a running TCP transfer, as a pod
//! restarted on the same address looks (`ip link set dev eth0 address
//! NEW` and `ip neigh flush all` in its namespace): the LB's kernel learns
//! the new MAC from the backend's first ARP, Sluice hears of it through
//! its neighbour-event socket and republishes the next hop, and the
//! established flow (whose record still names the old MAC) follows it. The
//! transfer resumes within a second of that ARP and completes intact
//! (every byte checked by `bulk-get`).
//!
//! Without the events the flow's segments to the backend keep the old
//! MAC, which the backend's interface no longer accepts: the transfer
//! stalls until it times out.

use std::time::{Duration, Instant};

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{poll_until, require_root, topology, Role, Sluice, TopologyOpts};

const NEW_MAC: &str = "02:5a:00:00:01:ee";
const BYTES: u64 = 6_000_000;
const RATE: u64 = 2_000_000;

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: bulk
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  ports:
  - name: bulk
    protocol: TCP
    port: 9000
    targetPort: 9000
---
{}"#,
        endpoint_slice(
            "bulk-1",
            "bulk",
            &[("bulk", 9000, "TCP")],
            &ready_backends(&[1])
        )
    )
}

/// The MAC the LB's kernel holds for b1, if any.
fn lb_neighbour_mac(topo: &sluice_tests::Topology) -> Option<String> {
    let out = topo.exec(
        Role::Lb,
        &["ip", "neigh", "show", "198.18.1.11", "dev", "back"],
        Duration::from_secs(5),
    );
    let mut words = out.stdout.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

#[test]
fn transfer_follows_a_backend_whose_mac_changed() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1));
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    // 6 MB at 2 MB/s: 3 s when nothing stalls.
    let started = Instant::now();
    let mut bulk = topo.spawn_testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.100.10:9000",
            "--bytes",
            &BYTES.to_string(),
            "--rate",
            &RATE.to_string(),
            "--timeout-ms",
            "20000",
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(bulk.is_running(), "the transfer ended early");
    let old_mac = lb_neighbour_mac(&topo).expect("the LB knows b1's MAC");
    assert_ne!(old_mac, NEW_MAC);

    // The pod restarts on the same address: new MAC, empty neighbour table.
    topo.ip(
        Role::Backend(1),
        &["link", "set", "dev", "eth0", "address", NEW_MAC],
    );
    topo.ip(Role::Backend(1), &["neigh", "flush", "all"]);

    // The backend's first ARP (for its gateway, the LB) teaches the LB's
    // kernel the new MAC.
    let learned = poll_until(Duration::from_secs(10), || {
        (lb_neighbour_mac(&topo).as_deref() == Some(NEW_MAC)).then(Instant::now)
    })
    .unwrap_or_else(|| panic!("the LB's kernel never learned b1's new MAC"));

    let out = bulk.wait(Duration::from_secs(25));
    let done = Instant::now();
    let logs = sluice.logs();
    assert!(
        out.success() && out.stdout.starts_with(&format!("ok {BYTES} ")),
        "the transfer did not complete intact after the MAC change: {out}\nlog:\n{logs}"
    );
    // The server paces at RATE from the start; what was left when the new
    // MAC was learned takes at most the rest of the nominal 3 s. A stall of
    // more than a second after the ARP shows beyond that (bound generous
    // for this shared machine: 2 s).
    let nominal_end = started + Duration::from_millis(BYTES * 1000 / RATE);
    let left = nominal_end.saturating_duration_since(learned);
    let after_arp = done.saturating_duration_since(learned);
    eprintln!("new MAC learned {:?} after the start; transfer done {after_arp:?} later (nominal rest {left:?})", learned - started);
    assert!(
        after_arp <= left + Duration::from_secs(2),
        "the transfer took {after_arp:?} after the LB learned the new MAC (nominal rest {left:?})\nlog:\n{logs}"
    );
    assert!(
        logs.contains("next hop now"),
        "sluice did not log the moved next hop:\n{logs}"
    );
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
