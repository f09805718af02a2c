//! The lock-free store behind one record layout: records, the cuckoo index,
//! the free stack. The module docs of [`flow_table`](super) give the design
//! and the concurrency argument; this file is the mechanism.

use std::marker::PhantomData;
// The timeouts are plain std atomics even under loom: a timeout is a
// configuration value read on its own, outside the concurrency argument
// (a lookup racing `--set` ages the flow by either value), and leaving it
// out of the loom models keeps their state space as it was.
use std::sync::atomic::{AtomicU32 as StdAtomicU32, Ordering as StdOrdering};

use super::layout::Layout;
use super::sync::{fence, spin_loop, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use super::{tcp_next, Direction, InsertError, Timeouts};

/// [`Timeouts`] as relaxed atomics, so `ipvsadm --set` changes them while
/// the workers read them (one relaxed load per expiry check: the same
/// cost as the plain field it replaces).
#[derive(Debug)]
pub struct LiveTimeouts {
    tcp_syn_sent: StdAtomicU32,
    tcp_syn_recv: StdAtomicU32,
    tcp_established: StdAtomicU32,
    tcp_fin_wait: StdAtomicU32,
    tcp_close: StdAtomicU32,
    udp: StdAtomicU32,
    other: StdAtomicU32,
}

impl LiveTimeouts {
    fn new(t: Timeouts) -> Self {
        let a = StdAtomicU32::new;
        LiveTimeouts {
            tcp_syn_sent: a(t.tcp_syn_sent),
            tcp_syn_recv: a(t.tcp_syn_recv),
            tcp_established: a(t.tcp_established),
            tcp_fin_wait: a(t.tcp_fin_wait),
            tcp_close: a(t.tcp_close),
            udp: a(t.udp),
            other: a(t.other),
        }
    }

    fn get(&self) -> Timeouts {
        let l = |a: &StdAtomicU32| a.load(StdOrdering::Relaxed);
        Timeouts {
            tcp_syn_sent: l(&self.tcp_syn_sent),
            tcp_syn_recv: l(&self.tcp_syn_recv),
            tcp_established: l(&self.tcp_established),
            tcp_fin_wait: l(&self.tcp_fin_wait),
            tcp_close: l(&self.tcp_close),
            udp: l(&self.udp),
            other: l(&self.other),
        }
    }

    fn set(&self, t: Timeouts) {
        let s = |a: &StdAtomicU32, v: u32| a.store(v, StdOrdering::Relaxed);
        s(&self.tcp_syn_sent, t.tcp_syn_sent);
        s(&self.tcp_syn_recv, t.tcp_syn_recv);
        s(&self.tcp_established, t.tcp_established);
        s(&self.tcp_fin_wait, t.tcp_fin_wait);
        s(&self.tcp_close, t.tcp_close);
        s(&self.udp, t.udp);
        s(&self.other, t.other);
    }
}

/// Index slots per bucket (one 64-byte cache line of `u32`s).
pub const BUCKET_SLOTS: usize = 16;
/// Index slots allocated per record, times two: 2.5 slots for the two keys
/// of a flow, so the index is at most 80% full when every record is in use.
pub const SLOTS_PER_FLOW_X2: usize = 5;
/// Records sampled by the eviction clock hand when no record is free.
pub const EVICT_SAMPLE: usize = 8;
/// Records a store can hold: a slot keeps `record + 1` in 24 bits.
pub const MAX_RECORDS: usize = (1 << 24) - 2;

// ---- meta word: backend:16 | gen:16 | fast:1 | proto:3 | state:4 | last_seen:24 ----

const SEEN_MASK: u64 = (1 << 24) - 1;
/// Ages at or above this are taken for a clock skew between workers (a
/// `last_seen` slightly ahead of `now`), not for a flow idle for 97 days.
const AGE_LIMIT: u32 = 1 << 23;
/// Longest timeout the 24-bit `last_seen` can express.
pub const MAX_TIMEOUT: u32 = AGE_LIMIT - 1;
const GEN_MASK: u64 = 0xFFFF;
/// The meta bit that says a direction of the flow was published to the XDP
/// fast path ([`FlowTable::mark_fast_path`](super::FlowTable::mark_fast_path)):
/// the top bit of the 4-bit protocol field, whose codes (1..=5) need three.
/// Set once per flow by CAS, kept by every later meta write of the flow
/// (they change other fields only), cleared by a new occupant's fresh meta.
const FAST_BIT: u64 = 1 << 31;

pub const ST_UDP: u8 = 0;
pub const ST_SYN_SENT: u8 = 1;
pub const ST_SYN_RECV: u8 = 2;
pub const ST_ESTABLISHED: u8 = 3;
pub const ST_FIN_WAIT: u8 = 4;
pub const ST_CLOSE: u8 = 5;
/// A flow of a protocol without states (SCTP, ICMP): `other` timeout.
pub const ST_OTHER: u8 = 6;
/// A FIN from the reply side only (`ST_FIN_WAIT` is a FIN from the
/// original side only).
pub const ST_FIN_WAIT_REPLY: u8 = 7;
/// FINs seen from both sides: the connection is closed at both ends.
pub const ST_TIME_WAIT: u8 = 8;
/// The largest state of a committed record.
const ST_LAST: u8 = ST_TIME_WAIT;
const ST_PENDING: u8 = 13;
const ST_ABORTED: u8 = 14;
const ST_FREE: u8 = 15;

#[inline]
pub fn m_seen(m: u64) -> u32 {
    (m & SEEN_MASK) as u32
}
#[inline]
pub fn m_state(m: u64) -> u8 {
    ((m >> 24) & 0xF) as u8
}
#[inline]
pub fn m_proto(m: u64) -> u8 {
    ((m >> 28) & 0x7) as u8
}
/// Whether the flow was published to the fast path ([`FAST_BIT`]).
#[inline]
pub fn m_fast(m: u64) -> bool {
    m & FAST_BIT != 0
}
#[inline]
fn m_gen(m: u64) -> u64 {
    (m >> 32) & GEN_MASK
}
/// The generation of a record's meta word, as a [`FlowId`](super::FlowId)
/// keeps it: even while the record holds a flow, bumped on every publish
/// and every removal.
#[inline]
pub fn m_generation(m: u64) -> u16 {
    m_gen(m) as u16
}
#[inline]
pub fn m_backend(m: u64) -> u32 {
    (m >> 48) as u32
}
#[inline]
fn mk_meta(gen: u64, state: u8, seen: u32, proto: u8, backend: u32) -> u64 {
    (u64::from(seen) & SEEN_MASK)
        | (u64::from(state & 0xF) << 24)
        | (u64::from(proto & 0x7) << 28)
        | ((gen & GEN_MASK) << 32)
        | (u64::from(backend & 0xFFFF) << 48)
}
#[inline]
fn with_state(m: u64, st: u8) -> u64 {
    (m & !(0xF << 24)) | (u64::from(st & 0xF) << 24)
}
#[inline]
fn with_seen(m: u64, seen: u32) -> u64 {
    (m & !SEEN_MASK) | (u64::from(seen) & SEEN_MASK)
}
#[inline]
fn with_gen(m: u64, gen: u64) -> u64 {
    (m & !(GEN_MASK << 32)) | ((gen & GEN_MASK) << 32)
}
#[inline]
fn next_gen(m: u64) -> u64 {
    m_gen(m).wrapping_add(1) & GEN_MASK
}
/// Live means published (even generation) and committed (a real state).
#[inline]
pub fn is_committed(m: u64) -> bool {
    m_gen(m) & 1 == 0 && m_state(m) <= ST_LAST
}
/// Seconds since `seen`, on the 24-bit wrapping clock.
#[inline]
pub fn age(seen: u32, now: u32) -> u32 {
    let d = (now.wrapping_sub(seen) as u64 & SEEN_MASK) as u32;
    if d >= AGE_LIMIT {
        0
    } else {
        d
    }
}

/// The classes early drop evicts from, in the order it prefers them; the
/// index of [`Store::early_drops`]. Established TCP flows are in none: they
/// are never early-dropped (the module docs of [`flow_table`](super) argue
/// why).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evict {
    /// Past its state's timeout: reclaiming it loses nothing.
    Expired = 0,
    /// TCP not (or no longer) established: `SYN_SENT`, `SYN_RECV`,
    /// `FIN_WAIT`, `CLOSE`. What a SYN flood creates.
    Embryonic = 1,
    /// A live UDP, SCTP or ICMP flow (no handshake tells a live one from a
    /// spoofed one), oldest first.
    Idle = 2,
}

/// Number of [`Evict`] classes.
pub const EVICT_CLASSES: usize = 3;

/// One flow: the meta word, then the layout's `N` words.
#[repr(C)]
pub struct Record<const N: usize> {
    meta: AtomicU64,
    words: [AtomicU64; N],
}

// SAFETY: `#[repr(C)]` of std atomics only (loom's are not mapped): valid
// for every bit pattern, no drop, every access atomic. What a mapped file
// holds is validated before use (`Store::over`).
#[cfg(not(all(test, feature = "loom")))]
unsafe impl<const N: usize> crate::shm::Pod for Record<N> {}

/// Where a store's records live: the heap, or (`--flow-state`) a mapped
/// file that outlives the process.
#[cfg(not(all(test, feature = "loom")))]
type Records<const N: usize> = crate::shm::Region<Record<N>>;
#[cfg(all(test, feature = "loom"))]
type Records<const N: usize> = Box<[Record<N>]>;

/// What [`Store::over`] made of the records a previous process left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Flows kept and indexed.
    pub kept: usize,
    /// Records that held no consistent committed flow (free, pending,
    /// aborted, half-written, or bytes no layout produces).
    pub invalid: usize,
    /// Committed flows already past their timeout.
    pub expired: usize,
    /// Flows with a key another kept flow already holds.
    pub duplicate: usize,
    /// Flows for which the rebuilt index had no room.
    pub unindexed: usize,
}

impl std::ops::AddAssign for Restored {
    fn add_assign(&mut self, o: Restored) {
        self.kept += o.kept;
        self.invalid += o.invalid;
        self.expired += o.expired;
        self.duplicate += o.duplicate;
        self.unindexed += o.unindexed;
    }
}

impl<const N: usize> Record<N> {
    fn new() -> Self {
        Record {
            meta: AtomicU64::new(mk_meta(1, ST_FREE, 0, 0, 0)),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// A consistent read of a published record (even generation): its meta
    /// word and words, or `None` if it is free or kept changing.
    #[inline]
    fn read(&self) -> Option<(u64, [u64; N])> {
        for _ in 0..4 {
            let m1 = self.meta.load(Ordering::Acquire);
            if m_gen(m1) & 1 == 1 {
                return None;
            }
            let w: [u64; N] = std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            let m2 = self.meta.load(Ordering::Relaxed);
            if m_gen(m1) == m_gen(m2) {
                return Some((m2, w));
            }
        }
        None
    }
}

/// Sixteen index slots: `0` (empty) or `(record + 1) << 8 | tag`.
#[repr(C, align(64))]
pub struct Bucket(pub [AtomicU32; BUCKET_SLOTS]);

#[inline]
fn slot_val(ri: u32, tag: u32) -> u32 {
    ((ri + 1) << 8) | tag
}
#[inline]
fn slot_rec(v: u32) -> u32 {
    (v >> 8).wrapping_sub(1)
}

/// A key with its two candidate buckets and 8-bit tag.
#[derive(Clone, Copy, Debug)]
pub struct Hashed<K> {
    pub key: K,
    pub b1: usize,
    pub b2: usize,
    pub tag: u32,
    /// The record [`Store::prefetch_record`] found under the tag in the
    /// home bucket (`u32::MAX`: none): a hint the lookup validates first.
    cand: u32,
}

/// What a validated match hands to a scan's visitor.
#[derive(Clone, Copy)]
pub struct Found<const N: usize> {
    pub ri: u32,
    pub dir: Direction,
    pub meta: u64,
    pub words: [u64; N],
}

/// What a new record holds.
pub struct Fresh<const N: usize> {
    /// The layout's words.
    pub words: [u64; N],
    /// Protocol code.
    pub pcode: u8,
    /// Backend index (kept in the meta word).
    pub backend: u32,
    /// Initial state.
    pub init: u8,
}

/// The store of one layout.
pub struct Store<L: Layout<N>, const N: usize> {
    records: Records<N>,
    buckets: Box<[Bucket]>,
    /// Free stack head: `aba counter:32 | (record + 1):32`; the link to the
    /// next free record is kept in the free record's first word.
    free_head: AtomicU64,
    live: AtomicUsize,
    evict_hand: AtomicUsize,
    sweep_hand: AtomicUsize,
    /// Odd while a displacement moves an index slot between buckets;
    /// incremented by every move (a seqcount: see the module docs).
    moves: AtomicU64,
    /// Early drops by [`Evict`] class. Evictions are rare (only when the
    /// store or a key's two buckets are full), so a shared atomic costs
    /// nothing per packet.
    early_drops: [AtomicUsize; EVICT_CLASSES],
    seed: [u64; 4],
    timeouts: LiveTimeouts,
    _layout: PhantomData<L>,
}

impl<L: Layout<N>, const N: usize> Store<L, N> {
    /// Bytes of one record.
    pub const RECORD_BYTES: usize = std::mem::size_of::<Record<N>>();

    /// A store of `capacity` records (`capacity ≤ MAX_RECORDS`; 0 is
    /// allowed and holds nothing).
    pub fn new(capacity: usize, timeouts: Timeouts, seed: [u64; 4]) -> Self {
        let capacity = capacity.min(MAX_RECORDS);
        // Huge pages: every packet reads these at a random place.
        let mut records = crate::thp::alloc_huge(capacity);
        records.extend((0..capacity).map(|_| Record::new()));
        let records: Box<[Record<N>]> = records.into_boxed_slice();
        #[cfg(not(all(test, feature = "loom")))]
        let records = crate::shm::Region::Heap(records);
        let s = Self::around(records, timeouts, seed);
        // Push in reverse so that record 0 is handed out first.
        for ri in (0..capacity as u32).rev() {
            s.release(ri);
        }
        s
    }

    /// A store over `records` with an empty index and an empty free stack.
    fn around(records: Records<N>, timeouts: Timeouts, seed: [u64; 4]) -> Self {
        let capacity = records.len();
        let n_buckets = (capacity * SLOTS_PER_FLOW_X2)
            .div_ceil(2 * BUCKET_SLOTS)
            .max(1);
        let mut buckets = crate::thp::alloc_huge(n_buckets);
        buckets.extend((0..n_buckets).map(|_| Bucket(std::array::from_fn(|_| AtomicU32::new(0)))));
        let buckets: Box<[Bucket]> = buckets.into_boxed_slice();
        Store {
            records,
            buckets,
            free_head: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            evict_hand: AtomicUsize::new(0),
            sweep_hand: AtomicUsize::new(0),
            moves: AtomicU64::new(0),
            early_drops: std::array::from_fn(|_| AtomicUsize::new(0)),
            seed,
            timeouts: LiveTimeouts::new(timeouts),
            _layout: PhantomData,
        }
    }

    /// A store over records in a mapped file (`capacity ≤ MAX_RECORDS`
    /// records). `fresh`: the file was just created, every record is
    /// freed. Otherwise the records are what a previous process left, at
    /// any point of any operation (it may have been killed): each is kept
    /// only if it holds a committed flow that a layout could have written
    /// (its words unpack and pack back unchanged), not expired at `now`,
    /// whose keys no other kept flow holds; everything else is freed.
    /// The index is not in the file: it is rebuilt here from the kept
    /// records (derived data, so a displacement cut short by the kill
    /// cannot leave a stale or lost slot behind), and the free stack,
    /// counters and clock hands start anew. Fast-path marks are cleared:
    /// the XDP map they stood for died with the previous process.
    ///
    /// Call before any other thread sees the store.
    #[cfg(not(all(test, feature = "loom")))]
    pub fn over(
        records: crate::shm::MappedSlice<Record<N>>,
        fresh: bool,
        timeouts: Timeouts,
        seed: [u64; 4],
        now: u32,
    ) -> (Self, Restored) {
        let s = Self::around(crate::shm::Region::Mapped(records), timeouts, seed);
        let mut r = Restored::default();
        let mut keep = Vec::new();
        for ri in (0..s.records.len() as u32).rev() {
            let rec = &s.records[ri as usize];
            let m = rec.meta.load(Ordering::Relaxed);
            match (!fresh).then(|| s.judge(rec, m, now)).flatten() {
                Some(true) => {
                    rec.meta.store(m & !FAST_BIT, Ordering::Relaxed);
                    keep.push(ri);
                    continue;
                }
                Some(false) => r.expired += 1,
                None if !fresh && m_state(m) != ST_FREE => r.invalid += 1,
                None => {}
            }
            rec.meta
                .store(mk_meta(m_gen(m) | 1, ST_FREE, 0, 0, 0), Ordering::Relaxed);
            s.release(ri);
        }
        for ri in keep.into_iter().rev() {
            s.reindex(ri, now, &mut r);
        }
        (s, r)
    }

    /// Whether record `rec` (meta `m`) holds a consistent committed flow:
    /// `Some(true)` live, `Some(false)` expired, `None` not a flow.
    #[cfg(not(all(test, feature = "loom")))]
    fn judge(&self, rec: &Record<N>, m: u64, now: u32) -> Option<bool> {
        let pcode = m_proto(m);
        if !is_committed(m) || !(1..=5).contains(&pcode) {
            return None;
        }
        let w: [u64; N] = std::array::from_fn(|i| rec.words[i].load(Ordering::Relaxed));
        let e = L::unpack(&w, super::layout::proto_of(pcode), m_backend(m));
        if L::pack(&e) != Some(w) {
            return None;
        }
        Some(!self.is_expired(m, now))
    }

    /// Indexes kept record `ri` under both its keys, or frees it (a
    /// duplicate, or no room).
    #[cfg(not(all(test, feature = "loom")))]
    fn reindex(&self, ri: u32, now: u32, r: &mut Restored) {
        let rec = &self.records[ri as usize];
        let m = rec.meta.load(Ordering::Relaxed);
        let w: [u64; N] = std::array::from_fn(|i| rec.words[i].load(Ordering::Relaxed));
        let (ko, kr) = L::keys(&w, m_proto(m));
        let (ho, hr) = (self.hashed(ko), self.hashed(kr));
        let taken = |h: &Hashed<L::Key>| {
            self.scan(h, ri, Ordering::Relaxed, false, |f| {
                is_committed(f.meta).then_some(())
            })
            .is_some()
        };
        if taken(&ho) || taken(&hr) || ko == kr {
            r.duplicate += 1;
        } else if self.claim(&ho, ri, now) && self.claim(&hr, ri, now) {
            self.live.fetch_add(1, Ordering::Relaxed);
            r.kept += 1;
            return;
        } else {
            r.unindexed += 1;
        }
        rec.meta.store(
            with_gen(with_state(m, ST_FREE), next_gen(m)),
            Ordering::Relaxed,
        );
        self.unindex_keys(ri, &ho, &hr);
        self.release(ri);
    }

    /// Rewrites the service and backend numbers of every committed flow by
    /// `f(entry)`, or removes the flow when `f` says `None`; returns
    /// `(rewritten or unchanged, removed)`. For the start, before any
    /// other thread sees the store: the words are stored under the
    /// seqlock's odd generation all the same.
    pub fn rebind(
        &self,
        mut f: impl FnMut(&super::FlowEntry) -> Option<(u32, u32)>,
    ) -> (usize, usize) {
        let (mut kept, mut removed) = (0, 0);
        for (ri, m, w) in self.each() {
            let mut e = L::unpack(&w, super::layout::proto_of(m_proto(m)), m_backend(m));
            let Some((svc, backend)) = f(&e) else {
                removed += usize::from(self.remove_read(ri, m));
                continue;
            };
            e.service = svc;
            e.backend = backend;
            let Some(nw) = L::pack(&e) else {
                removed += usize::from(self.remove_read(ri, m));
                continue;
            };
            let rec = &self.records[ri as usize];
            let odd = with_gen(m, next_gen(m));
            if rec
                .meta
                .compare_exchange(m, odd, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            fence(Ordering::Release);
            for (a, v) in rec.words.iter().zip(nw) {
                a.store(v, Ordering::Relaxed);
            }
            let back =
                mk_meta(next_gen(odd), m_state(m), m_seen(m), m_proto(m), backend) | (m & FAST_BIT);
            rec.meta.store(back, Ordering::Release);
            kept += 1;
        }
        (kept, removed)
    }

    pub fn capacity(&self) -> usize {
        self.records.len()
    }

    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Early drops so far, indexed by [`Evict`] class.
    pub fn early_drops(&self) -> [u64; EVICT_CLASSES] {
        self.early_drops
            .each_ref()
            .map(|a| a.load(Ordering::Relaxed) as u64)
    }

    /// Bytes allocated: records and index.
    pub fn memory_bytes(&self) -> usize {
        self.records.len() * Self::RECORD_BYTES + std::mem::size_of_val(&*self.buckets)
    }

    /// The timeouts now in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts.get()
    }

    /// Replaces the timeouts; flows already held are aged by the new ones
    /// from their next lookup or sweep.
    pub fn set_timeouts(&self, t: Timeouts) {
        self.timeouts.set(t);
    }

    pub fn timeout_of(&self, st: u8) -> u32 {
        let t = &self.timeouts;
        let a = match st {
            ST_UDP => &t.udp,
            ST_SYN_SENT => &t.tcp_syn_sent,
            ST_SYN_RECV => &t.tcp_syn_recv,
            ST_ESTABLISHED => &t.tcp_established,
            ST_FIN_WAIT | ST_FIN_WAIT_REPLY | ST_TIME_WAIT => &t.tcp_fin_wait,
            ST_CLOSE => &t.tcp_close,
            _ => &t.other,
        };
        a.load(StdOrdering::Relaxed)
    }

    #[inline]
    pub fn is_expired(&self, m: u64, now: u32) -> bool {
        age(m_seen(m), now) > self.timeout_of(m_state(m))
    }

    /// Seconds until `m` expires (0 if it has).
    pub fn left(&self, m: u64, now: u32) -> u32 {
        self.timeout_of(m_state(m))
            .saturating_sub(age(m_seen(m), now))
    }

    // ---- index ----

    #[inline]
    pub fn hashed(&self, key: L::Key) -> Hashed<L::Key> {
        let h = L::hash(&key, &self.seed);
        let nb = self.buckets.len();
        let b1 = ((u128::from(h) * nb as u128) >> 64) as usize;
        let tag = (h & 0xFF) as u32;
        Hashed {
            key,
            b1,
            b2: self.alt(b1, tag),
            tag,
            cand: u32::MAX,
        }
    }

    /// The other bucket of a key in bucket `b` with `tag`: an involution
    /// (`alt(alt(b)) == b`), so a slot can be moved without reading its
    /// record (partial-key cuckoo hashing, as in cuckoo filters).
    #[inline]
    fn alt(&self, b: usize, tag: u32) -> usize {
        let nb = self.buckets.len();
        // A bucket in [0, nb) chosen by the tag (multiply-shift, no
        // division: this runs for every packet).
        let m = (u64::from(tag) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let c = ((u128::from(m) * nb as u128) >> 64) as usize;
        // (c - b) mod nb, with both below nb.
        if c >= b {
            c - b
        } else {
            c + nb - b
        }
    }

    #[inline]
    fn window(&self, h: &Hashed<L::Key>) -> impl Iterator<Item = &AtomicU32> {
        let second = (h.b2 != h.b1).then(|| self.buckets[h.b2].0.iter());
        self.buckets[h.b1]
            .0
            .iter()
            .chain(second.into_iter().flatten())
    }

    /// Asks the CPU for the home bucket of `h` (most keys live there; the
    /// other bucket is asked for by [`Store::prefetch_record`] if needed).
    /// Fetching both would spend fill buffers, the scarce resource when a
    /// whole burst prefetches at once, on a line rarely read.
    #[inline]
    pub fn prefetch(&self, h: &Hashed<L::Key>) {
        crate::prefetch::prefetch(&self.buckets[h.b1]);
    }

    /// The second stage of burst prefetching, once the home bucket is in
    /// cache: asks for the record of the first slot whose tag matches (both
    /// lines if it straddles two), or for the second bucket if none does.
    #[inline]
    pub fn prefetch_record(&self, h: &mut Hashed<L::Key>) {
        for slot in self.buckets[h.b1].0.iter() {
            let v = slot.load(Ordering::Relaxed);
            if v != 0 && v & 0xFF == h.tag {
                h.cand = slot_rec(v);
                if let Some(r) = self.records.get(slot_rec(v) as usize) {
                    crate::prefetch::prefetch(&r.meta);
                    let start = std::ptr::from_ref(r) as usize;
                    if start % 64 + Self::RECORD_BYTES > 64 {
                        if let Some(last) = r.words.last() {
                            crate::prefetch::prefetch(last);
                        }
                    }
                }
                return;
            }
        }
        if h.b2 != h.b1 {
            crate::prefetch::prefetch(&self.buckets[h.b2]);
        }
    }

    /// The buckets a pass over `h` reads, in order: `b1`, `b2`, and `b1`
    /// again if `moving` (a displacement is in progress: see
    /// [`Store::settled`]).
    #[inline]
    fn pass_buckets(h: &Hashed<L::Key>, moving: bool) -> impl Iterator<Item = usize> {
        let two = h.b2 != h.b1;
        [
            Some(h.b1),
            two.then_some(h.b2),
            (two && moving).then_some(h.b1),
        ]
        .into_iter()
        .flatten()
    }

    /// Calls `f` for every record (other than `skip`) indexed under `h`
    /// whose key equals `h`'s, with a validated read, until `f` returns
    /// `Some`; reads `b1` a second time if `moving`.
    fn scan<R>(
        &self,
        h: &Hashed<L::Key>,
        skip: u32,
        order: Ordering,
        moving: bool,
        mut f: impl FnMut(&Found<N>) -> Option<R>,
    ) -> Option<R> {
        let kp = L::key_proto(&h.key);
        for (i, b) in Self::pass_buckets(h, moving).enumerate() {
            #[cfg(all(test, not(feature = "loom")))]
            if i > 0 {
                hook::between_buckets(h.b1, h.b2, h.tag);
            }
            #[cfg(not(all(test, not(feature = "loom"))))]
            let _ = i;
            if let Some(r) = self.scan_bucket(b, h, kp, skip, order, &mut f) {
                return Some(r);
            }
        }
        None
    }

    #[inline]
    fn scan_bucket<R>(
        &self,
        b: usize,
        h: &Hashed<L::Key>,
        kp: u8,
        skip: u32,
        order: Ordering,
        f: &mut impl FnMut(&Found<N>) -> Option<R>,
    ) -> Option<R> {
        for slot in self.buckets[b].0.iter() {
            let v = slot.load(order);
            if v == 0 || v & 0xFF != h.tag {
                continue;
            }
            let ri = slot_rec(v);
            if ri == skip {
                continue;
            }
            let Some((meta, words)) = self.records.get(ri as usize).and_then(Record::read) else {
                continue;
            };
            if m_proto(meta) != kp {
                continue;
            }
            let Some(dir) = L::matches(&words, &h.key) else {
                continue;
            };
            let r = f(&Found {
                ri,
                dir,
                meta,
                words,
            });
            if r.is_some() {
                return r;
            }
        }
        None
    }

    /// Runs the pass `f(moving)` until it finds something (`Some`) or no
    /// displacement began or ended while it ran; `moving` says a move was
    /// in progress when the pass began, so the pass must read `b1`, `b2`,
    /// `b1` ([`Store::pass_buckets`]). A miss is then final: the module docs
    /// of [`flow_table`](super) prove that such a pass sees every slot of
    /// its key, the one in flight included. Never gives up on a mover that
    /// is slow or preempted (the counter stays odd and unchanged, so the
    /// first pass decides); retries only when a move ended meanwhile, i.e.
    /// when another thread made progress.
    #[inline]
    fn settled<R>(&self, order: Ordering, mut f: impl FnMut(bool) -> Option<R>) -> Option<R> {
        loop {
            let mv = self.moves.load(order);
            if let Some(r) = f(mv & 1 == 1) {
                return Some(r);
            }
            // The seqlock reader's check: had `f` seen any slot write of a
            // later move, this fence makes that move's count visible.
            fence(Ordering::Acquire);
            if self.moves.load(Ordering::Relaxed) == mv {
                return None;
            }
        }
    }

    /// The live flow with key `h`.
    #[inline]
    pub fn lookup<R>(
        &self,
        h: &Hashed<L::Key>,
        now: u32,
        hit: impl Fn(&Found<N>) -> R,
    ) -> Option<R> {
        // `hit` is applied where the match is made, so that the record's
        // words go straight into the caller's result instead of through an
        // `Option<Found>` in memory (a store-forwarding stall per packet).
        if h.cand != u32::MAX {
            if let Some(r) = self.try_candidate(h, now, &hit) {
                return Some(r);
            }
        }
        self.lookup_scan(h, now, &hit)
    }

    /// The prefetched candidate record, if it is the live flow of `h`
    /// (validated like any read: the slot was only a hint).
    #[inline]
    fn try_candidate<R>(
        &self,
        h: &Hashed<L::Key>,
        now: u32,
        hit: &impl Fn(&Found<N>) -> R,
    ) -> Option<R> {
        let (meta, words) = self.records.get(h.cand as usize)?.read()?;
        if m_proto(meta) != L::key_proto(&h.key)
            || !is_committed(meta)
            || self.is_expired(meta, now)
        {
            return None;
        }
        let dir = L::matches(&words, &h.key)?;
        Some(hit(&Found {
            ri: h.cand,
            dir,
            meta,
            words,
        }))
    }

    /// The scan of a lookup: a hit, or a miss only when no live flow has
    /// the key (a slot on the move is found: [`Store::settled`]). The common
    /// case is one pass over `b1` (and `b2` on a miss) and two loads of the
    /// move counter.
    fn lookup_scan<R>(
        &self,
        h: &Hashed<L::Key>,
        now: u32,
        hit: &impl Fn(&Found<N>) -> R,
    ) -> Option<R> {
        self.settled(Ordering::Acquire, |moving| {
            self.scan(h, u32::MAX, Ordering::Acquire, moving, |f| {
                (is_committed(f.meta) && !self.is_expired(f.meta, now)).then(|| hit(f))
            })
        })
    }

    // ---- insert ----

    /// Inserts a record `new` under keys `ho` (original) and `hr` (reply).
    pub fn insert(
        &self,
        ho: &Hashed<L::Key>,
        hr: &Hashed<L::Key>,
        new: Fresh<N>,
        now: u32,
    ) -> Result<(u32, u16), InsertError> {
        let Fresh {
            words,
            pcode,
            backend,
            init,
        } = new;
        // Fast path for a reply key already taken (the common case when a
        // caller probes SNAT ports). The original key is not checked here:
        // callers insert after a lookup of it missed, and the re-scan below
        // decides every race anyway.
        if self.precheck(hr, now) {
            return Err(InsertError::Exists);
        }
        let ri = self.alloc(now)?;
        let rec = &self.records[ri as usize];
        let old = rec.meta.load(Ordering::Acquire);
        debug_assert!(m_gen(old) & 1 == 1);
        // Seqlock write: the generation is already odd (record free).
        fence(Ordering::Release);
        for (a, w) in rec.words.iter().zip(words) {
            a.store(w, Ordering::Relaxed);
        }
        let gen = next_gen(old);
        let pending = mk_meta(gen, ST_PENDING, now, pcode, backend);
        rec.meta.store(pending, Ordering::Release);

        if !(self.claim(ho, ri, now) && self.claim(hr, ri, now)) {
            self.withdraw(ri, ho, hr);
            return Err(InsertError::Full);
        }
        if !(self.rescan(ho, ri, now) && self.rescan(hr, ri, now)) {
            self.withdraw(ri, ho, hr);
            return Err(InsertError::Exists);
        }
        self.live.fetch_add(1, Ordering::Relaxed);
        if rec
            .meta
            .compare_exchange(
                pending,
                with_state(pending, init),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            // A competitor with a lower record index aborted us.
            self.live.fetch_sub(1, Ordering::Relaxed);
            self.withdraw(ri, ho, hr);
            return Err(InsertError::Exists);
        }
        Ok((ri, m_generation(pending)))
    }

    /// Whether a live (or pending) flow holds `h`'s key; reclaims expired
    /// ones on the way.
    fn precheck(&self, h: &Hashed<L::Key>, now: u32) -> bool {
        self.scan(h, u32::MAX, Ordering::Acquire, false, |f| {
            if m_state(f.meta) == ST_PENDING {
                Some(())
            } else if is_committed(f.meta) {
                if self.is_expired(f.meta, now) {
                    self.reclaim_expired(f.ri, f.meta, now);
                    None
                } else {
                    Some(())
                }
            } else {
                None
            }
        })
        .is_some()
    }

    /// After claiming our slots: whether we still may commit `ri`. Settled
    /// like a lookup ([`Store::settled`]), so a competitor's slot on the
    /// move is never missed, and a stalled mover never turns the answer
    /// into a spurious [`InsertError::Exists`].
    fn rescan(&self, h: &Hashed<L::Key>, ri: u32, now: u32) -> bool {
        self.settled(Ordering::SeqCst, |moving| {
            self.rescan_once(h, ri, now, moving).then_some(())
        })
        .is_none()
    }

    /// One pass of [`Store::rescan`]: true if a competitor wins.
    fn rescan_once(&self, h: &Hashed<L::Key>, ri: u32, now: u32, moving: bool) -> bool {
        self.scan(h, ri, Ordering::SeqCst, moving, |f| match m_state(f.meta) {
            ST_PENDING if f.ri < ri => Some(()),
            ST_PENDING => {
                let rec = &self.records[f.ri as usize];
                let aborted = with_state(f.meta, ST_ABORTED);
                match rec.meta.compare_exchange(
                    f.meta,
                    aborted,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => None,
                    // It committed first (and we lose), or it is gone.
                    Err(cur) if m_gen(cur) == m_gen(f.meta) && is_committed(cur) => Some(()),
                    Err(_) => None,
                }
            }
            ST_ABORTED | ST_FREE => None,
            _ if self.is_expired(f.meta, now) => {
                self.reclaim_expired(f.ri, f.meta, now);
                None
            }
            _ => Some(()),
        })
        .is_some()
    }

    fn try_claim_in(&self, b: usize, val: u32) -> bool {
        self.buckets[b].0.iter().any(|slot| {
            slot.load(Ordering::Relaxed) == 0
                && slot
                    .compare_exchange(0, val, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// Claims a slot for record `ri` under `h`: in its first bucket, else
    /// its second, else by moving another slot to its other bucket, else by
    /// early-dropping a flow of the two buckets.
    fn claim(&self, h: &Hashed<L::Key>, ri: u32, now: u32) -> bool {
        let val = slot_val(ri, h.tag);
        for attempt in 0..3 {
            if self.try_claim_in(h.b1, val) || (h.b2 != h.b1 && self.try_claim_in(h.b2, val)) {
                return true;
            }
            match attempt {
                0 if self.displace(h, val) => return true,
                1 => {
                    let cands = self
                        .window(h)
                        .map(|s| s.load(Ordering::Acquire))
                        .filter(|&v| v != 0 && slot_rec(v) != ri)
                        .map(slot_rec);
                    match self.early_drop(cands, now) {
                        Some(victim) => self.release(victim),
                        None => return false,
                    }
                }
                _ => {}
            }
        }
        false
    }

    /// Makes room in `h`'s buckets by moving one slot to its other bucket,
    /// and puts `val` in its place. Moves are serialised by the `moves`
    /// counter (odd while moving), which readers check to retry a miss.
    fn displace(&self, h: &Hashed<L::Key>, val: u32) -> bool {
        let mut mv = self.moves.load(Ordering::Relaxed);
        let mut spins = 0u32;
        loop {
            if mv & 1 == 0 {
                match self.moves.compare_exchange_weak(
                    mv,
                    mv + 1,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(cur) => mv = cur,
                }
            } else {
                spins += 1;
                if spins > 4096 {
                    return false;
                }
                spin_loop();
                mv = self.moves.load(Ordering::Relaxed);
            }
        }
        fence(Ordering::SeqCst);
        let done = self.move_one(h, val);
        self.moves.fetch_add(1, Ordering::SeqCst);
        done
    }

    fn move_one(&self, h: &Hashed<L::Key>, val: u32) -> bool {
        let buckets = if h.b2 == h.b1 {
            [h.b1, usize::MAX]
        } else {
            [h.b1, h.b2]
        };
        for b in buckets.into_iter().filter(|&b| b != usize::MAX) {
            for slot in self.buckets[b].0.iter() {
                let v = slot.load(Ordering::SeqCst);
                if v == 0 {
                    if slot
                        .compare_exchange(0, val, Ordering::SeqCst, Ordering::Relaxed)
                        .is_ok()
                    {
                        return true;
                    }
                    continue;
                }
                let o = self.alt(b, v & 0xFF);
                if o == b {
                    continue;
                }
                for dst in self.buckets[o].0.iter() {
                    if Self::copy_slot(dst, v) {
                        if Self::relocate(slot, dst, v, val) {
                            return true;
                        }
                        break;
                    }
                }
            }
        }
        false
    }

    /// The first half of a move: copies slot value `v` into the empty
    /// `dst` of its other bucket; false if `dst` was taken meanwhile.
    #[inline]
    fn copy_slot(dst: &AtomicU32, v: u32) -> bool {
        dst.load(Ordering::Relaxed) == 0
            && dst
                .compare_exchange(0, v, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
    }

    /// The second half: replaces the original `slot` (still `v`) by `val`,
    /// the slot it was moved away for. If the flow was unindexed meanwhile
    /// (the original is no longer `v`), undoes the copy instead and returns
    /// false. Either way at most one of the two holds `v` afterwards, and
    /// none if the owner cleared one of them.
    #[inline]
    fn relocate(slot: &AtomicU32, dst: &AtomicU32, v: u32, val: u32) -> bool {
        if slot
            .compare_exchange(v, val, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            return true;
        }
        let _ = dst.compare_exchange(v, 0, Ordering::SeqCst, Ordering::Relaxed);
        false
    }

    // ---- records ----

    /// Pops a free record, or evicts one of [`EVICT_SAMPLE`] records under
    /// the clock hand.
    fn alloc(&self, now: u32) -> Result<u32, InsertError> {
        if let Some(ri) = self.pop_free() {
            return Ok(ri);
        }
        let n = self.records.len();
        if n == 0 {
            return Err(InsertError::Full);
        }
        let start = self.evict_hand.fetch_add(EVICT_SAMPLE, Ordering::Relaxed);
        let cands = (0..EVICT_SAMPLE.min(n)).map(|i| (start.wrapping_add(i) % n) as u32);
        if let Some(ri) = self.early_drop(cands, now) {
            return Ok(ri);
        }
        self.pop_free().ok_or(InsertError::Full)
    }

    fn pop_free(&self) -> Option<u32> {
        let mut h = self.free_head.load(Ordering::Acquire);
        loop {
            let top = h as u32;
            if top == 0 {
                return None;
            }
            let ri = top - 1;
            // May read a link another thread is overwriting: the counter
            // then changed too, and the CAS fails.
            let next = self.records[ri as usize].words[0].load(Ordering::Relaxed) as u32;
            let new = (((h >> 32) + 1) << 32) | u64::from(next);
            match self
                .free_head
                .compare_exchange_weak(h, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(ri),
                Err(cur) => h = cur,
            }
        }
    }

    /// Pushes a record we own (odd generation) onto the free stack.
    fn release(&self, ri: u32) {
        let link = &self.records[ri as usize].words[0];
        let mut h = self.free_head.load(Ordering::Relaxed);
        loop {
            link.store(u64::from(h as u32), Ordering::Relaxed);
            let new = (((h >> 32) + 1) << 32) | u64::from(ri + 1);
            match self
                .free_head
                .compare_exchange_weak(h, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(cur) => h = cur,
            }
        }
    }

    /// The class early drop would evict committed flow `m` as, or `None`
    /// if it spares it (a live established TCP flow).
    fn evict_class(&self, m: u64, now: u32) -> Option<Evict> {
        if self.is_expired(m, now) {
            return Some(Evict::Expired);
        }
        match m_state(m) {
            ST_SYN_SENT | ST_SYN_RECV | ST_FIN_WAIT | ST_FIN_WAIT_REPLY | ST_TIME_WAIT
            | ST_CLOSE => Some(Evict::Embryonic),
            ST_ESTABLISHED => None,
            _ => Some(Evict::Idle),
        }
    }

    /// Among `cands`, claims the best victim: the first [`Evict`] class
    /// present, oldest first within it. The victim's slots are cleared and
    /// its class counted; the caller owns the record (free generation) and
    /// must reuse or release it.
    fn early_drop(&self, cands: impl Iterator<Item = u32>, now: u32) -> Option<u32> {
        // (class, -age, record, meta): the smallest (class, -age) wins.
        let mut best: Option<(Evict, u32, u32, u64)> = None;
        for ri in cands {
            let Some(rec) = self.records.get(ri as usize) else {
                continue;
            };
            let m = rec.meta.load(Ordering::Acquire);
            if !is_committed(m) {
                continue;
            }
            let Some(class) = self.evict_class(m, now) else {
                continue;
            };
            let key = (class, u32::MAX - age(m_seen(m), now), ri, m);
            if !matches!(best, Some(b) if (b.0, b.1) <= (key.0, key.1)) {
                best = Some(key);
            }
        }
        let (class, _, ri, m) = best?;
        if !self.kill(ri, m) {
            return None;
        }
        self.early_drops[class as usize].fetch_add(1, Ordering::Relaxed);
        Some(ri)
    }

    /// Claims record `ri` if its meta is still exactly `m` (so a concurrent
    /// touch makes the claim fail) and clears its slots.
    fn kill(&self, ri: u32, m: u64) -> bool {
        let rec = &self.records[ri as usize];
        let dead = with_gen(with_state(m, ST_FREE), next_gen(m));
        if rec
            .meta
            .compare_exchange(m, dead, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.unindex(ri, m_proto(m));
        self.live.fetch_sub(1, Ordering::Relaxed);
        true
    }

    fn reclaim_expired(&self, ri: u32, m: u64, now: u32) -> bool {
        if is_committed(m) && self.is_expired(m, now) && self.kill(ri, m) {
            self.release(ri);
            true
        } else {
            false
        }
    }

    /// Clears the index slots of a record we own (odd generation).
    fn unindex(&self, ri: u32, pcode: u8) {
        let rec = &self.records[ri as usize];
        let w: [u64; N] = std::array::from_fn(|i| rec.words[i].load(Ordering::Relaxed));
        let (ko, kr) = L::keys(&w, pcode);
        self.unindex_keys(ri, &self.hashed(ko), &self.hashed(kr));
    }

    /// Clears every slot of `ri` under both keys. Settled like a lookup
    /// ([`Store::settled`]): a pass during a move reads `b1`, `b2`, `b1`
    /// and so finds the slot in flight; a move that ended meanwhile makes
    /// it run again. A stalled mover does not stall the caller.
    fn unindex_keys(&self, ri: u32, ho: &Hashed<L::Key>, hr: &Hashed<L::Key>) {
        self.settled(Ordering::SeqCst, |moving| {
            for h in [ho, hr] {
                // A key has one slot, plus its copy while a move copies it:
                // clearing either is enough, because the mover's erase of
                // the original then fails and it undoes its copy, or its
                // erase replaces the original (see `Store::relocate`).
                let val = slot_val(ri, h.tag);
                'key: for b in Self::pass_buckets(h, moving) {
                    for slot in self.buckets[b].0.iter() {
                        if slot.load(Ordering::SeqCst) == val
                            && slot
                                .compare_exchange(val, 0, Ordering::SeqCst, Ordering::Relaxed)
                                .is_ok()
                        {
                            break 'key;
                        }
                    }
                }
            }
            None::<()>
        });
    }

    /// Backs out our own uncommitted record.
    fn withdraw(&self, ri: u32, ho: &Hashed<L::Key>, hr: &Hashed<L::Key>) {
        let rec = &self.records[ri as usize];
        let m = rec.meta.load(Ordering::Acquire);
        // Only an abort (PENDING → ABORTED, same generation) can race this.
        rec.meta.store(
            with_gen(with_state(m, ST_FREE), next_gen(m)),
            Ordering::Release,
        );
        self.unindex_keys(ri, ho, hr);
        self.release(ri);
    }

    /// See [`FlowTable::touch`](super::FlowTable::touch); `None` if the
    /// flow of generation `gen` is gone (the record is free or holds
    /// another flow) or expired.
    pub fn touch(&self, ri: u32, gen: u16, dir: Direction, tcp_flags: u8, now: u32) -> Option<u8> {
        let rec = self.records.get(ri as usize)?;
        let mut m = rec.meta.load(Ordering::Acquire);
        loop {
            // The generation is part of the CAS'd word: a removal and reuse
            // between this check and the CAS changes it, and the CAS fails.
            if m_generation(m) != gen || !is_committed(m) || self.is_expired(m, now) {
                return None;
            }
            let st = m_state(m);
            let next = if st == ST_UDP || st == ST_OTHER {
                st
            } else {
                tcp_next(st, dir, tcp_flags)
            };
            let seen = m_seen(m);
            // Keep a `last_seen` that another worker set a second ahead.
            let seen = if age(seen, now) == 0 {
                seen
            } else {
                now & SEEN_MASK as u32
            };
            let nm = with_seen(with_state(m, next), seen);
            if nm == m {
                return Some(st);
            }
            match rec
                .meta
                .compare_exchange_weak(m, nm, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(next),
                Err(cur) => m = cur,
            }
        }
    }

    /// See [`FlowTable::mark_fast_path`](super::FlowTable::mark_fast_path).
    pub fn mark_fast(&self, ri: u32, gen: u16, now: u32) -> bool {
        let Some(rec) = self.records.get(ri as usize) else {
            return false;
        };
        let mut m = rec.meta.load(Ordering::Acquire);
        loop {
            // As in `touch`: the generation and the state are part of the
            // CAS'd word, so a FIN, an RST or a removal that lands first
            // makes the CAS fail and the re-check refuse.
            if m_generation(m) != gen || !is_committed(m) || self.is_expired(m, now) {
                return false;
            }
            if !matches!(m_state(m), ST_ESTABLISHED | ST_UDP) {
                return false;
            }
            if m_fast(m) {
                return true;
            }
            match rec.meta.compare_exchange_weak(
                m,
                m | FAST_BIT,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(cur) => m = cur,
            }
        }
    }

    /// Removes the flow of generation `gen` in record `ri`; false if it
    /// was already gone (even if the record holds another flow now).
    pub fn remove(&self, ri: u32, gen: u16) -> bool {
        let Some(rec) = self.records.get(ri as usize) else {
            return false;
        };
        let m = rec.meta.load(Ordering::Acquire);
        m_generation(m) == gen && self.remove_read(ri, m)
    }

    /// Sweeps up to `max_records` records from the clock hand.
    pub fn expire(&self, now: u32, max_records: usize) -> usize {
        let n = self.records.len();
        let todo = max_records.min(n);
        if todo == 0 {
            return 0;
        }
        let start = self.sweep_hand.fetch_add(todo, Ordering::Relaxed);
        (0..todo)
            .filter(|i| {
                let ri = (start.wrapping_add(*i) % n) as u32;
                let m = self.records[ri as usize].meta.load(Ordering::Acquire);
                self.reclaim_expired(ri, m, now)
            })
            .count()
    }

    /// Every committed record: `(index, meta, words)`, consistent each.
    pub fn each(&self) -> impl Iterator<Item = (u32, u64, [u64; N])> + '_ {
        self.records.iter().enumerate().filter_map(|(ri, rec)| {
            let (m, w) = rec.read()?;
            is_committed(m).then_some((ri as u32, m, w))
        })
    }

    /// Removes record `ri` read as `m` if it still holds the same flow
    /// (retrying while only its state or `last_seen` change).
    pub fn remove_read(&self, ri: u32, mut m: u64) -> bool {
        let rec = &self.records[ri as usize];
        let gen = m_gen(m);
        while is_committed(m) && m_gen(m) == gen {
            if self.kill(ri, m) {
                self.release(ri);
                return true;
            }
            m = rec.meta.load(Ordering::Acquire);
        }
        false
    }

    /// Free records (walks the stack; for tests on a quiescent store).
    #[cfg(all(test, not(feature = "loom")))]
    pub fn free_len(&self) -> usize {
        let mut n = 0;
        let mut top = self.free_head.load(Ordering::Acquire) as u32;
        while top != 0 && n <= self.records.len() {
            n += 1;
            top = self.records[top as usize - 1].words[0].load(Ordering::Relaxed) as u32;
        }
        n
    }

    /// Displacements done so far.
    #[cfg(all(test, not(feature = "loom")))]
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed) / 2
    }

    /// Occupied index slots (for tests on a quiescent store).
    #[cfg(all(test, not(feature = "loom")))]
    pub fn used_slots(&self) -> usize {
        self.buckets
            .iter()
            .flat_map(|b| b.0.iter())
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count()
    }
}

/// Test hooks: code a test runs inside a scan, between two of its bucket
/// reads, to interleave a displacement with it deterministically.
#[cfg(all(test, not(feature = "loom")))]
pub mod hook {
    use std::cell::RefCell;

    /// Called with the scanned key's `(b1, b2, tag)`.
    type Hook = Box<dyn FnMut(usize, usize, u32)>;

    thread_local! {
        static BETWEEN: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Runs `f` between the bucket reads of every scan on this thread until
    /// [`clear`] (not inside itself: scans that `f` makes do not call it).
    pub fn set(f: impl FnMut(usize, usize, u32) + 'static) {
        BETWEEN.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    /// Removes the hook of this thread.
    pub fn clear() {
        BETWEEN.with(|h| *h.borrow_mut() = None);
    }

    pub(super) fn between_buckets(b1: usize, b2: usize, tag: u32) {
        let Some(mut f) = BETWEEN.with(|h| h.borrow_mut().take()) else {
            return;
        };
        f(b1, b2, tag);
        BETWEEN.with(|h| {
            let mut h = h.borrow_mut();
            if h.is_none() {
                *h = Some(f);
            }
        });
    }
}

/// A displacement taken apart, so that a test can stop it half-way (the
/// counter odd, a slot copied and not yet erased, or erased and the counter
/// not yet bumped), as a preempted mover would leave it. Each step is the
/// real mover's code.
#[cfg(all(test, not(feature = "loom")))]
impl<L: Layout<N>, const N: usize> Store<L, N> {
    /// Every `(bucket, index)` holding the slot of record `ri` under `h`.
    pub fn slots_of(&self, h: &Hashed<L::Key>, ri: u32) -> Vec<(usize, usize)> {
        let val = slot_val(ri, h.tag);
        let mut at = Vec::new();
        for b in Self::pass_buckets(h, false) {
            for (i, slot) in self.buckets[b].0.iter().enumerate() {
                if slot.load(Ordering::SeqCst) == val {
                    at.push((b, i));
                }
            }
        }
        at
    }

    /// Opens a move, as [`Store::displace`] does: the counter goes odd.
    pub fn begin_move(&self) {
        let mv = self.moves.fetch_add(1, Ordering::SeqCst);
        assert_eq!(mv & 1, 0, "a move is already open");
    }

    /// Closes the open move: the counter goes even.
    pub fn end_move(&self) {
        let mv = self.moves.fetch_add(1, Ordering::SeqCst);
        assert_eq!(mv & 1, 1, "no move is open");
    }

    /// The move's copy: slot `(b, i)` into the first free slot of its other
    /// bucket.
    pub fn copy_to_other(&self, (b, i): (usize, usize)) -> Copied {
        let v = self.buckets[b].0[i].load(Ordering::SeqCst);
        assert_ne!(v, 0, "nothing to move");
        let o = self.alt(b, v & 0xFF);
        assert_ne!(o, b, "the slot has no other bucket");
        for (j, dst) in self.buckets[o].0.iter().enumerate() {
            if Self::copy_slot(dst, v) {
                return Copied {
                    from: (b, i),
                    to: (o, j),
                    v,
                };
            }
        }
        panic!("bucket {o} is full");
    }

    /// The move's erase of the original (replaced by an empty slot here),
    /// or the undo of the copy if the original changed; true if erased.
    pub fn erase_original(&self, c: &Copied) -> bool {
        let slot = &self.buckets[c.from.0].0[c.from.1];
        let dst = &self.buckets[c.to.0].0[c.to.1];
        Self::relocate(slot, dst, c.v, 0)
    }
}

/// A slot copied by [`Store::copy_to_other`], not yet erased.
#[cfg(all(test, not(feature = "loom")))]
#[derive(Clone, Copy, Debug)]
pub struct Copied {
    /// The original: `(bucket, index)`.
    pub from: (usize, usize),
    /// The copy.
    pub to: (usize, usize),
    /// The slot value.
    pub v: u32,
}
