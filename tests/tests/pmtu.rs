//! Path MTU through the VIP: the backend side is a link with a smaller MTU
//! (1400 on `back`, the switch and the backend) than the client's (1500).
//! A packet too big for it must not vanish: sluice answers, as a router
//! does, with ICMP fragmentation needed carrying the next-hop MTU (RFC 792,
//! RFC 1191), so the client's kernel lowers its path MTU for the VIP.
//!
//! * UDP: a 1472-byte datagram (1500 bytes of IP, DF set by the kernel's
//!   path MTU discovery) gets the ICMP error, which the client's connected
//!   socket reports as EMSGSIZE with the MTU; a datagram that fits the
//!   1400 link gets its reply.
//! * The same over IPv6: a 1452-byte datagram gets ICMPv6 packet too big
//!   (RFC 4443 § 3.2, RFC 8201).
//! * TCP: the backend advertises an MSS of 1460 (a route `advmss`, as a
//!   backend on a 1500 link behind a smaller hop would), so the client's
//!   full-size segments do not fit the backend link; a 2 MB upload still
//!   completes intact, with the client's path MTU at 1400.
//! * TTL: a datagram sent with TTL 1 (hop limit 1) through the VIP gets
//!   ICMP time exceeded from the VIP (type 11 / ICMPv6 type 3), as from
//!   any router and as IPVS answers; TTL 2 reaches the backend.

use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends, Ep};
use sluice_tests::{require_root, topology, Role, Sluice, Topology, TopologyOpts};

const VIP: &str = "198.18.100.10";
/// The MTU of the backend-side link.
const BACK_MTU: &str = "1400";

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: pmtu
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {VIP}
  ports:
  - name: bulk
    protocol: TCP
    port: 9000
    targetPort: 9000
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
---
{}"#,
        endpoint_slice(
            "pmtu-1",
            "pmtu",
            &[("bulk", 9000, "TCP"), ("dns", 5353, "UDP")],
            &ready_backends(&[1])
        )
    )
}

const VIP6: &str = "2001:db8:100::10";

/// The UDP service on an IPv6 VIP.
fn config6() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: pmtu6
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {VIP6}
  clusterIPs: ["{VIP6}"]
  ipFamilies: [IPv6]
  ipFamilyPolicy: SingleStack
  ports:
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
---
{}"#,
        endpoint_slice(
            "pmtu6-1",
            "pmtu6",
            &[("dns", 5353, "UDP")],
            &[Ep::ready(Topology::backend_ip6(1))]
        )
    )
}

/// One backend, and every link of the backend segment at [`BACK_MTU`]:
/// the LB's `back`, the switch's ports and bridge, the backend's `eth0`.
/// The backend still advertises an MSS of 1460 towards the client.
fn small_backend_link(ipv6: bool) -> Topology {
    let topo = topology!(TopologyOpts::default().backends(1).ipv6(ipv6));
    topo.ip(Role::Lb, &["link", "set", "back", "mtu", BACK_MTU]);
    for dev in ["p0", "p1", "br0"] {
        topo.ip(Role::Sw, &["link", "set", dev, "mtu", BACK_MTU]);
    }
    topo.ip(Role::Backend(1), &["link", "set", "eth0", "mtu", BACK_MTU]);
    topo.ip(
        Role::Backend(1),
        &[
            "route",
            "replace",
            "default",
            "via",
            "198.18.1.1",
            "dev",
            "eth0",
            "advmss",
            "1460",
        ],
    );
    topo
}

/// The value of `key=` in a `sluice-testsrv` line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn a_udp_datagram_too_big_for_the_backend_link_gets_frag_needed() {
    require_root();
    let topo = small_backend_link(false);
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);
    let query = |size: &str| {
        topo.testsrv(
            Role::Client,
            &[
                "udp-query",
                &format!("{VIP}:5353"),
                "--size",
                size,
                "--icmp-detail",
                "1",
                "--timeout-ms",
                "2000",
            ],
            Duration::from_secs(10),
        )
    };

    // 1472 + 8 + 20 = 1500 bytes: fits the client's link, not the backend's.
    let out = query("1472");
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(5),
        "expected EMSGSIZE: {out}\nsluice log:\n{}",
        sluice.logs()
    );
    let detail = out
        .stdout
        .lines()
        .find(|l| l.starts_with("icmp-error "))
        .unwrap_or_else(|| panic!("no ICMP detail: {out}"));
    assert_eq!(field(detail, "errno"), "90", "not EMSGSIZE: {detail}");
    assert_eq!(field(detail, "origin"), "2", "not an ICMP error: {detail}");
    assert_eq!(
        (field(detail, "type"), field(detail, "code")),
        ("3", "4"),
        "not fragmentation needed: {detail}"
    );
    assert_eq!(field(detail, "info"), BACK_MTU, "next-hop MTU: {detail}");
    assert_eq!(field(detail, "offender"), VIP, "{detail}");

    // 1372 + 28 = 1400: fits, and the backend answers.
    let out = query("1372");
    assert!(out.success(), "{out}\nsluice log:\n{}", sluice.logs());
    assert!(out.stdout.starts_with("backend=b1 "), "{out}");

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_eq!(report.counter("drop_too_big"), 1, "{:?}", report.counters);
    assert_eq!(
        report.counter("icmp_too_big_sent"),
        1,
        "{:?}",
        report.counters
    );
}

#[test]
fn an_ipv6_datagram_too_big_for_the_backend_link_gets_packet_too_big() {
    require_root();
    let topo = small_backend_link(true);
    let sluice = Sluice::start(&topo, &config6(), &["--workers", "1"]);
    let query = |size: &str| {
        topo.testsrv(
            Role::Client,
            &[
                "udp-query",
                &format!("[{VIP6}]:5353"),
                "--size",
                size,
                "--icmp-detail",
                "1",
                "--timeout-ms",
                "2000",
            ],
            Duration::from_secs(10),
        )
    };
    // 1452 + 8 + 40 = 1500 bytes.
    let out = query("1452");
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(5),
        "expected EMSGSIZE: {out}\nsluice log:\n{}",
        sluice.logs()
    );
    let detail = out
        .stdout
        .lines()
        .find(|l| l.starts_with("icmp-error "))
        .unwrap_or_else(|| panic!("no ICMP detail: {out}"));
    assert_eq!(field(detail, "errno"), "90", "not EMSGSIZE: {detail}");
    assert_eq!(
        field(detail, "origin"),
        "3",
        "not an ICMPv6 error: {detail}"
    );
    assert_eq!(
        (field(detail, "type"), field(detail, "code")),
        ("2", "0"),
        "not packet too big: {detail}"
    );
    assert_eq!(field(detail, "info"), BACK_MTU, "MTU: {detail}");
    assert_eq!(field(detail, "offender"), VIP6, "{detail}");
    // 1352 + 48 = 1400: fits.
    let out = query("1352");
    assert!(out.success(), "{out}\nsluice log:\n{}", sluice.logs());
    assert!(out.stdout.starts_with("backend=b1 "), "{out}");

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_eq!(report.counter("drop_too_big"), 1, "{:?}", report.counters);
    assert_eq!(
        report.counter("icmp_too_big_sent"),
        1,
        "{:?}",
        report.counters
    );
}

#[test]
fn a_tcp_upload_completes_through_path_mtu_discovery() {
    require_root();
    let topo = small_backend_link(false);
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);
    let out = topo.testsrv(
        Role::Client,
        &[
            "bulk-put",
            &format!("{VIP}:9000"),
            "--bytes",
            "2000000",
            "--timeout-ms",
            "20000",
        ],
        Duration::from_secs(30),
    );
    assert!(out.success(), "{out}\nsluice log:\n{}", sluice.logs());
    let line = out.stdout.lines().next().unwrap_or_default();
    assert!(line.starts_with("ok 2000000 "), "{out}");
    assert_eq!(field(line, "pmtu"), BACK_MTU, "{out}");

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    let (dropped, sent) = (
        report.counter("drop_too_big"),
        report.counter("icmp_too_big_sent"),
    );
    assert!(sent >= 1, "no ICMP answer: {:?}", report.counters);
    assert!(dropped >= sent, "{:?}", report.counters);
}

/// A `udp-query` with `--ttl` and the ICMP detail.
fn ttl_query(topo: &Topology, to: &str, ttl: &str) -> sluice_tests::CmdOutput {
    topo.testsrv(
        Role::Client,
        &[
            "udp-query",
            to,
            "--ttl",
            ttl,
            "--icmp-detail",
            "1",
            "--timeout-ms",
            "2000",
        ],
        Duration::from_secs(10),
    )
}

#[test]
fn a_datagram_whose_ttl_runs_out_at_the_lb_gets_time_exceeded() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1).ipv6(true));
    let conf = format!("{}\n---\n{}", config(), config6());
    let sluice = Sluice::start(&topo, &conf, &["--workers", "1"]);
    for (to, offender, origin, ty) in [
        (format!("{VIP}:5353"), VIP, "2", "11"),
        (format!("[{VIP6}]:5353"), VIP6, "3", "3"),
    ] {
        let out = ttl_query(&topo, &to, "1");
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(6),
            "expected EHOSTUNREACH: {out}\nsluice log:\n{}",
            sluice.logs()
        );
        let detail = out
            .stdout
            .lines()
            .find(|l| l.starts_with("icmp-error "))
            .unwrap_or_else(|| panic!("no ICMP detail: {out}"));
        assert_eq!(field(detail, "errno"), "113", "not EHOSTUNREACH: {detail}");
        assert_eq!(field(detail, "origin"), origin, "not ICMP: {detail}");
        assert_eq!(
            (field(detail, "type"), field(detail, "code")),
            (ty, "0"),
            "not time exceeded: {detail}"
        );
        assert_eq!(field(detail, "offender"), offender, "{detail}");
        // One hop more and it reaches the backend, a hop behind the LB.
        let out = ttl_query(&topo, &to, "2");
        assert!(out.success(), "{out}\nsluice log:\n{}", sluice.logs());
        assert!(out.stdout.starts_with("backend=b1 "), "{out}");
    }

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_eq!(
        report.counter("drop_ttl_exceeded"),
        2,
        "{:?}",
        report.counters
    );
    assert_eq!(
        report.counter("icmp_time_exceeded_sent"),
        2,
        "{:?}",
        report.counters
    );
}
