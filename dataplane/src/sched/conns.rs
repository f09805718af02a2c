//! Connection counts per real server, as IPVS keeps them: *active* =
//! established TCP connections, *inactive* = every other flow (TCP in
//! SYN_SENT, SYN_RECV, FIN_WAIT or CLOSE, UDP, SCTP) until it expires.
//!
//! The design, and why, is in the [`super`] module doc. In short: every
//! backend has a base (`offset`) written only by the exact recount, plus
//! [`SLOTS`] delta counters written by the workers at connection events
//! (a flow created, a TCP flow entering or leaving ESTABLISHED). A reader
//! sums them: `count = offset + Σ slots`. The recount makes the sum exact
//! again (flows that expired silently, or were removed, leave no event):
//!
//! 1. read `S = Σ slots` for every backend;
//! 2. scan the flow table: `E` = the exact counts;
//! 3. store `offset = E − S` (one 64-bit store per backend, so a reader
//!    never sees half of it).
//!
//! Events between 1 and 2 that the scan also saw are counted twice until
//! the next recount (a small over-count, never an under-count of what the
//! scan saw; a recount runs every second). All arithmetic wraps in `u32`;
//! a sum read as negative (an event seen before the recount that counted
//! its flow) is clamped to 0.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::flow_table::{FlowState, FlowTable};
use crate::pipeline::is_dr_flow;
use crate::service::{ServiceSpec, ServiceTable};
use crate::types::proto;

/// Delta slots per backend. Each thread writes the slot its id picks
/// (ids are handed out in thread-start order), so up to `SLOTS` workers
/// never share a counter line; more workers share slots, which stays
/// correct because every update is an atomic add.
pub const SLOTS: usize = 4;

/// Entries per 64-byte line (`Delta` is 8 bytes): each slot's array is
/// padded to whole lines so two slots never share one.
const PER_LINE: usize = 8;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The delta slot of the calling thread.
#[inline]
fn my_slot() -> usize {
    SLOT.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
        s.set(v);
        v
    })
}

#[derive(Debug, Default)]
struct Delta {
    active: AtomicU32,
    inactive: AtomicU32,
}

/// The connection counts of one service's backends (empty when neither
/// the scheduler nor a threshold needs them: nothing is counted then).
#[derive(Debug, Default)]
pub struct ConnCounts {
    n: usize,
    stride: usize,
    /// Per backend: `active << 32 | inactive`, each `E − S` of the last
    /// recount (wrapping).
    offset: Box<[AtomicU64]>,
    /// `SLOTS` arrays of `stride` deltas.
    deltas: Box<[Delta]>,
    /// IPVS's `IP_VS_DEST_F_OVERLOAD` per backend (thresholds only).
    overload: Box<[AtomicBool]>,
}

impl ConnCounts {
    /// Counts for `spec`'s backends if its scheduler reads counts or a
    /// backend has an upper threshold; else an empty, inert value.
    pub fn for_spec(spec: &ServiceSpec) -> ConnCounts {
        let thresholds = spec.backends.iter().any(|b| b.upper > 0);
        if !(spec.sched.counts_connections() || thresholds) {
            return ConnCounts::default();
        }
        ConnCounts::new(spec.backends.len(), thresholds)
    }

    fn new(n: usize, thresholds: bool) -> ConnCounts {
        let stride = n.div_ceil(PER_LINE) * PER_LINE;
        ConnCounts {
            n,
            stride,
            offset: (0..n).map(|_| AtomicU64::new(0)).collect(),
            deltas: (0..SLOTS * stride).map(|_| Delta::default()).collect(),
            overload: if thresholds {
                (0..n).map(|_| AtomicBool::new(false)).collect()
            } else {
                Box::default()
            },
        }
    }

    /// Whether anything is counted for this service.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.n > 0
    }

    #[inline]
    fn delta(&self, b: usize) -> Option<&Delta> {
        if b >= self.n {
            return None;
        }
        self.deltas.get(my_slot() * self.stride + b)
    }

    /// A new flow to backend `b` (inactive until TCP establishes).
    #[inline]
    pub fn on_new(&self, b: usize) {
        if let Some(d) = self.delta(b) {
            d.inactive.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A TCP flow of backend `b` entered (`true`) or left ESTABLISHED.
    #[inline]
    pub fn on_established(&self, b: usize, entered: bool) {
        if let Some(d) = self.delta(b) {
            let (up, down) = if entered {
                (&d.active, &d.inactive)
            } else {
                (&d.inactive, &d.active)
            };
            up.fetch_add(1, Ordering::Relaxed);
            down.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Σ of the delta slots of backend `b` (wrapping).
    #[inline]
    fn sum(&self, b: usize) -> (u32, u32) {
        let mut a = 0u32;
        let mut i = 0u32;
        for s in 0..SLOTS {
            let d = &self.deltas[s * self.stride + b];
            a = a.wrapping_add(d.active.load(Ordering::Relaxed));
            i = i.wrapping_add(d.inactive.load(Ordering::Relaxed));
        }
        (a, i)
    }

    /// `(active, inactive)` connections of backend `b` (0, 0 when not
    /// counted).
    #[inline]
    pub fn get(&self, b: usize) -> (u32, u32) {
        if b >= self.n {
            return (0, 0);
        }
        let off = self.offset[b].load(Ordering::Relaxed);
        let (a, i) = self.sum(b);
        let clamp = |v: u32| if (v as i32) < 0 { 0 } else { v };
        (
            clamp(((off >> 32) as u32).wrapping_add(a)),
            clamp((off as u32).wrapping_add(i)),
        )
    }

    /// Active connections of backend `b`.
    #[inline]
    pub fn active(&self, b: usize) -> u32 {
        self.get(b).0
    }

    /// IPVS's `ip_vs_dest_conn_overhead`: `(active << 8) + inactive`.
    #[inline]
    pub fn overhead(&self, b: usize) -> u64 {
        let (a, i) = self.get(b);
        (u64::from(a) << 8) + u64::from(i)
    }

    /// Whether backend `b` is over its thresholds (IPVS's
    /// `IP_VS_DEST_F_OVERLOAD`), updating the flag as the kernel does:
    /// set once active + inactive reaches `upper` (`ip_vs_bind_dest`),
    /// cleared when the total falls under `lower`, or under 3/4 of
    /// `upper` when `lower` is 0 (`ip_vs_unbind_dest`). Evaluated at pick
    /// time from the counts, which is where the kernel's flag is read.
    #[inline]
    pub fn overloaded(&self, b: usize, upper: u32, lower: u32) -> bool {
        if upper == 0 {
            return false;
        }
        let Some(flag) = self.overload.get(b) else {
            return false;
        };
        let (a, i) = self.get(b);
        let total = u64::from(a) + u64::from(i);
        if total >= u64::from(upper) {
            flag.store(true, Ordering::Relaxed);
            return true;
        }
        if !flag.load(Ordering::Relaxed) {
            return false;
        }
        let clear = if lower != 0 {
            total < u64::from(lower)
        } else {
            total * 4 < u64::from(upper) * 3
        };
        if clear {
            flag.store(false, Ordering::Relaxed);
        }
        !clear
    }

    /// Step 1 of a recount: the current delta sums.
    fn sums(&self) -> Vec<(u32, u32)> {
        (0..self.n).map(|b| self.sum(b)).collect()
    }

    /// Step 3 of a recount: exact counts `exact` against the sums `seen`
    /// read before the scan.
    fn settle(&self, seen: &[(u32, u32)], exact: &[(u32, u32)]) {
        for b in 0..self.n {
            let a = exact[b].0.wrapping_sub(seen[b].0);
            let i = exact[b].1.wrapping_sub(seen[b].1);
            self.offset[b].store(u64::from(a) << 32 | u64::from(i), Ordering::Relaxed);
        }
    }
}

/// Recounts, from the flow table, the connections of every service of
/// `table` that counts them (see the module doc). O(flow-table capacity):
/// the housekeeping thread runs it after each expiry sweep, and
/// [`crate::worker::Shared::publish`] on every new table.
///
/// A flow is counted for the service and backend indices its record
/// names, and only if that backend is still the one it went to (a NAT
/// flow's reply source is the backend's address and port), so flows of an
/// older table whose indices now name another backend are not counted.
pub fn recount(table: &ServiceTable, flows: &FlowTable) {
    if !table.counts_connections() {
        return;
    }
    let counted: Vec<(u32, Vec<(u32, u32)>)> = table
        .indexed()
        .filter(|(_, s)| s.conns.enabled())
        .map(|(i, s)| (i, s.conns.sums()))
        .collect();
    if counted.is_empty() {
        return;
    }
    // By slot, then by position in the service's backends.
    let mut exact: Vec<Vec<(u32, u32)>> = vec![Vec::new(); table.slot_count()];
    for (i, _) in &counted {
        if let Some(s) = table.get(*i) {
            exact[*i as usize] = vec![(0, 0); s.spec.backends.len()];
        }
    }
    flows.for_each(|e, state, _| {
        let Some(svc) = table.get(e.service) else {
            return;
        };
        let Some(b) = svc.backend_position(e.backend) else {
            return;
        };
        let Some(slot) = exact.get_mut(e.service as usize).and_then(|v| v.get_mut(b)) else {
            return;
        };
        let be = &svc.spec.backends[b];
        if !is_dr_flow(e) && (e.reply.src != be.addr || e.reply.sport != be.port) {
            return;
        }
        if e.original.proto == proto::TCP && state == FlowState::Established {
            slot.0 += 1;
        } else {
            slot.1 += 1;
        }
    });
    for (i, seen) in &counted {
        if let Some(s) = table.get(*i) {
            s.conns.settle(seen, &exact[*i as usize]);
        }
    }
}

/// Makes backend `b`'s counts exactly (`active`, `inactive`) (tests).
#[cfg(test)]
pub(crate) fn test_settle(c: &ConnCounts, b: usize, active: u32, inactive: u32) {
    let (a, i) = c.sum(b);
    c.offset[b].store(
        u64::from(active.wrapping_sub(a)) << 32 | u64::from(inactive.wrapping_sub(i)),
        Ordering::Relaxed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_recount() {
        let c = ConnCounts::new(3, true);
        c.on_new(0);
        c.on_new(0);
        c.on_new(1);
        c.on_established(0, true);
        assert_eq!(c.get(0), (1, 1));
        assert_eq!(c.get(1), (0, 1));
        assert_eq!(c.overhead(0), 257);
        // A recount that finds one established flow on 2 and nothing else
        // (the others expired silently).
        let seen = c.sums();
        c.settle(&seen, &[(0, 0), (0, 0), (1, 0)]);
        assert_eq!(c.get(0), (0, 0));
        assert_eq!(c.get(2), (1, 0));
        // Events after the recount add to it.
        c.on_established(2, false);
        assert_eq!(c.get(2), (0, 1));
        // An event for a flow the recount did not see clamps at 0.
        c.on_established(1, false);
        assert_eq!(c.get(1), (0, 1));
        // Out of range: ignored.
        c.on_new(7);
        assert_eq!(c.get(7), (0, 0));
    }

    /// The recount from a real flow table: TCP flows count as active once
    /// established and inactive before and after; UDP flows inactive;
    /// expired flows not at all; a flow whose record names a backend index
    /// that is now another server is not counted.
    #[test]
    fn recount_from_the_flow_table() {
        use crate::flow_table::{tcp_flags as f, Direction, FlowEntry, Timeouts};
        use crate::sched::testutil::table;
        use crate::service::SchedKind;
        use crate::types::{Addr, FlowKey, L2Hop};

        let t = table(SchedKind::LeastConn, &[1, 1]);
        let flows = FlowTable::new(1024, Timeouts::default());
        let backend = |i: usize| t.get(0).unwrap().spec.backends[i];
        let flow = |n: u16, b: usize, p: u8| {
            let be = backend(b);
            let original = FlowKey {
                src: Addr::from_v4([198, 18, 0, 2]),
                dst: Addr::from_v4([198, 18, 100, 1]),
                sport: 1000 + n,
                dport: 80,
                proto: p,
            };
            FlowEntry {
                original,
                reply: FlowKey {
                    src: be.addr,
                    dst: original.src,
                    sport: be.port,
                    dport: original.sport,
                    proto: p,
                },
                orig_hop: L2Hop::default(),
                reply_hop: L2Hop::default(),
                service: 0,
                backend: b as u32,
            }
        };
        let now = 100;
        // Backend 0: two established TCP flows, one in SYN_SENT, one
        // closed by a FIN; backend 1: two UDP flows.
        for n in 0..4 {
            let id = flows.insert(&flow(n, 0, proto::TCP), now).unwrap();
            flows.touch(id, Direction::Original, f::SYN, now);
            if n < 2 || n == 3 {
                flows.touch(id, Direction::Reply, f::SYN | f::ACK, now);
                flows.touch(id, Direction::Original, f::ACK, now);
            }
            if n == 3 {
                flows.touch(id, Direction::Original, f::FIN | f::ACK, now);
            }
        }
        for n in 10..12 {
            flows.insert(&flow(n, 1, proto::UDP), now).unwrap();
        }
        // A stale flow naming backend 1 with backend 0's address.
        let mut stale = flow(20, 0, proto::TCP);
        stale.backend = 1;
        flows.insert(&stale, now).unwrap();
        // Events already counted before the recount are absorbed by it.
        let c = &t.get(0).unwrap().conns;
        c.on_new(0);
        flows.expire(now, 0);
        recount(&t, &flows);
        assert_eq!(c.get(0), (2, 2));
        assert_eq!(c.get(1), (0, 2));
        // Everything expires silently: the next recount finds nothing.
        flows.expire(now + 10_000, 0);
        recount(&t, &flows);
        assert_eq!(c.get(0), (0, 0));
        assert_eq!(c.get(1), (0, 0));
    }

    /// IPVS's hysteresis: over the upper threshold until under the lower
    /// one; lower 0 means under 3/4 of upper.
    #[test]
    fn overload_hysteresis() {
        let c = ConnCounts::new(1, true);
        let set = |n: u32| {
            let seen = c.sums();
            c.settle(&seen, &[(0, n)]);
        };
        set(3);
        assert!(!c.overloaded(0, 4, 0));
        set(4);
        assert!(c.overloaded(0, 4, 0));
        set(3); // 3*4 = 12 is not < 4*3 = 12: still over.
        assert!(c.overloaded(0, 4, 0));
        set(2);
        assert!(!c.overloaded(0, 4, 0));
        set(3); // climbing back under upper: takes flows.
        assert!(!c.overloaded(0, 4, 0));
        // An explicit lower threshold.
        set(10);
        assert!(c.overloaded(0, 10, 5));
        set(5);
        assert!(c.overloaded(0, 10, 5));
        set(4);
        assert!(!c.overloaded(0, 10, 5));
        // No upper: never.
        set(100);
        assert!(!c.overloaded(0, 0, 0));
    }
}
