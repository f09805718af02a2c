//! VIP announcement through a real routing daemon (`sluice run --bgp
//! bird`): Sluice decides which VIPs this host should attract and has BIRD
//! announce them over the operator's BGP sessions. No BGP is spoken here
//! (GUIDE "Interfaces users already know": never a home-made BGP speaker).
//!
//! The rule ([`Announcer::want`]): a VIP is announced while
//! - the table in service has a front end on it (any kind but a node port:
//!   node addresses are the host's own) with at least one usable endpoint
//!   (ready: weight above 0, not terminating; a health check that failed
//!   has already set the weight to 0 or removed the endpoint), and
//! - Sluice has served for the warm-up (`--announce-after`) since its data
//!   path came up, so a host that restarts does not attract traffic before
//!   its next hops and health checks settle, and
//! - the data path runs: every worker's heartbeat ([`Counters::heartbeat_ms`],
//!   stored at each loop turn, at least every 10 ms when idle) is younger
//!   than [`WATCHDOG_STALE`]. A stuck worker black-holes the flows RSS
//!   gives its queues, so one stuck worker withdraws everything, the same
//!   verdict `/healthz` gives ([`crate::metrics::healthy`]).
//!
//! Everything is read from the published snapshot, so a change that failed
//! to apply (and so was not published) changes no announcement. The
//! publisher wakes the announcer at each publish ([`Handle::wake`]); a
//! timer covers the warm-up's end and the watchdog. On SIGINT/SIGTERM the
//! daemon withdraws everything ([`Handle::shutdown`]) before it stops the
//! workers. A SIGKILLed Sluice withdraws nothing: BIRD lives on with the
//! last file, its sessions stay up and the routes stay announced until an
//! operator's own check (or a restart of Sluice, which first withdraws
//! everything until its warm-up ends) removes them.
//!
//! What BIRD was told is only what it accepted: when writing the include
//! file or `configure` fails, the announced set stays the one BIRD last
//! accepted (BIRD keeps its old config), the failure is counted and logged,
//! and the change is retried every [`RETRY`].

pub mod bird;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_dataplane::service::{ServiceTable, VipKind};
use sluice_dataplane::worker::{Counters, Shared};
use tracing::{error, info, warn};

use bird::BirdError;

/// BIRD's default control socket (Debian's `bird2`).
pub const DEFAULT_SOCKET: &str = "/run/bird/bird.ctl";
/// The IPv4 include file's default path.
pub const DEFAULT_INCLUDE: &str = "/etc/bird/sluice-vips.conf";
/// The IPv6 include file's default path.
pub const DEFAULT_INCLUDE6: &str = "/etc/bird/sluice-vips6.conf";
/// The default warm-up.
pub const DEFAULT_ANNOUNCE_AFTER: Duration = Duration::from_secs(5);
/// A worker whose last loop turn is older than this has stopped.
pub const WATCHDOG_STALE: Duration = Duration::from_secs(1);
/// How often the announcer looks without being woken (the warm-up's end,
/// the watchdog).
const TICK: Duration = Duration::from_millis(200);
/// How soon a failed change is retried.
const RETRY: Duration = Duration::from_secs(1);
/// The longest one `configure` exchange may take.
const BIRD_TIMEOUT: Duration = Duration::from_secs(3);

/// `--bgp bird` and its options.
#[derive(Clone, Debug)]
pub struct BgpOpts {
    /// BIRD's control socket (`--bird-socket`).
    pub socket: PathBuf,
    /// The IPv4 routes' include file (`--bird-include`).
    pub include: PathBuf,
    /// The IPv6 routes' include file (`--bird-include6`).
    pub include6: PathBuf,
    /// Serve this long before announcing (`--announce-after`).
    pub announce_after: Duration,
}

/// Why `--bgp` options are unusable.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// An include file's directory does not exist (BIRD's own, e.g.
    /// `/etc/bird`, is made by the bird2 package).
    #[error("{flag} {path}: directory {dir} does not exist")]
    NoDirectory {
        /// The flag.
        flag: &'static str,
        /// The path given.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The two include files are one file (an IPv4 and an IPv6 static
    /// protocol cannot share routes).
    #[error("--bird-include and --bird-include6 name the same file {0}")]
    SameFile(PathBuf),
}

impl BgpOpts {
    /// Checks what can be checked before BIRD is asked anything.
    ///
    /// # Errors
    /// [`BgpError`] naming the flag.
    pub fn check(&self) -> Result<(), BgpError> {
        if self.include == self.include6 {
            return Err(BgpError::SameFile(self.include.clone()));
        }
        for (flag, path) in [
            ("--bird-include", &self.include),
            ("--bird-include6", &self.include6),
        ] {
            let dir = match path.parent() {
                Some(d) if d.as_os_str().is_empty() => Path::new("."),
                Some(d) => d,
                None => Path::new("/"),
            };
            if !dir.is_dir() {
                return Err(BgpError::NoDirectory {
                    flag,
                    path: path.clone(),
                    dir: dir.to_path_buf(),
                });
            }
        }
        Ok(())
    }
}

/// The VIPs the table serves that may be announced, each with whether it
/// has a usable endpoint now: every front end's address but node ports'
/// and the unspecified address.
pub fn candidates(table: &ServiceTable) -> BTreeMap<IpAddr, bool> {
    let mut out = BTreeMap::new();
    for s in table.services() {
        if s.spec.kind == VipKind::NodePort {
            continue;
        }
        let ip = s.spec.vip.addr.to_ip();
        if ip.is_unspecified() {
            continue;
        }
        let usable = s
            .spec
            .backends
            .iter()
            .any(|b| b.weight > 0 && !b.terminating);
        *out.entry(ip).or_insert(false) |= usable;
    }
    out
}

/// Whether every worker turned its loop within `stale` of `now_ms`
/// (milliseconds since [`Shared::epoch`], the heartbeats' clock); false
/// without workers.
pub fn data_path_alive(heartbeats: &[u64], now_ms: u64, stale: Duration) -> bool {
    let stale = stale.as_millis() as u64;
    !heartbeats.is_empty()
        && heartbeats
            .iter()
            .all(|&b| now_ms.saturating_sub(b) <= stale)
}

/// Why nothing is announced although the table has usable VIPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The warm-up has not ended.
    WarmingUp,
    /// A worker's heartbeat is stale.
    DataPathStopped,
    /// The config file failed to apply at its last reload: this host
    /// serves an older generation than its file, so it may disagree with
    /// the hosts that applied it ([`ConfigApplied`]).
    ConfigFailed,
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hold::WarmingUp => "warming up",
            Hold::DataPathStopped => "the data path stopped (a worker's heartbeat is stale)",
            Hold::ConfigFailed => "the config file failed to apply at the last reload",
        })
    }
}

/// Whether the config file's last reload applied (true until one fails,
/// and again after one succeeds), shared by the reload path, the
/// announcer and `/metrics` (`sluice_config_last_reload_success`). One
/// source of truth (issue 14): a host left on an older generation than
/// its file does not announce. A write refused by the API does not set
/// it: that leaves no file behind that the host failed to follow.
#[derive(Clone, Debug)]
pub struct ConfigApplied(Arc<std::sync::atomic::AtomicBool>);

impl Default for ConfigApplied {
    fn default() -> Self {
        ConfigApplied(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }
}

impl ConfigApplied {
    /// Records the outcome of a reload of the config file.
    pub fn set(&self, ok: bool) {
        self.0.store(ok, Ordering::Relaxed);
    }

    /// Whether the last reload applied.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What should be announced now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// The VIPs to announce.
    pub vips: BTreeSet<IpAddr>,
    /// Every candidate VIP ([`candidates`]), announced or not.
    pub candidates: BTreeSet<IpAddr>,
    /// Set when a hold withdrew VIPs that are usable.
    pub hold: Option<Hold>,
}

/// The announcer's state: when it started, and what BIRD last accepted.
/// Sans-I/O: the caller passes the table, the time and the data path's
/// state, and reports back what BIRD accepted.
#[derive(Debug)]
pub struct Announcer {
    started: Instant,
    after: Duration,
    /// The set BIRD last accepted; None before the first success (then
    /// BIRD may hold a previous run's routes, so the first sync is due
    /// whatever the set).
    applied: Option<BTreeSet<IpAddr>>,
}

impl Announcer {
    /// An announcer whose warm-up of `after` starts at `started`.
    pub fn new(started: Instant, after: Duration) -> Announcer {
        Announcer {
            started,
            after,
            applied: None,
        }
    }

    /// What should be announced at `now`, given the table in service,
    /// whether the data path runs and whether the last config reload
    /// applied ([`ConfigApplied`]).
    pub fn want(&self, table: &ServiceTable, now: Instant, alive: bool, applied: bool) -> Want {
        let all = candidates(table);
        let usable: BTreeSet<IpAddr> = all.iter().filter(|(_, u)| **u).map(|(a, _)| *a).collect();
        let hold = if !alive {
            Some(Hold::DataPathStopped)
        } else if !applied {
            Some(Hold::ConfigFailed)
        } else if now.saturating_duration_since(self.started) < self.after {
            Some(Hold::WarmingUp)
        } else {
            None
        };
        Want {
            vips: if hold.is_some() {
                BTreeSet::new()
            } else {
                usable.clone()
            },
            candidates: all.into_keys().collect(),
            hold: hold.filter(|_| !usable.is_empty()),
        }
    }

    /// Whether BIRD must be told `vips` (it last accepted another set, or
    /// nothing yet).
    pub fn needs_sync(&self, vips: &BTreeSet<IpAddr>) -> bool {
        self.applied.as_ref() != Some(vips)
    }

    /// Records that BIRD accepted `vips`.
    pub fn accepted(&mut self, vips: BTreeSet<IpAddr>) {
        self.applied = Some(vips);
    }

    /// What BIRD last accepted (empty before the first success).
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        self.applied.clone().unwrap_or_default()
    }
}

/// Writes both include files for `vips` and has BIRD reconfigure.
///
/// # Errors
/// [`BirdError`]; then BIRD's announcements are what they were.
pub fn sync(opts: &BgpOpts, vips: &BTreeSet<IpAddr>) -> Result<(), BirdError> {
    bird::write_include(&opts.include, &bird::include_text(vips, false))?;
    bird::write_include(&opts.include6, &bird::include_text(vips, true))?;
    bird::configure(&opts.socket, BIRD_TIMEOUT).map(drop)
}

/// What the announcer shows in `/metrics`: every candidate VIP with
/// whether BIRD announces it, and the failed changes.
#[derive(Clone, Debug, Default)]
pub struct Status {
    inner: Arc<Mutex<BTreeMap<IpAddr, bool>>>,
    failures: Arc<AtomicU64>,
}

impl Status {
    /// Every VIP that is a candidate or still announced, with whether it
    /// is announced, sorted by address.
    pub fn announced(&self) -> Vec<(IpAddr, bool)> {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(a, b)| (*a, *b)).collect()
    }

    /// Changes BIRD did not take (write, socket or refusal).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn set(&self, candidates: &BTreeSet<IpAddr>, announced: &BTreeSet<IpAddr>) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.clear();
        for a in candidates.iter().chain(announced) {
            m.insert(*a, announced.contains(a));
        }
    }
}

enum Msg {
    /// A table was published.
    Wake,
    /// Withdraw everything, answer, and end.
    Stop(mpsc::Sender<Result<(), BirdError>>),
}

/// The running announcer: wake it at each publish, stop it at shutdown.
pub struct Handle {
    tx: SyncSender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    status: Status,
}

impl Handle {
    /// A waker for the publisher: cheap, never blocks (wakes coalesce).
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let tx = self.tx.clone();
        move || {
            let _ = tx.try_send(Msg::Wake);
        }
    }

    /// Wakes the announcer now.
    pub fn wake(&self) {
        let _ = self.tx.try_send(Msg::Wake);
    }

    /// What `/metrics` shows.
    pub fn status(&self) -> Status {
        self.status.clone()
    }

    /// Withdraws every VIP (both files emptied, BIRD reconfigured) and
    /// ends the announcer; waits at most `timeout`.
    ///
    /// # Errors
    /// [`BirdError`] when BIRD did not take the withdrawal; `None` inside
    /// when the announcer did not answer in time.
    pub fn shutdown(mut self, timeout: Duration) -> Option<Result<(), BirdError>> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Msg::Stop(tx)).ok()?;
        let r = rx.recv_timeout(timeout).ok();
        if r.is_some() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        r
    }
}

/// Starts the announcer thread over the data path of `shared` and
/// `counters`; its warm-up starts now.
///
/// # Errors
/// The thread could not be started.
pub fn spawn(
    opts: BgpOpts,
    shared: Arc<Shared>,
    counters: Vec<Arc<Counters>>,
    applied: ConfigApplied,
) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::sync_channel(8);
    let status = Status::default();
    let st = status.clone();
    let thread = std::thread::Builder::new()
        .name("sluice-bgp".into())
        .spawn(move || run(opts, shared, counters, applied, rx, st))?;
    Ok(Handle {
        tx,
        thread: Some(thread),
        status,
    })
}

/// The announcer's loop: on each wake or tick, decide, and tell BIRD when
/// the decision changed (or a failed change is due for its retry).
fn run(
    opts: BgpOpts,
    shared: Arc<Shared>,
    counters: Vec<Arc<Counters>>,
    applied: ConfigApplied,
    rx: mpsc::Receiver<Msg>,
    status: Status,
) {
    info!(
        "bgp: announcing through BIRD at {} (include files {} and {}) after {:?} of service",
        opts.socket.display(),
        opts.include.display(),
        opts.include6.display(),
        opts.announce_after
    );
    let mut a = Announcer::new(Instant::now(), opts.announce_after);
    let mut last_failure: Option<Instant> = None;
    let mut last_hold = None;
    loop {
        let stop = match rx.recv_timeout(TICK) {
            Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => None,
            Ok(Msg::Stop(ack)) => Some(Some(ack)),
            Err(RecvTimeoutError::Disconnected) => Some(None),
        };
        if let Some(ack) = stop {
            let r = withdraw_all(&opts, &mut a, &status);
            if let Some(ack) = ack {
                let _ = ack.send(r);
            }
            return;
        }
        let beats: Vec<u64> = counters
            .iter()
            .map(|c| c.heartbeat_ms.load(Ordering::Relaxed))
            .collect();
        let now_ms = shared.epoch.elapsed().as_millis() as u64;
        let alive = data_path_alive(&beats, now_ms, WATCHDOG_STALE);
        let want = a.want(
            &shared.snapshot.load().services,
            Instant::now(),
            alive,
            applied.get(),
        );
        if want.hold != last_hold {
            match want.hold {
                Some(Hold::DataPathStopped) => {
                    error!("bgp: withdrawing every VIP: {}", Hold::DataPathStopped)
                }
                Some(h) => info!("bgp: holding announcements: {h}"),
                None if last_hold.is_some() => info!("bgp: announcing"),
                None => {}
            }
            last_hold = want.hold;
        }
        if a.needs_sync(&want.vips) && last_failure.is_none_or(|t| t.elapsed() >= RETRY) {
            match sync(&opts, &want.vips) {
                Ok(()) => {
                    log_change(&a.announced(), &want.vips);
                    a.accepted(want.vips.clone());
                    last_failure = None;
                }
                Err(e) => {
                    status.failures.fetch_add(1, Ordering::Relaxed);
                    warn!("bgp: announcements unchanged: {e}; retrying in {RETRY:?}");
                    last_failure = Some(Instant::now());
                }
            }
        }
        status.set(&want.candidates, &a.announced());
    }
}

fn log_change(before: &BTreeSet<IpAddr>, after: &BTreeSet<IpAddr>) {
    let list = |s: BTreeSet<&IpAddr>| {
        s.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let added = list(after.difference(before).collect());
    let gone = list(before.difference(after).collect());
    info!(
        "bgp: BIRD reconfigured: {} VIP(s) announced{}{}",
        after.len(),
        if added.is_empty() {
            String::new()
        } else {
            format!("; announced {added}")
        },
        if gone.is_empty() {
            String::new()
        } else {
            format!("; withdrawn {gone}")
        }
    );
}

/// The shutdown: empty files, BIRD reconfigured.
fn withdraw_all(opts: &BgpOpts, a: &mut Announcer, status: &Status) -> Result<(), BirdError> {
    let none = BTreeSet::new();
    let r = sync(opts, &none);
    match &r {
        Ok(()) => {
            log_change(&a.announced(), &none);
            a.accepted(none);
        }
        Err(e) => {
            status.failures.fetch_add(1, Ordering::Relaxed);
            error!("bgp: withdrawing at shutdown failed: {e}");
        }
    }
    status.set(&BTreeSet::new(), &a.announced());
    r
}

#[cfg(test)]
mod tests;
