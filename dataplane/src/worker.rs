//! The per-core worker loop: receive a burst, run every frame through the
//! [`pipeline`], send, recycle, publish counters.
//!
//! Run-to-completion, DPDK-style: one worker per core, pinned; no lock, no
//! allocation and no syscall per packet (the port makes at most one wakeup
//! per socket per burst). The worker reads the published [`Snapshot`] once
//! per burst through an [`ArcSwap`] guard, so a new service table takes
//! effect between bursts without stopping traffic, and the flow table is
//! shared, so flows established under the old table keep going.
//!
//! Idle workers sleep in `poll()` after a short spin unless busy-polling
//! is asked for: on a 2-core machine that also runs the peers, a worker that
//! spins forever starves the very traffic it should forward.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::affinity::AffinityTable;
use crate::flow_table::{FlowTable, KeyHash};
use crate::pipeline::{self, Ctx, DropReason, Snapshot, Stats, Verdict};
use crate::port::{Port, RxFrame};
use crate::wire::{ParseError, Parsed};

/// State shared by the control thread and all workers.
#[derive(Debug)]
pub struct Shared {
    /// The published tables; replaced whole on every change.
    pub snapshot: ArcSwap<Snapshot>,
    /// Connection tracking, shared by all workers.
    pub flows: FlowTable,
    /// Session affinity, shared by all workers.
    pub affinity: AffinityTable,
    /// Set to stop the workers.
    pub stop: AtomicBool,
    /// Origin of the coarse clock the workers hand to the pipeline.
    pub epoch: Instant,
}

impl Shared {
    /// Shared state around a first snapshot, a flow table and an affinity
    /// table.
    pub fn new(snapshot: Snapshot, flows: FlowTable, affinity: AffinityTable) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            flows,
            affinity,
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    /// Seconds since [`Shared::epoch`]: the clock of flow ageing.
    pub fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// Publishes a new snapshot; workers pick it up at their next burst.
    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}

/// A worker's counters as shared atomics (written by that worker only, once
/// per burst; read by the control thread).
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames received.
    pub rx: AtomicU64,
    /// Frames sent.
    pub tx: AtomicU64,
    /// New flows answered with a TCP RST or ICMP unreachable (no endpoint).
    pub rejected: AtomicU64,
    /// Stray TCP segments of unknown flows answered with a RST.
    pub resets: AtomicU64,
    /// New flows that followed a session-affinity entry.
    pub affinity_hits: AtomicU64,
    /// Flows created.
    pub new_flows: AtomicU64,
    /// Flows created with SNAT.
    pub snat_flows: AtomicU64,
    /// Frames the port could not queue for transmission.
    pub tx_ring_full: AtomicU64,
    /// Drops by [`DropReason`].
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Parse errors by [`ParseError`].
    pub parse_errors: [AtomicU64; ParseError::COUNT],
    /// Version of the service table this worker has loaded (set before the
    /// first burst that uses it, also while idle).
    pub table_version: AtomicU64,
}

impl Counters {
    fn add(&self, s: &Stats) {
        fn bump(a: &AtomicU64, v: u64) {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
        bump(&self.rx, s.rx);
        bump(&self.tx, s.tx);
        bump(&self.rejected, s.rejected);
        bump(&self.resets, s.resets);
        bump(&self.affinity_hits, s.affinity_hits);
        bump(&self.new_flows, s.new_flows);
        bump(&self.snat_flows, s.snat_flows);
        for (a, v) in self.drops.iter().zip(s.drops.iter()) {
            bump(a, *v);
        }
        for (a, v) in self.parse_errors.iter().zip(s.parse_errors.iter()) {
            bump(a, *v);
        }
    }

    /// A plain copy, as (name, value) pairs in a stable order.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v = vec![
            ("rx".to_string(), l(&self.rx)),
            ("tx".to_string(), l(&self.tx)),
            ("rejected".to_string(), l(&self.rejected)),
            ("resets".to_string(), l(&self.resets)),
            ("affinity_hits".to_string(), l(&self.affinity_hits)),
            ("new_flows".to_string(), l(&self.new_flows)),
            ("snat_flows".to_string(), l(&self.snat_flows)),
            ("tx_ring_full".to_string(), l(&self.tx_ring_full)),
        ];
        for r in DropReason::ALL {
            v.push((format!("drop_{}", r.as_str()), l(&self.drops[r.index()])));
        }
        for e in ParseError::ALL {
            v.push((
                format!("parse_{}", e.as_str()),
                l(&self.parse_errors[e.index()]),
            ));
        }
        v
    }
}

/// Loop options.
#[derive(Clone, Copy, Debug)]
pub struct WorkerOpts {
    /// Frames per burst (at least 32).
    pub burst: usize,
    /// Never sleep: spin on the rings (lowest latency, a full core).
    pub busy_poll: bool,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        WorkerOpts {
            burst: 64,
            busy_poll: false,
        }
    }
}

/// One worker's loop state (its reusable burst buffer and local counters).
pub struct Worker<P: Port> {
    port: P,
    batch: Vec<RxFrame<P::Frame>>,
    parsed: Vec<(Result<Parsed, ParseError>, Option<KeyHash>)>,
    stats: Stats,
    opts: WorkerOpts,
}

impl<P: Port> Worker<P> {
    /// A worker over `port`.
    pub fn new(port: P, opts: WorkerOpts) -> Worker<P> {
        let burst = opts.burst.max(32);
        Worker {
            port,
            batch: Vec::with_capacity(burst),
            parsed: Vec::with_capacity(burst),
            stats: Stats::default(),
            opts: WorkerOpts { burst, ..opts },
        }
    }

    /// The port (tests inspect what was sent).
    pub fn port(&mut self) -> &mut P {
        &mut self.port
    }

    /// Counters accumulated since the last [`Worker::take_stats`].
    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    /// Processes one burst; returns the number of frames received.
    pub fn poll_once(&mut self, ctx: &Ctx<'_>) -> usize {
        self.batch.clear();
        self.parsed.clear();
        let n = self.port.recv(&mut self.batch, self.opts.burst);
        // DPDK's burst pattern, so that no stage waits for memory. Pass 1:
        // parse every frame, hash its key and prefetch both candidate
        // buckets of the flow index.
        for i in 0..n {
            let mut frame = self.batch[i].frame;
            let p = self.port.with_frame(&mut frame, |buf, len| {
                pipeline::parse_and_hash(ctx.flows, buf.get(..*len).unwrap_or(&[]))
            });
            self.parsed.push(p);
        }
        // Pass 2: the buckets have arrived; prefetch the records they
        // point at.
        for (_, h) in self.parsed.iter_mut() {
            if let Some(h) = h {
                ctx.flows.prefetch_record(h);
            }
        }
        // Pass 3: process.
        for i in 0..n {
            let RxFrame { mut frame, port } = self.batch[i];
            let (parsed, hash) = self.parsed[i];
            let stats = &mut self.stats;
            let v = self.port.with_frame(&mut frame, |buf, len| {
                let v =
                    pipeline::process_hashed(ctx, buf, *len, parsed, hash.as_ref(), port, stats);
                if let Verdict::Reply(n) | Verdict::TxLen(_, n) = v {
                    *len = n;
                }
                v
            });
            self.stats.count(v);
            match v {
                Verdict::Tx(out) => self.port.send(out, frame),
                Verdict::Reply(_) => self.port.send(port, frame),
                Verdict::TxLen(out, _) => self.port.send(out, frame),
                Verdict::Drop(_) => self.port.release(frame),
            }
        }
        self.port.flush();
        n
    }

    /// Runs until `shared.stop` is set, publishing counters to `counters`
    /// after every burst that did something.
    pub fn run(&mut self, shared: &Shared, counters: &Counters) {
        let mut idle: u32 = 0;
        let mut last_tx_dropped = 0;
        let mut seen = u64::MAX;
        while !shared.stop.load(Ordering::Relaxed) {
            let snap = shared.snapshot.load();
            // "Epoch seen": the control plane answers a write once every
            // worker has loaded its table (one store per new table, on this
            // worker's own counters, never per packet).
            let version = snap.services.version();
            if version != seen {
                seen = version;
                counters.table_version.store(version, Ordering::Release);
            }
            let ctx = Ctx {
                snap: &snap,
                flows: &shared.flows,
                affinity: &shared.affinity,
                now: shared.now(),
            };
            let n = self.poll_once(&ctx);
            if n > 0 {
                idle = 0;
                let s = self.take_stats();
                counters.add(&s);
                let td = self.port.tx_dropped();
                if td != last_tx_dropped {
                    counters
                        .tx_ring_full
                        .fetch_add(td - last_tx_dropped, Ordering::Relaxed);
                    last_tx_dropped = td;
                }
            } else {
                idle = idle.saturating_add(1);
                if !self.opts.busy_poll && idle > 256 {
                    drop(snap);
                    self.port.wait(10);
                }
            }
        }
        let s = self.take_stats();
        counters.add(&s);
    }
}
