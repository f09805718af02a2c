//! The IPVS view of what the daemon serves, for `ipvsadm`:
//!
//! * `GET /apis/sluice.dev/v1/ipvs`: every virtual service of the published
//!   table — from VirtualServices *and* from Kubernetes Services (each
//!   front end of theirs, as kube-proxy's IPVS mode creates them) — with
//!   scheduler, flags, persistence and real servers with their method,
//!   weight, thresholds and ActiveConn/InActConn (read from the table's
//!   connection counts; zero for services whose scheduler counts nothing
//!   and that have no threshold, since the data path keeps no counts for
//!   them), and each real server's health-check state (`up`, `down`;
//!   absent without a check) from the checker's registry (`check/`);
//!   with `?templates=true` each real server's persistence templates
//!   (PersistConn, from the affinity table), and with `?laddrs=true` the
//!   live flows through each FULLNAT local address (`-G`'s CONNS).
//! * `POST /apis/sluice.dev/v1/ipvs`: a batch of VirtualService writes
//!   committed all together or not at all (one store batch, validated
//!   whole), which is how `ipvsadm -R` restores atomically and how every
//!   `ipvsadm` command writes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_dataplane::service::{Service, VipKey};
use sluice_dataplane::types::proto;

use super::status::{self, Status};
use super::{ipvs_conns, AppState};
use crate::check::HealthIndex;
use crate::config::virtual_service::KIND;
use crate::config::ConfigError;
use crate::reconcile::ApplyError;
use crate::stats::Folded;
use crate::store::{Batch, Key, Kind, StoreError, UpsertMode, Write};

/// Where an IPVS service comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// `VirtualService` or `Service`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// One real server as `ipvsadm -L` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsDest {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// `Masq`, `Route`, `Tunnel`, `Local`.
    pub method: String,
    /// Weight.
    pub weight: u32,
    /// Upper threshold.
    pub upper: u32,
    /// Lower threshold.
    pub lower: u32,
    /// Established TCP connections.
    pub active: u32,
    /// Other connections.
    pub inactive: u32,
    /// Traffic since the last `-Z` (with `?stats=true`).
    #[serde(default)]
    pub stats: Counters,
    /// Its health check's state, `up` or `down`; None without a check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Its persistence templates (with `?templates=true`).
    #[serde(default)]
    pub persist: u32,
}

/// One FULLNAT local address of a service, as DPVS's `-G` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsLaddr {
    /// The address.
    pub addr: IpAddr,
    /// Live flows translated to it (with `?laddrs=true`).
    #[serde(default)]
    pub conns: u32,
}

/// `--stats` and `--rate` figures of a real server or a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// New connections.
    pub conns: u64,
    /// Packets client → real server.
    pub inpkts: u64,
    /// Packets real server → client.
    pub outpkts: u64,
    /// Bytes client → real server.
    pub inbytes: u64,
    /// Bytes real server → client.
    pub outbytes: u64,
    /// New connections per second (the estimator's, see [`crate::stats`]).
    #[serde(default)]
    pub cps: u64,
    /// Packets per second in.
    #[serde(default)]
    pub inpps: u64,
    /// Packets per second out.
    #[serde(default)]
    pub outpps: u64,
    /// Bytes per second in.
    #[serde(default)]
    pub inbps: u64,
    /// Bytes per second out.
    #[serde(default)]
    pub outbps: u64,
}

impl Counters {
    /// From the data path's per-backend fields (conns, in packets, in
    /// bytes, out packets, out bytes).
    pub fn from_fields(f: &crate::stats::Fields) -> Counters {
        Counters {
            conns: f[0],
            inpkts: f[1],
            inbytes: f[2],
            outpkts: f[3],
            outbytes: f[4],
            ..Counters::default()
        }
    }

    fn add(&mut self, o: &Counters) {
        self.conns += o.conns;
        self.inpkts += o.inpkts;
        self.outpkts += o.outpkts;
        self.inbytes += o.inbytes;
        self.outbytes += o.outbytes;
        self.cps += o.cps;
        self.inpps += o.inpps;
        self.outpps += o.outpps;
        self.inbps += o.inbps;
        self.outbps += o.outbps;
    }
}

/// One virtual service as `ipvsadm -L` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsService {
    /// IP protocol number.
    pub protocol: u8,
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// Firewall mark (0: none).
    #[serde(default)]
    pub fwmark: u32,
    /// Scheduler name.
    pub scheduler: String,
    /// Flags by name (`sh-port`, `flag-1`).
    pub flags: Vec<String>,
    /// Persistence timeout (s), if persistent.
    pub persistent: Option<u32>,
    /// Persistence prefix length (None: the whole address).
    pub netmask: Option<u8>,
    /// Real servers, in the table's order.
    pub dests: Vec<IpvsDest>,
    /// Its object.
    pub origin: Origin,
    /// The sum of its real servers' figures (with `?stats=true`).
    #[serde(default)]
    pub stats: Counters,
    /// Its FULLNAT local addresses (DPVS's `--add-laddr`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub laddrs: Vec<IpvsLaddr>,
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/apis/sluice.dev/v1/ipvs", get(view).post(batch))
}

/// The object a compiled service's name points to: `VirtualService ns/name`
/// or a Service port's `ns/name:port`.
fn origin(spec_name: &str) -> Origin {
    let (kind, rest) = match spec_name
        .strip_prefix(KIND)
        .and_then(|r| r.strip_prefix(' '))
    {
        Some(r) => (KIND, r),
        None => ("Service", spec_name.split(':').next().unwrap_or(spec_name)),
    };
    let (ns, name) = rest.split_once('/').unwrap_or(("", rest));
    Origin {
        kind: kind.to_owned(),
        namespace: ns.to_owned(),
        name: name.to_owned(),
    }
}

/// The IPVS view of one compiled service.
pub fn service_view(s: &Service) -> IpvsService {
    let spec = &s.spec;
    let prefix = spec.sched.flag_prefix();
    let mut flags = Vec::new();
    let name = |p: Option<&str>, f: &str, n: &str| match p {
        Some(p) => format!("{p}-{f}"),
        None => format!("flag-{n}"),
    };
    if spec.sched_flags.fallback {
        flags.push(name(prefix, "fallback", "1"));
    }
    if spec.sched_flags.port {
        flags.push(name(prefix, "port", "2"));
    }
    let method = spec.forward.ipvs_name();
    IpvsService {
        protocol: spec.vip.proto,
        addr: spec.vip.addr.to_ip(),
        port: spec.vip.port,
        fwmark: 0,
        scheduler: spec.sched.as_str().to_owned(),
        flags,
        persistent: spec.affinity_timeout,
        netmask: spec.affinity_prefix,
        dests: spec
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let (active, inactive) = s.conns.get(i);
                IpvsDest {
                    addr: b.addr.to_ip(),
                    port: b.port,
                    method: method.to_owned(),
                    weight: u32::from(b.weight),
                    upper: b.upper,
                    lower: b.lower,
                    active,
                    inactive,
                    stats: Counters::default(),
                    health: None,
                    persist: 0,
                }
            })
            .collect(),
        origin: origin(&spec.name),
        stats: Counters::default(),
        laddrs: spec
            .local_addrs
            .iter()
            .map(|a| IpvsLaddr {
                addr: a.to_ip(),
                conns: 0,
            })
            .collect(),
    }
}

/// The figures that walk the data path's tables, when asked for.
#[derive(Default)]
struct Walked {
    templates: Option<HashMap<(VipKey, IpAddr, u16), u32>>,
    laddrs: Option<HashMap<(VipKey, IpAddr), u32>>,
}

impl Walked {
    fn fill(&self, v: &mut IpvsService, vip: &VipKey) {
        if let Some(t) = &self.templates {
            for d in &mut v.dests {
                d.persist = t.get(&(*vip, d.addr, d.port)).copied().unwrap_or(0);
            }
        }
        if let Some(l) = &self.laddrs {
            for a in &mut v.laddrs {
                a.conns = l.get(&(*vip, a.addr)).copied().unwrap_or(0);
            }
        }
    }
}

/// Fills in the check state of `v`'s real servers (`v` is the view of `s`)
/// from the registry's index.
pub fn fill_health(v: &mut IpvsService, s: &Service, checks: &HealthIndex) {
    for (d, b) in v.dests.iter_mut().zip(&s.spec.backends) {
        d.health = checks
            .is_up(&s.spec.name, b)
            .map(|up| if up { "up" } else { "down" }.to_owned());
    }
}

/// Fills in the figures of `v` (the view of `s`) from the totals and the
/// estimator's rates.
fn fill_stats(v: &mut IpvsService, s: &Service, totals: &Folded, rates: &Folded) {
    let t = totals.get(&s.spec.vip);
    let r = rates.get(&s.spec.vip);
    let mut sum = Counters::default();
    for (d, b) in v.dests.iter_mut().zip(&s.spec.backends) {
        let k = (b.addr, b.port);
        if let Some(f) = t.and_then(|t| t.get(&k)) {
            d.stats = Counters::from_fields(f);
        }
        if let Some(f) = r.and_then(|r| r.get(&k)) {
            d.stats.cps = f[0];
            d.stats.inpps = f[1];
            d.stats.inbps = f[2];
            d.stats.outpps = f[3];
            d.stats.outbps = f[4];
        }
        sum.add(&d.stats);
    }
    v.stats = sum;
}

#[derive(Debug, Deserialize)]
struct ViewQuery {
    #[serde(default)]
    stats: bool,
    #[serde(default)]
    templates: bool,
    #[serde(default)]
    laddrs: bool,
}

async fn view(State(s): State<AppState>, Query(q): Query<ViewQuery>) -> Response {
    let (snap, stats, checks) = {
        let mut rec = s.rec.lock().unwrap_or_else(|p| p.into_inner());
        let stats = rec.publisher().stats().cloned();
        let checks = rec.publisher_ref().checks().clone();
        (rec.publisher().snapshot(), stats, checks)
    };
    // The registry is read after the reconciler's lock is let go.
    let health = checks.index();
    // With figures, the services come from the table the totals were
    // summed with, so that they match.
    let (snap, totals) = match stats.clone().filter(|_| q.stats) {
        Some(st) => match tokio::task::spawn_blocking(move || (st.ipvs_traffic(), st)).await {
            Ok(((snap, t), st)) => (snap, Some((t, st.rates()))),
            Err(_) => (snap, None),
        },
        None => (snap, None),
    };
    let walked = match stats.filter(|_| q.templates || q.laddrs) {
        Some(st) => tokio::task::spawn_blocking(move || Walked {
            templates: q.templates.then(|| ipvs_conns::template_counts(&st)),
            laddrs: q.laddrs.then(|| ipvs_conns::reply_addr_counts(&st)),
        })
        .await
        .unwrap_or_default(),
        None => Walked::default(),
    };
    let services: Vec<IpvsService> = snap
        .services
        .services()
        .filter(|s| matches!(s.spec.vip.proto, proto::TCP | proto::UDP | proto::SCTP))
        .map(|s| {
            let mut v = service_view(s);
            fill_health(&mut v, s, &health);
            if let Some((t, r)) = &totals {
                fill_stats(&mut v, s, t, r);
            }
            walked.fill(&mut v, &s.spec.vip);
            v
        })
        .collect();
    Json(json!({"kind": "IpvsList", "apiVersion": "sluice.dev/v1", "items": services}))
        .into_response()
}

/// One write of a batch.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", tag = "op")]
enum BatchWrite {
    /// Create a VirtualService that must not exist.
    Create { object: Value },
    /// Replace one that must still be at `resourceVersion`.
    Replace {
        object: Value,
        #[serde(rename = "resourceVersion")]
        resource_version: String,
    },
    /// Delete one.
    Delete { namespace: String, name: String },
}

#[derive(Debug, Deserialize)]
struct BatchBody {
    writes: Vec<BatchWrite>,
}

fn to_write(w: BatchWrite, owner: &Arc<str>) -> Result<Write, Status> {
    let is_vs = |o: &Value| o.get("kind").and_then(Value::as_str) == Some(KIND);
    let not_vs = || Status::bad_request("a batch writes VirtualService objects only".into());
    Ok(match w {
        BatchWrite::Create { object } if is_vs(&object) => Write::Upsert {
            object,
            owner: owner.clone(),
            mode: UpsertMode::Create,
        },
        BatchWrite::Replace {
            object,
            resource_version,
        } if is_vs(&object) => {
            let rv = resource_version.parse().map_err(|_| {
                Status::bad_request(format!("{resource_version:?} is not a resource version"))
            })?;
            Write::Upsert {
                object,
                owner: owner.clone(),
                mode: UpsertMode::Replace(Some(rv)),
            }
        }
        BatchWrite::Delete { namespace, name } => Write::Delete {
            key: Key::new(Kind::VirtualService, &namespace, &name),
            must_exist: true,
        },
        _ => return Err(not_vs()),
    })
}

async fn batch(State(s): State<AppState>, body: Bytes) -> Response {
    let parsed: BatchBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return Status::bad_request(format!("not a batch: {e}")).into_response(),
    };
    let owner: Arc<str> = Arc::from("ipvsadm");
    let mut b = Batch::default();
    for w in parsed.writes {
        match to_write(w, &owner) {
            Ok(w) => {
                b.push(w);
            }
            Err(e) => return e.into_response(),
        }
    }
    let n = b.writes.len();
    let rec = s.rec.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut r = rec.lock().unwrap_or_else(|p| p.into_inner());
        r.apply(b).map(|a| a.commit.revision)
    })
    .await;
    match done {
        Ok(Ok(rev)) => (
            StatusCode::OK,
            Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success",
                "message": format!("{n} write(s) committed"), "metadata": {"resourceVersion": rev.to_string()}})),
        )
            .into_response(),
        // A local address the host does not own concerns no one object of
        // the batch: its message as it is (ipvsadm prints it).
        Ok(Err(StoreError::Invalid(ApplyError::Config(e @ ConfigError::LocalAddrNotOwn { .. })))) => {
            Status::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string()).into_response()
        }
        Ok(Err(e)) => status::from_store(e, None).into_response(),
        Err(e) => Status::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let o = origin("VirtualService ipvs/tcp-198-18-0-1-80");
        assert_eq!(
            (o.kind.as_str(), o.namespace.as_str(), o.name.as_str()),
            ("VirtualService", "ipvs", "tcp-198-18-0-1-80")
        );
        let o = origin("default/web:http");
        assert_eq!(
            (o.kind.as_str(), o.namespace.as_str(), o.name.as_str()),
            ("Service", "default", "web")
        );
    }

    const TWO_SERVICES: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations:
    sluice.dev/health-check: "tcp interval=1s timeout=1s rise=1 fall=1"
spec:
  clusterIP: 198.18.100.10
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Endpoints
metadata:
  name: web
  namespace: default
subsets:
- addresses:
  - ip: 198.18.1.11
  - ip: 198.18.1.12
  ports:
  - name: http
    port: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: default
spec:
  clusterIP: 198.18.100.20
  ports:
  - name: pg
    port: 5432
---
apiVersion: v1
kind: Endpoints
metadata:
  name: db
  namespace: default
subsets:
- addresses:
  - ip: 198.18.1.21
  ports:
  - name: pg
    port: 5432
"#;

    /// A real server's address, weight and health.
    type Row = (String, u32, Option<String>);

    /// The views of `cfg` compiled as the publisher does (the registry's
    /// overlay applied) with the registry's states filled in, by VIP port:
    /// each real server's address and health.
    fn health_views(
        cfg: &crate::config::Config,
        checks: &crate::check::Checks,
    ) -> Vec<(u16, Vec<Row>)> {
        let compiled = crate::check::Checks::overlay(cfg, &checks.down());
        let table =
            sluice_dataplane::service::ServiceTable::build(1, compiled.services.clone()).unwrap();
        let idx = checks.index();
        let mut out: Vec<_> = table
            .services()
            .map(|s| {
                let mut v = service_view(s);
                fill_health(&mut v, s, &idx);
                let d = v
                    .dests
                    .iter()
                    .map(|d| (d.addr.to_string(), d.weight, d.health.clone()))
                    .collect();
                (v.port, d)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn health_comes_from_the_check_registry() {
        let cfg = crate::config::load_str(TWO_SERVICES, "t.yaml").unwrap();
        let checks = crate::check::Checks::default();
        checks.set_targets(&cfg);
        let target = |ip: &str| crate::check::Target {
            addr: format!("{ip}:8080").parse().unwrap(),
            spec: cfg.checks["default/web:http"].spec.clone(),
        };
        let s = |x: &str| Some(x.to_owned());
        let ip = |x: &str| x.to_owned();
        // Registered servers start up; the unchecked service has none.
        assert_eq!(
            health_views(&cfg, &checks),
            vec![
                (
                    80,
                    vec![
                        (ip("198.18.1.11"), 1, s("up")),
                        (ip("198.18.1.12"), 1, s("up"))
                    ]
                ),
                (5432, vec![(ip("198.18.1.21"), 1, None)]),
            ]
        );
        // One failed probe (fall=1): down, and weight 0 by the overlay.
        let lost = crate::check::ProbeError::Timeout(std::time::Duration::from_secs(1));
        checks.record(&target("198.18.1.11"), Err(lost));
        assert_eq!(
            health_views(&cfg, &checks)[0],
            (
                80,
                vec![
                    (ip("198.18.1.11"), 0, s("down")),
                    (ip("198.18.1.12"), 1, s("up"))
                ]
            )
        );
        // One passed probe (rise=1): up again.
        checks.record(&target("198.18.1.11"), Ok(()));
        assert_eq!(
            health_views(&cfg, &checks)[0].1[0],
            (ip("198.18.1.11"), 1, s("up"))
        );
    }
}
