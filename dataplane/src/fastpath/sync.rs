//! The sweep: keeps the user-space flow table the truth while the XDP
//! program forwards established flows.
//!
//! Every [`SWEEP_EVERY`] (and at once after a new snapshot), the sweep
//! reads every entry of every interface's `fast_flows` map and
//! - withdraws it when its flow is gone (closed, expired, evicted), when
//!   its flow's endpoint was removed, when its TCP flow is no longer
//!   established, or when the rewrite the flow would get now differs from
//!   the published one (the next hop's MAC moved, the egress link changed):
//!   the next packet then reaches a worker, which does what it always does
//!   (reset, reschedule, forward to the new MAC, publish again);
//! - otherwise, when the XDP program forwarded packets since the last
//!   sweep, refreshes the flow record (its timeout starts again, as if the
//!   worker had seen the packets) and adds the packets and bytes to the
//!   backend's traffic counters, which `ipvsadm --stats`, `sluice stats`
//!   and the metrics read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::flow_table::{Direction, FlowState, FlowTable};
use crate::pipeline::{endpoint_removed, Snapshot};
use crate::types::proto;
use crate::wire::tcp_flags;
use crate::worker::Shared;

use super::entry::{FastKey, FastValue};
use super::map::FastMap;
use super::rewrite::plan;

/// How often the sweep runs.
pub const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// How soon a new snapshot is noticed.
pub const NOTICE: Duration = Duration::from_millis(20);

/// What sweeps did, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Entries read.
    pub entries: u64,
    /// Entries withdrawn.
    pub withdrawn: u64,
    /// Packets forwarded by the XDP program and credited to flows.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Map operations that failed.
    pub errors: u64,
}

/// The sweep over the maps of every interface.
#[derive(Debug)]
pub struct Sweeper {
    maps: Vec<FastMap>,
    ifindex: Vec<u32>,
    /// Packets and bytes already credited, by (map, key).
    credited: HashMap<(usize, FastKey), (u64, u64)>,
    buf: Vec<(FastKey, FastValue)>,
    /// The snapshot the last sweep read (by address).
    snap_seen: u64,
    /// Totals.
    pub stats: SweepStats,
}

impl Sweeper {
    /// A sweep over `maps` (by port), with the ports' interface indexes
    /// as the publishers have them.
    pub fn new(maps: Vec<FastMap>, ifindex: Vec<u32>) -> Sweeper {
        Sweeper {
            maps,
            ifindex,
            credited: HashMap::new(),
            buf: Vec::new(),
            snap_seen: 0,
            stats: SweepStats::default(),
        }
    }

    /// Sweeps every [`SWEEP_EVERY`], and within [`NOTICE`] of a new
    /// snapshot (a removed endpoint, a moved next hop), until
    /// `shared.stop`; then withdraws every entry, so that nothing is
    /// forwarded on behalf of a load balancer that stopped.
    pub fn run(&mut self, shared: &Shared) {
        let mut last = Instant::now();
        let mut seen = u64::MAX;
        while !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(NOTICE);
            let snap = shared.snapshot.load();
            let v = snap.services.version();
            let ptr = Arc::as_ptr(&snap) as usize as u64;
            if last.elapsed() >= SWEEP_EVERY || v != seen || ptr != self.snap_seen {
                seen = v;
                self.snap_seen = ptr;
                last = Instant::now();
                self.sweep(&snap, &shared.flows, shared.now());
            }
        }
        self.withdraw_all();
    }

    /// Withdraws every entry of every map.
    pub fn withdraw_all(&mut self) {
        for m in &mut self.maps {
            let mut buf = Vec::new();
            if m.entries(&mut buf).is_err() {
                continue;
            }
            for (k, _) in buf {
                let _ = m.withdraw(&k);
            }
        }
    }

    /// One sweep at flow-clock time `now` (seconds).
    pub fn sweep(&mut self, snap: &Snapshot, flows: &FlowTable, now: u32) {
        let mut seen: HashMap<(usize, FastKey), (u64, u64)> = HashMap::new();
        for m in 0..self.maps.len() {
            self.buf.clear();
            if self.maps[m].entries(&mut self.buf).is_err() {
                self.stats.errors += 1;
                continue;
            }
            let buf = std::mem::take(&mut self.buf);
            for (k, v) in &buf {
                self.stats.entries += 1;
                if self.keep(snap, flows, now, m, k, v) {
                    seen.insert((m, *k), (v.packets, v.bytes));
                } else {
                    match self.maps[m].withdraw(k) {
                        Ok(_) => self.stats.withdrawn += 1,
                        Err(_) => self.stats.errors += 1,
                    }
                }
            }
            self.buf = buf;
        }
        self.credited = seen;
    }

    /// Whether entry `k` → `v` of map `m` stays; credits its new packets.
    fn keep(
        &mut self,
        snap: &Snapshot,
        flows: &FlowTable,
        now: u32,
        m: usize,
        k: &FastKey,
        v: &FastValue,
    ) -> bool {
        let Some(hit) = flows.lookup(&k.0, now) else {
            return false;
        };
        if !snap.removed.is_empty() && endpoint_removed(snap, &hit.entry, k.0.proto) {
            return false;
        }
        if k.0.proto == proto::TCP && hit.state != FlowState::Established {
            return false;
        }
        match plan(snap, &hit.entry, hit.dir, &self.ifindex) {
            Some(want) if same_rewrite(&want, v) => {}
            _ => return false,
        }
        let (p0, b0) = self.credited.get(&(m, *k)).copied().unwrap_or((0, 0));
        let (dp, db) = if v.packets >= p0 {
            (v.packets - p0, v.bytes.wrapping_sub(b0))
        } else {
            (v.packets, v.bytes)
        };
        if dp > 0 {
            let flags = if k.0.proto == proto::TCP {
                tcp_flags::ACK
            } else {
                0
            };
            flows.touch(hit.id, hit.dir, flags, now);
            credit(snap, &hit.entry, hit.dir, dp, db);
            self.stats.packets += dp;
            self.stats.bytes += db;
        }
        true
    }
}

/// Whether two values rewrite alike (counters aside).
fn same_rewrite(a: &FastValue, b: &FastValue) -> bool {
    let strip = |v: &FastValue| FastValue {
        last_seen_ns: 0,
        packets: 0,
        bytes: 0,
        ..*v
    };
    let (mut a, b) = (strip(a), strip(b));
    // The stored value has no protocol (it is the key's).
    a.to.proto = b.to.proto;
    a == b
}

/// Adds `packets` and `bytes` of `e` in `dir` to its backend's counters,
/// when its service still names it (as the pipeline's `count_traffic`).
fn credit(
    snap: &Snapshot,
    e: &crate::flow_table::FlowEntry,
    dir: Direction,
    packets: u64,
    bytes: u64,
) {
    if let Some(svc) = snap.services.get(e.service) {
        if let Some(b) = svc.backend_position(e.backend) {
            svc.traffic
                .on_packets(b, dir == Direction::Original, packets, bytes);
        }
    }
}
