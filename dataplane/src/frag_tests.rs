//! Fragment fixtures, Katran-style: fragments in (any order, duplicated,
//! overlapping, late), frames out through the worker over the in-memory
//! port, reassembled here and checked whole (addresses, ports, the UDP
//! checksum over the whole datagram, the payload); plus a property test
//! that no sequence of fragments panics, leaks a frame or touches another
//! flow.

use etherparse::PacketBuilder;
use proptest::prelude::*;

use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::{FlowTable, Timeouts};
use crate::pipeline::{Ctx, Snapshot, Stats};
use crate::port::MemPort;
use crate::types::proto;
use crate::udp_fixture::*;
use crate::wire::checksum;
use crate::worker::{Worker, WorkerOpts};

/// The fixture network with a 1500-byte backend link.
fn snapshot() -> Snapshot {
    crate::udp_fixture::snapshot(1500)
}

/// A deterministic payload of `n` bytes, different per `seed`.
fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// A whole UDP datagram as an Ethernet frame.
fn datagram(src: &[u8], dst: &[u8], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC);
    if src.len() == 4 {
        b.ipv4(src.try_into().unwrap(), dst.try_into().unwrap(), 64)
            .udp(sport, dport)
            .write(&mut v, data)
            .unwrap();
    } else {
        b.ipv6(src.try_into().unwrap(), dst.try_into().unwrap(), 64)
            .udp(sport, dport)
            .write(&mut v, data)
            .unwrap();
    }
    v
}

/// Splits a whole datagram's frame into fragments of at most `chunk` bytes
/// of IP payload (a multiple of 8), with IP identification `id`, in order.
fn fragment(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    let v6 = frame[12..14] == [0x86, 0xdd];
    let hl = if v6 { 40 } else { 20 };
    let l4 = &frame[14 + hl..];
    let mut out = Vec::new();
    for (i, part) in l4.chunks(chunk).enumerate() {
        let off = i * chunk;
        let more = off + part.len() < l4.len();
        out.push(frag_frame(frame, off, more, id, part));
    }
    out
}

/// One fragment of `frame`'s datagram: `part` at byte offset `off`.
fn frag_frame(frame: &[u8], off: usize, more: bool, id: u32, part: &[u8]) -> Vec<u8> {
    let v6 = frame[12..14] == [0x86, 0xdd];
    let mut f = frame[..14].to_vec();
    if v6 {
        let mut ip = frame[14..54].to_vec();
        let next = ip[6];
        ip[6] = ipv6::NEXT_FRAGMENT;
        ip[4..6].copy_from_slice(&((8 + part.len()) as u16).to_be_bytes());
        f.extend_from_slice(&ip);
        let off_m = (off as u16) | u16::from(more);
        f.extend_from_slice(&[next, 0]);
        f.extend_from_slice(&off_m.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
    } else {
        let mut ip = frame[14..34].to_vec();
        ip[2..4].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(id as u16).to_be_bytes());
        let word = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&word.to_be_bytes());
        ip[10..12].fill(0);
        let c = checksum::ipv4_header(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
    }
    f.extend_from_slice(part);
    f
}

/// Reassembles sent fragments (any order) into the datagram's L4 bytes and
/// the last fragment's header; checks each fragment's own IPv4 header
/// checksum and that all share addresses.
struct Reassembled {
    src: Vec<u8>,
    dst: Vec<u8>,
    l4: Vec<u8>,
    dst_mac: [u8; 6],
}

fn reassemble(frames: &[Vec<u8>]) -> Reassembled {
    let mut parts: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut addrs: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut dst_mac = [0u8; 6];
    for f in frames {
        dst_mac.copy_from_slice(&f[..6]);
        let v6 = f[12..14] == [0x86, 0xdd];
        let (src, dst, off, data) = if v6 {
            assert_eq!(f[14 + 6], ipv6::NEXT_FRAGMENT);
            let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
            let off_m = u16::from_be_bytes([f[56], f[57]]);
            (
                f[22..38].to_vec(),
                f[38..54].to_vec(),
                usize::from(off_m & 0xfff8),
                f[62..54 + plen].to_vec(),
            )
        } else {
            let ip = &f[14..34];
            assert_eq!(
                checksum::ipv4_header(ip),
                u16::from_be_bytes([ip[10], ip[11]]),
                "IPv4 header checksum"
            );
            let tl = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let word = u16::from_be_bytes([ip[6], ip[7]]);
            (
                ip[12..16].to_vec(),
                ip[16..20].to_vec(),
                usize::from(word & 0x1fff) * 8,
                f[34..14 + tl].to_vec(),
            )
        };
        match &addrs {
            Some(a) => assert_eq!(a, &(src.clone(), dst.clone()), "addresses differ"),
            None => addrs = Some((src, dst)),
        }
        parts.push((off, data));
    }
    parts.sort_by_key(|p| p.0);
    parts.dedup_by_key(|p| p.0);
    let mut l4 = Vec::new();
    for (off, data) in parts {
        assert_eq!(off, l4.len(), "a gap in the datagram");
        l4.extend_from_slice(&data);
    }
    let (src, dst) = addrs.expect("no fragment sent");
    Reassembled {
        src,
        dst,
        l4,
        dst_mac,
    }
}

/// Checks the reassembled UDP datagram: ports, length, payload and the
/// checksum over the pseudo-header and the whole datagram.
fn check_udp(r: &Reassembled, sport: u16, dport: u16, data: &[u8]) {
    let u = &r.l4;
    assert_eq!(u16::from_be_bytes([u[0], u[1]]), sport, "source port");
    assert_eq!(u16::from_be_bytes([u[2], u[3]]), dport, "destination port");
    assert_eq!(usize::from(u16::from_be_bytes([u[4], u[5]])), u.len());
    assert_eq!(&u[8..], data, "payload");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&r.src);
    pseudo.extend_from_slice(&r.dst);
    if r.src.len() == 4 {
        pseudo.extend_from_slice(&[0, proto::UDP]);
        pseudo.extend_from_slice(&(u.len() as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&(u.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto::UDP]);
    }
    pseudo.extend_from_slice(u);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    let sum = pseudo
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    assert_eq!(folded, 0xffff, "UDP checksum over the whole datagram");
}

struct Rig {
    w: Worker<MemPort>,
    flows: FlowTable,
    aff: AffinityTable,
    snap: Snapshot,
    total: usize,
}

impl Rig {
    fn new() -> Rig {
        let mut w = Worker::new(MemPort::new(2, 256), WorkerOpts::default());
        let total = w.port().free_frames();
        Rig {
            w,
            flows: FlowTable::new(1024, Timeouts::default()),
            aff: AffinityTable::new(64),
            snap: snapshot(),
            total,
        }
    }

    /// One burst of `frames` on `port` at `now` seconds: what was sent
    /// (port, bytes) and the counters.
    fn burst(&mut self, port: u8, frames: &[Vec<u8>], now: u32) -> (Vec<(u8, Vec<u8>)>, Stats) {
        let ctx = Ctx {
            snap: &self.snap,
            flows: &self.flows,
            affinity: &self.aff,
            now,
            share: crate::snat::Share::WHOLE,
        };
        for f in frames {
            assert!(self.w.port().inject(port, f));
        }
        assert_eq!(self.w.poll_once(&ctx), frames.len());
        let sent = self.w.port().sent().map(|(p, b)| (p, b.to_vec())).collect();
        self.w.port().clear_sent();
        (sent, self.w.take_stats())
    }

    /// Every frame is back in the pool or held.
    fn assert_no_leak(&mut self) {
        let held = self.w.frag_table().held();
        assert_eq!(
            self.w.port().free_frames() + held,
            self.total,
            "a frame leaked"
        );
    }
}

fn frames_of(sent: &[(u8, Vec<u8>)], port: u8) -> Vec<Vec<u8>> {
    sent.iter()
        .filter(|(p, _)| *p == port)
        .map(|(_, b)| b.clone())
        .collect()
}

/// 3000 bytes of payload from the client to VIP:53 (or [VIP6]:53), in
/// fragments of 1232 bytes: three of them.
fn client_fragments(v6: bool, sport: u16, id: u32, data: &[u8]) -> Vec<Vec<u8>> {
    let whole = if v6 {
        datagram(&CLIENT6, &VIP6, sport, 53, data)
    } else {
        datagram(&CLIENT, &VIP, sport, 53, data)
    };
    fragment(&whole, 1232, id)
}

fn backend_of(v6: bool) -> Vec<u8> {
    if v6 {
        BACKEND6.to_vec()
    } else {
        BACKEND.to_vec()
    }
}

fn in_order(v6: bool) {
    let mut rig = Rig::new();
    let data = payload(3000, 1);
    let frags = client_fragments(v6, 40000, 0x1234, &data);
    assert_eq!(frags.len(), 3);
    let (sent, st) = rig.burst(0, &frags, 1);
    let out = frames_of(&sent, 1);
    assert_eq!(out.len(), 3, "every fragment goes to the backend");
    let r = reassemble(&out);
    assert_eq!(r.dst, backend_of(v6));
    assert_eq!(r.dst_mac, BACKEND_MAC);
    check_udp(&r, 40000, 5353, &data);
    assert_eq!((st.frag.first, st.frag.followed, st.frag.held), (1, 2, 0));
    assert_eq!((st.rx, st.tx, st.new_flows), (3, 3, 1));
    // The last fragment ended the datagram's entry.
    assert!(rig.w.frag_table().is_empty());
    rig.assert_no_leak();
}

#[test]
fn v4_fragments_in_order_follow_the_first() {
    in_order(false);
}

#[test]
fn v6_fragments_in_order_follow_the_first() {
    in_order(true);
}

fn out_of_order(v6: bool) {
    let mut rig = Rig::new();
    let data = payload(3000, 2);
    let frags = client_fragments(v6, 40001, 0x2345, &data);
    // The last and the middle one first, in a burst of their own.
    let (sent, st) = rig.burst(0, &[frags[2].clone(), frags[1].clone()], 1);
    assert!(sent.is_empty(), "held, not sent: {sent:02x?}");
    assert_eq!(st.frag.held, 2);
    assert_eq!(rig.w.frag_table().held(), 2);
    rig.assert_no_leak();
    // The first: it and both held ones go out.
    let (sent, st) = rig.burst(0, &[frags[0].clone()], 2);
    let out = frames_of(&sent, 1);
    assert_eq!(out.len(), 3);
    check_udp(&reassemble(&out), 40001, 5353, &data);
    assert_eq!((st.frag.first, st.frag.followed), (1, 2));
    assert_eq!(rig.w.frag_table().held(), 0);
    rig.assert_no_leak();
}

#[test]
fn v4_fragments_before_their_first_are_held_and_released() {
    out_of_order(false);
}

#[test]
fn v6_fragments_before_their_first_are_held_and_released() {
    out_of_order(true);
}

#[test]
fn duplicate_and_overlapping_fragments_get_the_same_rewrite() {
    for v6 in [false, true] {
        let mut rig = Rig::new();
        let data = payload(3000, 3);
        let whole = if v6 {
            datagram(&CLIENT6, &VIP6, 40002, 53, &data)
        } else {
            datagram(&CLIENT, &VIP, 40002, 53, &data)
        };
        let frags = fragment(&whole, 1232, 0x3456);
        let hl = if v6 { 40 } else { 20 };
        let l4 = &whole[14 + hl..];
        // Overlapping the first and second: bytes 1200..1400.
        let overlap = frag_frame(&whole, 1200, true, 0x3456, &l4[1200..1400]);
        let seq = vec![
            frags[0].clone(),
            frags[1].clone(),
            frags[1].clone(),
            overlap,
            frags[2].clone(),
        ];
        let (sent, st) = rig.burst(0, &seq, 1);
        let out = frames_of(&sent, 1);
        assert_eq!(out.len(), 5, "v6={v6}: each is forwarded as it came");
        assert_eq!(st.frag.followed, 4);
        // The overlapping one carries the same bytes as the datagram.
        for f in &out {
            let dst = if v6 { &f[38..54] } else { &f[30..34] };
            assert_eq!(dst, &backend_of(v6)[..]);
        }
        let mut distinct = out.clone();
        distinct.remove(3);
        check_udp(&reassemble(&distinct), 40002, 5353, &data);
        rig.assert_no_leak();
    }
}

#[test]
fn a_fragment_whose_first_came_too_long_ago_is_dropped_expired() {
    for v6 in [false, true] {
        let mut rig = Rig::new();
        let frags = client_fragments(v6, 40003, 0x4567, &payload(3000, 4));
        let (sent, _) = rig.burst(0, &frags[..1], 1);
        assert_eq!(sent.len(), 1);
        let (sent, st) = rig.burst(0, &frags[1..2], 1 + FRAG_TIMEOUT_SECS);
        assert!(sent.is_empty(), "v6={v6}: {sent:02x?}");
        assert_eq!(st.frag.dropped_expired, 1);
        assert_eq!(st.frag.followed, 0);
        rig.assert_no_leak();
    }
}

#[test]
fn a_held_fragment_whose_first_never_comes_is_released_at_the_timeout() {
    for v6 in [false, true] {
        let mut rig = Rig::new();
        let frags = client_fragments(v6, 40004, 0x5678, &payload(3000, 5));
        let (_, st) = rig.burst(0, &frags[1..2], 10);
        assert_eq!(st.frag.held, 1);
        let (_, st) = rig.burst(0, &[], 10 + FRAG_TIMEOUT_SECS - 1);
        assert_eq!(st.frag.dropped_no_first, 0, "not yet");
        let (sent, st) = rig.burst(0, &[], 10 + FRAG_TIMEOUT_SECS);
        assert!(sent.is_empty());
        assert_eq!(st.frag.dropped_no_first, 1);
        assert_eq!(rig.w.frag_table().held(), 0);
        rig.assert_no_leak();
    }
}

#[test]
fn held_frames_are_bounded_and_the_rest_counted_table_full() {
    let mut rig = Rig::new();
    let orphans: Vec<Vec<u8>> = (0..MAX_HELD as u32 + 3)
        .map(|id| client_fragments(false, 40005, 0x6000 + id, &payload(3000, 6))[1].clone())
        .collect();
    let (sent, st) = rig.burst(0, &orphans, 1);
    assert!(sent.is_empty());
    assert_eq!(st.frag.held, MAX_HELD as u64);
    assert_eq!(st.frag.dropped_table_full, 3);
    rig.assert_no_leak();
}

#[test]
fn a_full_rewrite_table_evicts_expired_entries_else_counts_table_full() {
    let rw = FragRewrite {
        port: 1,
        eth: [0; 14],
        l3: L3Rewrite::Addrs {
            src: Addr::from_v4(CLIENT),
            dst: Addr::from_v4(BACKEND),
        },
    };
    let key = |id: u32| FragKey {
        src: Addr::from_v4(CLIENT),
        dst: Addr::from_v4(VIP),
        id,
        proto: proto::UDP,
    };
    let mut t: FragTable<()> = FragTable::new();
    let mut st = FragStats::default();
    for id in 0..MAX_FRAG_ENTRIES as u32 {
        t.learn(key(id), rw, 0, &mut st);
    }
    assert_eq!(t.len(), MAX_FRAG_ENTRIES);
    t.learn(key(u32::MAX), rw, 5, &mut st);
    assert_eq!(st.dropped_table_full, 1, "none expired: not remembered");
    // Once the old ones have expired, a new one evicts them.
    t.learn(key(u32::MAX), rw, FRAG_TIMEOUT_SECS, &mut st);
    assert_eq!(st.dropped_table_full, 1);
    assert_eq!(t.len(), 1);
}

#[test]
fn fragmented_replies_are_translated_back_to_the_client() {
    for v6 in [false, true] {
        let mut rig = Rig::new();
        // A small query creates the flow.
        let q = if v6 {
            datagram(&CLIENT6, &VIP6, 40006, 53, b"query")
        } else {
            datagram(&CLIENT, &VIP, 40006, 53, b"query")
        };
        let (sent, _) = rig.burst(0, &[q], 1);
        assert_eq!(sent.len(), 1);
        // The backend's 4000-byte reply, fragmented by its kernel.
        let data = payload(4000, 7);
        let mut whole = if v6 {
            datagram(&BACKEND6, &CLIENT6, 5353, 40006, &data)
        } else {
            datagram(&BACKEND, &CLIENT, 5353, 40006, &data)
        };
        whole[..6].copy_from_slice(&BACK_MAC);
        whole[6..12].copy_from_slice(&BACKEND_MAC);
        let frags = fragment(&whole, 1448, 0x7777);
        assert_eq!(frags.len(), 3);
        let (sent, st) = rig.burst(1, &frags, 2);
        let out = frames_of(&sent, 0);
        assert_eq!(out.len(), 3, "v6={v6}: all to the client");
        let r = reassemble(&out);
        let (vip, client): (Vec<u8>, Vec<u8>) = if v6 {
            (VIP6.to_vec(), CLIENT6.to_vec())
        } else {
            (VIP.to_vec(), CLIENT.to_vec())
        };
        assert_eq!((r.src, r.dst.clone()), (vip.clone(), client.clone()));
        assert_eq!(r.dst_mac, CLIENT_MAC);
        let r = Reassembled {
            src: vip,
            dst: client,
            ..r
        };
        check_udp(&r, 53, 40006, &data);
        assert_eq!((st.frag.first, st.frag.followed), (1, 2));
        rig.assert_no_leak();
    }
}

#[test]
fn learn_takes_the_tunnel_header_and_apply_puts_it_in_front() {
    // The first fragment left encapsulated (IPIP): 20 bytes more.
    let data = payload(3000, 8);
    let whole = datagram(&CLIENT, &VIP, 40007, 53, &data);
    let frags = fragment(&whole, 1232, 0x8888);
    let p = crate::wire::parse(&frags[0]).unwrap();
    let mut out = frags[0][..14].to_vec();
    let mut outer = [0u8; 20];
    outer[0] = 0x45;
    outer[8] = 64;
    outer[9] = 4;
    outer[12..16].copy_from_slice(&[198, 18, 1, 1]);
    outer[16..20].copy_from_slice(&BACKEND);
    out.extend_from_slice(&outer);
    out.extend_from_slice(&frags[0][14..]);
    let rw = learn(&out, frags[0].len(), Verdict::TxLen(1, out.len()), &p).unwrap();
    assert!(matches!(rw.l3, L3Rewrite::Tunnel { len: 20, .. }));
    let h = parse_later(&frags[1]).unwrap();
    let mut buf = frags[1].clone();
    let n = frags[1].len();
    buf.resize(n + 64, 0);
    let v = apply(&snapshot(), &mut buf, n, &h, &rw);
    assert_eq!(v, Verdict::TxLen(1, n + 20));
    let o = &buf[14..34];
    assert_eq!(checksum::ipv4_header(o), u16::from_be_bytes([o[10], o[11]]));
    assert_eq!(usize::from(u16::from_be_bytes([o[2], o[3]])), n - 14 + 20);
    assert_eq!(&o[16..20], &BACKEND);
    // The inner fragment is unchanged but for its TTL, one less.
    assert_eq!(
        &buf[34..n + 20],
        &crate::udp_fixture::one_hop_on(&frags[1], 14)[14..]
    );
}

#[test]
fn a_reset_or_a_drop_is_not_learned() {
    let frags = client_fragments(false, 40008, 1, &payload(2000, 9));
    let p = crate::wire::parse(&frags[0]).unwrap();
    let f = &frags[0];
    assert!(learn(f, f.len(), Verdict::Drop(DropReason::NoService), &p).is_none());
    assert!(learn(f, f.len(), Verdict::Reply(60), &p).is_none());
    assert!(learn(f, f.len(), Verdict::TxLen(1, 54), &p).is_none());
    assert!(learn(f, f.len(), Verdict::Tx(1), &p).is_some());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Fragments of two datagrams (one per family) in any order, some
    /// duplicated, some corrupted, mixed with whole datagrams of another
    /// flow: nothing panics, no frame leaks, the other flow is translated
    /// as always, and every fragment sent carries its own datagram's
    /// rewrite.
    #[test]
    fn no_fragment_sequence_panics_or_touches_another_flow(
        order in Just((0..8usize).collect::<Vec<_>>()).prop_shuffle(),
        dup in proptest::collection::vec(any::<bool>(), 8),
        corrupt in proptest::collection::vec((0usize..8, 0usize..80, any::<u8>()), 0..4),
        split in 0usize..8,
    ) {
        let mut rig = Rig::new();
        let a = client_fragments(false, 41000, 0x9999, &payload(3000, 10));
        let b = client_fragments(true, 41001, 0x9999, &payload(3000, 11));
        let other = datagram(&CLIENT, &VIP, 41002, 53, b"other");
        let mut pool: Vec<Vec<u8>> = a.iter().chain(b.iter()).cloned().collect();
        pool.push(other.clone());
        pool.push(other.clone());
        let mut seq = Vec::new();
        for (i, &k) in order.iter().enumerate() {
            seq.push(pool[k].clone());
            if dup[i] {
                seq.push(pool[k].clone());
            }
        }
        for (k, at, byte) in corrupt {
            if let Some(f) = seq.get_mut(k) {
                if let Some(x) = f.get_mut(14 + at) {
                    *x = byte;
                }
            }
        }
        let cut = split.min(seq.len());
        let mut sent = rig.burst(0, &seq[..cut], 1).0;
        sent.extend(rig.burst(0, &seq[cut..], 2).0);
        for (port, f) in &sent {
            prop_assert_eq!(*port, 1);
            // Whatever went out is addressed to a backend of its family.
            let v6 = f[12..14] == [0x86, 0xdd];
            let dst = if v6 { f[38..54].to_vec() } else { f[30..34].to_vec() };
            prop_assert_eq!(dst, backend_of(v6));
        }
        // The other flow's datagrams (unless corrupted) reached the backend
        // whole, with their port.
        let sent_others: Vec<_> = sent
            .iter()
            .filter(|(_, f)| f.len() == other.len() && f.ends_with(b"other"))
            .collect();
        for (_, f) in &sent_others {
            prop_assert_eq!(u16::from_be_bytes([f[36], f[37]]), 5353);
        }
        prop_assert!(sent_others.len() >= seq.iter().filter(|f| **f == other).count());
        rig.assert_no_leak();
        // Held frames go back at the timeout.
        rig.burst(0, &[], 2 + FRAG_TIMEOUT_SECS);
        prop_assert_eq!(rig.w.frag_table().held(), 0);
        rig.assert_no_leak();
    }

    /// Any bytes: neither the parser of later fragments nor the table
    /// panics.
    #[test]
    fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut t: FragTable<()> = FragTable::new();
        let mut st = FragStats::default();
        let mut buf = frame.clone();
        let mut len = buf.len();
        let _ = parse_later(&frame);
        let _ = t.follow(&snapshot(), &mut buf, &mut len, 0, &mut st);
        if let Ok(p) = crate::wire::parse(&frame) {
            let _ = learn(&frame, frame.len(), Verdict::Tx(1), &p);
        }
    }
}
