//! Per-packet cost of the worker over the in-memory port (release build).
//! Each iteration writes a burst of 64 drawn packets into frames, injects
//! them (the copy stands in for the NIC's DMA) and runs one worker burst,
//! so the figures include parse, lookup, rewrite, MAC rewrite and the
//! port's bookkeeping; criterion reports time per element = per packet.
//!
//! The packets are drawn over **every flow of the table**
//! ([`sluice_bench::draws`]): `uniform` (any flow, equally likely) and
//! `zipf` (s = 1, as real traffic is skewed). Each run prints the hot set
//! of each sequence (distinct flows, and the fewest flows that carry 90 %
//! of its packets, with the bytes of records they take), so a figure can be
//! read against what the caches can hold.
//!
//! - `worker_burst/{established,reply}/{uniform,zipf}/N`: packets of
//!   established flows and their replies, one service, N = 1e3 and 1e6
//!   flows in the table (capacity 2N).
//! - `worker_burst/new_flow/N`: SYNs from clients never seen (schedule +
//!   insert) into a table of N flows.
//! - `.../10000000`: the established and reply benches at 1e7 flows, only
//!   with `SLUICE_BENCH_1E7=1`: the table is sized to exactly 1e7 IPv4
//!   flows (its design worst load: every record used, index 80% full),
//!   which allocates 1e7 × `FlowTable::BYTES_PER_FLOW_V4` (58 B) = 580 MB
//!   (plus the IPv6 store), and populating it pushes 2e7 packets through
//!   the worker (tens of seconds). No new-flow bench at 1e7: a full table
//!   would measure eviction.
//! - `worker_scaling/{established,reply}/W`: W = 1 and 2 worker threads,
//!   each over its own in-memory port and its own uniform sequence, all on
//!   one shared table of 1e6 flows. Throughput is the sum over workers.
//! - `worker_burst/port_only`: drawing the packet into the frame and the
//!   in-memory port alone (inject, receive, open every frame, send): the
//!   part of the figures above that is not Sluice's packet work.
//! - `worker_burst_services/{established,new_flow}/S`: S = 1, 1e3 and 1e5
//!   services (one address each, ClusterIP-like). Established flows (1e4,
//!   uniform) name their service by slot, so their cost should not depend
//!   on S; new flows look their front end up among the S (each SYN to a
//!   service drawn over all of them) and schedule.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::draws::{retarget, Draws, Order, Tuple, DRAWS};
use sluice_bench::{client, service_vip, snapshot, snapshot_many, tcp, VIP};
use sluice_dataplane::affinity::AffinityTable;
use sluice_dataplane::flow_table::{FlowTable, Timeouts};
use sluice_dataplane::pipeline::{Ctx, MasqPolicy};
use sluice_dataplane::port::MemPort;
use sluice_dataplane::types::{proto, Addr, FlowKey};
use sluice_dataplane::worker::{Worker, WorkerOpts};

const BURST: usize = 64;

fn worker() -> Worker<MemPort> {
    Worker::new(
        MemPort::new(2, 4 * BURST).discard_sent(),
        WorkerOpts::default(),
    )
}

/// Every flow of a populated table: the client's tuple (what it sends to
/// the VIP) and the backend's reply tuple, in client order.
struct Flows {
    original: Vec<Tuple>,
    reply: Vec<Tuple>,
}

/// Fills `flows` with `n` established flows (SYN then ACK from each client
/// to `vip`) and returns every flow's tuples.
fn populate(
    snap: &sluice_dataplane::pipeline::Snapshot,
    flows: &FlowTable,
    n: u32,
    vip: ([u8; 4], u16),
) -> Flows {
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
    let v4 = |a: Addr| -> [u8; 4] { a.0[12..].try_into().expect("4 bytes") };
    let mut out = Flows {
        original: Vec::with_capacity(n as usize),
        reply: Vec::with_capacity(n as usize),
    };
    for c in 0..n {
        let (ip, port) = client(c);
        let key = FlowKey {
            src: Addr::from_v4(ip),
            dst: Addr::from_v4(vaddr),
            sport: port,
            dport: vport,
            proto: proto::TCP,
        };
        let hit = flows
            .lookup(&key, 1)
            .expect("every populated flow is found");
        // The reply as the backend sends it (its reply tuple).
        let r = hit.entry.reply;
        out.original.push(Tuple {
            src: ip,
            dst: vaddr,
            sport: port,
            dport: vport,
        });
        out.reply.push(Tuple {
            src: v4(r.src),
            dst: v4(r.dst),
            sport: r.sport,
            dport: r.dport,
        });
    }
    out
}

/// Prints what a draw sequence's caches can hold, so that a figure can be
/// read against it: the distinct flows it touches and the fewest that carry
/// 90 % of its packets, with the bytes of flow records those take.
fn print_hot_set(what: &str, n: u32, d: &Draws) {
    let h = d.hot_set();
    let mb = |f: usize| (f * FlowTable::BYTES_PER_FLOW_V4) as f64 / 1e6;
    println!(
        "hot set {what}/{n}: {} packets, {} distinct flows ({:.1} MB of records), 90 % of packets in {} flows ({:.1} MB)",
        DRAWS,
        h.distinct,
        mb(h.distinct),
        h.flows_90,
        mb(h.flows_90)
    );
}

/// One timed burst: the next `BURST` packets of `draws`, written into
/// `frame` and injected on `port`, then one worker poll.
fn burst(
    w: &mut Worker<MemPort>,
    ctx: &Ctx<'_>,
    port: u8,
    draws: &mut Draws,
    frame: &mut [u8],
) -> usize {
    for _ in 0..BURST {
        draws.fill(frame);
        w.port().inject(port, frame);
    }
    w.poll_once(ctx)
}

/// The context of every timed burst: one table, time 2 (after the
/// population at time 1), the whole SNAT port space.
fn timed_ctx<'a>(
    snap: &'a sluice_dataplane::pipeline::Snapshot,
    flows: &'a FlowTable,
    affinity: &'a AffinityTable,
) -> Ctx<'a> {
    Ctx {
        snap,
        flows,
        affinity,
        now: 2,
        share: sluice_dataplane::snat::Share::WHOLE,
    }
}

/// The template every drawn packet is written into: a TCP ACK.
fn ack_frame() -> Vec<u8> {
    tcp(client(0).0, VIP, client(0).1, 80, false, true)
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
        let all = populate(&snap, &flows, n, (VIP, 80));
        let aff = AffinityTable::new(64);
        let ctx = timed_ctx(&snap, &flows, &aff);
        let mut w = worker();
        let mut frame = ack_frame();
        for order in [Order::Uniform, Order::Zipf] {
            // The same ranks in both directions: a reply sequence is the
            // replies of the flows its established sequence draws.
            let mut orig = Draws::new(&all.original, order);
            let mut reply = Draws::new(&all.reply, order);
            print_hot_set(order.name(), n, &orig);
            let id = |what: &str| BenchmarkId::new(format!("{what}/{}", order.name()), n);
            g.bench_function(id("established"), |b| {
                b.iter(|| burst(&mut w, &ctx, 0, &mut orig, &mut frame))
            });
            g.bench_function(id("reply"), |b| {
                b.iter(|| burst(&mut w, &ctx, 1, &mut reply, &mut frame))
            });
        }
        // Every packet hit its flow and went out (rx is 0 when a filter
        // skipped these benches).
        let st = w.take_stats();
        assert!(st.tx == st.rx && st.new_flows == 0, "{st:?}");
        drop(all);
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
                    w.poll_once(&ctx);
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

/// Per-packet cost against the size of the service table: established
/// flows (which name their service by slot: one indexed read) and new
/// flows, which look their front end up among S and schedule.
fn bench_services(c: &mut Criterion) {
    const FLOWS: u32 = 10_000;
    sluice_dataplane::traffic::bind_worker(0);
    let mut g = c.benchmark_group("worker_burst_services");
    g.throughput(Throughput::Elements(BURST as u64));
    for &s in &[1u32, 1_000, 100_000] {
        let snap = snapshot_many(s, MasqPolicy::default());
        assert_eq!(snap.services.len(), s as usize);
        let flows = FlowTable::new(FLOWS as usize * 2 + 65_536, Timeouts::default());
        let all = populate(&snap, &flows, FLOWS, service_vip(s / 2));
        let aff = AffinityTable::new(64);
        let ctx = timed_ctx(&snap, &flows, &aff);
        let mut w = worker();
        let mut frame = ack_frame();
        let mut orig = Draws::new(&all.original, Order::Uniform);
        g.bench_with_input(BenchmarkId::new("established", s), &s, |b, _| {
            b.iter(|| burst(&mut w, &ctx, 0, &mut orig, &mut frame))
        });
        let st = w.take_stats();
        assert!(st.tx == st.rx && st.new_flows == 0, "{st:?}");
        // New flows, each to a service drawn uniformly among the S (the
        // front-end lookup reads the whole service index, not one hot
        // entry), from clients never seen; removed every 64k outside the
        // timed section.
        let syns: Vec<Tuple> = (0..65_536u32)
            .map(|i| {
                let (src, sport) = client(10_000_000 + i);
                let (dst, dport) = service_vip((i.wrapping_mul(2_654_435_761)) % s);
                Tuple {
                    src,
                    dst,
                    sport,
                    dport,
                }
            })
            .collect();
        let mut syn = tcp(client(0).0, VIP, 1, 80, true, false);
        let mut next = 0usize;
        g.bench_with_input(BenchmarkId::new("new_flow", s), &s, |b, _| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..BURST {
                        retarget(&mut syn, &syns[next]);
                        next += 1;
                        w.port().inject(0, &syn);
                    }
                    let t = std::time::Instant::now();
                    w.poll_once(&ctx);
                    total += t.elapsed();
                    if next == syns.len() {
                        next = 0;
                        flows.remove_where(|e| client_no(e) >= 10_000_000);
                    }
                }
                total
            })
        });
        let st = w.take_stats();
        assert!(st.tx == st.rx && st.new_flows == st.rx, "{st:?}");
    }
    g.finish();
}

/// Recovers the client number from a flow's original tuple.
fn client_no(e: &sluice_dataplane::flow_table::FlowEntry) -> u32 {
    let a = u32::from(e.original.src.0[14]) << 8 | u32::from(e.original.src.0[15]);
    a * 50_000 + u32::from(e.original.sport - 1024)
}

/// The in-memory port's own cost per packet: what the worker benches pay
/// for writing a drawn packet into the frame, injecting and collecting it,
/// without any packet work.
fn bench_port_only(c: &mut Criterion) {
    use sluice_dataplane::port::{MemFrame, Port, RxFrame};
    let mut g = c.benchmark_group("worker_burst");
    g.throughput(Throughput::Elements(BURST as u64));
    let snap = snapshot(1, MasqPolicy::default());
    let flows = FlowTable::new(2_000, Timeouts::default());
    let all = populate(&snap, &flows, 1_000, (VIP, 80));
    let mut draws = Draws::new(&all.original, Order::Uniform);
    let mut frame = ack_frame();
    let mut port = MemPort::new(2, 4 * BURST).discard_sent();
    let mut batch: Vec<RxFrame<MemFrame>> = Vec::with_capacity(BURST);
    g.bench_function("port_only", |b| {
        b.iter(|| {
            for _ in 0..BURST {
                draws.fill(&mut frame);
                port.inject(0, &frame);
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
    let all = populate(&snap, &flows, FLOWS, (VIP, 80));
    let aff = AffinityTable::new(64);
    let ctx = timed_ctx(&snap, &flows, &aff);
    for (name, port, tuples) in [
        ("established", 0u8, &all.original),
        ("reply", 1, &all.reply),
    ] {
        // Each worker draws uniformly over the whole table, its own
        // sequence (made before timing).
        let mut draws: Vec<Draws> = (0..2)
            .map(|t| Draws::new(&tuples[t..], Order::Uniform))
            .collect();
        for w in [1usize, 2] {
            g.throughput(Throughput::Elements((BURST * w) as u64));
            g.bench_with_input(BenchmarkId::new(name, w), &w, |b, &w| {
                b.iter_custom(|iters| {
                    let start = std::time::Instant::now();
                    std::thread::scope(|s| {
                        for (t, draws) in draws.iter_mut().enumerate().take(w) {
                            let ctx = &ctx;
                            s.spawn(move || {
                                sluice_dataplane::traffic::bind_worker(t);
                                let mut wk = worker();
                                let mut frame = ack_frame();
                                for _ in 0..iters {
                                    burst(&mut wk, ctx, port, draws, &mut frame);
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
