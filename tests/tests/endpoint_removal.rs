//! Flows to an endpoint that a reload removes are flushed (kube-proxy
//! deletes their conntrack entries): a UDP client that keeps sending on one
//! socket is answered by a live endpoint within a second of the reload, and
//! a TCP transfer from the removed endpoint ends with a reset within two
//! seconds instead of hanging.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
  - name: bulk
    protocol: TCP
    port: 9000
    targetPort: 9000
---
{}"#,
        endpoint_slice(
            "web-1",
            "web",
            &[("dns", 5353, "UDP"), ("bulk", 9000, "TCP")],
            &ready_backends(backends)
        )
    )
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[test]
fn udp_flow_moves_to_a_live_endpoint() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2));
    let mut sluice = Sluice::start(&topo, &config(&[1]), &["--workers", "1"]);

    // 25 datagrams, one every 200 ms, on one connected socket: 5 s.
    let stream = topo.spawn_testsrv(
        Role::Client,
        &[
            "udp-stream",
            "198.18.100.10:5353",
            "--count",
            "25",
            "--interval-ms",
            "200",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    sluice.rewrite_config(&config(&[2]));
    let outcome = sluice.reload();
    let reloaded_at = unix_ms();
    assert!(
        matches!(outcome, ReloadOutcome::Applied(_)),
        "{outcome:?}\nlog:\n{}",
        sluice.logs()
    );
    let out = stream.wait(Duration::from_secs(10));
    assert!(out.success(), "{out}");

    // (time, backend or None) per datagram.
    let lines: Vec<(u128, Option<String>)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let t = l.split_whitespace().next()?.parse().ok()?;
            Some((t, parse_backend_reply(l).map(|r| r.0)))
        })
        .collect();
    assert_eq!(lines.len(), 25, "{out}");
    let before: Vec<_> = lines
        .iter()
        .filter(|(t, _)| *t < reloaded_at - 300)
        .collect();
    assert!(
        !before.is_empty() && before.iter().all(|(_, b)| b.as_deref() == Some("b1")),
        "before the reload every reply comes from b1:\n{}",
        out.stdout
    );
    // From one second after the reload on, every datagram is answered by b2.
    let late: Vec<_> = lines
        .iter()
        .filter(|(t, _)| *t > reloaded_at + 1000)
        .collect();
    assert!(late.len() >= 5, "{}", out.stdout);
    assert!(
        late.iter().all(|(_, b)| b.as_deref() == Some("b2")),
        "replies more than 1 s after the reload (at {reloaded_at}) must come from b2:\n{}\nlog:\n{}",
        out.stdout,
        sluice.logs()
    );
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}

/// A paced 40 MB transfer from b1 (10 s), b1 removed after 1 s; returns
/// the client's output and how long after the reload it ended (or was
/// killed, 2 s after the reload).
fn transfer_across_removal(poke: bool) -> (sluice_tests::CmdOutput, Duration, String) {
    let topo = topology!(TopologyOpts::default().backends(2));
    let mut sluice = Sluice::start(&topo, &config(&[1]), &["--workers", "1"]);
    let mut args = vec![
        "bulk-get",
        "198.18.100.10:9000",
        "--bytes",
        "40000000",
        "--rate",
        "4000000",
        "--timeout-ms",
        "15000",
    ];
    if poke {
        args.extend_from_slice(&["--poke-ms", "200"]);
    }
    let mut bulk = topo.spawn_testsrv(Role::Client, &args);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(bulk.is_running(), "bulk transfer ended early");

    sluice.rewrite_config(&config(&[2]));
    let outcome = sluice.reload();
    let t = Instant::now();
    assert!(
        matches!(outcome, ReloadOutcome::Applied(_)),
        "{outcome:?}\nlog:\n{}",
        sluice.logs()
    );
    let out = bulk.wait(Duration::from_secs(2));
    let took = t.elapsed();
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    (out, took, report.logs)
}

/// The client keeps sending (one byte every 200 ms, like application
/// heartbeats): its next segment after the flush belongs to no flow and is
/// answered with a RST.
#[test]
fn tcp_flow_to_a_removed_endpoint_is_reset() {
    require_root();
    let (out, took, logs) = transfer_across_removal(true);
    assert!(
        !out.timed_out(),
        "the client still hung 2 s after its endpoint was removed: {out}\nlog:\n{logs}"
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("reset") || out.stderr.contains("Broken pipe"),
        "expected a reset, got: {out}"
    );
    eprintln!("reset seen {took:?} after the reload");
}

/// A client that only receives sends nothing after the flush; it learns of
/// it only if the LB also resets the removed endpoint's own segments (which
/// keep arriving from b1) towards the client.
#[test]
fn silent_receiver_of_a_removed_endpoint_is_reset() {
    require_root();
    let (out, took, logs) = transfer_across_removal(false);
    assert!(
        !out.timed_out(),
        "the client still hung 2 s after its endpoint was removed: {out}\nlog:\n{logs}"
    );
    assert!(!out.success(), "{out}");
    eprintln!("reset seen {took:?} after the reload");
}
