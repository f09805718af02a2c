//! The control plane's cost at scale: compiling N services (3 endpoints
//! each) from their objects into a service table, which is what one change
//! costs today (every change recompiles every object, `reconcile::compile`),
//! and what an epoch that changes only next hops costs
//! (`ServiceTable::with_version`, the neighbour-event path). Also the
//! memory a compiled service holds (RSS delta / N).
//!
//! One endpoint change, table part: the next table built from the one in
//! service (`ServiceTable::build_from`: slots and backend ids kept, the
//! unchanged services shared), over 200 changes, p50 and p99.
//!
//! One endpoint change through the reconciler's compile path, beside the
//! whole compile in the same run: the store's commit of a one-object batch
//! (`Store::commit_with`), the incremental objects → specs of the Services
//! it touches (`reconcile::incremental::Incremental::apply`) and the table
//! from the changed specs only (`ServiceTable::build_changed`), 200
//! changes, p50 and p99; also the whole `Config` the publisher keeps
//! (`Incremental::config`, a copy of every spec). Then 1000 such
//! single-endpoint batches back to back: the sustained rate. Not in these
//! figures: the steering maps (XDP), next hops, the publisher's live-set
//! and flush passes, the workers' epoch load, persistence.
//!
//! Not criterion: one 100k compile takes seconds; each size runs a few
//! times and prints the median. `cargo bench -p sluice-bench --bench compile`
//! (`SLUICE_BENCH_SIZES=1000,10000` to choose sizes). The machine is shared:
//! read the numbers as medians on a noisy host.

use std::time::{Duration, Instant};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};
use sluice_control::config::{self, CompileCtx};
use sluice_control::reconcile::incremental::Incremental;
use sluice_control::store::{Batch, Key, Objects, Store, Stored, UpsertMode, Write};
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

/// Service `i`'s EndpointSlice with its last endpoint moved to another
/// address (`k` picks which).
fn moved_slice(i: u32, k: u32) -> Value {
    let [_, mut slice] = objects(i);
    slice["endpoints"][2]["addresses"][0] = json!(format!("198.19.255.{}", k % 250 + 1));
    slice
}

/// A store holding `objs`, as the reconciler has it.
fn store_of(objs: &[Value]) -> Store {
    let map: Objects = objs
        .iter()
        .map(|o| {
            (
                Key::of(o).expect("keyed"),
                Stored {
                    object: Arc::new(o.clone()),
                    owner: Arc::from("bench"),
                    resource_version: 1,
                },
            )
        })
        .collect();
    Store::restored(map, 1)
}

/// What one single-endpoint batch cost through the compile path.
struct ChangeCost {
    /// `Incremental::apply` + `ServiceTable::build_changed`.
    compile: Duration,
    /// The whole store commit around it (its copy of the object map too).
    commit: Duration,
    /// `Incremental::config`: the whole config for the publisher.
    config: Duration,
}

/// Commits one batch moving an endpoint of service `i` through the
/// incremental compile, replacing `table` with the next one.
fn incremental_change(
    store: &mut Store,
    inc: &mut Incremental,
    table: &mut ServiceTable,
    i: u32,
    k: u32,
) -> ChangeCost {
    let mut compile = Duration::ZERO;
    let mut config = Duration::ZERO;
    let batch = Batch {
        writes: vec![Write::Upsert {
            object: moved_slice(i, k),
            owner: Arc::from("bench"),
            mode: UpsertMode::Apply(None),
        }],
    };
    let version = table.version() + 1;
    let t = Instant::now();
    store
        .commit_with(batch, SystemTime::now(), |objects, events| {
            let t = Instant::now();
            let changed: BTreeSet<Key> = events.iter().map(|e| e.key.clone()).collect();
            let delta = inc.apply(objects, &changed)?;
            let next = table.build_changed(version, &delta.removed, delta.upserted, 0)?;
            compile = t.elapsed();
            let t = Instant::now();
            let cfg = inc.config();
            config = t.elapsed();
            assert_eq!(cfg.services.len(), next.len());
            *table = next;
            Ok::<_, config::ConfigError>(())
        })
        .expect("the change commits");
    ChangeCost {
        compile,
        commit: t.elapsed() - config,
        config,
    }
}

/// The incremental path at `n` services: (p50, p99) of compile, commit
/// and config over `changes` changes, then the rate of `burst` changes
/// back to back (commit + compile + config each).
fn incremental(objs: &[Value], n: u32, ctx: &CompileCtx) {
    let mut store = store_of(objs);
    let t = Instant::now();
    let mut inc = Incremental::build(store.objects(), ctx.clone()).expect("valid objects");
    let built = t.elapsed();
    let mut table = ServiceTable::build(1, inc.config().services).expect("valid table");
    let (mut compile, mut commit, mut config) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..200 {
        let c = incremental_change(&mut store, &mut inc, &mut table, (k * 7919) % n, k);
        compile.push(c.compile);
        commit.push(c.commit);
        config.push(c.config);
    }
    let q = |v: &Vec<Duration>| (quantile(v.clone(), 0.5), quantile(v.clone(), 0.99));
    let ((c50, c99), (m50, m99), (g50, g99)) = (q(&compile), q(&commit), q(&config));
    println!(
        "services={n} one endpoint change, incremental objects->specs + build_changed: p50 {c50:?} p99 {c99:?}; store commit around it p50 {m50:?} p99 {m99:?}; whole Config copy p50 {g50:?} p99 {g99:?} (200 changes; incremental build from scratch {built:?})"
    );
    let burst = 1000u32;
    let t = Instant::now();
    for k in 0..burst {
        incremental_change(&mut store, &mut inc, &mut table, (k * 104_729) % n, k + 7);
    }
    let took = t.elapsed();
    println!(
        "services={n} {burst} single-endpoint batches back to back (commit + incremental compile + build_changed + Config copy): {took:?}, {:.0} updates/s",
        f64::from(burst) / took.as_secs_f64()
    );
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
        incremental(&objs, n, &ctx);
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
