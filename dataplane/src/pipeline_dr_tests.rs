//! Fixture tests of the packet core for direct-routing services
//! ([`ForwardMethod::Dr`]), Katran-style: a frame in, the verdict and the
//! frame out, compared byte for byte with the input (only the two MACs may
//! differ).

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use proptest::prelude::*;

use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::{FlowState, Timeouts};
use crate::service::{BackendSpec, SchedKind, ServiceSpec};

use super::tests::{
    backend_ip, backend_mac, fixture_snapshot, BACK_MAC, CLIENT_MAC, FRONT_MAC, VIP,
};
use crate::udp_fixture::one_hop_on;

const CLIENT: [u8; 4] = [198, 18, 0, 2];

/// A DR TCP service on VIP:80 and a DR UDP service on VIP:53, `n`
/// backends each on the same ports (DR cannot remap), reached on port 1;
/// clients on port 0. `masq` is the LB-wide policy, which DR must ignore.
fn dr_snapshot(masq: MasqPolicy, n: u8) -> Snapshot {
    let svc = |port, proto| ServiceSpec {
        name: format!("default/web-dr:{port}"),
        vip: VipKey {
            addr: Addr::from_v4(VIP),
            port,
            proto,
        },
        backends: (0..n)
            .map(|i| BackendSpec {
                addr: Addr::from_v4(backend_ip(i)),
                port,
                weight: 1,
                ..Default::default()
            })
            .collect(),
        sched: SchedKind::RoundRobin,
        // What an external front end with externalTrafficPolicy: Cluster
        // would ask for; DR overrides it.
        masq: MasqMode::Always,
        forward: ForwardMethod::Dr,
        ..Default::default()
    };
    let services = ServiceTable::build(1, vec![svc(80, proto::TCP), svc(53, proto::UDP)]).unwrap();
    fixture_snapshot(services, n, masq)
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC).ipv4(src, dst, 64);
    let mut b = b.tcp(sport, dport, 1000, 65535);
    if flags & tcp_flags::SYN != 0 {
        b = b.syn();
    }
    if flags & tcp_flags::ACK != 0 {
        b = b.ack(1);
    }
    if flags & tcp_flags::FIN != 0 {
        b = b.fin();
    }
    let mut out = Vec::new();
    b.write(&mut out, b"hello").unwrap();
    out
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, b"query")
        .unwrap();
    out
}

/// The frame `input` with its MACs replaced and its TTL one less (the
/// router's hop every method takes): what DR must emit.
fn with_macs(input: &[u8], src: Mac, dst: Mac) -> Vec<u8> {
    let mut want = crate::udp_fixture::one_hop_on(input, 14);
    want[..6].copy_from_slice(&dst);
    want[6..12].copy_from_slice(&src);
    want
}

struct Env {
    snap: Snapshot,
    flows: FlowTable,
    aff: AffinityTable,
    stats: Stats,
}

impl Env {
    fn new(snap: Snapshot) -> Env {
        Env {
            snap,
            flows: FlowTable::new(1024, Timeouts::default()),
            aff: AffinityTable::new(64),
            stats: Stats::default(),
        }
    }

    /// Runs `frame` through the core; `frame` becomes what leaves.
    fn run(&mut self, frame: &mut Vec<u8>, ingress: u8, now: u32) -> Verdict {
        let mut buf = [0u8; 2048];
        buf[..frame.len()].copy_from_slice(frame);
        let ctx = Ctx {
            snap: &self.snap,
            flows: &self.flows,
            affinity: &self.aff,
            now,
            share: crate::snat::Share::WHOLE,
        };
        let v = process(&ctx, &mut buf, frame.len(), ingress, &mut self.stats);
        self.stats.count(v);
        let n = match v {
            Verdict::Reply(n) | Verdict::TxLen(_, n) => n,
            _ => frame.len(),
        };
        frame.clear();
        frame.extend_from_slice(&buf[..n]);
        v
    }

    fn hit(&self, k: &FlowKey, now: u32) -> Hit {
        self.flows.lookup(k, now).expect("flow")
    }
}

fn key(sport: u16, dport: u16, p: u8) -> FlowKey {
    FlowKey {
        src: Addr::from_v4(CLIENT),
        dst: Addr::from_v4(VIP),
        sport,
        dport,
        proto: p,
    }
}

#[test]
fn syn_to_dr_vip_leaves_with_only_the_macs_and_ttl_changed() {
    // Every client is masqueraded under this policy, for NAT; DR ignores it.
    let mut env = Env::new(dr_snapshot(
        MasqPolicy {
            all: true,
            ..MasqPolicy::default()
        },
        3,
    ));
    let syn = tcp(CLIENT, VIP, 40000, 80, tcp_flags::SYN);
    let mut f = syn.clone();
    assert_eq!(env.run(&mut f, 0, 1), Verdict::Tx(1));
    assert_eq!(f, with_macs(&syn, BACK_MAC, backend_mac(0)));
    assert_eq!((env.stats.new_flows, env.stats.snat_flows), (1, 0));

    // One record, its reply key the backend's direct answer VIP → client.
    let hit = env.hit(&key(40000, 80, proto::TCP), 1);
    assert!(is_dr_flow(&hit.entry));
    assert_eq!(hit.entry.reply, key(40000, 80, proto::TCP).reversed());
    assert_eq!(
        hit.entry.orig_hop,
        L2Hop {
            port: 1,
            mac: backend_mac(0)
        }
    );
    assert_eq!(hit.state, FlowState::SynSent);
    assert_eq!(env.flows.len(), 1);
}

#[test]
fn later_packets_of_a_dr_flow_follow_it_and_the_client_alone_establishes_it() {
    let mut env = Env::new(dr_snapshot(MasqPolicy::default(), 3));
    let mut f = tcp(CLIENT, VIP, 40000, 80, tcp_flags::SYN);
    assert_eq!(env.run(&mut f, 0, 1), Verdict::Tx(1));
    // Two other connections move the round-robin cursor on.
    for p in [40001, 40002] {
        let mut g = tcp(CLIENT, VIP, p, 80, tcp_flags::SYN);
        assert_eq!(env.run(&mut g, 0, 1), Verdict::Tx(1));
        assert_ne!(&g[..6], &backend_mac(0));
    }
    // The client's ACK and data: same backend, bytes untouched. No SYN-ACK
    // ever passes (the backend answered the client directly).
    let ack = tcp(CLIENT, VIP, 40000, 80, tcp_flags::ACK);
    let mut a = ack.clone();
    assert_eq!(env.run(&mut a, 0, 2), Verdict::Tx(1));
    assert_eq!(a, with_macs(&ack, BACK_MAC, backend_mac(0)));
    assert_eq!(
        env.hit(&key(40000, 80, proto::TCP), 2).state,
        FlowState::Established
    );
    let fin = tcp(CLIENT, VIP, 40000, 80, tcp_flags::FIN | tcp_flags::ACK);
    let mut g = fin.clone();
    assert_eq!(env.run(&mut g, 0, 3), Verdict::Tx(1));
    assert_eq!(g, with_macs(&fin, BACK_MAC, backend_mac(0)));
    assert_eq!(env.stats.new_flows, 3);
    assert_eq!(env.flows.len(), 3);
}

#[test]
fn dr_round_robins_over_backends_and_keeps_udp_flows() {
    let mut env = Env::new(dr_snapshot(MasqPolicy::default(), 3));
    let mut seen = Vec::new();
    for p in 0..6u16 {
        let q = udp(CLIENT, VIP, 5000 + p, 53);
        let mut f = q.clone();
        assert_eq!(env.run(&mut f, 0, 1), Verdict::Tx(1));
        assert_eq!(&f[12..], &one_hop_on(&q, 14)[12..]);
        seen.push(f[5]);
    }
    assert_eq!(seen, [0x10, 0x11, 0x12, 0x10, 0x11, 0x12]);
    // A second datagram of the first flow: same backend.
    let mut f = udp(CLIENT, VIP, 5000, 53);
    assert_eq!(env.run(&mut f, 0, 2), Verdict::Tx(1));
    assert_eq!(&f[..6], &backend_mac(0));
}

#[test]
fn a_dr_reply_that_reaches_the_lb_goes_to_the_client_unchanged() {
    let mut env = Env::new(dr_snapshot(MasqPolicy::default(), 1));
    let mut f = tcp(CLIENT, VIP, 40000, 80, tcp_flags::SYN);
    assert_eq!(env.run(&mut f, 0, 1), Verdict::Tx(1));
    // The steering program does not send these to us; if one comes anyway
    // it is the backend's own answer, from the VIP, and is passed on.
    let mut synack = Vec::new();
    PacketBuilder::ethernet2(backend_mac(0), BACK_MAC)
        .ipv4(VIP, CLIENT, 64)
        .tcp(80, 40000, 5, 65535)
        .syn()
        .ack(1001)
        .write(&mut synack, b"")
        .unwrap();
    let mut r = synack.clone();
    assert_eq!(env.run(&mut r, 1, 1), Verdict::Tx(0));
    assert_eq!(r, with_macs(&synack, FRONT_MAC, CLIENT_MAC));
}

#[test]
fn a_removed_dr_backend_resets_tcp_and_reschedules_udp() {
    let mut env = Env::new(dr_snapshot(MasqPolicy::default(), 2));
    let mut f = tcp(CLIENT, VIP, 40000, 80, tcp_flags::SYN);
    assert_eq!(env.run(&mut f, 0, 1), Verdict::Tx(1));
    assert_eq!(&f[..6], &backend_mac(0));
    // UDP (its own round-robin cursor): 5000 on backend 0, 5001 on 1.
    let mut q0 = udp(CLIENT, VIP, 5000, 53);
    assert_eq!(env.run(&mut q0, 0, 1), Verdict::Tx(1));
    assert_eq!(&q0[..6], &backend_mac(0));
    let mut q = udp(CLIENT, VIP, 5001, 53);
    assert_eq!(env.run(&mut q, 0, 1), Verdict::Tx(1));
    assert_eq!(&q[..6], &backend_mac(1));

    // A reload removes backend 0 (as control does: gone from the services,
    // listed as removed, its next hop carried over).
    let mut after = dr_snapshot(MasqPolicy::default(), 2);
    let specs: Vec<ServiceSpec> = after
        .services
        .services()
        .map(|s| {
            let mut spec = s.spec.clone();
            spec.backends
                .retain(|b| b.addr != Addr::from_v4(backend_ip(0)));
            spec
        })
        .collect();
    after.services = ServiceTable::build(2, specs).unwrap();
    let b0 = Addr::from_v4(backend_ip(0));
    after
        .removed
        .extend([(b0, 80, proto::TCP), (b0, 53, proto::UDP)]);
    env.snap = after;

    // TCP: the client's next segment is answered with a RST from the VIP,
    // as for NAT, and the flow is gone.
    let mut a = tcp(CLIENT, VIP, 40000, 80, tcp_flags::ACK);
    let v = env.run(&mut a, 0, 2);
    assert!(matches!(v, Verdict::Reply(_)), "{v:?}");
    let p = SlicedPacket::from_ethernet(&a).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!()
    };
    assert_eq!(
        (ip.header().source(), ip.header().destination()),
        (VIP, CLIENT)
    );
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!()
    };
    assert!(t.rst());
    assert_eq!((t.source_port(), t.destination_port()), (80, 40000));
    assert!(env.flows.lookup(&key(40000, 80, proto::TCP), 2).is_none());
    assert_eq!(env.stats.resets, 1);

    // UDP on the removed backend: scheduled anew, on the one left.
    let mut q0 = udp(CLIENT, VIP, 5000, 53);
    assert_eq!(env.run(&mut q0, 0, 2), Verdict::Tx(1));
    assert_eq!(&q0[..6], &backend_mac(1));
    // UDP on the live backend: untouched, same flow.
    let mut q = udp(CLIENT, VIP, 5001, 53);
    assert_eq!(env.run(&mut q, 0, 2), Verdict::Tx(1));
    assert_eq!(&q[..6], &backend_mac(1));
    assert_eq!(env.stats.new_flows, 4);
}

#[test]
fn a_dr_service_without_endpoints_rejects() {
    let mut env = Env::new(dr_snapshot(MasqPolicy::default(), 0));
    let mut f = tcp(CLIENT, VIP, 4000, 80, tcp_flags::SYN);
    let v = env.run(&mut f, 0, 1);
    assert!(matches!(v, Verdict::Reply(_)), "{v:?}");
    let p = SlicedPacket::from_ethernet(&f).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!()
    };
    assert!(t.rst() && t.ack());
    let etherparse::LinkSlice::Ethernet2(eth) = p.link.as_ref().unwrap() else {
        panic!()
    };
    assert_eq!(eth.destination(), CLIENT_MAC);
    let mut q = udp(CLIENT, VIP, 5000, 53);
    let v = env.run(&mut q, 0, 1);
    assert!(matches!(v, Verdict::Reply(_)), "{v:?}");
    let p = SlicedPacket::from_ethernet(&q).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!()
    };
    assert_eq!(ip.header().protocol(), etherparse::IpNumber::ICMP);
    assert_eq!(env.stats.rejected, 2);
    assert_eq!(env.flows.len(), 0);
}

#[test]
fn source_ranges_and_affinity_apply_to_dr() {
    let mut snap = dr_snapshot(MasqPolicy::default(), 3);
    let specs: Vec<ServiceSpec> = snap
        .services
        .services()
        .map(|s| ServiceSpec {
            source_ranges: vec!["198.18.0.0/25".parse().unwrap()],
            affinity_timeout: Some(100),
            ..s.spec.clone()
        })
        .collect();
    snap.services = ServiceTable::build(2, specs).unwrap();
    let mut env = Env::new(snap);
    let mut f = tcp([198, 18, 0, 200], VIP, 1000, 80, tcp_flags::SYN);
    assert_eq!(
        env.run(&mut f, 0, 1),
        Verdict::Drop(DropReason::SourceRange)
    );
    for p in 0..4u16 {
        let mut f = tcp(CLIENT, VIP, 2000 + p, 80, tcp_flags::SYN);
        assert_eq!(env.run(&mut f, 0, 1), Verdict::Tx(1));
        assert_eq!(&f[..6], &backend_mac(0), "sticks to one backend");
    }
    assert_eq!(env.stats.affinity_hits, 3);
}

#[test]
fn a_client_on_the_backends_segment_is_not_masqueraded() {
    // For NAT this client (ingress == egress) is masqueraded, or the
    // backend would answer it directly; in DR that direct answer is the
    // point.
    let mut env = Env::new(dr_snapshot(MasqPolicy::default(), 1));
    let neighbour = [198, 18, 1, 99];
    let syn = tcp(neighbour, VIP, 1000, 80, tcp_flags::SYN);
    let mut f = syn.clone();
    assert_eq!(env.run(&mut f, 1, 1), Verdict::Tx(1));
    assert_eq!(f, with_macs(&syn, BACK_MAC, backend_mac(0)));
    assert_eq!(env.stats.snat_flows, 0);
}

#[test]
fn icmp_errors_about_a_dr_flow_pass_unchanged() {
    let mut env = Env::new(dr_snapshot(MasqPolicy::default(), 1));
    let mut q = udp(CLIENT, VIP, 5000, 53);
    assert_eq!(env.run(&mut q, 0, 1), Verdict::Tx(1));
    // A router on the client's side could not deliver the backend's
    // answer (VIP → client): its error, to the VIP, goes to the backend
    // that owns the VIP, untouched but for the MACs.
    let mut answer = Vec::new();
    PacketBuilder::ethernet2(backend_mac(0), BACK_MAC)
        .ipv4(VIP, CLIENT, 64)
        .udp(53, 5000)
        .write(&mut answer, b"answer")
        .unwrap();
    let mut err = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC)
        .ipv4([198, 18, 0, 254], VIP, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Host,
        ))
        .write(&mut err, &answer[14..])
        .unwrap();
    let mut e = err.clone();
    assert_eq!(env.run(&mut e, 0, 2), Verdict::Tx(1));
    assert_eq!(e, with_macs(&err, BACK_MAC, backend_mac(0)));
}

#[test]
fn nat_flows_are_not_dr_flows() {
    let mut snap = dr_snapshot(MasqPolicy::default(), 1);
    let specs: Vec<ServiceSpec> = snap
        .services
        .services()
        .map(|s| ServiceSpec {
            forward: ForwardMethod::Nat,
            ..s.spec.clone()
        })
        .collect();
    snap.services = ServiceTable::build(2, specs).unwrap();
    let mut env = Env::new(snap);
    let mut f = tcp(CLIENT, VIP, 40000, 80, tcp_flags::SYN);
    assert_eq!(env.run(&mut f, 0, 1), Verdict::Tx(1));
    let hit = env.hit(&key(40000, 80, proto::TCP), 1);
    assert!(!is_dr_flow(&hit.entry));
    // NAT rewrote the destination.
    let p = SlicedPacket::from_ethernet(&f).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!()
    };
    assert_eq!(ip.header().destination(), backend_ip(0));
}

proptest! {
    /// Any client, port and protocol: the frame that leaves is the one that
    /// came in but for the MACs and the TTL, and the same flow keeps its
    /// backend.
    #[test]
    fn dr_output_is_the_input_but_for_the_macs_and_ttl(
        c in any::<[u8; 2]>(), sport in 1u16.., udp_flow in any::<bool>(), masq_all in any::<bool>()
    ) {
        let mut env = Env::new(dr_snapshot(MasqPolicy { all: masq_all, ..MasqPolicy::default() }, 3));
        let client = [198, 19, c[0], c[1]];
        let input = if udp_flow { udp(client, VIP, sport, 53) } else { tcp(client, VIP, sport, 80, tcp_flags::SYN) };
        let mut f = input.clone();
        prop_assert_eq!(env.run(&mut f, 0, 1), Verdict::Tx(1));
        prop_assert_eq!(&f[6..12], &BACK_MAC[..]);
        prop_assert_eq!(&f[12..], &one_hop_on(&input, 14)[12..]);
        let first = f[5];
        let again = if udp_flow { udp(client, VIP, sport, 53) } else { tcp(client, VIP, sport, 80, tcp_flags::ACK) };
        let mut g = again.clone();
        prop_assert_eq!(env.run(&mut g, 0, 2), Verdict::Tx(1));
        prop_assert_eq!(g[5], first);
        prop_assert_eq!(&g[12..], &one_hop_on(&again, 14)[12..]);
    }
}
