//! The LB host stays a host while sluice runs: the XDP program passes ARP and
//! ICMP for the LB's own addresses to the kernel, so the client can resolve
//! and ping the LB's front address and a backend can ping its gateway.

use std::time::Duration;

use sluice_tests::{require_root, topology, Role, Sluice, Topology};

fn config() -> String {
    sluice_tests::k8s::web_http(&[1, 2, 3])
}

fn ping(topo: &Topology, from: Role, to: &str) {
    let out = topo.exec(
        from,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", to],
        Duration::from_secs(10),
    );
    assert!(out.success(), "ping {to} from {from:?}: {out}");
    assert!(out.stdout.contains("3 received"), "{out}");
}

#[test]
fn arp_and_ping_reach_the_lb_kernel() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &config(), &[]);

    // Start from an empty neighbour cache so ARP is exercised with sluice up.
    topo.exec(
        Role::Client,
        &["ip", "neigh", "flush", "dev", "eth0"],
        Duration::from_secs(5),
    )
    .expect_ok();
    ping(&topo, Role::Client, "198.18.0.1");
    let neigh = topo.exec(
        Role::Client,
        &["ip", "neigh", "show", "198.18.0.1", "dev", "eth0"],
        Duration::from_secs(5),
    );
    let line = neigh.expect_ok().trim().to_string();
    assert!(
        line.contains("lladdr")
            && ["REACHABLE", "STALE", "DELAY", "PROBE"]
                .iter()
                .any(|s| line.contains(s)),
        "client's neighbour entry for 198.18.0.1 is not usable: {line:?}"
    );

    ping(&topo, Role::Backend(1), "198.18.1.1");
    ping(&topo, Role::Backend(3), "198.18.1.1");

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
