//! Per-service, per-backend and per-worker figures, summed when read: the
//! `GET /apis/sluice.dev/v1/stats` route, `/metrics` and `sluice stats`.
//!
//! The workers count per backend in the table in service
//! ([`sluice_dataplane::traffic`]); every publish builds a new table whose
//! counters start at zero. So that totals survive a swap, the publisher
//! swaps through [`Stats::swap`]: under one lock, the old snapshot joins
//! the *retired* list and the new one is published, so a reader (who takes
//! the same lock) always sees each packet exactly once, either in a
//! retired table or in the current one. Once every worker has loaded a
//! newer table (their `table_version`), nothing writes a retired table any
//! more, and its sums are folded into totals keyed by front end (VIP,
//! port, protocol) and backend (address, port), then the table is
//! dropped. A front end or backend that the current table no longer has
//! loses its totals at that fold, as deleting a virtual service or real
//! server in IPVS deletes its counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sluice_dataplane::fastpath::sync::SharedSweeper;
use sluice_dataplane::pipeline::{is_dr_flow, DropReason, Snapshot};
use sluice_dataplane::service::VipKey;
use sluice_dataplane::traffic::FIELDS;
use sluice_dataplane::types::{proto, Addr};
use sluice_dataplane::worker::{Counters, Shared};
use std::sync::atomic::Ordering;

/// One backend's counters, in [`sluice_dataplane::traffic`]'s order.
pub type Fields = [u64; FIELDS];
/// Totals by front end, then backend (address, port).
pub type Folded = HashMap<VipKey, HashMap<(Addr, u16), Fields>>;

#[derive(Default)]
struct Inner {
    folded: Folded,
    retired: Vec<Arc<Snapshot>>,
    /// `ipvsadm -Z`: the totals at the last zeroing, subtracted in the
    /// ipvsadm view only ([`Stats::ipvs_traffic`]), so that `sluice stats`
    /// and the Prometheus counters stay monotonic.
    baseline: Folded,
}

/// `--rate`: the estimators by front end and backend.
type Estimators = HashMap<VipKey, HashMap<(Addr, u16), Est>>;

/// IPVS's rate estimator (`ip_vs_est.c`, the classic 2-second timer): each
/// sample takes the increase since the last one, scaled (counts by 2⁹, so
/// per second by 2¹⁰; bytes by 2⁴, per second by 2⁵), and moves the
/// average a quarter of the way to it.
#[derive(Clone, Copy, Debug, Default)]
struct Est {
    last: Fields,
    avg: [i64; FIELDS],
}

/// Fields counted in bytes (the rest are counts): in and out bytes.
const BYTE_FIELDS: [usize; 2] = [2, 4];

impl Est {
    fn sample(&mut self, now: &Fields) {
        for (i, (avg, (n, l))) in self
            .avg
            .iter_mut()
            .zip(now.iter().zip(&self.last))
            .enumerate()
        {
            let d = n.saturating_sub(*l).min(1 << 50) as i64;
            let rate = if BYTE_FIELDS.contains(&i) {
                d << 4
            } else {
                d << 9
            };
            *avg += (rate - *avg) >> 2;
        }
        self.last = *now;
    }

    /// Per second, rounded as IPVS reads its estimator.
    fn rates(&self) -> Fields {
        let mut out = [0u64; FIELDS];
        for (i, (o, a)) in out.iter_mut().zip(self.avg).enumerate() {
            let v = if BYTE_FIELDS.contains(&i) {
                (a + 0xF) >> 5
            } else {
                (a + 0x1FF) >> 10
            };
            *o = v.max(0) as u64;
        }
        out
    }
}

/// How often the estimator samples, as IPVS's timer.
pub const ESTIMATOR_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

/// The traffic totals across table swaps, and the sources of the rest.
#[derive(Clone)]
pub struct Stats {
    /// Held only briefly: a table swap takes it, so no walk of every
    /// service runs under it ([`Stats::traffic`]).
    inner: Arc<Mutex<Inner>>,
    /// The rate estimators, apart, so that a sample of every service
    /// never delays a swap.
    est: Arc<Mutex<Estimators>>,
    shared: Arc<Shared>,
    counters: Vec<Arc<Counters>>,
    /// The fast path's sweep (`--fast-path xdp`), run before each read.
    fast: Option<SharedSweeper>,
}

/// One backend's (or, summed, one service port's) figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// New flows (ipvsadm's Conns).
    pub conns: u64,
    /// Packets client → backend.
    pub in_packets: u64,
    /// Bytes (IP) client → backend.
    pub in_bytes: u64,
    /// Packets backend → client.
    pub out_packets: u64,
    /// Bytes (IP) backend → client.
    pub out_bytes: u64,
    /// Flows in the flow table now.
    pub active_flows: u64,
}

impl Figures {
    fn add(&mut self, f: &Fields) {
        self.conns += f[0];
        self.in_packets += f[1];
        self.in_bytes += f[2];
        self.out_packets += f[3];
        self.out_bytes += f[4];
    }

    fn sum(&mut self, o: &Figures) {
        self.add(&[
            o.conns,
            o.in_packets,
            o.in_bytes,
            o.out_packets,
            o.out_bytes,
        ]);
        self.active_flows += o.active_flows;
    }
}

/// A real server of a service port.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStats {
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Weight.
    pub weight: u32,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// A service port (front end).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStats {
    /// The service port's name (`namespace/name:port`).
    pub name: String,
    /// Front end address.
    pub address: String,
    /// Front end port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: &'static str,
    /// The sum of its backends.
    #[serde(flatten)]
    pub figures: Figures,
    /// Its backends.
    pub backends: Vec<BackendStats>,
}

/// One worker's counters.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStats {
    /// Worker index.
    pub worker: usize,
    /// Every counter by name (`rx`, `tx`, `drop_REASON`, ...).
    pub counters: BTreeMap<String, u64>,
    /// Bursts that received frames.
    pub bursts: u64,
    /// Loop turns that received nothing.
    pub idle_polls: u64,
    /// Milliseconds since its last loop turn.
    pub heartbeat_age_ms: u64,
    /// The table version it has loaded.
    pub table_version: u64,
}

/// Everything the stats route answers.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The table generation in service.
    pub generation: u64,
    /// Flows in the table now.
    pub flows: u64,
    /// Flow table capacity.
    pub flow_capacity: u64,
    /// Flows evicted for new ones, by class.
    pub early_drops: BTreeMap<String, u64>,
    /// Per service port.
    pub services: Vec<ServiceStats>,
    /// Per worker.
    pub workers: Vec<WorkerStats>,
}

/// The protocol's name.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        proto::SCTP => "SCTP",
        _ => "?",
    }
}

/// The sums of `snap`'s counters by front end and backend.
fn sums(snap: &Snapshot) -> Folded {
    let mut out = Folded::new();
    for svc in snap.services.services() {
        let m = out.entry(svc.spec.vip).or_default();
        for (i, b) in svc.spec.backends.iter().enumerate() {
            let f = svc.traffic.backend(i);
            let e = m.entry((b.addr, b.port)).or_default();
            for (x, y) in e.iter_mut().zip(f) {
                *x += y;
            }
        }
    }
    out
}

fn merge(into: &mut Folded, from: Folded) {
    for (vip, m) in from {
        let t = into.entry(vip).or_default();
        for (k, f) in m {
            let e = t.entry(k).or_default();
            for (x, y) in e.iter_mut().zip(f) {
                *x += y;
            }
        }
    }
}

impl Stats {
    /// The totals of the data path around `shared`, written by the workers
    /// of `counters`.
    pub fn new(shared: Arc<Shared>, counters: Vec<Arc<Counters>>) -> Stats {
        Stats {
            inner: Arc::default(),
            est: Arc::default(),
            shared,
            counters,
            fast: None,
        }
    }

    /// Runs the XDP fast path's sweep before every read, so that the
    /// packets it forwarded until then are counted
    /// ([`sluice_dataplane::fastpath::sync`]).
    pub fn set_fast_path(&mut self, sweeper: SharedSweeper) {
        self.fast = Some(sweeper);
    }

    /// Credits what the fast path forwarded so far.
    fn settle_fast_path(&self) {
        if let Some(s) = &self.fast {
            s.lock()
                .unwrap_or_else(|p| p.into_inner())
                .sweep_now(&self.shared);
        }
    }

    /// The shared data-path state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The workers' counters.
    pub fn counters(&self) -> &[Arc<Counters>] {
        &self.counters
    }

    /// Publishes `next`, retiring the snapshot in service (module doc).
    pub fn swap(&self, next: Snapshot) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.shared.snapshot.load_full();
        // The services the new table shares with the old (all of them in a
        // next-hop-only epoch, the unchanged ones in a rebuilt table) keep
        // counting in the new one: only the others retire, or they would be
        // counted twice.
        let retired = old.services.unshared_with(&next.services);
        if !retired.is_empty() {
            g.retired.push(Arc::new(Snapshot {
                services: retired,
                ..Snapshot::default()
            }));
        }
        self.shared.publish(next);
    }

    /// Folds the retired tables no worker can write any more.
    fn fold(&self, g: &mut Inner, current: &Snapshot) {
        let seen = self
            .counters
            .iter()
            .map(|c| c.table_version.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX);
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut g.retired)
            .into_iter()
            .partition(|s| s.services.version() < seen);
        g.retired = keep;
        if done.is_empty() {
            return;
        }
        for s in done {
            merge(&mut g.folded, sums(&s));
        }
        // What the table in service lacks goes (IPVS deletes the counters
        // of a deleted service or real server), and so does its `-Z`
        // baseline: one added again starts from zero.
        let keep =
            |vip: &VipKey, m: &mut HashMap<(Addr, u16), Fields>| match current.services.lookup(vip)
            {
                Some((_, svc)) => {
                    m.retain(|k, _| svc.spec.backends.iter().any(|b| (b.addr, b.port) == *k));
                    true
                }
                None => false,
            };
        g.folded.retain(keep);
        g.baseline.retain(keep);
    }

    /// `ipvsadm -Z`: from now on the ipvsadm view counts from the present
    /// totals of `vip` (every front end if `None`). Returns whether `vip`
    /// is in service.
    pub fn zero(&self, vip: Option<VipKey>) -> bool {
        let (snap, totals) = self.traffic();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match vip {
            None => g.baseline = totals,
            Some(v) => {
                if snap.services.lookup(&v).is_none() {
                    return false;
                }
                g.baseline
                    .insert(v, totals.get(&v).cloned().unwrap_or_default());
            }
        }
        true
    }

    /// One estimator sample of every front end and backend (call it every
    /// [`ESTIMATOR_PERIOD`]); a new one starts from its present totals, as
    /// `ip_vs_start_estimator` does, so it shows no spike.
    pub fn estimate(&self) {
        let (_, t) = self.traffic();
        let mut est = self.est.lock().unwrap_or_else(|e| e.into_inner());
        est.retain(|vip, m| match t.get(vip) {
            Some(f) => {
                m.retain(|k, _| f.contains_key(k));
                true
            }
            None => false,
        });
        for (vip, m) in &t {
            let e = est.entry(*vip).or_default();
            for (k, f) in m {
                match e.get_mut(k) {
                    Some(x) => x.sample(f),
                    None => {
                        e.insert(
                            *k,
                            Est {
                                last: *f,
                                ..Est::default()
                            },
                        );
                    }
                }
            }
        }
    }

    /// The estimated rates per second (fields as the totals').
    pub fn rates(&self) -> Folded {
        let est = self.est.lock().unwrap_or_else(|e| e.into_inner());
        est.iter()
            .map(|(v, m)| (*v, m.iter().map(|(k, e)| (*k, e.rates())).collect()))
            .collect()
    }

    /// Runs [`Stats::estimate`] every [`ESTIMATOR_PERIOD`] on its own thread
    /// until the data path stops.
    pub fn spawn_estimator(&self) -> std::io::Result<std::thread::JoinHandle<()>> {
        let s = self.clone();
        std::thread::Builder::new()
            .name("ipvs-estimator".into())
            .spawn(move || {
                while !s.shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(ESTIMATOR_PERIOD);
                    s.estimate();
                }
            })
    }

    /// [`Stats::traffic`] less the `-Z` baselines (never below zero).
    pub fn ipvs_traffic(&self) -> (Arc<Snapshot>, Folded) {
        let (snap, mut t) = self.traffic();
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (vip, m) in t.iter_mut() {
            let Some(base) = g.baseline.get(vip) else {
                continue;
            };
            for (k, f) in m.iter_mut() {
                if let Some(b) = base.get(k) {
                    for (x, y) in f.iter_mut().zip(b) {
                        *x = x.saturating_sub(*y);
                    }
                }
            }
        }
        (snap, t)
    }

    /// Traffic totals by front end and backend: folded + retired + current.
    pub fn traffic(&self) -> (Arc<Snapshot>, Folded) {
        self.settle_fast_path();
        let (current, mut t, retired) = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let current = self.shared.snapshot.load_full();
            self.fold(&mut g, &current);
            (current, g.folded.clone(), g.retired.clone())
        };
        // The walks of every service, outside the lock: the tables are
        // immutable, and their counters only grow.
        for s in &retired {
            merge(&mut t, sums(s));
        }
        merge(&mut t, sums(&current));
        (current, t)
    }

    /// Flows in the table by (front end, backend address, port); direct
    /// routing flows name no backend address and count for the front end
    /// only (under the unspecified address).
    fn active(&self) -> HashMap<(VipKey, Addr, u16), u64> {
        let mut m = HashMap::new();
        self.shared.flows.for_each(|e, _, _| {
            let vip = VipKey {
                addr: e.original.dst,
                port: e.original.dport,
                proto: e.original.proto,
            };
            let k = if is_dr_flow(e) {
                (vip, Addr::default(), 0)
            } else {
                (vip, e.reply.src, e.reply.sport)
            };
            *m.entry(k).or_insert(0) += 1;
        });
        m
    }

    /// Everything, summed now.
    pub fn report(&self) -> Report {
        let (snap, totals) = self.traffic();
        let active = self.active();
        let mut services = Vec::new();
        for svc in snap.services.services() {
            let vip = svc.spec.vip;
            let t = totals.get(&vip);
            let mut sum = Figures {
                active_flows: active.get(&(vip, Addr::default(), 0)).copied().unwrap_or(0),
                ..Figures::default()
            };
            let backends = svc
                .spec
                .backends
                .iter()
                .map(|b| {
                    let mut f = Figures {
                        active_flows: active.get(&(vip, b.addr, b.port)).copied().unwrap_or(0),
                        ..Figures::default()
                    };
                    if let Some(v) = t.and_then(|t| t.get(&(b.addr, b.port))) {
                        f.add(v);
                    }
                    sum.sum(&f);
                    BackendStats {
                        address: b.addr.to_string(),
                        port: b.port,
                        weight: u32::from(b.weight),
                        figures: f,
                    }
                })
                .collect();
            services.push(ServiceStats {
                name: svc.spec.name.clone(),
                address: vip.addr.to_string(),
                port: vip.port,
                protocol: proto_name(vip.proto),
                figures: sum,
                backends,
            });
        }
        let now_ms = self.shared.epoch.elapsed().as_millis() as u64;
        let workers = self
            .counters
            .iter()
            .enumerate()
            .map(|(i, c)| WorkerStats {
                worker: i,
                counters: c.snapshot().into_iter().collect(),
                bursts: c.bursts.load(Ordering::Relaxed),
                idle_polls: c.idle_polls.load(Ordering::Relaxed),
                heartbeat_age_ms: now_ms.saturating_sub(c.heartbeat_ms.load(Ordering::Relaxed)),
                table_version: c.table_version.load(Ordering::Relaxed),
            })
            .collect();
        Report {
            generation: snap.services.version(),
            flows: self.shared.flows.len() as u64,
            flow_capacity: self.shared.flows.capacity() as u64,
            early_drops: self
                .shared
                .flows
                .early_drops()
                .named()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            services,
            workers,
        }
    }
}

/// Every drop reason's counter name, for the metrics' `reason` label.
pub fn drop_reasons() -> impl Iterator<Item = DropReason> {
    DropReason::ALL.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataplane::affinity::AffinityTable;
    use sluice_dataplane::flow_table::{FlowTable, Timeouts};
    use sluice_dataplane::service::{BackendSpec, ServiceSpec, ServiceTable};

    fn table(version: u64, backends: &[[u8; 4]]) -> Snapshot {
        let spec = ServiceSpec {
            name: "default/web:http".into(),
            vip: VipKey {
                addr: Addr::from_v4([198, 18, 100, 10]),
                port: 80,
                proto: proto::TCP,
            },
            backends: backends
                .iter()
                .map(|a| BackendSpec {
                    addr: Addr::from_v4(*a),
                    port: 8080,
                    weight: 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Snapshot {
            services: ServiceTable::build(version, vec![spec]).unwrap(),
            ..Default::default()
        }
    }

    const B1: [u8; 4] = [198, 18, 1, 11];
    const B2: [u8; 4] = [198, 18, 1, 12];

    fn backend(r: &Report, addr: &str) -> Figures {
        r.services[0]
            .backends
            .iter()
            .find(|b| b.address == addr)
            .map(|b| b.figures)
            .unwrap_or_default()
    }

    #[test]
    fn totals_survive_table_swaps_and_sum_across_threads() {
        let shared = Arc::new(Shared::new(
            table(1, &[B1]),
            FlowTable::new(1024, Timeouts::default()),
            AffinityTable::new(64),
        ));
        let workers: Vec<Arc<Counters>> = (0..2).map(|_| Arc::new(Counters::default())).collect();
        let stats = Stats::new(shared.clone(), workers.clone());
        let count = |n: usize| {
            // Two threads, as two workers, on the table in service.
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        let snap = shared.snapshot.load();
                        let svc = snap.services.get(0).unwrap();
                        for _ in 0..n {
                            svc.traffic.on_new(0, 60);
                            svc.traffic.on_packet(0, false, 40);
                        }
                    });
                }
            });
        };
        count(10);
        let r = stats.report();
        assert_eq!(backend(&r, "198.18.1.11").conns, 20);
        // A swap to a table that adds B2: B1's totals carry over, before
        // and after the workers have moved (retired, then folded).
        stats.swap(table(2, &[B1, B2]));
        for seen in [1, 2] {
            for w in &workers {
                w.table_version.store(seen, Ordering::Release);
            }
            let r = stats.report();
            let f = backend(&r, "198.18.1.11");
            assert_eq!(
                (f.conns, f.in_packets, f.in_bytes),
                (20, 20, 1200),
                "{seen}"
            );
            assert_eq!((f.out_packets, f.out_bytes), (20, 800));
            assert_eq!(backend(&r, "198.18.1.12"), Figures::default());
        }
        count(5);
        let r = stats.report();
        assert_eq!(backend(&r, "198.18.1.11").conns, 30);
        assert_eq!(r.services[0].figures.conns, 30, "service = sum of backends");
        assert_eq!(r.generation, 2);
        // A table without B1, folded: B1 is gone (as IPVS deletes it).
        stats.swap(table(3, &[B2]));
        for w in &workers {
            w.table_version.store(3, Ordering::Release);
        }
        let r = stats.report();
        assert_eq!(r.services[0].backends.len(), 1);
        assert_eq!(r.services[0].figures.conns, 0);
        assert_eq!(r.workers.len(), 2);
    }

    /// A next-hop-only epoch ([`ServiceTable::with_version`]) shares the
    /// services, and so their counters, with the table before it: the
    /// totals must not count them twice once the workers have moved on.
    #[test]
    fn a_next_hop_only_epoch_is_not_folded_twice() {
        let shared = Arc::new(Shared::new(
            table(1, &[B1]),
            FlowTable::new(1024, Timeouts::default()),
            AffinityTable::new(64),
        ));
        let workers: Vec<Arc<Counters>> = (0..2).map(|_| Arc::new(Counters::default())).collect();
        let stats = Stats::new(shared.clone(), workers.clone());
        let snap = shared.snapshot.load_full();
        for _ in 0..7 {
            snap.services.get(0).unwrap().traffic.on_new(0, 60);
        }
        let mut next = table(1, &[B1]);
        next.services = snap.services.with_version(2);
        stats.swap(next);
        for w in &workers {
            w.table_version.store(2, Ordering::Release);
        }
        let r = stats.report();
        assert_eq!(backend(&r, "198.18.1.11").conns, 7);
        assert_eq!(r.services[0].figures.conns, 7);
    }

    /// `-Z` zeroes the ipvsadm view (all, or one front end) and leaves
    /// the monotonic totals of `sluice stats` and /metrics alone; a baseline
    /// survives a table swap.
    #[test]
    fn zero_sets_a_baseline_for_the_ipvsadm_view_only() {
        let shared = Arc::new(Shared::new(
            table(1, &[B1]),
            FlowTable::new(1024, Timeouts::default()),
            AffinityTable::new(64),
        ));
        let workers: Vec<Arc<Counters>> = vec![Arc::new(Counters::default())];
        let stats = Stats::new(shared.clone(), workers.clone());
        let count = |n: usize| {
            let snap = shared.snapshot.load_full();
            for _ in 0..n {
                snap.services.get(0).unwrap().traffic.on_new(0, 60);
            }
        };
        let vip = shared.snapshot.load().services.get(0).unwrap().spec.vip;
        let conns = |s: &Stats| {
            let (_, t) = s.ipvs_traffic();
            t[&vip][&(Addr::from_v4(B1), 8080)][0]
        };
        count(4);
        assert_eq!(conns(&stats), 4);
        assert!(stats.zero(None));
        assert_eq!(conns(&stats), 0);
        count(3);
        assert_eq!(conns(&stats), 3);
        assert_eq!(
            backend(&stats.report(), "198.18.1.11").conns,
            7,
            "monotonic"
        );
        stats.swap(table(2, &[B1]));
        workers[0].table_version.store(2, Ordering::Release);
        count(1);
        assert_eq!(conns(&stats), 4, "the baseline survives a swap");
        assert!(stats.zero(Some(vip)));
        assert_eq!(conns(&stats), 0);
        let other = VipKey { port: 81, ..vip };
        assert!(!stats.zero(Some(other)), "no such service");
        assert_eq!(backend(&stats.report(), "198.18.1.11").conns, 8);
    }

    /// A steady 1000 connections and 1 MB per 2 s converge on IPVS's
    /// figures: 500 conn/s and 500 kB/s; a new backend starts at 0.
    #[test]
    fn the_estimator_follows_ip_vs_est() {
        let mut e = Est::default();
        let mut now = [0u64; FIELDS];
        e.sample(&now);
        for _ in 0..80 {
            now[0] += 1000;
            now[2] += 1_000_000;
            e.sample(&now);
        }
        let r = e.rates();
        assert_eq!((r[0], r[2], r[1]), (500, 500_000, 0));
        // The first sample moves a quarter of the way: 125/s.
        let mut f = Est::default();
        f.sample(&[1000, 0, 0, 0, 0]);
        assert_eq!(f.rates()[0], 125);

        let shared = Arc::new(Shared::new(
            table(1, &[B1]),
            FlowTable::new(1024, Timeouts::default()),
            AffinityTable::new(64),
        ));
        let stats = Stats::new(shared.clone(), vec![Arc::new(Counters::default())]);
        let snap = shared.snapshot.load_full();
        let vip = snap.services.get(0).unwrap().spec.vip;
        for _ in 0..100 {
            snap.services.get(0).unwrap().traffic.on_new(0, 60);
        }
        stats.estimate();
        let k = (Addr::from_v4(B1), 8080);
        assert_eq!(stats.rates()[&vip][&k][0], 0, "no spike from old totals");
        for _ in 0..8 {
            snap.services.get(0).unwrap().traffic.on_new(0, 60);
        }
        stats.estimate();
        // 8 in 2 s = 4/s, a quarter of the way: (4·2¹⁰/4 + 0x1FF) >> 10 = 1.
        assert_eq!(stats.rates()[&vip][&k][0], 1);
    }
}
