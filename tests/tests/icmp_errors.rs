//! ICMP errors follow the flow. The UDP service's only endpoint, b1, has no
//! listener on the target port (5400; `sluice-testsrv` serves UDP on 5353
//! only), so b1's kernel answers each datagram with an ICMP port
//! unreachable. Sluice must translate it as the reply direction of the flow:
//! outer destination → the client, outer source → the VIP, and the quoted
//! packet back to the client → VIP:port tuple the client sent. Only then
//! does the client's connected UDP socket match it and report
//! `ECONNREFUSED`, at once instead of after its timeout.
//!
//! Run twice: without masquerading (b1 sends the ICMP error to the
//! client's own address, by its default route through the LB) and with
//! `--cluster-cidr 198.18.1.0/24`, so that the client 198.18.0.2 is SNATed
//! to the LB's back address and the ICMP error is addressed to the LB.
//!
//! `udp-query --icmp-detail 1` reads the ICMP error from the socket's error
//! queue: the offender (the outer source address) must be the VIP, not
//! b1, and the quoted payload must be the whole query. Sluice itself
//! rejects nothing here (`rejected` stays 0): the refusal is b1's.

use std::time::{Duration, Instant};

use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::{parse_backend_reply, require_root, topology, Role, Sluice, Topology, VIP};

/// Service port with no listener behind it.
const CLOSED_PORT: u16 = 5400;

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {VIP}
  ports:
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
  - name: closed
    protocol: UDP
    port: {CLOSED_PORT}
    targetPort: {CLOSED_PORT}
---
{}"#,
        endpoint_slice(
            "dns-1",
            "dns",
            &[("dns", 5353, "UDP"), ("closed", CLOSED_PORT, "UDP")],
            &[Ep::ready(Topology::backend_ip(1))],
        )
    )
}

/// `expected_peer`: the source address b1 sees (the client's, or the LB's
/// back address when masqueraded).
fn port_unreachable_reaches_the_client(sluice_args: &[&str], expected_peer: &str) {
    require_root();
    let topo = topology!(sluice_tests::TopologyOpts::default().backends(1));
    let mut args = vec!["--workers", "1"];
    args.extend_from_slice(sluice_args);
    let sluice = Sluice::start(&topo, &config(), &args);

    // The open port works (and resolves b1's next hop), and b1 sees the
    // source address this run is about.
    let out = topo.testsrv(
        Role::Client,
        &[
            "udp-query",
            &format!("{VIP}:5353"),
            "--bind",
            "198.18.0.2",
            "--timeout-ms",
            "2000",
        ],
        Duration::from_secs(5),
    );
    assert!(
        out.success(),
        "open port: {out}\nsluice log:\n{}",
        sluice.logs()
    );
    let (name, peer, _) = parse_backend_reply(&out.stdout).expect("backend reply");
    assert_eq!(
        (name.as_str(), peer.as_str()),
        ("b1", expected_peer),
        "{out}"
    );

    // Three new flows (a new source port each) to the closed port: each is
    // refused quickly. Well under b1's ICMP rate limit (a burst of 6).
    let target = format!("{VIP}:{CLOSED_PORT}");
    for q in 0..3 {
        let t = Instant::now();
        let out = topo.testsrv(
            Role::Client,
            &[
                "udp-query",
                &target,
                "--bind",
                "198.18.0.2",
                "--timeout-ms",
                "3000",
                "--icmp-detail",
                "1",
            ],
            Duration::from_secs(6),
        );
        let took = t.elapsed();
        let code = out.status.and_then(|s| s.code());
        assert_eq!(
            code,
            Some(3),
            "flow {q}: expected ECONNREFUSED (exit 3; 4 is a timeout) after {took:?}: \
             {out}\nsluice log:\n{}",
            sluice.logs()
        );
        assert!(
            out.stdout.lines().any(|l| l == "refused (ECONNREFUSED)"),
            "{out}"
        );
        assert!(out.stderr.contains("Connection refused"), "{out}");
        assert!(
            took < Duration::from_secs(1),
            "flow {q}: refused after {took:?}"
        );

        // The ICMP error as the client's kernel received it.
        let detail = out
            .stdout
            .lines()
            .find(|l| l.starts_with("icmp-error "))
            .unwrap_or_else(|| panic!("flow {q}: no ICMP detail: {out}"));
        let field = |k: &str| {
            detail
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {k} in {detail:?}"))
        };
        assert_eq!(field("errno"), "111", "{detail}");
        assert_eq!(field("origin"), "2", "not an ICMP error: {detail}");
        assert_eq!(
            (field("type"), field("code")),
            ("3", "3"),
            "not a port unreachable: {detail}"
        );
        assert_eq!(
            field("offender"),
            VIP,
            "outer source not rewritten to the VIP: {detail}"
        );
        // "query 0": the quoted datagram carried the whole payload.
        assert_eq!(field("quoted"), "7", "{detail}");
    }

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_eq!(
        report.counter("rejected"),
        0,
        "the refusal must be b1's, not sluice's: {:?}",
        report.counters
    );
    assert!(report.counter("new_flows") >= 4, "{:?}", report.counters);
}

#[test]
fn port_unreachable_follows_the_flow_without_masquerade() {
    port_unreachable_reaches_the_client(&[], "198.18.0.2");
}

#[test]
fn port_unreachable_follows_the_flow_with_masquerade() {
    port_unreachable_reaches_the_client(&["--cluster-cidr", "198.18.1.0/24"], "198.18.1.1");
}
