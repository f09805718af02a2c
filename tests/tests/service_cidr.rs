//! `--service-cidr`: kube-proxy's nftables `cluster-ips-check` rules, with
//! real kernel clients on veth, both families.
//!
//! The LB namespace gets a route for the whole service /24 (/64) towards
//! backend 1 and kernel forwarding on, so a packet Sluice does not take is
//! visibly routed on; an nftables `forward` counter per destination in the
//! LB namespace says whether the kernel routed it (the backend side would
//! see it). Service range 198.18.100.0/25 (2001:db8:100::/112) holding the
//! ClusterIP 198.18.100.10 (2001:db8:100::10) with TCP 80 and UDP 5353:
//!
//! * to an unallocated address inside the range (.99 / ::99): dropped in
//!   XDP and counted (`xdp_service_cidr_dropped_front`), not forwarded
//!   (the forward counter stays 0), no answer (the client times out);
//! * to the ClusterIP on a port no Service has: ICMP port unreachable
//!   (type 3 code 3 / ICMPv6 1 code 4), TCP included (`curl`: refused at
//!   once), counted as `drop_cluster_ip_port`;
//! * to an address outside the range (.200 / ::1:5): routed on as before;
//! * the service's own ports: served;
//! * without the flag: the unallocated address is routed on as before.
//!
//! And the node's own sockets (`--host-traffic on`): `connect()` to the
//! unallocated address fails with EPERM, to the ClusterIP's other port
//! with ECONNREFUSED, nothing leaves the node.

use std::time::{Duration, Instant};

use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::{require_root, topology, Role, Sluice, Topology, TopologyOpts};

const RANGE4: &str = "198.18.100.0/25";
const RANGE6: &str = "2001:db8:100::/112";
const UNOWNED4: &str = "198.18.100.99";
const UNOWNED6: &str = "2001:db8:100::99";
const OUTSIDE4: &str = "198.18.100.200";
const OUTSIDE6: &str = "2001:db8:100::1:5";

fn config() -> String {
    let ports = [("http", 8080, "TCP"), ("dns", 5353, "UDP")];
    let v4: Vec<Ep> = (1..=2)
        .map(|i| Ep::ready(Topology::backend_ip(i)))
        .collect();
    let v6: Vec<Ep> = (1..=2)
        .map(|i| Ep::ready(Topology::backend_ip6(i)))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  clusterIPs: ["198.18.100.10", "2001:db8:100::10"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
---
{}
---
{}"#,
        endpoint_slice("web-1", "web", &ports, &v4),
        endpoint_slice("web-2", "web", &ports, &v6),
    )
}

/// Kernel forwarding in the LB namespace, a route for the service prefix
/// towards backend 1, and a `forward` counter per watched destination.
fn route_and_count(topo: &Topology) {
    topo.set_lb_forwarding(true);
    let out = topo.exec(
        Role::Lb,
        &["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"],
        Duration::from_secs(5),
    );
    assert!(out.success(), "{out}");
    topo.ip(
        Role::Lb,
        &[
            "route",
            "add",
            "198.18.100.0/24",
            "via",
            &Topology::backend_ip(1),
        ],
    );
    topo.ip(
        Role::Lb,
        &[
            "-6",
            "route",
            "add",
            "2001:db8:100::/64",
            "via",
            &Topology::backend_ip6(1),
        ],
    );
    let mut rules = String::from(
        "table inet svccidr {\n chain counted {\n  type filter hook forward priority 0; policy accept;\n",
    );
    for (fam, a) in [
        ("ip", UNOWNED4),
        ("ip", OUTSIDE4),
        ("ip6", UNOWNED6),
        ("ip6", OUTSIDE6),
    ] {
        rules.push_str(&format!("  {fam} daddr {a} counter comment \"{a}\"\n"));
    }
    rules.push_str(" }\n}\n");
    let path = std::env::temp_dir().join(format!("svccidr-{}.nft", topo.prefix()));
    std::fs::write(&path, rules).unwrap();
    let out = topo.exec(
        Role::Lb,
        &["nft", "-f", &path.to_string_lossy()],
        Duration::from_secs(5),
    );
    let _ = std::fs::remove_file(&path);
    assert!(out.success(), "nft: {out}");
}

/// Packets the LB's kernel forwarded to `addr`.
fn forwarded(topo: &Topology, addr: &str) -> u64 {
    let out = topo.exec(
        Role::Lb,
        &["nft", "list", "chain", "inet", "svccidr", "counted"],
        Duration::from_secs(5),
    );
    assert!(out.success(), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(&format!("\"{addr}\"")))
        .unwrap_or_else(|| panic!("no rule for {addr}: {out}"));
    let mut words = line.split_whitespace();
    words
        .find(|w| *w == "packets")
        .and_then(|_| words.next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count: {line}"))
}

/// One UDP datagram from the client to `addr:port`: the testsrv's output.
fn udp(topo: &Topology, addr: &str, port: u16) -> sluice_tests::CmdOutput {
    let target = if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    };
    topo.testsrv(
        Role::Client,
        &[
            "udp-query",
            &target,
            "--timeout-ms",
            "400",
            "--icmp-detail",
            "1",
        ],
        Duration::from_secs(5),
    )
}

/// `curl -v` (its log names the connect error) from `role`, and how long
/// it took.
fn curl(topo: &Topology, role: Role, addr: &str, port: u16) -> (sluice_tests::CmdOutput, Duration) {
    let url = if addr.contains(':') {
        format!("http://[{addr}]:{port}/")
    } else {
        format!("http://{addr}:{port}/")
    };
    let t = Instant::now();
    let out = topo.curl_in(
        role,
        &[
            "-v",
            "-g",
            "--connect-timeout",
            "1",
            "--max-time",
            "2",
            &url,
        ],
    );
    (out, t.elapsed())
}

#[test]
fn service_ranges_drop_unowned_and_reject_clusterip_ports() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true).backends(2));
    route_and_count(&topo);
    let range = format!("{RANGE4},{RANGE6}");
    let sluice = Sluice::start(
        &topo,
        &config(),
        &["--workers", "1", "--service-cidr", &range],
    );

    for (unowned, outside, vip, icmp) in [
        (UNOWNED4, OUTSIDE4, "198.18.100.10", "type=3 code=3"),
        (UNOWNED6, OUTSIDE6, "2001:db8:100::10", "type=1 code=4"),
    ] {
        // The service's own ports are served.
        let (out, _) = curl(&topo, Role::Client, vip, 80);
        assert!(
            out.success(),
            "{vip}:80 not served: {out}\n{}",
            sluice.logs()
        );
        let out = udp(&topo, vip, 5353);
        assert!(out.success(), "{vip}:5353 not served: {out}");

        // Unallocated inside the range: dropped, no answer, not routed.
        for port in [80, 5353] {
            let out = udp(&topo, unowned, port);
            assert!(out.stdout.contains("timeout"), "{unowned}:{port}: {out}");
        }
        let (out, _) = curl(&topo, Role::Client, unowned, 80);
        assert!(!out.success(), "{out}");
        assert!(
            !out.stderr.contains("refused") && !out.stderr.contains("unreachable"),
            "{unowned}: answered, not dropped: {out}"
        );
        assert_eq!(forwarded(&topo, unowned), 0, "{unowned} was routed on");

        // The ClusterIP on a port no Service has: ICMP port unreachable,
        // for UDP and for TCP.
        let out = udp(&topo, vip, 5354);
        assert!(out.stdout.contains("refused"), "{vip}:5354: {out}");
        assert!(
            out.stdout.contains(icmp),
            "{vip}:5354 not port unreachable: {out}"
        );
        let (out, took) = curl(&topo, Role::Client, vip, 81);
        assert!(
            out.stderr.contains("refused") || out.status.and_then(|s| s.code()) == Some(7),
            "{vip}:81 not refused: {out}"
        );
        assert!(
            took < Duration::from_millis(900),
            "{vip}:81 refused after {took:?}"
        );

        // Outside the range: routed on as before.
        let out = udp(&topo, outside, 5353);
        assert!(out.stdout.contains("timeout"), "{outside}: {out}");
        assert!(
            forwarded(&topo, outside) >= 1,
            "{outside} was not routed on"
        );
    }

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    // 3 datagrams-or-SYNs per family, curl's SYN retried within its 1 s.
    assert!(
        report.counter("xdp_service_cidr_dropped_front") >= 6,
        "{:?}",
        report.counters
    );
    assert!(
        report.counter("drop_cluster_ip_port") >= 4,
        "{:?}",
        report.counters
    );
    // The reject is not the no-endpoints one (TCP RST): ICMP for TCP too.
    assert_eq!(report.counter("rejected"), 0, "{:?}", report.counters);
}

#[test]
fn without_the_flag_unowned_service_addresses_are_routed_as_before() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true).backends(2));
    route_and_count(&topo);
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);
    for unowned in [UNOWNED4, UNOWNED6] {
        let out = udp(&topo, unowned, 5353);
        assert!(out.stdout.contains("timeout"), "{unowned}: {out}");
        assert!(
            forwarded(&topo, unowned) >= 1,
            "{unowned} was not routed on"
        );
    }
    // The ClusterIP's other ports are the kernel's too (routed on).
    let out = udp(&topo, "198.18.100.10", 5354);
    assert!(out.stdout.contains("timeout"), "{out}");
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_eq!(report.counter("xdp_service_cidr_dropped_front"), 0);
    assert_eq!(report.counter("drop_cluster_ip_port"), 0);
}

#[test]
fn the_node_itself_gets_eperm_and_econnrefused() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true).backends(2));
    route_and_count(&topo);
    let range = format!("{RANGE4},{RANGE6}");
    let sluice = Sluice::start(
        &topo,
        &config(),
        &[
            "--workers",
            "1",
            "--service-cidr",
            &range,
            "--host-traffic",
            "on",
        ],
    );
    for (unowned, vip) in [(UNOWNED4, "198.18.100.10"), (UNOWNED6, "2001:db8:100::10")] {
        let (out, _) = curl(&topo, Role::Lb, vip, 80);
        assert!(out.success(), "node → {vip}:80: {out}\n{}", sluice.logs());
        let (out, took) = curl(&topo, Role::Lb, unowned, 80);
        assert!(
            out.stderr.contains("Operation not permitted"),
            "node → {unowned}: {out}"
        );
        assert!(took < Duration::from_millis(500), "{took:?}");
        let (out, took) = curl(&topo, Role::Lb, vip, 81);
        assert!(out.stderr.contains("refused"), "node → {vip}:81: {out}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        // The node's own packets never left (no route to a backend taken).
        assert_eq!(forwarded(&topo, unowned), 0);
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_eq!(report.counter("host_traffic_service_cidr_refused"), 2);
    assert!(
        report.counter("host_traffic_refused") >= 2,
        "{:?}",
        report.counters
    );
}

#[test]
fn a_clusterip_outside_every_range_is_served_with_a_warning() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2));
    let sluice = Sluice::start(
        &topo,
        &config(),
        &["--workers", "1", "--service-cidr", "198.18.100.128/25"],
    );
    let (out, _) = curl(&topo, Role::Client, "198.18.100.10", 80);
    assert!(out.success(), "not served: {out}");
    let report = sluice.stop();
    assert!(
        report
            .logs
            .contains("ClusterIP 198.18.100.10 is outside every --service-cidr"),
        "no warning:\n{}",
        report.logs
    );
}

#[test]
fn bad_ranges_are_refused_at_start() {
    require_root();
    let topo = topology!(TopologyOpts::default().servers(false));
    for (value, want) in [
        (
            "198.18.100.1/25",
            "has host bits set: the range is 198.18.100.0/25",
        ),
        ("198.18.100.0/25,nonsense", "\"nonsense\" is not a prefix"),
        ("198.18.0.0/16", "holds 198.18.0.1, an address of this node"),
    ] {
        let out = Sluice::run_to_exit(
            &topo,
            &config(),
            &["--service-cidr", value],
            Duration::from_secs(15),
        );
        assert!(
            !out.timed_out(),
            "started with --service-cidr {value}: {out}"
        );
        assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{value}: {out}");
        assert!(
            out.stderr.contains("--service-cidr"),
            "flag not named: {out}"
        );
        assert!(out.stderr.contains(want), "no `{want}`: {out}");
    }
}
