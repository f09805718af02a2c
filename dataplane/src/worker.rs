//! The per-core worker loop: receive a burst, run every frame through the
//! [`pipeline`], send, recycle, publish counters.
//!
//! Run-to-completion, DPDK-style: one worker per core, pinned; no lock, no
//! allocation and no syscall per packet (the port's syscalls are per burst
//! and per socket: see [`Port::flush`]). The worker reads the published [`Snapshot`] once
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
use crate::doorbell::Doorbell;
use crate::fastpath::publish::PublishStats;
use crate::fastpath::Publisher;
use crate::flow_table::{FlowTable, KeyHash};
use crate::frag::{self, FragKey, FragTable};
use crate::pipeline::{self, Ctx, DropReason, Snapshot, Stats, Verdict};
use crate::port::{Port, RxFrame};
use crate::token_bucket::TokenBucket;
use crate::wire::{reply, ParseError, Parsed};

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
    /// Rung by [`Shared::publish`]: idle workers poll it beside their
    /// sockets and load a new table at once (None if the kernel refused an
    /// eventfd: they load it within their 10 ms poll timeout).
    pub doorbell: Option<Doorbell>,
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
            doorbell: Doorbell::new()
                .map_err(|e| {
                    tracing::warn!("no doorbell for the workers ({e}): an idle worker loads a new table within 10 ms");
                })
                .ok(),
        }
    }

    /// Seconds since [`Shared::epoch`]: the clock of flow ageing.
    pub fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// Publishes a new snapshot; workers pick it up at their next loop
    /// turn, idle ones woken by the doorbell.
    /// Its services' connection counts are recounted from the flow table
    /// first, so that a new table's least-connection schedulers start from
    /// the flows that exist (a no-op when no service counts them).
    pub fn publish(&self, snapshot: Snapshot) {
        snapshot.services.recount_connections(&self.flows);
        self.snapshot.store(Arc::new(snapshot));
        if let Some(d) = &self.doorbell {
            d.ring();
        }
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
    /// Mid-flow TCP segments without a flow picked up by the Maglev choice
    /// (`Stats::flows_picked_up`).
    pub flows_picked_up: AtomicU64,
    /// New flows that followed a session-affinity entry.
    pub affinity_hits: AtomicU64,
    /// Flows created.
    pub new_flows: AtomicU64,
    /// Flows created with SNAT.
    pub snat_flows: AtomicU64,
    /// Masqueraded flows that reused a closed flow's SNAT port.
    pub snat_port_reused: AtomicU64,
    /// Masqueraded flows that evicted an embryonic flow for its SNAT port.
    pub snat_embryonic_evicted: AtomicU64,
    /// Frames the port could not queue for transmission.
    pub tx_ring_full: AtomicU64,
    /// ICMP fragmentation needed / packet too big answers sent.
    pub icmp_too_big_sent: AtomicU64,
    /// ICMP time exceeded answers sent.
    pub icmp_time_exceeded_sent: AtomicU64,
    /// Drops by [`DropReason`].
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Parse errors by [`ParseError`].
    pub parse_errors: [AtomicU64; ParseError::COUNT],
    /// Version of the service table this worker has loaded (set before the
    /// first burst that uses it, also while idle).
    pub table_version: AtomicU64,
    /// Packets not counted per backend (`Stats::traffic_unattributed`).
    pub traffic_unattributed: AtomicU64,
    /// The worker's heartbeat: milliseconds since [`Shared::epoch`] at its
    /// last loop turn (at least every poll timeout, 10 ms, when idle).
    /// `/healthz` reads it.
    pub heartbeat_ms: AtomicU64,
    /// Bursts that received frames, and frames in them (mean burst size).
    pub bursts: AtomicU64,
    /// Loop turns that received nothing (idle ratio = idle / (idle +
    /// bursts)).
    pub idle_polls: AtomicU64,
    /// Fragment counters, in [`frag::FragStats::pairs`] order.
    pub frag: [AtomicU64; 6],
    /// Fast-path entries published, withdrawn on FIN/RST, map operations
    /// that failed, and FINs/RSTs of flows never published (no map
    /// operation) ([`crate::fastpath::publish::PublishStats`]).
    pub fast: [AtomicU64; 4],
    /// Packets of the flow directions this worker published that the XDP
    /// fast path forwarded in its place (never seen by this worker), summed
    /// from the map's per-entry counters by the sweep
    /// ([`crate::fastpath::sync`]), which alone writes this and
    /// [`Counters::fast_bytes`]. [`Counters::snapshot`] counts them in `rx`
    /// and `tx` too, so that those agree with the traffic in either mode.
    pub fast_packets: AtomicU64,
    /// Their IP bytes.
    pub fast_bytes: AtomicU64,
}

/// The names of [`Counters::fast`] in [`Counters::snapshot`].
pub const FAST_COUNTERS: [&str; 4] = [
    "fast_published",
    "fast_withdrawn",
    "fast_errors",
    "fast_closes_unpublished",
];

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
        bump(&self.flows_picked_up, s.flows_picked_up);
        bump(&self.affinity_hits, s.affinity_hits);
        bump(&self.new_flows, s.new_flows);
        bump(&self.snat_flows, s.snat_flows);
        bump(&self.icmp_too_big_sent, s.icmp_too_big_sent);
        bump(&self.icmp_time_exceeded_sent, s.icmp_time_exceeded_sent);
        bump(&self.snat_port_reused, s.snat_port_reused);
        bump(&self.snat_embryonic_evicted, s.snat_embryonic_evicted);
        bump(&self.traffic_unattributed, s.traffic_unattributed);
        for (a, v) in self.drops.iter().zip(s.drops.iter()) {
            bump(a, *v);
        }
        for (a, v) in self.parse_errors.iter().zip(s.parse_errors.iter()) {
            bump(a, *v);
        }
        for (a, (_, v)) in self.frag.iter().zip(s.frag.pairs()) {
            bump(a, v);
        }
    }

    fn add_fast(&self, s: &PublishStats) {
        let v = [s.published, s.withdrawn, s.errors, s.closes_unpublished];
        for (a, v) in self.fast.iter().zip(v) {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    /// A plain copy, as (name, value) pairs in a stable order.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let fast = l(&self.fast_packets);
        let mut v = vec![
            ("rx".to_string(), l(&self.rx) + fast),
            ("tx".to_string(), l(&self.tx) + fast),
            ("rejected".to_string(), l(&self.rejected)),
            ("resets".to_string(), l(&self.resets)),
            ("flows_picked_up".to_string(), l(&self.flows_picked_up)),
            ("affinity_hits".to_string(), l(&self.affinity_hits)),
            ("new_flows".to_string(), l(&self.new_flows)),
            ("snat_flows".to_string(), l(&self.snat_flows)),
            ("snat_port_reused".to_string(), l(&self.snat_port_reused)),
            (
                "snat_embryonic_evicted".to_string(),
                l(&self.snat_embryonic_evicted),
            ),
            ("tx_ring_full".to_string(), l(&self.tx_ring_full)),
            ("icmp_too_big_sent".to_string(), l(&self.icmp_too_big_sent)),
            (
                "icmp_time_exceeded_sent".to_string(),
                l(&self.icmp_time_exceeded_sent),
            ),
            (
                "traffic_unattributed".to_string(),
                l(&self.traffic_unattributed),
            ),
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
        let names = frag::FragStats::default().pairs();
        for (a, (name, _)) in self.frag.iter().zip(names) {
            v.push((name.to_string(), l(a)));
        }
        for (a, name) in self.fast.iter().zip(FAST_COUNTERS) {
            v.push((name.to_string(), l(a)));
        }
        v.push(("fast_path_packets".to_string(), fast));
        v.push(("fast_path_bytes".to_string(), l(&self.fast_bytes)));
        v
    }

    /// Credits `packets` packets of `bytes` IP bytes that the XDP fast
    /// path forwarded for this worker (the sweep's, single writer).
    pub fn add_fast_path(&self, packets: u64, bytes: u64) {
        if packets != 0 {
            self.fast_packets.fetch_add(packets, Ordering::Relaxed);
            self.fast_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// Answers, in place, a frame too big for its egress link
/// ([`Verdict::TooBig`]) with ICMP fragmentation needed / packet too big,
/// or one whose TTL ran out ([`Verdict::TtlExceeded`]) with ICMP time
/// exceeded, when the worker's budget (one for both) has a token and the
/// packet may be answered ([`reply::icmp_too_big`],
/// [`reply::icmp_time_exceeded`]); spends the token only then. Returns
/// whether the frame is now the answer.
#[inline(never)]
fn answer_icmp(
    buf: &mut [u8],
    len: &mut usize,
    parsed: Result<Parsed, ParseError>,
    v: Verdict,
    icmp: &mut TokenBucket,
    now_ms: u64,
) -> bool {
    let Ok(p) = parsed else { return false };
    if !icmp.ready(now_ms) {
        return false;
    }
    let answer = match v {
        Verdict::TooBig(mtu) => reply::icmp_too_big(buf, *len, &p, mtu),
        Verdict::TtlExceeded => reply::icmp_time_exceeded(buf, *len, &p),
        _ => None,
    };
    match answer {
        Some(n) => {
            icmp.spend();
            *len = n;
            true
        }
        None => false,
    }
}

/// Loop options.
#[derive(Clone, Copy, Debug)]
pub struct WorkerOpts {
    /// Frames per burst (at least 32).
    pub burst: usize,
    /// Never sleep: spin on the rings (lowest latency, a full core).
    pub busy_poll: bool,
    /// This worker's slice of the SNAT ports for FULLNAT flows
    /// ([`crate::snat::Share::new`]`(worker, workers)`).
    pub share: crate::snat::Share,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        WorkerOpts {
            burst: 64,
            busy_poll: false,
            share: crate::snat::Share::WHOLE,
        }
    }
}

/// One worker's loop state (its reusable burst buffer, local counters and
/// ICMP error budget).
pub struct Worker<P: Port> {
    port: P,
    batch: Vec<RxFrame<P::Frame>>,
    parsed: Vec<(Result<Parsed, ParseError>, Option<KeyHash>)>,
    stats: Stats,
    opts: WorkerOpts,
    /// Rate limit of this worker's ICMP too-big answers (its own, so the
    /// packet path writes nothing shared).
    icmp: TokenBucket,
    /// Milliseconds on the clock of [`Worker::icmp`], set once per burst.
    now_ms: u64,
    /// This worker's fragment state ([`crate::frag`]).
    frags: FragTable<P::Frame>,
    /// The fast-path publisher (`--fast-path xdp`), if on.
    fast: Option<Publisher>,
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
            icmp: TokenBucket::default(),
            now_ms: 0,
            frags: FragTable::new(),
            fast: None,
        }
    }

    /// Turns the XDP fast path on: this worker publishes the established
    /// flows it forwards through `p` ([`crate::fastpath`]).
    pub fn set_fast_path(&mut self, p: Publisher) {
        self.fast = Some(p);
    }

    /// Sets the clock of the ICMP rate limit, in milliseconds ([`Worker::run`]
    /// sets it before every burst; tests drive it by hand).
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// The port (tests inspect what was sent).
    pub fn port(&mut self) -> &mut P {
        &mut self.port
    }

    /// The fragment state (tests inspect what is held).
    pub fn frag_table(&self) -> &FragTable<P::Frame> {
        &self.frags
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
        // parse every frame, hash its key and prefetch its home bucket of
        // the flow index.
        for rx in self.batch.iter_mut() {
            let p = self.port.with_frame(&mut rx.frame, |buf, len| {
                pipeline::parse_and_hash(ctx.flows, buf.get(..*len).unwrap_or(&[]))
            });
            self.parsed.push(p);
        }
        // Pass 2: the home buckets have arrived; prefetch the record a
        // matching tag points at, or else the second bucket.
        for (_, h) in self.parsed.iter_mut() {
            if let Some(h) = h {
                ctx.flows.prefetch_record(h);
            }
        }
        // Pass 3: process. Each frame moves out of the batch into exactly
        // one send or release.
        // Taken for the loop (and put back, capacity and all) so that the
        // fragment path may borrow the worker.
        let (mut batch, parsed_all) = (
            std::mem::take(&mut self.batch),
            std::mem::take(&mut self.parsed),
        );
        for (RxFrame { mut frame, port }, &(parsed, hash)) in batch.drain(..).zip(parsed_all.iter())
        {
            if frag::is_fragment(&parsed) {
                self.fragment(ctx, frame, port, parsed, hash);
                continue;
            }
            let stats = &mut self.stats;
            let (icmp, now_ms) = (&mut self.icmp, self.now_ms);
            let (v, answered) = self.port.with_frame(&mut frame, |buf, len| {
                let v =
                    pipeline::process_hashed(ctx, buf, *len, parsed, hash.as_ref(), port, stats);
                match v {
                    Verdict::Reply(n) | Verdict::TxLen(_, n) => {
                        *len = n;
                        (v, false)
                    }
                    Verdict::TooBig(_) | Verdict::TtlExceeded => {
                        (v, answer_icmp(buf, len, parsed, v, icmp, now_ms))
                    }
                    _ => (v, false),
                }
            });
            self.stats.count(v);
            if let (Some(f), Ok(p)) = (self.fast.as_mut(), parsed.as_ref()) {
                f.after(ctx, p, port, v);
            }
            match v {
                Verdict::Tx(out) => self.port.send(out, frame),
                Verdict::Reply(_) => self.port.send(port, frame),
                Verdict::TxLen(out, _) => self.port.send(out, frame),
                Verdict::Drop(_) => self.port.release(frame),
                Verdict::TooBig(_) | Verdict::TtlExceeded if answered => {
                    self.stats.tx += 1;
                    match v {
                        Verdict::TooBig(_) => self.stats.icmp_too_big_sent += 1,
                        _ => self.stats.icmp_time_exceeded_sent += 1,
                    }
                    self.port.send(port, frame);
                }
                Verdict::TooBig(_) | Verdict::TtlExceeded => self.port.release(frame),
            }
        }
        (self.batch, self.parsed) = (batch, parsed_all);
        while let Some(f) = self.frags.take_expired(ctx.now, &mut self.stats.frag) {
            self.port.release(f);
        }
        self.port.flush();
        n
    }

    /// A fragment ([`crate::frag`]): a first one goes through the pipeline
    /// and its rewrite is remembered (then the fragments held for it go
    /// out); a later one follows its first, or waits for it.
    #[inline(never)]
    fn fragment(
        &mut self,
        ctx: &Ctx<'_>,
        mut frame: P::Frame,
        port: u8,
        parsed: Result<Parsed, ParseError>,
        hash: Option<KeyHash>,
    ) {
        let Ok(p) = parsed else {
            return self.later_fragment(ctx, frame, port, false);
        };
        let stats = &mut self.stats;
        let (v, rw) = self.port.with_frame(&mut frame, |buf, len| {
            let in_len = *len;
            let v = pipeline::process_hashed(ctx, buf, *len, parsed, hash.as_ref(), port, stats);
            if let Verdict::Reply(n) | Verdict::TxLen(_, n) = v {
                *len = n;
            }
            (
                v,
                frag::learn(buf.get(..*len).unwrap_or(&[]), in_len, v, &p),
            )
        });
        self.send_or_release(frame, port, v);
        let (Some(rw), Some(key)) = (rw, FragKey::of_first(&p)) else {
            return;
        };
        self.frags.learn(key, rw, ctx.now, &mut self.stats.frag);
        while let Some((f, ingress)) = self.frags.take_held(&key) {
            self.later_fragment(ctx, f, ingress, true);
        }
    }

    /// A later fragment: rewritten as its first was, or held for it
    /// (`released`: it was held already, and is not held again).
    fn later_fragment(&mut self, ctx: &Ctx<'_>, mut frame: P::Frame, port: u8, released: bool) {
        if !released {
            self.stats.rx += 1;
        }
        let (frags, st) = (&mut self.frags, &mut self.stats.frag);
        let action = self.port.with_frame(&mut frame, |buf, len| {
            frags.follow(ctx.snap, buf, len, ctx.now, st)
        });
        match action {
            frag::Action::Forward(v) => self.send_or_release(frame, port, v),
            frag::Action::Hold(_) if released => {
                self.stats.frag.dropped_no_first += 1;
                self.port.release(frame);
            }
            frag::Action::Hold(key) => {
                if let Some(f) = self
                    .frags
                    .hold(key, frame, port, ctx.now, &mut self.stats.frag)
                {
                    self.port.release(f);
                }
            }
            frag::Action::Expired => self.port.release(frame),
        }
    }

    /// Counts `v` and sends or releases the frame by it (a fragment too big
    /// for its egress link is not answered: [`crate::frag::apply`]).
    fn send_or_release(&mut self, frame: P::Frame, ingress: u8, v: Verdict) {
        self.stats.count(v);
        match v {
            Verdict::Tx(out) | Verdict::TxLen(out, _) => self.port.send(out, frame),
            Verdict::Reply(_) => self.port.send(ingress, frame),
            Verdict::Drop(_) | Verdict::TooBig(_) | Verdict::TtlExceeded => {
                self.port.release(frame)
            }
        }
    }

    /// Runs until `shared.stop` is set, publishing counters to `counters`
    /// after every burst that did something.
    pub fn run(&mut self, shared: &Shared, counters: &Counters) {
        let mut idle: u32 = 0;
        let mut last_tx_dropped = 0;
        let mut seen = u64::MAX;
        if let Some(d) = &shared.doorbell {
            self.port.watch(d.fd());
        }
        while !shared.stop.load(Ordering::Relaxed) {
            let snap = shared.snapshot.load();
            let elapsed = shared.epoch.elapsed();
            self.now_ms = elapsed.as_millis() as u64;
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
                now: elapsed.as_secs() as u32,
                share: self.opts.share,
            };
            let n = self.poll_once(&ctx);
            // Worker-owned lines: plain relaxed stores, once per turn.
            let own = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
            own(&counters.heartbeat_ms, self.now_ms);
            if n > 0 {
                own(
                    &counters.bursts,
                    counters.bursts.load(Ordering::Relaxed) + 1,
                );
                idle = 0;
                let s = self.take_stats();
                counters.add(&s);
                if let Some(f) = self.fast.as_mut() {
                    counters.add_fast(&f.take_stats());
                }
                let td = self.port.tx_dropped();
                if td != last_tx_dropped {
                    counters
                        .tx_ring_full
                        .fetch_add(td - last_tx_dropped, Ordering::Relaxed);
                    last_tx_dropped = td;
                }
            } else {
                own(
                    &counters.idle_polls,
                    counters.idle_polls.load(Ordering::Relaxed) + 1,
                );
                idle = idle.saturating_add(1);
                if !self.opts.busy_poll && idle > 256 {
                    drop(snap);
                    self.port.wait(10);
                    // A new table rang: the next turn loads it.
                    if let Some(d) = &shared.doorbell {
                        d.drain();
                    }
                }
            }
        }
        let s = self.take_stats();
        counters.add(&s);
    }
}

#[cfg(test)]
mod tests {
    //! Frames too big for the egress link or out of TTL, through the worker
    //! over the in-memory port: the ICMP answers, their rate limit and the
    //! counters.

    use etherparse::{
        icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket,
        TransportSlice,
    };

    use super::*;
    use crate::flow_table::Timeouts;
    use crate::port::MemPort;
    use crate::wire::checksum;

    use crate::udp_fixture::*;

    /// The backend link's MTU, smaller than the client's 1500.
    const BACK_MTU: u16 = 1400;

    /// The fixture network behind a backend link with MTU [`BACK_MTU`].
    fn snapshot() -> Snapshot {
        crate::udp_fixture::snapshot(BACK_MTU)
    }

    /// A client's UDP datagram to VIP:53 from `sport` with `payload` bytes
    /// and DF as asked.
    fn udp4(sport: u16, payload: usize, df: bool) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC)
            .ipv4(CLIENT, VIP, 64)
            .udp(sport, 53)
            .write(&mut v, &vec![0x5a; payload])
            .unwrap();
        let mut ip = crate::wire::ipv4::Packet::new_checked(&mut v[14..]).unwrap();
        ip.set_frag(df, false, 0);
        ip.fill_checksum();
        v
    }

    fn udp6(sport: u16, payload: usize) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC)
            .ipv6(CLIENT6, VIP6, 64)
            .udp(sport, 53)
            .write(&mut v, &vec![0x5a; payload])
            .unwrap();
        v
    }

    /// Runs one burst of `frames` (all from the client side) at `now_ms`
    /// and returns what was sent and the burst's counters.
    fn burst(
        w: &mut Worker<MemPort>,
        flows: &FlowTable,
        frames: &[Vec<u8>],
        now_ms: u64,
    ) -> (Vec<(u8, Vec<u8>)>, Stats) {
        let snap = snapshot();
        let aff = AffinityTable::new(64);
        let ctx = Ctx {
            snap: &snap,
            flows,
            affinity: &aff,
            now: (now_ms / 1000) as u32,
            share: crate::snat::Share::WHOLE,
        };
        for f in frames {
            assert!(w.port().inject(0, f));
        }
        w.set_now_ms(now_ms);
        assert_eq!(w.poll_once(&ctx), frames.len());
        let sent = w.port().sent().map(|(p, b)| (p, b.to_vec())).collect();
        w.port().clear_sent();
        (sent, w.take_stats())
    }

    fn worker() -> Worker<MemPort> {
        Worker::new(MemPort::new(2, 256), WorkerOpts::default())
    }

    #[test]
    fn a_df_datagram_too_big_for_the_backend_link_gets_frag_needed() {
        let flows = FlowTable::new(1024, Timeouts::default());
        let mut w = worker();
        let total = w.port().free_frames();
        // 28 + 1372 = 1400 bytes of IP fits; one byte more does not.
        let fits = udp4(40000, 1372, true);
        let big = udp4(40001, 1373, true);
        let (sent, st) = burst(&mut w, &flows, &[fits, big.clone()], 0);
        assert_eq!(sent.len(), 2, "{sent:02x?}");
        assert_eq!(sent[0].0, 1, "the datagram that fits goes to the backend");
        // The other is answered, back on the client's port.
        let (port, out) = &sent[1];
        assert_eq!(*port, 0);
        assert_eq!(&out[..6], &CLIENT_MAC);
        assert_eq!(&out[6..12], &FRONT_MAC);
        let e = SlicedPacket::from_ethernet(out).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &e.net else {
            panic!("{e:?}")
        };
        let h = ip.header();
        assert_eq!((h.source(), h.destination()), (VIP, CLIENT));
        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
        let Some(TransportSlice::Icmpv4(m)) = &e.transport else {
            panic!("{e:?}")
        };
        assert_eq!(
            m.icmp_type(),
            Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: BACK_MTU
                }
            )
        );
        assert_eq!(m.checksum(), checksum::icmpv4(m.slice()));
        // It quotes the datagram as the client sent it (not rewritten).
        assert_eq!(m.payload(), &big[14..14 + 28]);
        assert_eq!(st.drops[DropReason::TooBig.index()], 1);
        assert_eq!((st.rx, st.tx, st.icmp_too_big_sent), (2, 2, 1));
        assert_eq!(w.port().free_frames(), total);
    }

    #[test]
    fn an_ipv6_datagram_too_big_gets_packet_too_big() {
        let flows = FlowTable::new(1024, Timeouts::default());
        let mut w = worker();
        // 40 + 8 + 1352 = 1400 fits; 1353 does not.
        let (sent, st) = burst(&mut w, &flows, &[udp6(40000, 1352), udp6(40001, 1353)], 0);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].0, 1);
        let (port, out) = &sent[1];
        assert_eq!(*port, 0);
        let e = SlicedPacket::from_ethernet(out).unwrap();
        let (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(m))) = (&e.net, &e.transport)
        else {
            panic!("{e:?}")
        };
        let h = ip.header();
        assert_eq!((h.source(), h.destination()), (VIP6, CLIENT6));
        assert_eq!(
            m.icmp_type(),
            Icmpv6Type::PacketTooBig {
                mtu: u32::from(BACK_MTU)
            }
        );
        assert!(m.is_checksum_valid(h.source(), h.destination()));
        assert!(out.len() - 14 <= 1280);
        assert_eq!(
            (st.drops[DropReason::TooBig.index()], st.icmp_too_big_sent),
            (1, 1)
        );
    }

    #[test]
    fn ipv4_without_df_is_dropped_and_counted_without_an_answer() {
        let flows = FlowTable::new(1024, Timeouts::default());
        let mut w = worker();
        let total = w.port().free_frames();
        let (sent, st) = burst(&mut w, &flows, &[udp4(40000, 1400, false)], 0);
        assert!(sent.is_empty(), "{sent:02x?}");
        assert_eq!(st.drops[DropReason::TooBig.index()], 1);
        assert_eq!((st.tx, st.icmp_too_big_sent), (0, 0));
        assert_eq!(w.port().free_frames(), total);
    }

    #[test]
    fn answers_are_rate_limited_per_worker() {
        let flows = FlowTable::new(1024, Timeouts::default());
        let mut w = worker();
        let flood: Vec<Vec<u8>> = (0..60).map(|i| udp4(40000 + i, 1400, true)).collect();
        // A full bucket answers its burst, then nothing.
        let (sent, st) = burst(&mut w, &flows, &flood, 0);
        let burst_n = TokenBucket::ICMP_BURST as usize;
        assert_eq!(sent.len(), burst_n);
        assert!(sent.iter().all(|(p, _)| *p == 0));
        assert_eq!(st.drops[DropReason::TooBig.index()], 60);
        assert_eq!(st.icmp_too_big_sent, burst_n as u64);
        // 10 ms later at 1000/s: 10 more.
        let (sent, st) = burst(&mut w, &flows, &flood[..30], 10);
        assert_eq!((sent.len(), st.icmp_too_big_sent), (10, 10));
        assert_eq!(st.drops[DropReason::TooBig.index()], 30);
    }

    /// `f` with its TTL / hop limit set to `ttl` (and the IPv4 checksum).
    fn with_ttl(mut f: Vec<u8>, ttl: u8) -> Vec<u8> {
        if f[12..14] == [0x86, 0xdd] {
            f[14 + 7] = ttl;
        } else {
            let mut ip = crate::wire::ipv4::Packet::new_checked(&mut f[14..]).unwrap();
            ip.set_ttl(ttl);
            ip.fill_checksum();
        }
        f
    }

    #[test]
    fn ttl_1_gets_time_exceeded_and_ttl_2_leaves_with_1() {
        let flows = FlowTable::new(1024, Timeouts::default());
        let mut w = worker();
        let total = w.port().free_frames();
        let dying = with_ttl(udp4(40001, 100, true), 1);
        let frames = [with_ttl(udp4(40000, 100, true), 2), dying.clone()];
        let (sent, st) = burst(&mut w, &flows, &frames, 0);
        assert_eq!(sent.len(), 2, "{sent:02x?}");
        let (port, out) = &sent[0];
        assert_eq!(*port, 1, "TTL 2 goes to the backend");
        let ip = crate::wire::ipv4::Packet::new_checked(&out[14..]).unwrap();
        assert_eq!(ip.ttl(), 1);
        assert!(ip.verify_checksum());
        let (port, out) = &sent[1];
        assert_eq!(*port, 0, "TTL 1 is answered to the client");
        let e = SlicedPacket::from_ethernet(out).unwrap();
        let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(m))) = (&e.net, &e.transport)
        else {
            panic!("{e:?}")
        };
        assert_eq!(
            (ip.header().source(), ip.header().destination()),
            (VIP, CLIENT)
        );
        assert_eq!(
            m.icmp_type(),
            Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit)
        );
        // It quotes the datagram as the client sent it, TTL 1.
        assert_eq!(m.payload(), &dying[14..14 + 28]);
        assert_eq!(st.drops[DropReason::TtlExceeded.index()], 1);
        assert_eq!((st.rx, st.tx, st.icmp_time_exceeded_sent), (2, 2, 1));
        assert_eq!(w.port().free_frames(), total);

        // IPv6: hop limit 0 and 1 are answered, 2 leaves with 1.
        let frames = [0, 1, 2].map(|h| with_ttl(udp6(41000 + u16::from(h), 10), h));
        let (sent, st) = burst(&mut w, &flows, &frames, 0);
        assert_eq!(sent.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [0, 0, 1]);
        for (_, out) in &sent[..2] {
            let e = SlicedPacket::from_ethernet(out).unwrap();
            let Some(TransportSlice::Icmpv6(m)) = &e.transport else {
                panic!("{e:?}")
            };
            assert_eq!(
                m.icmp_type(),
                Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded)
            );
        }
        assert_eq!(sent[2].1[14 + 7], 1);
        assert_eq!(
            (
                st.drops[DropReason::TtlExceeded.index()],
                st.icmp_time_exceeded_sent
            ),
            (2, 2)
        );
    }

    #[test]
    fn time_exceeded_shares_the_rate_limit_with_too_big() {
        let flows = FlowTable::new(1024, Timeouts::default());
        let mut w = worker();
        let burst_n = TokenBucket::ICMP_BURST as usize;
        let mut flood: Vec<Vec<u8>> = (0..burst_n as u16)
            .map(|i| udp4(40000 + i, 1400, true))
            .collect();
        flood.extend((0..10).map(|i| with_ttl(udp4(45000 + i, 10, true), 1)));
        let (sent, st) = burst(&mut w, &flows, &flood, 0);
        assert_eq!(sent.len(), burst_n);
        assert_eq!(
            (st.icmp_too_big_sent, st.icmp_time_exceeded_sent),
            (burst_n as u64, 0)
        );
        assert_eq!(st.drops[DropReason::TtlExceeded.index()], 10);
    }

    #[test]
    fn counters_name_the_too_big_drops_and_answers() {
        let names: Vec<String> = Counters::default()
            .snapshot()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(names.iter().any(|n| n == "drop_too_big"), "{names:?}");
        assert!(names.iter().any(|n| n == "icmp_too_big_sent"), "{names:?}");
        assert!(names.iter().any(|n| n == "drop_ttl_exceeded"), "{names:?}");
        assert!(
            names.iter().any(|n| n == "icmp_time_exceeded_sent"),
            "{names:?}"
        );
    }

    /// A publish rings the doorbell that idle workers poll, so that they
    /// load the table at once rather than at their poll timeout.
    #[test]
    fn a_publish_rings_the_doorbell() {
        let shared = Shared::new(
            Snapshot::default(),
            FlowTable::new(1024, Timeouts::default()),
            AffinityTable::new(64),
        );
        let bell = shared.doorbell.as_ref().expect("an eventfd");
        assert!(!bell.drain(), "quiet before a publish");
        shared.publish(Snapshot::default());
        assert!(bell.drain(), "rung by the publish");
    }
}
