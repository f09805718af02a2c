//! Per-packet cost of the worker over the in-memory port (release build).
//! Each iteration injects a burst of 64 frames (the copy stands in for the
//! NIC's DMA) and runs one worker burst, so the figures include parse,
//! lookup, rewrite, MAC rewrite and the port's bookkeeping; criterion
//! reports time per element = per packet.
//!
//! - `worker_burst/{established,reply,new_flow}/N`: an established flow, a
//!   reply and a new flow (schedule + insert), one service, N = 1e3 and 1e6
//!   flows in the table (table capacity 2N).
//! - `worker_burst/{established,reply}/10000000`: the same at 1e7 flows,
//!   only with `SLUICE_BENCH_1E7=1` in the environment: the table is sized
//!   to exactly 1e7 IPv4 flows (its design worst load: every record used,
//!   index 80% full), which allocates 1e7 × `FlowTable::BYTES_PER_FLOW_V4`
//!   (58 B) = 580 MB (plus the IPv6 store, a quarter the flows at 106 B),
//!   and populating it pushes 2e7 packets through the worker (tens of
//!   seconds in release). No new-flow bench at 1e7: a full table would
//!   measure eviction.
//! - `worker_scaling/{established,reply}/W`: W = 1 and 2 worker threads,
//!   each over its own in-memory port, all on one shared table of 1e6 flows
//!   (what the cores of one host do). Throughput is the sum over workers;
//!   with lock-free reads it should grow with W up to the cores there are
//!   (2 on the project's machines).
//! - `worker_burst/port_only`: the in-memory port alone (inject a burst,
//!   receive it, open every frame, send it), the part of the figures above
//!   that stands in for the NIC and is not Sluice's packet work.
//! - `worker_burst_services/established/S`: an established flow with S =
//!   1, 1e3 and 1e5 services in the table (one address each, ClusterIP-like;
//!   the flow's service is the middle one), 1e4 flows. The per-packet cost
//!   should not depend on S.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::{client, service_vip, snapshot, snapshot_many, tcp, VIP};
use sluice_dataplane::affinity::AffinityTable;
use sluice_dataplane::flow_table::{FlowTable, Timeouts};
use sluice_dataplane::pipeline::{Ctx, MasqPolicy};
use sluice_dataplane::port::MemPort;
use sluice_dataplane::types::{proto, Addr, FlowKey};
use sluice_dataplane::worker::{Worker, WorkerOpts};

const BURST: usize = 64;
/// Distinct packets replayed by the hit and reply benches (spread over the
/// table so the lookups are not all one cache line).
const TEMPLATES: usize = 4096;

fn worker() -> Worker<MemPort> {
    Worker::new(
        MemPort::new(2, 4 * BURST).discard_sent(),
        WorkerOpts::default(),
    )
}

/// Fills `flows` with `n` established flows (SYN then ACK from each client
/// to `vip`) and returns, for each template, the client's ACK and the
/// backend's reply.
fn populate(
    snap: &sluice_dataplane::pipeline::Snapshot,
    flows: &FlowTable,
    n: u32,
    vip: ([u8; 4], u16),
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (vaddr, vport) = vip;
    let mut w = Worker::new(MemPort::new(2, 2 * BURST), WorkerOpts::default());
    let aff = AffinityTable::new(64);
    let mut i = 0;
    while i < n {
        let end = (i + BURST as u32 / 2).min(n);
        for c in i..end {
            let (ip, port) = client(c);
            w.port()
                .inject(0, &tcp(ip, vaddr, port, vport, true, false));
            w.port()
                .inject(0, &tcp(ip, vaddr, port, vport, false, true));
        }
        w.poll_once(&Ctx {
            snap,
            flows,
            affinity: &aff,
            now: 1,
            share: sluice_dataplane::snat::Share::WHOLE,
        });
        w.port().clear_sent();
        i = end;
    }
    // Every flow fits, up to the table's full capacity (the cuckoo index
    // makes room by displacement instead of refusing a key).
    let st = w.take_stats();
    assert_eq!(
        flows.len(),
        n as usize,
        "table populated: {} of {n} ({st:?})",
        flows.len()
    );
    let step = (n as usize / TEMPLATES).max(1);
    let mut hits = Vec::new();
    let mut replies = Vec::new();
    let mut c = 0u32;
    while hits.len() < TEMPLATES.min(n as usize) && c < n {
        let (ip, port) = client(c);
        let key = FlowKey {
            src: Addr::from_v4(ip),
            dst: Addr::from_v4(vaddr),
            sport: port,
            dport: vport,
            proto: proto::TCP,
        };
        if let Some(hit) = flows.lookup(&key, 1) {
            hits.push(tcp(ip, vaddr, port, vport, false, true));
            // The reply as the backend sends it (its reply tuple).
            let r = hit.entry.reply;
            let v4 = |a: Addr| -> [u8; 4] { a.0[12..].try_into().expect("4 bytes") };
            replies.push(tcp(v4(r.src), v4(r.dst), r.sport, r.dport, false, true));
        }
        c = (c + 1).max((hits.len() * step) as u32);
    }
    assert_eq!(hits.len(), TEMPLATES.min(n as usize), "templates");
    (hits, replies)
}

/// One timed burst: `BURST` frames from `frames` (round robin from `*k`)
/// injected on `port`, then one worker poll.
fn burst(
    w: &mut Worker<MemPort>,
    ctx: &Ctx<'_>,
    port: u8,
    frames: &[Vec<u8>],
    k: &mut usize,
) -> usize {
    for _ in 0..BURST {
        w.port().inject(port, &frames[*k % frames.len()]);
        *k += 1;
    }
    w.poll_once(ctx)
}

/// Whether the 1e7-flow benches are enabled (`SLUICE_BENCH_1E7=1`).
fn with_1e7() -> bool {
    std::env::var("SLUICE_BENCH_1E7").is_ok_and(|v| v == "1")
}

fn bench(c: &mut Criterion) {
    // As the daemon does in each worker thread: this thread is the only
    // writer of traffic-counter slot 0 (plain relaxed stores, no RMW).
    sluice_dataplane::traffic::bind_worker(0);
    let mut g = c.benchmark_group("worker_burst");
    g.throughput(Throughput::Elements(BURST as u64));
    let mut sizes = vec![1_000u32, 1_000_000];
    if with_1e7() {
        sizes.push(10_000_000);
    }
    for n in sizes {
        let big = n > 1_000_000;
        let snap = snapshot(1, MasqPolicy::default());
        // 1e7: exactly full (580 MB); smaller tables at half load.
        let cap = if big { n as usize } else { n as usize * 2 };
        let flows = FlowTable::new(cap, Timeouts::default());
        let (hits, replies) = populate(&snap, &flows, n, (VIP, 80));
        let aff = AffinityTable::new(64);

        let mut w = worker();
        let mut k = 0;
        g.bench_with_input(BenchmarkId::new("established", n), &n, |b, _| {
            b.iter(|| {
                for _ in 0..BURST {
                    w.port().inject(0, &hits[k % hits.len()]);
                    k += 1;
                }
                w.poll_once(&Ctx {
                    snap: &snap,
                    flows: &flows,
                    affinity: &aff,
                    now: 2,
                    share: sluice_dataplane::snat::Share::WHOLE,
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("reply", n), &n, |b, _| {
            b.iter(|| {
                for _ in 0..BURST {
                    w.port().inject(1, &replies[k % replies.len()]);
                    k += 1;
                }
                w.poll_once(&Ctx {
                    snap: &snap,
                    flows: &flows,
                    affinity: &aff,
                    now: 2,
                    share: sluice_dataplane::snat::Share::WHOLE,
                })
            })
        });
        if big {
            drop(flows);
            continue;
        }
        // New flows: SYNs from clients never seen. Every 64k of them, the
        // new flows are removed (outside the timed section) so the table
        // stays at n flows plus at most 64k.
        let mut next = 10_000_000u32;
        g.bench_with_input(BenchmarkId::new("new_flow", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..BURST {
                        let (ip, port) = client(next);
                        next += 1;
                        w.port().inject(0, &tcp(ip, VIP, port, 80, true, false));
                    }
                    let t = std::time::Instant::now();
                    w.poll_once(&Ctx {
                        snap: &snap,
                        flows: &flows,
                        affinity: &aff,
                        now: 2,
                        share: sluice_dataplane::snat::Share::WHOLE,
                    });
                    total += t.elapsed();
                    if next % 65_536 < BURST as u32 {
                        flows.remove_where(|e| client_no(e) >= 10_000_000);
                    }
                }
                total
            })
        });
        let _ = flows.remove_where(|_| true);
    }
    g.finish();
}

/// Established-flow cost against the size of the service table.
fn bench_services(c: &mut Criterion) {
    const FLOWS: u32 = 10_000;
    sluice_dataplane::traffic::bind_worker(0);
    let mut g = c.benchmark_group("worker_burst_services");
    g.throughput(Throughput::Elements(BURST as u64));
    for &s in &[1u32, 1_000, 100_000] {
        let snap = snapshot_many(s, MasqPolicy::default());
        assert_eq!(snap.services.len(), s as usize);
        let flows = FlowTable::new(FLOWS as usize * 2, Timeouts::default());
        let (hits, _) = populate(&snap, &flows, FLOWS, service_vip(s / 2));
        let aff = AffinityTable::new(64);
        let ctx = Ctx {
            snap: &snap,
            flows: &flows,
            affinity: &aff,
            now: 2,
            share: sluice_dataplane::snat::Share::WHOLE,
        };
        let mut w = worker();
        let mut k = 0;
        g.bench_with_input(BenchmarkId::new("established", s), &s, |b, _| {
            b.iter(|| burst(&mut w, &ctx, 0, &hits, &mut k))
        });
        // Every packet hit its flow and went out: nothing scheduled anew,
        // nothing dropped (rx is 0 when a filter skipped this bench).
        let st = w.take_stats();
        assert!(st.tx == st.rx && st.new_flows == 0, "{st:?}");
    }
    g.finish();
}

/// Recovers the client number from a flow's original tuple.
fn client_no(e: &sluice_dataplane::flow_table::FlowEntry) -> u32 {
    let a = u32::from(e.original.src.0[14]) << 8 | u32::from(e.original.src.0[15]);
    a * 50_000 + u32::from(e.original.sport - 1024)
}

/// The in-memory port's own cost per packet: what the worker benches pay
/// for injecting and collecting frames, without any packet work.
fn bench_port_only(c: &mut Criterion) {
    use sluice_dataplane::port::{MemFrame, Port, RxFrame};
    let mut g = c.benchmark_group("worker_burst");
    g.throughput(Throughput::Elements(BURST as u64));
    let snap = snapshot(1, MasqPolicy::default());
    let flows = FlowTable::new(2_000, Timeouts::default());
    let (hits, _) = populate(&snap, &flows, 1_000, (VIP, 80));
    let mut port = MemPort::new(2, 4 * BURST).discard_sent();
    let mut batch: Vec<RxFrame<MemFrame>> = Vec::with_capacity(BURST);
    let mut k = 0;
    g.bench_function("port_only", |b| {
        b.iter(|| {
            for _ in 0..BURST {
                port.inject(0, &hits[k % hits.len()]);
                k += 1;
            }
            batch.clear();
            let n = port.recv(&mut batch, BURST);
            for mut f in batch.drain(..) {
                let first = port.with_frame(&mut f.frame, |buf, len| buf[..*len][0]);
                std::hint::black_box(first);
                port.send(1, f.frame);
            }
            port.flush();
            n
        })
    });
    g.finish();
}

/// Aggregate throughput of 1 and 2 workers sharing one flow table.
fn bench_scaling(c: &mut Criterion) {
    const FLOWS: u32 = 1_000_000;
    let mut g = c.benchmark_group("worker_scaling");
    let snap = snapshot(1, MasqPolicy::default());
    let flows = FlowTable::new(2 * FLOWS as usize, Timeouts::default());
    let (hits, replies) = populate(&snap, &flows, FLOWS, (VIP, 80));
    let aff = AffinityTable::new(64);
    let ctx = Ctx {
        snap: &snap,
        flows: &flows,
        affinity: &aff,
        now: 2,
        share: sluice_dataplane::snat::Share::WHOLE,
    };
    for (name, port, frames) in [("established", 0u8, &hits), ("reply", 1, &replies)] {
        for w in [1usize, 2] {
            g.throughput(Throughput::Elements((BURST * w) as u64));
            g.bench_with_input(BenchmarkId::new(name, w), &w, |b, &w| {
                b.iter_custom(|iters| {
                    let start = std::time::Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..w {
                            let ctx = &ctx;
                            s.spawn(move || {
                                sluice_dataplane::traffic::bind_worker(t);
                                let mut wk = worker();
                                // Each worker replays the templates from its
                                // own offset.
                                let mut k = t * frames.len() / 2;
                                for _ in 0..iters {
                                    burst(&mut wk, ctx, port, frames, &mut k);
                                }
                                let st = wk.take_stats();
                                assert_eq!(st.tx, st.rx, "{st:?}");
                            });
                        }
                    });
                    start.elapsed()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    bench,
    bench_services,
    bench_port_only,
    bench_scaling
);
criterion_main!(benches);
