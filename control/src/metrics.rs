//! Prometheus metrics (`--metrics-bind-address`, default `127.0.0.1:10249`,
//! path `/metrics`) and the health check (`--healthz-bind-address`, default
//! `0.0.0.0:10256`, path `/healthz`), as kube-proxy serves them, on the
//! daemon's runtime.
//!
//! A scrape sums the workers' counters then and there ([`Stats::report`]):
//! nothing on the packet path writes a shared line for it. The text is
//! built with prometheus-client, in a registry made for each scrape from
//! the summed values, plus the one metric the control plane owns, the
//! apply-to-visible histogram [`Sync::observe`] fills.
//!
//! `/healthz` answers 200 while the data path serves: every worker turned
//! its loop within [`HEARTBEAT_STALE`] (a worker stuck in a syscall, a
//! lock or a stop shows here) and has loaded the table in service; 503
//! otherwise. The body is kube-proxy's shape (`lastUpdated`,
//! `currentTime`, `nodeHealthy`) with the figures behind the verdict.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::stats::{Report, Stats};

/// kube-proxy's metrics address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:10249";
/// kube-proxy's healthz address.
pub const DEFAULT_HEALTHZ_ADDR: &str = "0.0.0.0:10256";
/// A worker whose last loop turn is older than this is not serving.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(2);

/// Why a metrics or healthz listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {addr}: {source}")]
pub struct BindError {
    /// The flag.
    pub flag: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// Cause.
    pub source: std::io::Error,
}

/// The sync figures (kube-proxy's `sync_proxy_rules_duration_seconds`
/// and `sync_proxy_rules_last_timestamp_seconds`).
#[derive(Clone, Debug)]
pub struct Sync {
    duration: Histogram,
    last: Arc<AtomicU64>,
}

impl Default for Sync {
    fn default() -> Sync {
        Sync {
            // 0.5 ms … 16 s.
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            last: Arc::default(),
        }
    }
}

impl Sync {
    /// One write that became visible to the workers after `d`.
    pub fn observe(&self, d: Duration) {
        self.duration.observe(d.as_secs_f64());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last.store(now, Ordering::Relaxed);
    }
}

/// What the two servers read.
#[derive(Clone)]
pub struct Sources {
    /// The summed counters.
    pub stats: Stats,
    /// The sync figures.
    pub sync: Sync,
    /// The BGP announcer's state, with `--bgp`.
    pub bgp: Option<crate::bgp::Status>,
    /// The table digest of the last table scraped, by its version.
    pub digest: DigestCache,
    /// Whether the config file's last reload applied.
    pub applied: crate::bgp::ConfigApplied,
}

/// The table digest ([`crate::digest`]) of the table last scraped, kept
/// by version, so that a scrape of an unchanged table does not hash it
/// again.
#[derive(Clone, Debug, Default)]
pub struct DigestCache(Arc<std::sync::Mutex<Option<(u64, u64)>>>);

impl DigestCache {
    /// The digest of `table`.
    pub fn of(&self, table: &sluice_dataplane::service::ServiceTable) -> u64 {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match *c {
            Some((v, d)) if v == table.version() => d,
            _ => {
                let d = crate::digest::table_digest(table);
                *c = Some((table.version(), d));
                d
            }
        }
    }
}

/// The figures that let an operator compare the hosts of a tier: the
/// table digest, and with `--bgp` what is announced.
#[derive(Clone, Debug, Default)]
pub struct Tier {
    /// [`crate::digest::table_digest`] of the table in service.
    pub digest: u64,
    /// Every candidate VIP with whether it is announced, and the changes
    /// BIRD did not take; None without `--bgp`.
    pub bgp: Option<(Vec<(std::net::IpAddr, bool)>, u64)>,
    /// Whether the config file's last reload applied (true with none).
    pub reload_ok: bool,
}

impl Tier {
    /// The figures of `s` now.
    pub fn of(s: &Sources) -> Tier {
        let snap = s.stats.shared().snapshot.load();
        Tier {
            digest: s.digest.of(&snap.services),
            bgp: s.bgp.as_ref().map(|b| (b.announced(), b.failures())),
            reload_ok: s.applied.get(),
        }
    }
}

type Labels = Vec<(String, String)>;

fn family<
    M: prometheus_client::metrics::TypedMetric + Default + Clone + Send + std::marker::Sync + 'static,
>(
    reg: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, M>
where
    Family<Labels, M>: prometheus_client::registry::Metric,
{
    let f = Family::<Labels, M>::default();
    reg.register(name, help, f.clone());
    f
}

fn l(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The exposition text of `r`, `sync` and `tier`.
pub fn render(r: &Report, sync: &Sync, tier: &Tier) -> String {
    let mut reg = Registry::with_prefix("sluice");
    service_metrics(&mut reg, r);
    worker_metrics(&mut reg, r);
    tier_metrics(&mut reg, tier);
    let g = |reg: &mut Registry, name: &str, help: &str, v: i64| {
        let m = Gauge::<i64>::default();
        m.set(v);
        reg.register(name, help, m);
    };
    g(
        &mut reg,
        "flow_table_flows",
        "Flows in the connection table",
        r.flows as i64,
    );
    g(
        &mut reg,
        "flow_table_capacity",
        "Capacity of the connection table",
        r.flow_capacity as i64,
    );
    g(
        &mut reg,
        "table_generation",
        "Version of the service table in service",
        r.generation as i64,
    );
    let ev = family::<Counter>(
        &mut reg,
        "flow_table_evictions",
        "Flows evicted for new ones when the table was full (early drop), by class",
    );
    for (k, v) in &r.early_drops {
        let class = k.strip_prefix("early_drop_").unwrap_or(k).to_owned();
        ev.get_or_create(&l(&[("class", class)])).inc_by(*v);
    }
    reg.register(
        "sync_duration_seconds",
        "Latency of a write from its arrival to its table being loaded by every worker",
        sync.duration.clone(),
    );
    let last = Gauge::<f64, AtomicU64>::default();
    last.set(sync.last.load(Ordering::Relaxed) as f64 / 1000.0);
    reg.register(
        "last_sync_timestamp_seconds",
        "Unix time of the last write made visible to the workers",
        last,
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        warn!("encoding metrics: {e}");
    }
    out
}

fn service_metrics(reg: &mut Registry, r: &Report) {
    let flows = family::<Counter>(reg, "service_new_flows", "New flows per service port");
    let pkts = family::<Counter>(reg, "service_packets", "Packets per service port");
    let bytes = family::<Counter>(reg, "service_bytes", "IP bytes per service port");
    let active = family::<Gauge>(reg, "service_active_flows", "Flows per service port");
    let bflows = family::<Counter>(reg, "backend_new_flows", "New flows per backend");
    let bpkts = family::<Counter>(reg, "backend_packets", "Packets per backend");
    let bbytes = family::<Counter>(reg, "backend_bytes", "IP bytes per backend");
    let bactive = family::<Gauge>(reg, "backend_active_flows", "Flows per backend");
    for s in &r.services {
        let base = [
            ("service", s.name.clone()),
            ("vip", s.address.clone()),
            ("port", s.port.to_string()),
            ("protocol", s.protocol.to_owned()),
        ];
        let dir = |d: &str, extra: &[(&str, String)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            v.push(("direction", d.to_owned()));
            l(&v)
        };
        let f = &s.figures;
        flows.get_or_create(&l(&base)).inc_by(f.conns);
        active.get_or_create(&l(&base)).set(f.active_flows as i64);
        pkts.get_or_create(&dir("in", &[])).inc_by(f.in_packets);
        pkts.get_or_create(&dir("out", &[])).inc_by(f.out_packets);
        bytes.get_or_create(&dir("in", &[])).inc_by(f.in_bytes);
        bytes.get_or_create(&dir("out", &[])).inc_by(f.out_bytes);
        for b in &s.backends {
            let be = [("backend", format!("{}:{}", b.address, b.port))];
            let mut bl = base.to_vec();
            bl.extend_from_slice(&be);
            let f = &b.figures;
            bflows.get_or_create(&l(&bl)).inc_by(f.conns);
            bactive.get_or_create(&l(&bl)).set(f.active_flows as i64);
            bpkts.get_or_create(&dir("in", &be)).inc_by(f.in_packets);
            bpkts.get_or_create(&dir("out", &be)).inc_by(f.out_packets);
            bbytes.get_or_create(&dir("in", &be)).inc_by(f.in_bytes);
            bbytes.get_or_create(&dir("out", &be)).inc_by(f.out_bytes);
        }
    }
}

fn tier_metrics(reg: &mut Registry, t: &Tier) {
    let digest = family::<Gauge>(
        reg,
        "table_digest_info",
        "Digest of the services and endpoints in service, independent of their order: equal on hosts that agree",
    );
    digest
        .get_or_create(&l(&[("digest", crate::digest::hex(t.digest))]))
        .set(1);
    let ok = Gauge::<i64>::default();
    ok.set(i64::from(t.reload_ok));
    reg.register(
        "config_last_reload_success",
        "1 if the config file's last reload applied (or none was asked for), 0 if it failed: the host serves an older generation than its file and announces nothing",
        ok,
    );
    let Some((vips, failures)) = &t.bgp else {
        return;
    };
    let announced = family::<Gauge>(
        reg,
        "bgp_announced",
        "1 while BIRD announces the VIP for this host, 0 for a VIP served but withdrawn",
    );
    for (vip, on) in vips {
        announced
            .get_or_create(&l(&[("vip", vip.to_string())]))
            .set(i64::from(*on));
    }
    let f = Counter::<u64>::default();
    f.inc_by(*failures);
    reg.register(
        "bgp_configure_failures",
        "Announcement changes BIRD did not take (include file, control socket or refusal)",
        f,
    );
}

fn worker_metrics(reg: &mut Registry, r: &Report) {
    let rx = family::<Counter>(
        reg,
        "worker_rx_packets",
        "Frames received per worker, with the ones the XDP fast path forwarded for it (worker_fast_path_packets)",
    );
    let tx = family::<Counter>(
        reg,
        "worker_tx_packets",
        "Frames sent per worker, with the ones the XDP fast path forwarded for it (worker_fast_path_packets)",
    );
    let fast = family::<Counter>(
        reg,
        "worker_fast_path_packets",
        "Packets of the flows a worker published that the XDP fast path forwarded in its place",
    );
    let published = family::<Counter>(
        reg,
        "worker_fast_path_published",
        "Flow directions a worker published to the XDP fast path (each once it forwarded --fast-path-after packets of it)",
    );
    let unpublished = family::<Counter>(
        reg,
        "worker_fast_path_closes_unpublished",
        "FINs and RSTs of flows never published to the fast path (closed without a map operation)",
    );
    let drops = family::<Counter>(reg, "worker_drops", "Frames dropped per worker, by reason");
    let bursts = family::<Counter>(
        reg,
        "worker_bursts",
        "Bursts that received frames ((rx_packets - fast_path_packets) / bursts = mean burst size)",
    );
    let idle = family::<Counter>(
        reg,
        "worker_idle_polls",
        "Loop turns that received nothing (idle ratio = idle_polls / (idle_polls + bursts))",
    );
    let picked = family::<Counter>(
        reg,
        "worker_flows_picked_up",
        "Mid-flow TCP segments without a flow forwarded by the Maglev choice and given a flow (connections moved here from another host of a tier; mh services by DR or IPIP)",
    );
    for w in &r.workers {
        let wl = l(&[("worker", w.worker.to_string())]);
        let c = |k: &str| w.counters.get(k).copied().unwrap_or(0);
        picked.get_or_create(&wl).inc_by(c("flows_picked_up"));
        rx.get_or_create(&wl).inc_by(c("rx"));
        tx.get_or_create(&wl).inc_by(c("tx"));
        fast.get_or_create(&wl).inc_by(c("fast_path_packets"));
        published.get_or_create(&wl).inc_by(c("fast_published"));
        unpublished
            .get_or_create(&wl)
            .inc_by(c("fast_closes_unpublished"));
        bursts.get_or_create(&wl).inc_by(w.bursts);
        idle.get_or_create(&wl).inc_by(w.idle_polls);
        for reason in crate::stats::drop_reasons() {
            let name = format!("drop_{}", reason.as_str());
            drops
                .get_or_create(&l(&[
                    ("worker", w.worker.to_string()),
                    ("reason", reason.as_str().to_owned()),
                ]))
                .inc_by(c(&name));
        }
    }
}

/// The health verdict of `r`: every worker's heartbeat recent and the
/// table in service loaded by every worker.
pub fn healthy(r: &Report) -> bool {
    !r.workers.is_empty()
        && r.workers.iter().all(|w| {
            w.heartbeat_age_ms <= HEARTBEAT_STALE.as_millis() as u64
                && w.table_version >= r.generation
        })
}

async fn metrics(State(s): State<Sources>) -> Response {
    let body =
        tokio::task::spawn_blocking(move || render(&s.stats.report(), &s.sync, &Tier::of(&s)))
            .await
            .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn healthz(State(s): State<Sources>) -> Response {
    let stats = s.stats.clone();
    let Ok(r) = tokio::task::spawn_blocking(move || stats.report()).await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let ok = healthy(&r);
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let last = s.sync.last.load(Ordering::Relaxed);
    let last = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(last));
    let body = serde_json::json!({
        "lastUpdated": last.to_string(),
        "currentTime": now,
        "nodeHealthy": ok,
        "generation": r.generation,
        "workers": r.workers.iter().map(|w| serde_json::json!({
            "worker": w.worker,
            "heartbeatAgeMs": w.heartbeat_age_ms,
            "tableVersion": w.table_version,
        })).collect::<Vec<_>>(),
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// The bound listeners.
pub struct Listeners {
    metrics: TcpListener,
    healthz: TcpListener,
}

/// Binds both addresses (before the data path starts, so that a taken
/// address fails the start).
///
/// # Errors
/// [`BindError`] naming the flag.
pub async fn bind(metrics: SocketAddr, healthz: SocketAddr) -> Result<Listeners, BindError> {
    let b = |flag, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { flag, addr, source })
    };
    let m = b("--metrics-bind-address", metrics).await?;
    let h = b("--healthz-bind-address", healthz).await?;
    info!("metrics on http://{metrics}/metrics, health on http://{healthz}/healthz");
    Ok(Listeners {
        metrics: m,
        healthz: h,
    })
}

/// Serves both until the task is dropped.
pub async fn serve(l: Listeners, s: Sources) {
    let m = Router::new()
        .route("/metrics", get(metrics))
        .with_state(s.clone());
    let h = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .with_state(s);
    let (a, b) = tokio::join!(
        std::future::IntoFuture::into_future(axum::serve(l.metrics, m)),
        std::future::IntoFuture::into_future(axum::serve(l.healthz, h))
    );
    for r in [a, b] {
        if let Err(e) = r {
            warn!("metrics/healthz server: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_and_drop_reason() {
        let r = Report {
            generation: 3,
            flows: 1,
            flow_capacity: 8,
            early_drops: [("early_drop_idle".to_string(), 2)].into_iter().collect(),
            services: Vec::new(),
            workers: vec![crate::stats::WorkerStats {
                worker: 0,
                counters: [("rx".to_string(), 5), ("flows_picked_up".to_string(), 4)]
                    .into_iter()
                    .collect(),
                bursts: 1,
                idle_polls: 9,
                heartbeat_age_ms: 1,
                table_version: 3,
            }],
        };
        let sync = Sync::default();
        sync.observe(Duration::from_millis(3));
        let tier = Tier {
            digest: 0xab,
            bgp: Some((
                vec![
                    ("198.18.100.10".parse().expect("ip"), true),
                    ("2001:db8:100::10".parse().expect("ip"), false),
                ],
                2,
            )),
            reload_ok: false,
        };
        let t = render(&r, &sync, &tier);
        for want in [
            "sluice_config_last_reload_success 0",
            "sluice_table_digest_info{digest=\"00000000000000ab\"} 1",
            "sluice_bgp_announced{vip=\"198.18.100.10\"} 1",
            "sluice_bgp_announced{vip=\"2001:db8:100::10\"} 0",
            "sluice_bgp_configure_failures_total 2",
            "sluice_worker_rx_packets_total{worker=\"0\"} 5",
            "sluice_worker_flows_picked_up_total{worker=\"0\"} 4",
            "sluice_worker_drops_total{worker=\"0\",reason=\"too_big\"} 0",
            "sluice_table_generation 3",
            "sluice_flow_table_evictions_total{class=\"idle\"} 2",
            "sluice_sync_duration_seconds_count 1",
            "# TYPE sluice_sync_duration_seconds histogram",
            "# EOF",
        ] {
            assert!(t.contains(want), "{want} missing in\n{t}");
        }
        let plain = render(&r, &sync, &Tier::default());
        assert!(
            !plain.contains("bgp_"),
            "no BGP metrics without --bgp:\n{plain}"
        );
        assert!(healthy(&r));
        let mut stale = r.clone();
        stale.workers[0].heartbeat_age_ms = 5000;
        assert!(!healthy(&stale));
        let mut behind = r;
        behind.workers[0].table_version = 2;
        assert!(!healthy(&behind));
    }
}
