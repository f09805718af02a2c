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
//! Two stores (`store.rs`), one per record layout ([`layout`]): flows whose
//! four addresses are IPv4 in 48-byte records, the others in 96-byte
//! records, so that the common case pays for what it holds. Each store has:
//!
//! * **Records** (`Box<[Record]>`, exactly its capacity): one per flow,
//!   holding *both* directions — keys, both next hops, service — packed into
//!   `AtomicU64` words, and one *meta* word `backend:16 | generation:16 |
//!   fast:1 | protocol:3 | state:4 | last_seen:24` (`fast`: a direction of
//!   the flow was published to the XDP fast path, [`FlowTable::mark_fast_path`]). All fields are atomics, so a
//!   reader racing a writer reads stale or mixed words but never has
//!   undefined behaviour; the generation tells it whether what it read is
//!   consistent (a seqlock). `last_seen` counts seconds on a 24-bit wrapping
//!   clock; timeouts are capped at 2²³ − 1 s, and the sweeper visits every
//!   record long before a wrap could make an idle flow look fresh.
//! * **Index**: buckets of 16 `AtomicU32` slots, one 64-byte cache line
//!   each, 2.5 slots per record (so at most 80% full). A slot is `0` or
//!   `(record + 1) << 8 | tag`, the tag being 8 bits of the key's hash.
//!   Each live flow has two slots, one per key. A key lives in one of two
//!   buckets (bucketized cuckoo hashing): its home bucket `b1`, chosen by
//!   the hash, or `b2 = alt(b1, tag)`, an involution of the bucket and the
//!   tag, so a slot can move to its other bucket without reading its record
//!   (partial-key cuckoo hashing, as in cuckoo filters). An insert takes a
//!   free slot of `b1`, else of `b2`, else moves one slot of either bucket
//!   to that slot's other bucket; only if that fails too is a flow of the
//!   two buckets early-dropped. A lookup reads at most two lines of index
//!   and the record's line(s); most keys sit in `b1`.
//! * **Free stack**: a Treiber stack threaded through the free records'
//!   first word, its head an `AtomicU64` of an ABA counter and the top.
//!   Nothing is allocated after [`FlowTable::new`].
//!
//! # Byte cost per flow
//!
//! IPv4: record 48 + 2.5 index slots × 4 = **58 bytes**
//! ([`FlowTable::BYTES_PER_FLOW_V4`]); 1e7 flows take 580 MB. IPv6: 96 + 10
//! = 106 bytes ([`FlowTable::BYTES_PER_FLOW_V6`]). The fields are narrowed
//! to fit (limits in [`layout`]); an entry that does not fit is refused
//! with [`InsertError::Unsupported`], never truncated.
//!
//! # Who writes what
//!
//! * The words of a record are written only by the thread that popped it from
//!   the free stack (or evicted it), while the generation is odd (free).
//! * The meta word is changed only by compare-and-swap: an inserter publishes
//!   (odd → even generation, state `PENDING`), commits (`PENDING` → a real
//!   state) or, after losing a race, frees its own record; another inserter
//!   may abort a competing `PENDING` record; [`FlowTable::touch`] advances
//!   state and `last_seen` keeping the generation; removal, expiry and
//!   eviction claim a record by moving its generation from even to odd. The
//!   winner of that CAS alone clears the record's index slots and returns it
//!   to the free stack, so two workers expiring the same flow cannot free it
//!   twice, and an expiry racing a refreshing `touch` is decided atomically by
//!   whichever CAS lands first on the same word.
//! * Index slots go from empty to a value by CAS (an inserter claiming a free
//!   slot, or a displacement copying a slot), from a value to another by CAS
//!   (a displacement replacing the slot it moved away by the new key's) and
//!   back to empty by CAS (the owner of a dead record, or a displacement
//!   undoing a copy whose original vanished meanwhile).
//!
//! # Memory orderings
//!
//! * Reader (lookup, listing): `meta.load(Acquire)`, relaxed loads of the
//!   words, `fence(Acquire)`, `meta.load(Relaxed)`; the read is accepted only
//!   if both loads show the same even generation (the classic seqlock reader).
//! * Writer: the generation became odd when the previous occupant was removed
//!   (a CAS before the push to the free stack, whose pop synchronises with
//!   it); the inserter issues `fence(Release)` before its relaxed word
//!   stores, so a reader that sees any new word also sees the odd (or later)
//!   generation on its second load and discards the read. The even
//!   generation is published with `Release`, so a reader that sees it also
//!   sees every word.
//! * Slots are claimed with `SeqCst` CAS and re-scanned with `SeqCst` loads
//!   (below); lookups load slots with `Acquire`, which pairs with the claim.
//!
//! # Displacement and the move counter
//!
//! A slot on the move is copied to its other bucket first and only then
//! erased from its old one (replaced by the slot it made room for), but a
//! reader scanning `b1` then `b2` can still miss a slot moving from `b2`
//! to `b1`: it reads `b1` before the copy lands and `b2` after the erase.
//! Moves are therefore rare (only when both buckets are full) and
//! serialised by a seqcount per store (MemC3's version counter): odd while
//! a move is in progress, bumped when it ends. A pass over a key reads
//! `b1`, `b2`, and, if the counter was odd when it began, `b1` again. A
//! pass that misses compares the counter before and after: unchanged, the
//! miss is final; changed (a move ended, so another thread made progress),
//! it runs again. A hit needs no check: it was validated against its record.
//!
//! *Claim*: a pass during which the counter stays at `c` sees every slot
//! of its key that was indexed when it began and is not unindexed
//! meanwhile. If `c` is even, no move overlapped the pass, so no slot
//! moved. If `c` is odd, exactly one move `M` was in progress throughout
//! (another needs `c + 1` first), and `M` relocates at most one slot: it
//! copies `v` from bucket `x` to the other bucket `y` (CAS `0 → v`), then
//! erases the original (CAS `v → new`), or undoes the copy if the original
//! vanished (its flow was removed). Take the key's slot `v`:
//!
//! * `v` moves `b1 → b2`: the read of `b1` sees it unless the erase came
//!   first; the erase follows the copy, so the read of `b2` then sees it.
//! * `v` moves `b2 → b1`: the first read of `b1` sees it if the copy came
//!   first; else the read of `b2` sees it unless the erase came first; and
//!   then the copy, which precedes the erase, is in `b1` for the second
//!   read of `b1`.
//!
//! "Came first" is in each slot's modification order: every slot write is
//! a `SeqCst` CAS, so a read that observes the erase (or anything later in
//! that slot, all RMWs: a release sequence) synchronises with it and must
//! see the copy, written before, or something later — which, with the
//! counter unchanged, can only be an unindexing of the dead flow.
//!
//! So a stalled or preempted mover, whose counter stays odd, never makes a
//! lookup give up or miss: the first pass decides. Lookups, the insert's
//! re-scan (so a duplicate cannot commit, and a stalled mover does not
//! cause a spurious `Exists`) and the unindexing of a dead record (so no
//! stale slot is left behind: clearing either the original or the copy is
//! enough, because the mover's erase then fails and it undoes its copy, or
//! its erase replaces the original) all use such passes. A pass retries
//! only when a move ended during it, so each retry means some other thread
//! made progress (lock-free, not wait-free).
//!
//! # Races
//!
//! * **Two workers insert the same new flow** (or two flows sharing a key):
//!   each publishes its record as `PENDING`, claims index slots, then
//!   re-scans both keys' buckets. Because claims and re-scans are `SeqCst`, at
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
//! * **A stale [`FlowId`]**: between a worker's lookup and its `touch` (or
//!   `remove`, on a client's RST), another worker may remove or early-drop
//!   the flow and an insert may reuse its record for another flow. An id is
//!   therefore the record *and the generation of the validated read*;
//!   `touch` and `remove` act only while the record still has that
//!   generation, checked inside the same compare-and-swap on the meta word
//!   that does the work, so the check cannot go stale before the write. A
//!   stale id gets [`FlowState::Close`] / `false` and the new flow is left
//!   alone (modelled with loom in `loom_tests.rs`).
//!
//!   *Wrap*: the 16-bit generation advances by 2 per occupant (publish,
//!   then removal), so an id can be confused with a new flow only if its
//!   record was freed and reused exactly 32 768·k times between the read
//!   and the use. Each reuse is a whole remove and insert of that one
//!   record (an insert and a remove take about 300 ns together in
//!   `bench/benches/flow_table.rs`, so 32 768 of them about 10 ms even if
//!   every insert in the store hit that record), while an id is used
//!   within the processing of the packet that looked it up: the worker
//!   would have to be descheduled that long at that point, *and* the churn
//!   land on that record exactly a multiple of 32 768 times. The meta word
//!   has no room for more bits.
//!
//! # Ageing and eviction
//!
//! Timeouts per state follow IPVS (`ip_vs_proto_tcp.c`, `tcp_timeouts`). A
//! flow idle for longer than the timeout of its state is expired: lookups
//! treat it as a miss, an insert of one of its keys reclaims it, and
//! [`FlowTable::expire`] sweeps records from a clock hand.
//!
//! When no record is free, insert samples 8 records from another clock hand
//! and evicts one (early drop); the same is tried among the flows of a
//! key's two buckets when even a displacement found no room (not seen in a
//! 1e7-flow run: see the tests). The victim is the oldest flow of the
//! first class present in the sample:
//!
//! 1. **expired** flows, of any state: reclaiming them loses nothing;
//! 2. **embryonic** TCP flows: `SYN_SENT`, `SYN_RECV`, and the `FIN_WAIT`
//!    and `CLOSE` leftovers of finished connections;
//! 3. **idle** live UDP, SCTP and ICMP flows, oldest first.
//!
//! A live `ESTABLISHED` flow is never early-dropped: if the sample holds
//! nothing else, insertion fails with [`InsertError::Full`]. This is
//! conntrack's rule (`early_drop_list` in `nf_conntrack_core.c` skips
//! `IPS_ASSURED` entries, and a TCP flow is assured once established) and
//! IPVS's order (`ip_vs_random_dropentry` drops `SYN_RECV` entries first and
//! established ones only when `todrop_entry` finds them nearly idle): an
//! evicted established connection is broken at both ends (its next segment
//! gets a reset or a new backend), while a refused new flow only costs the
//! client a SYN retransmit. The order is what a flood cannot exploit: new
//! half-open flows, all a SYN flood creates, only ever displace other
//! embryonic flows while one is in the sample, never live UDP or
//! established ones. UDP has no handshake, so a live UDP flow cannot be
//! told from a spoofed one and gets no such protection against other UDP
//! (or against a table full of established flows); conntrack, too,
//! protects a UDP flow only once it has seen replies, which this table
//! does not record. Evictions are counted by class
//! ([`FlowTable::early_drops`]; `sluice` prints them as
//! `early_drop_{expired,embryonic,idle}` counters at exit).
//!
//! The table reads no clock: every call that ages takes `now` in seconds
//! from the caller's monotonic clock, so tests run on a virtual clock.

pub mod layout;
#[cfg(not(all(test, feature = "loom")))]
pub mod state_file;
mod store;
mod sync;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::types::{proto, FlowKey, L2Hop};

use layout::{proto_code, proto_of, Layout, V4, V6};
use store::{
    age, is_committed, m_backend, m_fast, m_generation, m_proto, m_seen, m_state, Evict, Found,
    Fresh, Hashed, Store, ST_CLOSE, ST_ESTABLISHED, ST_FIN_WAIT, ST_FIN_WAIT_REPLY, ST_OTHER,
    ST_SYN_RECV, ST_SYN_SENT, ST_TIME_WAIT, ST_UDP,
};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl Timeouts {
    /// Each value capped at what the 24-bit clock can express.
    fn capped(self) -> Timeouts {
        let cap = |t: u32| t.min(store::MAX_TIMEOUT);
        Timeouts {
            tcp_syn_sent: cap(self.tcp_syn_sent),
            tcp_syn_recv: cap(self.tcp_syn_recv),
            tcp_established: cap(self.tcp_established),
            tcp_fin_wait: cap(self.tcp_fin_wait),
            tcp_close: cap(self.tcp_close),
            udp: cap(self.udp),
            other: cap(self.other),
        }
    }
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
    /// A FIN was seen in one direction.
    FinWait = 4,
    /// An RST was seen.
    Close = 5,
    /// FINs were seen in both directions: both ends have closed (the
    /// state in which a masqueraded flow's SNAT port may be reused, see
    /// `snat`).
    TimeWait = 6,
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
            FlowState::TimeWait => "TIME_WAIT",
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

/// A handle on one flow: its record and the generation the record had when
/// the flow was read. Valid until the flow is removed; after that
/// [`FlowTable::touch`] and [`FlowTable::remove`] with it do nothing, even
/// once the record holds another flow (see "Races" in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowId {
    /// Record index, with [`V6_BIT`] for the IPv6 store.
    rec: u32,
    /// The record's (even) generation while it holds this flow.
    gen: u16,
}

impl FlowId {
    /// The record index within its store.
    pub fn index(self) -> usize {
        (self.rec & !V6_BIT) as usize
    }

    /// The record's generation while it holds this flow.
    pub fn generation(self) -> u16 {
        self.gen
    }
}

/// Flows evicted to make room for new ones, by class, in the order early
/// drop chooses them (see "Ageing and eviction" in the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EarlyDrops {
    /// Flows past their timeout, reclaimed by an insert that found no free
    /// record or index slot.
    pub expired: u64,
    /// Half-open or closing TCP flows (`SYN_SENT`, `SYN_RECV`, `FIN_WAIT`,
    /// `CLOSE`).
    pub embryonic: u64,
    /// Live UDP, SCTP and ICMP flows, oldest first, when no flow of the
    /// classes above was in the sample.
    pub idle: u64,
}

impl EarlyDrops {
    /// `(counter name, value)` pairs, as `sluice` prints them at exit.
    pub fn named(&self) -> [(&'static str, u64); 3] {
        [
            ("early_drop_expired", self.expired),
            ("early_drop_embryonic", self.embryonic),
            ("early_drop_idle", self.idle),
        ]
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
    /// Seconds since its last packet, at the lookup's `now`.
    pub idle: u32,
    /// Whether a direction of the flow was published to the XDP fast path
    /// ([`FlowTable::mark_fast_path`]); false for a flow that never was, so
    /// its close costs no map operation.
    pub fast_path: bool,
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
    /// The entry does not fit a record: its keys mix IPv4 and IPv6, its
    /// protocol is not TCP, UDP, SCTP or ICMP, or an index is beyond the
    /// limits of [`layout`].
    #[error("flow entry does not fit a flow-table record")]
    Unsupported,
}

fn public_state(st: u8) -> FlowState {
    match st {
        ST_SYN_SENT => FlowState::SynSent,
        ST_SYN_RECV => FlowState::SynRecv,
        ST_ESTABLISHED => FlowState::Established,
        ST_FIN_WAIT | ST_FIN_WAIT_REPLY => FlowState::FinWait,
        ST_TIME_WAIT => FlowState::TimeWait,
        ST_CLOSE => FlowState::Close,
        _ => FlowState::Udp,
    }
}

/// The simplified TCP state machine (IPVS's `tcp_states` folded onto seven
/// states, FIN_WAIT kept apart by the side that sent the first FIN so that
/// a FIN from each side makes TIME_WAIT). RST wins, then FIN, then SYN,
/// then ACK.
pub(crate) fn tcp_next(cur: u8, dir: Direction, flags: u8) -> u8 {
    use tcp_flags::{ACK, FIN, RST, SYN};
    if flags & RST != 0 {
        return ST_CLOSE;
    }
    if flags & FIN != 0 {
        return match (cur, dir) {
            (ST_CLOSE | ST_TIME_WAIT, _) => cur,
            (ST_FIN_WAIT, Direction::Reply) | (ST_FIN_WAIT_REPLY, Direction::Original) => {
                ST_TIME_WAIT
            }
            (_, Direction::Original) if cur != ST_FIN_WAIT_REPLY => ST_FIN_WAIT,
            _ => ST_FIN_WAIT_REPLY,
        };
    }
    if flags & SYN != 0 {
        if flags & ACK != 0 && dir == Direction::Reply {
            return if cur == ST_SYN_SENT { ST_SYN_RECV } else { cur };
        }
        // A SYN reusing the tuple of a closing flow reopens it (IPVS sTW/sCL
        // + syn); a retransmitted SYN changes nothing.
        return match cur {
            ST_FIN_WAIT | ST_FIN_WAIT_REPLY | ST_TIME_WAIT | ST_CLOSE => ST_SYN_SENT,
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

/// The store of IPv4 flows (48-byte records).
type Store4 = Store<V4, 5>;
/// The store of IPv6 flows (96-byte records).
type Store6 = Store<V6, 11>;

/// Bit of a [`FlowId`] that says the flow is in the IPv6 store.
const V6_BIT: u32 = 1 << 31;

/// A key hashed for its store, kept between a prefetch and a lookup.
#[derive(Clone, Copy, Debug)]
pub struct KeyHash(HashOf);

#[derive(Clone, Copy, Debug)]
enum HashOf {
    V4(Hashed<layout::Key4>),
    V6(Hashed<layout::Key6>),
}

/// The connection-tracking table. `Send + Sync`; share it with an `Arc`.
pub struct FlowTable {
    v4: Store4,
    v6: Store6,
    clock: AtomicU32,
    /// The header of the file the records live in (`--flow-state`).
    #[cfg(not(all(test, feature = "loom")))]
    state: Option<state_file::StateHandle>,
}

impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable")
            .field("capacity_v4", &self.v4.capacity())
            .field("capacity_v6", &self.v6.capacity())
            .field("len", &self.len())
            .field("timeouts", &self.timeouts())
            .finish()
    }
}

fn fresh<const N: usize>(words: [u64; N], pcode: u8, backend: u32, init: u8) -> Fresh<N> {
    Fresh {
        words,
        pcode,
        backend,
        init,
    }
}

#[inline]
fn found_hit<L: Layout<N>, const N: usize>(f: &Found<N>, v6: bool, now: u32) -> Hit {
    Hit {
        id: FlowId {
            rec: f.ri | if v6 { V6_BIT } else { 0 },
            gen: m_generation(f.meta),
        },
        dir: f.dir,
        entry: L::unpack(&f.words, proto_of(m_proto(f.meta)), m_backend(f.meta)),
        state: public_state(m_state(f.meta)),
        idle: age(m_seen(f.meta), now),
        fast_path: m_fast(f.meta),
    }
}

impl FlowTable {
    /// Bytes of memory per IPv4 flow of capacity: a 48-byte record and 2.5
    /// four-byte index slots.
    pub const BYTES_PER_FLOW_V4: usize = Store4::RECORD_BYTES + 10;
    /// Bytes of memory per IPv6 flow of capacity: a 96-byte record and 2.5
    /// four-byte index slots.
    pub const BYTES_PER_FLOW_V6: usize = Store6::RECORD_BYTES + 10;
    /// Largest capacity of each store.
    pub const MAX_CAPACITY: usize = store::MAX_RECORDS;

    /// A table for `capacity` IPv4 flows and `capacity / 4` IPv6 flows (at
    /// least 64) with a random hash seed, allocating all of its memory now.
    pub fn new(capacity: usize, timeouts: Timeouts) -> FlowTable {
        Self::with_capacities(capacity, (capacity / 4).max(64), timeouts)
    }

    /// A table for `v4` IPv4 flows and `v6` IPv6 flows (each capped at
    /// [`FlowTable::MAX_CAPACITY`]) with a random hash seed.
    pub fn with_capacities(v4: usize, v6: usize, timeouts: Timeouts) -> FlowTable {
        let rs = RandomState::new();
        let seed = [
            rs.hash_one(0u64) | 1,
            rs.hash_one(1u64) | 1,
            rs.hash_one(2u64) | 1,
            rs.hash_one(3u64) | 1,
        ];
        Self::build(v4, v6, timeouts, seed)
    }

    /// Like [`FlowTable::new`] with a fixed hash seed, for reproducible
    /// tests and benches. Production should use `new`: the seed keeps
    /// clients from choosing tuples that collide.
    pub fn with_seed(capacity: usize, timeouts: Timeouts, seed: [u64; 4]) -> FlowTable {
        Self::build(capacity, (capacity / 4).max(64), timeouts, seed)
    }

    fn build(v4: usize, v6: usize, timeouts: Timeouts, seed: [u64; 4]) -> FlowTable {
        let timeouts = timeouts.capped();
        let seed = seed.map(|s| s | 1);
        FlowTable {
            v4: Store::new(v4, timeouts, seed),
            v6: Store::new(v6, timeouts, seed.map(|s| s.rotate_left(17) | 1)),
            clock: AtomicU32::new(0),
            #[cfg(not(all(test, feature = "loom")))]
            state: None,
        }
    }

    /// A table over stores built elsewhere ([`state_file`]).
    #[cfg(not(all(test, feature = "loom")))]
    fn from_stores(v4: Store4, v6: Store6, state: Option<state_file::StateHandle>) -> FlowTable {
        FlowTable {
            v4,
            v6,
            clock: AtomicU32::new(0),
            state,
        }
    }

    /// Whether the records live in a flow-state file
    /// ([`state_file::open`]).
    #[cfg(not(all(test, feature = "loom")))]
    pub fn is_file_backed(&self) -> bool {
        self.state.is_some()
    }

    /// Marks the flow-state file closed in order (a no-op for a table in
    /// anonymous memory). Call after the workers stopped.
    #[cfg(not(all(test, feature = "loom")))]
    pub fn mark_clean(&self) {
        if let Some(s) = &self.state {
            s.mark_clean();
        }
    }

    /// Renumbers the flows a previous process left ([`state_file`]): for
    /// every flow, `f(entry)` names its service slot and backend id in the
    /// table now in service, or `None` to remove it (its service or
    /// backend is gone). Returns `(kept, removed)`. Call once, before the
    /// workers start.
    pub fn rebind(&self, mut f: impl FnMut(&FlowEntry) -> Option<(u32, u32)>) -> (usize, usize) {
        let (a, b) = self.v4.rebind(&mut f);
        let (c, d) = self.v6.rebind(&mut f);
        (a + c, b + d)
    }

    #[cfg(all(test, not(feature = "loom")))]
    fn timeout_of(&self, st: u8) -> u32 {
        self.v4.timeout_of(st)
    }

    /// Maximum number of flows (IPv4 and IPv6 together).
    pub fn capacity(&self) -> usize {
        self.v4.capacity() + self.v6.capacity()
    }

    /// Maximum number of IPv4 and of IPv6 flows.
    pub fn capacities(&self) -> (usize, usize) {
        (self.v4.capacity(), self.v6.capacity())
    }

    /// Bytes allocated by the table (records and index of both stores).
    pub fn memory_bytes(&self) -> usize {
        self.v4.memory_bytes() + self.v6.memory_bytes()
    }

    /// Flows held, including expired ones not yet reclaimed (exact when no
    /// insert or removal is in progress).
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether no flow is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The timeouts in force (each capped at 2²³ − 1 s).
    pub fn timeouts(&self) -> Timeouts {
        self.v4.timeouts()
    }

    /// Replaces the timeouts while the workers run (`ipvsadm --set`): each
    /// expiry check reads them afresh, so a held flow is aged by the new
    /// timeout of its state from its next lookup or sweep on, as IPVS's
    /// `--set` applies to existing connections at their next timer
    /// re-arm. Each value is capped at 2²³ − 1 s.
    pub fn set_timeouts(&self, t: Timeouts) {
        let t = t.capped();
        self.v4.set_timeouts(t);
        self.v6.set_timeouts(t);
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

    /// `key` hashed for its store: compute it once per packet and hand it
    /// to [`FlowTable::prefetch_hashed`] and [`FlowTable::lookup_hashed`].
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> KeyHash {
        KeyHash(match V4::key(key) {
            Some(k) => HashOf::V4(self.v4.hashed(k)),
            None => HashOf::V6(self.v6.hashed(V6::key_any(key))),
        })
    }

    /// Asks the CPU for the home bucket of the index, the line a lookup of
    /// `key` reads first (burst processing calls this for every frame of a
    /// burst before processing the first; [`FlowTable::prefetch_record`]
    /// then asks for the record or the second bucket).
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) {
        self.prefetch_hashed(&self.hash(key));
    }

    /// [`FlowTable::prefetch`] of a key already hashed.
    #[inline]
    pub fn prefetch_hashed(&self, h: &KeyHash) {
        match &h.0 {
            HashOf::V4(h) => self.v4.prefetch(h),
            HashOf::V6(h) => self.v6.prefetch(h),
        }
    }

    /// Asks the CPU for the record a lookup of `h` will most likely read,
    /// and remembers it in `h` so that [`FlowTable::lookup_hashed`] tries it
    /// first; call it once the bucket prefetched by
    /// [`FlowTable::prefetch_hashed`] has had time to arrive.
    #[inline]
    pub fn prefetch_record(&self, h: &mut KeyHash) {
        match &mut h.0 {
            HashOf::V4(h) => self.v4.prefetch_record(h),
            HashOf::V6(h) => self.v6.prefetch_record(h),
        }
    }

    /// Finds the live flow with `key` in either direction.
    ///
    /// Lock-free and write-free; an expired flow is a miss. Does not refresh
    /// the flow: call [`FlowTable::touch`] for that.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, now: u32) -> Option<Hit> {
        self.lookup_hashed(&self.hash(key), now)
    }

    /// [`FlowTable::lookup`] of a key already hashed.
    #[inline]
    pub fn lookup_hashed(&self, h: &KeyHash, now: u32) -> Option<Hit> {
        match &h.0 {
            HashOf::V4(h) => self
                .v4
                .lookup(h, now, |f| found_hit::<V4, 5>(f, false, now)),
            HashOf::V6(h) => self
                .v6
                .lookup(h, now, |f| found_hit::<V6, 11>(f, true, now)),
        }
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
    /// could be evicted; [`InsertError::Unsupported`] if the entry does not
    /// fit a record (see [`layout`]).
    pub fn insert(&self, entry: &FlowEntry, now: u32) -> Result<FlowId, InsertError> {
        self.tick(now);
        let pcode = proto_code(entry.original.proto).ok_or(InsertError::Unsupported)?;
        let init = match entry.original.proto {
            proto::TCP => ST_SYN_SENT,
            proto::UDP => ST_UDP,
            _ => ST_OTHER,
        };
        if let Some(w) = V4::pack(entry) {
            let (Some(o), Some(r)) = (V4::key(&entry.original), V4::key(&entry.reply)) else {
                return Err(InsertError::Unsupported);
            };
            let (ho, hr) = (self.v4.hashed(o), self.v4.hashed(r));
            return self
                .v4
                .insert(&ho, &hr, fresh(w, pcode, entry.backend, init), now)
                .map(|(rec, gen)| FlowId { rec, gen });
        }
        if let Some(w) = V6::pack(entry) {
            let (Some(o), Some(r)) = (V6::key(&entry.original), V6::key(&entry.reply)) else {
                return Err(InsertError::Unsupported);
            };
            let (ho, hr) = (self.v6.hashed(o), self.v6.hashed(r));
            return self
                .v6
                .insert(&ho, &hr, fresh(w, pcode, entry.backend, init), now)
                .map(|(ri, gen)| FlowId {
                    rec: ri | V6_BIT,
                    gen,
                });
        }
        Err(InsertError::Unsupported)
    }

    /// Refreshes flow `id` for a packet in `dir` at `now` and advances its
    /// TCP state from the packet's `tcp_flags` (FIN=1 SYN=2 RST=4 ACK=0x10;
    /// ignored for non-TCP flows). Returns the new state, or
    /// [`FlowState::Close`] if the flow is gone or expired (it is then not
    /// revived). A stale `id`, whose record was reused by another flow
    /// meanwhile, leaves that flow alone and also returns `Close`.
    ///
    /// Writes the shared record only when the state or the second changes.
    #[inline]
    pub fn touch(&self, id: FlowId, dir: Direction, tcp_flags: u8, now: u32) -> FlowState {
        let st = if id.rec & V6_BIT == 0 {
            self.v4.touch(id.rec, id.gen, dir, tcp_flags, now)
        } else {
            self.v6.touch(id.rec & !V6_BIT, id.gen, dir, tcp_flags, now)
        };
        st.map_or(FlowState::Close, public_state)
    }

    /// Marks flow `id` as published to the XDP fast path, so that
    /// lookups of it say so ([`Hit::fast_path`]) and its FIN or RST
    /// withdraws its map entries; a flow never marked costs no map
    /// operation when it closes. True if the flow is marked now (or was),
    /// false if it is gone, expired, stale (`id`'s record holds another
    /// flow) or no longer forwardable by the fast path (a TCP flow not
    /// `ESTABLISHED`: a FIN or RST landed since the caller's lookup): the
    /// caller must then not publish.
    ///
    /// One compare-and-swap on the meta word, once per flow (not per
    /// packet); every later write of the meta word keeps the mark. Call it
    /// *before* inserting the map entry: a worker that sees the flow's FIN
    /// after the mark (its `touch` is ordered after the mark on the same
    /// word) then sees the mark in its lookup and withdraws.
    pub fn mark_fast_path(&self, id: FlowId, now: u32) -> bool {
        if id.rec & V6_BIT == 0 {
            self.v4.mark_fast(id.rec, id.gen, now)
        } else {
            self.v6.mark_fast(id.rec & !V6_BIT, id.gen, now)
        }
    }

    /// Removes flow `id`; false if it was already gone (a stale `id` never
    /// removes the flow that reused its record).
    pub fn remove(&self, id: FlowId) -> bool {
        if id.rec & V6_BIT == 0 {
            self.v4.remove(id.rec, id.gen)
        } else {
            self.v6.remove(id.rec & !V6_BIT, id.gen)
        }
    }

    /// Flows early-dropped so far, by class (both stores; never reset).
    pub fn early_drops(&self) -> EarlyDrops {
        let [a, b] = [self.v4.early_drops(), self.v6.early_drops()];
        let sum = |c: Evict| a[c as usize] + b[c as usize];
        EarlyDrops {
            expired: sum(Evict::Expired),
            embryonic: sum(Evict::Embryonic),
            idle: sum(Evict::Idle),
        }
    }

    /// Sweeps up to `max_records` records of each store from a clock hand
    /// and reclaims the expired ones; returns how many. Call it
    /// periodically (e.g. every 100 ms with `max_records = capacity / 100`)
    /// from one housekeeping thread.
    pub fn expire(&self, now: u32, max_records: usize) -> usize {
        self.tick(now);
        self.v4.expire(now, max_records) + self.v6.expire(now, max_records)
    }

    /// Calls `f(entry, state, seconds until expiry)` for every live flow,
    /// aged against [`FlowTable::clock`]. Each entry is a consistent
    /// snapshot; the set of flows is not (flows may come and go meanwhile).
    pub fn for_each(&self, f: impl FnMut(&FlowEntry, FlowState, u32)) {
        self.for_each_at(self.clock(), f)
    }

    /// [`FlowTable::for_each`] aged against an explicit `now`.
    pub fn for_each_at(&self, now: u32, mut f: impl FnMut(&FlowEntry, FlowState, u32)) {
        for (_, m, w) in self.v4.each() {
            if !self.v4.is_expired(m, now) {
                let e = V4::unpack(&w, proto_of(m_proto(m)), m_backend(m));
                f(&e, public_state(m_state(m)), self.v4.left(m, now));
            }
        }
        for (_, m, w) in self.v6.each() {
            if !self.v6.is_expired(m, now) {
                let e = V6::unpack(&w, proto_of(m_proto(m)), m_backend(m));
                f(&e, public_state(m_state(m)), self.v6.left(m, now));
            }
        }
    }

    /// Removes every flow (expired ones included) for which `pred` holds,
    /// e.g. the flows of a removed backend; returns how many.
    pub fn remove_where(&self, mut pred: impl FnMut(&FlowEntry) -> bool) -> usize {
        let mut n = 0;
        for (ri, m, w) in self.v4.each() {
            debug_assert!(is_committed(m));
            if pred(&V4::unpack(&w, proto_of(m_proto(m)), m_backend(m)))
                && self.v4.remove_read(ri, m)
            {
                n += 1;
            }
        }
        for (ri, m, w) in self.v6.each() {
            if pred(&V6::unpack(&w, proto_of(m_proto(m)), m_backend(m)))
                && self.v6.remove_read(ri, m)
            {
                n += 1;
            }
        }
        n
    }
}

#[cfg(all(test, feature = "loom"))]
mod loom_tests;
#[cfg(all(test, not(feature = "loom")))]
mod tests;
