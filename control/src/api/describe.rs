//! `GET /apis/sluice.dev/v1/describe/namespaces/{ns}/services/{name}`:
//! everything `sluice describe svc NAME` prints, in one answer, so that the
//! CLI needs one request and the parts agree with each other.
//!
//! The answer joins three views of the Service under the reconciler's lock
//! (then released before anything slow): the stored object (its spec as
//! written), the front ends compiled from it in the table the workers run
//! (one per VIP:port/proto, with scheduler, method and policy; their
//! backends with weight and state), and the health checks of those
//! backends. The counters are the stats route's ([`crate::stats::Report`]),
//! matched by front end and backend address, so they are the same figures
//! `sluice stats` shows.
//!
//! ```json
//! {"apiVersion": "sluice.dev/v1", "kind": "ServiceDescription",
//!  "metadata": {"name": "web", "namespace": "default"},
//!  "service": {...the stored Service...},
//!  "frontends": [{"servicePort": "default/web:http", "address": "198.18.100.10",
//!    "port": 80, "protocol": "TCP", "kind": "ClusterIP", "scheduler": "rr",
//!    "method": "nat", "masquerade": "off-cluster", "whenEmpty": "reject",
//!    "conns": 3, "inPackets": 10, ...,
//!    "backends": [{"address": "198.18.1.11", "port": 8080, "weight": 1,
//!      "state": "ready", "local": false, "health": "up", "conns": 3, ...}]}]}
//! ```

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use sluice_dataplane::service::{
    BackendSpec, ForwardMethod, MasqMode, ServiceSpec, VipKind, WhenEmpty,
};

use super::{status, AppState};
use crate::check::TargetStatus;
use crate::stats::{proto_name, Figures, Report};
use crate::store::{Key, Kind};

/// The route's path, with `{ns}` and `{name}`.
pub const PATH: &str = "/apis/sluice.dev/v1/describe/namespaces/{ns}/services/{name}";

/// The route.
pub fn routes() -> Router<AppState> {
    Router::new().route(PATH, get(describe))
}

/// The path of one Service's description.
pub fn path(ns: &str, name: &str) -> String {
    PATH.replace("{ns}", ns).replace("{name}", name)
}

/// One compiled front end of the Service.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Frontend {
    /// The service port (`namespace/name:port`).
    pub service_port: String,
    /// VIP, node address, external or ingress IP.
    pub address: String,
    /// Port.
    pub port: u16,
    /// `TCP`, `UDP`, `SCTP`.
    pub protocol: &'static str,
    /// `ClusterIP`, `NodePort`, `ExternalIP`, `LoadBalancer`.
    pub kind: &'static str,
    /// The `ipvsadm -s` name of its scheduler.
    pub scheduler: &'static str,
    /// `nat`, `dr`, `fullnat`, `ipip`.
    pub method: &'static str,
    /// Whose source is rewritten: `off-cluster`, `always`, `never`.
    pub masquerade: &'static str,
    /// What a new flow gets without a usable endpoint: `reject`, `drop`.
    pub when_empty: &'static str,
    /// `sessionAffinity: ClientIP` / persistence timeout in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
    /// The sum of its backends' counters (absent without a data path).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
    /// Its endpoints as the workers use them.
    pub backends: Vec<Backend>,
}

/// One endpoint of a front end.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// Address.
    pub address: String,
    /// Port (the resolved targetPort).
    pub port: u16,
    /// Weight (0: drained).
    pub weight: u16,
    /// `ready` (takes new flows), `terminating` (serving, used only when
    /// no endpoint is ready), `draining` (weight 0: established flows
    /// only), `removed` (taken out by a failed health check).
    pub state: &'static str,
    /// Runs on this node.
    pub local: bool,
    /// `up` / `down` when a health check probes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<&'static str>,
    /// The last failed probe's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_error: Option<String>,
    /// Its counters (absent without a data path).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
}

fn kind_name(k: VipKind) -> &'static str {
    match k {
        VipKind::ClusterIp => "ClusterIP",
        VipKind::NodePort => "NodePort",
        VipKind::ExternalIp => "ExternalIP",
        VipKind::LoadBalancer => "LoadBalancer",
    }
}

fn method_name(m: ForwardMethod) -> &'static str {
    match m {
        ForwardMethod::Nat => "nat",
        ForwardMethod::Dr => "dr",
        ForwardMethod::FullNat => "fullnat",
        ForwardMethod::Tunnel => "ipip",
    }
}

fn masq_name(spec: &ServiceSpec) -> &'static str {
    if spec.forward == ForwardMethod::Dr {
        return "never";
    }
    match spec.masq {
        MasqMode::OffCluster => "off-cluster",
        MasqMode::Always => "always",
        MasqMode::Never => "never",
    }
}

fn backend_state(b: &BackendSpec) -> &'static str {
    match (b.terminating, b.weight) {
        (true, _) => "terminating",
        (false, 0) => "draining",
        _ => "ready",
    }
}

/// Counters by (front end address, port, protocol) and by backend.
struct Counters<'a> {
    by_frontend: HashMap<(&'a str, u16, &'a str), &'a crate::stats::ServiceStats>,
}

impl<'a> Counters<'a> {
    fn new(report: Option<&'a Report>) -> Counters<'a> {
        let by_frontend = report
            .into_iter()
            .flat_map(|r| &r.services)
            .map(|s| ((s.address.as_str(), s.port, s.protocol), s))
            .collect();
        Counters { by_frontend }
    }

    fn frontend(&self, f: &Frontend) -> Option<&'a crate::stats::ServiceStats> {
        self.by_frontend
            .get(&(f.address.as_str(), f.port, f.protocol))
            .copied()
    }
}

/// The front ends of `ns/name` in `services`, with the counters of
/// `report` and the health of `checks` (pure: the handler gathers them).
pub fn frontends<'a>(
    ns: &str,
    name: &str,
    services: impl Iterator<Item = &'a ServiceSpec>,
    report: Option<&Report>,
    checks: &[TargetStatus],
) -> Vec<Frontend> {
    let prefix = format!("{ns}/{name}:");
    let counters = Counters::new(report);
    let mut out: Vec<Frontend> = services
        .filter(|s| s.name.starts_with(&prefix))
        .map(|s| frontend(s, &counters, report.is_some(), checks))
        .collect();
    out.sort_by(|a, b| {
        (&a.service_port, a.kind, &a.address, a.port).cmp(&(
            &b.service_port,
            b.kind,
            &b.address,
            b.port,
        ))
    });
    out
}

fn frontend(
    s: &ServiceSpec,
    counters: &Counters<'_>,
    have_counters: bool,
    checks: &[TargetStatus],
) -> Frontend {
    let mut f = Frontend {
        service_port: s.name.clone(),
        address: s.vip.addr.to_string(),
        port: s.vip.port,
        protocol: proto_name(s.vip.proto),
        kind: kind_name(s.kind),
        scheduler: s.sched.as_str(),
        method: method_name(s.forward),
        masquerade: masq_name(s),
        when_empty: match s.when_empty {
            WhenEmpty::Reject => "reject",
            WhenEmpty::Drop => "drop",
        },
        affinity_timeout: s.affinity_timeout,
        source_ranges: s.source_ranges.iter().map(|c| c.to_string()).collect(),
        figures: None,
        backends: Vec::new(),
    };
    let stats = counters.frontend(&f);
    if have_counters {
        f.figures = Some(stats.map(|s| s.figures).unwrap_or_default());
    }
    let health = |addr: &str| {
        checks
            .iter()
            .find(|c| c.address == addr && c.services.contains(&s.name))
    };
    for b in &s.backends {
        let address = b.addr.to_string();
        let h = health(&address);
        let figures = have_counters.then(|| {
            stats
                .and_then(|st| {
                    st.backends
                        .iter()
                        .find(|x| x.address == address && x.port == b.port)
                })
                .map(|x| x.figures)
                .unwrap_or_default()
        });
        f.backends.push(Backend {
            port: b.port,
            weight: b.weight,
            state: backend_state(b),
            local: b.local,
            health: h.map(|c| c.state),
            health_error: h.and_then(|c| c.last_error.clone()),
            figures,
            address,
        });
    }
    // A health check whose action removes a down server takes it out of
    // the table: show it, so that describe says why an endpoint is missing.
    for c in checks {
        let served = c.services.contains(&s.name);
        if served && !f.backends.iter().any(|b| b.address == c.address) {
            f.backends.push(Backend {
                address: c.address.clone(),
                port: c.port,
                weight: 0,
                state: "removed",
                local: false,
                health: Some(c.state),
                health_error: c.last_error.clone(),
                figures: None,
            });
        }
    }
    f
}

async fn describe(State(s): State<AppState>, Path((ns, name)): Path<(String, String)>) -> Response {
    let key = Key::new(Kind::Service, &ns, &name);
    let missing = status::not_found(&key);
    let rec = s.rec.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let (object, snap, stats, checks) = {
            let mut r = rec.lock().unwrap_or_else(|p| p.into_inner());
            let object = r.store().get(&key).map(|o| o.object.clone());
            let p = r.publisher();
            (object, p.snapshot(), p.stats().cloned(), p.checks().clone())
        };
        let object = object?;
        let report = stats.map(|s| s.report());
        let fronts = frontends(
            &ns,
            &name,
            snap.services.services().map(|s| &s.spec),
            report.as_ref(),
            &checks.status(),
        );
        Some(json!({
            "apiVersion": "sluice.dev/v1",
            "kind": "ServiceDescription",
            "metadata": {"name": name, "namespace": ns},
            "service": *object,
            "counters": report.is_some(),
            "frontends": fronts,
        }))
    })
    .await
    .ok();
    match answer {
        Some(Some(v)) => Json::<Value>(v).into_response(),
        Some(None) => missing.into_response(),
        None => status::Status::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "describe failed".into(),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{BackendStats, ServiceStats};
    use sluice_dataplane::service::VipKey;
    use sluice_dataplane::types::{proto, Addr};
    use std::net::Ipv4Addr;

    fn addr(s: &str) -> Addr {
        Addr::from(s.parse::<Ipv4Addr>().unwrap())
    }

    fn spec(name: &str, vip: &str, port: u16, kind: VipKind) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            vip: VipKey {
                addr: addr(vip),
                port,
                proto: proto::TCP,
            },
            kind,
            backends: vec![
                BackendSpec {
                    addr: addr("198.18.1.11"),
                    port: 8080,
                    weight: 2,
                    local: true,
                    ..BackendSpec::default()
                },
                BackendSpec {
                    addr: addr("198.18.1.12"),
                    port: 8080,
                    weight: 0,
                    terminating: true,
                    ..BackendSpec::default()
                },
            ],
            ..ServiceSpec::default()
        }
    }

    fn report() -> Report {
        let f = |conns| Figures {
            conns,
            in_packets: conns * 10,
            ..Figures::default()
        };
        Report {
            generation: 1,
            flows: 0,
            flow_capacity: 0,
            early_drops: Default::default(),
            workers: vec![],
            services: vec![ServiceStats {
                name: "default/web:http".into(),
                address: "198.18.100.10".into(),
                port: 80,
                protocol: "TCP",
                figures: f(5),
                backends: vec![BackendStats {
                    address: "198.18.1.11".into(),
                    port: 8080,
                    weight: 2,
                    figures: f(5),
                }],
            }],
        }
    }

    #[test]
    fn only_the_named_services_front_ends_with_their_counters() {
        let specs = [
            spec("default/web:http", "198.18.100.10", 80, VipKind::ClusterIp),
            spec("default/web:http", "198.18.0.2", 30080, VipKind::NodePort),
            spec(
                "default/webber:http",
                "198.18.100.11",
                80,
                VipKind::ClusterIp,
            ),
            spec("prod/web:http", "198.18.100.12", 80, VipKind::ClusterIp),
        ];
        let r = report();
        let f = frontends("default", "web", specs.iter(), Some(&r), &[]);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!((f[0].kind, f[0].port), ("ClusterIP", 80));
        assert_eq!((f[1].kind, f[1].port), ("NodePort", 30080));
        assert_eq!(f[0].figures.unwrap().conns, 5);
        assert_eq!(f[0].backends[0].figures.unwrap().in_packets, 50);
        // Known counters that saw nothing are zeros, not absent.
        assert_eq!(f[0].backends[1].figures, Some(Figures::default()));
        assert_eq!(f[1].figures, Some(Figures::default()));
        assert_eq!(
            (f[0].backends[0].state, f[0].backends[0].local),
            ("ready", true)
        );
        assert_eq!(f[0].backends[1].state, "terminating");
        assert_eq!(f[0].scheduler, "rr");
        assert_eq!(f[0].method, "nat");
        // Without a data path: no counters at all.
        let f = frontends("default", "web", specs.iter(), None, &[]);
        assert!(f[0].figures.is_none() && f[0].backends[0].figures.is_none());
    }

    #[test]
    fn health_states_and_servers_a_check_removed() {
        let specs = [spec(
            "default/web:http",
            "198.18.100.10",
            80,
            VipKind::ClusterIp,
        )];
        let check = |a: &str, state, err: Option<&str>| TargetStatus {
            address: a.into(),
            port: 8080,
            check: "tcp",
            state,
            action: crate::check::CheckAction::default(),
            since: String::new(),
            services: vec!["default/web:http".into()],
            probes: 3,
            failures: 1,
            last_error: err.map(str::to_owned),
        };
        let checks = [
            check("198.18.1.11", "up", None),
            check("198.18.1.13", "down", Some("connection refused")),
        ];
        let f = frontends("default", "web", specs.iter(), None, &checks);
        let b = &f[0].backends;
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].health, Some("up"));
        assert_eq!(b[1].health, None);
        assert_eq!(
            (b[2].address.as_str(), b[2].state),
            ("198.18.1.13", "removed")
        );
        assert_eq!(b[2].health_error.as_deref(), Some("connection refused"));
    }
}
