//! The XDP fast path (`--fast-path xdp`, issue 13) on veth: the outcome of
//! each case is what the AF_XDP path gives, and the steering program
//! forwarded part of the traffic itself (its fast-path hit counters,
//! printed at exit as `counter xdp_fast_hits_IF`, are above zero).
//!
//! The topology turns GRO on at the LB's peers ([`TopologyOpts::fast_path`]):
//! frames redirected into a veth are delivered only when the receiving end
//! runs NAPI.
//!
//! `xdp` is the default; every other test file runs in the mode
//! `SLUICE_FAST_PATH` names (`off` or `xdp`, default `xdp`) with the same
//! results, and the counters test here also runs with `--fast-path off`.

use std::time::{Duration, Instant};

use sluice_tests::api;
use sluice_tests::craft::{self, Capture, Ip4};
use sluice_tests::k8s::{endpoint_slice, ready_backends, Ep};
use sluice_tests::{
    poll_until, require_root, sluice_bin, topology, ReloadOutcome, Role, Sluice, StopReport,
    Topology, TopologyOpts,
};

const FAST: &[&str] = &["--workers", "1", "--fast-path", "xdp"];

fn config(vip: &str, backends: &[usize]) -> String {
    config_eps(vip, &ready_backends(backends), "")
}

fn config6(vip: &str, backends: &[usize]) -> String {
    let eps: Vec<Ep> = backends
        .iter()
        .map(|&i| Ep::ready(Topology::backend_ip6(i)))
        .collect();
    config_eps(
        vip,
        &eps,
        "\n  ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack",
    )
}

fn config_eps(vip: &str, eps: &[Ep], family: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {vip}{family}
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
            eps
        )
    )
}

/// `sluice-testsrv bulk-get TARGET --bytes BYTES MORE...`.
fn bulk_get<'a>(target: &'a str, bytes: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["bulk-get", target, "--bytes", bytes];
    v.extend_from_slice(more);
    v
}

fn hits(r: &StopReport) -> (u64, u64) {
    (
        r.counter("xdp_fast_hits_front"),
        r.counter("xdp_fast_hits_back"),
    )
}

fn stopped(sluice: Sluice) -> StopReport {
    let r = sluice.stop();
    assert!(r.status.is_some_and(|s| s.success()), "{r:?}");
    r
}

/// A 20 MB TCP transfer from a backend through the VIP: complete, and most
/// of its segments forwarded by the XDP program in both directions.
fn bulk(ipv6: bool, vip: &str, args: &[&str]) {
    let topo = topology!(TopologyOpts::default()
        .backends(1)
        .ipv6(ipv6)
        .fast_path(true));
    let cfg = if ipv6 {
        config6(vip, &[1])
    } else {
        config(vip, &[1])
    };
    let args: Vec<&str> = FAST.iter().chain(args).copied().collect();
    let sluice = Sluice::start(&topo, &cfg, &args);
    let target = if ipv6 {
        format!("[{vip}]:9000")
    } else {
        format!("{vip}:9000")
    };
    let out = topo.testsrv(
        Role::Client,
        &bulk_get(&target, "20000000", &["--timeout-ms", "20000"]),
        Duration::from_secs(30),
    );
    if !out.success() {
        let r = sluice.stop();
        let c: Vec<_> = r.counters.iter().filter(|(_, v)| **v > 0).collect();
        let mut l = String::new();
        for role in [Role::Lb, Role::Sw, Role::Backend(1)] {
            let o = topo.exec(role, &["ip", "-s", "-s", "link"], Duration::from_secs(5));
            let f = topo.exec(role, &["sh", "-c", "for i in /sys/class/net/*; do echo $i; ethtool -k $(basename $i) | grep generic-receive; done"], Duration::from_secs(5));
            l.push_str(&format!("{role:?}\n{}\n{}\n", o.stdout, f.stdout));
        }
        panic!("{out}\ncounters {c:?}\n{l}");
    }
    let r = stopped(sluice);
    let (front, back) = hits(&r);
    assert!(
        front > 100 && back > 1000,
        "fast path unused: front {front} back {back}\n{}",
        r.logs
    );
    assert!(r.counter("fast_published") >= 2, "{}", r.logs);
    // The transfer closed with FINs, which reached the worker: both
    // directions' entries were withdrawn.
    assert!(r.counter("fast_withdrawn") >= 2, "{:?}", r.counters);
}

/// `count` UDP queries from the client to the VIP's port 5353 on one
/// socket (one flow), each waited for up to 2 s.
fn udp_queries(topo: &Topology, count: usize) -> sluice_tests::CmdOutput {
    let count = count.to_string();
    topo.testsrv(
        Role::Client,
        &[
            "udp-query",
            "198.18.100.10:5353",
            "--count",
            &count,
            "--timeout-ms",
            "2000",
        ],
        Duration::from_secs(20),
    )
}

#[test]
fn nat_tcp_transfer_takes_the_fast_path() {
    require_root();
    bulk(false, "198.18.100.10", &[]);
}

/// Masqueraded (SNAT) clients: the reply direction's entry matches the
/// SNAT address and port.
#[test]
fn masqueraded_tcp_transfer_takes_the_fast_path() {
    require_root();
    bulk(false, "198.18.100.10", &["--masquerade-all"]);
}

#[test]
fn ipv6_tcp_transfer_takes_the_fast_path() {
    require_root();
    bulk(true, "2001:db8:100::10", &[]);
}

/// UDP queries on one socket (one flow): every one answered from the VIP,
/// the later ones by the fast path both ways.
#[test]
fn udp_flow_takes_the_fast_path() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2).fast_path(true));
    let sluice = Sluice::start(&topo, &config("198.18.100.10", &[1, 2]), FAST);
    let out = udp_queries(&topo, 50);
    assert!(out.success(), "{out}\nlog:\n{}", sluice.logs());
    assert_eq!(out.stdout.lines().count(), 50, "{out}");
    let r = stopped(sluice);
    let (front, back) = hits(&r);
    assert!(
        front > 10 && back > 10,
        "front {front} back {back}\n{}",
        r.logs
    );
}

/// An endpoint removed in the middle of a transfer the fast path carries:
/// the sweep withdraws the flow's entries, the next segment reaches a
/// worker, and the client is reset within two seconds (as without the
/// fast path, `tests/tests/endpoint_removal.rs`).
#[test]
fn removed_endpoint_resets_a_fast_flow() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2).fast_path(true));
    let mut sluice = Sluice::start(&topo, &config("198.18.100.10", &[1]), FAST);
    let mut bulk = topo.spawn_testsrv(
        Role::Client,
        &bulk_get(
            "198.18.100.10:9000",
            "40000000",
            &[
                "--rate",
                "4000000",
                "--timeout-ms",
                "15000",
                "--poke-ms",
                "200",
            ],
        ),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(bulk.is_running(), "bulk transfer ended early");
    sluice.rewrite_config(&config("198.18.100.10", &[2]));
    let outcome = sluice.reload();
    let t = Instant::now();
    assert!(matches!(outcome, ReloadOutcome::Applied(_)), "{outcome:?}");
    let out = bulk.wait(Duration::from_secs(2));
    let took = t.elapsed();
    let r = stopped(sluice);
    assert!(
        !out.timed_out(),
        "still hung 2 s after the removal: {out}\n{}",
        r.logs
    );
    assert!(!out.success(), "{out}");
    let (front, back) = hits(&r);
    assert!(
        back > 100,
        "fast path unused: front {front} back {back}\n{}",
        r.logs
    );
    eprintln!("reset {took:?} after the reload");
}

/// A flow that ends with a RST (the client dies with unread data, its
/// kernel resets the connection): the RST reaches the worker, which
/// withdraws both directions.
#[test]
fn a_reset_withdraws_the_flow() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1).fast_path(true));
    let sluice = Sluice::start(&topo, &config("198.18.100.10", &[1]), FAST);
    let bulk = topo.spawn_testsrv(
        Role::Client,
        &bulk_get(
            "198.18.100.10:9000",
            "40000000",
            &["--rate", "4000000", "--timeout-ms", "15000"],
        ),
    );
    std::thread::sleep(Duration::from_millis(1500));
    drop(bulk); // SIGKILL: the socket closes with data unread → RST
    std::thread::sleep(Duration::from_millis(500));
    let r = stopped(sluice);
    let (_, back) = hits(&r);
    assert!(back > 100, "fast path unused: {:?}", r.counters);
    assert!(r.counter("fast_withdrawn") >= 2, "{:?}", r.counters);
}

/// The MAC the LB's kernel holds for b1, if any.
fn lb_neighbour_mac(topo: &Topology) -> Option<String> {
    let out = topo.exec(
        Role::Lb,
        &["ip", "neigh", "show", "198.18.1.11", "dev", "back"],
        Duration::from_secs(5),
    );
    let mut words = out.stdout.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

/// A backend whose MAC changes under a transfer the fast path carries
/// (`tests/tests/mac_change.rs` without it): the sweep sees that the
/// flow's rewrite now names another MAC and withdraws the entry, a worker
/// forwards the next segment to the new MAC and publishes again; the
/// transfer completes intact.
#[test]
fn transfer_follows_a_backend_mac_change_on_the_fast_path() {
    require_root();
    const NEW_MAC: &str = "02:5a:00:00:01:ee";
    let topo = topology!(TopologyOpts::default().backends(1).fast_path(true));
    let sluice = Sluice::start(&topo, &config("198.18.100.10", &[1]), FAST);
    let mut bulk = topo.spawn_testsrv(
        Role::Client,
        &bulk_get(
            "198.18.100.10:9000",
            "6000000",
            &["--rate", "2000000", "--timeout-ms", "20000"],
        ),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(bulk.is_running(), "the transfer ended early");
    topo.ip(
        Role::Backend(1),
        &["link", "set", "dev", "eth0", "address", NEW_MAC],
    );
    topo.ip(Role::Backend(1), &["neigh", "flush", "all"]);
    poll_until(Duration::from_secs(10), || {
        (lb_neighbour_mac(&topo).as_deref() == Some(NEW_MAC)).then_some(())
    })
    .unwrap_or_else(|| panic!("the LB's kernel never learned b1's new MAC"));
    let out = bulk.wait(Duration::from_secs(25));
    let r = stopped(sluice);
    assert!(
        out.success() && out.stdout.starts_with("ok 6000000 "),
        "not intact after the MAC change: {out}\n{}",
        r.logs
    );
    let (front, _) = hits(&r);
    assert!(front > 100, "fast path unused: {:?}", r.counters);
    // Published once before the change and again after it.
    assert!(r.counter("fast_published") >= 3, "{:?}", r.counters);
}

/// Direct routing: the client's segments (here the ACKs of a download)
/// take the fast path with only their MACs changed; the backend answers
/// the client directly through the LB's kernel, as without it.
#[test]
fn dr_flow_takes_the_fast_path() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1).fast_path(true));
    let b = Role::Backend(1);
    let sh = |role: Role, argv: &[&str]| {
        let out = topo.exec(role, argv, Duration::from_secs(10));
        assert!(out.success(), "{role:?}: {argv:?}: {out}");
    };
    sh(
        b,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
        ],
    );
    topo.ip(b, &["addr", "add", "198.18.100.10/32", "dev", "lo"]);
    topo.set_lb_forwarding(true);
    sh(
        Role::Lb,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.back.rp_filter=0",
            "net.ipv4.conf.front.rp_filter=0",
        ],
    );
    let cfg = config("198.18.100.10", &[1]).replacen(
        "  namespace: default\n",
        "  namespace: default\n  annotations:\n    sluice.dev/forwarding-method: dr\n",
        1,
    );
    let sluice = Sluice::start(&topo, &cfg, FAST);
    let out = topo.testsrv(
        Role::Client,
        &bulk_get("198.18.100.10:9000", "20000000", &["--timeout-ms", "20000"]),
        Duration::from_secs(30),
    );
    let r = stopped(sluice);
    assert!(out.success(), "{out}\n{}", r.logs);
    let (front, back) = hits(&r);
    assert!(front > 100, "fast path unused: {:?}", r.counters);
    assert_eq!(
        back, 0,
        "DR replies never reach the LB's program as LB traffic"
    );
    assert_eq!(r.counter("xdp_redirected_back"), 0, "{:?}", r.counters);
}

/// Peers without NAPI (GRO off, no XDP program) would drop every frame
/// redirected to them: the daemon sees that the links do not take
/// redirected frames (`NDO_XMIT` off), sends nothing by the fast path
/// towards them, and the transfer completes through the workers.
#[test]
fn links_that_cannot_take_redirects_stay_on_the_workers() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1).fast_path(false));
    let sluice = Sluice::start(&topo, &config("198.18.100.10", &[1]), FAST);
    let out = topo.testsrv(
        Role::Client,
        &bulk_get("198.18.100.10:9000", "5000000", &["--timeout-ms", "20000"]),
        Duration::from_secs(30),
    );
    let r = stopped(sluice);
    assert!(out.success(), "{out}\n{}", r.logs);
    assert_eq!(
        r.counter("fast_path_egress_on_front"),
        0,
        "{:?}",
        r.counters
    );
    assert_eq!(r.counter("fast_path_egress_on_back"), 0, "{:?}", r.counters);
    assert_eq!(hits(&r), (0, 0), "{:?}", r.counters);
    assert!(
        r.logs.contains("does not take redirected frames"),
        "{}",
        r.logs
    );
}

/// A frame of a flow the fast path carries, but one the workers' parser
/// refuses (here: a bad IPv4 header checksum), is not rewritten by the XDP
/// program (which would make its checksum right for the next hop, or keep
/// it wrong and forward it): it goes to a worker, which drops it and counts
/// it as without the fast path (`tests/tests/malformed.rs`). The flow's
/// good datagrams around it keep taking the fast path.
#[test]
fn a_bad_ipv4_checksum_on_a_fast_flow_is_dropped_by_a_worker() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1).fast_path(true));
    // Published at its first datagram, so that the next ones find the
    // flow's entry.
    let args: Vec<&str> = FAST
        .iter()
        .copied()
        .chain(["--fast-path-after", "1"])
        .collect();
    let sluice = Sluice::start(&topo, &config("198.18.100.10", &[1]), &args);
    let (lb_mac, client_mac) = (
        craft::mac(&topo, Role::Lb, "front"),
        craft::mac(&topo, Role::Client, "eth0"),
    );
    let (good, bad) = (craft::marker(), craft::marker());
    let ip = Ip4::new([198, 18, 0, 2], [198, 18, 100, 10]);
    let eth = |p: &[u8]| craft::ether(lb_mac, client_mac, &[], craft::IPV4, p);
    let datagram = |m: &[u8]| eth(&ip.udp(41999, 5353, m));
    let mut broken = ip.udp(41999, 5353, &bad);
    broken[11] ^= 0x5a; // header checksum wrong
                        // On the switch's port to the LB: what the LB sent, before the
                        // bridge (which, with br_netfilter, drops bad IPv4 checksums itself).
    let cap = Capture::start(&topo, Role::Sw, "p0", &[], 4000);
    // The first datagram makes the flow; the worker that forwards it
    // publishes the flow's entry (`--fast-path-after 1`).
    craft::send_frames(&topo, Role::Client, "eth0", &[datagram(&good)]);
    craft::send_frames(
        &topo,
        Role::Client,
        "eth0",
        &[datagram(&good), eth(&broken), datagram(&good)],
    );
    let frames = cap.frames();
    let r = stopped(sluice);
    // Frames towards b1 (IPv4 destination at bytes 30..34) with a marker.
    let carrying = |m: &[u8]| {
        frames
            .iter()
            .filter(|f| f.get(30..34) == Some(&[198, 18, 1, 11][..]))
            .filter(|f| f.windows(m.len()).any(|w| w == m))
            .count()
    };
    assert_eq!(carrying(&bad), 0, "the LB sent the broken datagram on");
    assert_eq!(carrying(&good), 3, "{:?}", r.counters);
    assert_eq!(r.counter("drop_bad_ip_checksum"), 1, "{:?}", r.counters);
    // It found the flow's entry and was refused there.
    assert_eq!(r.counter("xdp_fast_malformed_front"), 1, "{:?}", r.counters);
    assert!(r.counter("xdp_fast_hits_front") >= 2, "{:?}", r.counters);
}

/// The numbers of the `ipvsadm -Ln --stats --exact` lines of the virtual
/// services (Conns InPkts OutPkts InBytes OutBytes), summed.
fn ipvsadm_service_stats(sluice: &Sluice) -> [u64; 5] {
    let o = std::process::Command::new(sluice_bin())
        .args(["ipvsadm", "-Ln", "--stats", "--exact"])
        .env("SLUICE_SOCKET", sluice.api_socket())
        .output()
        .expect("run sluice ipvsadm");
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let mut sum = [0u64; 5];
    for l in out
        .lines()
        .filter(|l| l.starts_with("TCP ") || l.starts_with("UDP "))
    {
        let n: Vec<u64> = l
            .split_whitespace()
            .skip(2)
            .map(|n| n.parse().unwrap_or_else(|_| panic!("{out}")))
            .collect();
        for (s, v) in sum.iter_mut().zip(n) {
            *s += v;
        }
    }
    sum
}

/// The packets the XDP program forwards count like the workers' own: in
/// the workers' rx and tx (each packet through the LB once: received by a
/// socket or forwarded by the program), in the service's and backend's
/// packets (the stats route and `ipvsadm -Ln --stats` add up to rx), and at
/// exit `fast_path_packets` is exactly the program's hits, including what
/// it forwarded after the last sweep and before the closing FIN withdrew
/// the flow's entries.
#[test]
fn counters_include_what_the_fast_path_forwarded() {
    require_root();
    counters_agree_with_the_traffic(FAST, true);
}

/// The same with `--fast-path off` (the default is `xdp`): nothing is
/// forwarded by the XDP program and the workers' counters alone add up.
#[test]
fn counters_agree_with_the_traffic_with_the_fast_path_off() {
    require_root();
    counters_agree_with_the_traffic(&["--workers", "1", "--fast-path", "off"], false);
}

fn counters_agree_with_the_traffic(args: &[&str], xdp: bool) {
    let topo = topology!(TopologyOpts::default().backends(1).fast_path(true));
    let sluice = Sluice::start(&topo, &config("198.18.100.10", &[1]), args);
    let out = topo.testsrv(
        Role::Client,
        &bulk_get("198.18.100.10:9000", "5000000", &["--timeout-ms", "20000"]),
        Duration::from_secs(30),
    );
    assert!(out.success(), "{out}\n{}", sluice.logs());
    let out = udp_queries(&topo, 50);
    assert!(out.success(), "{out}");
    // The sweep credits within 200 ms; the FIN's withdrawals at its next
    // turn.
    let settled = poll_until(Duration::from_secs(5), || {
        let r = api::stats(sluice.api_socket());
        let j = r.json();
        let w = &j["workers"][0]["counters"];
        let (rx, tx, fast) = (
            w["rx"].as_u64()?,
            w["tx"].as_u64()?,
            w["fast_path_packets"].as_u64()?,
        );
        let svc: u64 = j["services"]
            .as_array()?
            .iter()
            .map(|s| s["inPackets"].as_u64().unwrap_or(0) + s["outPackets"].as_u64().unwrap_or(0))
            .sum();
        let ipvs = ipvsadm_service_stats(&sluice);
        (svc == rx && ipvs[1] + ipvs[2] == rx && (fast > 1000) == xdp)
            .then_some((rx, tx, fast, ipvs))
    });
    let (rx, tx, fast, ipvs) = settled.unwrap_or_else(|| {
        let r = api::stats(sluice.api_socket());
        panic!(
            "services' packets never added up to rx: {}\n{:?}",
            r.body,
            ipvsadm_service_stats(&sluice)
        )
    });
    eprintln!("rx {rx} tx {tx} fast {fast} ipvsadm {ipvs:?}");
    let r = stopped(sluice);
    let c = |n: &str| r.counter(n);
    let (front, back) = hits(&r);
    if xdp {
        assert!(front > 10 && back > 1000, "{:?}", r.counters);
    } else {
        assert_eq!(front + back, 0, "{:?}", r.counters);
    }
    assert_eq!(c("fast_path_packets"), front + back, "{:?}", r.counters);
    assert_eq!(
        c("rx"),
        c("xdp_redirected_front") + c("xdp_redirected_back") + front + back,
        "{:?}",
        r.counters
    );
    assert_eq!(c("tx"), c("rx"), "{:?}", r.counters);
    assert_eq!(c("rx"), rx, "traffic after the last read: {:?}", r.counters);
}

/// `count` short TCP connections to the VIP's bulk port, one after the
/// other: a handshake, a request, 100 bytes and the closes, a few packets
/// each way.
fn short_connections(topo: &Topology, count: usize) {
    for i in 0..count {
        let out = topo.testsrv(
            Role::Client,
            &bulk_get("198.18.100.10:9000", "100", &["--timeout-ms", "5000"]),
            Duration::from_secs(10),
        );
        assert!(out.success(), "connection {i}: {out}");
    }
}

/// A worker counter from the stats route (0 when the route has no worker).
fn worker_counter(sluice: &Sluice, name: &str) -> Option<u64> {
    api::stats(sluice.api_socket()).json()["workers"][0]["counters"][name].as_u64()
}

/// `sluice_worker_<name>_total` summed over workers, from `/metrics`; a
/// missing metric is an error.
fn worker_metric(topo: &Topology, name: &str) -> u64 {
    let text = sluice_tests::tier::metrics(topo, Role::Lb);
    let full = format!("sluice_worker_{name}_total");
    sluice_tests::tier::metric_sum(&text, &full)
        .unwrap_or_else(|| panic!("no {full} in /metrics:\n{text}"))
}

/// With the default `--fast-path-after`, short connections (a few packets
/// each way) are never published: no map insert, no entry for the XDP
/// program, and their FINs withdraw nothing (closes of unpublished flows,
/// no lookup-and-delete); then a bulk transfer in the same run is
/// published and carried by the XDP program both ways. Counted at exit,
/// in the stats route and in `/metrics`.
#[test]
fn short_connections_stay_on_the_workers_bulk_takes_the_fast_path() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1).fast_path(true));
    let sluice = Sluice::start(&topo, &config("198.18.100.10", &[1]), FAST);
    short_connections(&topo, 20);
    // Each connection's FINs (one per side) reached the worker; wait for
    // the counters' next publication.
    let closes = poll_until(Duration::from_secs(5), || {
        worker_counter(&sluice, "fast_closes_unpublished").filter(|&n| n >= 40)
    });
    assert!(closes.is_some(), "{}", api::stats(sluice.api_socket()).body);
    assert_eq!(worker_counter(&sluice, "fast_published"), Some(0));
    assert_eq!(worker_metric(&topo, "fast_path_published"), 0);
    assert!(worker_metric(&topo, "fast_path_closes_unpublished") >= 40);
    let out = topo.testsrv(
        Role::Client,
        &bulk_get("198.18.100.10:9000", "20000000", &["--timeout-ms", "20000"]),
        Duration::from_secs(30),
    );
    assert!(out.success(), "{out}\n{}", sluice.logs());
    let published = poll_until(Duration::from_secs(5), || {
        worker_counter(&sluice, "fast_published").filter(|&n| n >= 2)
    });
    assert!(
        published.is_some(),
        "{}",
        api::stats(sluice.api_socket()).body
    );
    assert!(worker_metric(&topo, "fast_path_published") >= 2);
    let r = stopped(sluice);
    let (front, back) = hits(&r);
    assert!(
        front > 100 && back > 1000,
        "front {front} back {back}\n{:?}",
        r.counters
    );
    assert!(r.counter("fast_published") >= 2, "{:?}", r.counters);
    assert!(r.counter("fast_withdrawn") >= 2, "{:?}", r.counters);
    assert!(
        r.counter("fast_closes_unpublished") >= 40,
        "{:?}",
        r.counters
    );
    assert_eq!(r.counter("fast_errors"), 0, "{:?}", r.counters);
}

/// `--fast-path-after 1` publishes a direction at its first packet once
/// established: the same short connections are published (and withdrawn
/// at their FINs), so the threshold is what keeps them on the workers.
#[test]
fn fast_path_after_one_publishes_short_connections() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1).fast_path(true));
    let args: Vec<&str> = FAST
        .iter()
        .copied()
        .chain(["--fast-path-after", "1"])
        .collect();
    let sluice = Sluice::start(&topo, &config("198.18.100.10", &[1]), &args);
    short_connections(&topo, 20);
    std::thread::sleep(Duration::from_millis(500));
    let r = stopped(sluice);
    assert!(r.counter("fast_published") >= 20, "{:?}", r.counters);
    assert!(r.counter("fast_withdrawn") >= 20, "{:?}", r.counters);
}

/// A threshold out of range is refused with a clear error.
#[test]
fn fast_path_after_zero_is_refused() {
    let out = std::process::Command::new(sluice_bin())
        .args([
            "run",
            "--config",
            "/nonexistent",
            "--iface",
            "lo",
            "--fast-path-after",
            "0",
        ])
        .output()
        .expect("run sluice");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--fast-path-after"), "{err}");
}
