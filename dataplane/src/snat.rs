//! SNAT (masquerade) source selection: which LB address and source port a
//! masqueraded flow leaves with, so that its reply tuple (backend → SNAT
//! address:port) belongs to no other live flow.
//!
//! # Capacity
//!
//! A reply tuple is (backend address, backend port, protocol, SNAT
//! address, SNAT port), so the port space is per backend port and per SNAT
//! address: `addresses × ports` concurrent masqueraded flows per backend
//! (the kernel's MASQUERADE has the same bound per conntrack reply tuple).
//! The ports come from [`PortRanges`], several inclusive ranges; the
//! control plane's default is every port from 1024 up that is outside the
//! host's `net.ipv4.ip_local_port_range`, so the host's own connections
//! never collide with masqueraded ones (36280 ports with the default
//! ephemeral range 32768-60999). The addresses are the `--snat-address`es
//! of the backend's family ([`SnatAddrs`]), or else the route's preferred
//! source towards the backend.
//!
//! # Probing: bounded, as the kernel's
//!
//! [`allocate`] looks candidate reply tuples up in the flow table (a
//! write-free lookup, ~0.1 µs) and inserts at the first free one, with the
//! kernel's bounds (`nf_nat_l4proto_unique_tuple`,
//! `net/netfilter/nf_nat_proto.c`): a first round of [`FIRST_ROUND`] = 128
//! candidates (`NF_NAT_MAX_ATTEMPTS`) and at most [`MAX_PROBES`] = 240 in
//! all (its rounds of 128, 64, 32, 16), whatever the occupancy. A space of
//! at most 128 (address, port) pairs is walked whole from a hashed offset,
//! so exhaustion there is exact. A larger one is probed at independent
//! pseudo-random points rather than the kernel's linear runs: linear
//! probing clusters (a run of taken ports grows by every flow that lands
//! in it), and at 95% occupancy 240 linear probes from a few offsets often
//! stay inside one cluster, while 240 independent probes all miss the 5%
//! of free ports with probability 0.95²⁴⁰ ≈ 5·10⁻⁶. The points are a
//! keyed hash (seed chosen at start) of the client's tuple and the probe
//! number, so a flooder cannot aim its flows at the ports a given client
//! will try.
//! DPVS's alternative, per-worker free lists of ports (`sa_pool`), gives
//! O(1) allocation but needs the flow table to hand ports back when flows
//! die, and shares one port space among all backends (64k flows per local
//! address in total instead of per backend); probing the flow table itself
//! needs no second structure that could disagree with it.
//!
//! # Reusing a closed flow's port
//!
//! A probe that finds the port held by a masqueraded flow in `TIME_WAIT`
//! (FINs from both sides) or `CLOSE` (a RST) that has been idle for
//! [`QUIET_SECS`] takes the port over: the old flow is removed and the new
//! one inserted, as the kernel's `nf_nat_used_tuple_harder` (Linux 6.6+)
//! kills a closing conntrack entry to reuse its tuple, but only after
//! [`REUSE_AFTER`] = 32 failed probes (the kernel's
//! `NF_NAT_HARDER_THRESH`), so a free port is preferred while the space
//! is not nearly full. The new SYN cannot be confused with the old
//! connection: both ends have closed it (both FINs, or a RST), the client
//! side differs (the new flow's original tuple missed in the table), and
//! after [`QUIET_SECS`] no segment of the old connection is in flight on
//! a LAN — the same one-second quiet time Linux demands before it reuses
//! one of its own TIME_WAIT tuples (`tcp_twsk_unique`, `tcp_tw_reuse`).
//! The kernel also checks that the new SYN's sequence number lies beyond
//! the old connection's (RFC 6191); a flow record keeps no sequence
//! numbers, so Sluice leaves that judgement to the backend, whose
//! TIME_WAIT socket applies exactly that RFC 6191 test
//! (`tcp_timewait_state_process`: a SYN with a newer timestamp or a
//! sequence number above the old one opens the new connection; otherwise
//! it answers with an ACK, the client resets it and retries).
//!
//! # Embryonic flows under a SYN flood
//!
//! A spoofed SYN creates a masqueraded flow whose handshake never
//! completes: `SYN_SENT`/`SYN_RECV`, kept 120/60 s by the IPVS timeouts,
//! so 20k spoofed SYNs in 2 s would hold 20k ports for a minute. When a
//! whole first round (128 probes) finds neither a free port nor a closed
//! one, [`allocate`] evicts the *oldest* embryonic flow it saw among those
//! probes, provided it has been idle for [`QUIET_SECS`]. A live handshake
//! is never idle that long without a retransmission refreshing it (the
//! initial retransmission timeout is 1 s, RFC 6298 § 2.1, and each SYN or
//! SYN-ACK retransmission touches the flow); an evicted `SYN_SENT` flow
//! loses nothing (the client's next SYN makes a new flow), and an evicted
//! `SYN_RECV` flow has lost packets for over a second already. Under a
//! flood the oldest of 128 random embryonic flows is older than nearly
//! every other one, so a legitimate handshake in progress (idle ≈ one RTT)
//! is not the victim. This was chosen over a shorter embryonic timeout for
//! masqueraded flows because it costs nothing until the ports are full (a
//! timeout would need a per-flow timeout class in the record and would
//! still let a fast enough flood fill the space) and frees exactly as many
//! ports as new clients need.
//!
//! Counted: [`Alloc::Reused`] as `snat_port_reused`, [`Alloc::Evicted`]
//! as `snat_embryonic_evicted`; failure as `drop_snat_exhausted`.
//!
//! # Per-worker shares (FULLNAT)
//!
//! Two workers never end up with the same reply tuple: the flow table's
//! insert is the arbiter (a second insert of a taken reply tuple fails and
//! the loser probes on). FULLNAT, DPVS's model (`sa_pool`, one slice of the
//! port space per lcore), also partitions the ports, so that two workers do
//! not even probe for the same (address, port): a [`Share`] gives worker
//! `i` of `n` the ports whose rank in [`PortRanges`] is `i` modulo `n`.
//! Replies still find their flow on any queue, since the table is shared;
//! the share only keeps the workers' probes apart, so that under load one
//! worker's insert never loses a race to another's and the per-worker
//! capacity is exact (`addresses × ports / n`). Masqueraded NAT flows use
//! the whole space ([`Share::WHOLE`]): their capacity is counted per
//! backend, and halving it per worker would halve what one busy queue can
//! hold.

use std::fmt;

use crate::flow_table::{Direction, FlowEntry, FlowId, FlowState, FlowTable, Hit, InsertError};
use crate::pipeline::DropReason;
use crate::types::Addr;

/// Candidates of the first probing round (the kernel's `NF_NAT_MAX_ATTEMPTS`).
pub const FIRST_ROUND: u32 = 128;
/// Most probes for one flow: the kernel's rounds, 128 + 64 + 32 + 16.
pub const MAX_PROBES: u32 = 240;
/// Failed probes after which a closed flow's port is reused (the kernel's
/// `NF_NAT_HARDER_THRESH`).
pub const REUSE_AFTER: u32 = 32;
/// Idle seconds (on the flow table's whole-second clock, so at least one
/// real second) before a closed or embryonic flow's port may be taken.
pub const QUIET_SECS: u32 = 2;
/// Most port ranges (the steering program's `snat_range` map holds this
/// many).
pub const MAX_RANGES: usize = 8;

/// Why a port range list is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    /// No range at all.
    #[error("no SNAT port range")]
    Empty,
    /// A range that starts at port 0 or ends below its start.
    #[error("SNAT port range {lo}-{hi}: need 1 <= LO <= HI")]
    Bad {
        /// Low end.
        lo: u16,
        /// High end.
        hi: u16,
    },
    /// Two ranges share ports.
    #[error("SNAT port ranges {a} and {b} overlap")]
    Overlap {
        /// One range, `LO-HI`.
        a: String,
        /// The other.
        b: String,
    },
    /// More ranges than the steering program holds.
    #[error("{0} SNAT port ranges: at most {MAX_RANGES}")]
    TooMany(usize),
}

/// Disjoint inclusive port ranges, sorted, with their total size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRanges {
    ranges: Vec<(u16, u16)>,
    total: u32,
}

impl Default for PortRanges {
    /// 61000-65535, the range outside Linux's default ephemeral range
    /// 32768-60999 above it.
    fn default() -> Self {
        PortRanges::new(&[(61000, 65535)]).expect("a valid range")
    }
}

impl PortRanges {
    /// The ranges, checked: non-empty, each `1 <= lo <= hi`, disjoint, at
    /// most [`MAX_RANGES`].
    ///
    /// # Errors
    /// A [`PortRangeError`] naming the offending range.
    pub fn new(ranges: &[(u16, u16)]) -> Result<PortRanges, PortRangeError> {
        if ranges.is_empty() {
            return Err(PortRangeError::Empty);
        }
        if ranges.len() > MAX_RANGES {
            return Err(PortRangeError::TooMany(ranges.len()));
        }
        let mut v = ranges.to_vec();
        for &(lo, hi) in &v {
            if lo == 0 || lo > hi {
                return Err(PortRangeError::Bad { lo, hi });
            }
        }
        v.sort_unstable();
        for w in v.windows(2) {
            if w[1].0 <= w[0].1 {
                return Err(PortRangeError::Overlap {
                    a: format!("{}-{}", w[0].0, w[0].1),
                    b: format!("{}-{}", w[1].0, w[1].1),
                });
            }
        }
        let total = v.iter().map(|&(lo, hi)| u32::from(hi - lo) + 1).sum();
        Ok(PortRanges { ranges: v, total })
    }

    /// Every port from 1024 to 65535 outside `[lo, hi]` (the host's
    /// ephemeral range), or `None` if that leaves nothing.
    pub fn complement_of(lo: u16, hi: u16) -> Option<PortRanges> {
        let mut v = Vec::new();
        if lo > 1024 {
            v.push((1024, lo - 1));
        }
        if hi < u16::MAX {
            v.push((hi.max(1023) + 1, u16::MAX));
        }
        PortRanges::new(&v).ok()
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// Number of ports.
    pub fn len(&self) -> u32 {
        self.total
    }

    /// Never true (a `PortRanges` holds at least one port).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Whether `port` is one of them.
    pub fn contains(&self, port: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    /// The part of `[lo, hi]` that these ranges share, as its lowest and
    /// highest shared port.
    pub fn overlap(&self, lo: u16, hi: u16) -> Option<(u16, u16)> {
        let shared = self
            .ranges
            .iter()
            .filter_map(|&(a, b)| (a.max(lo) <= b.min(hi)).then_some((a.max(lo), b.min(hi))));
        shared.fold(None, |acc: Option<(u16, u16)>, (a, b)| match acc {
            None => Some((a, b)),
            Some((x, y)) => Some((x.min(a), y.max(b))),
        })
    }

    /// The rank of `port` in ascending order (the inverse of
    /// [`PortRanges::nth`]), or `None` if it is not one of them.
    pub fn rank(&self, port: u16) -> Option<u32> {
        let mut before = 0u32;
        for &(lo, hi) in &self.ranges {
            if (lo..=hi).contains(&port) {
                return Some(before + u32::from(port - lo));
            }
            before += u32::from(hi - lo) + 1;
        }
        None
    }

    /// The `i`-th port in ascending order (`i < len()`; wraps otherwise).
    #[inline]
    pub fn nth(&self, i: u32) -> u16 {
        let mut i = i % self.total.max(1);
        for &(lo, hi) in &self.ranges {
            let n = u32::from(hi - lo) + 1;
            if i < n {
                return lo + i as u16;
            }
            i -= n;
        }
        self.ranges[0].0
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{lo}-{hi}")?;
        }
        Ok(())
    }
}

/// The configured SNAT addresses (`--snat-address`), by family. Empty for
/// a family: masquerade with the route's preferred source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnatAddrs {
    v4: Vec<Addr>,
    v6: Vec<Addr>,
}

impl SnatAddrs {
    /// Splits `addrs` by family, dropping duplicates, keeping their order.
    pub fn new(addrs: &[Addr]) -> SnatAddrs {
        let mut s = SnatAddrs::default();
        for a in addrs {
            let v = if a.is_v4() { &mut s.v4 } else { &mut s.v6 };
            if !v.contains(a) {
                v.push(*a);
            }
        }
        s
    }

    /// The addresses of `backend`'s family.
    #[inline]
    pub fn for_backend(&self, backend: &Addr) -> &[Addr] {
        if backend.is_v4() {
            &self.v4
        } else {
            &self.v6
        }
    }

    /// Every address, IPv4 first.
    pub fn all(&self) -> impl Iterator<Item = &Addr> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// How [`allocate`] found the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alloc {
    /// A port no flow held.
    Free,
    /// The port of a closed flow (`TIME_WAIT` or `CLOSE`), removed for it.
    Reused,
    /// The port of an embryonic flow, evicted for it.
    Evicted,
}

/// One worker's slice of the SNAT ports (module doc, "Per-worker
/// shares"): the ports whose rank is `index` modulo `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    index: u32,
    count: u32,
}

impl Default for Share {
    /// [`Share::WHOLE`].
    fn default() -> Share {
        Share::WHOLE
    }
}

impl Share {
    /// Every port (one worker, or a flow kind that is not partitioned).
    pub const WHOLE: Share = Share { index: 0, count: 1 };

    /// Worker `index` of `count` (`count` 0 is taken as 1, `index` modulo
    /// `count`).
    pub fn new(index: usize, count: usize) -> Share {
        let count = u32::try_from(count.max(1)).unwrap_or(u32::MAX);
        let index = u32::try_from(index % count as usize).unwrap_or(0);
        Share { index, count }
    }

    /// This worker's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Number of workers sharing the ports.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// How many of `ports` are this share's.
    #[inline]
    pub fn len(&self, ports: &PortRanges) -> u32 {
        ports.len().saturating_sub(self.index).div_ceil(self.count)
    }

    /// Whether this share has none of `ports` (more workers than ports).
    pub fn is_empty(&self, ports: &PortRanges) -> bool {
        self.len(ports) == 0
    }

    /// The `j`-th of this share's ports (`j < len(ports)`).
    #[inline]
    pub fn nth(&self, ports: &PortRanges, j: u32) -> u16 {
        ports.nth(j.saturating_mul(self.count).saturating_add(self.index))
    }

    /// Whether `port` is one of this share's `ports`.
    pub fn owns(&self, ports: &PortRanges, port: u16) -> bool {
        ports
            .rank(port)
            .is_some_and(|r| r % self.count == self.index)
    }
}

/// The source choices for one masqueraded flow.
#[derive(Clone, Copy, Debug)]
pub struct Space<'a> {
    /// Addresses to choose from (never empty).
    pub addrs: &'a [Addr],
    /// Ports to choose from.
    pub ports: &'a PortRanges,
    /// The part of `ports` this worker hands out ([`Share::WHOLE`]: all).
    pub share: Share,
    /// Hash key (random per process).
    pub seed: u64,
}

impl Space<'_> {
    /// Number of (address, port) pairs.
    pub fn len(&self) -> u64 {
        self.addrs.len() as u64 * u64::from(self.share.len(self.ports))
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn at(&self, i: u64) -> (Addr, u16) {
        let n = u64::from(self.share.len(self.ports));
        (
            self.addrs[(i / n) as usize % self.addrs.len()],
            self.share.nth(self.ports, (i % n) as u32),
        )
    }
}

/// A closed or embryonic masqueraded flow whose port may be taken.
#[derive(Clone, Copy)]
struct Cand {
    hit: Hit,
    addr: Addr,
    port: u16,
}

/// Inserts `entry` (a masqueraded flow: `entry.reply` is backend → SNAT)
/// with a SNAT address and port from `space` such that its reply tuple is
/// owned by no other live flow; sets `entry.reply.dst` and `.dport`.
///
/// # Errors
/// [`DropReason::SnatExhausted`] when every probe found a port held by a
/// flow that may be neither reused nor evicted; `FlowTableFull`,
/// `FlowExists` (the original tuple itself was inserted meanwhile) or
/// `FlowUnsupported` from the table.
pub fn allocate(
    flows: &FlowTable,
    entry: &mut FlowEntry,
    space: &Space<'_>,
    now: u32,
) -> Result<(FlowId, Alloc), DropReason> {
    let total = space.len();
    if total == 0 {
        return Err(DropReason::SnatExhausted);
    }
    let h = mix(tuple_hash(entry, space.seed));
    // A small space is walked whole (exact exhaustion); a large one is
    // probed at independent random points (no clustering).
    let small = total <= u64::from(FIRST_ROUND);
    let (limit, checkpoint) = if small {
        (total as u32, total as u32)
    } else {
        (MAX_PROBES, FIRST_ROUND)
    };
    let mut closed: Option<Cand> = None;
    let mut embryonic: Option<Cand> = None;
    for i in 0..limit {
        let idx = if small {
            (h + u64::from(i)) % total
        } else {
            mix(h.wrapping_add(u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15))) % total
        };
        let (addr, port) = space.at(idx);
        entry.reply.dst = addr;
        entry.reply.dport = port;
        match flows.lookup(&entry.reply, now) {
            None => match try_insert(flows, entry, now)? {
                Some(id) => return Ok((id, Alloc::Free)),
                None => continue,
            },
            Some(hit) => classify(hit, addr, port, &mut closed, &mut embryonic),
        }
        let probes = i + 1;
        if probes >= REUSE_AFTER || probes == checkpoint {
            if let Some(c) = closed.take() {
                if let Some(id) = take_over(flows, entry, &c, now)? {
                    return Ok((id, Alloc::Reused));
                }
            }
        }
        if probes == checkpoint {
            if let Some(c) = embryonic.take() {
                if let Some(id) = take_over(flows, entry, &c, now)? {
                    return Ok((id, Alloc::Evicted));
                }
            }
        }
    }
    // Probes after the first round only note candidates; use them.
    if let Some(c) = closed {
        if let Some(id) = take_over(flows, entry, &c, now)? {
            return Ok((id, Alloc::Reused));
        }
    }
    if let Some(c) = embryonic {
        if let Some(id) = take_over(flows, entry, &c, now)? {
            return Ok((id, Alloc::Evicted));
        }
    }
    Err(DropReason::SnatExhausted)
}

/// Notes a probed port's holder if its port may be taken: a masqueraded
/// flow (the port is its reply tuple) quiet for [`QUIET_SECS`], closed
/// (first one seen) or embryonic (the oldest seen).
#[inline]
fn classify(
    hit: Hit,
    addr: Addr,
    port: u16,
    closed: &mut Option<Cand>,
    embryonic: &mut Option<Cand>,
) {
    if hit.dir != Direction::Reply || hit.idle < QUIET_SECS {
        return;
    }
    let c = Cand { hit, addr, port };
    match hit.state {
        FlowState::TimeWait | FlowState::Close if closed.is_none() => *closed = Some(c),
        FlowState::SynSent | FlowState::SynRecv
            if embryonic.as_ref().is_none_or(|e| e.hit.idle < hit.idle) =>
        {
            *embryonic = Some(c)
        }
        _ => {}
    }
}

/// Removes `c`'s flow and inserts `entry` on its port; `None` if another
/// worker took the port first.
fn take_over(
    flows: &FlowTable,
    entry: &mut FlowEntry,
    c: &Cand,
    now: u32,
) -> Result<Option<FlowId>, DropReason> {
    entry.reply.dst = c.addr;
    entry.reply.dport = c.port;
    // False if it went meanwhile (expired, or another worker took it):
    // either way the insert below decides.
    flows.remove(c.hit.id);
    try_insert(flows, entry, now)
}

/// Inserts `entry`; `None` if its reply tuple was taken meanwhile.
#[inline]
fn try_insert(
    flows: &FlowTable,
    entry: &FlowEntry,
    now: u32,
) -> Result<Option<FlowId>, DropReason> {
    match flows.insert(entry, now) {
        Ok(id) => Ok(Some(id)),
        Err(InsertError::Exists) => {
            if flows.lookup(&entry.original, now).is_some() {
                // Not the port: the original tuple itself exists (another
                // worker won the race for this flow).
                return Err(DropReason::FlowExists);
            }
            Ok(None)
        }
        Err(InsertError::Full) => Err(DropReason::FlowTableFull),
        Err(InsertError::Unsupported) => Err(DropReason::FlowUnsupported),
    }
}

/// FNV-1a, started from `seed`, over what identifies the client's
/// connection and the backend.
#[inline]
fn tuple_hash(e: &FlowEntry, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    let k = &e.original;
    let parts = [
        &k.src.0[..],
        &k.sport.to_be_bytes(),
        &e.reply.src.0,
        &e.reply.sport.to_be_bytes(),
        &[k.proto],
    ];
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
#[path = "snat_tests.rs"]
mod tests;
