//! Schedulers alone (release build): what one pick costs at 10 and 1000
//! real servers for every scheduler, and what building a Maglev table
//! costs at 100 and 1000 servers.
//!
//! - `sched/pick/NAME/N`: one new flow scheduled on a service of N
//!   servers of weights 1..=4 (a different client each time, so the
//!   hashing schedulers hash a new key). The counting schedulers run on
//!   counts of 0..=8 active and 0..=50 inactive connections per server,
//!   set once, so every pick scans real numbers.
//! - `sched/maglev_build/N`: a 65537-slot table for N servers (what a
//!   config change costs an `mh` service, off the packet path).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use sluice_dataplane::sched;
use sluice_dataplane::sched::maglev::{Table, DEFAULT_SIZE};
use sluice_dataplane::service::{BackendSpec, SchedKind, ServiceSpec, ServiceTable, VipKey};
use sluice_dataplane::types::{proto, Addr, FlowKey};

fn backends(n: usize) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| BackendSpec {
            addr: Addr::from_v4([198, 18, 1 + (i / 250) as u8, (i % 250) as u8 + 1]),
            port: 8080,
            weight: (i % 4) as u16 + 1,
            ..Default::default()
        })
        .collect()
}

fn table(kind: SchedKind, n: usize) -> ServiceTable {
    let spec = ServiceSpec {
        name: "bench/web".into(),
        vip: VipKey {
            addr: Addr::from_v4([198, 18, 100, 10]),
            port: 80,
            proto: proto::TCP,
        },
        backends: backends(n),
        sched: kind,
        ..Default::default()
    };
    let t = ServiceTable::build(1, vec![spec]).expect("bench table");
    let c = &t.get(0).expect("service").conns;
    for b in 0..n {
        for _ in 0..(b * 7) % 51 {
            c.on_new(b);
        }
        for _ in 0..(b * 5) % 9 {
            c.on_new(b);
            c.on_established(b, true);
        }
    }
    t
}

fn client(i: u32) -> FlowKey {
    let b = i.to_be_bytes();
    FlowKey {
        src: Addr::from_v4([198, 19, b[2], b[3]]),
        dst: Addr::from_v4([198, 18, 100, 10]),
        sport: 1024 + (i % 60000) as u16,
        dport: 80,
        proto: proto::TCP,
    }
}

fn picks(c: &mut Criterion) {
    let mut g = c.benchmark_group("sched/pick");
    for kind in SchedKind::ALL {
        for n in [10usize, 1000] {
            let t = table(kind, n);
            let s = t.get(0).expect("service");
            let mut i = 0u32;
            g.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    black_box(sched::pick(s, &client(i)))
                })
            });
        }
    }
    g.finish();
}

fn maglev_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("sched/maglev_build");
    g.sample_size(20);
    for n in [100usize, 1000] {
        let b = backends(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bch, _| {
            bch.iter(|| black_box(Table::build(&b, DEFAULT_SIZE)))
        });
    }
    g.finish();
}

criterion_group!(benches, picks, maglev_build);
criterion_main!(benches);
