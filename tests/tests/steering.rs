//! XDP steering and the parser agree, on veth (the case table in the module
//! doc of `dataplane/src/steer.rs`):
//!
//! * replies to the LB host's own connections to an endpoint (an operator's
//!   `curl`, a UDP query from the LB namespace straight to a backend) reach
//!   the host's sockets, with and without masquerading, while clients keep
//!   being load-balanced through the VIP;
//! * IPv6 with extension headers is steered and forwarded; a Routing header
//!   with segments left is dropped and counted; fragments (IPv4, first and
//!   later; IPv6 Fragment header) pass to the kernel and are counted there,
//!   never redirected and lost.
//!
//! Frames are crafted in the client namespace ([`sluice_tests::craft`]),
//! each kind with its own payload marker, and captured on the backend's
//! link, so a test sees which ones got through.

use std::time::Duration;

use sluice_tests::craft::{self, Capture, Ip4, Ip6};
use sluice_tests::k8s::{endpoint_slice, ready_backends, Ep};
use sluice_tests::{
    parse_backend_reply, require_root, topology, Role, Sluice, StopReport, Topology, TopologyOpts,
    VIP,
};

const CLIENT: [u8; 4] = [198, 18, 0, 2];
const VIP4: [u8; 4] = [198, 18, 100, 10];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// A counter that must have been printed (a missing one is a rename, not a
/// zero).
fn counter(r: &StopReport, name: &str) -> u64 {
    *r.counters
        .get(name)
        .unwrap_or_else(|| panic!("counter {name} was not printed: {:?}", r.counters))
}

/// `default/web` (TCP 80 → 8080) and `default/dns` (UDP 53 → 5353) on the
/// VIP, endpoints on backends `idx`.
fn config_v4(idx: &[usize]) -> String {
    format!(
        "{}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: dns\n  namespace: default\n\
         spec:\n  type: ClusterIP\n  clusterIP: {VIP}\n  ports:\n  - name: dns\n    \
         protocol: UDP\n    port: 53\n    targetPort: 5353\n---\n{}",
        sluice_tests::k8s::web_http(idx),
        endpoint_slice(
            "dns-1",
            "dns",
            &[("dns", 5353, "UDP")],
            &ready_backends(idx)
        )
    )
}

fn curl_vip(topo: &Topology) -> String {
    let out = topo.curl(&format!("http://{VIP}/"), None);
    assert!(out.success(), "curl through the VIP: {out}");
    let (name, _, _) =
        parse_backend_reply(&out.stdout).unwrap_or_else(|| panic!("not a backend reply: {out}"));
    name
}

/// The LB host's own TCP and UDP exchanges with backends, straight to
/// their addresses, while sluice steers those very endpoints.
fn host_talks_to_backends(topo: &Topology) {
    for i in 1..=3 {
        let url = format!("http://{}:8080/", Topology::backend_ip(i));
        let out = topo.curl_in(Role::Lb, &["--max-time", "3", &url]);
        assert!(out.success(), "curl {url} from the LB host: {out}");
        let (name, peer, port) =
            parse_backend_reply(&out.stdout).unwrap_or_else(|| panic!("{url}: {out}"));
        assert_eq!(name, Topology::backend_name(i));
        // The host's own address and an ephemeral port: its own connection.
        assert_eq!(peer, "198.18.1.1", "{out}");
        assert!(port < 61000, "port {port} is in the SNAT range");
    }
    let to = format!("{}:5353", Topology::backend_ip(2));
    let out = topo.testsrv(
        Role::Lb,
        &["udp-query", &to, "--count", "3", "--timeout-ms", "2000"],
        Duration::from_secs(15),
    );
    assert!(out.success(), "UDP query {to} from the LB host: {out}");
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("backend=b2 peer=198.18.1.1:"))
            .count(),
        3,
        "{out}"
    );
}

#[test]
fn replies_to_the_hosts_own_connections_are_not_stolen() {
    require_root();
    let topo = topology!();
    // Clients kept (rule b: endpoint -> non-local client) and masqueraded
    // (rule c: endpoint -> SNAT address and port): in both, an endpoint's
    // reply to a host address outside the SNAT range is the host's.
    for args in [&[][..], &["--cluster-cidr", "198.18.1.0/24"][..]] {
        let sluice = Sluice::start(&topo, &config_v4(&[1, 2, 3]), args);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            seen.insert(curl_vip(&topo));
        }
        host_talks_to_backends(&topo);
        for _ in 0..3 {
            seen.insert(curl_vip(&topo));
        }
        assert_eq!(
            seen.len(),
            3,
            "round robin over b1..b3: {seen:?} ({args:?})"
        );
        let r = sluice.stop();
        assert!(r.status.is_some_and(|s| s.success()), "{r:?}");
        // Only the six client connections went through sluice.
        assert_eq!(counter(&r, "new_flows"), 6, "{args:?} {:?}", r.counters);
        assert_eq!(
            counter(&r, "drop_no_service"),
            0,
            "{args:?} {:?}",
            r.counters
        );
        assert_eq!(counter(&r, "drop_no_flow"), 0, "{args:?} {:?}", r.counters);
    }
}

/// One UDP service on [2001:db8:100::10]:53 → backend 1, port 5353.
fn config_v6() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns6\n  namespace: default\nspec:\n  \
         type: ClusterIP\n  clusterIP: 2001:db8:100::10\n  clusterIPs: [\"2001:db8:100::10\"]\n  \
         ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n  ports:\n  - name: dns\n    \
         protocol: UDP\n    port: 53\n    targetPort: 5353\n---\n{}",
        endpoint_slice(
            "dns6-1",
            "dns6",
            &[("dns", 5353, "UDP")],
            &[Ep::ready(Topology::backend_ip6(1))]
        )
    )
}

/// Destination Options (8 bytes, PadN); `next` is filled in by `Ip6`.
fn dest_opts() -> (u8, Vec<u8>) {
    (60, vec![0, 0, 1, 4, 0, 0, 0, 0])
}

#[test]
fn ipv6_extension_headers_routing_headers_and_fragments() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true).backends(1));
    let sluice = Sluice::start(&topo, &config_v6(), &["--workers", "1"]);
    let (lb_mac, client_mac) = (
        craft::mac(&topo, Role::Lb, "front"),
        craft::mac(&topo, Role::Client, "eth0"),
    );
    let frame = |ip: &Ip6, sport: u16, data: &[u8]| {
        craft::ether(
            lb_mac,
            client_mac,
            &[],
            craft::IPV6,
            &ip.udp(sport, 53, data),
        )
    };
    let (good, routed, frag, long) = (
        craft::marker(),
        craft::marker(),
        craft::marker(),
        craft::marker(),
    );
    let base = Ip6::new(CLIENT6, VIP6);

    // Hop-by-Hop + Destination Options, then UDP: steered and forwarded.
    let mut ext = base.clone();
    ext.ext.push((0, vec![0, 0, 1, 4, 0, 0, 0, 0]));
    ext.ext.push(dest_opts());
    // A Routing header (type 4) with one segment left: refused.
    let mut rh = base.clone();
    rh.ext.push((43, vec![0, 0, 4, 1, 0, 0, 0, 0]));
    // A Fragment header (first fragment, M set, UDP after it): steered by
    // its ports and forwarded, its datagram remembered for the rest.
    let mut fh = base.clone();
    fh.ext.push((44, vec![0, 0, 0, 1, 0, 0, 0, 7]));
    // Nine Destination Options headers: more than both walk; to the kernel.
    let mut nine = base.clone();
    for _ in 0..9 {
        nine.ext.push(dest_opts());
    }

    let cap = Capture::start(&topo, Role::Backend(1), "eth0", &[], 3000);
    craft::send_frames(
        &topo,
        Role::Client,
        "eth0",
        &[
            frame(&ext, 40001, &good),
            frame(&rh, 40002, &routed),
            frame(&fh, 40003, &frag),
            frame(&nine, 40004, &long),
        ],
    );
    let frames = cap.frames();
    let r = sluice.stop();
    let has = |m: &[u8]| {
        frames
            .iter()
            .filter(|f| f.windows(m.len()).any(|w| w == m))
            .count()
    };
    assert_eq!(has(&good), 1, "extension headers: forwarded once to b1");
    let f = frames
        .iter()
        .find(|f| f.windows(8).any(|w| w == good))
        .expect("just counted");
    // NAT happened (destination is b1) and the headers are still there.
    assert_eq!(&f[14 + 24..14 + 40], &ipv6_of(&Topology::backend_ip6(1)));
    assert_eq!((f[14 + 6], f[14 + 40], f[14 + 48]), (0, 60, 17));
    assert_eq!(has(&routed), 0, "routing header with segments left");
    assert_eq!(has(&frag), 1, "first fragment: forwarded once to b1");
    assert_eq!(has(&long), 0, "nine extension headers");

    assert_eq!(counter(&r, "new_flows"), 2, "{:?}", r.counters);
    assert_eq!(
        counter(&r, "drop_ipv6_routing_header"),
        1,
        "{:?}",
        r.counters
    );
    // The long chain was not redirected; the first fragment was, counted
    // by the XDP program, and remembered by the data path.
    assert_eq!(counter(&r, "parse_fragment"), 0, "{:?}", r.counters);
    assert_eq!(counter(&r, "parse_bad_ip_header"), 0, "{:?}", r.counters);
    assert_eq!(
        counter(&r, "xdp_fragments_redirected_front"),
        1,
        "{:?}",
        r.counters
    );
    assert_eq!(counter(&r, "frag_first"), 1, "{:?}", r.counters);
}

fn ipv6_of(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>()
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .octets()
}

/// `pkt` (an IPv4 packet from [`Ip4`]) with IP identification `id`.
fn with_id(mut pkt: Vec<u8>, id: u16) -> Vec<u8> {
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[10..12].fill(0);
    let c = craft::checksum(0, &pkt[..20]);
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
    pkt
}

#[test]
fn ipv4_fragments_follow_their_first_or_pass_together() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1));
    let sluice = Sluice::start(&topo, &config_v4(&[1]), &["--workers", "1"]);
    let (lb_mac, client_mac) = (
        craft::mac(&topo, Role::Lb, "front"),
        craft::mac(&topo, Role::Client, "eth0"),
    );
    let m = || craft::marker();
    let (good, first, later, first2, later2, orphan) = (m(), m(), m(), m(), m(), m());
    let mut ip = Ip4::new(CLIENT, VIP4);
    let whole = ip.udp(40010, 53, &good);
    ip.frag = 0x2000; // MF, offset 0: the first fragment, ports and all
    let first_frag = with_id(ip.udp(40011, 53, &first), 1);
    // To the VIP but a port with no service: the kernel's, all of it.
    let first_frag2 = with_id(ip.udp(40012, 54, &first2), 2);
    ip.frag = 185; // offset 1480, last fragment: no ports
    let later_frag = with_id(ip.packet(17, &later), 1);
    let later_frag2 = with_id(ip.packet(17, &later2), 2);
    // A later fragment whose first never came: the kernel's.
    let orphan_frag = with_id(ip.packet(17, &orphan), 3);
    let eth = |p: &[u8]| craft::ether(lb_mac, client_mac, &[], craft::IPV4, p);

    let cap = Capture::start(&topo, Role::Backend(1), "eth0", &[], 3000);
    craft::send_frames(
        &topo,
        Role::Client,
        "eth0",
        &[
            eth(&whole),
            eth(&first_frag),
            eth(&later_frag),
            eth(&first_frag2),
            eth(&later_frag2),
            eth(&orphan_frag),
        ],
    );
    let frames = cap.frames();
    let r = sluice.stop();
    let has = |m: &[u8]| frames.iter().any(|f| f.windows(m.len()).any(|w| w == m));
    assert!(has(&good), "the whole datagram reaches b1");
    assert!(has(&first), "the first fragment reaches b1");
    assert!(has(&later), "its later fragment follows it to b1");
    assert!(
        !has(&first2) && !has(&later2) && !has(&orphan),
        "not Sluice's"
    );
    assert_eq!(counter(&r, "new_flows"), 2, "{:?}", r.counters);
    assert_eq!(counter(&r, "frag_first"), 1, "{:?}", r.counters);
    assert_eq!(counter(&r, "frag_followed"), 1, "{:?}", r.counters);
    assert_eq!(counter(&r, "drop_fragment"), 0, "{:?}", r.counters);
    assert_eq!(counter(&r, "parse_fragment"), 0, "{:?}", r.counters);
    assert_eq!(
        counter(&r, "xdp_fragments_redirected_front"),
        2,
        "{:?}",
        r.counters
    );
    assert_eq!(
        counter(&r, "xdp_fragments_passed_front"),
        3,
        "{:?}",
        r.counters
    );
}

/// The destination MAC check (steer.c's header comment): a UDP datagram
/// to the VIP in a unicast frame for another MAC than the LB's `front`
/// (as a switch floods another host's frames when it forgot that host)
/// is left to the kernel, which drops it, and counted as
/// `xdp_other_host_front`; so are one to the broadcast MAC (counted as
/// passed only). The same datagram to the LB's own MAC is forwarded. Without
/// the check the foreign frames reach b1 too: this LB would forward
/// frames meant for another host.
#[test]
fn frames_for_another_mac_are_left_to_the_kernel() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1));
    let sluice = Sluice::start(&topo, &config_v4(&[1]), &["--workers", "1"]);
    let (lb_mac, client_mac) = (
        craft::mac(&topo, Role::Lb, "front"),
        craft::mac(&topo, Role::Client, "eth0"),
    );
    let other_mac = [0x02, 0x5a, 0, 0, 0, 0x99];
    let (mine, other, bcast) = (craft::marker(), craft::marker(), craft::marker());
    let ip = Ip4::new(CLIENT, VIP4);
    let frame = |dst: [u8; 6], sport: u16, data: &[u8]| {
        craft::ether(dst, client_mac, &[], craft::IPV4, &ip.udp(sport, 53, data))
    };
    let cap = Capture::start(&topo, Role::Backend(1), "eth0", &[], 3000);
    craft::send_frames(
        &topo,
        Role::Client,
        "eth0",
        &[
            frame(other_mac, 40011, &other),
            frame(other_mac, 40012, &other),
            frame([0xff; 6], 40013, &bcast),
            frame(lb_mac, 40014, &mine),
        ],
    );
    let frames = cap.frames();
    let r = sluice.stop();
    let has = |m: &[u8]| {
        frames
            .iter()
            .filter(|f| f.windows(m.len()).any(|w| w == m))
            .count()
    };
    assert_eq!(has(&mine), 1, "to the LB's MAC: forwarded once to b1");
    assert_eq!(has(&other), 0, "to another MAC: never forwarded");
    assert_eq!(has(&bcast), 0, "to the broadcast MAC: never forwarded");
    assert_eq!(counter(&r, "xdp_other_host_front"), 2, "{:?}", r.counters);
    assert_eq!(counter(&r, "new_flows"), 1, "{:?}", r.counters);
}
