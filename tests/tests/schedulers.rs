//! Schedulers on the real data path (one Service, the `sluice.dev/scheduler`
//! annotation), with real kernel clients and servers:
//!
//! * `wrr` with `sluice.dev/weights` 1:2:3 over 600 connections lands
//!   within ±5 % of the ratio (the kernel's stepping makes it exact);
//! * `lc` with two held-open connections sends every new connection to the
//!   third server (the counts seen by the scheduler come from the flows
//!   the data path created and saw established, across two workers);
//! * `sh` keeps each client address on one server;
//! * `mh` (Maglev) moves about 1/N of the clients when one of N servers
//!   leaves, and none of the clients of the servers that stay.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{
    parse_backend_reply, require_root, topology, ReloadOutcome, Role, Sluice, Topology,
    TopologyOpts,
};

/// `default/web` (198.18.100.10:80 → 8080) over backends `idx`, with
/// `annotations` (YAML mapping entries, one per line).
fn config(idx: &[usize], annotations: &[&str]) -> String {
    let mut ann = String::new();
    for a in annotations {
        ann += &format!("    {a}\n");
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  \
         annotations:\n{ann}spec:\n  type: ClusterIP\n  clusterIP: 198.18.100.10\n  ports:\n  \
         - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n---\n{}",
        endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &ready_backends(idx)
        )
    )
}

/// The backend one new connection from `from` reaches.
fn hit(topo: &Topology, from: Option<&str>) -> String {
    let out = topo.curl("http://198.18.100.10/", from);
    assert!(out.success(), "connection from {from:?} failed: {out}");
    parse_backend_reply(&out.stdout)
        .unwrap_or_else(|| panic!("not a backend reply: {out}"))
        .0
}

fn spread(topo: &Topology, n: usize) -> BTreeMap<String, usize> {
    let mut hits = BTreeMap::new();
    for _ in 0..n {
        *hits.entry(hit(topo, None)).or_insert(0) += 1;
    }
    hits
}

#[test]
fn wrr_follows_weights_1_2_3() {
    require_root();
    let topo = topology!();
    let cfg = config(
        &[1, 2, 3],
        &[
            "sluice.dev/scheduler: wrr",
            "sluice.dev/weights: \"198.18.1.11=1,198.18.1.12=2,198.18.1.13=3\"",
        ],
    );
    let sluice = Sluice::start(&topo, &cfg, &["--workers", "2"]);
    let hits = spread(&topo, 600);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    for (b, share) in [("b1", 100.0), ("b2", 200.0), ("b3", 300.0)] {
        let got = hits.get(b).copied().unwrap_or(0) as f64;
        assert!(
            (got - share).abs() <= share * 0.05,
            "{b}: {got} of 600, want {share} ± 5 %: {hits:?}\nlogs:\n{}",
            report.logs
        );
    }
}

#[test]
fn lc_avoids_servers_with_held_connections() {
    require_root();
    let topo = topology!();
    let cfg = config(&[1, 2, 3], &["sluice.dev/scheduler: lc"]);
    let sluice = Sluice::start(&topo, &cfg, &["--workers", "2"]);
    // Two idle connections held open (the backends wait 5 s for a request):
    // the first goes to b1 (all empty: the first in the list), the second
    // to b2 (b1 has an active connection).
    let hold = "exec 3<>/dev/tcp/198.18.100.10/80; sleep 4";
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(topo.spawn(Role::Client, &["bash", "-c", hold]));
        std::thread::sleep(Duration::from_millis(400));
    }
    // Every new connection now goes to b3: its closed connections count
    // as inactive (1 each), far below one active connection (256).
    let hits = spread(&topo, 10);
    for h in held.iter_mut() {
        assert!(
            h.is_running(),
            "a held connection ended early: {}",
            h.cmdline()
        );
    }
    drop(held);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_eq!(
        hits,
        BTreeMap::from([("b3".to_string(), 10)]),
        "logs:\n{}",
        report.logs
    );
}

#[test]
fn sh_keeps_each_client_on_one_server() {
    require_root();
    let topo = topology!();
    let cfg = config(&[1, 2, 3], &["sluice.dev/scheduler: sh"]);
    let sluice = Sluice::start(&topo, &cfg, &["--workers", "2"]);
    let mut per_client: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for _ in 0..15 {
        for from in ["198.18.0.2", "198.18.0.130"] {
            *per_client
                .entry(from)
                .or_default()
                .entry(hit(&topo, Some(from)))
                .or_insert(0) += 1;
        }
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    for (from, hits) in &per_client {
        assert_eq!(
            hits.len(),
            1,
            "{from} reached several servers: {per_client:?}"
        );
    }
}

#[test]
fn mh_moves_about_one_nth_when_a_server_leaves() {
    require_root();
    const N: usize = 5;
    const CLIENTS: usize = 40;
    let topo = topology!(TopologyOpts::default().backends(N));
    let clients: Vec<String> = (0..CLIENTS)
        .map(|i| format!("198.18.0.{}", 200 + i))
        .collect();
    for c in &clients {
        topo.add_address(Role::Client, &format!("{c}/32"), "eth0");
    }
    let all: Vec<usize> = (1..=N).collect();
    let mut sluice = Sluice::start(
        &topo,
        &config(&all, &["sluice.dev/scheduler: mh"]),
        &["--workers", "2"],
    );
    let map =
        |topo: &Topology| -> Vec<String> { clients.iter().map(|c| hit(topo, Some(c))).collect() };
    let before = map(&topo);
    // Consistent: a second round maps every client the same.
    assert_eq!(
        map(&topo),
        before,
        "mh is not stable for a fixed set of servers"
    );
    sluice.rewrite_config(&config(&all[..N - 1], &["sluice.dev/scheduler: mh"]));
    let outcome = sluice.reload();
    assert!(matches!(outcome, ReloadOutcome::Applied(_)), "{outcome:?}");
    let after = map(&topo);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");

    let gone = format!("b{N}");
    let on_gone = before.iter().filter(|b| **b == gone).count();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let moved_survivors = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| **a != gone && a != b)
        .count();
    println!(
        "mh: {moved} of {CLIENTS} clients moved ({:.1} %; {on_gone} were on {gone}, 1/N = {:.1} %), {moved_survivors} of the others",
        100.0 * moved as f64 / CLIENTS as f64,
        100.0 / N as f64
    );
    assert!(
        after.iter().all(|b| *b != gone),
        "{gone} still gets clients: {after:?}"
    );
    assert_eq!(
        moved, on_gone,
        "clients of the staying servers moved: {before:?} -> {after:?}"
    );
    // About 1/N: the removed server's share of 40 hashed clients.
    assert!(
        moved <= CLIENTS / N + 6,
        "{moved} of {CLIENTS} moved: {before:?} -> {after:?}"
    );
}

#[test]
fn unknown_schedulers_are_refused_at_start() {
    require_root();
    let topo = topology!(TopologyOpts::default().servers(false));
    let cfg = config(&[1, 2], &["sluice.dev/scheduler: fastest"]);
    let out = Sluice::run_to_exit(&topo, &cfg, &[], Duration::from_secs(15));
    assert!(!out.timed_out() && !out.success(), "sluice started: {out}");
    assert!(
        out.stderr.contains(
            "metadata.annotations[\"sluice.dev/scheduler\"]: unknown scheduler \"fastest\""
        ),
        "error does not name the annotation: {out}"
    );
    let cfg = config(&[1, 2], &[]);
    let out = Sluice::run_to_exit(
        &topo,
        &cfg,
        &["--scheduler", "fastest"],
        Duration::from_secs(15),
    );
    assert!(!out.timed_out() && !out.success(), "sluice started: {out}");
    assert!(
        out.stderr
            .contains("unknown scheduler \"fastest\": one of rr, wrr, lc"),
        "error does not name the flag's choices: {out}"
    );
}
