//! Fixture tests of the packet core, Katran-style: a packet in, the verdict
//! and the packet out, checked field by field and by full checksum
//! recomputation; plus the same through the worker loop over the in-memory
//! port.

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use proptest::prelude::*;

use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::{FlowState, Timeouts};
use crate::port::MemPort;
use crate::service::{BackendSpec, MasqMode, SchedKind, ServiceSpec, WhenEmpty};
use crate::worker::{Worker, WorkerOpts};

// The fixture network, shared with the DR fixtures (pipeline_dr_tests.rs).
pub(super) const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
pub(super) const FRONT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub(super) const BACK_MAC: Mac = [0x02, 0, 0, 0, 1, 0x01];
pub(super) const VIP: [u8; 4] = [198, 18, 100, 10];
const LB_BACK: [u8; 4] = [198, 18, 1, 1];

pub(super) fn backend_mac(i: u8) -> Mac {
    [0x02, 0, 0, 0, 1, 0x10 + i]
}

pub(super) fn backend_ip(i: u8) -> [u8; 4] {
    [198, 18, 1, 11 + i]
}

/// The fixture network's snapshot: `services`, backends `0..n` reached on
/// port 1 (the back link, whose address is their SNAT source), clients on
/// port 0. Shared by the pipeline fixtures of every forwarding mode.
pub(super) fn fixture_snapshot(services: ServiceTable, n: u8, masq: MasqPolicy) -> Snapshot {
    let nexthops = (0..n)
        .map(|i| {
            (
                Addr::from_v4(backend_ip(i)),
                NextHop {
                    hop: L2Hop {
                        port: 1,
                        mac: backend_mac(i),
                    },
                    snat: Addr::from_v4(LB_BACK),
                },
            )
        })
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

/// One TCP and one UDP service on the VIP, three backends behind each,
/// backends reached on port 1, clients on port 0.
fn snapshot(masq: MasqPolicy, nb_backends: u8) -> Snapshot {
    let backends: Vec<BackendSpec> = (0..nb_backends)
        .map(|i| BackendSpec {
            addr: Addr::from_v4(backend_ip(i)),
            port: 8080,
            weight: 1,
            ..Default::default()
        })
        .collect();
    let svc = |port, proto| ServiceSpec {
        name: format!("default/web:{port}"),
        vip: VipKey {
            addr: Addr::from_v4(VIP),
            port,
            proto,
        },
        backends: backends.clone(),
        sched: SchedKind::RoundRobin,
        ..Default::default()
    };
    let services = ServiceTable::build(1, vec![svc(80, proto::TCP), svc(53, proto::UDP)]).unwrap();
    fixture_snapshot(services, nb_backends, masq)
}

fn outside_masq() -> MasqPolicy {
    MasqPolicy {
        cluster_cidrs: vec!["198.18.1.0/24".parse().unwrap()],
        ..MasqPolicy::default()
    }
}

pub(super) fn tcp(
    src_mac: Mac,
    dst_mac: Mac,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64);
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
    if flags & tcp_flags::RST != 0 {
        b = b.rst();
    }
    let payload = b"hello";
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// A client's segment with `flags` to the TCP service (VIP:80) from
/// `src:sport`.
fn client_tcp(src: [u8; 4], sport: u16, flags: u8) -> Vec<u8> {
    tcp(CLIENT_MAC, FRONT_MAC, src, VIP, sport, 80, flags)
}

/// A client's SYN to the TCP service (VIP:80) from `src:sport`.
fn client_syn(src: [u8; 4], sport: u16) -> Vec<u8> {
    client_tcp(src, sport, tcp_flags::SYN)
}

fn udp(src_mac: Mac, dst_mac: Mac, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, b"query")
        .unwrap();
    out
}

/// Everything a test checks about a frame that left: MACs, tuple, and
/// whether both checksums verify against a full recomputation.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Out {
    pub(super) src_mac: Mac,
    pub(super) dst_mac: Mac,
    pub(super) src: [u8; 4],
    pub(super) dst: [u8; 4],
    pub(super) sport: u16,
    pub(super) dport: u16,
}

pub(super) fn inspect(frame: &[u8]) -> Out {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let eth = p.link.as_ref().unwrap();
    let etherparse::LinkSlice::Ethernet2(eth) = eth else {
        panic!("not ethernet")
    };
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not ipv4")
    };
    let h = ip.header();
    // Full recomputation of the IPv4 header checksum.
    assert_eq!(
        h.header_checksum(),
        h.to_header().calc_header_checksum(),
        "IPv4 header checksum"
    );
    let (sport, dport) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let expect = t
                .to_header()
                .calc_checksum_ipv4(&h.to_header(), t.payload())
                .unwrap();
            assert_eq!(t.checksum(), expect, "TCP checksum");
            (t.source_port(), t.destination_port())
        }
        Some(TransportSlice::Udp(u)) => {
            let expect = u
                .to_header()
                .calc_checksum_ipv4(&h.to_header(), u.payload())
                .unwrap();
            assert_eq!(u.checksum(), expect, "UDP checksum");
            (u.source_port(), u.destination_port())
        }
        other => panic!("unexpected transport {other:?}"),
    };
    Out {
        src_mac: eth.source(),
        dst_mac: eth.destination(),
        src: h.source(),
        dst: h.destination(),
        sport,
        dport,
    }
}

/// Runs `frame` through the core with a frame buffer of realistic capacity;
/// `frame` becomes what leaves (forwarded or answered).
pub(super) fn run_with(
    snap: &Snapshot,
    flows: &FlowTable,
    aff: &AffinityTable,
    frame: &mut Vec<u8>,
    ingress: u8,
    now: u32,
    stats: &mut Stats,
) -> Verdict {
    let mut buf = [0u8; 2048];
    buf[..frame.len()].copy_from_slice(frame);
    let ctx = Ctx {
        snap,
        flows,
        affinity: aff,
        now,
        share: crate::snat::Share::WHOLE,
    };
    let v = process(&ctx, &mut buf, frame.len(), ingress, stats);
    stats.count(v);
    let out_len = match v {
        Verdict::Reply(n) | Verdict::TxLen(_, n) => n,
        _ => frame.len(),
    };
    frame.clear();
    frame.extend_from_slice(&buf[..out_len]);
    v
}

fn run(snap: &Snapshot, flows: &FlowTable, frame: &mut Vec<u8>, ingress: u8, now: u32) -> Verdict {
    let aff = AffinityTable::new(64);
    run_with(
        snap,
        flows,
        &aff,
        frame,
        ingress,
        now,
        &mut Stats::default(),
    )
}

#[test]
fn syn_to_vip_is_dnat_to_a_backend_and_reply_is_translated_back() {
    let snap = snapshot(MasqPolicy::default(), 3);
    let flows = FlowTable::new(1024, Timeouts::default());
    let client = [198, 18, 0, 2];
    let mut f = client_syn(client, 40000);
    assert_eq!(run(&snap, &flows, &mut f, 0, 1), Verdict::Tx(1));
    let out = inspect(&f);
    assert_eq!(
        out,
        Out {
            src_mac: BACK_MAC,
            dst_mac: backend_mac(0),
            src: client,
            dst: backend_ip(0),
            sport: 40000,
            dport: 8080,
        }
    );

    // The backend's SYN-ACK arrives on the back port and leaves on the
    // front port towards the MAC the client's SYN came from.
    let mut r = tcp(
        backend_mac(0),
        BACK_MAC,
        backend_ip(0),
        client,
        8080,
        40000,
        tcp_flags::SYN | tcp_flags::ACK,
    );
    assert_eq!(run(&snap, &flows, &mut r, 1, 1), Verdict::Tx(0));
    assert_eq!(
        inspect(&r),
        Out {
            src_mac: FRONT_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP,
            dst: client,
            sport: 80,
            dport: 40000,
        }
    );

    // The client's ACK follows the flow (no new scheduling), and the flow
    // is established.
    let mut a = client_tcp(client, 40000, tcp_flags::ACK);
    assert_eq!(run(&snap, &flows, &mut a, 0, 2), Verdict::Tx(1));
    assert_eq!(inspect(&a).dst, backend_ip(0));
    let hit = flows
        .lookup(
            &FlowKey {
                src: Addr::from_v4(client),
                dst: Addr::from_v4(VIP),
                sport: 40000,
                dport: 80,
                proto: proto::TCP,
            },
            2,
        )
        .unwrap();
    assert_eq!(hit.state, FlowState::Established);
    assert_eq!(flows.len(), 1);
}

#[test]
fn outside_clients_are_masqueraded_and_replies_reach_them() {
    let snap = snapshot(outside_masq(), 3);
    let flows = FlowTable::new(1024, Timeouts::default());
    let client = [198, 18, 0, 2];
    let mut f = client_syn(client, 40000);
    let mut stats = Stats::default();
    assert_eq!(
        run_with(
            &snap,
            &flows,
            &AffinityTable::new(64),
            &mut f,
            0,
            1,
            &mut stats
        ),
        Verdict::Tx(1)
    );
    assert_eq!(stats.snat_flows, 1);
    let out = inspect(&f);
    assert_eq!(out.src, LB_BACK, "client masqueraded to the LB's address");
    assert!(
        (61000..=65535).contains(&out.sport),
        "SNAT port {}",
        out.sport
    );
    assert_eq!(out.dst, backend_ip(0));

    let mut r = tcp(
        backend_mac(0),
        BACK_MAC,
        backend_ip(0),
        LB_BACK,
        8080,
        out.sport,
        tcp_flags::SYN | tcp_flags::ACK,
    );
    assert_eq!(run(&snap, &flows, &mut r, 1, 1), Verdict::Tx(0));
    let back = inspect(&r);
    assert_eq!(
        (back.src, back.sport, back.dst, back.dport),
        (VIP, 80, client, 40000)
    );

    // A client inside the cluster CIDR keeps its address.
    let inside = [198, 18, 1, 200];
    let mut g = client_syn(inside, 40001);
    assert_eq!(run(&snap, &flows, &mut g, 0, 1), Verdict::Tx(1));
    assert_eq!(inspect(&g).src, inside);
}

#[test]
fn two_clients_with_the_same_port_get_distinct_snat_ports() {
    let snap = snapshot(
        MasqPolicy {
            all: true,
            ..MasqPolicy::default()
        },
        1,
    );
    let flows = FlowTable::new(1024, Timeouts::default());
    let mut ports = Vec::new();
    for c in 0..50u8 {
        let mut f = tcp(
            CLIENT_MAC,
            FRONT_MAC,
            [198, 18, 0, c],
            VIP,
            40000,
            80,
            tcp_flags::SYN,
        );
        assert_eq!(run(&snap, &flows, &mut f, 0, 1), Verdict::Tx(1));
        ports.push(inspect(&f).sport);
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        50,
        "every masqueraded flow has its own source port"
    );
}

#[test]
fn snat_range_exhaustion_is_a_counted_drop() {
    let mut masq = MasqPolicy {
        all: true,
        ..MasqPolicy::default()
    };
    masq.ports = crate::snat::PortRanges::new(&[(61000, 61001)]).unwrap();
    let snap = snapshot(masq, 1);
    let flows = FlowTable::new(1024, Timeouts::default());
    let mut verdicts = Vec::new();
    for c in 0..3u8 {
        let mut f = tcp(
            CLIENT_MAC,
            FRONT_MAC,
            [198, 18, 0, c],
            VIP,
            40000,
            80,
            tcp_flags::SYN,
        );
        verdicts.push(run(&snap, &flows, &mut f, 0, 1));
    }
    assert_eq!(
        verdicts,
        vec![
            Verdict::Tx(1),
            Verdict::Tx(1),
            Verdict::Drop(DropReason::SnatExhausted)
        ]
    );
}

#[test]
fn drops_carry_their_reason() {
    let snap = snapshot(MasqPolicy::default(), 3);
    let flows = FlowTable::new(1024, Timeouts::default());
    let client = [198, 18, 0, 2];
    // Not a service.
    let mut f = tcp(
        CLIENT_MAC,
        FRONT_MAC,
        client,
        [198, 18, 100, 11],
        1,
        80,
        tcp_flags::SYN,
    );
    assert_eq!(
        run(&snap, &flows, &mut f, 0, 1),
        Verdict::Drop(DropReason::NoService)
    );
    // A mid-stream segment of an unknown flow is not scheduled: it is
    // answered with a RST from the VIP, back out the port it came in on.
    let mut f = client_tcp(client, 1, tcp_flags::ACK);
    let v = run(&snap, &flows, &mut f, 0, 1);
    assert!(matches!(v, Verdict::Reply(_)), "{v:?}");
    assert_rst_from_vip(&f, client, 1);
    // ... but a stray RST is not answered.
    let mut f = client_tcp(client, 1, tcp_flags::RST);
    assert_eq!(
        run(&snap, &flows, &mut f, 0, 1),
        Verdict::Drop(DropReason::NoFlow)
    );
    // Garbage.
    let mut stats = Stats::default();
    let mut junk = vec![0u8; 20];
    assert_eq!(
        run_with(
            &snap,
            &flows,
            &AffinityTable::new(64),
            &mut junk,
            0,
            1,
            &mut stats
        ),
        Verdict::Drop(DropReason::Malformed)
    );
    assert_eq!(stats.parse_errors.iter().sum::<u64>(), 1);
    // ICMP other than errors about flows is not forwarded.
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC)
        .ipv4(client, VIP, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut icmp, b"ping")
        .unwrap();
    assert_eq!(
        run(&snap, &flows, &mut icmp, 0, 1),
        Verdict::Drop(DropReason::UnsupportedProto)
    );
    // No backends and a Local policy: dropped silently.
    let mut empty = snapshot(MasqPolicy::default(), 0);
    let specs: Vec<ServiceSpec> = empty
        .services
        .services()
        .map(|s| ServiceSpec {
            when_empty: WhenEmpty::Drop,
            ..s.spec.clone()
        })
        .collect();
    empty.services = ServiceTable::build(1, specs).unwrap();
    let mut f = client_syn(client, 2);
    assert_eq!(
        run(&empty, &flows, &mut f, 0, 1),
        Verdict::Drop(DropReason::NoBackend)
    );
    // A backend whose next hop is unknown.
    let mut nonh = snapshot(MasqPolicy::default(), 1);
    nonh.nexthops.clear();
    let mut f = client_syn(client, 3);
    assert_eq!(
        run(&nonh, &flows, &mut f, 0, 1),
        Verdict::Drop(DropReason::NoNextHop)
    );
    assert_eq!(flows.len(), 0, "no drop leaves a flow behind");
}

fn assert_rst_from_vip(frame: &[u8], client: [u8; 4], client_port: u16) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not ipv4")
    };
    assert_eq!(ip.header().source(), VIP);
    assert_eq!(ip.header().destination(), client);
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not tcp")
    };
    assert!(t.rst(), "RST flag");
    assert_eq!((t.source_port(), t.destination_port()), (80, client_port));
    let expect = t
        .to_header()
        .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
        .unwrap();
    assert_eq!(t.checksum(), expect);
    let etherparse::LinkSlice::Ethernet2(eth) = p.link.as_ref().unwrap() else {
        panic!()
    };
    assert_eq!(eth.destination(), CLIENT_MAC, "back to the sender's MAC");
}

#[test]
fn no_endpoints_is_rejected_at_once() {
    let snap = snapshot(MasqPolicy::default(), 0);
    let flows = FlowTable::new(64, Timeouts::default());
    let aff = AffinityTable::new(64);
    let client = [198, 18, 0, 2];
    let mut stats = Stats::default();
    // TCP: RST|ACK answering the SYN.
    let mut f = client_syn(client, 4000);
    let v = run_with(&snap, &flows, &aff, &mut f, 0, 1, &mut stats);
    assert!(matches!(v, Verdict::Reply(_)), "{v:?}");
    assert_rst_from_vip(&f, client, 4000);
    // UDP: ICMP port unreachable quoting the datagram, from the VIP.
    let mut q = udp(CLIENT_MAC, FRONT_MAC, client, VIP, 5000, 53);
    let v = run_with(&snap, &flows, &aff, &mut q, 0, 1, &mut stats);
    let Verdict::Reply(n) = v else {
        panic!("{v:?}")
    };
    assert_eq!(n, q.len());
    let p = SlicedPacket::from_ethernet(&q).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!()
    };
    assert_eq!(
        (ip.header().source(), ip.header().destination()),
        (VIP, client)
    );
    assert_eq!(ip.header().protocol(), etherparse::IpNumber::ICMP);
    assert_eq!(stats.rejected, 2);
    assert_eq!(stats.tx, 2);
    assert_eq!(flows.len(), 0);
}

fn with_specs(mut snap: Snapshot, f: impl Fn(&mut ServiceSpec)) -> Snapshot {
    let specs: Vec<ServiceSpec> = snap
        .services
        .services()
        .map(|s| {
            let mut spec = s.spec.clone();
            f(&mut spec);
            spec
        })
        .collect();
    snap.services = ServiceTable::build(snap.services.version() + 1, specs).unwrap();
    snap
}

#[test]
fn session_affinity_sticks_until_idle_timeout() {
    let snap = with_specs(snapshot(MasqPolicy::default(), 3), |s| {
        s.affinity_timeout = Some(10)
    });
    let flows = FlowTable::new(1024, Timeouts::default());
    let aff = AffinityTable::new(64);
    let client = [198, 18, 0, 2];
    let mut stats = Stats::default();
    let mut seen = Vec::new();
    for (i, now) in [1u32, 2, 5, 14].iter().enumerate() {
        let mut f = client_syn(client, 1000 + i as u16);
        assert_eq!(
            run_with(&snap, &flows, &aff, &mut f, 0, *now, &mut stats),
            Verdict::Tx(1)
        );
        seen.push(inspect(&f).dst);
    }
    assert!(
        seen.iter().all(|d| *d == seen[0]),
        "one backend while used: {seen:?}"
    );
    assert_eq!(stats.affinity_hits, 3);
    // Idle for longer than the timeout: scheduled anew (round-robin moves on).
    let mut f = client_syn(client, 2000);
    assert_eq!(
        run_with(&snap, &flows, &aff, &mut f, 0, 30, &mut stats),
        Verdict::Tx(1)
    );
    assert_ne!(inspect(&f).dst, seen[0]);
    // Another client is scheduled on its own.
    let mut g = tcp(
        CLIENT_MAC,
        FRONT_MAC,
        [198, 18, 0, 3],
        VIP,
        1000,
        80,
        tcp_flags::SYN,
    );
    assert_eq!(
        run_with(&snap, &flows, &aff, &mut g, 0, 30, &mut stats),
        Verdict::Tx(1)
    );
    assert_eq!(stats.affinity_hits, 3);
}

#[test]
fn affinity_ends_when_its_endpoint_leaves() {
    let snap = with_specs(snapshot(MasqPolicy::default(), 3), |s| {
        s.affinity_timeout = Some(100)
    });
    let flows = FlowTable::new(1024, Timeouts::default());
    let aff = AffinityTable::new(64);
    let client = [198, 18, 0, 2];
    let mut f = client_syn(client, 1000);
    run_with(&snap, &flows, &aff, &mut f, 0, 1, &mut Stats::default());
    let first = inspect(&f).dst;
    let gone = with_specs(snapshot(MasqPolicy::default(), 3), |s| {
        s.affinity_timeout = Some(100);
        s.backends.retain(|b| b.addr != Addr::from_v4(first));
    });
    let mut f = client_syn(client, 1001);
    assert_eq!(
        run_with(&gone, &flows, &aff, &mut f, 0, 2, &mut Stats::default()),
        Verdict::Tx(1)
    );
    assert_ne!(inspect(&f).dst, first);
}

#[test]
fn source_ranges_filter_new_flows() {
    let snap = with_specs(snapshot(MasqPolicy::default(), 3), |s| {
        s.source_ranges = vec!["198.18.0.128/25".parse().unwrap()]
    });
    let flows = FlowTable::new(64, Timeouts::default());
    let mut f = tcp(
        CLIENT_MAC,
        FRONT_MAC,
        [198, 18, 0, 2],
        VIP,
        1000,
        80,
        tcp_flags::SYN,
    );
    assert_eq!(
        run(&snap, &flows, &mut f, 0, 1),
        Verdict::Drop(DropReason::SourceRange)
    );
    let mut f = tcp(
        CLIENT_MAC,
        FRONT_MAC,
        [198, 18, 0, 130],
        VIP,
        1000,
        80,
        tcp_flags::SYN,
    );
    assert_eq!(run(&snap, &flows, &mut f, 0, 1), Verdict::Tx(1));
}

#[test]
fn masquerade_modes_hairpin_and_same_segment() {
    let client = [198, 18, 0, 2];
    let flows = FlowTable::new(64, Timeouts::default());
    // Local policy: the client address is kept even off-cluster.
    let never = with_specs(snapshot(outside_masq(), 1), |s| s.masq = MasqMode::Never);
    let mut f = client_syn(client, 1000);
    assert_eq!(run(&never, &flows, &mut f, 0, 1), Verdict::Tx(1));
    assert_eq!(inspect(&f).src, client);
    // Cluster policy on an external front end: always masqueraded.
    let always = with_specs(snapshot(MasqPolicy::default(), 1), |s| {
        s.masq = MasqMode::Always
    });
    let mut f = client_syn(client, 1001);
    assert_eq!(run(&always, &flows, &mut f, 0, 1), Verdict::Tx(1));
    assert_eq!(inspect(&f).src, LB_BACK);
    // Hairpin: the only backend connects to its own service, even with
    // masquerading off, and arriving on the backends' port.
    let plain = snapshot(MasqPolicy::default(), 1);
    let b = backend_ip(0);
    let mut f = tcp(backend_mac(0), BACK_MAC, b, VIP, 1002, 80, tcp_flags::SYN);
    assert_eq!(run(&plain, &flows, &mut f, 1, 1), Verdict::Tx(1));
    let out = inspect(&f);
    assert_eq!((out.src, out.dst), (LB_BACK, b));
    // Another host on the backends' segment is masqueraded too, or the
    // backend would answer it directly.
    let neighbour = [198, 18, 1, 99];
    let mut f = tcp(
        CLIENT_MAC,
        BACK_MAC,
        neighbour,
        VIP,
        1003,
        80,
        tcp_flags::SYN,
    );
    assert_eq!(run(&plain, &flows, &mut f, 1, 1), Verdict::Tx(1));
    assert_eq!(inspect(&f).src, LB_BACK);
}

#[test]
fn terminating_endpoints_take_no_new_flows_while_a_ready_one_exists() {
    let snap = with_specs(snapshot(MasqPolicy::default(), 3), |s| {
        s.backends[0].weight = 0;
        s.backends[0].terminating = true;
    });
    let flows = FlowTable::new(1024, Timeouts::default());
    for p in 0..12u16 {
        let mut f = tcp(
            CLIENT_MAC,
            FRONT_MAC,
            [198, 18, 0, 2],
            VIP,
            3000 + p,
            80,
            tcp_flags::SYN,
        );
        assert_eq!(run(&snap, &flows, &mut f, 0, 1), Verdict::Tx(1));
        assert_ne!(inspect(&f).dst, backend_ip(0));
    }
    // Only terminating ones left: they serve (ProxyTerminatingEndpoints).
    let only = with_specs(snapshot(MasqPolicy::default(), 1), |s| {
        s.backends[0].weight = 0;
        s.backends[0].terminating = true;
    });
    let mut f = tcp(
        CLIENT_MAC,
        FRONT_MAC,
        [198, 18, 0, 2],
        VIP,
        4000,
        80,
        tcp_flags::SYN,
    );
    assert_eq!(run(&only, &flows, &mut f, 0, 1), Verdict::Tx(1));
    assert_eq!(inspect(&f).dst, backend_ip(0));
}

#[test]
fn flows_of_a_removed_endpoint_are_reset_or_rescheduled() {
    let snap = snapshot(MasqPolicy::default(), 2);
    let flows = FlowTable::new(1024, Timeouts::default());
    let client = [198, 18, 0, 2];
    // A TCP flow and a UDP flow, both on backend 0.
    let mut f = client_syn(client, 40000);
    assert_eq!(run(&snap, &flows, &mut f, 0, 1), Verdict::Tx(1));
    assert_eq!(inspect(&f).dst, backend_ip(0));
    let mut q = udp(CLIENT_MAC, FRONT_MAC, client, VIP, 5000, 53);
    assert_eq!(run(&snap, &flows, &mut q, 0, 1), Verdict::Tx(1));
    let first_udp = inspect(&q).dst;

    // A reload removes that backend.
    let mut after = with_specs(snapshot(MasqPolicy::default(), 2), |s| {
        s.backends
            .retain(|b| b.addr != Addr::from_v4(backend_ip(0)))
    });
    after
        .removed
        .insert((Addr::from_v4(backend_ip(0)), 8080, proto::TCP));
    after
        .removed
        .insert((Addr::from_v4(first_udp), 8080, proto::UDP));

    // The removed backend still sends data: it reaches the client as a RST
    // carrying the data's sequence number, from the VIP.
    let mut data = tcp(
        backend_mac(0),
        BACK_MAC,
        backend_ip(0),
        client,
        8080,
        40000,
        tcp_flags::ACK,
    );
    let v = run(&after, &flows, &mut data, 1, 2);
    assert!(matches!(v, Verdict::TxLen(0, _)), "{v:?}");
    assert_eq!(data.len(), 54);
    let p = SlicedPacket::from_ethernet(&data).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!()
    };
    assert!(t.rst());
    assert_eq!(
        (t.source_port(), t.destination_port(), t.sequence_number()),
        (80, 40000, 1000)
    );
    assert_eq!(flows.len(), 1, "the TCP flow is gone, the UDP one not yet");

    // The UDP client's next datagram goes to a live backend.
    let mut q = udp(CLIENT_MAC, FRONT_MAC, client, VIP, 5000, 53);
    assert_eq!(run(&after, &flows, &mut q, 0, 2), Verdict::Tx(1));
    assert_ne!(inspect(&q).dst, first_udp);
}

/// The ICMP port unreachable a host sends about `quoted` (an Ethernet
/// frame it received).
fn port_unreachable(
    src_mac: Mac,
    dst_mac: Mac,
    from: [u8; 4],
    to: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(from, to, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut out, &quoted[14..])
        .unwrap();
    out
}

#[test]
fn icmp_errors_follow_their_flow() {
    for masq in [false, true] {
        let snap = snapshot(
            MasqPolicy {
                all: masq,
                ..MasqPolicy::default()
            },
            1,
        );
        let flows = FlowTable::new(64, Timeouts::default());
        let client = [198, 18, 0, 2];
        let mut q = udp(CLIENT_MAC, FRONT_MAC, client, VIP, 5000, 53);
        assert_eq!(run(&snap, &flows, &mut q, 0, 1), Verdict::Tx(1));
        let sent = inspect(&q);
        // The backend's host has nothing on the port: its error quotes the
        // datagram as it received it.
        let mut err = port_unreachable(backend_mac(0), BACK_MAC, backend_ip(0), sent.src, &q);
        assert_eq!(
            run(&snap, &flows, &mut err, 1, 2),
            Verdict::Tx(0),
            "masq={masq}"
        );
        let p = SlicedPacket::from_ethernet(&err).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!()
        };
        // From the VIP to the client...
        assert_eq!(
            (ip.header().source(), ip.header().destination()),
            (VIP, client)
        );
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
            panic!()
        };
        // ... quoting the datagram as the client sent it.
        let inner = etherparse::Ipv4HeaderSlice::from_slice(icmp.payload()).unwrap();
        assert_eq!((inner.source(), inner.destination()), (client, VIP));
        let ports = &icmp.payload()[inner.slice().len()..];
        assert_eq!(u16::from_be_bytes([ports[0], ports[1]]), 5000);
        assert_eq!(u16::from_be_bytes([ports[2], ports[3]]), 53);
        let mut whole = icmp.slice().to_vec();
        whole[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(
            u16::from_be_bytes([icmp.slice()[2], icmp.slice()[3]]),
            crate::wire::checksum::icmpv4(&whole),
            "ICMP checksum"
        );
        let etherparse::LinkSlice::Ethernet2(eth) = p.link.as_ref().unwrap() else {
            panic!()
        };
        assert_eq!(eth.destination(), CLIENT_MAC);
    }
    // An error about no known flow is dropped.
    let snap = snapshot(MasqPolicy::default(), 1);
    let flows = FlowTable::new(64, Timeouts::default());
    let q = udp(CLIENT_MAC, FRONT_MAC, [198, 18, 0, 9], backend_ip(0), 1, 2);
    let mut err = port_unreachable(backend_mac(0), BACK_MAC, backend_ip(0), [198, 18, 0, 9], &q);
    assert_eq!(
        run(&snap, &flows, &mut err, 1, 2),
        Verdict::Drop(DropReason::NoFlow)
    );
}

#[test]
fn a_full_table_of_established_flows_refuses_new_ones() {
    let snap = snapshot(MasqPolicy::default(), 1);
    let flows = FlowTable::new(4, Timeouts::default());
    let client = [198, 18, 0, 2];
    for p in 0..4u16 {
        let mut f = client_syn(client, 1000 + p);
        assert_eq!(run(&snap, &flows, &mut f, 0, 1), Verdict::Tx(1));
        let mut a = client_tcp(client, 1000 + p, tcp_flags::ACK);
        assert_eq!(run(&snap, &flows, &mut a, 0, 1), Verdict::Tx(1));
    }
    let mut f = client_syn(client, 2000);
    assert_eq!(
        run(&snap, &flows, &mut f, 0, 1),
        Verdict::Drop(DropReason::FlowTableFull)
    );
}

#[test]
fn udp_flow_and_reply() {
    let snap = snapshot(MasqPolicy::default(), 3);
    let flows = FlowTable::new(1024, Timeouts::default());
    let client = [198, 18, 0, 2];
    let mut q = udp(CLIENT_MAC, FRONT_MAC, client, VIP, 5000, 53);
    assert_eq!(run(&snap, &flows, &mut q, 0, 1), Verdict::Tx(1));
    let out = inspect(&q);
    assert_eq!((out.dst, out.dport), (backend_ip(0), 8080));
    let mut r = udp(backend_mac(0), BACK_MAC, backend_ip(0), client, 8080, 5000);
    assert_eq!(run(&snap, &flows, &mut r, 1, 1), Verdict::Tx(0));
    let back = inspect(&r);
    assert_eq!(
        (back.src, back.sport, back.dst, back.dport),
        (VIP, 53, client, 5000)
    );
    // UDP flows expire after the UDP timeout (300 s) of idleness.
    let key = FlowKey {
        src: Addr::from_v4(client),
        dst: Addr::from_v4(VIP),
        sport: 5000,
        dport: 53,
        proto: proto::UDP,
    };
    assert!(flows.lookup(&key, 301).is_some());
    assert!(flows.lookup(&key, 302).is_none());
}

#[test]
fn worker_over_mem_port_round_robins_thirty_flows_and_leaks_no_frame() {
    let snap = snapshot(MasqPolicy::default(), 3);
    let flows = FlowTable::new(1024, Timeouts::default());
    let mut w = Worker::new(MemPort::new(2, 128), WorkerOpts::default());
    let total = w.port().free_frames();
    for p in 0..30u16 {
        let f = tcp(
            CLIENT_MAC,
            FRONT_MAC,
            [198, 18, 0, 2],
            VIP,
            30000 + p,
            80,
            tcp_flags::SYN,
        );
        assert!(w.port().inject(0, &f));
    }
    // One junk frame too: dropped, and its buffer comes back.
    assert!(w.port().inject(0, &[0u8; 10]));
    let aff = AffinityTable::new(64);
    let ctx = Ctx {
        snap: &snap,
        flows: &flows,
        affinity: &aff,
        now: 1,
        share: crate::snat::Share::WHOLE,
    };
    assert_eq!(w.poll_once(&ctx), 31);
    let mut per_backend = [0usize; 3];
    for (port, bytes) in w.port().sent() {
        assert_eq!(port, 1);
        let out = inspect(bytes);
        let i = backend_ip(0)[3];
        per_backend[(out.dst[3] - i) as usize] += 1;
    }
    assert_eq!(per_backend, [10, 10, 10]);
    let stats = w.take_stats();
    assert_eq!((stats.rx, stats.tx, stats.new_flows), (31, 30, 30));
    assert_eq!(stats.drops[DropReason::Malformed.index()], 1);
    w.port().clear_sent();
    assert_eq!(w.port().free_frames(), total);
}

#[test]
fn flows_survive_a_new_snapshot() {
    // A reload publishes a new table; flows created under the old one keep
    // their backend even if the new table no longer lists it.
    let old = snapshot(MasqPolicy::default(), 3);
    let flows = FlowTable::new(1024, Timeouts::default());
    let client = [198, 18, 0, 2];
    let mut f = client_syn(client, 40000);
    assert_eq!(run(&old, &flows, &mut f, 0, 1), Verdict::Tx(1));
    let mut new = snapshot(MasqPolicy::default(), 3);
    new.services = ServiceTable::build(2, vec![]).unwrap();
    let mut a = client_tcp(client, 40000, tcp_flags::ACK);
    assert_eq!(run(&new, &flows, &mut a, 0, 2), Verdict::Tx(1));
    assert_eq!(inspect(&a).dst, backend_ip(0));
}

proptest! {
    /// Any client tuple: forward then reply gives the client back exactly
    /// the tuple it sent to, reversed, with valid checksums, masqueraded or
    /// not.
    #[test]
    fn forward_then_reply_round_trips(
        c in any::<[u8; 2]>(), sport in 1u16.., masq_all in any::<bool>(), udp_flow in any::<bool>()
    ) {
        let snap = snapshot(MasqPolicy { all: masq_all, ..MasqPolicy::default() }, 3);
        let flows = FlowTable::new(64, Timeouts::default());
        let client = [198, 19, c[0], c[1]];
        let (mut f, dport) = if udp_flow {
            (udp(CLIENT_MAC, FRONT_MAC, client, VIP, sport, 53), 53)
        } else {
            (client_syn(client, sport), 80)
        };
        prop_assert_eq!(run(&snap, &flows, &mut f, 0, 1), Verdict::Tx(1));
        let out = inspect(&f);
        let b = out.dst;
        let mut r = if udp_flow {
            udp(backend_mac(0), BACK_MAC, b, out.src, 8080, out.sport)
        } else {
            tcp(backend_mac(0), BACK_MAC, b, out.src, 8080, out.sport, tcp_flags::SYN | tcp_flags::ACK)
        };
        prop_assert_eq!(run(&snap, &flows, &mut r, 1, 1), Verdict::Tx(0));
        let back = inspect(&r);
        prop_assert_eq!((back.src, back.sport, back.dst, back.dport), (VIP, dport, client, sport));
        prop_assert_eq!(back.dst_mac, CLIENT_MAC);
    }
}
