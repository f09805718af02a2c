//! Compiling the desired state into what the data path reads: the
//! service table, next hops from the kernel (route + neighbour), SNAT
//! sources and the sets the steering XDP program matches; and the carry-over
//! of removed endpoints from the snapshot in service into the next one.
//!
//! The service table is built from the one in service ([`Base`]): from
//! the incremental compile's change ([`ServiceTable::build_changed`],
//! `incremental.rs`) when there is one, else from the whole spec list
//! ([`ServiceTable::build_from`]); either way front ends keep their slots,
//! backends their ids, and unchanged services are shared with their state.

use std::collections::BTreeSet;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use sluice_dataplane::pipeline::{MasqPolicy, NextHop, PortInfo, Snapshot};
use sluice_dataplane::service::{ServiceSpec, ServiceTable, VipKey};
use sluice_dataplane::snat::PortRanges;
use sluice_dataplane::steer::{SteerError, Steering};
use sluice_dataplane::types::Addr;
use tracing::warn;

use super::incremental::Delta;
use super::tally::{Change, Crossed, Endpoint, Tally};
use crate::config::ConfigError;
use crate::netlink::{self, Link};
use crate::nexthop::NextHopCache;

/// Sets of addresses the steering program must send to the sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteerSets {
    /// Service front ends.
    pub vips: Vec<VipKey>,
    /// Backends (address, port, protocol) whose replies come back.
    pub backends: Vec<(Addr, u16, u8)>,
    /// The LB's own addresses used as SNAT sources.
    pub snat: Vec<Addr>,
}

/// The compiled state for one config version.
pub struct Compiled {
    /// What the workers read.
    pub snapshot: Snapshot,
    /// What the XDP programs match, when it differs from the sets in
    /// service (a whole compile always builds them).
    pub steer: Option<SteerSets>,
    /// Backends whose next hop could not be resolved (retried later).
    pub unresolved: Vec<Addr>,
    /// How the tally of the table in service becomes this one's.
    pub tally: TallyUpdate,
    /// Whether an endpoint that flows may go to is gone (their UDP/SCTP
    /// flows are flushed).
    pub left: bool,
}

/// How a publish brings the tally in service to its table's.
#[derive(Debug)]
pub enum TallyUpdate {
    /// The same services (only next hops or removed endpoints changed).
    Same,
    /// A whole compile's.
    Whole(Tally),
    /// An incremental compile's change to it.
    Change(Change),
}

/// The table a compile starts from — the one in service, whose slots,
/// backend ids and unchanged services the new one keeps — and what the
/// publish of it left.
#[derive(Clone, Copy, Debug)]
pub struct Base<'a> {
    /// The table in service (an empty one for the first compile).
    pub table: &'a ServiceTable,
    /// Slots and backend ids freed in this version or earlier may be
    /// handed out again: no flow of that time can be left.
    pub reuse_upto: u64,
    /// The tally of `table`.
    pub tally: &'a Tally,
    /// The removed endpoints carried in the snapshot in service.
    pub removed: &'a hashbrown::HashSet<Endpoint>,
    /// Its next hops.
    pub nexthops: &'a HashMap<Addr, NextHop>,
    /// The backends it could not resolve.
    pub unresolved: &'a [Addr],
    /// The steering sets in service.
    pub steer: &'a SteerSets,
    /// Removed endpoints to forget (their flows must be gone).
    pub forget: &'a HashSet<Endpoint>,
    /// Whether to try the unresolved next hops again (an incremental
    /// compile otherwise resolves only the addresses it adds).
    pub retry: bool,
}

/// A [`Base`]'s parts, owned; the default is nothing in service (the
/// first compile's).
#[derive(Default)]
pub struct BaseParts {
    table: ServiceTable,
    tally: Tally,
    removed: hashbrown::HashSet<Endpoint>,
    nexthops: HashMap<Addr, NextHop>,
    steer: SteerSets,
    forget: HashSet<Endpoint>,
}

impl BaseParts {
    /// The base these parts make.
    pub fn base(&self) -> Base<'_> {
        Base {
            table: &self.table,
            reuse_upto: 0,
            tally: &self.tally,
            removed: &self.removed,
            nexthops: &self.nexthops,
            unresolved: &[],
            steer: &self.steer,
            forget: &self.forget,
            retry: false,
        }
    }
}

/// What the next table holds, against [`Base::table`].
#[derive(Clone, Copy, Debug)]
pub enum Specs<'a> {
    /// Every spec: the table is built from the whole list
    /// ([`ServiceTable::build_from`]).
    Whole(&'a [ServiceSpec]),
    /// What changed since the table in service (the incremental
    /// compile's): the table is built from the change alone
    /// ([`ServiceTable::build_changed`]); an empty change republishes the
    /// same services.
    Changed(&'a Delta),
}

/// Compiles `specs` into a snapshot: service table (built from `base`),
/// next hops (from `hops`, which resolves only backends it has not seen),
/// SNAT sources, the steering sets, and the endpoints removed since
/// `base` carried into it ([`carry_removed_hops`]).
///
/// A whole compile walks every service. An incremental one costs what the
/// change names: it counts only the changed services ([`Change`]) and
/// touches next hops, the removed set and the steering sets only for the
/// keys that appeared in or vanished from the whole table.
///
/// # Errors
/// A [`ConfigError`] when the table cannot be built (duplicate front ends)
/// or a new spec's FULLNAT local address is not the host's.
pub fn compile(
    version: u64,
    base: Base<'_>,
    specs: Specs<'_>,
    links: &[Link],
    masq: &MasqPolicy,
    hops: &mut NextHopCache,
    resolve_timeout: Duration,
) -> Result<Compiled, ConfigError> {
    let c = match specs {
        Specs::Whole(all) => {
            check_local_addrs_owned(all)?;
            let services = base
                .table
                .build_from(version, all.to_vec(), base.reuse_upto)
                .map_err(ConfigError::from)?;
            whole(services, &base, links, masq, hops, resolve_timeout)
        }
        Specs::Changed(d) => {
            check_local_addrs_owned(&d.upserted)?;
            let services = base
                .table
                .build_changed(version, &d.removed, d.upserted.clone(), base.reuse_upto)
                .map_err(ConfigError::from)?;
            let touched = d.removed.iter().chain(d.upserted.iter().map(|s| &s.vip));
            let change = Change::of(base.table, &services, touched);
            changed(services, change, &base, links, masq, hops, resolve_timeout)
        }
    };
    for addr in &c.unresolved {
        warn!("backend {addr}: next hop not resolved yet; new flows to it are dropped until it is");
    }
    Ok(c)
}

/// A compile's snapshot: its table, the ports' MACs and MTUs, next hops,
/// masquerading and removed endpoints (the moved hops are the
/// publisher's to add).
fn snapshot(
    services: ServiceTable,
    links: &[Link],
    nexthops: HashMap<Addr, NextHop>,
    masq: &MasqPolicy,
    removed: hashbrown::HashSet<Endpoint>,
) -> Snapshot {
    Snapshot {
        services,
        ports: links
            .iter()
            // An IP packet is at most 65535 bytes: a larger MTU (lo's
            // 65536) limits nothing.
            .map(|l| PortInfo {
                mac: l.mac,
                mtu: u16::try_from(l.mtu).unwrap_or(u16::MAX),
            })
            .collect(),
        nexthops,
        masq: masq.clone(),
        removed,
        moved: Default::default(),
    }
}

/// [`compile`] of a table built from every spec.
fn whole(
    services: ServiceTable,
    base: &Base<'_>,
    links: &[Link],
    masq: &MasqPolicy,
    hops: &mut NextHopCache,
    timeout: Duration,
) -> Compiled {
    let tally = Tally::of(&services);
    let addrs: BTreeSet<Addr> = tally.addrs.keys().copied().collect();
    let (mut nexthops, unresolved) = hops.resolve_all(&addrs, links, timeout);
    let removed: hashbrown::HashSet<Endpoint> = base
        .tally
        .live
        .keys()
        .chain(base.removed.iter())
        .filter(|b| !tally.live.contains(b) && !base.forget.contains(b))
        .copied()
        .collect();
    carry_removed_hops(&mut nexthops, &removed, base.nexthops);
    let left = base.tally.live.keys().any(|k| !tally.live.contains(k))
        || base.tally.dr.keys().any(|k| !tally.dr.contains(k));
    let steer = steer_sets(
        tally.vips.keys().copied(),
        tally.steered.keys().chain(removed.iter()).copied(),
        snat_sources(
            tally.nat_addrs.keys(),
            tally.local_addrs.keys(),
            &nexthops,
            masq,
        ),
    );
    Compiled {
        snapshot: snapshot(services, links, nexthops, masq, removed),
        steer: Some(steer),
        unresolved,
        tally: TallyUpdate::Whole(tally),
        left,
    }
}

/// [`compile`] of a table built from a change: `change` is what it did to
/// the counts of `base`'s table.
fn changed(
    services: ServiceTable,
    change: Change,
    base: &Base<'_>,
    links: &[Link],
    masq: &MasqPolicy,
    hops: &mut NextHopCache,
    timeout: Duration,
) -> Compiled {
    let crossed = change.crossed(base.tally);
    let (nexthops, unresolved, resolved) = changed_hops(&crossed, base, links, hops, timeout);
    let mut nexthops = nexthops;
    let removed = changed_removed(&crossed, base);
    let removed_moved =
        removed.len() != base.removed.len() || removed.iter().any(|k| !base.removed.contains(k));
    if removed_moved {
        // Hops of endpoints no longer carried, at addresses no longer
        // named, go with them.
        for (a, _, _) in base.removed.iter().filter(|k| !removed.contains(*k)) {
            if !change.addr_named_after(base.tally, a) && !removed.iter().any(|k| k.0 == *a) {
                nexthops.remove(a);
            }
        }
    }
    carry_removed_hops(&mut nexthops, &removed, base.nexthops);
    let steered_after = |k: &Endpoint| change.steered_after(base.tally, k) || removed.contains(k);
    let steered_before = |k: &Endpoint| base.tally.steered.contains(k) || base.removed.contains(k);
    let mut touched = crossed
        .steered
        .up
        .iter()
        .chain(&crossed.steered.down)
        .chain(removed.symmetric_difference(base.removed));
    let backends_moved = touched.any(|k| steered_after(k) != steered_before(k));
    let snat_may_move = !crossed.nat_addrs.is_empty()
        || !crossed.local_addrs.is_empty()
        || resolved
        || masq.addrs.all().any(|a| !base.steer.snat.contains(a));
    let snat = snat_may_move.then(|| {
        snat_sources(
            change.nat_addrs_after(base.tally),
            change.local_addrs_after(base.tally),
            &nexthops,
            masq,
        )
    });
    let snat_moved = snat.as_ref().is_some_and(|s| *s != base.steer.snat);
    let steer = (!crossed.vips.is_empty() || backends_moved || snat_moved).then(|| {
        steer_sets(
            change.vips_after(base.tally).copied(),
            change
                .steered_keys_after(base.tally)
                .chain(removed.iter())
                .copied(),
            snat.unwrap_or_else(|| base.steer.snat.clone()),
        )
    });
    Compiled {
        snapshot: snapshot(services, links, nexthops, masq, removed),
        steer,
        unresolved,
        left: crossed.left(),
        tally: TallyUpdate::Change(change),
    }
}

/// The next hops after a change: those in service, less the addresses no
/// longer named, plus the new addresses resolved (and the unresolved ones
/// retried when [`Base::retry`]). Also the addresses still unresolved, in
/// order, and whether some hop was resolved.
fn changed_hops(
    crossed: &Crossed,
    base: &Base<'_>,
    links: &[Link],
    hops: &mut NextHopCache,
    timeout: Duration,
) -> (HashMap<Addr, NextHop>, Vec<Addr>, bool) {
    let gone: HashSet<Addr> = crossed.addrs.down.iter().copied().collect();
    let mut add: BTreeSet<Addr> = crossed.addrs.up.iter().copied().collect();
    if base.retry {
        add.extend(base.unresolved.iter().filter(|a| !gone.contains(a)));
    }
    let mut nexthops = base.nexthops.clone();
    for a in &gone {
        nexthops.remove(a);
    }
    let (found, still) = hops.resolve_changed(&add, &gone, links, timeout);
    let resolved = !found.is_empty();
    nexthops.extend(found);
    let mut unresolved: BTreeSet<Addr> = base
        .unresolved
        .iter()
        .filter(|a| !gone.contains(a) && !add.contains(a))
        .copied()
        .collect();
    unresolved.extend(still);
    (nexthops, unresolved.into_iter().collect(), resolved)
}

/// The removed endpoints after a change: those carried, plus the
/// endpoints that vanished, less those back and those to forget.
fn changed_removed(crossed: &Crossed, base: &Base<'_>) -> hashbrown::HashSet<Endpoint> {
    let mut removed = base.removed.clone();
    removed.extend(crossed.live.down.iter().copied());
    for k in &crossed.live.up {
        removed.remove(k);
    }
    removed.retain(|k| !base.forget.contains(k));
    removed
}

/// Carries the next hops of removed endpoints over from `old` (the
/// snapshot in service) when the new table has none: the workers reset
/// TCP flows still pinned to removed endpoints, and a direct-routing flow
/// names no backend address, so its removed backend is recognised by its
/// next hop ([`sluice_dataplane::pipeline::dr_flow_endpoint_removed`]).
/// The steering program keeps sending removed endpoints' packets to the
/// workers ([`steer_sets`] is given them) so that a client that only
/// receives is reset too.
fn carry_removed_hops(
    nexthops: &mut HashMap<Addr, NextHop>,
    removed: &hashbrown::HashSet<Endpoint>,
    old: &HashMap<Addr, NextHop>,
) {
    for (addr, _, _) in removed.iter() {
        if let (false, Some(nh)) = (nexthops.contains_key(addr), old.get(addr)) {
            nexthops.insert(*addr, *nh);
        }
    }
}

/// The SNAT sources the steering program takes replies to: the next hops'
/// sources of NAT backends, FULLNAT local addresses and the masquerade
/// addresses; sorted, once each.
fn snat_sources<'a>(
    nat_addrs: impl Iterator<Item = &'a Addr>,
    local_addrs: impl Iterator<Item = &'a Addr>,
    nexthops: &HashMap<Addr, NextHop>,
    masq: &MasqPolicy,
) -> Vec<Addr> {
    let mut snat: BTreeSet<Addr> = nat_addrs
        .filter_map(|a| nexthops.get(a).map(|nh| nh.snat))
        .collect();
    snat.extend(local_addrs.copied());
    snat.extend(masq.addrs.all().copied());
    snat.into_iter().collect()
}

/// Steering sets from their members, sorted, once each.
fn steer_sets(
    vips: impl Iterator<Item = VipKey>,
    backends: impl Iterator<Item = Endpoint>,
    snat: Vec<Addr>,
) -> SteerSets {
    let mut vips: Vec<VipKey> = vips.collect();
    vips.sort_unstable_by_key(|v| (v.addr, v.port, v.proto));
    vips.dedup();
    let mut backends: Vec<Endpoint> = backends.collect();
    backends.sort_unstable();
    backends.dedup();
    SteerSets {
        vips,
        backends,
        snat,
    }
}

/// Refuses a FULLNAT local address that is not one of the host's own,
/// naming it (one address dump, only when some service has local
/// addresses).
fn check_local_addrs_owned(specs: &[ServiceSpec]) -> Result<(), ConfigError> {
    if specs.iter().all(|s| s.local_addrs.is_empty()) {
        return Ok(());
    }
    let host = crate::snat::host_addresses().map_err(|e| ConfigError::HostAddrs(e.to_string()))?;
    local_addrs_owned(specs, &host)
}

/// [`check_local_addrs_owned`] against the host's addresses `host`.
fn local_addrs_owned(specs: &[ServiceSpec], host: &[std::net::IpAddr]) -> Result<(), ConfigError> {
    for s in specs {
        if let Some(a) = s.local_addrs.iter().find(|a| !host.contains(&a.to_ip())) {
            return Err(ConfigError::LocalAddrNotOwn {
                service: s.name.clone(),
                addr: a.to_ip(),
            });
        }
    }
    Ok(())
}
pub(crate) fn apply_steer(
    steering: &mut [Steering],
    sets: &SteerSets,
    ports: &PortRanges,
) -> Result<(), SteerError> {
    // The host's addresses first, so that no reply to the host's own
    // connection to a new endpoint is taken meanwhile. Re-read at every
    // apply (start and each change).
    let local = host_addrs();
    for s in steering.iter_mut() {
        if let Some(local) = &local {
            s.set_local_addrs(local)?;
        }
        s.set_vips(&sets.vips)?;
        s.set_backends(&sets.backends)?;
        s.set_snat(&sets.snat, ports)?;
    }
    Ok(())
}

/// The host's own addresses (None, logged, when they cannot be listed:
/// the previous set stays).
fn host_addrs() -> Option<Vec<Addr>> {
    match netlink::all_addresses() {
        Ok(a) => Some(a.into_iter().map(|(ip, _)| Addr::from(ip)).collect()),
        Err(e) => {
            warn!("cannot list the host's addresses ({e}); keeping the previous set");
            None
        }
    }
}

/// The removed endpoints that left more than `ttl` before `now`: every
/// flow they had has timed out by then, so they need no resets any more.
pub(crate) fn expired_removals<K: Copy + Eq + std::hash::Hash>(
    since: &HashMap<K, Instant>,
    now: Instant,
    ttl: Duration,
) -> Vec<K> {
    since
        .iter()
        .filter(|(_, t)| now.saturating_duration_since(**t) > ttl)
        .map(|(k, _)| *k)
        .collect()
}

/// The members of `next` not in `cur` (`.0`) and of `cur` not in `next`
/// (`.1`), per set: the maps' change when `next` replaces `cur`. A merge
/// of the sorted sets, in memory: what costs is each map write, and only
/// the difference is written ([`steer_add`], [`steer_del`]).
pub(crate) fn diff_sets(cur: &SteerSets, next: &SteerSets) -> (SteerSets, SteerSets) {
    let vk = |v: &VipKey| (v.addr, v.port, v.proto);
    let (va, vd) = diff_sorted(&cur.vips, &next.vips, vk);
    let (ba, bd) = diff_sorted(&cur.backends, &next.backends, |b| *b);
    let (sa, sd) = diff_sorted(&cur.snat, &next.snat, |a| *a);
    (
        SteerSets {
            vips: va,
            backends: ba,
            snat: sa,
        },
        SteerSets {
            vips: vd,
            backends: bd,
            snat: sd,
        },
    )
}

/// [`diff_sets`] of one set: sorted by `key` (sorted copies are made if
/// not), each key once.
fn diff_sorted<T: Copy, K: Ord>(cur: &[T], next: &[T], key: impl Fn(&T) -> K) -> (Vec<T>, Vec<T>) {
    let sorted = |v: &[T]| {
        if v.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
            v.to_vec()
        } else {
            let mut v = v.to_vec();
            v.sort_by_key(&key);
            v.dedup_by_key(|x| key(x));
            v
        }
    };
    let (cur, next) = (sorted(cur), sorted(next));
    let (mut add, mut del) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < cur.len() || j < next.len() {
        match (cur.get(i), next.get(j)) {
            (Some(c), Some(n)) => match key(c).cmp(&key(n)) {
                std::cmp::Ordering::Less => {
                    del.push(*c);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    add.push(*n);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
            },
            (Some(c), None) => {
                del.push(*c);
                i += 1;
            }
            (None, Some(n)) => {
                add.push(*n);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (add, del)
}

/// Steers `add` on top of what every map holds (the union a swap needs
/// while both tables are live), the SNAT sources set to `snat` (the
/// union's): the host's addresses first, as [`apply_steer`] does.
pub(crate) fn steer_add(
    steering: &mut [Steering],
    add: &SteerSets,
    snat: &[Addr],
    ports: &PortRanges,
) -> Result<(), SteerError> {
    let local = host_addrs();
    for s in steering.iter_mut() {
        if let Some(local) = &local {
            s.set_local_addrs(local)?;
        }
        s.update_vips(&add.vips, &[])?;
        s.update_backends(&add.backends, &[])?;
        s.set_snat(snat, ports)?;
    }
    Ok(())
}

/// Stops steering `del`, the SNAT sources set to `snat` (the new table's).
pub(crate) fn steer_del(
    steering: &mut [Steering],
    del: &SteerSets,
    snat: &[Addr],
    ports: &PortRanges,
) -> Result<(), SteerError> {
    for s in steering.iter_mut() {
        s.update_vips(&[], &del.vips)?;
        s.update_backends(&[], &del.backends)?;
        s.set_snat(snat, ports)?;
    }
    Ok(())
}

pub(crate) fn union_sets(a: &SteerSets, b: &SteerSets) -> SteerSets {
    let vips: BTreeSet<_> = a
        .vips
        .iter()
        .chain(&b.vips)
        .map(|v| (v.addr, v.port, v.proto))
        .collect();
    let backends: BTreeSet<_> = a.backends.iter().chain(&b.backends).copied().collect();
    let snat: BTreeSet<_> = a.snat.iter().chain(&b.snat).copied().collect();
    SteerSets {
        vips: vips
            .into_iter()
            .map(|(addr, port, proto)| VipKey { addr, port, proto })
            .collect(),
        backends: backends.into_iter().collect(),
        snat: snat.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use sluice_dataplane::service::ForwardMethod;
    use sluice_dataplane::types::L2Hop;

    #[test]
    fn removed_endpoints_are_forgotten_after_their_flows() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1020);
        let mut since = HashMap::new();
        since.insert(1u32, t0);
        since.insert(2u32, t0 + Duration::from_secs(1016));
        let at = t0 + Duration::from_secs(1021);
        assert_eq!(expired_removals(&since, at, ttl), vec![1]);
        assert!(expired_removals(&since, t0 + ttl, ttl).is_empty());
        assert!(expired_removals(&HashMap::<u32, Instant>::new(), at, ttl).is_empty());
    }

    fn web(port: u16, forward: ForwardMethod, backends: &[[u8; 4]]) -> ServiceSpec {
        use sluice_dataplane::service::BackendSpec;
        ServiceSpec {
            name: format!("default/web:{port}"),
            vip: VipKey {
                addr: Addr::from_v4([198, 18, 100, 10]),
                port,
                proto: 6,
            },
            backends: backends
                .iter()
                .map(|a| BackendSpec {
                    addr: Addr::from_v4(*a),
                    port: if forward == ForwardMethod::Nat {
                        8080
                    } else {
                        port
                    },
                    weight: 1,
                    ..Default::default()
                })
                .collect(),
            forward,
            ..Default::default()
        }
    }

    fn hop(m: u8) -> NextHop {
        NextHop {
            hop: L2Hop {
                port: 1,
                mac: [2, 0, 0, 0, 1, m],
            },
            snat: Addr::from_v4([198, 18, 1, 1]),
        }
    }

    /// A snapshot in service, as a publisher holds it.
    fn in_service(specs: Vec<ServiceSpec>, hops: &[([u8; 4], u8)]) -> BaseParts {
        let table = ServiceTable::build(1, specs).unwrap();
        BaseParts {
            tally: Tally::of(&table),
            table,
            nexthops: hops
                .iter()
                .map(|(a, m)| (Addr::from_v4(*a), hop(*m)))
                .collect(),
            ..BaseParts::default()
        }
    }

    fn compile_with(base: Base<'_>, specs: Specs<'_>, cache: &mut NextHopCache) -> Compiled {
        compile(
            2,
            base,
            specs,
            &[],
            &MasqPolicy::default(),
            cache,
            Duration::from_millis(1),
        )
        .unwrap()
    }

    /// An endpoint that left stays steered and in the snapshot's removed
    /// set, with its next hop carried over — by a whole compile and by an
    /// incremental one alike.
    #[test]
    fn removed_endpoints_stay_steered_and_in_the_snapshot() {
        let (x, y) = ([198, 18, 1, 11], [198, 18, 1, 12]);
        let before = vec![web(80, ForwardMethod::Nat, &[x, y])];
        let after = vec![web(80, ForwardMethod::Nat, &[x])];
        let old = in_service(before, &[(x, 0x11), (y, 0x12)]);
        let ye = (Addr::from_v4(y), 8080, 6);
        let whole = compile_with(
            old.base(),
            Specs::Whole(&after),
            &mut NextHopCache::default(),
        );
        let delta = Delta {
            upserted: after.clone(),
            ..Delta::default()
        };
        let changed = compile_with(
            old.base(),
            Specs::Changed(&delta),
            &mut NextHopCache::default(),
        );
        for c in [whole, changed] {
            assert!(c.snapshot.removed.contains(&ye), "{:?}", c.snapshot.removed);
            assert!(c.left, "an endpoint left");
            let steer = c.steer.expect("the removed endpoint joins the sets");
            assert_eq!(
                steer.backends,
                vec![(Addr::from_v4(x), 8080, 6), ye],
                "steered once each"
            );
            assert_eq!(c.snapshot.nexthops[&Addr::from_v4(y)], hop(0x12));
        }
    }

    /// A change that leaves every set as it was (a weight change) builds
    /// no steering sets and flushes nothing.
    #[test]
    fn a_change_that_moves_no_key_steers_nothing_new() {
        let x = [198, 18, 1, 11];
        let before = vec![
            web(80, ForwardMethod::Nat, &[x]),
            web(81, ForwardMethod::Nat, &[x]),
        ];
        let mut old = in_service(before, &[(x, 0x11)]);
        let first = compile_with(
            old.base(),
            Specs::Whole(
                &old.table
                    .services()
                    .map(|s| s.spec.clone())
                    .collect::<Vec<_>>(),
            ),
            &mut NextHopCache::default(),
        );
        old.steer = first.steer.unwrap();
        let mut heavier = web(81, ForwardMethod::Nat, &[x]);
        heavier.backends[0].weight = 5;
        let delta = Delta {
            upserted: vec![heavier],
            ..Delta::default()
        };
        let c = compile_with(
            old.base(),
            Specs::Changed(&delta),
            &mut NextHopCache::default(),
        );
        assert!(c.steer.is_none(), "{:?}", c.steer);
        assert!(!c.left);
        assert!(c.snapshot.removed.is_empty());
        // Removing one of the two services naming x leaves x named.
        let delta = Delta {
            removed: vec![web(81, ForwardMethod::Nat, &[x]).vip],
            ..Delta::default()
        };
        let c = compile_with(
            old.base(),
            Specs::Changed(&delta),
            &mut NextHopCache::default(),
        );
        let steer = c.steer.expect("a front end left");
        assert_eq!(steer.vips.len(), 1);
        assert_eq!(steer.backends, old.steer.backends);
        assert!(!c.left, "x is still named by :80");
    }

    /// A removed endpoint forgotten takes its next hop along unless
    /// another backend is at the address.
    #[test]
    fn a_forgotten_endpoint_takes_its_hop_along() {
        let (x, y) = ([198, 18, 1, 11], [198, 18, 1, 12]);
        let mut old = in_service(
            vec![web(80, ForwardMethod::Nat, &[x])],
            &[(x, 0x11), (y, 0x12)],
        );
        let ye = (Addr::from_v4(y), 8080, 6);
        old.removed.insert(ye);
        old.steer.backends = vec![(Addr::from_v4(x), 8080, 6), ye];
        old.forget.insert(ye);
        let c = compile_with(
            old.base(),
            Specs::Changed(&Delta::default()),
            &mut NextHopCache::default(),
        );
        assert!(c.snapshot.removed.is_empty());
        assert!(!c.snapshot.nexthops.contains_key(&Addr::from_v4(y)));
        assert!(c.snapshot.nexthops.contains_key(&Addr::from_v4(x)));
        assert_eq!(
            c.steer.expect("y leaves the sets").backends,
            vec![(Addr::from_v4(x), 8080, 6)]
        );
    }

    #[test]
    fn dr_backends_are_not_steered_but_their_hops_are_known() {
        let x = [198, 18, 1, 11];
        let specs = vec![
            web(80, ForwardMethod::Dr, &[x]),
            web(81, ForwardMethod::Tunnel, &[x]),
        ];
        let old = in_service(Vec::new(), &[]);
        let mut cache = NextHopCache::default();
        let c = compile_with(old.base(), Specs::Whole(&specs), &mut cache);
        let TallyUpdate::Whole(t) = &c.tally else {
            panic!("a whole compile counts the whole table");
        };
        let xa = Addr::from_v4(x);
        assert!(t.dr.contains(&(xa, 80, 6)) && t.dr.contains(&(xa, 81, 6)));
        assert!(t.steered.is_empty() && t.nat_addrs.is_empty());
        assert!(t.addrs.contains(&xa), "its next hop is resolved");
        assert!(c.steer.expect("whole").backends.is_empty());
    }

    fn fullnat_config(local: &[Addr]) -> Config {
        use sluice_dataplane::service::BackendSpec;
        let spec = ServiceSpec {
            name: "default/web:80".into(),
            vip: VipKey {
                addr: Addr::from_v4([198, 18, 100, 10]),
                port: 80,
                proto: 6,
            },
            backends: vec![BackendSpec {
                addr: Addr::from_v4([198, 18, 1, 11]),
                port: 8080,
                weight: 1,
                ..Default::default()
            }],
            forward: ForwardMethod::FullNat,
            local_addrs: local.to_vec(),
            ..Default::default()
        };
        Config {
            services: vec![spec],
            dns: Vec::new(),
            health_checks: Vec::new(),
            checks: Default::default(),
            objects: Default::default(),
            waiting: Vec::new(),
        }
    }

    /// A FULLNAT service's backends are steered (their replies come back)
    /// and its local addresses join the SNAT set of rule (c).
    #[test]
    fn fullnat_backends_and_local_addresses_are_steered() {
        // 127.0.0.1 is the host's own wherever the test runs.
        let lo = Addr::from_v4([127, 0, 0, 1]);
        let empty = BaseParts::default();
        let c = compile(
            1,
            empty.base(),
            Specs::Whole(&fullnat_config(&[lo]).services),
            &[],
            &MasqPolicy::default(),
            &mut NextHopCache::default(),
            Duration::from_millis(1),
        )
        .unwrap();
        let steer = c.steer.expect("a whole compile builds the sets");
        assert_eq!(
            steer.backends,
            vec![(Addr::from_v4([198, 18, 1, 11]), 8080, 6)]
        );
        assert!(steer.snat.contains(&lo), "{:?}", steer.snat);
    }

    /// A local address the host does not own is refused, named.
    #[test]
    fn a_local_address_the_host_does_not_own_is_refused() {
        let foreign = Addr::from_v4([198, 19, 255, 254]);
        let host: Vec<std::net::IpAddr> = vec!["198.18.1.5".parse().unwrap()];
        let cfg = fullnat_config(&[Addr::from_v4([198, 18, 1, 5]), foreign]);
        let e = local_addrs_owned(&cfg.services, &host).unwrap_err();
        assert!(matches!(e, ConfigError::LocalAddrNotOwn { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("198.19.255.254") && msg.contains("default/web:80"),
            "{msg}"
        );
        assert!(local_addrs_owned(
            &fullnat_config(&[Addr::from_v4([198, 18, 1, 5])]).services,
            &host
        )
        .is_ok());
        // And through compile, against the real host (198.19.255.254 is
        // nobody's here).
        let empty = BaseParts::default();
        let r = compile(
            1,
            empty.base(),
            Specs::Whole(&cfg.services),
            &[],
            &MasqPolicy::default(),
            &mut NextHopCache::default(),
            Duration::from_millis(1),
        );
        assert!(matches!(r, Err(ConfigError::LocalAddrNotOwn { .. })));
    }

    /// The difference of two sets, sorted or not: what to add, what to
    /// drop; nothing for equal sets.
    #[test]
    fn diff_names_only_what_changed() {
        let v = |p| VipKey {
            addr: Addr::from_v4([198, 18, 100, 10]),
            port: p,
            proto: 6,
        };
        let b = |x| (Addr::from_v4([198, 18, 1, x]), 8080, 6);
        let cur = SteerSets {
            vips: vec![v(80), v(81)],
            backends: vec![b(11), b(12), b(13)],
            snat: vec![Addr::from_v4([198, 18, 1, 1])],
        };
        let next = SteerSets {
            vips: vec![v(82), v(81)],
            backends: vec![b(11), b(13), b(14)],
            snat: vec![Addr::from_v4([198, 18, 1, 1])],
        };
        let (add, del) = diff_sets(&cur, &next);
        assert_eq!(add.vips, vec![v(82)]);
        assert_eq!(del.vips, vec![v(80)]);
        assert_eq!(add.backends, vec![b(14)]);
        assert_eq!(del.backends, vec![b(12)]);
        assert!(add.snat.is_empty() && del.snat.is_empty());
        let (add, del) = diff_sets(&next, &next);
        assert_eq!((add, del), (SteerSets::default(), SteerSets::default()));
    }

    #[test]
    fn union_keeps_both_sides_once() {
        let v = |p| VipKey {
            addr: Addr::from_v4([198, 18, 100, 10]),
            port: p,
            proto: 6,
        };
        let a = SteerSets {
            vips: vec![v(80), v(81)],
            backends: vec![(Addr::from_v4([198, 18, 1, 11]), 8080, 6)],
            snat: vec![Addr::from_v4([198, 18, 1, 1])],
        };
        let b = SteerSets {
            vips: vec![v(81), v(82)],
            backends: vec![(Addr::from_v4([198, 18, 1, 12]), 8080, 6)],
            snat: vec![Addr::from_v4([198, 18, 1, 1])],
        };
        let u = union_sets(&a, &b);
        assert_eq!(u.vips.len(), 3);
        assert_eq!(u.backends.len(), 2);
        assert_eq!(u.snat.len(), 1);
    }
}
