//! Connection tracking shared by every worker thread, without a lock on the
//! packet path.
//!
//! # Why one shared table
//!
//! Under NAT the 5-tuple of a reply differs from its request's, so RSS may
//! deliver the reply to another queue, hence another worker, than the one
//! that created the flow. Steering each flow back to an owner needs a
//! cross-core hand-off per packet; a shared table lets every worker find every
//! flow directly. The cost is that the table must be safe for concurrent
//! readers and writers, and the design below keeps that cheap: lookups never
//! write shared memory, and per-packet [`FlowTable::touch`] writes at most
//! once per flow per second.
//!
//! # Layout
//!
//! * **Records** (`Box<[Record]>`, exactly `capacity` of them, 104 bytes each):
//!   one per flow, holding *both* directions — the [`FlowEntry`] packed into
//!   twelve `AtomicU64` words (keys, next hops, service, backend) — and one
//!   `AtomicU64` *meta* word: `generation:24 | state:8 | last_seen:32`.
//!   All fields are atomics, so a reader racing a writer reads stale or mixed
//!   words but never has undefined behaviour; the generation tells it whether
//!   what it read is consistent (a seqlock).
//! * **Index** (`Box<[Bucket]>`): buckets of 8 `AtomicU64` slots, one 64-byte
//!   cache line each. A slot is `0` (empty) or `tag:32 | dir:1 | record+1:31`,
//!   where the tag is 32 bits of the key's hash. Each live flow has two slots,
//!   one for its original key and one for its reply key. A key may sit in its
//!   home bucket or the next two ([`PROBE_BUCKETS`] = 3: three adjacent
//!   lines, 24 slots). A key whose window is full is refused even when
//!   records are free. With the record table half full (a window holds 6
//!   keys on average) that is about 1e-8 of inserts; with every record in
//!   use (12 on average) about 1e-4 were refused in a 1e7-flow run (counted
//!   as `drop_flow_table_full`): size `--flow-capacity` with headroom. A
//!   two-bucket window refused about 1e-6 already at half load.
//!   The index has [`SLOTS_PER_FLOW`] = 4 slots per record, so it is at most
//!   half full when every record is in use.
//! * **Free list**: a crossbeam [`ArrayQueue`] of record indices, filled at
//!   construction. Nothing is allocated after [`FlowTable::new`].
//!
//! # Byte cost per flow
//!
//! [`FlowTable::BYTES_PER_FLOW`] = record (104) + 4 index slots × 8 (32) +
//! one free-queue slot (crossbeam's `Slot<u32>`: a `usize` stamp and the
//! value, 16) = **152 bytes**. One million flows take 152 MB.
//!
//! # Who writes what
//!
//! * The words of a record are written only by the thread that popped it from
//!   the free list (or evicted it), while the generation is odd (free).
//! * The meta word is changed only by compare-and-swap: an inserter publishes
//!   (odd → even generation, state `PENDING`), commits (`PENDING` → a real
//!   state) or, after losing a race, frees its own record; another inserter
//!   may abort a competing `PENDING` record; [`FlowTable::touch`] advances
//!   state and `last_seen` keeping the generation; removal, expiry and
//!   eviction claim a record by moving its generation from even to odd. The
//!   winner of that CAS alone clears the record's index slots and returns it
//!   to the free list, so two workers expiring the same flow cannot free it
//!   twice, and an expiry racing a refreshing `touch` is decided atomically by
//!   whichever CAS lands first on the same word.
//! * Index slots go from empty to a value by CAS (an inserter claiming a free
//!   slot) and back to empty by CAS (the owner of a dead record).
//!
//! # Memory orderings
//!
//! * Reader (lookup, listing): `meta.load(Acquire)`, relaxed loads of the
//!   words, `fence(Acquire)`, `meta.load(Relaxed)`; the read is accepted only
//!   if both loads show the same even generation (the classic seqlock reader).
//! * Writer: the generation became odd when the previous occupant was removed
//!   (a CAS before the push to the free queue, whose pop synchronises with it);
//!   the inserter issues `fence(Release)` before its relaxed word stores, so a
//!   reader that sees any new word also sees the odd (or later) generation on
//!   its second load and discards the read. The even generation is published
//!   with `Release`, so a reader that sees it also sees every word.
//! * Slots are claimed with `SeqCst` CAS and re-scanned with `SeqCst` loads
//!   (below); lookups load slots with `Acquire`, which pairs with the claim.
//!
//! # Races
//!
//! * **Two workers insert the same new flow** (or two flows sharing a key):
//!   each publishes its record as `PENDING`, claims index slots, then
//!   re-scans both keys' windows. Because claims and re-scans are `SeqCst`, at
//!   least one of the two sees the other (Dekker). A committed live match
//!   makes the inserter lose. Between two `PENDING` records the lower record
//!   index wins: the higher one withdraws if it sees the lower, and the lower
//!   one aborts the higher by CAS (`PENDING` → `ABORTED`) if it sees it; the
//!   higher one's commit CAS then fails. So at most one commits; the loser
//!   frees its record and returns [`InsertError::Exists`], and the caller
//!   looks the flow up again. In a three-way race all may withdraw: `Exists`
//!   can then be spurious (the packet is dropped or retried; the client
//!   retransmits), but duplicates are impossible.
//! * **A lookup racing a remove**: the lookup either validates its read before
//!   the generation moved (and returns the flow, linearised before the remove)
//!   or sees the generation change and skips the slot (a miss). A lookup
//!   never returns words of a different flow than the key it matched, because
//!   the key comparison is part of the validated read.
//! * **A stale [`FlowId`]**: ids are record indices; a `touch` with the id of
//!   a flow that was removed meanwhile sees an odd generation and returns
//!   [`FlowState::Close`]; if the record was already reused, it refreshes the
//!   new occupant (harmless: it delays that flow's expiry by one packet).
//!
//! # Ageing and eviction
//!
//! Timeouts per state follow IPVS (`ip_vs_proto_tcp.c`, `tcp_timeouts`). A
//! flow with `last_seen + timeout(state) < now` is expired: lookups treat it as
//! a miss, an insert of one of its keys reclaims it, and [`FlowTable::expire`]
//! sweeps records from a clock hand. When no record is free, insert samples 8
//! records from another clock hand and evicts the oldest one that is expired
//! or not `Established`, the idea of conntrack's `early_drop`
//! (`nf_conntrack_core.c`); if none qualifies insertion fails with
//! [`InsertError::Full`]. The same early drop is tried among the flows of a
//! full index window.
//!
//! The table reads no clock: every call that ages takes `now` in seconds
//! from the caller's monotonic clock, so tests run on a virtual clock.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam::queue::ArrayQueue;

use crate::types::{proto, Addr, FlowKey, L2Hop};

/// Index slots allocated per record (two used when the record is live).
pub const SLOTS_PER_FLOW: usize = 4;
/// Index slots per bucket (one 64-byte cache line).
pub const BUCKET_SLOTS: usize = 8;
/// Buckets a key may be stored in: its home bucket and the next two.
pub const PROBE_BUCKETS: usize = 3;
/// Records sampled by the eviction clock hand when no record is free.
pub const EVICT_SAMPLE: usize = 8;

/// TCP flag bits as passed to [`FlowTable::touch`].
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Idle timeouts per flow state, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// After the client's SYN.
    pub tcp_syn_sent: u32,
    /// After the server's SYN+ACK.
    pub tcp_syn_recv: u32,
    /// Once the handshake completed.
    pub tcp_established: u32,
    /// After a FIN in either direction.
    pub tcp_fin_wait: u32,
    /// After an RST.
    pub tcp_close: u32,
    /// UDP flows.
    pub udp: u32,
    /// Flows of any other protocol (ICMP, SCTP, ...).
    pub other: u32,
}

impl Default for Timeouts {
    /// IPVS's defaults (`tcp_timeouts`, `udp_timeouts` in the kernel).
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 900,
            tcp_fin_wait: 120,
            tcp_close: 10,
            udp: 300,
            other: 60,
        }
    }
}

/// The state of a flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// A non-TCP flow (UDP or another protocol): active until idle.
    Udp = 0,
    /// The client's SYN was seen.
    SynSent = 1,
    /// The server's SYN+ACK was seen.
    SynRecv = 2,
    /// The handshake completed (or a mid-stream ACK picked the flow up).
    Established = 3,
    /// A FIN was seen in either direction.
    FinWait = 4,
    /// An RST was seen.
    Close = 5,
}

impl FlowState {
    /// The name `ipvsadm -Lnc` would show.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::Udp => "UDP",
            FlowState::SynSent => "SYN_SENT",
            FlowState::SynRecv => "SYN_RECV",
            FlowState::Established => "ESTABLISHED",
            FlowState::FinWait => "FIN_WAIT",
            FlowState::Close => "CLOSE",
        }
    }
}

/// Which way a packet goes relative to the flow's first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client → service, as first received.
    Original,
    /// Backend → client (or SNAT address).
    Reply,
}

/// Everything the packet path needs to forward both directions of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// Client → VIP, as received.
    pub original: FlowKey,
    /// Backend → client-or-SNAT, as it will be received.
    pub reply: FlowKey,
    /// Egress for original-direction packets.
    pub orig_hop: L2Hop,
    /// Egress for replies.
    pub reply_hop: L2Hop,
    /// Service index in the compiled service table.
    pub service: u32,
    /// Backend index within the service.
    pub backend: u32,
}

/// A handle on a flow record, valid until the flow is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowId(u32);

impl FlowId {
    /// The record index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A successful lookup.
#[derive(Clone, Copy, Debug)]
pub struct Hit {
    /// The flow's record.
    pub id: FlowId,
    /// Which of the flow's keys matched.
    pub dir: Direction,
    /// The flow.
    pub entry: FlowEntry,
    /// Its state at the time of the lookup.
    pub state: FlowState,
}

/// Why [`FlowTable::insert`] did not insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// No record is free, none could be evicted (all sampled flows are live
    /// and established), or the index window of a key is full of such flows.
    #[error("flow table full")]
    Full,
    /// The original or reply key already belongs to a live flow (or to a
    /// flow another worker is inserting at this moment).
    #[error("flow key already in the flow table")]
    Exists,
}

// ---- meta word: gen:24 | state:8 | last_seen:32 ----

const GEN_SHIFT: u32 = 40;
const GEN_MASK: u64 = (1 << 24) - 1;

// Internal state codes: 0..=5 are FlowState, the rest are private.
const ST_UDP: u8 = FlowState::Udp as u8;
const ST_SYN_SENT: u8 = FlowState::SynSent as u8;
const ST_SYN_RECV: u8 = FlowState::SynRecv as u8;
const ST_ESTABLISHED: u8 = FlowState::Established as u8;
const ST_FIN_WAIT: u8 = FlowState::FinWait as u8;
const ST_CLOSE: u8 = FlowState::Close as u8;
/// A non-TCP, non-UDP flow (shown as [`FlowState::Udp`], `other` timeout).
const ST_OTHER: u8 = 6;
const ST_PENDING: u8 = 0xFD;
const ST_ABORTED: u8 = 0xFE;
const ST_FREE: u8 = 0xFF;

#[inline]
fn m_gen(m: u64) -> u64 {
    m >> GEN_SHIFT
}
#[inline]
fn m_state(m: u64) -> u8 {
    (m >> 32) as u8
}
#[inline]
fn m_seen(m: u64) -> u32 {
    m as u32
}
#[inline]
fn mk_meta(gen: u64, state: u8, seen: u32) -> u64 {
    ((gen & GEN_MASK) << GEN_SHIFT) | (u64::from(state) << 32) | u64::from(seen)
}
#[inline]
fn next_gen(m: u64) -> u64 {
    m_gen(m).wrapping_add(1) & GEN_MASK
}
/// Live means published (even generation) and committed (a real state).
#[inline]
fn is_committed(m: u64) -> bool {
    m_gen(m) & 1 == 0 && m_state(m) <= ST_OTHER
}

fn public_state(st: u8) -> FlowState {
    match st {
        ST_SYN_SENT => FlowState::SynSent,
        ST_SYN_RECV => FlowState::SynRecv,
        ST_ESTABLISHED => FlowState::Established,
        ST_FIN_WAIT => FlowState::FinWait,
        ST_CLOSE => FlowState::Close,
        _ => FlowState::Udp,
    }
}

/// The simplified TCP state machine (IPVS's `tcp_states` folded onto six
/// states). RST wins, then FIN, then SYN, then ACK.
fn tcp_next(cur: u8, dir: Direction, flags: u8) -> u8 {
    use tcp_flags::{ACK, FIN, RST, SYN};
    if flags & RST != 0 {
        return ST_CLOSE;
    }
    if flags & FIN != 0 {
        return if cur == ST_CLOSE {
            ST_CLOSE
        } else {
            ST_FIN_WAIT
        };
    }
    if flags & SYN != 0 {
        if flags & ACK != 0 && dir == Direction::Reply {
            return if cur == ST_SYN_SENT { ST_SYN_RECV } else { cur };
        }
        // A SYN reusing the tuple of a closing flow reopens it (IPVS sTW/sCL
        // + syn); a retransmitted SYN changes nothing.
        return match cur {
            ST_FIN_WAIT | ST_CLOSE => ST_SYN_SENT,
            _ => cur,
        };
    }
    if flags & ACK != 0 {
        // ACK after SYN (or SYN+ACK) completes the handshake. Also from
        // SynSent directly: in DR/tunnel mode replies bypass us, and a first
        // mid-stream ACK picks up an existing connection (IPVS sNO + ack).
        return match cur {
            ST_SYN_SENT | ST_SYN_RECV => ST_ESTABLISHED,
            _ => cur,
        };
    }
    cur
}

// ---- packing ----

const KEY_WORDS: usize = 5;
const ENTRY_WORDS: usize = 12;
const BLOCK: usize = 6;
const PORTS_PROTO_MASK: u64 = (1 << 40) - 1;

type KeyWords = [u64; KEY_WORDS];

#[inline]
fn addr_words(a: &Addr) -> (u64, u64) {
    let v = u128::from_ne_bytes(a.0);
    (v as u64, (v >> 64) as u64)
}
#[inline]
fn words_addr(lo: u64, hi: u64) -> Addr {
    Addr((u128::from(lo) | (u128::from(hi) << 64)).to_ne_bytes())
}

#[inline]
fn pack_key(k: &FlowKey) -> KeyWords {
    let (s0, s1) = addr_words(&k.src);
    let (d0, d1) = addr_words(&k.dst);
    [
        s0,
        s1,
        d0,
        d1,
        u64::from(k.sport) | (u64::from(k.dport) << 16) | (u64::from(k.proto) << 32),
    ]
}

fn pack_block(out: &mut [u64], k: &FlowKey, hop: &L2Hop, extra: u32) {
    let kw = pack_key(k);
    out[..4].copy_from_slice(&kw[..4]);
    let m = hop.mac;
    out[4] =
        kw[4] | (u64::from(hop.port) << 40) | (u64::from(m[0]) << 48) | (u64::from(m[1]) << 56);
    out[5] = u64::from(u32::from_le_bytes([m[2], m[3], m[4], m[5]])) | (u64::from(extra) << 32);
}

fn unpack_block(w: &[u64]) -> (FlowKey, L2Hop, u32) {
    let key = FlowKey {
        src: words_addr(w[0], w[1]),
        dst: words_addr(w[2], w[3]),
        sport: w[4] as u16,
        dport: (w[4] >> 16) as u16,
        proto: (w[4] >> 32) as u8,
    };
    let lo = (w[5] as u32).to_le_bytes();
    let hop = L2Hop {
        port: (w[4] >> 40) as u8,
        mac: [
            (w[4] >> 48) as u8,
            (w[4] >> 56) as u8,
            lo[0],
            lo[1],
            lo[2],
            lo[3],
        ],
    };
    (key, hop, (w[5] >> 32) as u32)
}

fn pack_entry(e: &FlowEntry) -> [u64; ENTRY_WORDS] {
    let mut w = [0u64; ENTRY_WORDS];
    pack_block(&mut w[..BLOCK], &e.original, &e.orig_hop, e.service);
    pack_block(&mut w[BLOCK..], &e.reply, &e.reply_hop, e.backend);
    w
}

fn unpack_entry(w: &[u64; ENTRY_WORDS]) -> FlowEntry {
    let (original, orig_hop, service) = unpack_block(&w[..BLOCK]);
    let (reply, reply_hop, backend) = unpack_block(&w[BLOCK..]);
    FlowEntry {
        original,
        reply,
        orig_hop,
        reply_hop,
        service,
        backend,
    }
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

// ---- storage ----

/// One flow: meta word then the packed entry (104 bytes).
#[repr(C)]
struct Record {
    meta: AtomicU64,
    words: [AtomicU64; ENTRY_WORDS],
}

impl Record {
    fn new() -> Record {
        Record {
            meta: AtomicU64::new(mk_meta(1, ST_FREE, 0)),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    #[inline]
    fn key_matches(&self, dir: Direction, k: &KeyWords) -> bool {
        let b = dir_base(dir);
        self.words[b].load(Ordering::Relaxed) == k[0]
            && self.words[b + 1].load(Ordering::Relaxed) == k[1]
            && self.words[b + 2].load(Ordering::Relaxed) == k[2]
            && self.words[b + 3].load(Ordering::Relaxed) == k[3]
            && self.words[b + 4].load(Ordering::Relaxed) & PORTS_PROTO_MASK == k[4]
    }

    /// A consistent snapshot of a published record: `(meta, words)`, or
    /// `None` if the record is free or kept changing.
    fn snapshot(&self) -> Option<(u64, [u64; ENTRY_WORDS])> {
        for _ in 0..4 {
            let m1 = self.meta.load(Ordering::Acquire);
            if m_gen(m1) & 1 == 1 {
                return None;
            }
            let w: [u64; ENTRY_WORDS] =
                std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            let m2 = self.meta.load(Ordering::Relaxed);
            if m_gen(m1) == m_gen(m2) {
                return Some((m2, w));
            }
        }
        None
    }

    /// Whether the published record's key in `dir` equals `k`; returns the
    /// validated meta word.
    fn validated_match(&self, dir: Direction, k: &KeyWords) -> Option<u64> {
        for _ in 0..4 {
            let m1 = self.meta.load(Ordering::Acquire);
            if m_gen(m1) & 1 == 1 {
                return None;
            }
            let ok = self.key_matches(dir, k);
            fence(Ordering::Acquire);
            let m2 = self.meta.load(Ordering::Relaxed);
            if m_gen(m1) == m_gen(m2) {
                return ok.then_some(m2);
            }
        }
        None
    }
}

#[inline]
fn dir_base(dir: Direction) -> usize {
    match dir {
        Direction::Original => 0,
        Direction::Reply => BLOCK,
    }
}

#[repr(C, align(64))]
struct Bucket([AtomicU64; BUCKET_SLOTS]);

/// Bytes of one slot of crossbeam's `ArrayQueue<u32>` (`Slot { stamp:
/// AtomicUsize, value: UnsafeCell<MaybeUninit<u32>> }`).
const FREE_QUEUE_SLOT_BYTES: usize = std::mem::size_of::<(AtomicUsize, u32)>();

const DIR_BIT: u64 = 1 << 31;

#[inline]
fn slot_value(tag: u32, dir: Direction, rec: u32) -> u64 {
    let d = if dir == Direction::Reply { DIR_BIT } else { 0 };
    (u64::from(tag) << 32) | d | (u64::from(rec) + 1)
}
#[inline]
fn slot_rec(v: u64) -> u32 {
    ((v & (DIR_BIT - 1)) - 1) as u32
}
#[inline]
fn slot_dir(v: u64) -> Direction {
    if v & DIR_BIT != 0 {
        Direction::Reply
    } else {
        Direction::Original
    }
}

/// A key's hash split into its home bucket and tag.
#[derive(Clone, Copy)]
struct Hashed {
    words: KeyWords,
    bucket: usize,
    tag: u32,
}

/// What an insert found for one of its keys.
#[derive(Default)]
struct Conflicts {
    live: bool,
}

/// The connection-tracking table. `Send + Sync`; share it with an `Arc`.
pub struct FlowTable {
    records: Box<[Record]>,
    buckets: Box<[Bucket]>,
    free: ArrayQueue<u32>,
    live: AtomicUsize,
    evict_hand: AtomicUsize,
    sweep_hand: AtomicUsize,
    clock: AtomicU32,
    seed: [u64; 4],
    timeouts: Timeouts,
}

impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl FlowTable {
    /// Bytes of memory per flow of capacity: one record, [`SLOTS_PER_FLOW`]
    /// index slots and one free-queue slot (104 + 32 + 16 = 152 on 64-bit).
    pub const BYTES_PER_FLOW: usize = std::mem::size_of::<Record>()
        + SLOTS_PER_FLOW * std::mem::size_of::<AtomicU64>()
        + FREE_QUEUE_SLOT_BYTES;

    /// A table for `capacity` flows with a random hash seed, allocating all
    /// of its memory now (`capacity × BYTES_PER_FLOW` bytes).
    ///
    /// # Panics
    ///
    /// If `capacity` is 0 or not below 2³¹ − 1.
    pub fn new(capacity: usize, timeouts: Timeouts) -> FlowTable {
        let rs = RandomState::new();
        let seed = [
            rs.hash_one(0u64) | 1,
            rs.hash_one(1u64) | 1,
            rs.hash_one(2u64) | 1,
            rs.hash_one(3u64) | 1,
        ];
        Self::with_seed(capacity, timeouts, seed)
    }

    /// Like [`FlowTable::new`] with a fixed hash seed, for reproducible
    /// tests and benches. Production should use `new`: the seed keeps
    /// clients from choosing tuples that collide.
    ///
    /// # Panics
    ///
    /// If `capacity` is 0 or not below 2³¹ − 1.
    pub fn with_seed(capacity: usize, timeouts: Timeouts, seed: [u64; 4]) -> FlowTable {
        assert!(
            capacity > 0 && capacity < (1 << 31) - 1,
            "flow table capacity {capacity} out of range"
        );
        let n_buckets = (capacity * SLOTS_PER_FLOW).div_ceil(BUCKET_SLOTS);
        let records: Box<[Record]> = (0..capacity).map(|_| Record::new()).collect();
        let buckets: Box<[Bucket]> = (0..n_buckets)
            .map(|_| Bucket(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        let free = ArrayQueue::new(capacity);
        for i in 0..capacity {
            // Cannot fail: the queue has room for every record.
            let _ = free.push(i as u32);
        }
        FlowTable {
            records,
            buckets,
            free,
            live: AtomicUsize::new(0),
            evict_hand: AtomicUsize::new(0),
            sweep_hand: AtomicUsize::new(0),
            clock: AtomicU32::new(0),
            seed: seed.map(|s| s | 1),
            timeouts,
        }
    }

    /// Maximum number of flows.
    pub fn capacity(&self) -> usize {
        self.records.len()
    }

    /// Flows held, including expired ones not yet reclaimed (exact when no
    /// insert or removal is in progress).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether no flow is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The timeouts the table was built with.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The latest `now` passed to [`FlowTable::insert`] or
    /// [`FlowTable::expire`]; [`FlowTable::for_each`] ages flows against it.
    pub fn clock(&self) -> u32 {
        self.clock.load(Ordering::Relaxed)
    }

    fn tick(&self, now: u32) {
        // Written at most once a second per caller: no shared-line ping-pong.
        if self.clock.load(Ordering::Relaxed) < now {
            self.clock.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn timeout_of(&self, st: u8) -> u32 {
        let t = &self.timeouts;
        match st {
            ST_UDP => t.udp,
            ST_SYN_SENT => t.tcp_syn_sent,
            ST_SYN_RECV => t.tcp_syn_recv,
            ST_ESTABLISHED => t.tcp_established,
            ST_FIN_WAIT => t.tcp_fin_wait,
            ST_CLOSE => t.tcp_close,
            _ => t.other,
        }
    }

    #[inline]
    fn expires_at(&self, m: u64) -> u64 {
        u64::from(m_seen(m)) + u64::from(self.timeout_of(m_state(m)))
    }

    #[inline]
    fn is_expired(&self, m: u64, now: u32) -> bool {
        self.expires_at(m) < u64::from(now)
    }

    fn hashed(&self, k: &FlowKey) -> Hashed {
        let w = pack_key(k);
        let s = self.seed;
        let a = fold(w[0] ^ s[0], w[1] ^ s[1]);
        let b = fold(w[2] ^ s[2], w[3] ^ s[3]);
        let c = fold(w[4] ^ s[1], a ^ s[2]);
        let h = fold(b ^ s[3], c ^ s[0]);
        let h = fold(h ^ s[1], 0x9E37_79B9_7F4A_7C15);
        Hashed {
            words: w,
            bucket: ((u128::from(h) * self.buckets.len() as u128) >> 64) as usize,
            tag: (h >> 32) as u32,
        }
    }

    /// The slots of a key's probe window, in order.
    #[inline]
    fn window(&self, home: usize) -> impl Iterator<Item = &AtomicU64> {
        let n = self.buckets.len();
        (0..PROBE_BUCKETS.min(n)).flat_map(move |i| self.buckets[(home + i) % n].0.iter())
    }

    /// Asks the CPU for the index lines a [`FlowTable::lookup`] of `key`
    /// will read (burst processing calls this for every frame of a burst
    /// before processing the first).
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) {
        let h = self.hashed(key);
        if let Some(b) = self.buckets.get(h.bucket) {
            crate::prefetch::prefetch(b);
        }
        let n = self.buckets.len();
        if n > 1 {
            if let Some(b) = self.buckets.get((h.bucket + 1) % n) {
                crate::prefetch::prefetch(b);
            }
        }
    }

    /// Finds the live flow with `key` in either direction.
    ///
    /// Lock-free and write-free; an expired flow is a miss. Does not refresh
    /// the flow: call [`FlowTable::touch`] for that.
    pub fn lookup(&self, key: &FlowKey, now: u32) -> Option<Hit> {
        let h = self.hashed(key);
        for slot in self.window(h.bucket) {
            let v = slot.load(Ordering::Acquire);
            if v == 0 || (v >> 32) as u32 != h.tag {
                continue;
            }
            let (ri, dir) = (slot_rec(v), slot_dir(v));
            let Some(rec) = self.records.get(ri as usize) else {
                continue;
            };
            for _ in 0..4 {
                let m1 = rec.meta.load(Ordering::Acquire);
                if !is_committed(m1) || !rec.key_matches(dir, &h.words) {
                    break;
                }
                let w: [u64; ENTRY_WORDS] =
                    std::array::from_fn(|i| rec.words[i].load(Ordering::Relaxed));
                fence(Ordering::Acquire);
                let m2 = rec.meta.load(Ordering::Relaxed);
                if m_gen(m1) != m_gen(m2) {
                    continue;
                }
                if !is_committed(m2) || self.is_expired(m2, now) {
                    break;
                }
                return Some(Hit {
                    id: FlowId(ri),
                    dir,
                    entry: unpack_entry(&w),
                    state: public_state(m_state(m2)),
                });
            }
        }
        None
    }

    /// Inserts a new flow seen first at `now` and returns its id.
    ///
    /// TCP flows start in [`FlowState::SynSent`] (the short half-open
    /// timeout), other flows in [`FlowState::Udp`]; the caller then calls
    /// [`FlowTable::touch`] with the first packet's flags. Expired flows
    /// holding either key are reclaimed first.
    ///
    /// # Errors
    ///
    /// [`InsertError::Exists`] if either key belongs to a live flow or to a
    /// flow another thread is inserting concurrently (look it up again);
    /// [`InsertError::Full`] if no record or index slot is free and no flow
    /// could be evicted.
    pub fn insert(&self, entry: &FlowEntry, now: u32) -> Result<FlowId, InsertError> {
        self.tick(now);
        let ho = self.hashed(&entry.original);
        let hr = self.hashed(&entry.reply);
        // Fast path for the common race (another worker just inserted it).
        let mut c = Conflicts::default();
        self.precheck(&ho, now, &mut c);
        self.precheck(&hr, now, &mut c);
        if c.live {
            return Err(InsertError::Exists);
        }

        let ri = self.alloc(now)?;
        let rec = &self.records[ri as usize];
        let old = rec.meta.load(Ordering::Acquire);
        debug_assert!(m_gen(old) & 1 == 1);
        // Seqlock write: the generation is already odd (record free).
        fence(Ordering::Release);
        for (a, w) in rec.words.iter().zip(pack_entry(entry)) {
            a.store(w, Ordering::Relaxed);
        }
        let gen = next_gen(old);
        let pending = mk_meta(gen, ST_PENDING, now);
        rec.meta.store(pending, Ordering::Release);

        let won = self.claim(&ho, Direction::Original, ri, now)
            && self.claim(&hr, Direction::Reply, ri, now);
        if !won {
            self.withdraw(ri, &ho, &hr);
            return Err(InsertError::Full);
        }
        if !(self.rescan(&ho, ri, now) && self.rescan(&hr, ri, now)) {
            self.withdraw(ri, &ho, &hr);
            return Err(InsertError::Exists);
        }
        let init = match entry.original.proto {
            proto::TCP => ST_SYN_SENT,
            proto::UDP => ST_UDP,
            _ => ST_OTHER,
        };
        self.live.fetch_add(1, Ordering::Relaxed);
        if rec
            .meta
            .compare_exchange(
                pending,
                mk_meta(gen, init, now),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            // A competitor with a lower record index aborted us.
            self.live.fetch_sub(1, Ordering::Relaxed);
            self.withdraw(ri, &ho, &hr);
            return Err(InsertError::Exists);
        }
        Ok(FlowId(ri))
    }

    /// Records (other than `skip`) indexed under `h` whose key in the slot's
    /// direction equals `h`'s key, with their validated meta words.
    fn for_matches(&self, h: &Hashed, skip: u32, order: Ordering, mut f: impl FnMut(u32, u64)) {
        for slot in self.window(h.bucket) {
            let v = slot.load(order);
            if v == 0 || (v >> 32) as u32 != h.tag || slot_rec(v) == skip {
                continue;
            }
            let ri = slot_rec(v);
            let Some(rec) = self.records.get(ri as usize) else {
                continue;
            };
            if let Some(m) = rec.validated_match(slot_dir(v), &h.words) {
                f(ri, m);
            }
        }
    }

    fn precheck(&self, h: &Hashed, now: u32, c: &mut Conflicts) {
        self.for_matches(h, u32::MAX, Ordering::Acquire, |ri, m| {
            if m_state(m) == ST_PENDING {
                c.live = true;
            } else if is_committed(m) {
                if self.is_expired(m, now) {
                    self.reclaim_expired(ri, m, now);
                } else {
                    c.live = true;
                }
            }
        });
    }

    /// After claiming our slots: whether we still may commit `ri`.
    fn rescan(&self, h: &Hashed, ri: u32, now: u32) -> bool {
        let mut ok = true;
        self.for_matches(h, ri, Ordering::SeqCst, |other, m| {
            if !ok {
                return;
            }
            match m_state(m) {
                ST_PENDING if other < ri => ok = false,
                ST_PENDING => {
                    let rec = &self.records[other as usize];
                    let aborted = mk_meta(m_gen(m), ST_ABORTED, m_seen(m));
                    if let Err(cur) =
                        rec.meta
                            .compare_exchange(m, aborted, Ordering::AcqRel, Ordering::Acquire)
                    {
                        // It committed first (and we lose), or it is gone.
                        if m_gen(cur) == m_gen(m) && is_committed(cur) {
                            ok = false;
                        }
                    }
                }
                ST_ABORTED => {}
                _ if self.is_expired(m, now) => {
                    self.reclaim_expired(other, m, now);
                }
                _ => ok = false,
            }
        });
        ok
    }

    /// Claims a free slot for `ri` in `h`'s window, early-dropping a flow of
    /// the window if it is full.
    fn claim(&self, h: &Hashed, dir: Direction, ri: u32, now: u32) -> bool {
        let val = slot_value(h.tag, dir, ri);
        for attempt in 0..2 {
            for slot in self.window(h.bucket) {
                if slot.load(Ordering::Relaxed) == 0
                    && slot
                        .compare_exchange(0, val, Ordering::SeqCst, Ordering::Relaxed)
                        .is_ok()
                {
                    return true;
                }
            }
            if attempt == 0 {
                let cands = self.window(h.bucket).filter_map(|s| {
                    let v = s.load(Ordering::Acquire);
                    (v != 0 && slot_rec(v) != ri).then(|| slot_rec(v))
                });
                match self.early_drop(cands, now) {
                    Some(victim) => self.release(victim),
                    None => return false,
                }
            }
        }
        false
    }

    /// A free record: from the free list, or by evicting one of
    /// [`EVICT_SAMPLE`] records under the clock hand.
    fn alloc(&self, now: u32) -> Result<u32, InsertError> {
        if let Some(ri) = self.free.pop() {
            return Ok(ri);
        }
        let n = self.records.len();
        let start = self.evict_hand.fetch_add(EVICT_SAMPLE, Ordering::Relaxed);
        let cands = (0..EVICT_SAMPLE.min(n)).map(|i| (start.wrapping_add(i) % n) as u32);
        if let Some(ri) = self.early_drop(cands, now) {
            return Ok(ri);
        }
        self.free.pop().ok_or(InsertError::Full)
    }

    /// Among `cands`, claims the best victim: expired first, else not
    /// established, oldest first. The victim's slots are cleared; the caller
    /// owns the record (free generation) and must reuse or release it.
    fn early_drop(&self, cands: impl Iterator<Item = u32>, now: u32) -> Option<u32> {
        let mut best: Option<(bool, u32, u32, u64)> = None; // (!expired, seen, idx, meta)
        for ri in cands {
            let m = self.records[ri as usize].meta.load(Ordering::Acquire);
            if !is_committed(m) {
                continue;
            }
            let expired = self.is_expired(m, now);
            if !expired && m_state(m) == ST_ESTABLISHED {
                continue;
            }
            let key = (!expired, m_seen(m), ri, m);
            if !matches!(best, Some(b) if (b.0, b.1) <= (key.0, key.1)) {
                best = Some(key);
            }
        }
        let (_, _, ri, m) = best?;
        self.kill(ri, m).then_some(ri)
    }

    /// Claims record `ri` if its meta is still exactly `m` (so a concurrent
    /// touch makes the claim fail) and clears its slots.
    fn kill(&self, ri: u32, m: u64) -> bool {
        let rec = &self.records[ri as usize];
        let dead = mk_meta(next_gen(m), ST_FREE, m_seen(m));
        if rec
            .meta
            .compare_exchange(m, dead, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.unindex(ri);
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
    fn unindex(&self, ri: u32) {
        let rec = &self.records[ri as usize];
        let w: [u64; ENTRY_WORDS] = std::array::from_fn(|i| rec.words[i].load(Ordering::Relaxed));
        let e = unpack_entry(&w);
        self.unindex_keys(ri, &self.hashed(&e.original), &self.hashed(&e.reply));
    }

    fn unindex_keys(&self, ri: u32, ho: &Hashed, hr: &Hashed) {
        for (h, dir) in [(ho, Direction::Original), (hr, Direction::Reply)] {
            let val = slot_value(h.tag, dir, ri);
            for slot in self.window(h.bucket) {
                if slot.load(Ordering::Relaxed) == val {
                    let _ = slot.compare_exchange(val, 0, Ordering::Release, Ordering::Relaxed);
                }
            }
        }
    }

    /// Backs out our own uncommitted record.
    fn withdraw(&self, ri: u32, ho: &Hashed, hr: &Hashed) {
        let rec = &self.records[ri as usize];
        let m = rec.meta.load(Ordering::Acquire);
        // Only an abort (PENDING → ABORTED, same generation) can race this.
        rec.meta
            .store(mk_meta(next_gen(m), ST_FREE, m_seen(m)), Ordering::Release);
        self.unindex_keys(ri, ho, hr);
        self.release(ri);
    }

    fn release(&self, ri: u32) {
        let pushed = self.free.push(ri);
        debug_assert!(pushed.is_ok(), "free list overflow");
    }

    /// Refreshes flow `id` for a packet in `dir` at `now` and advances its
    /// TCP state from the packet's `tcp_flags` (FIN=1 SYN=2 RST=4 ACK=0x10;
    /// ignored for non-TCP flows). Returns the new state, or
    /// [`FlowState::Close`] if the flow is gone or expired (it is then not
    /// revived).
    ///
    /// Writes the shared record only when the state or the second changes.
    pub fn touch(&self, id: FlowId, dir: Direction, tcp_flags: u8, now: u32) -> FlowState {
        let Some(rec) = self.records.get(id.0 as usize) else {
            return FlowState::Close;
        };
        let mut m = rec.meta.load(Ordering::Acquire);
        loop {
            if !is_committed(m) || self.is_expired(m, now) {
                return FlowState::Close;
            }
            let st = m_state(m);
            let next = if st == ST_UDP || st == ST_OTHER {
                st
            } else {
                tcp_next(st, dir, tcp_flags)
            };
            let nm = mk_meta(m_gen(m), next, m_seen(m).max(now));
            if nm == m {
                return public_state(st);
            }
            match rec
                .meta
                .compare_exchange_weak(m, nm, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return public_state(next),
                Err(cur) => m = cur,
            }
        }
    }

    /// Removes flow `id`; false if it was already gone.
    pub fn remove(&self, id: FlowId) -> bool {
        let Some(rec) = self.records.get(id.0 as usize) else {
            return false;
        };
        loop {
            let m = rec.meta.load(Ordering::Acquire);
            if !is_committed(m) {
                return false;
            }
            if self.kill(id.0, m) {
                self.release(id.0);
                return true;
            }
        }
    }

    /// Sweeps up to `max_records` records from a clock hand and reclaims the
    /// expired ones; returns how many. Call it periodically (e.g. every 100
    /// ms with `max_records = capacity / 100`) from one housekeeping thread.
    pub fn expire(&self, now: u32, max_records: usize) -> usize {
        self.tick(now);
        let n = self.records.len();
        let todo = max_records.min(n);
        let start = self.sweep_hand.fetch_add(todo, Ordering::Relaxed);
        (0..todo)
            .filter(|i| {
                let ri = (start.wrapping_add(*i) % n) as u32;
                let m = self.records[ri as usize].meta.load(Ordering::Acquire);
                self.reclaim_expired(ri, m, now)
            })
            .count()
    }

    /// Calls `f(entry, state, seconds until expiry)` for every live flow,
    /// aged against [`FlowTable::clock`]. Each entry is a consistent
    /// snapshot; the set of flows is not (flows may come and go meanwhile).
    pub fn for_each(&self, f: impl FnMut(&FlowEntry, FlowState, u32)) {
        self.for_each_at(self.clock(), f)
    }

    /// [`FlowTable::for_each`] aged against an explicit `now`.
    pub fn for_each_at(&self, now: u32, mut f: impl FnMut(&FlowEntry, FlowState, u32)) {
        for rec in self.records.iter() {
            let Some((m, w)) = rec.snapshot() else {
                continue;
            };
            if !is_committed(m) || self.is_expired(m, now) {
                continue;
            }
            let left = self.expires_at(m).saturating_sub(u64::from(now));
            let left = u32::try_from(left).unwrap_or(u32::MAX);
            f(&unpack_entry(&w), public_state(m_state(m)), left);
        }
    }

    /// Removes every flow (expired ones included) for which `pred` holds,
    /// e.g. the flows of a removed backend; returns how many.
    pub fn remove_where(&self, mut pred: impl FnMut(&FlowEntry) -> bool) -> usize {
        let mut n = 0;
        for (ri, rec) in self.records.iter().enumerate() {
            let Some((mut m, w)) = rec.snapshot() else {
                continue;
            };
            if !is_committed(m) || !pred(&unpack_entry(&w)) {
                continue;
            }
            let gen = m_gen(m);
            // Retry while only state/last_seen change under us.
            while is_committed(m) && m_gen(m) == gen {
                if self.kill(ri as u32, m) {
                    self.release(ri as u32);
                    n += 1;
                    break;
                }
                m = rec.meta.load(Ordering::Acquire);
            }
        }
        n
    }
}

#[cfg(test)]
mod tests;
