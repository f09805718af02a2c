//! Fixture tests of the packet core for hostile frames: each kind that a
//! load balancer must not forward (a bad IPv4 header checksum, source-route
//! and broken IPv4 options, an IPv6 Routing header with segments left, a
//! fragment, an invalid TCP flag combination, a VLAN tag on an untagged
//! link) is dropped under its own [`DropReason`], creates no flow, and the
//! same frame made well-formed is forwarded (so each test shows that the
//! check, not something else, refused it).

use etherparse::PacketBuilder;

use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::Timeouts;
use crate::service::{BackendSpec, SchedKind, ServiceSpec};
use crate::wire::{checksum, ipv6};

use super::tests::{backend_ip, backend_mac, BACK_MAC, CLIENT_MAC, FRONT_MAC, VIP};

const CLIENT: [u8; 4] = [198, 18, 0, 2];
const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const BACKEND6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11,
];

/// TCP VIP:80 and [VIP6]:80, one backend each, reached on port 1.
fn snapshot() -> Snapshot {
    let svc = |vip: Addr, backend: Addr| ServiceSpec {
        name: format!("default/web-{vip}"),
        vip: VipKey {
            addr: vip,
            port: 80,
            proto: proto::TCP,
        },
        backends: vec![BackendSpec {
            addr: backend,
            port: 8080,
            weight: 1,
            ..Default::default()
        }],
        sched: SchedKind::RoundRobin,
        ..Default::default()
    };
    let (b4, b6) = (Addr::from_v4(backend_ip(0)), Addr::from_v6(BACKEND6));
    let services = ServiceTable::build(
        1,
        vec![svc(Addr::from_v4(VIP), b4), svc(Addr::from_v6(VIP6), b6)],
    )
    .unwrap();
    let hop = |snat| NextHop {
        hop: L2Hop {
            port: 1,
            mac: backend_mac(0),
        },
        snat,
    };
    let mut nexthops = HashMap::new();
    nexthops.insert(b4, hop(Addr::from_v4([198, 18, 1, 1])));
    nexthops.insert(
        b6,
        hop(Addr::from_v6([
            0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ])),
    );
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
        masq: MasqPolicy::default(),
        removed: Default::default(),
        moved: Default::default(),
    }
}

/// Runs one frame received on the front port (0) through a fresh flow
/// table; returns the verdict, the stats and the number of flows after.
fn run_fresh(frame: &[u8]) -> (Verdict, Stats, usize) {
    let snap = snapshot();
    let flows = FlowTable::new(64, Timeouts::default());
    let (v, stats) = run_on(&snap, &flows, frame);
    (v, stats, flows.len())
}

fn run_on(snap: &Snapshot, flows: &FlowTable, frame: &[u8]) -> (Verdict, Stats) {
    let aff = AffinityTable::new(64);
    let ctx = Ctx {
        snap,
        flows,
        affinity: &aff,
        now: 1,
        share: crate::snat::Share::WHOLE,
    };
    let mut buf = [0u8; 2048];
    buf[..frame.len()].copy_from_slice(frame);
    let mut stats = Stats::default();
    let v = process(&ctx, &mut buf, frame.len(), 0, &mut stats);
    stats.count(v);
    (v, stats)
}

/// A client's segment to VIP:80 with exactly the flag byte `flags`.
fn v4_tcp(flags: u8) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC)
        .ipv4(CLIENT, VIP, 64)
        .tcp(40000, 80, 1000, 65535)
        .write(&mut f, b"")
        .unwrap();
    set_tcp_flags(&mut f, 14 + 20, flags);
    f
}

/// Sets the TCP flag byte of the segment at `l4` and fixes its checksum
/// (RFC 1624 incremental update over the 16-bit word that holds it).
fn set_tcp_flags(f: &mut [u8], l4: usize, flags: u8) {
    let old = u16::from_be_bytes([f[l4 + 12], f[l4 + 13]]);
    f[l4 + 13] = flags;
    let new = u16::from_be_bytes([f[l4 + 12], f[l4 + 13]]);
    let c = u16::from_be_bytes([f[l4 + 16], f[l4 + 17]]);
    let c = checksum::update_word(c, old, new);
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

fn fix_v4_header(f: &mut [u8], l3: usize) {
    let hl = usize::from(f[l3] & 0x0f) * 4;
    let c = checksum::ipv4_header(&f[l3..l3 + hl]);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// `v4_tcp(SYN)` with IPv4 options `opts` (a multiple of 4 bytes) and a
/// correct header checksum. The TCP checksum does not cover the options.
fn v4_syn_with_options(opts: &[u8]) -> Vec<u8> {
    let f = v4_tcp(tcp_flags::SYN);
    let mut g = f[..34].to_vec();
    g.extend_from_slice(opts);
    g.extend_from_slice(&f[34..]);
    g[14] = 0x45 + (opts.len() / 4) as u8;
    let tl = u16::from_be_bytes([g[16], g[17]]) + opts.len() as u16;
    g[16..18].copy_from_slice(&tl.to_be_bytes());
    fix_v4_header(&mut g, 14);
    g
}

fn assert_dropped(frame: &[u8], reason: DropReason) -> Stats {
    let (v, stats, flows) = run_fresh(frame);
    assert_eq!(v, Verdict::Drop(reason), "{frame:02x?}");
    assert_eq!(stats.drops[reason.index()], 1);
    assert_eq!((stats.tx, stats.new_flows, flows), (0, 0, 0));
    stats
}

fn assert_forwarded(frame: &[u8]) {
    let (v, stats, flows) = run_fresh(frame);
    assert_eq!(v, Verdict::Tx(1), "{frame:02x?}");
    assert_eq!((stats.new_flows, flows), (1, 1));
}

#[test]
fn syn_fin_is_dropped_and_creates_no_flow() {
    assert_forwarded(&v4_tcp(tcp_flags::SYN));
    // ECN setup SYN (ECE+CWR) is a SYN.
    assert_forwarded(&v4_tcp(tcp_flags::SYN | tcp_flags::ECE | tcp_flags::CWR));
    for flags in [
        tcp_flags::SYN | tcp_flags::FIN,
        tcp_flags::SYN | tcp_flags::FIN | tcp_flags::PSH | tcp_flags::URG,
        tcp_flags::SYN | tcp_flags::RST,
        0,
        tcp_flags::FIN | tcp_flags::PSH | tcp_flags::URG,
    ] {
        assert_dropped(&v4_tcp(flags), DropReason::BadTcpFlags);
    }
}

#[test]
fn syn_fin_on_a_live_flow_does_not_reach_the_backend_nor_touch_the_flow() {
    let snap = snapshot();
    let flows = FlowTable::new(64, Timeouts::default());
    let (v, _) = run_on(&snap, &flows, &v4_tcp(tcp_flags::SYN));
    assert_eq!(v, Verdict::Tx(1));
    let key = crate::wire::parse(&v4_tcp(tcp_flags::SYN)).unwrap().key;
    let before = flows.lookup(&key, 1).unwrap().entry;
    let (v, stats) = run_on(&snap, &flows, &v4_tcp(tcp_flags::SYN | tcp_flags::FIN));
    assert_eq!(v, Verdict::Drop(DropReason::BadTcpFlags));
    assert_eq!(stats.tx, 0);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows.lookup(&key, 1).unwrap().entry, before);
}

#[test]
fn bad_and_zero_ipv4_checksums_are_dropped() {
    let good = v4_tcp(tcp_flags::SYN);
    assert_forwarded(&good);
    let mut f = good.clone();
    f[24] ^= 0x40;
    let s = assert_dropped(&f, DropReason::BadIpChecksum);
    assert_eq!(s.parse_errors[ParseError::BadIpChecksum.index()], 1);
    let mut f = good;
    f[24..26].copy_from_slice(&[0, 0]);
    assert_dropped(&f, DropReason::BadIpChecksum);
}

#[test]
fn source_routes_and_broken_options_are_dropped() {
    // Record Route (7 bytes) and EOL: harmless, forwarded.
    assert_forwarded(&v4_syn_with_options(&[7, 7, 4, 0, 0, 0, 0, 0]));
    let lsrr = [0x83, 7, 4, 198, 18, 1, 12, 0];
    assert_dropped(&v4_syn_with_options(&lsrr), DropReason::IpSourceRoute);
    let ssrr = [0x89, 7, 4, 198, 18, 1, 12, 0];
    assert_dropped(&v4_syn_with_options(&ssrr), DropReason::IpSourceRoute);
    assert_dropped(
        &v4_syn_with_options(&[148, 9, 0, 0]),
        DropReason::BadIpOptions,
    );
    assert_dropped(
        &v4_syn_with_options(&[7, 1, 0, 0]),
        DropReason::BadIpOptions,
    );
}

#[test]
fn tagged_frames_are_dropped() {
    for tpid in [[0x81, 0x00], [0x88, 0xa8]] {
        let f = v4_tcp(tcp_flags::SYN);
        let mut g = f[..12].to_vec();
        g.extend_from_slice(&tpid);
        g.extend_from_slice(&[0x00, 0x64]); // VID 100
        g.extend_from_slice(&f[12..]);
        assert_dropped(&g, DropReason::VlanTagged);
    }
}

#[test]
fn later_fragments_are_dropped_as_fragments_by_the_pipeline_alone() {
    // A later fragment has no ports: the pipeline alone cannot forward it
    // (the worker's fragment table does: crate::frag).
    let mut f = v4_tcp(tcp_flags::SYN);
    f[14 + 6] = 0x20;
    f[14 + 7] = 185; // MF, offset 1480
    fix_v4_header(&mut f, 14);
    assert_dropped(&f, DropReason::Fragment);
}

#[test]
fn a_first_fragment_is_forwarded_by_its_five_tuple() {
    let mut f = v4_tcp(tcp_flags::SYN);
    f[14 + 6] = 0x20; // MF, offset 0: a first fragment, ports and all
    fix_v4_header(&mut f, 14);
    assert!(crate::wire::parse(&f).unwrap().fragment.is_some());
    assert_forwarded(&f);
}

/// [VIP6]:80 SYN behind one 8-byte Routing header (type 4) with
/// `segments_left`.
fn v6_syn_behind_routing_header(segments_left: u8) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC)
        .ipv6(CLIENT6, VIP6, 64)
        .tcp(40000, 80, 1000, 65535)
        .syn()
        .write(&mut f, b"")
        .unwrap();
    let mut g = f[..54].to_vec();
    g.extend_from_slice(&[proto::TCP, 0, 4, segments_left, 0, 0, 0, 0]);
    g.extend_from_slice(&f[54..]);
    g[14 + 6] = ipv6::NEXT_ROUTING;
    let pl = u16::from_be_bytes([g[18], g[19]]) + 8;
    g[18..20].copy_from_slice(&pl.to_be_bytes());
    g
}

#[test]
fn ipv6_routing_header_with_segments_left_is_dropped() {
    assert_forwarded(&v6_syn_behind_routing_header(0));
    assert_dropped(
        &v6_syn_behind_routing_header(1),
        DropReason::Ipv6RoutingHeader,
    );
}

#[test]
fn drop_reasons_are_a_dense_table() {
    assert_eq!(DropReason::ALL.len(), DropReason::COUNT);
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i, "{r:?}");
        for s in &DropReason::ALL[i + 1..] {
            assert_ne!(r.as_str(), s.as_str());
        }
    }
    // Every parse error has a reason; the hostile kinds their own.
    for e in ParseError::ALL {
        let r = DropReason::from(e);
        match e {
            ParseError::Truncated
            | ParseError::NotIp
            | ParseError::BadIpHeader
            | ParseError::UnsupportedProto
            | ParseError::BadL4Header => assert_eq!(r, DropReason::Malformed),
            _ => assert_eq!(
                r.as_str(),
                e.as_str(),
                "{e:?} counts as drop_{}",
                e.as_str()
            ),
        }
    }
}
