//! The fast path's rewrite against a full recompute (etherparse) on random
//! packets, and against the pipeline's own output for the same frame.

use etherparse::PacketBuilder;
use proptest::prelude::*;

use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::{FlowTable, Timeouts};
use crate::pipeline::{self, Ctx, MasqPolicy, Stats, Verdict};
use crate::snat::Share;
use crate::types::Addr;
use crate::udp_fixture::*;

const SMAC: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];
const DMAC: [u8; 6] = [2, 0, 0, 0, 0, 0xbb];

/// A frame from `k` with `ttl`, TCP (`flags`, ACK when 0x10) or UDP.
#[allow(clippy::too_many_arguments)]
fn frame(k: &FlowKey, ttl: u8, payload: &[u8], smac: [u8; 6], dmac: [u8; 6], ack: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, dmac);
    let b = if k.src.is_v4() {
        b.ipv4(k.src.v4_octets(), k.dst.v4_octets(), ttl)
    } else {
        b.ipv6(k.src.0, k.dst.0, ttl)
    };
    let mut out = Vec::new();
    if k.proto == proto::TCP {
        let b = b.tcp(k.sport, k.dport, 1000, 65000);
        let b = if ack { b.ack(77) } else { b };
        b.write(&mut out, payload).unwrap();
    } else {
        b.udp(k.sport, k.dport).write(&mut out, payload).unwrap();
    }
    out
}

fn addr(v4: bool, bytes: [u8; 16]) -> Addr {
    if v4 {
        Addr::from_v4([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        Addr(bytes)
    }
}

fn value(from: &FlowKey, to: &FlowKey) -> FastValue {
    let (ip, l4) = deltas(from, to);
    FastValue {
        to: *to,
        ip_delta: ip,
        l4_delta: l4,
        dmac: DMAC,
        smac: SMAC,
        ifindex: 3,
        mtu: 1500,
        flags: FLAG_NAT,
        ..FastValue::default()
    }
}

proptest! {
    /// Incremental deltas (plus the TTL's) give exactly the checksums a
    /// full recompute over the rewritten packet gives.
    #[test]
    fn deltas_match_a_full_recompute(
        v4: bool, tcp: bool, a: [[u8; 16]; 4], ports: [u16; 4], ttl in 2u8..=255,
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let p = if tcp { proto::TCP } else { proto::UDP };
        let from = FlowKey { src: addr(v4, a[0]), dst: addr(v4, a[1]), sport: ports[0], dport: ports[1], proto: p };
        let to = FlowKey { src: addr(v4, a[2]), dst: addr(v4, a[3]), sport: ports[2], dport: ports[3], proto: p };
        let mut f = frame(&from, ttl, &payload, [1; 6], [2; 6], true);
        let want = frame(&to, ttl - 1, &payload, SMAC, DMAC, true);
        let applied = apply(&mut f, &value(&from, &to));
        prop_assert!(applied);
        // etherparse writes 0xffff for a UDP sum of zero, as RFC 768 and
        // the fast path do.
        prop_assert_eq!(f, want);
    }

    /// What the fast path takes the parser accepts: a valid frame with one
    /// header byte changed (IP header and the fixed L4 header; not the
    /// IP version or the IPv4 fragment word, which the steering program
    /// judges before the fast path), cut short or padded is rewritten
    /// only when `wire::parse` accepts it as it was received.
    #[test]
    fn frames_the_parser_refuses_never_take_the_fast_path(
        v4: bool, tcp: bool, at in 0usize..60, x: u8, cut in 0usize..8, pad in 0usize..8,
    ) {
        let p = if tcp { proto::TCP } else { proto::UDP };
        let from = key4([1, 1, 1, 1], [2, 2, 2, 2], 5, 6, p);
        let from = if v4 { from } else {
            FlowKey { src: Addr::from_v6(CLIENT6), dst: Addr::from_v6(VIP6), ..from }
        };
        let to = FlowKey { sport: 7, dport: 8, ..from };
        let mut f = frame(&from, 64, b"payload", [1; 6], [2; 6], true);
        let hdrs = if v4 { 20 } else { 40 } + if tcp { 20 } else { 8 };
        let i = 14 + at % hdrs;
        if i == 14 {
            // The version stays; IHL (IPv4) or traffic class bits change.
            f[i] = (f[i] & 0xf0) | (x & 0x0f);
        } else if !(v4 && (i == 20 || i == 21)) {
            f[i] = x;
        }
        f.truncate(f.len() - cut);
        f.extend(std::iter::repeat_n(0u8, pad));
        let parsed = crate::wire::parse(&f).is_ok();
        let taken = apply(&mut f, &value(&from, &to));
        prop_assert!(!taken || parsed, "taken by the fast path, refused by the parser");
    }

    /// DR: only the MACs and the TTL change.
    #[test]
    fn dr_changes_macs_and_ttl_only(v4: bool, a: [[u8; 16]; 2], ports: [u16; 2], ttl in 2u8..=255) {
        let k = FlowKey { src: addr(v4, a[0]), dst: addr(v4, a[1]), sport: ports[0], dport: ports[1], proto: proto::TCP };
        let mut f = frame(&k, ttl, b"x", [1; 6], [2; 6], true);
        let v = FastValue { dmac: DMAC, smac: SMAC, mtu: 1500, ifindex: 1, ..FastValue::default() };
        prop_assert!(apply(&mut f, &v));
        prop_assert_eq!(f, frame(&k, ttl - 1, b"x", SMAC, DMAC, true));
    }
}

fn key4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, p: u8) -> FlowKey {
    FlowKey {
        src: Addr::from_v4(src),
        dst: Addr::from_v4(dst),
        sport,
        dport,
        proto: p,
    }
}

#[test]
fn udp_v4_without_checksum_keeps_none() {
    let from = key4([1, 1, 1, 1], [2, 2, 2, 2], 5, 6, proto::UDP);
    let to = key4([3, 3, 3, 3], [4, 4, 4, 4], 7, 8, proto::UDP);
    let mut f = frame(&from, 64, b"abc", [1; 6], [2; 6], false);
    f[14 + 20 + 6..14 + 20 + 8].fill(0);
    assert!(apply(&mut f, &value(&from, &to)));
    assert_eq!(&f[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    assert_eq!(&f[14 + 20..14 + 20 + 4], &[0, 7, 0, 8]);
}

#[test]
fn frames_that_need_judgement_are_left_alone() {
    let from = key4([1, 1, 1, 1], [2, 2, 2, 2], 5, 6, proto::TCP);
    let to = key4([3, 3, 3, 3], [4, 4, 4, 4], 7, 8, proto::TCP);
    let v = value(&from, &to);
    // TTL 1: the workers answer time exceeded.
    let mut f = frame(&from, 1, b"", [1; 6], [2; 6], true);
    let before = f.clone();
    assert!(!apply(&mut f, &v));
    assert_eq!(f, before);
    // SYN, FIN, RST: state changes stay with the workers.
    for flag in [0x02u8, 0x01, 0x04] {
        let mut f = frame(&from, 64, b"", [1; 6], [2; 6], true);
        f[14 + 20 + 13] |= flag;
        let before = f.clone();
        assert!(!apply(&mut f, &v), "flag {flag:#x}");
        assert_eq!(f, before);
    }
    // Malformed: the workers drop and count them (the parser's reasons).
    let good = frame(&from, 64, b"data", [1; 6], [2; 6], true);
    let ip_csum = |f: &mut Vec<u8>| {
        f[24..26].fill(0);
        let c = !crate::wire::checksum::fold(crate::wire::checksum::sum(&f[14..34]));
        f[24..26].copy_from_slice(&c.to_be_bytes());
    };
    type Breaks = fn(&mut Vec<u8>);
    let cases: [(&str, Breaks); 5] = [
        ("bad IPv4 header checksum", |f| f[25] ^= 0x5a),
        ("total length past the frame", |f| f[17] += 1),
        ("total length short of the TCP header", |f| f[17] = 20 + 19),
        ("TCP data offset 4", |f| f[14 + 20 + 12] = 0x40),
        ("TCP data offset past the packet", |f| {
            f[14 + 20 + 12] = 0xf0
        }),
    ];
    for (what, break_it) in cases {
        let mut f = good.clone();
        break_it(&mut f);
        if what != "bad IPv4 header checksum" {
            ip_csum(&mut f);
        }
        assert!(
            crate::wire::parse(&f).is_err(),
            "{what}: the parser takes it"
        );
        let before = f.clone();
        assert!(!apply(&mut f, &v), "{what}");
        assert_eq!(f, before, "{what}");
    }
    // IHL 6 (a NOP option): the parser judges options, so the workers do.
    let mut f = good.clone();
    f.splice(34..34, [1u8, 1, 1, 1]);
    f[14] = 0x46;
    f[17] += 4;
    ip_csum(&mut f);
    assert!(!apply(&mut f, &v), "IPv4 options");
    // Ethernet padding after the packet is not a malformation.
    let mut f = good.clone();
    f.extend_from_slice(&[0; 6]);
    assert!(apply(&mut f, &v), "padded frame");
    // UDP length below 8 or past the packet; IPv6 payload past the frame.
    let u = key4([1, 1, 1, 1], [2, 2, 2, 2], 5, 6, proto::UDP);
    let vu = value(&u, &key4([3, 3, 3, 3], [4, 4, 4, 4], 7, 8, proto::UDP));
    for ulen in [7u16, 8 + 4 + 1] {
        let mut f = frame(&u, 64, b"abcd", [1; 6], [2; 6], false);
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&ulen.to_be_bytes());
        assert!(crate::wire::parse(&f).is_err(), "UDP length {ulen}");
        assert!(!apply(&mut f, &vu), "UDP length {ulen}");
    }
    let u6 = FlowKey {
        src: Addr::from_v6(CLIENT6),
        dst: Addr::from_v6(VIP6),
        ..u
    };
    let mut f = frame(&u6, 64, b"abcd", [1; 6], [2; 6], false);
    f[14 + 5] += 1;
    assert!(crate::wire::parse(&f).is_err(), "IPv6 payload length");
    assert!(
        !apply(&mut f, &value(&u6, &FlowKey { sport: 9, ..u6 })),
        "IPv6 payload length"
    );
    // Larger than the egress MTU: the workers answer too big.
    let small = FastValue { mtu: 60, ..v };
    let mut f = frame(&from, 64, &[0; 100], [1; 6], [2; 6], true);
    assert!(!apply(&mut f, &small));
}

/// The pipeline's slow path and [`plan`] + [`apply`] turn the same frame
/// into the same bytes, both directions, both families, with and without
/// masquerading.
#[test]
fn plan_and_apply_equal_the_pipeline() {
    for masq_all in [false, true] {
        for v6 in [false, true] {
            let mut snap = snapshot(1500);
            snap.masq = MasqPolicy {
                all: masq_all,
                ..MasqPolicy::default()
            };
            let flows = FlowTable::new(1024, Timeouts::default());
            let aff = AffinityTable::new(64);
            let ctx = Ctx {
                snap: &snap,
                flows: &flows,
                affinity: &aff,
                now: 1,
                share: Share::WHOLE,
            };
            let (c, vip, be) = if v6 {
                (
                    Addr::from_v6(CLIENT6),
                    Addr::from_v6(VIP6),
                    Addr::from_v6(BACKEND6),
                )
            } else {
                (
                    Addr::from_v4(CLIENT),
                    Addr::from_v4(VIP),
                    Addr::from_v4(BACKEND),
                )
            };
            let req = FlowKey {
                src: c,
                dst: vip,
                sport: 40000,
                dport: 53,
                proto: proto::UDP,
            };
            let mut stats = Stats::default();
            let mut first = frame(&req, 64, b"q1", CLIENT_MAC, FRONT_MAC, false);
            let n = first.len();
            let v = pipeline::process(&ctx, &mut first, n, 0, &mut stats);
            assert_eq!(v, Verdict::Tx(1), "masq {masq_all} v6 {v6}");
            let hit = flows.lookup(&req, 1).unwrap();
            let reply_key = hit.entry.reply;
            assert_eq!(reply_key.src, be);
            let ifx = [10, 20];
            for (key, ingress, src_mac, dst_mac, dir) in [
                (req, 0u8, CLIENT_MAC, FRONT_MAC, Direction::Original),
                (reply_key, 1, BACKEND_MAC, BACK_MAC, Direction::Reply),
            ] {
                let mut slow = frame(&key, 64, b"payload", src_mac, dst_mac, false);
                let mut fast = slow.clone();
                let n = slow.len();
                let out = pipeline::process(&ctx, &mut slow, n, ingress, &mut stats);
                let egress = if dir == Direction::Original { 1 } else { 0 };
                assert_eq!(out, Verdict::Tx(egress));
                let v = plan(&snap, &hit.entry, dir, &ifx).unwrap();
                assert_eq!(v.ifindex, ifx[usize::from(egress)]);
                assert!(apply(&mut fast, &v));
                assert_eq!(fast, slow, "masq {masq_all} v6 {v6} {dir:?}");
            }
        }
    }
}

#[test]
fn no_interface_index_no_plan() {
    let snap = snapshot(1500);
    let flows = FlowTable::new(64, Timeouts::default());
    let aff = AffinityTable::new(64);
    let ctx = Ctx {
        snap: &snap,
        flows: &flows,
        affinity: &aff,
        now: 1,
        share: Share::WHOLE,
    };
    let req = key4(CLIENT, VIP, 4000, 53, proto::UDP);
    let mut f = frame(&req, 64, b"q", CLIENT_MAC, FRONT_MAC, false);
    let n = f.len();
    pipeline::process(&ctx, &mut f, n, 0, &mut Stats::default());
    let hit = flows.lookup(&req, 1).unwrap();
    assert!(plan(&snap, &hit.entry, Direction::Original, &[10, 0]).is_none());
    assert!(plan(&snap, &hit.entry, Direction::Original, &[10]).is_none());
    assert!(plan(&snap, &hit.entry, Direction::Reply, &[10, 0]).is_some());
}
