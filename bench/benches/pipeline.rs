//! Per-packet cost of the worker over the in-memory port (release build):
//! an established flow, a new flow (schedule + insert) and a reply, with
//! 1e3 and 1e6 flows in the table. Each iteration injects a burst of 64
//! frames (the copy stands in for the NIC's DMA) and runs one worker burst,
//! so the figures include parse, lookup, rewrite, MAC rewrite and the port's
//! bookkeeping; criterion reports time per element = per packet.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::{backend_ip, client, snapshot, tcp, BACKEND_PORT, VIP};
use sluice_dataplane::affinity::AffinityTable;
use sluice_dataplane::flow_table::{FlowTable, Timeouts};
use sluice_dataplane::pipeline::{Ctx, MasqPolicy};
use sluice_dataplane::port::MemPort;
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

/// Fills `flows` with `n` established flows (SYN then ACK from each client)
/// and returns, for each template, the client's ACK and the backend's reply.
fn populate(
    snap: &sluice_dataplane::pipeline::Snapshot,
    flows: &FlowTable,
    n: u32,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut w = Worker::new(MemPort::new(2, 2 * BURST), WorkerOpts::default());
    let aff = AffinityTable::new(64);
    let mut i = 0;
    while i < n {
        let end = (i + BURST as u32 / 2).min(n);
        for c in i..end {
            let (ip, port) = client(c);
            w.port().inject(0, &tcp(ip, VIP, port, 80, true, false));
            w.port().inject(0, &tcp(ip, VIP, port, 80, false, true));
        }
        w.poll_once(&Ctx {
            snap,
            flows,
            affinity: &aff,
            now: 1,
        });
        w.port().clear_sent();
        i = end;
    }
    // A key whose two-bucket probe window is full is refused even below
    // capacity (rare: about one in a million at half load); tolerate it.
    assert!(
        flows.len() >= n as usize - n as usize / 10_000,
        "table populated: {} of {n}",
        flows.len()
    );
    let step = (n as usize / TEMPLATES).max(1);
    let mut hits = Vec::new();
    let mut replies = Vec::new();
    for t in 0..TEMPLATES.min(n as usize) {
        let c = (t * step) as u32;
        let (ip, port) = client(c);
        hits.push(tcp(ip, VIP, port, 80, false, true));
        // Round-robin gave client c backend c % 3.
        replies.push(tcp(
            backend_ip((c % 3) as u8),
            ip,
            BACKEND_PORT,
            port,
            false,
            true,
        ));
    }
    (hits, replies)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("worker_burst");
    g.throughput(Throughput::Elements(BURST as u64));
    for &n in &[1_000u32, 1_000_000] {
        let snap = snapshot(1, MasqPolicy::default());
        let flows = FlowTable::new(n as usize * 2, Timeouts::default());
        let (hits, replies) = populate(&snap, &flows, n);
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
                })
            })
        });
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

/// Recovers the client number from a flow's original tuple.
fn client_no(e: &sluice_dataplane::flow_table::FlowEntry) -> u32 {
    let a = u32::from(e.original.src.0[14]) << 8 | u32::from(e.original.src.0[15]);
    a * 50_000 + u32::from(e.original.sport - 1024)
}

criterion_group!(benches, bench);
criterion_main!(benches);
