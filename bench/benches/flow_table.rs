//! The flow table alone, without the packet path around it (release
//! build): what a lookup and an insert cost at 1e3 and 1e6 IPv4 flows.
//!
//! - `flow_table/lookup_hit/N`: a key of a live flow (the original key of
//!   one of N flows, visited in a scattered order), hashed and looked up.
//! - `flow_table/lookup_miss/N`: a key no flow has.
//! - `flow_table/insert_remove/N`: a new flow inserted (both keys claimed,
//!   re-scanned, committed) and removed again, with N other flows in the
//!   table (capacity 2N).
//!
//! Each iteration runs 64 operations, like a burst; throughput is per
//! operation.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_dataplane::flow_table::{FlowEntry, FlowTable, Timeouts};
use sluice_dataplane::types::{proto, Addr, FlowKey, L2Hop};

const OPS: usize = 64;

/// Flow `n`: client 198.19.x.y:port → VIP:80, backend 198.18.1.(n%8):8080.
fn entry(n: u32) -> FlowEntry {
    let b = n.to_be_bytes();
    let original = FlowKey {
        src: Addr::from_v4([198, 19, b[1], b[2]]),
        dst: Addr::from_v4([198, 18, 100, 10]),
        sport: 1024 + u16::from(b[3]) * 200 + (n >> 24) as u16,
        dport: 80,
        proto: proto::TCP,
    };
    let backend = Addr::from_v4([198, 18, 1, (n % 8) as u8 + 1]);
    FlowEntry {
        original,
        reply: FlowKey {
            src: backend,
            dst: original.src,
            sport: 8080,
            dport: original.sport,
            proto: proto::TCP,
        },
        orig_hop: L2Hop {
            port: 1,
            mac: [2, 0, 0, 0, 1, (n % 8) as u8],
        },
        reply_hop: L2Hop {
            port: 0,
            mac: [2, 0, 0, 0, 0, 1],
        },
        service: 0,
        backend: n % 8,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_table");
    g.throughput(Throughput::Elements(OPS as u64));
    for n in [1_000u32, 1_000_000] {
        let t = FlowTable::new(2 * n as usize, Timeouts::default());
        for i in 0..n {
            t.insert(&entry(i), 1).expect("populate");
        }
        // A scattered visiting order (a stride coprime with n).
        let keys: Vec<FlowKey> = (0..n.min(1 << 16))
            .map(|i| entry((u64::from(i) * 7_919 % u64::from(n)) as u32).original)
            .collect();
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::new("lookup_hit", n), &n, |b, _| {
            b.iter(|| {
                let mut found = 0;
                for _ in 0..OPS {
                    found += usize::from(t.lookup(&keys[k % keys.len()], 2).is_some());
                    k += 1;
                }
                assert_eq!(found, OPS);
                found
            })
        });
        let mut m = 0u32;
        g.bench_with_input(BenchmarkId::new("lookup_miss", n), &n, |b, _| {
            b.iter(|| {
                let mut found = 0;
                for _ in 0..OPS {
                    let mut key = entry(n + m % 1_000_000).original;
                    key.dport = 81;
                    m += 1;
                    found += usize::from(t.lookup(&key, 2).is_some());
                }
                assert_eq!(found, 0);
                found
            })
        });
        let mut next = 0u32;
        g.bench_with_input(BenchmarkId::new("insert_remove", n), &n, |b, _| {
            b.iter(|| {
                for _ in 0..OPS {
                    let e = entry(n + next % 1_000_000);
                    next += 1;
                    let id = t.insert(&e, 2).expect("insert");
                    assert!(t.remove(id));
                }
            })
        });
        assert_eq!(t.len(), n as usize);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
