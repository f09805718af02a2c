//! IP fragments through the VIP (issue 9): UDP datagrams that the client's
//! kernel fragments (anything over 1472 bytes of payload on a 1500-byte
//! link over IPv4, 1452 over IPv6), and small requests whose replies the
//! backend's kernel fragments, arrive intact in NAT mode, IPv4 and IPv6,
//! with the client kept and masqueraded, and in DR mode.
//!
//! `sluice-testsrv udp-echo` sends a datagram with a hash of its body and
//! asks for a reply of a given size; `serve --udp-echo` checks the hash and
//! answers with a deterministic body that the client checks byte for byte,
//! over a socket connected to the VIP (a reply from anywhere else is never
//! received). Both sockets let their kernel fragment (`IP_PMTUDISC_DONT`).
//! Before the fragment path, the steering program passed every fragment to
//! the kernel, which has no service on the VIP: every size here above the
//! link's timed out.

use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::{require_root, topology, Role, Sluice, Topology, TopologyOpts, VIP};

const VIP6: &str = "2001:db8:100::10";
const ECHO_PORT: u16 = 7070;

/// A UDP echo service on `vip`:7070 → the backend's 7070, with the
/// forwarding method of `annotations`.
fn service(name: &str, vip: &str, family: &str, backend: String, annotations: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
{annotations}spec:
  type: ClusterIP
  clusterIP: {vip}
  clusterIPs: ["{vip}"]
  ipFamilies: [{family}]
  ports:
  - name: echo
    protocol: UDP
    port: {ECHO_PORT}
    targetPort: {ECHO_PORT}
---
{}"#,
        endpoint_slice(
            &format!("{name}-1"),
            name,
            &[("echo", ECHO_PORT, "UDP")],
            &[Ep::ready(backend)]
        )
    )
}

/// (request bytes, reply bytes): fragmented requests with small and
/// fragmented replies, and an unfragmented request whose reply fragments.
const SIZES: &[(usize, usize)] = &[(1473, 64), (3000, 3000), (8000, 8000), (1400, 4000)];

/// Runs every size against `addr` from the client; panics with the output
/// and Sluice's log on the first that fails.
fn echo_all(topo: &Topology, sluice: &Sluice, addr: &str) {
    for &(size, reply) in SIZES {
        let (s, r) = (size.to_string(), reply.to_string());
        let out = topo.testsrv(
            Role::Client,
            &[
                "udp-echo",
                addr,
                "--size",
                &s,
                "--reply",
                &r,
                "--count",
                "3",
                "--timeout-ms",
                "2000",
            ],
            Duration::from_secs(15),
        );
        assert!(
            out.success() && out.stdout.lines().count() == 3,
            "{addr} size {size} reply {reply}: {out}\nsluice log:\n{}",
            sluice.logs()
        );
        assert!(
            out.stdout.lines().all(|l| l.starts_with("ok backend=b1 ")),
            "{out}"
        );
    }
}

/// The echo server on backend 1, on every address or on `bind` alone.
fn echo_server(topo: &Topology, bind: Option<&str>) -> sluice_tests::BgProcess {
    let port = ECHO_PORT.to_string();
    let mut args = vec!["serve", "--name", "b1", "--udp-echo", &port];
    if let Some(ip) = bind {
        args.extend(["--echo-bind", ip]);
    }
    let p = topo.spawn_testsrv(Role::Backend(1), &args);
    assert!(
        p.wait_for(
            sluice_tests::Pipe::Stdout,
            0,
            "ready",
            Duration::from_secs(10)
        ),
        "echo server: {}",
        p.output(sluice_tests::Pipe::Stderr)
    );
    p
}

#[test]
fn nat_fragmented_datagrams_and_replies_arrive_intact_v4_and_v6() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true).backends(1));
    let _echo = echo_server(&topo, None);
    let config = format!(
        "{}\n---\n{}",
        service("echo4", VIP, "IPv4", Topology::backend_ip(1), ""),
        service("echo6", VIP6, "IPv6", Topology::backend_ip6(1), "")
    );
    let sluice = Sluice::start(&topo, &config, &["--workers", "1"]);
    echo_all(&topo, &sluice, &format!("{VIP}:{ECHO_PORT}"));
    echo_all(&topo, &sluice, &format!("[{VIP6}]:{ECHO_PORT}"));
    let r = sluice.stop();
    assert!(r.status.is_some_and(|s| s.success()), "{r:?}");
    // 2 families × 4 sizes × 3 datagrams, each with a fragmented request
    // or reply (or both): every one went through the fragment path.
    let c = |k: &str| r.counter(k);
    assert!(c("frag_first") >= 24, "{:?}", r.counters);
    assert!(c("frag_followed") >= c("frag_first"), "{:?}", r.counters);
    assert_eq!(c("frag_dropped_no_first"), 0, "{:?}", r.counters);
    assert_eq!(c("frag_dropped_table_full"), 0, "{:?}", r.counters);
    assert_eq!(c("drop_fragment"), 0, "{:?}", r.counters);
    assert!(c("xdp_fragments_redirected_front") > 0, "{:?}", r.counters);
    assert!(c("xdp_fragments_redirected_back") > 0, "{:?}", r.counters);
}

#[test]
fn masqueraded_fragmented_datagrams_and_replies_arrive_intact() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true).backends(1));
    let _echo = echo_server(&topo, None);
    let config = format!(
        "{}\n---\n{}",
        service("echo4", VIP, "IPv4", Topology::backend_ip(1), ""),
        service("echo6", VIP6, "IPv6", Topology::backend_ip6(1), "")
    );
    // The client is outside the cluster CIDRs: masqueraded, so replies
    // come back to the LB's SNAT address and port (steering rule (c)).
    let sluice = Sluice::start(
        &topo,
        &config,
        &[
            "--workers",
            "1",
            "--cluster-cidr",
            "198.18.1.0/24",
            "--cluster-cidr",
            "2001:db8:1::/64",
        ],
    );
    echo_all(&topo, &sluice, &format!("{VIP}:{ECHO_PORT}"));
    echo_all(&topo, &sluice, &format!("[{VIP6}]:{ECHO_PORT}"));
    let r = sluice.stop();
    assert!(r.status.is_some_and(|s| s.success()), "{r:?}");
    assert!(r.counter("snat_flows") >= 2, "{:?}", r.counters);
    assert!(r.counter("frag_first") >= 24, "{:?}", r.counters);
    assert!(
        r.counter("xdp_fragments_redirected_back") > 0,
        "{:?}",
        r.counters
    );
}

#[test]
fn dr_fragmented_datagrams_reach_the_backend_intact() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1));
    // The DR real server: the VIP on lo, ARP for it suppressed (dr.rs).
    let b = Role::Backend(1);
    let out = topo.exec(
        b,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
        ],
        Duration::from_secs(10),
    );
    assert!(out.success(), "{out}");
    topo.ip(b, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    // The LB namespace's kernel routes the backend's direct replies.
    topo.set_lb_forwarding(true);
    let out = topo.exec(
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
        Duration::from_secs(10),
    );
    assert!(out.success(), "{out}");
    // Bound to the VIP: a UDP reply leaves from the address it is bound to.
    let _echo = echo_server(&topo, Some(VIP));
    let annotations = "  annotations:\n    sluice.dev/forwarding-method: dr\n";
    let config = service("echo4", VIP, "IPv4", Topology::backend_ip(1), annotations);
    let sluice = Sluice::start(&topo, &config, &["--workers", "1"]);
    echo_all(&topo, &sluice, &format!("{VIP}:{ECHO_PORT}"));
    let r = sluice.stop();
    assert!(r.status.is_some_and(|s| s.success()), "{r:?}");
    // Three of the four sizes fragment the request (three datagrams each).
    assert!(r.counter("frag_first") >= 9, "{:?}", r.counters);
    assert!(r.counter("frag_followed") >= 9, "{:?}", r.counters);
    // The direct replies are the kernel's to route, not Sluice's.
    assert_eq!(
        r.counter("xdp_fragments_redirected_back"),
        0,
        "{:?}",
        r.counters
    );
}
