//! The reconciler: the one path from a change of the desired state to the
//! workers.
//!
//! store batch → compile the state after it ([`compile`]) → steering maps
//! (the union of old and new sets while the swap happens, so no packet of
//! an old or new service falls through to the kernel in between) → next
//! hops → publish the snapshot by epoch swap → wait until every worker has
//! loaded the new epoch → answer. A batch that does not compile is refused
//! before anything is published, and the store is left as it was
//! ([`Store::commit`] validates the whole batch).
//!
//! Next hops come from one cache per daemon ([`crate::nexthop`]): a
//! compile resolves only backends it has not seen, and the kernel's
//! neighbour and route events move the others ([`Publisher::follow_kernel`]),
//! which republishes the same service table (shared, not rebuilt) with the
//! new hops and the old → new map that established flows follow
//! ([`Snapshot::moved`](sluice_dataplane::pipeline::Snapshot::moved)).
//!
//! The timers (next-hop retries, forgetting removed endpoints) and the
//! kernel's events republish through the same [`Publisher::swap`].
//!
//! Health-check results republish through it too
//! ([`Publisher::republish_health`]): every compile applies the checks'
//! overlay ([`Checks::overlay`]) to the configured state, so a server's
//! health survives config changes and needs none.

pub mod compile;
pub mod incremental;
#[cfg(test)]
mod incremental_tests;
pub mod tally;

use std::collections::BTreeSet;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hashbrown::HashMap;
use sluice_dataplane::pipeline::{is_dr_flow, MasqPolicy, Snapshot};
use sluice_dataplane::steer::{SteerError, Steering};
use sluice_dataplane::types::{proto, Addr, L2Hop};
use sluice_dataplane::worker::{Counters, Shared};
use tokio::sync::broadcast;
use tracing::{error, info, warn};

use crate::check::{Checks, Target};
use crate::config::{self, CompileCtx, Config, ConfigError};
use crate::dns::{DnsServer, DnsZone};
use crate::health::HealthServer;
use crate::netlink::Link;
use crate::nexthop::{Changes, SharedCache};
use crate::store::{Batch, Commit, Event, Key, Objects, Store, StoreError};
use compile::{
    apply_steer, diff_sets, expired_removals, steer_add, steer_del, union_sets, Base, BaseParts,
    Compiled, Specs, SteerSets, TallyUpdate,
};
use incremental::{Delta, Incremental};
use tally::Tally;

/// How long a compile waits for a new backend's next hop.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a retry or prune waits for a next hop.
const RETRY_RESOLVE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a write waits for the workers to load its table.
const SEEN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the compile depends on besides the objects: the host.
#[derive(Clone, Debug)]
pub struct Host {
    /// The served interfaces, in port-index order.
    pub links: Vec<Link>,
    /// Masquerading policy.
    pub masq: MasqPolicy,
    /// Node name, addresses and node-port range.
    pub ctx: CompileCtx,
    /// Backend next hops, kept current by the kernel's events.
    pub hops: SharedCache,
}

/// Why a change could not be published. Nothing was published.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The objects do not compile.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The steering maps could not take the new sets.
    #[error("updating the steering maps: {0}")]
    Steer(#[from] SteerError),
}

/// The config the store's objects compile to.
///
/// # Errors
/// As [`config::load_objects`].
pub fn compile_config(objects: &Objects, ctx: &CompileCtx) -> Result<Config, ConfigError> {
    config::load_objects(objects.values().map(|s| &*s.object), "store", ctx)
}

/// The first compile, before the data path exists.
///
/// # Errors
/// As [`compile::compile`].
pub fn compile_first(cfg: &Config, host: &Host) -> Result<Compiled, ConfigError> {
    let mut hops = host.hops.lock().unwrap_or_else(|p| p.into_inner());
    let empty = BaseParts::default();
    compile::compile(
        1,
        empty.base(),
        Specs::Whole(&cfg.services),
        &host.links,
        &host.masq,
        &mut hops,
        RESOLVE_TIMEOUT,
    )
}

/// What a publish needs besides the new table and steering sets.
enum After {
    /// Only next hops changed (same services and endpoints): nothing to
    /// flush, nothing else to update.
    Hops,
    /// Endpoints may have left: flush the UDP/SCTP flows of those that did.
    Endpoints,
    /// As [`After::Endpoints`], and bring the DNS zone, health-check
    /// servers and checks' targets to this config.
    Config(Config),
}

/// What a publish did.
#[derive(Clone, Copy, Debug)]
pub struct Published {
    /// The epoch (service-table version) now in service.
    pub epoch: u64,
    /// Virtual services in it.
    pub services: usize,
    /// UDP/SCTP flows to removed endpoints flushed.
    pub flushed: usize,
}

/// The data path's side of the reconciler: steering maps, the published
/// snapshot, DNS and health servers, and what the last publish left
/// (unresolved next hops, removed endpoints).
pub struct Publisher {
    host: Host,
    steering: Vec<Steering>,
    shared: Arc<Shared>,
    counters: Vec<Arc<Counters>>,
    epoch: u64,
    current_steer: SteerSets,
    unresolved: Vec<Addr>,
    /// The config in service, as last built whole; None after a change
    /// published without it ([`Publisher::publish_delta`]): then it is
    /// built again only when needed ([`Publisher::republish_health`]).
    applied: Option<Config>,
    /// What the table in service names, counted: where its flows may go,
    /// what is steered, which addresses need next hops.
    tally: Tally,
    /// When each removed endpoint left; forgotten once its flows must be gone.
    removed_since: HashMap<(Addr, u16, u8), Instant>,
    removed_ttl: Duration,
    /// The epochs that freed a service slot or backend id, and when
    /// they were published, oldest first ([`Publisher::reuse_upto`]).
    freed_at: VecDeque<(u64, Instant)>,
    /// The latest epoch whose freed numbers may be reused, as of the last
    /// [`Publisher::note_freed`].
    reuse_floor: u64,
    /// Hops that moved (old → new, and when), for [`Snapshot::moved`];
    /// forgotten after `removed_ttl`, when no flow can hold the old one.
    moved: HashMap<L2Hop, (L2Hop, Instant)>,
    dns: Option<(DnsServer, String)>,
    health: HealthServer,
    /// Traffic totals across swaps; every publish goes through it.
    stats: Option<crate::stats::Stats>,
    /// Real-server health checks: the registry the probes update.
    checks: Checks,
    /// The down targets the compiles apply (a copy of the registry's,
    /// taken at each publish, so a change is seen as one).
    health_down: HashSet<Target>,
    /// Called after every publish (the BGP announcer's wake-up, so that a
    /// VIP that gained or lost its last endpoint is announced or withdrawn
    /// at once, [`crate::bgp`]).
    on_publish: Option<Box<dyn Fn() + Send + Sync>>,
}

/// The parts a publisher hands back at shutdown.
pub struct Parts {
    /// The steering programs (detach on drop).
    pub steering: Vec<Steering>,
    /// DNS server.
    pub dns: Option<DnsServer>,
    /// Health-check server.
    pub health: HealthServer,
}

impl Publisher {
    /// A publisher around the data path started with `first` (epoch 1),
    /// compiled from `applied`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        host: Host,
        steering: Vec<Steering>,
        shared: Arc<Shared>,
        counters: Vec<Arc<Counters>>,
        first: (SteerSets, Vec<Addr>),
        applied: Config,
        dns: Option<(DnsServer, String)>,
        health: HealthServer,
    ) -> Publisher {
        let removed_ttl = {
            let t = shared.flows.timeouts();
            Duration::from_secs(u64::from(t.tcp_established) + u64::from(t.tcp_fin_wait))
        };
        let checks = Checks::default();
        checks.set_targets(&applied);
        let tally = Tally::of(&shared.snapshot.load().services);
        Publisher {
            tally,
            checks,
            health_down: HashSet::new(),
            host,
            steering,
            shared,
            counters,
            epoch: 1,
            current_steer: first.0,
            unresolved: first.1,
            applied: Some(applied),
            removed_since: HashMap::new(),
            freed_at: VecDeque::new(),
            reuse_floor: 0,
            removed_ttl,
            moved: HashMap::new(),
            dns,
            health,
            stats: None,
            on_publish: None,
        }
    }

    /// Calls `f` after every publish from now on (it must not block).
    pub fn set_on_publish(&mut self, f: Box<dyn Fn() + Send + Sync>) {
        self.on_publish = Some(f);
    }

    /// The snapshot the workers read now (for listings such as
    /// `ipvsadm -L`: connection counts live in its service table).
    pub fn snapshot(&self) -> Arc<sluice_dataplane::pipeline::Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Publishes through `s` from now on, so that traffic totals survive
    /// table swaps ([`crate::stats`]).
    pub fn set_stats(&mut self, s: crate::stats::Stats) {
        self.stats = Some(s);
    }

    /// The traffic totals, once [`Publisher::set_stats`] was called.
    pub fn stats(&self) -> Option<&crate::stats::Stats> {
        self.stats.as_ref()
    }

    /// Puts `snap` in service: through the traffic totals when they are
    /// kept ([`Publisher::set_stats`]), so no packet count is lost at the
    /// swap.
    fn publish_snapshot(&mut self, snap: sluice_dataplane::pipeline::Snapshot, tally: TallyUpdate) {
        match tally {
            TallyUpdate::Same => {}
            TallyUpdate::Whole(t) => self.tally = t,
            TallyUpdate::Change(c) => self.tally.commit(&c),
        }
        match &self.stats {
            Some(s) => s.swap(snap),
            None => self.shared.publish(snap),
        }
        if let Some(f) = &self.on_publish {
            f();
        }
    }

    /// The epoch in service.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The latest epoch whose freed service slots and backend ids may be
    /// handed out again: one published more than the removed-endpoint
    /// time-to-live ago (the TCP established plus FIN-wait timeouts), by
    /// when every flow created before it has expired or, its endpoint
    /// being gone, been reset at its next packet.
    fn reuse_upto(&self) -> u64 {
        let now = Instant::now();
        let upto = self
            .freed_at
            .iter()
            .take_while(|(_, t)| now.saturating_duration_since(*t) > self.removed_ttl)
            .last()
            .map_or(0, |(e, _)| *e);
        self.reuse_floor.max(upto)
    }

    /// Notes that `epoch`, just published, freed numbers; forgets the
    /// epochs [`Publisher::reuse_upto`] has passed.
    fn note_freed(&mut self, epoch: u64) {
        self.reuse_floor = self.reuse_upto();
        let upto = self.reuse_floor;
        while self.freed_at.front().is_some_and(|(e, _)| *e <= upto) {
            self.freed_at.pop_front();
        }
        self.freed_at.push_back((epoch, Instant::now()));
    }

    /// Compiles `specs` for the next epoch and carries the removed
    /// endpoints (those of the table in service that the new one lacks,
    /// and earlier ones not back, but not those in `forget`) into it;
    /// `retry`: resolve the unresolved next hops again.
    fn prepare(
        &self,
        specs: Specs<'_>,
        forget: &HashSet<(Addr, u16, u8)>,
        retry: bool,
        timeout: Duration,
    ) -> Result<Compiled, ConfigError> {
        let old = self.shared.snapshot.load();
        let base = Base {
            table: &old.services,
            reuse_upto: self.reuse_upto(),
            tally: &self.tally,
            removed: &old.removed,
            nexthops: &old.nexthops,
            unresolved: &self.unresolved,
            steer: &self.current_steer,
            forget,
            retry,
        };
        let mut c = {
            let mut hops = self.host.hops.lock().unwrap_or_else(|p| p.into_inner());
            compile::compile(
                self.epoch + 1,
                base,
                specs,
                &self.host.links,
                &self.host.masq,
                &mut hops,
                timeout,
            )?
        };
        c.snapshot.moved = self.moved_hops();
        Ok(c)
    }

    /// The one publish: steer the union, swap the snapshot in, steer the
    /// new sets, then what `after` says the change needs.
    ///
    /// # Errors
    /// [`SteerError`] when the union could not be steered; then nothing was
    /// published.
    fn swap(&mut self, c: Compiled, after: After) -> Result<Published, SteerError> {
        let services = c.snapshot.services.len();
        let epoch = c.snapshot.services.version();
        let freed = c.snapshot.services.freed_ids();
        // While both tables are live the maps hold the union: the new
        // sets' additions go in first, their removals after the swap.
        // Unchanged sets leave the maps alone (most endpoint changes); a
        // change writes only its difference.
        let diff = match &c.steer {
            Some(next) => {
                let (add, del) = diff_sets(&self.current_steer, next);
                let snat = union_sets(
                    &SteerSets {
                        snat: self.current_steer.snat.clone(),
                        ..SteerSets::default()
                    },
                    &SteerSets {
                        snat: next.snat.clone(),
                        ..SteerSets::default()
                    },
                )
                .snat;
                if let Err(e) = steer_add(&mut self.steering, &add, &snat, &self.host.masq.ports) {
                    // Nothing is published: put back the sets in service on
                    // every map (some may have taken part of `add`; each
                    // map's shadow says which), or a later difference,
                    // taken against those sets, would never remove them.
                    if let Err(e) = apply_steer(
                        &mut self.steering,
                        &self.current_steer,
                        &self.host.masq.ports,
                    ) {
                        warn!("steering maps not restored after a failed change: {e}");
                    }
                    return Err(e);
                }
                Some(del)
            }
            None => None,
        };
        self.publish_snapshot(c.snapshot, c.tally);
        self.epoch = epoch;
        self.unresolved = c.unresolved;
        if freed {
            self.note_freed(epoch);
        }
        if let (Some(del), Some(next)) = (diff, c.steer) {
            match steer_del(&mut self.steering, &del, &next.snat, &self.host.masq.ports) {
                Ok(()) => self.current_steer = next,
                Err(e) => {
                    // The union (a superset) stays; nothing is lost but the
                    // pruning of old entries, retried at the next change.
                    warn!("steering maps keep the old entries too: {e}");
                    self.current_steer = union_sets(&self.current_steer, &next);
                }
            }
        }
        if matches!(after, After::Hops) {
            return Ok(Published {
                epoch,
                services,
                flushed: 0,
            });
        }
        {
            let snap = self.shared.snapshot.load();
            self.removed_since.retain(|k, _| snap.removed.contains(k));
            for k in snap.removed.iter() {
                self.removed_since.entry(*k).or_insert_with(Instant::now);
            }
        }
        // UDP/SCTP flows to endpoints that left are flushed (kube-proxy's
        // conntrack cleanup), so the client's next datagram is scheduled
        // anew. TCP ones stay until their next segment, which resets the
        // client.
        let flushed = if c.left { self.flush_left() } else { 0 };
        if let After::Config(cfg) = after {
            self.apply_config(cfg);
        }
        Ok(Published {
            epoch,
            services,
            flushed,
        })
    }

    /// Removes the UDP/SCTP flows whose endpoint the table in service no
    /// longer has; returns how many.
    fn flush_left(&self) -> usize {
        let snap = self.shared.snapshot.load();
        let live = &self.tally.live;
        // A direct-routing flow is named by next hop, not address
        // (compile::carry_removed_hops).
        let dr: HashSet<(L2Hop, u16, u8)> = self
            .tally
            .dr
            .keys()
            .filter_map(|&(a, port, proto)| {
                let nh = snap.nexthops.get(&a)?;
                Some((nh.hop, port, proto))
            })
            .collect();
        self.shared.flows.remove_where(|e| {
            e.reply.proto != proto::TCP
                && if is_dr_flow(e) {
                    let hop = snap.current_hop(e.orig_hop);
                    !dr.contains(&(hop, e.original.dport, e.original.proto))
                } else {
                    !live.contains(&(e.reply.src, e.reply.sport, e.reply.proto))
                }
        })
    }

    /// Brings what is built from the whole config (DNS zone, health-check
    /// servers, the checks' targets) to `cfg`, now in service.
    fn apply_config(&mut self, cfg: Config) {
        if let Some((d, domain)) = &self.dns {
            match DnsZone::new(domain, &cfg.dns) {
                Ok(z) => d.update(z),
                Err(e) => error!("cluster DNS zone not updated: {e}"),
            }
        }
        if let Err(e) = self.health.update(&cfg.health_checks) {
            warn!("health checks: {e}");
        }
        self.checks.set_targets(&cfg);
        self.applied = Some(cfg);
    }

    /// Compiles and publishes `cfg`.
    ///
    /// # Errors
    /// [`ApplyError`]; nothing was published.
    pub fn publish(&mut self, cfg: Config) -> Result<Published, ApplyError> {
        let before = std::mem::replace(&mut self.health_down, self.checks.down());
        let r = self.publish_whole(cfg);
        if r.is_err() {
            self.health_down = before;
        }
        r
    }

    /// [`Publisher::publish`] with [`Publisher::health_down`] taken: the
    /// table built from every spec, with the checks' overlay.
    fn publish_whole(&mut self, cfg: Config) -> Result<Published, ApplyError> {
        let c = {
            let overlaid = Checks::overlay(&cfg, &self.health_down);
            self.prepare(
                Specs::Whole(&overlaid.services),
                &HashSet::new(),
                false,
                RESOLVE_TIMEOUT,
            )?
        };
        Ok(self.swap(c, After::Config(cfg))?)
    }

    /// Publishes the change `delta` (the incremental compile's) to the
    /// config in service: the table is built from the change alone, and
    /// the whole config — `cfg`, called only then — is built only when the
    /// change needs it ([`Delta::needs_config`]) or while a real-server
    /// check holds a server down (now or in the table in service), as the
    /// checks' overlay rewrites specs the change does not name.
    ///
    /// # Errors
    /// [`ApplyError`]; nothing was published.
    pub fn publish_delta(
        &mut self,
        delta: &Delta,
        cfg: impl FnOnce() -> Config,
    ) -> Result<Published, ApplyError> {
        let before = std::mem::replace(&mut self.health_down, self.checks.down());
        let overlaid = !before.is_empty() || !self.health_down.is_empty();
        let r = if overlaid {
            self.publish_whole(cfg())
        } else {
            self.prepare(
                Specs::Changed(delta),
                &HashSet::new(),
                false,
                RESOLVE_TIMEOUT,
            )
            .map_err(ApplyError::from)
            .and_then(|c| {
                let after = if delta.needs_config() {
                    After::Config(cfg())
                } else {
                    After::Endpoints
                };
                Ok(self.swap(c, after)?)
            })
        };
        match &r {
            Err(_) => self.health_down = before,
            // The config in service is no longer the one kept.
            Ok(_) if !overlaid && !delta.needs_config() => self.applied = None,
            Ok(_) => {}
        }
        r
    }

    /// The real-server health checks.
    pub fn checks(&self) -> &Checks {
        &self.checks
    }

    /// Republishes the config in service with the checks' current overlay,
    /// if it differs from the one published; None when it does not.
    /// `cfg` builds the config in service when the publisher no longer
    /// keeps it (None: it cannot be built; nothing is republished).
    pub fn republish_health(
        &mut self,
        cfg: impl FnOnce() -> Option<Config>,
    ) -> Option<Result<Published, ApplyError>> {
        if self.checks.down() == self.health_down {
            return None;
        }
        let cfg = self.applied.clone().or_else(cfg)?;
        let r = self.publish(cfg);
        match &r {
            Ok(p) => info!(
                "health checks: epoch {} published, {} real server(s) down",
                p.epoch,
                self.health_down.len()
            ),
            Err(e) => error!("health checks: republish failed: {e}"),
        }
        Some(r)
    }

    /// Waits until every worker has loaded `epoch` (or a later one); false
    /// after `timeout`.
    pub fn wait_seen(&self, epoch: u64, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self
                .counters
                .iter()
                .all(|c| c.table_version.load(Ordering::Acquire) >= epoch)
            {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Retries the next hops still unresolved; republishes if some were.
    pub fn retry_unresolved(&mut self) {
        if self.unresolved.is_empty() {
            return;
        }
        let same = Specs::Changed(&Delta::default());
        let Ok(c) = self.prepare(same, &HashSet::new(), true, RETRY_RESOLVE_TIMEOUT) else {
            return;
        };
        if c.unresolved.len() < self.unresolved.len() {
            let more = self.unresolved.len() - c.unresolved.len();
            if self.swap(c, After::Hops).is_ok() {
                info!("next hops resolved for {more} more backend(s)");
            }
        }
    }

    /// Follows the kernel: re-reads the backends that `changes` concern
    /// and, when a hop moved or resolved, republishes the table in service
    /// (shared, same services) with the new hops. Established flows
    /// pinned to an old hop follow it through [`Snapshot::moved`].
    pub fn follow_kernel(&mut self, changes: &Changes) -> Option<Published> {
        let moved = {
            let mut hops = self.host.hops.lock().unwrap_or_else(|p| p.into_inner());
            let moved = hops.refresh(changes, &self.host.links);
            for m in &moved {
                if let Some(old) = m.old {
                    if !hops.hop_in_use(old.hop, &m.addr) {
                        note_moved(&mut self.moved, old.hop, m.new.hop, Instant::now());
                    }
                }
            }
            moved
        };
        if moved.is_empty() {
            return None;
        }
        let old = self.shared.snapshot.load();
        let mut nexthops = old.nexthops.clone();
        let mut snat: Vec<Addr> = Vec::new();
        for m in &moved {
            info!(
                "backend {}: next hop now {:02x?} on port {} (was {:?})",
                m.addr,
                m.new.hop.mac,
                m.new.hop.port,
                m.old.map(|o| o.hop.mac)
            );
            nexthops.insert(m.addr, m.new);
            if !self.current_steer.snat.contains(&m.new.snat) && !snat.contains(&m.new.snat) {
                snat.push(m.new.snat);
            }
        }
        // A hop through a new source adds it to the SNAT set (a superset
        // until the next whole compile: nothing is lost).
        let steer = (!snat.is_empty()).then(|| {
            let mut s = self.current_steer.clone();
            s.snat.extend(snat);
            s.snat.sort_unstable();
            s
        });
        let c = Compiled {
            snapshot: Snapshot {
                services: old.services.with_version(self.epoch + 1),
                ports: old.ports.clone(),
                nexthops,
                masq: old.masq.clone(),
                removed: old.removed.clone(),
                moved: self.moved_hops(),
            },
            steer,
            unresolved: self
                .unresolved
                .iter()
                .filter(|a| !moved.iter().any(|m| m.addr == **a))
                .copied()
                .collect(),
            tally: TallyUpdate::Same,
            left: false,
        };
        drop(old);
        match self.swap(c, After::Hops) {
            Ok(p) => Some(p),
            Err(e) => {
                warn!("next hops not republished: {e}");
                None
            }
        }
    }

    /// The moved hops as the snapshot carries them.
    fn moved_hops(&self) -> HashMap<L2Hop, L2Hop> {
        self.moved.iter().map(|(k, (v, _))| (*k, *v)).collect()
    }

    /// Forgets the removed endpoints whose flows must have timed out.
    pub fn prune_removed(&mut self) {
        let gone: HashSet<_> =
            expired_removals(&self.removed_since, Instant::now(), self.removed_ttl)
                .into_iter()
                .collect();
        if gone.is_empty() {
            return;
        }
        let same = Specs::Changed(&Delta::default());
        let Ok(c) = self.prepare(same, &gone, false, RETRY_RESOLVE_TIMEOUT) else {
            return;
        };
        if self.swap(c, After::Endpoints).is_ok() {
            info!(
                "forgot {} endpoint(s) removed more than {:?} ago",
                gone.len(),
                self.removed_ttl
            );
        }
    }

    /// Forgets the moved hops that no flow can hold any more; republishes
    /// if one was.
    pub fn prune_moved(&mut self) {
        let now = Instant::now();
        let ttl = self.removed_ttl;
        let before = self.moved.len();
        self.moved
            .retain(|_, (_, since)| now.saturating_duration_since(*since) <= ttl);
        if self.moved.len() == before {
            return;
        }
        let old = self.shared.snapshot.load();
        let c = Compiled {
            snapshot: Snapshot {
                services: old.services.with_version(self.epoch + 1),
                ports: old.ports.clone(),
                nexthops: old.nexthops.clone(),
                masq: old.masq.clone(),
                removed: old.removed.clone(),
                moved: self.moved_hops(),
            },
            steer: None,
            unresolved: self.unresolved.clone(),
            tally: TallyUpdate::Same,
            left: false,
        };
        drop(old);
        if let Err(e) = self.swap(c, After::Hops) {
            warn!("moved next hops not pruned: {e}");
        }
    }

    /// Whether removed endpoints are still remembered.
    pub fn has_removed(&self) -> bool {
        !self.removed_since.is_empty()
    }

    /// Whether next hops are still unresolved.
    pub fn has_unresolved(&self) -> bool {
        !self.unresolved.is_empty()
    }

    /// Takes the publisher apart for shutdown.
    pub fn into_parts(self) -> Parts {
        Parts {
            steering: self.steering,
            dns: self.dns.map(|(d, _)| d),
            health: self.health,
        }
    }
}

/// Records that flows pinned to `old` go to `new` from now on: earlier
/// moves that ended at `old` now end at `new` too, and `new` itself is
/// nobody's old hop any more (it is current again).
fn note_moved(moved: &mut HashMap<L2Hop, (L2Hop, Instant)>, old: L2Hop, new: L2Hop, now: Instant) {
    if old == new {
        return;
    }
    for (to, since) in moved.values_mut() {
        if *to == old {
            *to = new;
            *since = now;
        }
    }
    moved.remove(&new);
    moved.insert(old, (new, now));
}

/// The incremental compile of `store` (None, logged, when it does not
/// compile: every write then compiles whole, as the store would refuse it).
fn build_incremental(store: &Store, ctx: &CompileCtx) -> Option<Incremental> {
    match Incremental::build(store.objects(), ctx.clone()) {
        Ok(i) => Some(i),
        Err(e) => {
            warn!("incremental compile unavailable, compiling every change whole: {e}");
            None
        }
    }
}

/// What a committed write did.
#[derive(Debug)]
pub struct Applied {
    /// The store's commit (events, revision).
    pub commit: Commit<Published>,
    /// Whether every worker loaded the new table before the answer.
    pub seen: bool,
}

/// The store and the publisher: every write goes through [`Reconciler::apply`].
pub struct Reconciler {
    store: Store,
    publisher: Publisher,
    events: broadcast::Sender<Event>,
    /// Saves every committed state (`--state-dir`), off this thread.
    persister: Option<crate::persist::Persister>,
    /// Apply-to-visible latencies (`sluice_sync_duration_seconds`).
    sync: Option<crate::metrics::Sync>,
    /// The incremental compile of the store's objects; None until built
    /// or after a publish that failed past it (then rebuilt).
    inc: Option<Incremental>,
}

impl Reconciler {
    /// A reconciler over a store already compiled into the data path.
    pub fn new(store: Store, publisher: Publisher) -> Reconciler {
        let (events, _) = broadcast::channel(4096);
        let inc = build_incremental(&store, &publisher.host.ctx);
        Reconciler {
            store,
            publisher,
            events,
            persister: None,
            sync: None,
            inc,
        }
    }

    /// Records each write's apply-to-visible latency in `s`.
    pub fn set_sync(&mut self, s: crate::metrics::Sync) {
        self.sync = Some(s);
    }

    /// Hands every committed state to `p` from now on ([`crate::persist`]:
    /// the write is batched and never delays the answer).
    pub fn set_persister(&mut self, p: crate::persist::Persister) {
        self.persister = Some(p);
    }

    /// The desired state.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The publisher.
    pub fn publisher(&mut self) -> &mut Publisher {
        &mut self.publisher
    }

    /// The publisher, to read.
    pub fn publisher_ref(&self) -> &Publisher {
        &self.publisher
    }

    /// A receiver of every event committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Validates, compiles and publishes `batch`, then waits until the
    /// workers have loaded the new table.
    ///
    /// # Errors
    /// A [`StoreError`]; the store and the data path are unchanged.
    pub fn apply(&mut self, batch: Batch) -> Result<Applied, StoreError<ApplyError>> {
        let arrived = Instant::now();
        let ctx = self.publisher.host.ctx.clone();
        let publisher = &mut self.publisher;
        let mut inc = self.inc.take().filter(|i| *i.ctx() == ctx);
        let mut published = false;
        let r = self
            .store
            .commit_with(batch, SystemTime::now(), |objects, events| {
                let Some(inc) = inc.as_mut() else {
                    let cfg = compile_config(objects, &ctx)?;
                    return publisher.publish(cfg);
                };
                let changed: BTreeSet<Key> = events.iter().map(|e| e.key.clone()).collect();
                // A refused change leaves the cache as it was.
                let delta = inc.apply(objects, &changed)?;
                published = true;
                let inc: &Incremental = inc;
                publisher.publish_delta(&delta, || inc.config())
            });
        self.inc = match (inc, published, r.is_ok()) {
            // Compiled but not published: the cache is ahead of the store.
            (Some(_), true, false) | (None, _, true) => build_incremental(&self.store, &ctx),
            (inc, _, _) => inc,
        };
        let commit = r?;
        let seen = self.publisher.wait_seen(commit.output.epoch, SEEN_TIMEOUT);
        if !seen {
            warn!(
                "epoch {}: not every worker loaded the table within {SEEN_TIMEOUT:?}",
                commit.output.epoch
            );
        }
        if let (Some(s), true) = (&self.sync, seen) {
            s.observe(arrived.elapsed());
        }
        if let (Some(p), false) = (&self.persister, commit.events.is_empty()) {
            p.submit(crate::persist::Pending::after(&self.store, &commit.events));
        }
        for e in &commit.events {
            // No receiver is no error.
            let _ = self.events.send(e.clone());
        }
        Ok(Applied { commit, seen })
    }

    /// Republishes the config in service with the real-server checks'
    /// current overlay, if it changed ([`Publisher::republish_health`]).
    pub fn republish_health(&mut self) -> Option<Result<Published, ApplyError>> {
        let (inc, store, ctx) = (&self.inc, &self.store, &self.publisher.host.ctx.clone());
        self.publisher.republish_health(|| match inc {
            Some(i) => Some(i.config()),
            None => compile_config(store.objects(), ctx)
                .map_err(|e| error!("health checks: the config in service does not compile: {e}"))
                .ok(),
        })
    }

    /// Takes the reconciler apart for shutdown.
    pub fn into_publisher(self) -> Publisher {
        self.publisher
    }
}
