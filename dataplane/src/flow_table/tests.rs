use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier};

use proptest::prelude::*;

use super::*;
use crate::types::{proto, Addr, FlowKey, L2Hop};

use tcp_flags::{ACK, FIN, RST, SYN};

const SEED: [u64; 4] = [0x1234, 0x5678, 0x9abc, 0xdef0];

fn table(cap: usize) -> FlowTable {
    FlowTable::with_seed(cap, Timeouts::default(), SEED)
}

/// Flow `n` of protocol `p`: client 10.x → VIP:80, backend → SNAT address.
fn entry_p(n: u32, p: u8) -> FlowEntry {
    let b = n.to_be_bytes();
    let original = FlowKey {
        src: Addr::from_v4([10, b[1], b[2], b[3]]),
        dst: Addr::from_v4([198, 18, 0, 1]),
        sport: 1024 + (n % 50_000) as u16,
        dport: 80,
        proto: p,
    };
    let reply = FlowKey {
        src: Addr::from_v4([198, 18, 2, (n % 4) as u8]),
        dst: Addr::from_v4([198, 18, 1, 1]),
        sport: 8080,
        dport: n as u16,
        proto: p,
    };
    FlowEntry {
        original,
        reply,
        orig_hop: L2Hop {
            port: (n % 3) as u8 + 13,
            mac: [2, 0, b[0], b[1], b[2], b[3]],
        },
        reply_hop: L2Hop {
            port: 15,
            mac: [0xfe, 0xff, b[3], b[2], b[1], b[0]],
        },
        service: (n / 7) & layout::MAX_SERVICE,
        backend: n % 4,
    }
}

/// Flow `n` over IPv6: client 2001:db8:1::n → VIP, backend → client.
fn entry6(n: u32) -> FlowEntry {
    let b = n.to_be_bytes();
    let a = |x: u8, y: [u8; 4]| {
        Addr::from_v6([
            0x20, 1, 0xd, 0xb8, 0, x, 0, 0, 0, 0, 0, 0, y[0], y[1], y[2], y[3],
        ])
    };
    let mut e = entry_p(n, proto::TCP);
    e.original.src = a(1, b);
    e.original.dst = a(2, [0, 0, 0, 1]);
    e.reply.src = a(3, [0, 0, 0, (n % 4) as u8]);
    e.reply.dst = e.original.src;
    e.service = n;
    e.backend = 65_535 - n % 4;
    e
}

fn entry(n: u32) -> FlowEntry {
    entry_p(n, proto::TCP)
}

/// Another flow whose reply key collides with flow `n`'s (a SNAT port clash).
fn clashing(n: u32) -> FlowEntry {
    let mut e = entry(n);
    e.original.sport = e.original.sport.wrapping_add(1);
    e.original.src = Addr::from_v4([172, 16, 0, 1]);
    e
}

#[test]
fn layout_and_bytes_per_flow() {
    assert_eq!(std::mem::size_of::<store::Record<5>>(), 48);
    assert_eq!(std::mem::size_of::<store::Record<11>>(), 96);
    assert_eq!(std::mem::size_of::<store::Bucket>(), 64);
    assert_eq!(FlowTable::BYTES_PER_FLOW_V4, 58);
    assert_eq!(FlowTable::BYTES_PER_FLOW_V6, 106);
    for cap in [1usize, 2, 3, 1000, 4097, 1_000_000] {
        let t = FlowTable::with_capacities(cap, cap, Timeouts::default());
        let want = cap * (FlowTable::BYTES_PER_FLOW_V4 + FlowTable::BYTES_PER_FLOW_V6);
        // Buckets round up to whole cache lines: at most one extra each.
        let real = t.memory_bytes();
        assert!(real <= want + 128, "cap {cap}: {real} > {want}");
        assert!(real >= want, "cap {cap}: {real} < {want}");
    }
}

#[test]
fn send_sync() {
    fn ok<T: Send + Sync>() {}
    ok::<FlowTable>();
}

#[test]
fn pack_round_trip() {
    for n in [0, 1, 77, 65_535, 1 << 20, u32::MAX] {
        let e = entry(n);
        let w = V4::pack(&e).unwrap();
        assert_eq!(V4::unpack(&w, e.original.proto, e.backend), e);
        assert!(
            V6::pack(&e).is_none(),
            "an IPv4 flow goes to the IPv4 store"
        );
        let e = entry6(n & layout::MAX_SERVICE);
        let w = V6::pack(&e).unwrap();
        assert_eq!(V6::unpack(&w, e.original.proto, e.backend), e);
        assert!(V4::pack(&e).is_none());
    }
}

#[test]
fn refuses_what_does_not_fit() {
    let t = table(64);
    let mut mixed = entry(1);
    mixed.reply.src = entry6(1).reply.src;
    let mut wide = [entry(2), entry(3), entry(4), entry(5)];
    wide[0].service = layout::MAX_SERVICE + 1;
    wide[1].backend = layout::MAX_BACKEND + 1;
    wide[2].orig_hop.port = layout::MAX_PORT + 1;
    wide[3].original.proto = 47;
    wide[3].reply.proto = 47;
    for e in std::iter::once(&mixed).chain(wide.iter()) {
        assert_eq!(t.insert(e, 0), Err(InsertError::Unsupported), "{e:?}");
    }
    assert!(t.is_empty());
    // At the limits, it fits.
    let mut e = entry(6);
    e.service = layout::MAX_SERVICE;
    e.backend = layout::MAX_BACKEND;
    let id = t.insert(&e, 0).unwrap();
    assert_eq!(t.lookup(&e.reply, 0).unwrap().entry, e);
    assert!(t.remove(id));
}

#[test]
fn ipv6_flows_live_in_their_own_store() {
    let t = table(64);
    let (cap4, cap6) = t.capacities();
    assert_eq!((cap4, cap6), (64, 64));
    let e4 = entry(5);
    let e6 = entry6(5);
    let id4 = t.insert(&e4, 0).unwrap();
    let id6 = t.insert(&e6, 0).unwrap();
    assert_ne!(id4, id6);
    for (e, id) in [(e4, id4), (e6, id6)] {
        for (k, d) in [
            (e.original, Direction::Original),
            (e.reply, Direction::Reply),
        ] {
            let h = t.lookup(&k, 0).unwrap();
            assert_eq!((h.id, h.dir, h.entry), (id, d, e));
        }
    }
    assert_eq!(t.len(), 2);
    assert_eq!(
        t.touch(id6, Direction::Reply, SYN | ACK, 1),
        FlowState::SynRecv
    );
    assert_eq!(t.lookup(&e4.original, 1).unwrap().state, FlowState::SynSent);
    assert_eq!(t.remove_where(|e| e.original.src.is_v4()), 1);
    assert!(t.remove(id6));
    assert!(t.is_empty());
    // Fill the IPv6 store with established flows: the IPv4 one is not
    // affected.
    for n in 0..64 {
        let id = t.insert(&entry6(n), 0).unwrap();
        t.touch(id, Direction::Original, ACK, 0);
    }
    assert_eq!(t.insert(&entry6(64), 0), Err(InsertError::Full));
    assert!(t.insert(&entry(64), 0).is_ok());
}

/// The 24-bit wrapping clock: ages across the wrap, and a `last_seen` a
/// second ahead of a worker's `now` (clock skew) is not taken for old.
#[test]
fn ageing_across_the_clock_wrap() {
    let t = table(8);
    let e = entry_p(1, proto::UDP);
    let start = (1 << 24) - 100;
    let id = t.insert(&e, start).unwrap();
    assert!(t.lookup(&e.original, start + 300).is_some());
    assert!(t.lookup(&e.original, start + 301).is_none());
    t.touch(id, Direction::Original, 0, start + 250);
    assert!(t.lookup(&e.original, start + 550).is_some());
    // A worker whose clock is one second behind.
    assert!(t.lookup(&e.original, start + 249).is_some());
    assert_eq!(
        t.touch(id, Direction::Original, 0, start + 249),
        FlowState::Udp
    );
    assert!(t.lookup(&e.original, start + 550).is_some());
    assert!(t.lookup(&e.original, start + 551).is_none());
}

/// Many keys per bucket pair: the cuckoo index reaches its design load
/// (every record in use, index 80% full) with no refusal, lookups find
/// every flow, and removal leaves the index empty.
#[test]
fn full_table_by_displacement_and_back() {
    let cap = 20_000;
    let t = table(cap);
    for n in 0..cap as u32 {
        assert_eq!(t.insert(&entry(n), 0).map(|_| ()), Ok(()), "flow {n}");
    }
    assert_eq!(t.len(), cap);
    for n in 0..cap as u32 {
        let e = entry(n);
        assert_eq!(t.lookup(&e.original, 0).unwrap().entry, e);
        assert_eq!(t.lookup(&e.reply, 0).unwrap().dir, Direction::Reply);
    }
    assert_eq!(t.v4.used_slots(), 2 * cap);
    assert!(t.v4.moves() > 0, "the load needs displacements");
    // Churn at full load: remove one, insert another.
    for n in 0..cap as u32 {
        let old = t.lookup(&entry(n).original, 0).unwrap().id;
        assert!(t.remove(old));
        let m = cap as u32 + n;
        assert_eq!(t.insert(&entry(m), 0).map(|_| ()), Ok(()), "flow {m}");
    }
    eprintln!("displacements: {} for {} inserts", t.v4.moves(), 2 * cap);
    assert_eq!(t.remove_where(|_| true), cap);
    assert_eq!(t.v4.used_slots(), 0);
    assert_eq!(t.v4.free_len(), cap);
}

#[test]
fn insert_and_lookup_both_directions() {
    let t = table(64);
    let e = entry(5);
    let id = t.insert(&e, 100).unwrap();
    assert_eq!(t.len(), 1);
    let h = t.lookup(&e.original, 100).unwrap();
    assert_eq!(
        (h.id, h.dir, h.entry, h.state),
        (id, Direction::Original, e, FlowState::SynSent)
    );
    let h = t.lookup(&e.reply, 100).unwrap();
    assert_eq!((h.id, h.dir, h.entry), (id, Direction::Reply, e));
    assert!(t.lookup(&e.original.reversed(), 100).is_none());
    assert!(t.lookup(&entry(6).original, 100).is_none());
}

#[test]
fn exists_on_either_key() {
    let t = table(64);
    let e = entry(1);
    let id = t.insert(&e, 0).unwrap();
    assert_eq!(t.insert(&e, 1), Err(InsertError::Exists));
    assert_eq!(t.insert(&clashing(1), 1), Err(InsertError::Exists));
    // A flow whose original key is another flow's reply key.
    let mut cross = entry(2);
    cross.original = e.reply;
    assert_eq!(t.insert(&cross, 1), Err(InsertError::Exists));
    assert_eq!(t.len(), 1);
    assert!(t.remove(id));
    assert!(!t.remove(id));
    assert_eq!(t.len(), 0);
    let id2 = t.insert(&clashing(1), 2).unwrap();
    assert_eq!(t.lookup(&e.reply, 2).unwrap().id, id2);
    assert!(t.lookup(&e.original, 2).is_none());
}

#[test]
fn tcp_transitions() {
    let t = table(8);
    let e = entry(1);
    let id = t.insert(&e, 0).unwrap();
    use Direction::{Original as O, Reply as R};
    assert_eq!(t.touch(id, O, SYN, 0), FlowState::SynSent);
    assert_eq!(t.touch(id, O, SYN, 0), FlowState::SynSent); // retransmit
    assert_eq!(t.touch(id, R, SYN | ACK, 1), FlowState::SynRecv);
    assert_eq!(t.touch(id, O, ACK, 1), FlowState::Established);
    assert_eq!(t.touch(id, R, ACK, 2), FlowState::Established);
    assert_eq!(t.touch(id, O, SYN, 2), FlowState::Established);
    assert_eq!(t.touch(id, R, FIN | ACK, 3), FlowState::FinWait);
    assert_eq!(t.touch(id, O, ACK, 3), FlowState::FinWait);
    assert_eq!(t.touch(id, O, RST, 4), FlowState::Close);
    assert_eq!(t.touch(id, O, FIN, 4), FlowState::Close);
    assert_eq!(t.touch(id, O, ACK, 4), FlowState::Close);
    assert_eq!(t.touch(id, O, SYN, 5), FlowState::SynSent); // tuple reuse
    assert_eq!(t.lookup(&e.reply, 5).unwrap().state, FlowState::SynSent);

    // Mid-stream pickup and DR (no replies seen): ACK after SYN.
    let id = t.insert(&entry(2), 0).unwrap();
    assert_eq!(t.touch(id, O, ACK, 0), FlowState::Established);
    // SYN+ACK in the original direction is not a handshake reply.
    let id = t.insert(&entry(3), 0).unwrap();
    assert_eq!(t.touch(id, O, SYN | ACK, 0), FlowState::SynSent);

    // Non-TCP flows ignore flags.
    let id = t.insert(&entry_p(4, proto::UDP), 0).unwrap();
    assert_eq!(t.touch(id, O, SYN | RST | FIN, 0), FlowState::Udp);
    let id = t.insert(&entry_p(5, proto::ICMP), 0).unwrap();
    assert_eq!(t.touch(id, R, RST, 0), FlowState::Udp);
    assert_eq!(FlowState::Established.as_str(), "ESTABLISHED");
}

#[test]
fn fins_from_both_sides_make_time_wait() {
    use Direction::{Original as O, Reply as R};
    for (first, second) in [(O, R), (R, O)] {
        let t = table(16);
        let id = t.insert(&entry_p(1, proto::TCP), 0).unwrap();
        drive(&t, id, FlowState::Established, 0);
        assert_eq!(t.touch(id, first, FIN | ACK, 0), FlowState::FinWait);
        assert_eq!(t.touch(id, first, FIN | ACK, 0), FlowState::FinWait); // again
        assert_eq!(t.touch(id, second, ACK, 0), FlowState::FinWait);
        assert_eq!(t.touch(id, second, FIN | ACK, 0), FlowState::TimeWait);
        assert_eq!(t.touch(id, first, FIN | ACK, 0), FlowState::TimeWait);
        assert_eq!(t.touch(id, first, ACK, 0), FlowState::TimeWait);
        assert_eq!(t.touch(id, first, RST, 0), FlowState::Close);
        assert_eq!(t.touch(id, O, SYN, 0), FlowState::SynSent); // reopened
        assert_eq!(FlowState::TimeWait.as_str(), "TIME_WAIT");
    }
}

/// Brings a fresh flow to `target` at time `now`.
fn drive(t: &FlowTable, id: FlowId, target: FlowState, now: u32) {
    use Direction::{Original as O, Reply as R};
    let steps: &[(Direction, u8)] = match target {
        FlowState::Udp | FlowState::SynSent => &[(O, SYN)],
        FlowState::SynRecv => &[(O, SYN), (R, SYN | ACK)],
        FlowState::Established => &[(O, SYN), (R, SYN | ACK), (O, ACK)],
        FlowState::FinWait => &[(O, ACK), (O, FIN)],
        FlowState::Close => &[(O, RST)],
        FlowState::TimeWait => &[(O, ACK), (R, FIN), (O, FIN)],
    };
    for &(d, f) in steps {
        t.touch(id, d, f, now);
    }
    assert_eq!(t.touch(id, O, 0, now), target);
}

#[test]
fn expiry_per_state_on_a_virtual_clock() {
    let to = Timeouts::default();
    let cases = [
        (FlowState::SynSent, proto::TCP, to.tcp_syn_sent),
        (FlowState::SynRecv, proto::TCP, to.tcp_syn_recv),
        (FlowState::Established, proto::TCP, to.tcp_established),
        (FlowState::FinWait, proto::TCP, to.tcp_fin_wait),
        (FlowState::TimeWait, proto::TCP, to.tcp_fin_wait),
        (FlowState::Close, proto::TCP, to.tcp_close),
        (FlowState::Udp, proto::UDP, to.udp),
        (FlowState::Udp, proto::SCTP, to.other),
    ];
    for (i, (state, p, timeout)) in cases.into_iter().enumerate() {
        let t = table(16);
        let e = entry_p(i as u32, p);
        let id = t.insert(&e, 1000).unwrap();
        drive(&t, id, state, 1000);
        let deadline = 1000 + timeout;
        assert!(t.lookup(&e.original, deadline).is_some(), "{state:?}");
        let mut seen = Vec::new();
        t.for_each_at(deadline - 5, |_, s, left| seen.push((s, left)));
        assert_eq!(seen, vec![(state, 5)]);
        assert!(t.lookup(&e.reply, deadline + 1).is_none(), "{state:?}");
        assert_eq!(
            t.touch(id, Direction::Original, 0, deadline + 1),
            FlowState::Close
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.expire(deadline, 16), 0);
        assert_eq!(t.expire(deadline + 1, 16), 1);
        assert_eq!(t.len(), 0);
        assert!(t.lookup(&e.original, 0).is_none());
    }
}

#[test]
fn touch_refreshes_and_insert_reclaims_expired() {
    let t = table(16);
    let e = entry(9);
    let id = t.insert(&e, 0).unwrap();
    t.touch(id, Direction::Original, ACK, 0); // Established, 900 s
    t.touch(id, Direction::Reply, ACK, 800);
    assert!(t.lookup(&e.original, 1700).is_some());
    assert!(t.lookup(&e.original, 1701).is_none());
    // The expired flow's keys are free again; insert reclaims its record.
    let id2 = t.insert(&clashing(9), 1701).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t.lookup(&e.reply, 1701).unwrap().id, id2);
    assert_eq!(t.clock(), 1701);
}

#[test]
fn eviction_when_full() {
    let t = table(4);
    let ids: Vec<_> = (0..4).map(|n| t.insert(&entry(n), n).unwrap()).collect();
    for &id in &ids {
        t.touch(id, Direction::Original, ACK, 10);
    }
    // All established and fresh: nothing to evict.
    assert_eq!(t.insert(&entry(10), 10), Err(InsertError::Full));
    // Two half-open flows: the older one goes.
    t.touch(ids[1], Direction::Original, RST, 11);
    t.touch(ids[2], Direction::Original, RST, 12);
    let id = t.insert(&entry(10), 13).unwrap();
    assert_eq!(id.index(), ids[1].index());
    assert_ne!(id, ids[1], "a new generation of the record");
    assert!(t.lookup(&entry(1).original, 13).is_none());
    assert!(t.lookup(&entry(2).original, 13).is_some());
    // An expired established flow goes before a fresh closing one.
    let id = t.insert(&entry(11), 2000).unwrap();
    assert!(
        id.index() == ids[0].index() || id.index() == ids[3].index(),
        "{id:?}"
    );
    assert_eq!(t.len(), 4);
}

#[test]
fn remove_where_flushes_a_backend() {
    let t = table(64);
    for n in 0..40 {
        t.insert(&entry(n), 0).unwrap();
    }
    assert_eq!(t.remove_where(|e| e.backend == 2), 10);
    assert_eq!(t.len(), 30);
    for n in 0..40 {
        assert_eq!(t.lookup(&entry(n).reply, 0).is_some(), n % 4 != 2);
    }
    let mut listed = 0;
    t.for_each(|e, s, left| {
        assert_ne!(e.backend, 2);
        assert_eq!((s, left), (FlowState::SynSent, 120));
        listed += 1;
    });
    assert_eq!(listed, 30);
}

#[test]
fn stale_id_touch_is_harmless() {
    let t = table(2);
    let id = t.insert(&entry(1), 0).unwrap();
    assert!(t.remove(id));
    assert_eq!(t.touch(id, Direction::Original, ACK, 1), FlowState::Close);
    assert_eq!(
        t.touch(FlowId { rec: 99, gen: 0 }, Direction::Original, ACK, 1),
        FlowState::Close
    );
    assert!(!t.remove(FlowId { rec: 99, gen: 0 }));
}

/// A stale id (the flow was removed and its record reused by another flow,
/// as happens between a worker's lookup and its touch when another worker
/// removes or early-drops the flow) must not touch or remove the new flow:
/// a client's RST must not close someone else's connection.
#[test]
fn stale_id_never_acts_on_the_flow_that_reused_its_record() {
    let t = table(1);
    let old = t.insert(&entry(1), 0).unwrap();
    assert!(t.remove(old));
    let new = t.insert(&entry(2), 0).unwrap();
    assert_eq!(new.index(), old.index(), "the test needs the record reused");
    assert_ne!(new.generation(), old.generation());
    assert_eq!(t.touch(old, Direction::Original, RST, 1), FlowState::Close);
    assert_eq!(t.touch(old, Direction::Reply, ACK, 5), FlowState::Close);
    assert!(!t.remove(old));
    let h = t
        .lookup(&entry(2).original, 5)
        .expect("the new flow is intact");
    assert_eq!((h.id, h.state), (new, FlowState::SynSent));
    // Untouched by the stale id: it expires on its own clock (SYN_SENT, 120 s
    // from its insert at 0), not refreshed at 5.
    assert!(t.lookup(&entry(2).original, 121).is_none());
    // The same through early drop: a stale id of an evicted flow.
    let t = table(1);
    let victim = t.insert(&entry(3), 0).unwrap();
    let taker = t.insert(&entry(4), 1).unwrap();
    assert_eq!(taker.index(), victim.index());
    assert!(!t.remove(victim));
    assert_eq!(
        t.touch(taker, Direction::Original, 0, 1),
        FlowState::SynSent
    );
}

#[test]
fn concurrent_duplicate_inserts_commit_at_most_once() {
    let t = Arc::new(table(256));
    for round in 0..50u32 {
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (t, barrier) = (t.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // Half the threads insert a flow clashing on the reply key.
                    let e = if i % 2 == 0 {
                        entry(round)
                    } else {
                        clashing(round)
                    };
                    barrier.wait();
                    t.insert(&e, 0).is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&w| w)
            .count();
        assert!(wins <= 1, "round {round}: {wins} winners");
        let mut owners = 0;
        t.for_each_at(0, |e, _, _| {
            owners += usize::from(e.reply == entry(round).reply)
        });
        assert_eq!(owners, wins);
    }
}

// ---- model test ----

#[derive(Clone, Debug)]
enum Op {
    Insert(u32, bool),
    Lookup(u32, bool),
    Touch(u32, bool, u8),
    Remove(u32),
    Advance(u32),
    Expire,
    RemoveBackend(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..12u32, any::<bool>()).prop_map(|(n, c)| Op::Insert(n, c)),
        4 => (0..12u32, any::<bool>()).prop_map(|(n, r)| Op::Lookup(n, r)),
        4 => (0..12u32, any::<bool>(), prop::sample::select(vec![0, SYN, SYN | ACK, ACK, FIN | ACK, RST]))
            .prop_map(|(n, r, f)| Op::Touch(n, r, f)),
        1 => (0..12u32).prop_map(Op::Remove),
        2 => prop::sample::select(vec![1, 9, 11, 59, 61, 130, 400, 1000]).prop_map(Op::Advance),
        1 => Just(Op::Expire),
        1 => (0..4u32).prop_map(Op::RemoveBackend),
    ]
}

fn model_entry(n: u32, clash: bool) -> FlowEntry {
    let p = [proto::TCP, proto::TCP, proto::UDP, proto::ICMP][(n % 4) as usize];
    let mut e = entry_p(n, p);
    if clash {
        e.original.src = Addr::from_v4([172, 16, 0, 1]);
    }
    e
}

#[derive(Clone, Copy)]
struct M {
    id: FlowId,
    e: FlowEntry,
    st: u8,
    seen: u32,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn matches_a_hashmap_model(ops in prop::collection::vec(op(), 1..120)) {
        let t = table(64);
        // Keyed by (flow number, clash variant); holds unreclaimed flows.
        let mut model: HashMap<(u32, bool), M> = HashMap::new();
        let mut now = 0u32;
        let expired = |m: &M, now: u32| u64::from(m.seen) + u64::from(t.timeout_of(m.st)) < u64::from(now);
        for op in ops {
            match op {
                Op::Insert(n, c) => {
                    let e = model_entry(n, c);
                    let keys = [e.original, e.reply];
                    let clashes: Vec<_> = model.iter()
                        .filter(|(_, m)| keys.contains(&m.e.original) || keys.contains(&m.e.reply))
                        .map(|(k, m)| (*k, expired(m, now)))
                        .collect();
                    for (k, exp) in &clashes {
                        if *exp { model.remove(k); }
                    }
                    let got = t.insert(&e, now);
                    if clashes.iter().any(|(_, exp)| !exp) {
                        prop_assert_eq!(got, Err(InsertError::Exists));
                    } else {
                        let id = got.unwrap();
                        let st = match e.original.proto { proto::TCP => ST_SYN_SENT, proto::UDP => ST_UDP, _ => ST_OTHER };
                        model.insert((n, c), M { id, e, st, seen: now });
                    }
                }
                Op::Lookup(n, r) => {
                    let e = model_entry(n, false);
                    let key = if r { e.reply } else { e.original };
                    let want = model.values()
                        .find(|m| !expired(m, now) && (m.e.original == key || m.e.reply == key));
                    let got = t.lookup(&key, now);
                    match (want, got) {
                        (None, None) => {}
                        (Some(m), Some(h)) => {
                            prop_assert_eq!(h.id, m.id);
                            prop_assert_eq!(h.entry, m.e);
                            prop_assert_eq!(h.state, public_state(m.st));
                            let d = if m.e.original == key { Direction::Original } else { Direction::Reply };
                            prop_assert_eq!(h.dir, d);
                        }
                        (w, g) => prop_assert!(false, "model {:?} table {:?}", w.map(|m| m.e), g),
                    }
                }
                Op::Touch(n, r, f) => {
                    let keyed = model.iter_mut().find(|((k, _), _)| *k == n);
                    if let Some((_, m)) = keyed {
                        let dir = if r { Direction::Reply } else { Direction::Original };
                        let got = t.touch(m.id, dir, f, now);
                        if expired(m, now) {
                            prop_assert_eq!(got, FlowState::Close);
                        } else {
                            if m.st != ST_UDP && m.st != ST_OTHER {
                                m.st = tcp_next(m.st, dir, f);
                            }
                            m.seen = m.seen.max(now);
                            prop_assert_eq!(got, public_state(m.st));
                        }
                    }
                }
                Op::Remove(n) => {
                    let k = model.keys().find(|(k, _)| *k == n).copied();
                    if let Some(k) = k {
                        let m = model.remove(&k).unwrap();
                        prop_assert!(t.remove(m.id));
                        prop_assert!(!t.remove(m.id));
                    }
                }
                Op::Advance(d) => now += d,
                Op::Expire => {
                    let dead: Vec<_> = model.iter().filter(|(_, m)| expired(m, now)).map(|(k, _)| *k).collect();
                    for k in &dead { model.remove(k); }
                    prop_assert_eq!(t.expire(now, t.capacity()), dead.len());
                }
                Op::RemoveBackend(b) => {
                    let before = model.len();
                    model.retain(|_, m| m.e.backend != b);
                    prop_assert_eq!(t.remove_where(|e| e.backend == b), before - model.len());
                }
            }
            prop_assert_eq!(t.len(), model.len());
            let mut listed = HashSet::new();
            t.for_each_at(now, |e, _, _| { listed.insert(e.original); });
            let live: HashSet<_> = model.values().filter(|m| !expired(m, now)).map(|m| m.e.original).collect();
            prop_assert_eq!(listed, live);
        }
    }
}

// ---- stress ----

fn stress_proto(n: u32) -> u8 {
    [proto::UDP, proto::TCP, proto::TCP][(n % 3) as usize]
}

#[test]
fn stress_four_threads_no_torn_reads() {
    const FLOWS: u32 = 600;
    const OPS: u32 = 10_000;
    // Smaller than the key space, so eviction and Full happen too.
    let t = Arc::new(FlowTable::new(256, Timeouts::default()));
    let clock = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..4u32)
        .map(|tid| {
            let (t, clock, stop) = (t.clone(), clock.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9u32.wrapping_mul(tid + 1) | 1;
                let mut rnd = move || {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x
                };
                let mut hits = 0u32;
                for i in 0..OPS {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let now = if tid == 0 && i % 64 == 0 {
                        clock.fetch_add(1, Ordering::Relaxed) + 1
                    } else {
                        clock.load(Ordering::Relaxed)
                    };
                    let n = rnd() % FLOWS;
                    let e = entry_p(n, stress_proto(n));
                    let reply = rnd() % 2 == 0;
                    let key = if reply { e.reply } else { e.original };
                    match rnd() % 16 {
                        0..=6 => {
                            if let Some(h) = t.lookup(&key, now) {
                                hits += 1;
                                assert_eq!(h.entry, e, "torn or wrong entry for {key}");
                                let d = if reply {
                                    Direction::Reply
                                } else {
                                    Direction::Original
                                };
                                assert_eq!(h.dir, d);
                                let f = [SYN, SYN | ACK, ACK, FIN, RST][(rnd() % 5) as usize];
                                t.touch(h.id, h.dir, f, now);
                                if rnd() % 32 == 0 {
                                    t.remove(h.id);
                                }
                            }
                        }
                        7..=12 => {
                            if let Ok(id) = t.insert(&e, now) {
                                t.touch(id, Direction::Original, SYN, now);
                            }
                        }
                        13 => {
                            t.expire(now, 16);
                        }
                        14 if i % 512 == 0 => {
                            t.remove_where(|x| x.service == n / 7);
                        }
                        _ => t.for_each_at(now, |x, _, _| {
                            // Every listed entry is exactly one that was inserted.
                            let k = u32::from(x.reply.dport);
                            assert_eq!(*x, entry_p(k, stress_proto(k)), "torn listing");
                        }),
                    }
                }
                hits
            })
        })
        .collect();
    let hits: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    assert!(hits > 0);

    // Quiescent: the counters, the records and the index agree.
    let n = t.len();
    let mut keys = HashSet::new();
    let mut records = 0;
    t.for_each_at(0, |e, _, _| {
        records += 1;
        assert!(keys.insert(e.original), "duplicate {}", e.original);
        assert!(keys.insert(e.reply), "duplicate {}", e.reply);
    });
    assert_eq!(records, n);
    let (cap4, _) = t.capacities();
    assert_eq!(n + t.v4.free_len(), cap4);
    assert_eq!(t.v4.used_slots(), 2 * n);
    assert_eq!(t.remove_where(|_| true), n);
    assert_eq!(t.len(), 0);
    assert_eq!(t.v4.free_len(), cap4);
    assert_eq!(t.v4.used_slots(), 0);
}

/// Four threads churn their own flows in a table kept 95% full, so that
/// inserts displace slots while the other threads look their flows up: a
/// lookup must never miss a live flow (a slot on the move is found through
/// the move counter), and no insert may fail.
#[test]
fn stress_displacement_never_hides_a_live_flow() {
    const PER_THREAD: u32 = 2_000;
    const ROUNDS: u32 = 6_000;
    let cap = (4 * PER_THREAD as usize) * 100 / 95;
    let t = Arc::new(table(cap));
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4u32)
        .map(|tid| {
            let (t, barrier) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Flow numbers of this thread: tid, tid + 4, tid + 8, ...
                let flow = |i: u32| tid + 4 * i;
                let mut live: Vec<u32> = (0..PER_THREAD).map(flow).collect();
                for &n in &live {
                    let id = t.insert(&entry(n), 0).expect("initial insert");
                    t.touch(id, Direction::Original, ACK, 0);
                }
                barrier.wait();
                let mut x = 0x9E37_79B9u32.wrapping_mul(tid + 1) | 1;
                for round in 0..ROUNDS {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let k = (x as usize) % live.len();
                    let old = entry(live[k]);
                    let hit = t.lookup(&old.original, 0).expect("own flow present");
                    assert!(t.remove(hit.id));
                    let n = flow(PER_THREAD + round);
                    let id = t.insert(&entry(n), 0).expect("insert at 95% load");
                    t.touch(id, Direction::Original, ACK, 0);
                    live[k] = n;
                    // Look a few of our flows up, in both directions.
                    for j in 0..4 {
                        let e = entry(live[(k + j * 97 + round as usize) % live.len()]);
                        assert_eq!(t.lookup(&e.original, 0).map(|h| h.entry), Some(e));
                        assert_eq!(t.lookup(&e.reply, 0).map(|h| h.dir), Some(Direction::Reply));
                    }
                }
                live.len()
            })
        })
        .collect();
    let n: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(t.len(), n);
    assert_eq!(t.v4.used_slots(), 2 * n);
    assert!(
        t.v4.moves() > 0,
        "no displacement happened: the test lost its point"
    );
    eprintln!("displacements: {}", t.v4.moves());
}

// ---- a displacement frozen half-way (a preempted mover) ----

/// A table holding flow 1 (original key `k`) with `k`'s slot in its second
/// bucket if `in_b2`, else in its first; the hashed key and the record.
fn one_flow_with_slot_in(in_b2: bool) -> (Arc<FlowTable>, FlowEntry, Hashed<layout::Key4>, u32) {
    let t = Arc::new(table(64));
    // A flow whose original key has two distinct buckets (almost all do).
    let (e, h) = (1..)
        .map(entry)
        .map(|e| (e, t.v4.hashed(V4::key(&e.original).unwrap())))
        .find(|(_, h)| h.b1 != h.b2)
        .unwrap();
    let ri = t.insert(&e, 0).unwrap().index() as u32;
    let at = t.v4.slots_of(&h, ri);
    assert_eq!(at.len(), 1);
    assert_eq!(at[0].0, h.b1, "a fresh key sits in its first bucket");
    if in_b2 {
        // A whole move, as a displacement would do it.
        t.v4.begin_move();
        let c = t.v4.copy_to_other(at[0]);
        assert!(t.v4.erase_original(&c));
        t.v4.end_move();
        assert_eq!(t.v4.slots_of(&h, ri), vec![c.to]);
        assert_eq!(c.to.0, h.b2);
    }
    (t, e, h, ri)
}

fn hits(t: &FlowTable, e: &FlowEntry) -> bool {
    t.lookup(&e.original, 0).map(|h| h.entry) == Some(*e)
}

/// Every point a move can stop at (counter odd; slot copied, not erased;
/// erased, counter not bumped), in both directions: the flow is found.
#[test]
fn lookup_hits_at_every_point_of_a_frozen_move() {
    for in_b2 in [false, true] {
        let (t, e, h, ri) = one_flow_with_slot_in(in_b2);
        t.v4.begin_move();
        assert!(
            hits(&t, &e),
            "counter odd, nothing copied (from b2: {in_b2})"
        );
        let c = t.v4.copy_to_other(t.v4.slots_of(&h, ri)[0]);
        assert!(hits(&t, &e), "copied, not erased (from b2: {in_b2})");
        assert!(t.v4.erase_original(&c));
        assert!(hits(&t, &e), "erased, counter odd (from b2: {in_b2})");
        // A miss is still a miss, and still returns while the move is open.
        assert!(t.lookup(&entry(100_000).original, 0).is_none());
        t.v4.end_move();
        assert!(hits(&t, &e));
    }
}

/// The race a preempted mover makes: a lookup reads `b1` before the slot's
/// copy lands there and `b2` after its erase, and the mover then stops with
/// the counter odd. The lookup must still hit (not give up and miss): the
/// move begun before the lookup (its first pass reads `b1` again) or
/// between the lookup's two bucket reads (it retries, the counter moved).
#[test]
fn lookup_hits_when_a_move_passes_it_and_freezes() {
    for begun_before in [true, false] {
        let (t, e, h, ri) = one_flow_with_slot_in(true);
        if begun_before {
            t.v4.begin_move();
        }
        let (t2, key) = (t.clone(), (h.b1, h.b2, h.tag));
        let mut fired = false;
        store::hook::set(move |b1, b2, tag| {
            if (b1, b2, tag) != key || fired {
                return;
            }
            fired = true;
            // Between the lookup's read of b1 and its read of b2: move the
            // slot from b2 to b1 and stop before bumping the counter.
            if !begun_before {
                t2.v4.begin_move();
            }
            let c = t2.v4.copy_to_other(t2.v4.slots_of(&h, ri)[0]);
            assert!(t2.v4.erase_original(&c));
        });
        let got = t.lookup(&e.original, 0);
        store::hook::clear();
        assert_eq!(t.v4.slots_of(&h, ri).first().map(|s| s.0), Some(h.b1));
        assert_eq!(
            got.map(|h| h.entry),
            Some(e),
            "a live flow missed (move begun before the lookup: {begun_before})"
        );
        t.v4.end_move();
    }
}

/// An insert's re-scan does not give up on a frozen move: a new flow is
/// inserted (no spurious `Exists`), and a duplicate of a flow whose slot
/// moves under the re-scan is still refused.
#[test]
fn insert_rescan_through_a_frozen_move() {
    let (t, e, h, ri) = one_flow_with_slot_in(true);
    t.v4.begin_move();
    let other = t.insert(&entry(5000), 0);
    assert!(other.is_ok(), "insert during a frozen move: {other:?}");
    // Same original key as `e`, another reply key: must lose to `e`.
    let mut dup = e;
    dup.reply.dport = dup.reply.dport.wrapping_add(1);
    dup.reply.src = Addr::from_v4([198, 18, 9, 9]);
    let (t2, key) = (t.clone(), (h.b1, h.b2, h.tag));
    let mut fired = false;
    store::hook::set(move |b1, b2, tag| {
        if (b1, b2, tag) == key && !fired {
            fired = true;
            let c = t2.v4.copy_to_other(t2.v4.slots_of(&h, ri)[0]);
            assert!(t2.v4.erase_original(&c));
        }
    });
    let got = t.insert(&dup, 0);
    store::hook::clear();
    assert_eq!(got, Err(InsertError::Exists));
    t.v4.end_move();
    assert_eq!(t.lookup(&e.original, 0).map(|h| h.entry), Some(e));
    assert_eq!(t.len(), 2);
    assert_eq!(t.v4.used_slots(), 4);
}

/// Removing a flow whose slot is in the middle of a frozen move returns
/// (does not wait for the mover) and, once the mover finishes, leaves no
/// slot of it behind, whichever half of the move was done.
#[test]
fn remove_through_a_frozen_move_leaves_no_slot() {
    for erased in [false, true] {
        for in_b2 in [false, true] {
            let (t, e, h, ri) = one_flow_with_slot_in(in_b2);
            let id = t.lookup(&e.original, 0).unwrap().id;
            t.v4.begin_move();
            let c = t.v4.copy_to_other(t.v4.slots_of(&h, ri)[0]);
            if erased {
                assert!(t.v4.erase_original(&c));
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let t2 = t.clone();
            std::thread::spawn(move || tx.send(t2.remove(id)).unwrap());
            let removed = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("remove is stuck behind a frozen move");
            assert!(removed);
            if !erased {
                // The mover resumes: its erase or its undo.
                t.v4.erase_original(&c);
            }
            t.v4.end_move();
            assert_eq!(t.v4.used_slots(), 0, "erased {erased}, from b2 {in_b2}");
            assert!(t.is_empty());
        }
    }
}

// ---- early drop ----

/// Flow `n` inserted at `at` and brought to `state`.
fn put(t: &FlowTable, n: u32, state: FlowState, at: u32) -> FlowId {
    let p = match state {
        FlowState::Udp => proto::UDP,
        _ => proto::TCP,
    };
    let id = t.insert(&entry_p(n, p), at).unwrap();
    if p == proto::TCP {
        drive(t, id, state, at);
    }
    id
}

fn live(t: &FlowTable, n: u32, now: u32) -> bool {
    t.lookup(&entry_p(n, proto::TCP).original, now).is_some()
        || t.lookup(&entry_p(n, proto::UDP).original, now).is_some()
}

/// A full table of live UDP flows and a few embryonic TCP ones, younger
/// than every UDP flow: new flows evict the embryonic ones first, then
/// the oldest UDP flow; established flows never; each eviction counted.
#[test]
fn early_drop_takes_embryonic_before_live_udp() {
    // Capacity 8: the eviction sample is the whole table.
    let t = table(store::EVICT_SAMPLE);
    for n in 0..5 {
        put(&t, n, FlowState::Udp, 100 + n);
    }
    put(&t, 5, FlowState::Established, 100);
    put(&t, 6, FlowState::SynSent, 200);
    put(&t, 7, FlowState::SynRecv, 201);
    assert_eq!(t.len(), 8);
    // A SYN flood: each new half-open flow takes the oldest embryonic one,
    // never a live UDP or established flow, although those are older.
    for (i, n) in (100..110).enumerate() {
        let now = 202 + i as u32;
        put(&t, n, FlowState::SynSent, now);
        for udp in 0..5 {
            assert!(live(&t, udp, now), "live UDP flow {udp} evicted by SYN {n}");
        }
        assert!(live(&t, 5, now), "established flow evicted");
        assert!(!live(&t, 6, now), "the oldest embryonic flow stayed");
    }
    let d = t.early_drops();
    assert_eq!((d.expired, d.embryonic, d.idle), (0, 10, 0));
    // The flood ends (its flows are reset). With only live UDP and
    // established flows left, the oldest UDP flow (0) goes first.
    let est = entry_p(5, proto::TCP).original;
    assert_eq!(
        t.remove_where(|e| e.original.proto == proto::TCP && e.original != est),
        2
    );
    let left: Vec<u32> = (0..8).filter(|&n| live(&t, n, 300)).collect();
    assert_eq!(left, vec![0, 1, 2, 3, 4, 5]);
    put(&t, 200, FlowState::Udp, 300);
    put(&t, 201, FlowState::Udp, 300);
    put(&t, 202, FlowState::Udp, 300);
    assert!(!live(&t, 0, 300), "the oldest UDP flow stayed");
    assert!((1..5).all(|n| live(&t, n, 300)));
    assert_eq!(t.early_drops().idle, 1);
    // New established flows take the UDP ones, oldest first, then nothing:
    // a table of live established flows is full.
    for n in 300..307 {
        put(&t, n, FlowState::Established, 301);
        assert!(live(&t, 5, 301), "established flow evicted");
    }
    assert_eq!(
        t.insert(&entry_p(400, proto::UDP), 302),
        Err(InsertError::Full)
    );
    let d = t.early_drops();
    assert_eq!((d.expired, d.embryonic, d.idle), (0, 10, 8));
    // Expired flows go first of all, whatever their state: established
    // flow 5 (last seen at 100) is the oldest once expired.
    assert!(t.insert(&entry_p(401, proto::UDP), 1002).is_ok());
    assert!(!live(&t, 5, 1002));
    assert!((300..307).all(|n| live(&t, n, 1002)));
    assert_eq!(t.early_drops().expired, 1);
}

/// The class early drop must take a flow of `state` aged `age` as.
fn class_of(state: FlowState, age: u32, to: &Timeouts) -> Option<usize> {
    let timeout = match state {
        FlowState::Udp => to.udp,
        FlowState::SynSent => to.tcp_syn_sent,
        FlowState::SynRecv => to.tcp_syn_recv,
        FlowState::Established => to.tcp_established,
        FlowState::FinWait | FlowState::TimeWait => to.tcp_fin_wait,
        FlowState::Close => to.tcp_close,
    };
    if age > timeout {
        return Some(0);
    }
    match state {
        FlowState::Established => None,
        FlowState::Udp => Some(2),
        _ => Some(1),
    }
}

/// Seconds since a flow was last seen: mostly within every state's timeout
/// (so that live flows of several classes meet in a sample), sometimes past.
fn any_age() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0..60u32, 1 => 0..1500u32]
}

fn any_state() -> impl Strategy<Value = FlowState> {
    prop::sample::select(vec![
        FlowState::Udp,
        FlowState::SynSent,
        FlowState::SynRecv,
        FlowState::Established,
        FlowState::FinWait,
        FlowState::Close,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    /// Over random mixes of states and ages filling the sample: the victim
    /// is of the first class present (expired, embryonic, live UDP), the
    /// oldest of it; so an established or live UDP flow is never evicted
    /// while an embryonic one is in the sample, and a live established one
    /// never. Exactly one flow goes, counted under its class.
    #[test]
    fn early_drop_order(flows in prop::collection::vec((any_state(), any_age()), store::EVICT_SAMPLE)) {
        let to = Timeouts::default();
        let t = table(store::EVICT_SAMPLE);
        let now = 5000;
        for (n, &(st, age)) in flows.iter().enumerate() {
            put(&t, n as u32, st, now - age);
        }
        let classes: Vec<_> = flows.iter().map(|&(st, age)| class_of(st, age, &to)).collect();
        let got = t.insert(&entry_p(99, proto::UDP), now);
        // Which flows still hold a record (expired ones included).
        let held: HashSet<(Addr, u16)> = t.v4.each()
            .map(|(_, m, w)| V4::unpack(&w, proto::TCP, m_backend(m)).original)
            .map(|k| (k.src, k.sport))
            .collect();
        let gone: Vec<usize> = (0..flows.len())
            .filter(|&n| {
                let k = entry_p(n as u32, proto::TCP).original;
                !held.contains(&(k.src, k.sport))
            })
            .collect();
        let d = t.early_drops();
        match classes.iter().flatten().min().copied() {
            None => {
                prop_assert_eq!(got, Err(InsertError::Full));
                prop_assert!(gone.is_empty(), "gone {:?}", gone);
                prop_assert_eq!(d, EarlyDrops::default());
            }
            Some(class) => {
                prop_assert!(got.is_ok(), "{:?}", got);
                prop_assert_eq!(gone.len(), 1, "gone {:?}", gone);
                let victim = gone[0];
                prop_assert_eq!(classes[victim], Some(class), "victim {} of {:?}", victim, flows);
                let oldest = (0..flows.len())
                    .filter(|&n| classes[n] == Some(class))
                    .map(|n| flows[n].1)
                    .max();
                prop_assert_eq!(Some(flows[victim].1), oldest, "not the oldest: {:?}", flows);
                let mut want = [0; 3];
                want[class] = 1;
                prop_assert_eq!([d.expired, d.embryonic, d.idle], want);
            }
        }
    }
}

/// `ipvsadm --set`: a changed timeout applies to flows already held, in
/// both stores, and a value beyond the 24-bit clock is capped.
#[test]
fn set_timeouts_applies_to_held_flows() {
    let t = table(64);
    let udp = entry_p(1, proto::UDP);
    let mut udp6 = entry6(2);
    udp6.original.proto = proto::UDP;
    udp6.reply.proto = proto::UDP;
    t.insert(&udp, 100).unwrap();
    t.insert(&udp6, 100).unwrap();
    // Live at 100 + 200 under the default 300 s.
    assert!(t.lookup(&udp.original, 200).is_some());
    t.set_timeouts(Timeouts {
        udp: 5,
        ..Timeouts::default()
    });
    assert_eq!(t.timeouts().udp, 5);
    // Last seen at 100 (lookups do not refresh: only touch does), so both
    // are past 5 s at 210 and gone from lookups and the listing.
    assert!(t.lookup(&udp.original, 210).is_none());
    assert!(t.lookup(&udp6.original, 210).is_none());
    let mut n = 0;
    t.for_each_at(210, |_, _, _| n += 1);
    assert_eq!(n, 0);
    t.set_timeouts(Timeouts {
        udp: u32::MAX,
        ..Timeouts::default()
    });
    assert_eq!(t.timeouts().udp, store::MAX_TIMEOUT);
}

/// The fast-path mark: refused before the handshake completes and after a
/// FIN or RST, kept by every later write of the meta word (touches, state
/// changes), seen by lookups of either key, refused through a stale id,
/// and absent from the next flow of the record; the protocol beside it
/// reads back unchanged (both stores).
#[test]
fn fast_path_mark() {
    for v6 in [false, true] {
        let t = table(64);
        let e = if v6 { entry6(1) } else { entry(1) };
        let id = t.insert(&e, 10).unwrap();
        t.touch(id, Direction::Original, SYN, 10);
        assert!(!t.mark_fast_path(id, 10), "SYN_SENT");
        t.touch(id, Direction::Reply, SYN | ACK, 10);
        assert!(!t.mark_fast_path(id, 10), "SYN_RECV");
        t.touch(id, Direction::Original, ACK, 10);
        assert!(!t.lookup(&e.original, 10).unwrap().fast_path);
        assert!(t.mark_fast_path(id, 10));
        assert!(t.mark_fast_path(id, 10), "again: still marked");
        t.touch(id, Direction::Reply, ACK, 12);
        for k in [e.original, e.reply] {
            let h = t.lookup(&k, 12).unwrap();
            assert!(h.fast_path, "v6 {v6}");
            assert_eq!(h.entry.original.proto, proto::TCP);
            assert_eq!(h.state, FlowState::Established);
        }
        t.touch(id, Direction::Original, FIN | ACK, 12);
        let h = t.lookup(&e.reply, 12).unwrap();
        assert!(h.fast_path, "kept through the FIN");
        assert_eq!(h.state, FlowState::FinWait);
        assert!(!t.mark_fast_path(id, 12), "FIN_WAIT");
        assert!(t.remove(id));
        assert!(!t.mark_fast_path(id, 12), "gone");
        let id2 = t.insert(&e, 13).unwrap();
        assert_eq!(id2.index(), id.index(), "the record is reused");
        t.touch(id2, Direction::Original, ACK, 13);
        assert!(!t.mark_fast_path(id, 13), "stale id");
        assert!(
            !t.lookup(&e.original, 13).unwrap().fast_path,
            "new occupant"
        );
        // UDP flows are marked at once; RST closes TCP ones.
        let u = entry_p(2, proto::UDP);
        let iu = t.insert(&u, 13).unwrap();
        assert!(t.mark_fast_path(iu, 13));
        assert_eq!(
            t.lookup(&u.reply, 13).unwrap().entry.original.proto,
            proto::UDP
        );
        t.touch(id2, Direction::Reply, RST, 13);
        assert!(!t.mark_fast_path(id2, 13), "CLOSE");
    }
}
