//! SNAT port capacity under a SYN flood, and reuse of closed ports.
//!
//! 20k SYNs in 2 s from spoofed sources (198.18.64.0/18, outside
//! `--cluster-cidr 198.18.0.128/25`, so every one is masqueraded) are sent
//! from the client namespace over a raw socket (`sluice-testsrv
//! syn-flood`) to the VIP; its one backend answers them (SYN cookies once
//! its queue is full) towards addresses nobody owns. Then 30 real
//! masqueraded clients (curl from 198.18.0.2) must all be served:
//! with the default ports (1024-32767,61000-65535 outside the ephemeral
//! range) the flood does not fill the space at all; with the old default
//! range alone (61000-65535, 4536 ports, which the flood fills), the new
//! clients take the ports of the oldest quiet embryonic flows. Before this
//! change the same flood refused 30/30 clients for about a minute.

use std::time::Duration;

use sluice_tests::{parse_backend_reply, require_root, topology, Role, Sluice, TopologyOpts};

const VIP: &str = "198.18.100.10:80";
const CLUSTER: &str = "198.18.0.128/25";

fn one_backend() -> sluice_tests::Topology {
    topology!(TopologyOpts::default().backends(1))
}

fn start(topo: &sluice_tests::Topology, extra: &[&str]) -> Sluice {
    let mut args = vec!["--cluster-cidr", CLUSTER];
    args.extend_from_slice(extra);
    Sluice::start(topo, &sluice_tests::k8s::web_http(&[1]), &args)
}

/// 20k spoofed SYNs in 2 s (bounded: the sender stops after 5 s anyway).
fn flood(topo: &sluice_tests::Topology) {
    let out = topo.testsrv(
        Role::Client,
        &[
            "syn-flood",
            VIP,
            "--src-base",
            "198.18.64.0",
            "--sources",
            "16384",
            "--count",
            "20000",
            "--seconds",
            "2",
        ],
        Duration::from_secs(15),
    );
    let sent = out.expect_ok().to_string();
    assert!(sent.starts_with("sent 20000 "), "flood: {sent}");
}

/// `n` sequential HTTP GETs through the VIP from the masqueraded client;
/// returns the failures.
fn clients(topo: &sluice_tests::Topology, n: usize) -> Vec<String> {
    let mut failed = Vec::new();
    for i in 0..n {
        let out = topo.curl_in(
            Role::Client,
            &[
                "--connect-timeout",
                "8",
                "--max-time",
                "10",
                "--interface",
                "198.18.0.2",
                "http://198.18.100.10/",
            ],
        );
        match parse_backend_reply(&out.stdout) {
            Some((_, peer, _)) if out.success() && peer == "198.18.1.1" => {}
            _ => failed.push(format!("client {i}: {out}")),
        }
    }
    failed
}

fn counter(report: &sluice_tests::StopReport, name: &str) -> u64 {
    *report
        .counters
        .get(name)
        .unwrap_or_else(|| panic!("no counter {name}: {:?}", report.counters))
}

#[test]
fn a_syn_flood_does_not_exhaust_the_default_snat_ports() {
    require_root();
    let topo = one_backend();
    let sluice = start(&topo, &[]);
    assert!(
        sluice
            .logs()
            .contains("ports 1024-32767,61000-65535 (36280 ports"),
        "capacity not logged:\n{}",
        sluice.logs()
    );
    flood(&topo);
    let failed = clients(&topo, 30);
    let report = sluice.stop();
    assert!(
        failed.is_empty(),
        "{} of 30 refused: {failed:#?}\n{}",
        failed.len(),
        report.logs
    );
    assert_eq!(
        counter(&report, "drop_snat_exhausted"),
        0,
        "{:?}",
        report.counters
    );
    assert!(
        counter(&report, "snat_flows") >= 19_000,
        "the flood was not masqueraded: {:?}",
        report.counters
    );
}

#[test]
fn a_syn_flood_that_fills_the_snat_ports_gives_way_to_new_clients() {
    require_root();
    let topo = one_backend();
    let sluice = start(&topo, &["--snat-ports", "61000-65535"]);
    flood(&topo);
    let failed = clients(&topo, 30);
    let report = sluice.stop();
    assert!(
        failed.is_empty(),
        "{} of 30 refused: {failed:#?}\n{}",
        failed.len(),
        report.logs
    );
    assert!(
        counter(&report, "snat_embryonic_evicted") >= 30,
        "the clients did not take embryonic flows' ports: {:?}",
        report.counters
    );
}

#[test]
fn ports_of_closed_connections_are_reused() {
    // 10 ports, 25 connections one after the other: from the 11th on each
    // needs the port of a connection that closed (FINs from both sides) a
    // second or more before; FIN_WAIT alone would hold them 120 s.
    require_root();
    let topo = one_backend();
    let sluice = start(&topo, &["--snat-ports", "61000-61009"]);
    let failed = clients(&topo, 25);
    let report = sluice.stop();
    assert!(
        failed.is_empty(),
        "{} of 25 refused: {failed:#?}\n{}",
        failed.len(),
        report.logs
    );
    assert!(
        counter(&report, "snat_port_reused") >= 15,
        "{:?}",
        report.counters
    );
    assert_eq!(counter(&report, "snat_embryonic_evicted"), 0);
}

#[test]
fn snat_addresses_are_used_and_foreign_ones_refused() {
    require_root();
    let topo = one_backend();
    let cfg = sluice_tests::k8s::web_http(&[1]);
    for (args, want) in [
        (
            &["--snat-address", "198.18.1.77"][..],
            "--snat-address 198.18.1.77: not an address of this host",
        ),
        (
            &["--snat-ports", "30000-40000"][..],
            "--snat-ports 30000-40000 overlaps the host's ephemeral port range 32768-60999",
        ),
    ] {
        let out = Sluice::run_to_exit(&topo, &cfg, args, Duration::from_secs(15));
        assert!(
            !out.timed_out() && !out.success(),
            "sluice started with {args:?}: {out}"
        );
        assert!(out.stderr.contains(want), "no `{want}`: {out}");
    }
    // Two addresses of the LB's back side, both used, the route's source not.
    topo.add_address(Role::Lb, "198.18.1.5/24", "back");
    topo.add_address(Role::Lb, "198.18.1.6/24", "back");
    let sluice = start(
        &topo,
        &[
            "--snat-address",
            "198.18.1.5",
            "--snat-address",
            "198.18.1.6",
        ],
    );
    let mut peers = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let out = topo.curl("http://198.18.100.10/", Some("198.18.0.2"));
        let (_, peer, _) =
            parse_backend_reply(&out.stdout).unwrap_or_else(|| panic!("{out}\n{}", sluice.logs()));
        peers.insert(peer);
    }
    let report = sluice.stop();
    assert_eq!(
        peers.into_iter().collect::<Vec<_>>(),
        vec!["198.18.1.5".to_string(), "198.18.1.6".to_string()],
        "{}",
        report.logs
    );
}
