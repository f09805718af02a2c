//! Fixture tests of the service-range rule in the packet core
//! (`--service-cidr`, [`MasqPolicy::service_cidrs`]): a new flow that no
//! front end owns, to an address inside a service range, is a ClusterIP's
//! port no Service has (the steering program sends only those) and is
//! answered with ICMP port unreachable, TCP included, as nft's bare
//! `reject` in kube-proxy's `cluster-ips-check` chain; outside the ranges,
//! or without the flag, it is dropped as before (`no_service`).

use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket, TransportSlice};

use super::tests::{backend_ip, fixture_snapshot, run_with, tcp, CLIENT_MAC, FRONT_MAC, VIP};
use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::Timeouts;
use crate::service::{BackendSpec, ServiceSpec};

const CLIENT: [u8; 4] = [198, 18, 0, 2];

/// One ClusterIP front end, VIP:80 over one backend; `ranges` as the
/// `--service-cidr` flag.
fn snapshot(ranges: &[&str]) -> Snapshot {
    let web = ServiceSpec {
        name: "default/web:http".into(),
        vip: VipKey {
            addr: Addr::from_v4(VIP),
            port: 80,
            proto: proto::TCP,
        },
        backends: vec![BackendSpec {
            addr: Addr::from_v4(backend_ip(0)),
            port: 8080,
            weight: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    let masq = MasqPolicy {
        service_cidrs: ranges.iter().map(|r| r.parse().unwrap()).collect(),
        ..MasqPolicy::default()
    };
    fixture_snapshot(ServiceTable::build(1, vec![web]).unwrap(), 1, masq)
}

fn udp(dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC)
        .ipv4(CLIENT, dst, 64)
        .udp(41000, dport)
        .write(&mut out, b"query")
        .unwrap();
    out
}

/// The frame's verdict and the counters after it.
fn run(snap: &Snapshot, frame: &mut Vec<u8>) -> (Verdict, Stats) {
    let flows = FlowTable::new(1024, Timeouts::default());
    let aff = AffinityTable::new(16);
    let mut stats = Stats::default();
    let v = run_with(snap, &flows, &aff, frame, 0, 1, &mut stats);
    (v, stats)
}

/// Asserts `frame` is ICMP port unreachable from `from` back to the
/// client, quoting a packet to `from`:`dport`.
fn assert_port_unreachable(frame: &[u8], from: [u8; 4], dport: u16) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not ipv4")
    };
    assert_eq!(ip.header().source(), from);
    assert_eq!(ip.header().destination(), CLIENT);
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
        panic!("not ICMP: {:?}", p.transport)
    };
    let Icmpv4Type::DestinationUnreachable(d) = icmp.icmp_type() else {
        panic!("not destination unreachable: {:?}", icmp.icmp_type())
    };
    assert_eq!(d, etherparse::icmpv4::DestUnreachableHeader::Port);
    // The quote: the client's packet to the ClusterIP's port.
    let quoted = icmp.payload();
    assert_eq!(&quoted[16..20], &from);
    assert_eq!(u16::from_be_bytes([quoted[22], quoted[23]]), dport);
}

#[test]
fn a_clusterip_port_no_service_has_is_rejected_with_port_unreachable() {
    let snap = snapshot(&["198.18.100.0/24"]);
    let mut syn = tcp(
        CLIENT_MAC,
        FRONT_MAC,
        CLIENT,
        VIP,
        41000,
        81,
        tcp_flags::SYN,
    );
    let (v, stats) = run(&snap, &mut syn);
    assert!(matches!(v, Verdict::Reply(_)), "{v:?}");
    assert_port_unreachable(&syn, VIP, 81);
    assert_eq!(stats.drops[DropReason::ClusterIpPort.index()], 1);
    assert_eq!(stats.drops[DropReason::NoService.index()], 0);
    assert_eq!(stats.new_flows, 0);

    let mut q = udp(VIP, 5353);
    let (v, stats) = run(&snap, &mut q);
    assert!(matches!(v, Verdict::Reply(_)), "{v:?}");
    assert_port_unreachable(&q, VIP, 5353);
    assert_eq!(stats.drops[DropReason::ClusterIpPort.index()], 1);
}

#[test]
fn the_service_port_itself_is_still_served() {
    let snap = snapshot(&["198.18.100.0/24"]);
    let mut syn = tcp(
        CLIENT_MAC,
        FRONT_MAC,
        CLIENT,
        VIP,
        41000,
        80,
        tcp_flags::SYN,
    );
    let (v, stats) = run(&snap, &mut syn);
    assert_eq!(v, Verdict::Tx(1));
    assert_eq!(stats.new_flows, 1);
}

#[test]
fn outside_the_ranges_or_without_the_flag_it_is_dropped_as_before() {
    for snap in [snapshot(&[]), snapshot(&["198.18.96.0/24"])] {
        let mut syn = tcp(
            CLIENT_MAC,
            FRONT_MAC,
            CLIENT,
            VIP,
            41000,
            81,
            tcp_flags::SYN,
        );
        let (v, stats) = run(&snap, &mut syn);
        assert_eq!(v, Verdict::Drop(DropReason::NoService));
        assert_eq!(stats.drops[DropReason::ClusterIpPort.index()], 0);
    }
}
