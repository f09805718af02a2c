use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::flow_table::{tcp_flags::*, Timeouts};
use crate::types::{proto, FlowKey, L2Hop};

const BACKEND: Addr = Addr::from_v4([198, 19, 0, 10]);
const SNAT_A: Addr = Addr::from_v4([198, 19, 0, 1]);
const SNAT_B: Addr = Addr::from_v4([198, 19, 0, 2]);
const O: Direction = Direction::Original;
const R: Direction = Direction::Reply;

/// A masqueraded flow from client `c` (198.18.c/16) port `sport` to the
/// VIP, served by BACKEND:80; the allocator fills in the SNAT side.
fn entry(c: u16, sport: u16) -> FlowEntry {
    let [hi, lo] = c.to_be_bytes();
    let original = FlowKey {
        src: Addr::from_v4([198, 18, hi, lo]),
        dst: Addr::from_v4([198, 18, 255, 1]),
        sport,
        dport: 80,
        proto: proto::TCP,
    };
    FlowEntry {
        original,
        reply: FlowKey {
            src: BACKEND,
            dst: Addr::UNSPECIFIED,
            sport: 80,
            dport: 0,
            proto: proto::TCP,
        },
        orig_hop: L2Hop::default(),
        reply_hop: L2Hop::default(),
        service: 0,
        backend: 0,
    }
}

fn ports(lo: u16, hi: u16) -> PortRanges {
    PortRanges::new(&[(lo, hi)]).unwrap()
}

fn alloc(
    t: &FlowTable,
    addrs: &[Addr],
    p: &PortRanges,
    e: &mut FlowEntry,
    now: u32,
) -> Result<(FlowId, Alloc), DropReason> {
    let space = Space {
        addrs,
        ports: p,
        share: Share::WHOLE,
        seed: 7,
    };
    allocate(t, e, &space, now)
}

/// Drives a flow through its handshake and then `close`.
fn drive(t: &FlowTable, id: FlowId, close: &[(Direction, u8)], now: u32) {
    for &(d, f) in [(O, SYN), (R, SYN | ACK), (O, ACK)].iter().chain(close) {
        t.touch(id, d, f, now);
    }
}

fn table() -> FlowTable {
    FlowTable::new(4096, Timeouts::default())
}

#[test]
fn port_ranges_are_checked() {
    assert_eq!(PortRanges::new(&[]), Err(PortRangeError::Empty));
    assert_eq!(
        PortRanges::new(&[(0, 10)]),
        Err(PortRangeError::Bad { lo: 0, hi: 10 })
    );
    assert_eq!(
        PortRanges::new(&[(10, 9)]),
        Err(PortRangeError::Bad { lo: 10, hi: 9 })
    );
    assert!(matches!(
        PortRanges::new(&[(2000, 3000), (1000, 2000)]),
        Err(PortRangeError::Overlap { .. })
    ));
    assert_eq!(
        PortRanges::new(&[(1, 1); MAX_RANGES + 1]),
        Err(PortRangeError::TooMany(MAX_RANGES + 1))
    );
    let r = PortRanges::new(&[(61000, 65535), (1024, 32767)]).unwrap();
    assert_eq!(r.ranges(), &[(1024, 32767), (61000, 65535)]);
    assert_eq!(r.len(), 31744 + 4536);
    assert_eq!(r.to_string(), "1024-32767,61000-65535");
    assert_eq!((r.nth(0), r.nth(31743), r.nth(31744)), (1024, 32767, 61000));
    assert_eq!(r.nth(r.len() - 1), 65535);
    assert!(r.contains(1024) && r.contains(61000) && !r.contains(32768) && !r.contains(1023));
    assert_eq!(r.overlap(32768, 60999), None);
    assert_eq!(r.overlap(30000, 61001), Some((30000, 61001)));
    assert_eq!(r.overlap(62000, 62010), Some((62000, 62010)));
}

#[test]
fn the_default_range_is_the_complement_of_the_ephemeral_range() {
    let r = PortRanges::complement_of(32768, 60999).unwrap();
    assert_eq!(r.ranges(), &[(1024, 32767), (61000, 65535)]);
    assert_eq!(
        PortRanges::complement_of(1024, 60999).unwrap().ranges(),
        &[(61000, 65535)]
    );
    assert_eq!(
        PortRanges::complement_of(10000, 65535).unwrap().ranges(),
        &[(1024, 9999)]
    );
    assert_eq!(PortRanges::complement_of(1024, 65535), None);
    assert_eq!(
        PortRanges::complement_of(500, 600).unwrap().ranges(),
        &[(1024, 65535)]
    );
}

#[test]
fn nth_enumerates_every_port_once() {
    let r = PortRanges::new(&[(5, 7), (100, 101), (65535, 65535)]).unwrap();
    let all: Vec<u16> = (0..r.len()).map(|i| r.nth(i)).collect();
    assert_eq!(all, vec![5, 6, 7, 100, 101, 65535]);
}

#[test]
fn a_small_space_is_used_to_the_last_port_then_exhausted() {
    let t = table();
    let p = ports(61000, 61009);
    let mut seen = HashSet::new();
    for c in 0..10 {
        let mut e = entry(c, 40000);
        let (_, how) = alloc(&t, &[SNAT_A], &p, &mut e, 0).unwrap();
        assert_eq!(how, Alloc::Free);
        assert!(seen.insert(e.reply.dport), "port {} twice", e.reply.dport);
    }
    assert_eq!(
        alloc(&t, &[SNAT_A], &p, &mut entry(10, 40000), 0).unwrap_err(),
        DropReason::SnatExhausted
    );
}

#[test]
fn several_addresses_multiply_the_space() {
    let t = table();
    let p = ports(61000, 61003);
    let mut tuples = HashSet::new();
    for c in 0..8 {
        let mut e = entry(c, 40000);
        alloc(&t, &[SNAT_A, SNAT_B], &p, &mut e, 0).unwrap();
        assert!(tuples.insert((e.reply.dst, e.reply.dport)));
    }
    assert_eq!(
        tuples.iter().filter(|(a, _)| *a == SNAT_B).count(),
        4,
        "both addresses are used to the full"
    );
    assert_eq!(
        alloc(&t, &[SNAT_A, SNAT_B], &p, &mut entry(9, 40000), 0).unwrap_err(),
        DropReason::SnatExhausted
    );
}

/// Fills a 4-port space with flows closed by `close`, then asks for a 5th
/// port at `now`.
fn fifth_after(close: &[(Direction, u8)], now: u32) -> Result<Alloc, DropReason> {
    let t = table();
    let p = ports(61000, 61003);
    for c in 0..4 {
        let mut e = entry(c, 40000);
        let (id, _) = alloc(&t, &[SNAT_A], &p, &mut e, 0).unwrap();
        drive(&t, id, close, 0);
    }
    let mut e = entry(4, 40000);
    let r = alloc(&t, &[SNAT_A], &p, &mut e, now).map(|(_, how)| how);
    if r.is_ok() {
        let hit = t.lookup(&e.reply, now).expect("the new flow owns the port");
        assert_eq!((hit.dir, hit.entry.original), (R, e.original));
        assert_eq!(t.len(), 4, "the old flow was removed");
    }
    r
}

#[test]
fn a_port_closed_by_fins_from_both_sides_is_reused_after_the_quiet_time() {
    let both = [(R, FIN | ACK), (O, FIN | ACK)];
    assert_eq!(fifth_after(&both, QUIET_SECS), Ok(Alloc::Reused));
    assert_eq!(
        fifth_after(&both, QUIET_SECS - 1),
        Err(DropReason::SnatExhausted),
        "not while segments of the old connection may be in flight"
    );
    // Client first, then backend: the same.
    assert_eq!(
        fifth_after(&[(O, FIN | ACK), (R, FIN | ACK)], QUIET_SECS),
        Ok(Alloc::Reused)
    );
}

#[test]
fn a_port_closed_by_a_reset_is_reused() {
    assert_eq!(fifth_after(&[(O, RST)], QUIET_SECS), Ok(Alloc::Reused));
    assert_eq!(fifth_after(&[(R, RST)], QUIET_SECS), Ok(Alloc::Reused));
}

#[test]
fn a_half_closed_or_established_flow_keeps_its_port() {
    // A FIN from one side only, even repeated: the other side may still send.
    for close in [
        &[(R, FIN | ACK), (R, FIN | ACK), (O, ACK)][..],
        &[(O, FIN | ACK), (O, FIN | ACK)][..],
        &[][..],
    ] {
        assert_eq!(
            fifth_after(close, 100),
            Err(DropReason::SnatExhausted),
            "{close:?}"
        );
    }
}

#[test]
fn the_oldest_quiet_embryonic_flow_is_evicted_for_a_new_one() {
    let t = table();
    let p = ports(61000, 61003);
    let mut ids = Vec::new();
    for c in 0..4u16 {
        let mut e = entry(c, 40000);
        let (id, _) = alloc(&t, &[SNAT_A], &p, &mut e, 0).unwrap();
        // Flow 2 is the oldest: the others saw a packet later.
        t.touch(id, O, SYN, if c == 2 { 0 } else { 5 });
        ids.push((id, e));
    }
    let mut e = entry(9, 40000);
    let (_, how) = alloc(&t, &[SNAT_A], &p, &mut e, 6).unwrap();
    assert_eq!(how, Alloc::Evicted);
    assert!(t.lookup(&ids[2].1.original, 6).is_none(), "the oldest went");
    for i in [0, 1, 3] {
        assert!(t.lookup(&ids[i].1.original, 6).is_some(), "flow {i} stays");
    }
    // The others are idle for 1 s only: not yet.
    assert_eq!(
        alloc(&t, &[SNAT_A], &p, &mut entry(10, 40000), 6).unwrap_err(),
        DropReason::SnatExhausted
    );
}

#[test]
fn a_closed_port_is_preferred_to_evicting_an_embryonic_flow() {
    let t = table();
    let p = ports(61000, 61001);
    let mut a = entry(0, 40000);
    let (ida, _) = alloc(&t, &[SNAT_A], &p, &mut a, 0).unwrap();
    t.touch(ida, O, SYN, 0); // embryonic, older
    let mut b = entry(1, 40000);
    let (idb, _) = alloc(&t, &[SNAT_A], &p, &mut b, 0).unwrap();
    drive(&t, idb, &[(O, RST)], 1);
    let (_, how) = alloc(&t, &[SNAT_A], &p, &mut entry(2, 40000), 10).unwrap();
    assert_eq!(how, Alloc::Reused);
    assert!(t.lookup(&a.original, 10).is_some());
}

#[test]
fn a_port_held_by_an_original_tuple_is_never_taken() {
    // A flow whose *original* key is the candidate reply tuple (the backend
    // itself talking to the SNAT address through a VIP): not ours to reuse.
    let t = table();
    let p = ports(61000, 61000);
    let mut other = entry(0, 1);
    other.original = FlowKey {
        src: BACKEND,
        dst: SNAT_A,
        sport: 80,
        dport: 61000,
        proto: proto::TCP,
    };
    other.reply = other.original.reversed();
    let id = t.insert(&other, 0).unwrap();
    t.touch(id, O, RST, 0);
    assert_eq!(
        alloc(&t, &[SNAT_A], &p, &mut entry(1, 40000), QUIET_SECS + 1).unwrap_err(),
        DropReason::SnatExhausted
    );
}

#[test]
fn a_wide_space_at_high_occupancy_still_finds_ports() {
    // 36280 ports, 95% held by established flows: each of the next 500
    // flows finds one of the 5% within its 240 probes.
    let t = FlowTable::new(1 << 16, Timeouts::default());
    let p = PortRanges::complement_of(32768, 60999).unwrap();
    let fill = p.len() as usize * 95 / 100;
    for c in 0..fill {
        let mut e = entry(c as u16, 1000 + (c >> 16) as u16);
        let (id, _) = alloc(&t, &[SNAT_A], &p, &mut e, 0).unwrap();
        drive(&t, id, &[], 0);
    }
    for c in 0..500u16 {
        let mut e = entry(c, 50000);
        assert!(alloc(&t, &[SNAT_A], &p, &mut e, 0).is_ok(), "flow {c}");
    }
}

/// What may happen to a flow in the property test.
#[derive(Clone, Copy, Debug)]
enum Life {
    Syn,
    Handshake,
    Established,
    FinOne,
    FinBoth,
    Reset,
}

fn life() -> impl Strategy<Value = Life> {
    prop_oneof![
        Just(Life::Syn),
        Just(Life::Handshake),
        Just(Life::Established),
        Just(Life::FinOne),
        Just(Life::FinBoth),
        Just(Life::Reset),
    ]
}

fn live(t: &FlowTable, f: Life, id: FlowId, now: u32) {
    let steps: &[(Direction, u8)] = match f {
        Life::Syn => &[(O, SYN)],
        Life::Handshake => &[(O, SYN), (R, SYN | ACK)],
        Life::Established => &[(O, SYN), (R, SYN | ACK), (O, ACK)],
        Life::FinOne => &[(O, SYN), (R, SYN | ACK), (O, ACK), (R, FIN | ACK)],
        Life::FinBoth => &[(O, SYN), (R, SYN | ACK), (O, ACK), (R, FIN), (O, FIN)],
        Life::Reset => &[(O, SYN), (O, RST)],
    };
    for &(d, fl) in steps {
        t.touch(id, d, fl, now);
    }
}

/// Whether the holder of a reply tuple may give its port up at `now`.
fn reclaimable(hit: &Hit) -> Option<bool> {
    if hit.dir != R || hit.idle < QUIET_SECS {
        return None;
    }
    match hit.state {
        FlowState::TimeWait | FlowState::Close => Some(true),
        FlowState::SynSent | FlowState::SynRecv => Some(false),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random flows with random lives over a small space (≤ 32 pairs, so a
    /// first round sees all of it): no two live flows ever share a reply
    /// tuple, every tuple is in the space, a port is reused only when none
    /// is free, an embryonic flow is evicted only when no port is free or
    /// closed, and exhaustion is reported only when every pair is held by a
    /// flow that may be neither reused nor evicted.
    #[test]
    fn allocation_is_unique_and_exhaustion_is_exact(
        nports in 1u16..16,
        two_addrs in any::<bool>(),
        steps in proptest::collection::vec((life(), 0u32..3), 1..80),
    ) {
        let t = table();
        let p = ports(61000, 61000 + nports - 1);
        let addrs: &[Addr] = if two_addrs { &[SNAT_A, SNAT_B] } else { &[SNAT_A] };
        let mut now = 0;
        for (c, (f, dt)) in steps.into_iter().enumerate() {
            now += dt;
            // What the space holds before this flow.
            let (mut free, mut closed, mut embryonic) = (0, 0, 0);
            for &a in addrs {
                for port in p.ranges()[0].0..=p.ranges()[0].1 {
                    let mut k = entry(0, 0).reply;
                    k.dst = a;
                    k.dport = port;
                    match t.lookup(&k, now) {
                        None => free += 1,
                        Some(h) => match reclaimable(&h) {
                            Some(true) => closed += 1,
                            Some(false) => embryonic += 1,
                            None => {}
                        },
                    }
                }
            }
            let mut e = entry(c as u16, 40000);
            match alloc(&t, addrs, &p, &mut e, now) {
                Ok((id, how)) => {
                    match how {
                        Alloc::Free => prop_assert!(free > 0),
                        Alloc::Reused => prop_assert!(free == 0 && closed > 0),
                        Alloc::Evicted => prop_assert!(free == 0 && closed == 0 && embryonic > 0),
                    }
                    prop_assert!(addrs.contains(&e.reply.dst) && p.contains(e.reply.dport));
                    live(&t, f, id, now);
                }
                Err(r) => {
                    prop_assert_eq!(r, DropReason::SnatExhausted);
                    prop_assert_eq!((free, closed, embryonic), (0, 0, 0));
                }
            }
            let mut replies = HashSet::new();
            let mut n = 0;
            t.for_each_at(now, |fe, _, _| {
                n += 1;
                replies.insert(fe.reply);
            });
            prop_assert_eq!(replies.len(), n, "two live flows share a reply tuple");
        }
    }
}

#[test]
fn shares_partition_the_ports_exactly() {
    let r = PortRanges::new(&[(5, 7), (100, 101), (65535, 65535)]).unwrap();
    for port in [5, 7, 100, 65535] {
        assert_eq!(r.nth(r.rank(port).unwrap()), port);
    }
    assert_eq!(r.rank(8), None);
    for n in 1..=7usize {
        let mut seen = Vec::new();
        for w in 0..n {
            let s = Share::new(w, n);
            let mine: Vec<u16> = (0..s.len(&r)).map(|j| s.nth(&r, j)).collect();
            assert!(mine.iter().all(|&p| s.owns(&r, p)), "{n} {w} {mine:?}");
            for other in 0..n {
                if other != w {
                    assert!(mine.iter().all(|&p| !Share::new(other, n).owns(&r, p)));
                }
            }
            seen.extend(mine);
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![5, 6, 7, 100, 101, 65535], "{n} workers");
    }
    assert!(Share::new(6, 7).is_empty(&r));
    assert_eq!(Share::new(9, 0), Share::WHOLE);
}

/// Two workers allocating for the same clients and backend hand out
/// disjoint ports, each from its own share, and each exhausts exactly its
/// half.
#[test]
fn workers_allocate_only_from_their_share() {
    let t = table();
    let p = ports(20000, 20099);
    let mut got = [HashSet::new(), HashSet::new()];
    for c in 0..60u16 {
        for (w, set) in got.iter_mut().enumerate() {
            let share = Share::new(w, 2);
            let space = Space {
                addrs: &[SNAT_A],
                ports: &p,
                share,
                seed: 7,
            };
            let mut e = entry(c * 2 + w as u16, 1000);
            match allocate(&t, &mut e, &space, 0) {
                Ok(_) => {
                    assert!(share.owns(&p, e.reply.dport), "{}", e.reply.dport);
                    assert!(set.insert(e.reply.dport));
                }
                Err(r) => {
                    assert_eq!(r, DropReason::SnatExhausted);
                    assert_eq!(set.len(), 50, "worker {w} exhausted early");
                }
            }
        }
    }
    assert_eq!((got[0].len(), got[1].len()), (50, 50));
    assert!(got[0].is_disjoint(&got[1]));
}
