//! The control plane's cost at scale: compiling N services (3 endpoints
//! each) from their objects into a service table, which is what one change
//! costs today (every change recompiles every object, `reconcile::compile`),
//! and what an epoch that changes only next hops costs
//! (`ServiceTable::with_version`, the neighbour-event path). Also the
//! memory a compiled service holds (RSS delta / N).
//!
//! One endpoint change, table part: the next table built from the one in
//! service (`ServiceTable::build_from`: slots and backend ids kept, the
//! unchanged services shared), over 200 changes, p50 and p99. The config
//! compile (objects → specs) is still whole on every change; its cost is
//! the `objects->specs` figure, so one change through the reconciler
//! costs about `objects->specs + build_from` (no XDP here: the steering
//! maps and the workers' epoch load are not in these figures).
//!
//! Not criterion: one 100k compile takes seconds; each size runs a few
//! times and prints the median. `cargo bench -p sluice-bench --bench compile`
//! (`SLUICE_BENCH_SIZES=1000,10000` to choose sizes). The machine is shared:
//! read the numbers as medians on a noisy host.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_control::config::{self, CompileCtx};
use sluice_dataplane::service::{ServiceSpec, ServiceTable};
use sluice_dataplane::types::Addr;

/// A Service and its EndpointSlice (3 endpoints) for service number `i`.
fn objects(i: u32) -> [Value; 2] {
    let name = format!("svc{i}");
    // 198.(18|19).x.y: the 198.18.0.0/15 range, one VIP per service.
    let vip = format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
    let ep = |k: u32| {
        let n = i * 3 + k;
        format!("198.19.{}.{}", (n >> 8) & 0xff, n & 0xff)
    };
    [
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": vip,
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": (0..3).map(|k| json!({"addresses": [ep(k)], "conditions": {"ready": true}}))
                .collect::<Vec<_>>()
        }),
    ]
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The `q` quantile (0..1) of `v`.
fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

/// One endpoint change at a time, `changes` times, each a table built
/// from the one before: (p50, p99) of `build_from`, and whether every
/// unchanged service was shared.
fn one_change(specs: &[ServiceSpec], changes: u32) -> (Duration, Duration) {
    let mut table = ServiceTable::build(1, specs.to_vec()).expect("valid table");
    let mut cur = specs.to_vec();
    let mut times = Vec::new();
    for k in 0..changes {
        let i = (k as usize * 7919) % cur.len();
        // The endpoint is replaced by another address (a pod restarted
        // elsewhere).
        let b = cur[i].backends.len() - 1;
        cur[i].backends[b].addr = Addr::from_v4([198, 19, 255, (k % 250) as u8 + 1]);
        let next_specs = cur.clone();
        let t = Instant::now();
        let next = table
            .build_from(u64::from(k) + 2, next_specs, 0)
            .expect("valid table");
        times.push(t.elapsed());
        let shared = next
            .indexed()
            .filter(|(slot, s)| table.get(*slot).is_some_and(|o| std::ptr::eq(o, *s)))
            .count();
        assert_eq!(shared, cur.len() - 1, "every unchanged service shared");
        table = next;
    }
    (quantile(times.clone(), 0.5), quantile(times, 0.99))
}

fn main() {
    let sizes: Vec<u32> = std::env::var("SLUICE_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let ctx = CompileCtx::default();
    for n in sizes {
        let objs: Vec<Value> = (0..n).flat_map(objects).collect();
        let runs = if n >= 100_000 { 3 } else { 7 };
        let (mut compile, mut build, mut swap) = (Vec::new(), Vec::new(), Vec::new());
        let mut mem = 0u64;
        for _ in 0..runs {
            let rss0 = rss_bytes();
            let t = Instant::now();
            let cfg = config::load_objects(objs.iter(), "bench", &ctx).expect("valid objects");
            let t1 = Instant::now();
            let table = ServiceTable::build(1, cfg.services.clone()).expect("valid table");
            let t2 = Instant::now();
            let next = table.with_version(2);
            let t3 = Instant::now();
            assert_eq!(next.len(), n as usize);
            compile.push(t1 - t);
            build.push(t2 - t1);
            swap.push(t3 - t2);
            mem = rss_bytes().saturating_sub(rss0);
            drop((cfg, table, next));
        }
        let (c, b, s) = (median(compile), median(build), median(swap));
        let specs = config::load_objects(objs.iter(), "bench", &ctx)
            .expect("valid objects")
            .services;
        let (p50, p99) = one_change(&specs, 200);
        println!(
            "services={n} one endpoint change, table built from the one in service: p50 {p50:?} p99 {p99:?} (200 changes)"
        );
        println!(
            "services={n} endpoints={} objects->specs {c:?} specs->table {b:?} full change {:?} hop-only epoch {s:?} rss/service {} B (config + table, {} endpoints each)",
            n * 3,
            c + b,
            mem / u64::from(n),
            3
        );
    }
}
