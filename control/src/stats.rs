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
use sluice_dataplane::pipeline::{is_dr_flow, DropReason, Snapshot};
use sluice_dataplane::service::VipKey;
use sluice_dataplane::traffic::FIELDS;
use sluice_dataplane::types::{proto, Addr};
use sluice_dataplane::worker::{Counters, Shared};
use std::sync::atomic::Ordering;

type Fields = [u64; FIELDS];
type Folded = HashMap<VipKey, HashMap<(Addr, u16), Fields>>;

#[derive(Default)]
struct Inner {
    folded: Folded,
    retired: Vec<Arc<Snapshot>>,
}

/// The traffic totals across table swaps, and the sources of the rest.
#[derive(Clone)]
pub struct Stats {
    inner: Arc<Mutex<Inner>>,
    shared: Arc<Shared>,
    counters: Vec<Arc<Counters>>,
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
            shared,
            counters,
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
        // of a deleted service or real server).
        g.folded
            .retain(|vip, m| match current.services.lookup(vip) {
                Some((_, svc)) => {
                    m.retain(|k, _| svc.spec.backends.iter().any(|b| (b.addr, b.port) == *k));
                    true
                }
                None => false,
            });
    }

    /// Traffic totals by front end and backend: folded + retired + current.
    pub fn traffic(&self) -> (Arc<Snapshot>, Folded) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.shared.snapshot.load_full();
        self.fold(&mut g, &current);
        let mut t = g.folded.clone();
        for s in &g.retired {
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
}
