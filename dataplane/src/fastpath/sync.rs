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
//!   and the metrics read, and to the rx/tx of the worker that published
//!   the entry ([`Counters::add_fast_path`]).
//!
//! Counts are cumulative per entry, so the sweep remembers what it credited
//! of each and adds the difference. An entry leaves the map with its last
//! counts: the sweep's own withdrawals and the workers' (on FIN or RST,
//! handed over through [`Withdrawals`]) take it out with one
//! lookup-and-delete, and the sweep credits the rest, so the packets
//! forwarded between two sweeps are never lost. A worker's withdrawal can
//! land between the sweep's two reads of the queue (at the start and at the
//! end of a sweep) and after the entry's last read; so what was credited of
//! an entry no longer in the map is kept for one more sweep. At the stop
//! the sweep withdraws everything the same way, before the counters are
//! printed.
//!
//! The sweep is shared ([`SharedSweeper`]) by its thread and the readers of
//! the counters (`sluice stats`, `/metrics`, `ipvsadm -L --stats`), which
//! run one sweep before they read ([`Sweeper::sweep_now`]): a view asked
//! for right after some traffic counts all of it, as without the fast path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use hashbrown::HashMap;

use crate::flow_table::{Direction, FlowState, FlowTable, Hit};
use crate::pipeline::{endpoint_removed, Snapshot};
use crate::types::proto;
use crate::wire::tcp_flags;
use crate::worker::{Counters, Shared};

use super::entry::{FastKey, FastValue};
use super::map::FastMap;
use super::rewrite::plan;

/// How often the sweep runs.
pub const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// How soon a new snapshot is noticed.
pub const NOTICE: Duration = Duration::from_millis(20);

/// Capacity of the queue of withdrawn entries ([`Withdrawals`]): the
/// withdrawals of one [`SWEEP_EVERY`] at 40k closing flows a second.
pub const WITHDRAWALS: usize = 16384;

/// An entry a worker withdrew (on FIN or RST), with its last counts, on
/// its way to the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Withdrawn {
    /// The map (by port) it was in.
    pub map: usize,
    /// Its key.
    pub key: FastKey,
    /// Its value at the withdrawal.
    pub value: FastValue,
    /// The flow's service and backend ([`crate::flow_table::FlowEntry`])
    /// and the key's direction, when the flow was in the table.
    pub flow: Option<(u32, u32, Direction)>,
}

/// The bounded lock-free queue from the workers' publishers to the sweep
/// (a full queue is counted by the publisher as an error).
pub type Withdrawals = Arc<ArrayQueue<Withdrawn>>;

/// The sweep, shared by its thread and the readers of the counters.
pub type SharedSweeper = Arc<Mutex<Sweeper>>;

/// An empty [`Withdrawals`] queue of [`WITHDRAWALS`] places.
pub fn withdrawals() -> Withdrawals {
    Arc::new(ArrayQueue::new(WITHDRAWALS))
}

/// What sweeps did, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Entries read.
    pub entries: u64,
    /// Entries withdrawn.
    pub withdrawn: u64,
    /// Packets forwarded by the XDP program and credited.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Map operations that failed.
    pub errors: u64,
}

/// What was credited of one entry: packets, bytes, and the sweep that last
/// saw it.
#[derive(Clone, Copy, Debug, Default)]
struct Credited {
    packets: u64,
    bytes: u64,
    round: u64,
}

/// The sweep over the maps of every interface.
#[derive(Debug)]
pub struct Sweeper {
    maps: Vec<FastMap>,
    ifindex: Vec<u32>,
    counters: Vec<Arc<Counters>>,
    withdrawals: Withdrawals,
    /// What was credited, by (map, key).
    credited: HashMap<(usize, FastKey), Credited>,
    round: u64,
    buf: Vec<(FastKey, FastValue)>,
    /// The snapshot the last sweep read (by address).
    snap_seen: u64,
    /// Totals.
    pub stats: SweepStats,
}

impl Sweeper {
    /// A sweep over `maps` (by port), with the ports' interface indexes
    /// as the publishers have them; it credits forwarded packets to
    /// `counters[worker]` of the worker that published each entry, and
    /// reads the workers' withdrawals from `withdrawals`.
    pub fn new(
        maps: Vec<FastMap>,
        ifindex: Vec<u32>,
        counters: Vec<Arc<Counters>>,
        withdrawals: Withdrawals,
    ) -> Sweeper {
        Sweeper {
            maps,
            ifindex,
            counters,
            withdrawals,
            credited: HashMap::new(),
            round: 0,
            buf: Vec::new(),
            snap_seen: 0,
            stats: SweepStats::default(),
        }
    }

    /// Sweeps every [`SWEEP_EVERY`], and within [`NOTICE`] of a new
    /// snapshot (a removed endpoint, a moved next hop), until `stop` (set
    /// once the workers stopped); then withdraws every entry, crediting its
    /// last counts, so that nothing is forwarded on behalf of a load
    /// balancer that stopped and every packet is counted.
    ///
    /// Holds the lock only while it sweeps.
    pub fn run(sweeper: &Mutex<Sweeper>, shared: &Shared, stop: &AtomicBool) {
        let lock = || sweeper.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = Instant::now();
        let mut seen = u64::MAX;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(NOTICE);
            let snap = shared.snapshot.load();
            let v = snap.services.version();
            let ptr = Arc::as_ptr(&snap) as usize as u64;
            let mut s = lock();
            if last.elapsed() >= SWEEP_EVERY || v != seen || ptr != s.snap_seen {
                seen = v;
                s.snap_seen = ptr;
                last = Instant::now();
                s.sweep(&snap, &shared.flows, shared.now());
            }
        }
        let snap = shared.snapshot.load();
        lock().withdraw_all(&snap, &shared.flows, shared.now());
    }

    /// One sweep now, over the snapshot in service: what a reader of the
    /// counters runs first.
    pub fn sweep_now(&mut self, shared: &Shared) {
        let snap = shared.snapshot.load();
        self.sweep(&snap, &shared.flows, shared.now());
    }

    /// Withdraws every entry of every map, crediting what it forwarded
    /// since the last sweep, and what the workers withdrew.
    pub fn withdraw_all(&mut self, snap: &Snapshot, flows: &FlowTable, now: u32) {
        self.round += 1;
        self.drain(snap);
        for m in 0..self.maps.len() {
            let mut buf = Vec::new();
            if self.maps[m].entries(&mut buf).is_err() {
                self.stats.errors += 1;
                continue;
            }
            for (k, _) in buf {
                let hit = flows.lookup(&k.0, now);
                self.take(snap, m, &k, hit.as_ref());
            }
        }
        self.drain(snap);
    }

    /// One sweep at flow-clock time `now` (seconds).
    pub fn sweep(&mut self, snap: &Snapshot, flows: &FlowTable, now: u32) {
        self.round += 1;
        self.drain(snap);
        for m in 0..self.maps.len() {
            self.buf.clear();
            if self.maps[m].entries(&mut self.buf).is_err() {
                self.stats.errors += 1;
                continue;
            }
            let buf = std::mem::take(&mut self.buf);
            for (k, v) in &buf {
                self.stats.entries += 1;
                match self.judge(snap, flows, now, k, v) {
                    Ok(hit) => self.refresh(snap, flows, now, m, k, v, &hit),
                    Err(hit) => self.take(snap, m, k, hit.as_ref()),
                }
            }
            self.buf = buf;
        }
        self.drain(snap);
        let keep_from = self.round - 1;
        self.credited.retain(|_, c| c.round >= keep_from);
    }

    /// Whether entry `k` → `v` stays (`Ok`, with its flow) or goes (`Err`,
    /// with its flow if there is one).
    fn judge(
        &self,
        snap: &Snapshot,
        flows: &FlowTable,
        now: u32,
        k: &FastKey,
        v: &FastValue,
    ) -> Result<Hit, Option<Hit>> {
        let Some(hit) = flows.lookup(&k.0, now) else {
            return Err(None);
        };
        if !snap.removed.is_empty() && endpoint_removed(snap, &hit.entry, k.0.proto) {
            return Err(Some(hit));
        }
        if k.0.proto == proto::TCP && hit.state != FlowState::Established {
            return Err(Some(hit));
        }
        match plan(snap, &hit.entry, hit.dir, &self.ifindex) {
            Some(want) if same_rewrite(&want, v) => Ok(hit),
            _ => Err(Some(hit)),
        }
    }

    /// The packets and bytes of entry (`m`, `k`) at counts `v` not yet
    /// credited; remembers `v` as credited.
    fn delta(&mut self, m: usize, k: &FastKey, v: &FastValue) -> (u64, u64) {
        let c = self.credited.entry((m, *k)).or_default();
        let d = if v.packets >= c.packets {
            (v.packets - c.packets, v.bytes.wrapping_sub(c.bytes))
        } else {
            // Another entry under the same key since (published anew).
            (v.packets, v.bytes)
        };
        *c = Credited {
            packets: v.packets,
            bytes: v.bytes,
            round: self.round,
        };
        d
    }

    /// Credits an entry that stays: its flow's timeout starts again, its
    /// new packets count for its backend and its worker.
    #[allow(clippy::too_many_arguments)]
    fn refresh(
        &mut self,
        snap: &Snapshot,
        flows: &FlowTable,
        now: u32,
        m: usize,
        k: &FastKey,
        v: &FastValue,
        hit: &Hit,
    ) {
        let (dp, db) = self.delta(m, k, v);
        if dp > 0 {
            let flags = if k.0.proto == proto::TCP {
                tcp_flags::ACK
            } else {
                0
            };
            flows.touch(hit.id, hit.dir, flags, now);
            credit(snap, hit.entry.service, hit.entry.backend, hit.dir, dp, db);
            self.credit_worker(v.worker, dp, db);
        }
    }

    /// Withdraws entry (`m`, `k`) and credits its last counts (to its
    /// backend when its flow `hit` is known).
    fn take(&mut self, snap: &Snapshot, m: usize, k: &FastKey, hit: Option<&Hit>) {
        match self.maps[m].take(k) {
            Ok(Some(v)) => {
                self.stats.withdrawn += 1;
                let flow = hit.map(|h| (h.entry.service, h.entry.backend, h.dir));
                self.settle(snap, m, k, &v, flow);
            }
            // A worker took it meanwhile: its counts come through the
            // queue, against what was credited (kept).
            Ok(None) => {}
            Err(_) => self.stats.errors += 1,
        }
    }

    /// Credits the rest of an entry that left the map with counts `v`.
    fn settle(
        &mut self,
        snap: &Snapshot,
        m: usize,
        k: &FastKey,
        v: &FastValue,
        flow: Option<(u32, u32, Direction)>,
    ) {
        let (dp, db) = self.delta(m, k, v);
        self.credited.remove(&(m, *k));
        if dp > 0 {
            if let Some((service, backend, dir)) = flow {
                credit(snap, service, backend, dir, dp, db);
            }
            self.credit_worker(v.worker, dp, db);
        }
    }

    /// Credits what the workers withdrew.
    fn drain(&mut self, snap: &Snapshot) {
        while let Some(w) = self.withdrawals.pop() {
            self.settle(snap, w.map, &w.key, &w.value, w.flow);
        }
    }

    fn credit_worker(&mut self, worker: u8, packets: u64, bytes: u64) {
        self.stats.packets += packets;
        self.stats.bytes += bytes;
        if let Some(c) = self.counters.get(usize::from(worker)) {
            c.add_fast_path(packets, bytes);
        }
    }
}

/// Whether two values rewrite alike (counters and publisher aside).
fn same_rewrite(a: &FastValue, b: &FastValue) -> bool {
    let strip = |v: &FastValue| FastValue {
        last_seen_ns: 0,
        packets: 0,
        bytes: 0,
        worker: 0,
        ..*v
    };
    let (mut a, b) = (strip(a), strip(b));
    // The stored value has no protocol (it is the key's).
    a.to.proto = b.to.proto;
    a == b
}

/// Adds `packets` and `bytes` in `dir` of a flow of `service`'s `backend`
/// (ids as in [`crate::flow_table::FlowEntry`]) to the backend's counters,
/// when the service still names it (as the pipeline's `count_traffic`).
fn credit(snap: &Snapshot, service: u32, backend: u32, dir: Direction, packets: u64, bytes: u64) {
    if let Some(svc) = snap.services.get(service) {
        if let Some(b) = svc.backend_position(backend) {
            svc.traffic
                .on_packets(b, dir == Direction::Original, packets, bytes);
        }
    }
}
