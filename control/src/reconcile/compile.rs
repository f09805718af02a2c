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
use sluice_dataplane::service::{ForwardMethod, ServiceSpec, ServiceTable, VipKey};
use sluice_dataplane::snat::PortRanges;
use sluice_dataplane::steer::{SteerError, Steering};
use sluice_dataplane::types::{Addr, L2Hop};
use tracing::warn;

use super::incremental::Delta;
use crate::config::{Config, ConfigError};
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
    /// What the XDP programs match.
    pub steer: SteerSets,
    /// Backends whose next hop could not be resolved (retried later).
    pub unresolved: Vec<Addr>,
    /// Where the snapshot's flows may go, when already computed.
    pub live: Option<Live>,
}

/// Where the flows of one snapshot may be forwarded: computed once per
/// publish (a walk of every service's backends) and kept for the
/// snapshot in service, so a change compares against it instead of
/// walking the old table again.
#[derive(Debug, Default)]
pub struct Live {
    /// [`live_backends`].
    pub backends: HashSet<(Addr, u16, u8)>,
    /// [`live_dr_hops`].
    pub dr: HashSet<(L2Hop, u16, u8)>,
}

impl Live {
    /// Both sets of `snap`.
    pub fn of(snap: &Snapshot) -> Live {
        Live {
            backends: live_backends(snap),
            dr: live_dr_hops(snap),
        }
    }

    /// Whether some endpoint of `self` is not in `next` (flows need
    /// flushing then).
    pub fn lost_in(&self, next: &Live) -> bool {
        !self.backends.is_subset(&next.backends) || !self.dr.is_subset(&next.dr)
    }
}

impl Compiled {
    /// Carries the set of removed endpoints into this compile: the workers
    /// reset TCP flows still pinned to them, and the steering program keeps
    /// sending those endpoints' packets to the workers so that a client that
    /// only receives is reset too (for a direct-routing endpoint that steers
    /// nothing: its replies come from the VIP, and no packet of its own
    /// address is LB traffic).
    ///
    /// The next hops of removed endpoints are carried over from `old` (the
    /// snapshot in service) when this compile has none: a direct-routing
    /// flow names no backend address, so the workers recognise its removed
    /// backend by its next hop ([`sluice_dataplane::pipeline::dr_flow_endpoint_removed`]).
    pub(crate) fn keep_removed(
        &mut self,
        removed: hashbrown::HashSet<(Addr, u16, u8)>,
        old: &HashMap<Addr, NextHop>,
    ) {
        let steered: HashSet<(Addr, u16, u8)> = self.steer.backends.iter().copied().collect();
        self.steer
            .backends
            .extend(removed.iter().filter(|b| !steered.contains(b)).copied());
        for (addr, _, _) in removed.iter() {
            if let (false, Some(nh)) = (self.snapshot.nexthops.contains_key(addr), old.get(addr)) {
                self.snapshot.nexthops.insert(*addr, *nh);
            }
        }
        self.snapshot.removed = removed;
    }
}

/// The table a compile starts from: the one in service, whose slots,
/// backend ids and unchanged services the new one keeps.
#[derive(Clone, Copy, Debug)]
pub struct Base<'a> {
    /// The table in service (an empty one for the first compile).
    pub table: &'a ServiceTable,
    /// Slots and backend ids freed in this version or earlier may be
    /// handed out again: no flow of that time can be left.
    pub reuse_upto: u64,
    /// What changed since the config `table` was built from, when known
    /// (the incremental compile): the table is then built from the change
    /// alone ([`ServiceTable::build_changed`]) instead of from the whole
    /// spec list.
    pub delta: Option<&'a Delta>,
}

/// Compiles `cfg` into a snapshot: service table (built from `base`),
/// next hops (from `hops`, which resolves only backends it has not seen),
/// SNAT sources and the steering sets.
///
/// # Errors
/// A [`ConfigError`] when the table cannot be built (duplicate front ends).
pub fn compile(
    version: u64,
    base: Base<'_>,
    cfg: &Config,
    links: &[Link],
    masq: &MasqPolicy,
    hops: &mut NextHopCache,
    resolve_timeout: Duration,
) -> Result<Compiled, ConfigError> {
    check_local_addrs_owned(&cfg.services)?;
    let services = match base.delta {
        Some(d) => {
            base.table
                .build_changed(version, &d.removed, d.upserted.clone(), base.reuse_upto)
        }
        None => base
            .table
            .build_from(version, cfg.services.clone(), base.reuse_upto),
    }
    .map_err(ConfigError::from)?;
    let mut steer = SteerSets::default();
    let mut snat = BTreeSet::new();
    let mut backends = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    let mut nat_addrs = BTreeSet::new();
    for s in services.services() {
        steer.vips.push(s.spec.vip);
        for b in &s.spec.backends {
            addrs.insert(b.addr);
            // A direct-routing backend answers the client itself, from the
            // VIP: nothing from its own address comes back to the LB, so it
            // is not steered (and needs no SNAT source), and its replies
            // (source VIP:port, destination a client) match no rule of the
            // steering program, so they reach the kernel, which routes them.
            if matches!(s.spec.forward, ForwardMethod::Nat | ForwardMethod::FullNat) {
                backends.insert((b.addr, b.port, s.spec.vip.proto));
                nat_addrs.insert(b.addr);
            }
        }
        // FULLNAT replies come back to the local addresses: rule (c) of the
        // steering program takes them there, on the SNAT ports only.
        snat.extend(s.spec.local_addrs.iter().copied());
    }
    let (nexthops, unresolved) = hops.resolve_all(&addrs, links, resolve_timeout);
    for addr in &unresolved {
        warn!("backend {addr}: next hop not resolved yet; new flows to it are dropped until it is");
    }
    for (addr, nh) in &nexthops {
        if nat_addrs.contains(addr) {
            snat.insert(nh.snat);
        }
    }
    steer.backends = backends.into_iter().collect();
    snat.extend(masq.addrs.all().copied());
    steer.snat = snat.into_iter().collect();
    let snapshot = Snapshot {
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
        removed: Default::default(),
        moved: Default::default(),
    };
    Ok(Compiled {
        snapshot,
        steer,
        unresolved,
        live: None,
    })
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
    let local = match netlink::all_addresses() {
        Ok(a) => Some(
            a.into_iter()
                .map(|(ip, _)| Addr::from(ip))
                .collect::<Vec<_>>(),
        ),
        Err(e) => {
            warn!("cannot list the host's addresses ({e}); keeping the previous set");
            None
        }
    };
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

/// Every (address, port, protocol) a flow of `snap` may be forwarded to.
/// The (next hop, port, protocol) of every backend of a direct-routing
/// service in `snap`: how a DR flow's backend is recognised (its record
/// holds the next hop, not the backend's address).
pub(crate) fn live_dr_hops(snap: &Snapshot) -> HashSet<(L2Hop, u16, u8)> {
    snap.services
        .services()
        .filter(|s| matches!(s.spec.forward, ForwardMethod::Dr | ForwardMethod::Tunnel))
        .flat_map(|s| {
            s.spec.backends.iter().filter_map(move |b| {
                let nh = snap.nexthops.get(&b.addr)?;
                Some((nh.hop, b.port, s.spec.vip.proto))
            })
        })
        .collect()
}

pub(crate) fn live_backends(snap: &Snapshot) -> HashSet<(Addr, u16, u8)> {
    snap.services
        .services()
        .flat_map(|s| {
            s.spec
                .backends
                .iter()
                .map(move |b| (b.addr, b.port, s.spec.vip.proto))
        })
        .collect()
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

    #[test]
    fn removed_endpoints_stay_steered_and_in_the_snapshot() {
        let x = (Addr::from_v4([198, 18, 1, 11]), 8080, 6);
        let y = (Addr::from_v4([198, 18, 1, 12]), 8080, 6);
        let mut c = Compiled {
            snapshot: Snapshot::default(),
            steer: SteerSets {
                backends: vec![x],
                ..SteerSets::default()
            },
            unresolved: Vec::new(),
            live: None,
        };
        let hop = |m| NextHop {
            hop: L2Hop {
                port: 1,
                mac: [2, 0, 0, 0, 1, m],
            },
            snat: Addr::from_v4([198, 18, 1, 1]),
        };
        c.snapshot.nexthops.insert(x.0, hop(0x11));
        let old: HashMap<Addr, NextHop> =
            [(x.0, hop(0x99)), (y.0, hop(0x12))].into_iter().collect();
        c.keep_removed([x, y].into_iter().collect(), &old);
        assert_eq!(c.steer.backends, vec![x, y], "steered once each");
        assert!(c.snapshot.removed.contains(&x) && c.snapshot.removed.contains(&y));
        // The removed endpoint's next hop is carried over (DR flows are
        // matched by it); one this compile resolved is kept as resolved.
        assert_eq!(c.snapshot.nexthops[&y.0], hop(0x12));
        assert_eq!(c.snapshot.nexthops[&x.0], hop(0x11));
    }

    #[test]
    fn dr_backends_are_not_steered_but_their_hops_are_known() {
        use sluice_dataplane::service::{BackendSpec, ServiceSpec};
        let spec = |port, forward| ServiceSpec {
            name: format!("default/web:{port}"),
            vip: VipKey {
                addr: Addr::from_v4([198, 18, 100, 10]),
                port,
                proto: 6,
            },
            backends: vec![BackendSpec {
                addr: Addr::from_v4([198, 18, 1, 11]),
                port,
                weight: 1,
                ..Default::default()
            }],
            forward,
            ..Default::default()
        };
        let services = ServiceTable::build(
            1,
            vec![spec(80, ForwardMethod::Dr), spec(81, ForwardMethod::Nat)],
        )
        .unwrap();
        let mut snap = Snapshot {
            services,
            ..Snapshot::default()
        };
        let hop = L2Hop {
            port: 1,
            mac: [2, 0, 0, 0, 1, 0x11],
        };
        snap.nexthops.insert(
            Addr::from_v4([198, 18, 1, 11]),
            NextHop {
                hop,
                snat: Addr::from_v4([198, 18, 1, 1]),
            },
        );
        let dr = live_dr_hops(&snap);
        assert!(dr.contains(&(hop, 80, 6)));
        assert!(!dr.contains(&(hop, 81, 6)), "the NAT service is not DR");
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
        }
    }

    /// A FULLNAT service's backends are steered (their replies come back)
    /// and its local addresses join the SNAT set of rule (c).
    #[test]
    fn fullnat_backends_and_local_addresses_are_steered() {
        // 127.0.0.1 is the host's own wherever the test runs.
        let lo = Addr::from_v4([127, 0, 0, 1]);
        let empty = ServiceTable::default();
        let c = compile(
            1,
            Base {
                table: &empty,
                reuse_upto: 0,
                delta: None,
            },
            &fullnat_config(&[lo]),
            &[],
            &MasqPolicy::default(),
            &mut NextHopCache::default(),
            Duration::from_millis(1),
        )
        .unwrap();
        assert_eq!(
            c.steer.backends,
            vec![(Addr::from_v4([198, 18, 1, 11]), 8080, 6)]
        );
        assert!(c.steer.snat.contains(&lo), "{:?}", c.steer.snat);
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
        let r = compile(
            1,
            Base {
                table: &ServiceTable::default(),
                reuse_upto: 0,
                delta: None,
            },
            &cfg,
            &[],
            &MasqPolicy::default(),
            &mut NextHopCache::default(),
            Duration::from_millis(1),
        );
        assert!(matches!(r, Err(ConfigError::LocalAddrNotOwn { .. })));
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
