//! Fixture tests of the packet core for IPIP services
//! ([`ForwardMethod::Tunnel`]): the client's packet leaves inside an outer
//! header to the real server, from the route's source, the inner packet
//! byte for byte as received but for its TTL, one less; too big once encapsulated → `TooBig` with
//! the MTU minus the overhead.

use etherparse::PacketBuilder;

use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::Timeouts;
use crate::service::{BackendSpec, SchedKind, ServiceSpec};

use super::tests::{backend_mac, BACK_MAC, CLIENT_MAC, FRONT_MAC};
use crate::udp_fixture::one_hop_on;

fn v6(last: u8) -> Addr {
    Addr::from_v6([
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ])
}

/// An IPIP TCP service on `vip`:80 with one backend on port 80, reached on
/// port 1 (MTU `mtu`) from `route_src`.
fn snapshot(vip: Addr, backend: Addr, route_src: Addr, mtu: u16) -> Snapshot {
    let spec = ServiceSpec {
        name: "default/web-ipip:80".into(),
        vip: VipKey {
            addr: vip,
            port: 80,
            proto: proto::TCP,
        },
        backends: vec![BackendSpec {
            addr: backend,
            port: 80,
            weight: 1,
            ..Default::default()
        }],
        sched: SchedKind::RoundRobin,
        masq: MasqMode::Always,
        forward: ForwardMethod::Tunnel,
        ..Default::default()
    };
    let nexthops = [(
        backend,
        NextHop {
            hop: L2Hop {
                port: 1,
                mac: backend_mac(0),
            },
            snat: route_src,
        },
    )]
    .into_iter()
    .collect();
    Snapshot {
        services: ServiceTable::build(1, vec![spec]).unwrap(),
        ports: vec![
            PortInfo {
                mac: FRONT_MAC,
                mtu: 1500,
            },
            PortInfo { mac: BACK_MAC, mtu },
        ],
        nexthops,
        masq: MasqPolicy {
            all: true,
            ..MasqPolicy::default()
        },
        removed: Default::default(),
        moved: Default::default(),
    }
}

fn tcp(src: Addr, dst: Addr, syn: bool, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC);
    let mut out = Vec::new();
    let body = vec![0x5a; payload];
    if src.is_v4() {
        let t = b
            .ipv4(src.v4_octets(), dst.v4_octets(), 64)
            .tcp(40000, 80, 7, 65535);
        let t = if syn { t.syn() } else { t.ack(1) };
        t.write(&mut out, &body).unwrap();
    } else {
        let t = b.ipv6(src.0, dst.0, 64).tcp(40000, 80, 7, 65535);
        let t = if syn { t.syn() } else { t.ack(1) };
        t.write(&mut out, &body).unwrap();
    }
    out
}

fn run(snap: &Snapshot, flows: &FlowTable, frame: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = [0u8; 2048];
    buf[..frame.len()].copy_from_slice(frame);
    let aff = AffinityTable::new(16);
    let ctx = Ctx {
        snap,
        flows,
        affinity: &aff,
        now: 1,
        share: Share::WHOLE,
    };
    let v = process(&ctx, &mut buf, frame.len(), 0, &mut Stats::default());
    let n = match v {
        Verdict::TxLen(_, n) | Verdict::Reply(n) => n,
        _ => frame.len(),
    };
    (v, buf[..n].to_vec())
}

#[test]
fn ipv4_client_packets_leave_in_ipv4_to_the_real_server() {
    let (vip, rs, src) = (
        Addr::from_v4([198, 18, 100, 10]),
        Addr::from_v4([198, 18, 1, 11]),
        Addr::from_v4([198, 18, 1, 1]),
    );
    let snap = snapshot(vip, rs, src, 1500);
    let flows = FlowTable::new(64, Timeouts::default());
    let client = Addr::from_v4([198, 18, 0, 2]);
    for syn in [true, false] {
        let input = tcp(client, vip, syn, 5);
        let (v, out) = run(&snap, &flows, &input);
        assert_eq!(v, Verdict::TxLen(1, input.len() + 20), "syn={syn}");
        assert_eq!(&out[..6], &backend_mac(0));
        assert_eq!(&out[6..12], &BACK_MAC);
        let outer = etherparse::Ipv4HeaderSlice::from_slice(&out[14..]).unwrap();
        assert_eq!(outer.protocol().0, 4);
        assert_eq!(outer.source(), src.v4_octets());
        assert_eq!(outer.destination(), rs.v4_octets());
        assert_eq!(usize::from(outer.total_len()), input.len() - 14 + 20);
        assert!(outer.dont_fragment(), "DF copied from the inner header");
        assert_eq!(outer.ttl(), 64);
        assert_eq!(
            outer.header_checksum(),
            outer.to_header().calc_header_checksum()
        );
        // The inner packet as a router sends it on: TTL one less.
        assert_eq!(
            &out[34..],
            &one_hop_on(&input, 14)[14..],
            "inner packet changed"
        );
    }
    // One flow, recorded like DR's: reply key the backend's direct answer.
    let hit = flows
        .lookup(
            &FlowKey {
                src: client,
                dst: vip,
                sport: 40000,
                dport: 80,
                proto: proto::TCP,
            },
            1,
        )
        .unwrap();
    assert!(is_dr_flow(&hit.entry));
    assert_eq!(flows.len(), 1);
}

#[test]
fn ipv6_client_packets_leave_in_ipv6_to_the_real_server() {
    let (vip, rs, src) = (v6(0x64), v6(0x11), v6(0x01));
    let snap = snapshot(vip, rs, src, 1500);
    let flows = FlowTable::new(64, Timeouts::default());
    let input = tcp(v6(0x02), vip, true, 5);
    let (v, out) = run(&snap, &flows, &input);
    assert_eq!(v, Verdict::TxLen(1, input.len() + 40));
    let outer = etherparse::Ipv6HeaderSlice::from_slice(&out[14..]).unwrap();
    assert_eq!(outer.next_header().0, 41);
    assert_eq!(Addr::from_v6(outer.source()), src);
    assert_eq!(Addr::from_v6(outer.destination()), rs);
    assert_eq!(usize::from(outer.payload_length()), input.len() - 14);
    assert_eq!(outer.hop_limit(), 64);
    assert_eq!(&out[54..], &one_hop_on(&input, 14)[14..]);
}

#[test]
fn too_big_once_encapsulated_answers_with_the_mtu_left() {
    let (vip, rs, src) = (
        Addr::from_v4([198, 18, 100, 10]),
        Addr::from_v4([198, 18, 1, 11]),
        Addr::from_v4([198, 18, 1, 1]),
    );
    let snap = snapshot(vip, rs, src, 1500);
    let flows = FlowTable::new(64, Timeouts::default());
    let client = Addr::from_v4([198, 18, 0, 2]);
    // 1480 bytes of IP fit once encapsulated; 1481 do not.
    let fits = tcp(client, vip, true, 1480 - 40);
    assert_eq!(fits.len() - 14, 1480);
    assert_eq!(run(&snap, &flows, &fits).0, Verdict::TxLen(1, 1514));
    let big = tcp(client, vip, false, 1481 - 40);
    assert_eq!(run(&snap, &flows, &big).0, Verdict::TooBig(1480));
    // IPv6: 40 bytes of overhead.
    let snap6 = snapshot(v6(0x64), v6(0x11), v6(0x01), 1500);
    let big6 = tcp(v6(0x02), v6(0x64), true, 1461 - 60);
    assert_eq!(run(&snap6, &flows, &big6).0, Verdict::TooBig(1460));
}

/// An established IPIP flow follows its real server's next hop when the
/// kernel's neighbour table moves it ([`Snapshot::moved`]): the tunnel
/// leaves to the new MAC instead of being dropped as a lost hop.
#[test]
fn an_established_tunnel_follows_a_moved_next_hop() {
    let (vip, rs, src) = (
        Addr::from_v4([198, 18, 100, 10]),
        Addr::from_v4([198, 18, 1, 11]),
        Addr::from_v4([198, 18, 1, 1]),
    );
    let client = Addr::from_v4([198, 18, 0, 2]);
    let mut snap = snapshot(vip, rs, src, 1500);
    let flows = FlowTable::new(64, Timeouts::default());
    let (v, _) = run(&snap, &flows, &tcp(client, vip, true, 0));
    assert!(matches!(v, Verdict::TxLen(1, _)), "{v:?}");
    // The backend came back with another MAC; the flow still records the old.
    let old = L2Hop {
        port: 1,
        mac: backend_mac(0),
    };
    let new = L2Hop {
        port: 1,
        mac: backend_mac(7),
    };
    snap.nexthops.get_mut(&rs).unwrap().hop = new;
    snap.moved.insert(old, new);
    let input = tcp(client, vip, false, 5);
    let (v, out) = run(&snap, &flows, &input);
    assert_eq!(v, Verdict::TxLen(1, input.len() + 20));
    assert_eq!(&out[..6], &backend_mac(7), "sent to the new MAC");
}
