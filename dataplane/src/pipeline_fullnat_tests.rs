//! Fixture tests of the packet core for FULLNAT services
//! ([`ForwardMethod::FullNat`]): a frame in, the verdict and the frame out,
//! with every checksum recomputed by etherparse; IPv4 and IPv6; the
//! worker's share of the ports; ICMP errors about a FULLNAT flow in both
//! directions.

use std::collections::HashSet;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::Timeouts;
use crate::service::{BackendSpec, SchedKind, ServiceSpec};

use super::tests::{backend_mac, BACK_MAC, CLIENT_MAC, FRONT_MAC};

fn v4(o: [u8; 4]) -> Addr {
    Addr::from_v4(o)
}

fn v6(last: u8) -> Addr {
    Addr::from_v6([
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ])
}

/// The fixture: client side on port 0, backends on port 1.
struct Net {
    client: Addr,
    vip: Addr,
    backend: Addr,
    local: [Addr; 2],
    route_src: Addr,
}

const NET4: Net = Net {
    client: Addr::from_v4([198, 18, 0, 2]),
    vip: Addr::from_v4([198, 18, 100, 10]),
    backend: Addr::from_v4([198, 18, 1, 11]),
    local: [
        Addr::from_v4([198, 18, 1, 5]),
        Addr::from_v4([198, 18, 1, 6]),
    ],
    route_src: Addr::from_v4([198, 18, 1, 1]),
};

fn net6() -> Net {
    Net {
        client: v6(0x02),
        vip: v6(0x64),
        backend: v6(0x11),
        local: [v6(0x05), v6(0x06)],
        route_src: v6(0x01),
    }
}

/// A FULLNAT TCP service on VIP:80 and UDP service on VIP:53 with the
/// local addresses of `net` (`with_local`) or none, one backend on port
/// 8080; the LB-wide policy masquerades nobody, which FULLNAT ignores.
fn snapshot(net: &Net, with_local: bool, masq: MasqPolicy) -> Snapshot {
    let svc = |port, proto| ServiceSpec {
        name: format!("default/web-fullnat:{port}"),
        vip: VipKey {
            addr: net.vip,
            port,
            proto,
        },
        backends: vec![BackendSpec {
            addr: net.backend,
            port: 8080,
            weight: 1,
            ..Default::default()
        }],
        sched: SchedKind::RoundRobin,
        masq: MasqMode::Never,
        forward: ForwardMethod::FullNat,
        local_addrs: if with_local {
            net.local.to_vec()
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let services = ServiceTable::build(1, vec![svc(80, proto::TCP), svc(53, proto::UDP)]).unwrap();
    let nexthops = [(
        net.backend,
        NextHop {
            hop: L2Hop {
                port: 1,
                mac: backend_mac(0),
            },
            snat: net.route_src,
        },
    )]
    .into_iter()
    .collect();
    Snapshot {
        services,
        ports: vec![
            PortInfo {
                mac: FRONT_MAC,
                mtu: 1500,
            },
            PortInfo {
                mac: BACK_MAC,
                mtu: 1500,
            },
        ],
        nexthops,
        masq,
        removed: Default::default(),
        moved: Default::default(),
    }
}

/// A TCP (SYN when `syn`, else ACK) or UDP frame from `src` to `dst`.
fn frame(macs: (Mac, Mac), src: Addr, dst: Addr, ports: (u16, u16), tcp: Option<bool>) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1);
    let mut out = Vec::new();
    macro_rules! l4 {
        ($ip:expr) => {
            match tcp {
                Some(syn) => {
                    let t = $ip.tcp(ports.0, ports.1, 1000, 65535);
                    let t = if syn { t.syn() } else { t.ack(1) };
                    t.write(&mut out, b"hello").unwrap()
                }
                None => $ip.udp(ports.0, ports.1).write(&mut out, b"query").unwrap(),
            }
        };
    }
    if src.is_v4() {
        l4!(b.ipv4(src.v4_octets(), dst.v4_octets(), 64));
    } else {
        l4!(b.ipv6(src.0, dst.0, 64));
    }
    out
}

/// The tuple of a frame that left, after checking every checksum against
/// etherparse's full recomputation; and its destination MAC.
fn inspect(f: &[u8]) -> (FlowKey, Mac) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
        panic!("not ethernet")
    };
    let (src, dst) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            assert_eq!(
                h.header_checksum(),
                h.to_header().calc_header_checksum(),
                "IPv4 header checksum"
            );
            (Addr::from_v4(h.source()), Addr::from_v4(h.destination()))
        }
        Some(NetSlice::Ipv6(ip)) => (
            Addr::from_v6(ip.header().source()),
            Addr::from_v6(ip.header().destination()),
        ),
        _ => panic!("not IP"),
    };
    let (sport, dport, pr) = match (&p.transport, &p.net) {
        (Some(TransportSlice::Tcp(t)), Some(NetSlice::Ipv4(ip))) => {
            let h = ip.header();
            let want = t.calc_checksum_ipv4(h.source(), h.destination()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            (t.source_port(), t.destination_port(), proto::TCP)
        }
        (Some(TransportSlice::Tcp(t)), Some(NetSlice::Ipv6(ip))) => {
            let h = ip.header();
            let want = t.calc_checksum_ipv6(h.source(), h.destination()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            (t.source_port(), t.destination_port(), proto::TCP)
        }
        (Some(TransportSlice::Udp(u)), Some(NetSlice::Ipv4(ip))) => {
            let h = ip.header();
            let want = u
                .to_header()
                .calc_checksum_ipv4_raw(h.source(), h.destination(), u.payload())
                .unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum");
            (u.source_port(), u.destination_port(), proto::UDP)
        }
        (Some(TransportSlice::Udp(u)), Some(NetSlice::Ipv6(ip))) => {
            let h = ip.header();
            let want = u
                .to_header()
                .calc_checksum_ipv6_raw(h.source(), h.destination(), u.payload())
                .unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum");
            (u.source_port(), u.destination_port(), proto::UDP)
        }
        _ => panic!("not TCP or UDP"),
    };
    let key = FlowKey {
        src,
        dst,
        sport,
        dport,
        proto: pr,
    };
    (key, eth.destination())
}

struct Env {
    snap: Snapshot,
    flows: FlowTable,
    aff: AffinityTable,
    stats: Stats,
    share: Share,
}

impl Env {
    fn new(snap: Snapshot) -> Env {
        Env {
            snap,
            flows: FlowTable::new(4096, Timeouts::default()),
            aff: AffinityTable::new(64),
            stats: Stats::default(),
            share: Share::WHOLE,
        }
    }

    /// Runs `frame` through the core; `frame` becomes what leaves.
    fn run(&mut self, frame: &mut Vec<u8>, ingress: u8) -> Verdict {
        let mut buf = [0u8; 2048];
        buf[..frame.len()].copy_from_slice(frame);
        let ctx = Ctx {
            snap: &self.snap,
            flows: &self.flows,
            affinity: &self.aff,
            now: 1,
            share: self.share,
        };
        let v = process(&ctx, &mut buf, frame.len(), ingress, &mut self.stats);
        let n = match v {
            Verdict::Reply(n) | Verdict::TxLen(_, n) => n,
            _ => frame.len(),
        };
        frame.clear();
        frame.extend_from_slice(&buf[..n]);
        v
    }
}

/// A request and its reply through a FULLNAT service: the request leaves
/// from a local address and a SNAT port to the backend, the reply goes
/// back from the VIP to the client; checksums valid both ways.
fn request_and_reply(net: &Net, tcp: Option<bool>) {
    let mut env = Env::new(snapshot(net, true, MasqPolicy::default()));
    let dport = if tcp.is_some() { 80 } else { 53 };
    let mut f = frame(
        (CLIENT_MAC, FRONT_MAC),
        net.client,
        net.vip,
        (40000, dport),
        tcp,
    );
    assert_eq!(env.run(&mut f, 0), Verdict::Tx(1));
    let (out, mac) = inspect(&f);
    assert_eq!(mac, backend_mac(0));
    assert!(net.local.contains(&out.src), "source {} not local", out.src);
    assert!(
        env.snap.masq.ports.contains(out.sport),
        "port {}",
        out.sport
    );
    assert_eq!((out.dst, out.dport), (net.backend, 8080));
    assert_eq!((env.stats.new_flows, env.stats.snat_flows), (1, 1));

    // The backend answers the local address.
    let mut r = frame(
        (backend_mac(0), BACK_MAC),
        net.backend,
        out.src,
        (8080, out.sport),
        tcp.map(|_| false),
    );
    assert_eq!(env.run(&mut r, 1), Verdict::Tx(0));
    let (back, mac) = inspect(&r);
    assert_eq!(mac, CLIENT_MAC);
    assert_eq!(
        back,
        FlowKey {
            src: net.vip,
            dst: net.client,
            sport: dport,
            dport: 40000,
            proto: out.proto,
        }
    );

    // The client's next packet follows the same translation.
    let mut f2 = frame(
        (CLIENT_MAC, FRONT_MAC),
        net.client,
        net.vip,
        (40000, dport),
        tcp.map(|_| false),
    );
    assert_eq!(env.run(&mut f2, 0), Verdict::Tx(1));
    assert_eq!(inspect(&f2).0, out);
    assert_eq!(env.stats.new_flows, 1);
}

#[test]
fn fullnat_v4_tcp_request_and_reply() {
    request_and_reply(&NET4, Some(true));
}

#[test]
fn fullnat_v4_udp_request_and_reply() {
    request_and_reply(&NET4, None);
}

#[test]
fn fullnat_v6_tcp_request_and_reply() {
    request_and_reply(&net6(), Some(true));
}

#[test]
fn fullnat_v6_udp_request_and_reply() {
    request_and_reply(&net6(), None);
}

/// Without local addresses of its own, a FULLNAT service translates to the
/// run-wide `--snat-address`es, and without those to the route's source.
#[test]
fn without_local_addresses_the_run_wide_then_the_route_source() {
    let run_wide = v4([198, 18, 1, 9]);
    for (addrs, want) in [(vec![run_wide], run_wide), (vec![], NET4.route_src)] {
        let masq = MasqPolicy {
            addrs: SnatAddrs::new(&addrs),
            ..MasqPolicy::default()
        };
        let mut env = Env::new(snapshot(&NET4, false, masq));
        let mut f = frame(
            (CLIENT_MAC, FRONT_MAC),
            NET4.client,
            NET4.vip,
            (40000, 80),
            Some(true),
        );
        assert_eq!(env.run(&mut f, 0), Verdict::Tx(1));
        assert_eq!(inspect(&f).0.src, want);
    }
}

/// Each worker hands out only ports of its own share, over both local
/// addresses, and two workers never the same (address, port).
#[test]
fn ports_come_from_the_workers_share() {
    let snap = snapshot(&NET4, true, MasqPolicy::default());
    let ports = snap.masq.ports.clone();
    let mut env = Env::new(snap);
    let mut used: [HashSet<(Addr, u16)>; 2] = [HashSet::new(), HashSet::new()];
    for i in 0..400u16 {
        let w = usize::from(i % 2);
        env.share = Share::new(w, 2);
        let mut f = frame(
            (CLIENT_MAC, FRONT_MAC),
            NET4.client,
            NET4.vip,
            (10000 + i, 80),
            Some(true),
        );
        assert_eq!(env.run(&mut f, 0), Verdict::Tx(1));
        let out = inspect(&f).0;
        assert!(
            Share::new(w, 2).owns(&ports, out.sport),
            "worker {w} handed out {}",
            out.sport
        );
        assert!(!Share::new(1 - w, 2).owns(&ports, out.sport));
        assert!(used[w].insert((out.src, out.sport)));
    }
    assert!(used[0].is_disjoint(&used[1]));
    for u in &used {
        // Both local addresses are used.
        for a in NET4.local {
            assert!(u.iter().any(|(s, _)| *s == a), "{a} unused");
        }
    }
}

/// The ICMP error `from` sends about `quoted` (an Ethernet frame it got).
fn icmp_error(macs: (Mac, Mac), from: Addr, to: Addr, quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(macs.0, macs.1);
    if from.is_v4() {
        b.ipv4(from.v4_octets(), to.v4_octets(), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut out, &quoted[14..])
            .unwrap();
    } else {
        b.ipv6(from.0, to.0, 64)
            .icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(
                etherparse::icmpv6::DestUnreachableCode::Port,
            ))
            .write(&mut out, &quoted[14..])
            .unwrap();
    }
    out
}

/// An ICMP error as it left: outer source and destination, and the quoted
/// packet's tuple (the first 8 bytes of its L4 header); the ICMP checksum
/// checked by etherparse.
fn inspect_icmp(f: &[u8]) -> (Addr, Addr, FlowKey) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let (outer, quote) = match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
            let h = ip.header();
            assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
            let mut whole = icmp.slice().to_vec();
            whole[2..4].copy_from_slice(&[0, 0]);
            assert_eq!(
                icmp.checksum(),
                crate::wire::checksum::icmpv4(&whole),
                "ICMP checksum"
            );
            (
                (Addr::from_v4(h.source()), Addr::from_v4(h.destination())),
                icmp.payload().to_vec(),
            )
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
            let h = ip.header();
            let want = icmp
                .header()
                .icmp_type
                .calc_checksum(h.source(), h.destination(), icmp.payload())
                .unwrap();
            assert_eq!(icmp.checksum(), want, "ICMPv6 checksum");
            (
                (Addr::from_v6(h.source()), Addr::from_v6(h.destination())),
                icmp.payload().to_vec(),
            )
        }
        _ => panic!("not an ICMP error"),
    };
    let (src, dst, pr, l4) = if outer.0.is_v4() {
        let inner = etherparse::Ipv4HeaderSlice::from_slice(&quote).unwrap();
        (
            Addr::from_v4(inner.source()),
            Addr::from_v4(inner.destination()),
            inner.protocol().0,
            inner.slice().len(),
        )
    } else {
        let inner = etherparse::Ipv6HeaderSlice::from_slice(&quote).unwrap();
        (
            Addr::from_v6(inner.source()),
            Addr::from_v6(inner.destination()),
            inner.next_header().0,
            40,
        )
    };
    let ports = &quote[l4..];
    let key = FlowKey {
        src,
        dst,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        proto: pr,
    };
    (outer.0, outer.1, key)
}

/// ICMP errors about a FULLNAT flow follow it both ways, translated: the
/// backend's error about the request reaches the client from the VIP,
/// quoting the request as the client sent it; an error from the client's
/// side about a reply reaches the backend from the local address, quoting
/// the reply as the backend sent it.
fn icmp_errors_follow(net: &Net) {
    let mut env = Env::new(snapshot(net, true, MasqPolicy::default()));
    let mut q = frame(
        (CLIENT_MAC, FRONT_MAC),
        net.client,
        net.vip,
        (5000, 53),
        None,
    );
    assert_eq!(env.run(&mut q, 0), Verdict::Tx(1));
    let sent = inspect(&q).0;

    let mut err = icmp_error((backend_mac(0), BACK_MAC), net.backend, sent.src, &q);
    assert_eq!(env.run(&mut err, 1), Verdict::Tx(0));
    let (from, to, quoted) = inspect_icmp(&err);
    assert_eq!((from, to), (net.vip, net.client));
    assert_eq!(
        quoted,
        FlowKey {
            src: net.client,
            dst: net.vip,
            sport: 5000,
            dport: 53,
            proto: proto::UDP
        }
    );

    // The reply, and an error about it from the client's host.
    let mut r = frame(
        (backend_mac(0), BACK_MAC),
        net.backend,
        sent.src,
        (8080, sent.sport),
        None,
    );
    assert_eq!(env.run(&mut r, 1), Verdict::Tx(0));
    let mut err = icmp_error((CLIENT_MAC, FRONT_MAC), net.client, net.vip, &r);
    assert_eq!(env.run(&mut err, 0), Verdict::Tx(1));
    let (from, to, quoted) = inspect_icmp(&err);
    assert_eq!((from, to), (sent.src, net.backend));
    assert_eq!(quoted, sent.reversed());
}

#[test]
fn icmp_errors_follow_a_fullnat_flow_v4() {
    icmp_errors_follow(&NET4);
}

#[test]
fn icmp_errors_follow_a_fullnat_flow_v6() {
    icmp_errors_follow(&net6());
}
