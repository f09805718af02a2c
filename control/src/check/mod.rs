//! Health checks of real servers, as keepalived runs them: the host's own
//! TCP connects, HTTP GETs and UDP exchanges to each real server
//! ([`tcp`], [`http`], [`udp`]), with interval, timeout, rise and fall
//! ([`state`]). Not to be confused with [`crate::health`], which *answers*
//! cloud load balancers' checks of this node.
//!
//! Configured per Kubernetes Service by two annotations
//! (`config/check.rs`):
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     sluice.dev/health-check: "http path=/healthz status=200 interval=2s timeout=1s rise=2 fall=3"
//!     sluice.dev/health-check-action: weight0   # or remove
//! ```
//!
//! The check's syntax is in [`spec`]. Every real server of every front end
//! of the Service is probed at its own address and port, on the service
//! ports of the probe's protocol (tcp and http: TCP ports; udp: UDP
//! ports); with the check's `port=`, at that port, for every service port
//! ([`ServiceCheck::applies_to`]). One probe serves all front ends that
//! share the server and the check ([`Target`]).
//!
//! # How results reach the data path
//!
//! The [`Checks`] registry holds one [`state::RiseFall`] per target. The
//! reconciler's publisher owns it and applies it as an **overlay** when it
//! compiles ([`Checks::overlay`]): a down server gets weight 0 (no new
//! flows, existing ones continue) or is left out (then treated as a removed
//! endpoint). The overlay is applied to every compile, so it survives config
//! changes; the configured state stays as it was written. After each
//! publish the registry's targets follow the config (a server that leaves
//! the config leaves the checker; one that stays keeps its state).
//!
//! [`run`] drives the probes on the daemon's runtime, at most
//! [`MAX_IN_FLIGHT`] at once; when a target changes state it wakes
//! [`Checks::changed`], and the daemon republishes through the
//! publisher's one publish path.
//!
//! The probes leave from the host's own stack, so their replies come back
//! to a host address on a port of the kernel's ephemeral range: the
//! steering program passes those to the kernel (`steer.c` rule (b) and its
//! `local_addrs` map), and the data path never sees them.

pub mod http;
pub mod spec;
pub mod state;
pub mod tcp;
pub mod udp;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use sluice_dataplane::service::BackendSpec;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::Config;
pub use spec::{CheckAction, CheckSpec, Probe, SpecError};
use state::{RiseFall, Schedule, Transition};

/// Probes in flight at once, over all targets.
pub const MAX_IN_FLIGHT: usize = 64;
/// How often the driver looks for due probes.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// A Service's check and what a failure does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct ServiceCheck {
    /// The check.
    pub spec: CheckSpec,
    /// What a down server gets.
    pub action: CheckAction,
}

impl ServiceCheck {
    /// Whether the check judges the servers of a service port of IP
    /// protocol `proto`: with `port=`, every service port (the probe of
    /// that port stands for the server); without, the service ports its
    /// probe speaks the protocol of (tcp and http: TCP; udp: UDP), as a
    /// TCP probe of a UDP port says nothing.
    pub fn applies_to(&self, proto: u8) -> bool {
        use sluice_dataplane::types::proto::{TCP, UDP};
        self.spec.port.is_some()
            || matches!(
                (&self.spec.probe, proto),
                (Probe::Tcp | Probe::Http { .. }, TCP) | (Probe::Udp { .. }, UDP)
            )
    }
}

/// One probed thing: a real server's address and port and the check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Where the probe goes.
    pub addr: SocketAddr,
    /// The check.
    pub spec: CheckSpec,
}

impl Target {
    /// The target of backend `b` under `spec`.
    pub fn of(b: &BackendSpec, spec: &CheckSpec) -> Target {
        Target {
            addr: SocketAddr::new(b.addr.to_ip(), spec.port.unwrap_or(b.port)),
            spec: spec.clone(),
        }
    }
}

/// Why one probe failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::ErrorKind),
    /// An ICMP port unreachable came back.
    #[error("ICMP port unreachable")]
    Refused,
    /// Another socket error.
    #[error("socket: {0}")]
    Io(std::io::ErrorKind),
    /// The HTTP status was not the expected one.
    #[error("HTTP status {got}, expected {want}")]
    Status {
        /// The status received.
        got: u16,
        /// The status expected.
        want: u16,
    },
    /// The reply is not what the check expects.
    #[error("unexpected reply {0:?}")]
    BadReply(String),
}

/// Runs one probe of `t`.
///
/// # Errors
/// The [`ProbeError`] of the failed probe.
pub async fn probe(t: &Target) -> Result<(), ProbeError> {
    let timeout = t.spec.timeout;
    match &t.spec.probe {
        Probe::Tcp => tcp::probe(t.addr, timeout).await,
        Probe::Http { path, status } => http::probe(t.addr, path, *status, timeout).await,
        Probe::Udp { send, expect } => {
            udp::probe(
                t.addr,
                send.as_bytes(),
                expect.as_deref().map(str::as_bytes),
                timeout,
            )
            .await
        }
    }
}

/// One target's state.
#[derive(Debug)]
struct Entry {
    health: RiseFall,
    schedule: Schedule,
    /// The service ports (`ns/name:port`) whose servers it stands for.
    services: BTreeSet<String>,
    action: CheckAction,
    since: SystemTime,
    probes: u64,
    failures: u64,
    last_error: Option<String>,
}

/// The status of one target, as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// Real server address.
    pub address: String,
    /// Port probed.
    pub port: u16,
    /// `tcp`, `http` or `udp`.
    pub check: &'static str,
    /// `up` or `down`.
    pub state: &'static str,
    /// What a down state does (`weight0`, `remove`).
    pub action: CheckAction,
    /// Since when it is in that state (RFC 3339).
    pub since: String,
    /// The service ports it serves.
    pub services: Vec<String>,
    /// Probes run.
    pub probes: u64,
    /// Of those, failed.
    pub failures: u64,
    /// Why the last failed probe failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The registry of targets and their states, shared by the publisher, the
/// probe driver and the API.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    inner: Arc<Mutex<HashMap<Target, Entry>>>,
    changed: Arc<Notify>,
}

impl Checks {
    fn lock(&self) -> MutexGuard<'_, HashMap<Target, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Woken when a target changes state.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Makes the targets those of `cfg`: new ones start up and are probed at
    /// once, kept ones keep their state, others are forgotten.
    pub fn set_targets(&self, cfg: &Config) {
        let mut want: HashMap<Target, (BTreeSet<String>, CheckAction)> = HashMap::new();
        for s in &cfg.services {
            let Some(sc) = cfg
                .checks
                .get(&s.name)
                .filter(|c| c.applies_to(s.vip.proto))
            else {
                continue;
            };
            for b in &s.backends {
                let e = want
                    .entry(Target::of(b, &sc.spec))
                    .or_insert_with(|| (BTreeSet::new(), sc.action));
                e.0.insert(s.name.clone());
            }
        }
        let mut reg = self.lock();
        reg.retain(|t, _| want.contains_key(t));
        let now = Instant::now();
        for (t, (services, action)) in want {
            let e = reg.entry(t).or_insert_with(|| Entry {
                health: RiseFall::default(),
                schedule: Schedule::new(now),
                services: BTreeSet::new(),
                action,
                since: SystemTime::now(),
                probes: 0,
                failures: 0,
                last_error: None,
            });
            e.services = services;
            e.action = action;
        }
    }

    /// The targets now down.
    pub fn down(&self) -> HashSet<Target> {
        self.lock()
            .iter()
            .filter(|(_, e)| !e.health.is_up())
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// `cfg` with the servers in `down` given weight 0 or left out, per
    /// their Service's action; `cfg` itself when nothing changes.
    pub fn overlay<'a>(cfg: &'a Config, down: &HashSet<Target>) -> Cow<'a, Config> {
        if down.is_empty() || cfg.checks.is_empty() {
            return Cow::Borrowed(cfg);
        }
        let mut out = cfg.clone();
        for s in &mut out.services {
            let Some(sc) = cfg
                .checks
                .get(&s.name)
                .filter(|c| c.applies_to(s.vip.proto))
            else {
                continue;
            };
            let is_down = |b: &BackendSpec| down.contains(&Target::of(b, &sc.spec));
            match sc.action {
                CheckAction::Weight0 => s
                    .backends
                    .iter_mut()
                    .filter(|b| is_down(b))
                    .for_each(|b| b.weight = 0),
                CheckAction::Remove => s.backends.retain(|b| !is_down(b)),
            }
        }
        Cow::Owned(out)
    }

    /// Marks up to `limit` due targets as started at `now` and returns them.
    fn start_due(&self, now: Instant, limit: usize) -> Vec<Target> {
        let mut reg = self.lock();
        let mut out = Vec::new();
        for (t, e) in reg.iter_mut() {
            if out.len() >= limit {
                break;
            }
            if e.schedule.due(now) {
                e.schedule.start(now, t.spec.interval);
                out.push(t.clone());
            }
        }
        out
    }

    /// Counts a probe result; the transition it caused (logged).
    pub fn record(&self, t: &Target, result: Result<(), ProbeError>) -> Option<Transition> {
        let mut reg = self.lock();
        // Gone from the config while the probe ran: nothing to count.
        let e = reg.get_mut(t)?;
        e.schedule.finish();
        e.probes += 1;
        if let Err(err) = &result {
            e.failures += 1;
            e.last_error = Some(err.to_string());
        }
        let tr = e.health.record(result.is_ok(), t.spec.rise, t.spec.fall)?;
        e.since = SystemTime::now();
        let services: Vec<&str> = e.services.iter().map(String::as_str).collect();
        match (tr, &result) {
            (Transition::Down, Err(err)) => warn!(
                target_addr = %t.addr, check = t.spec.probe.kind(), services = ?services,
                action = ?e.action,
                "real server down after {} failed checks: {err}", t.spec.fall
            ),
            _ => info!(
                target_addr = %t.addr, check = t.spec.probe.kind(), services = ?services,
                "real server up after {} passed checks", t.spec.rise
            ),
        }
        Some(tr)
    }

    /// The state of every checked real server by service, for listings
    /// (`ipvsadm -Ln --health`); read once, looked up per server.
    pub fn index(&self) -> HealthIndex {
        let mut idx = HealthIndex::default();
        for (t, e) in self.lock().iter() {
            for s in &e.services {
                let (port, up) = idx
                    .services
                    .entry(s.clone())
                    .or_insert_with(|| (t.spec.port, HashMap::new()));
                *port = t.spec.port;
                up.insert(t.addr, e.health.is_up());
            }
        }
        idx
    }

    /// Every target's status, sorted by address and port.
    pub fn status(&self) -> Vec<TargetStatus> {
        let reg = self.lock();
        let mut out: Vec<TargetStatus> = reg
            .iter()
            .map(|(t, e)| TargetStatus {
                address: t.addr.ip().to_string(),
                port: t.addr.port(),
                check: t.spec.probe.kind(),
                state: if e.health.is_up() { "up" } else { "down" },
                action: e.action,
                since: humantime::format_rfc3339_seconds(e.since).to_string(),
                services: e.services.iter().cloned().collect(),
                probes: e.probes,
                failures: e.failures,
                last_error: e.last_error.clone(),
            })
            .collect();
        out.sort_by(|a, b| {
            (t_key(&a.address), a.port, a.check).cmp(&(t_key(&b.address), b.port, b.check))
        });
        out
    }
}

/// The check states of real servers by service ([`Checks::index`]).
#[derive(Clone, Debug, Default)]
pub struct HealthIndex {
    /// By service name (`ns/name:port`): the check's `port=` and whether
    /// each probed address is up.
    services: HashMap<String, (Option<u16>, HashMap<SocketAddr, bool>)>,
}

impl HealthIndex {
    /// Whether backend `b` of service `service` passes its check; None when
    /// the registry has no check of it.
    pub fn is_up(&self, service: &str, b: &BackendSpec) -> Option<bool> {
        let (port, up) = self.services.get(service)?;
        let addr = SocketAddr::new(b.addr.to_ip(), port.unwrap_or(b.port));
        up.get(&addr).copied()
    }
}

fn t_key(a: &str) -> Option<std::net::IpAddr> {
    a.parse().ok()
}

/// Runs the probes of `checks` until the task is dropped: every [`TICK`]
/// the due targets start (at most [`MAX_IN_FLIGHT`] in flight); a result
/// that changes a target's state wakes [`Checks::changed`].
pub async fn run(checks: Checks) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let room = MAX_IN_FLIGHT.saturating_sub(running.len());
                for t in checks.start_due(Instant::now(), room) {
                    running.spawn(async move {
                        let r = probe(&t).await;
                        (t, r)
                    });
                }
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                let Ok((t, r)) = done else { continue };
                if checks.record(&t, r).is_some() {
                    checks.changed.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
