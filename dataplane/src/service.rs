//! The compiled, immutable service table the workers read.
//!
//! The control plane turns Kubernetes objects into a list of
//! [`ServiceSpec`]s (one per service port) and builds a [`ServiceTable`]
//! from them off the packet path. A table never changes once built; a new
//! config produces a new table that is published by an epoch swap
//! ([`crate::worker::Shared`]). Only the schedulers' own cursors (atomics) move
//! inside it.
//!
//! Services have stable slots and backends stable ids ([`ids`]): a new
//! table is built from the one in service ([`ServiceTable::build_from`]),
//! so that the numbers a flow record holds keep naming what they named
//! when the flow was created, and every unchanged service is shared.

#[cfg(test)]
mod changed_tests;
mod ids;
mod slots;
#[cfg(test)]
mod stable_tests;

use std::collections::VecDeque;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::flow_table::layout::{MAX_BACKEND, MAX_SERVICE};
use crate::types::{proto, Addr};

/// The front end of a virtual service: address, port and protocol.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct VipKey {
    /// Virtual IP.
    pub addr: Addr,
    /// Service port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl std::fmt::Display for VipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            proto::TCP => "tcp",
            proto::UDP => "udp",
            proto::SCTP => "sctp",
            _ => "?",
        };
        if self.addr.is_v4() {
            write!(f, "{}:{}/{p}", self.addr, self.port)
        } else {
            write!(f, "[{}]:{}/{p}", self.addr, self.port)
        }
    }
}

/// One real server behind a virtual service.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct BackendSpec {
    /// Endpoint address.
    pub addr: Addr,
    /// Endpoint port (the resolved `targetPort`).
    pub port: u16,
    /// Relative weight; 0 means drain (no new flows). A ready endpoint has
    /// weight ≥ 1; a serving-but-terminating one is listed with weight 0 and
    /// `terminating` set.
    pub weight: u16,
    /// The endpoint is terminating but still serving: used for new flows
    /// only when the service has no ready endpoint (Kubernetes
    /// ProxyTerminatingEndpoints).
    pub terminating: bool,
    /// The endpoint runs on this node (`nodeName == --node-name`).
    pub local: bool,
    /// Upper connection threshold (`ipvsadm -x`): with active + inactive
    /// connections at or over it the server takes no new flow until it
    /// falls under [`BackendSpec::lower`]. 0: no threshold.
    pub upper: u32,
    /// Lower connection threshold (`ipvsadm -y`); 0 means 3/4 of
    /// [`BackendSpec::upper`], as the kernel's `ip_vs_unbind_dest` rule.
    pub lower: u32,
}

/// Scheduler choice for a service: IPVS's schedulers by their `ipvsadm -s`
/// names, plus Maglev (`mh`) with a larger table than the kernel's
/// ([`crate::sched`] has one module per scheduler).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum SchedKind {
    /// `rr`: round-robin over backends with non-zero weight.
    #[default]
    RoundRobin,
    /// `wrr`: weighted round-robin (the kernel's gcd / max-weight stepping).
    WeightedRoundRobin,
    /// `lc`: least connections.
    LeastConn,
    /// `wlc`: weighted least connections (IPVS's default).
    WeightedLeastConn,
    /// `sed`: shortest expected delay.
    ShortestExpectedDelay,
    /// `nq`: never queue.
    NeverQueue,
    /// `sh`: source hashing (flags `sh-fallback`, `sh-port`).
    SourceHash,
    /// `dh`: destination hashing.
    DestinationHash,
    /// `lblc`: locality-based least connections.
    Lblc,
    /// `lblcr`: locality-based least connections with replication.
    Lblcr,
    /// `fo`: weighted failover.
    WeightedFailover,
    /// `ovf`: weighted overflow.
    WeightedOverflow,
    /// `mh`: Maglev hashing (flags `mh-fallback`, `mh-port`).
    Maglev,
}

impl SchedKind {
    /// Every scheduler, in the order the README lists them.
    pub const ALL: [SchedKind; 13] = [
        SchedKind::RoundRobin,
        SchedKind::WeightedRoundRobin,
        SchedKind::LeastConn,
        SchedKind::WeightedLeastConn,
        SchedKind::ShortestExpectedDelay,
        SchedKind::NeverQueue,
        SchedKind::SourceHash,
        SchedKind::DestinationHash,
        SchedKind::Lblc,
        SchedKind::Lblcr,
        SchedKind::WeightedFailover,
        SchedKind::WeightedOverflow,
        SchedKind::Maglev,
    ];

    /// The `ipvsadm -s` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SchedKind::RoundRobin => "rr",
            SchedKind::WeightedRoundRobin => "wrr",
            SchedKind::LeastConn => "lc",
            SchedKind::WeightedLeastConn => "wlc",
            SchedKind::ShortestExpectedDelay => "sed",
            SchedKind::NeverQueue => "nq",
            SchedKind::SourceHash => "sh",
            SchedKind::DestinationHash => "dh",
            SchedKind::Lblc => "lblc",
            SchedKind::Lblcr => "lblcr",
            SchedKind::WeightedFailover => "fo",
            SchedKind::WeightedOverflow => "ovf",
            SchedKind::Maglev => "mh",
        }
    }

    /// The scheduler named `name` (`ipvsadm -s` names), if any.
    pub fn from_name(name: &str) -> Option<SchedKind> {
        SchedKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether the scheduler reads connection counts (IPVS's
    /// `activeconns` / `inactconns`).
    pub fn counts_connections(self) -> bool {
        matches!(
            self,
            SchedKind::LeastConn
                | SchedKind::WeightedLeastConn
                | SchedKind::ShortestExpectedDelay
                | SchedKind::NeverQueue
                | SchedKind::Lblc
                | SchedKind::Lblcr
                | SchedKind::WeightedOverflow
        )
    }

    /// The prefix of its flag names (`sh-fallback`, `mh-port`), for the
    /// two schedulers that take flags.
    pub fn flag_prefix(self) -> Option<&'static str> {
        match self {
            SchedKind::SourceHash => Some("sh"),
            SchedKind::Maglev => Some("mh"),
            _ => None,
        }
    }
}

impl std::fmt::Display for SchedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Scheduler flags (`ipvsadm -b`). IPVS gives `sh` and `mh` the same two
/// bits (`IP_VS_SVC_F_SCHED1`, `_SCHED2`) under their own names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SchedFlags {
    /// `sh-fallback` / `mh-fallback`: when the hashed server cannot take
    /// the flow, probe on to the next usable one instead of refusing.
    pub fallback: bool,
    /// `sh-port` / `mh-port`: hash the client's source port too.
    pub port: bool,
}

/// Which kind of front end a virtual service is (decides the traffic
/// policy that applies and whether clients are masqueraded).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum VipKind {
    /// A ClusterIP (internal traffic: `internalTrafficPolicy`).
    #[default]
    ClusterIp,
    /// A nodePort on a node address (external: `externalTrafficPolicy`).
    NodePort,
    /// An `externalIPs` address owned by this host (external).
    ExternalIp,
    /// A LoadBalancer ingress IP (external; `loadBalancerSourceRanges`).
    LoadBalancer,
}

/// Whose source address is rewritten to the LB's (kube-proxy's
/// KUBE-MARK-MASQ rules).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum MasqMode {
    /// Clients outside the cluster CIDR (ClusterIP traffic).
    #[default]
    OffCluster,
    /// Every client (external traffic with `externalTrafficPolicy: Cluster`).
    Always,
    /// No client (`externalTrafficPolicy: Local`: the client IP is kept).
    Never,
}

/// What a new flow gets when the service has no usable endpoint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum WhenEmpty {
    /// Answer at once: TCP RST, or ICMP port unreachable for UDP (as
    /// kube-proxy's REJECT rule for a service without endpoints).
    #[default]
    Reject,
    /// Drop silently (a `Local` policy front end without local endpoints).
    Drop,
}

/// How packets of a virtual service reach the chosen real server (IPVS's
/// per-destination forwarding method, `ipvsadm -m` / `-g`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum ForwardMethod {
    /// Masquerading: DNAT towards the backend (plus SNAT of the client when
    /// [`MasqMode`] says so); replies come back through the LB and are
    /// translated back ([`crate::forward::nat`]).
    #[default]
    Nat,
    /// Direct routing: only the destination MAC changes; the backend owns
    /// the VIP on a loopback device and answers the client directly, so
    /// the backend port must equal the service port and clients are never
    /// masqueraded ([`crate::forward::dr`]).
    Dr,
    /// Full NAT (DPVS's FULLNAT): every client is SNATed to one of the
    /// service's local addresses ([`ServiceSpec::local_addrs`]) and a port
    /// of the worker's share, and DNATed to the backend; replies come back
    /// to the local address and are translated back both ways
    /// ([`crate::forward::fullnat`]).
    FullNat,
    /// IP-in-IP tunnelling (IPVS `-i`): the client's packet, unchanged,
    /// goes out inside an outer IPv4 (protocol 4) or IPv6 (next header 41)
    /// header to the backend, which decapsulates it, owns the VIP and
    /// answers the client directly; as for DR the backend port must equal
    /// the service port and clients are never masqueraded
    /// ([`crate::forward::ipip`]).
    Tunnel,
}

impl ForwardMethod {
    /// The name used in the config annotation and in `sluice check`.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardMethod::Nat => "nat",
            ForwardMethod::Dr => "dr",
            ForwardMethod::FullNat => "fullnat",
            ForwardMethod::Tunnel => "ipip",
        }
    }

    /// The name `ipvsadm -Ln` shows in its Forward column (DPVS's for
    /// FULLNAT).
    pub fn ipvs_name(self) -> &'static str {
        match self {
            ForwardMethod::Nat => "Masq",
            ForwardMethod::Dr => "Route",
            ForwardMethod::FullNat => "FullNat",
            ForwardMethod::Tunnel => "Tunnel",
        }
    }
}

/// One virtual service as the control plane describes it.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ServiceSpec {
    /// Human name, `namespace/name:port`, used in logs and errors.
    pub name: String,
    /// Front end.
    pub vip: VipKey,
    /// Real servers, in a stable order. For a front end with a `Local`
    /// traffic policy the compiler lists only the local endpoints.
    pub backends: Vec<BackendSpec>,
    /// Scheduler.
    pub sched: SchedKind,
    /// Its flags (meaningful for `sh` and `mh` only).
    pub sched_flags: SchedFlags,
    /// Kind of front end.
    pub kind: VipKind,
    /// Masquerading of clients.
    pub masq: MasqMode,
    /// `sessionAffinity: ClientIP` idle timeout in seconds (None: no
    /// affinity).
    pub affinity_timeout: Option<u32>,
    /// Persistence netmask as a prefix length (`ipvsadm -M`): clients whose
    /// addresses agree in their first `affinity_prefix` bits share one
    /// affinity entry. None: the whole address.
    pub affinity_prefix: Option<u8>,
    /// Allowed client prefixes (`loadBalancerSourceRanges`); empty = all.
    pub source_ranges: Vec<crate::types::Cidr>,
    /// Behaviour without usable endpoints.
    pub when_empty: WhenEmpty,
    /// Forwarding method. With [`ForwardMethod::Dr`], [`ServiceSpec::masq`]
    /// is ignored (DR cannot masquerade) and every backend port must equal
    /// the VIP's port ([`ServiceTable::build`] refuses others).
    pub forward: ForwardMethod,
    /// FULLNAT local addresses (DPVS's `--add-laddr`), of the VIP's
    /// family, each one the host's own (the control plane checks that):
    /// the sources clients are translated to. Empty: the run-wide
    /// `--snat-address`es, else the route's preferred source towards the
    /// backend. Only with [`ForwardMethod::FullNat`].
    pub local_addrs: Vec<Addr>,
    /// kube-proxy's short-circuit for an external front end with
    /// `externalTrafficPolicy: Local`: the ClusterIP front end whose
    /// endpoints (all of them, not only the local ones) serve clients
    /// inside the cluster CIDR (pods), unmasqueraded. None: no
    /// short-circuit (cluster policy, ClusterIP front ends, IPVS services).
    pub short_circuit: Option<VipKey>,
}

/// A virtual service inside a built table.
#[derive(Debug)]
pub struct Service {
    /// The spec it was built from.
    pub spec: ServiceSpec,
    /// Round-robin cursor shared by all workers (a relaxed `fetch_add` per new
    /// flow; no lock).
    pub(crate) rr: AtomicU32,
    /// Identity for session affinity: a hash of the service port's name, so
    /// that every front end of one service port shares it, across reloads.
    pub affinity_id: u64,
    /// [`crate::affinity::backend_hash`] of each backend, in order.
    pub backend_hashes: Vec<u32>,
    /// The scheduler's own prebuilt state (wrr cursor, hash tables, the
    /// Maglev table, lblc caches), built with the table, off the packet
    /// path.
    pub(crate) sched_state: crate::sched::State,
    /// Connection counts per backend, for the schedulers that read them
    /// and for thresholds ([`crate::sched::conns`]).
    pub conns: crate::sched::conns::ConnCounts,
    /// New flows, packets and bytes per backend ([`crate::traffic`]).
    pub traffic: crate::traffic::Traffic,
    /// The stable id of each backend, in [`ServiceSpec::backends`] order:
    /// what a flow record names ([`Service::backend_id`]).
    backend_ids: Vec<u32>,
    /// The position of each id in [`ServiceSpec::backends`]
    /// ([`NO_BACKEND`] for an id no backend holds now).
    backend_pos: Vec<u32>,
    /// Which backend ids are in use and which fell free when.
    id_space: ids::IdSpace,
}

/// [`Service::backend_pos`] of an id that no backend holds.
const NO_BACKEND: u32 = u32::MAX;

/// Error building a table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// Two services claim the same address, port and protocol.
    #[error("services {first} and {second} both claim {vip}")]
    DuplicateVip {
        /// The front end claimed twice.
        vip: VipKey,
        /// The service that claimed it first.
        first: String,
        /// The service that claimed it again.
        second: String,
    },
    /// A direct-routing service has a backend on another port than the
    /// VIP's: DR leaves the packet untouched, so it cannot remap ports.
    #[error(
        "service {service}: direct routing cannot remap port {port} to backend port {backend_port}"
    )]
    DrPortRemap {
        /// The service.
        service: String,
        /// The VIP's port.
        port: u16,
        /// The offending backend port.
        backend_port: u16,
    },
    /// An IPIP service has a backend on another port than the VIP's: the
    /// inner packet is sent unchanged, so it cannot remap ports.
    #[error("service {service}: ipip tunnelling cannot remap port {port} to backend port {backend_port}")]
    TunnelPortRemap {
        /// The service.
        service: String,
        /// The VIP's port.
        port: u16,
        /// The offending backend port.
        backend_port: u16,
    },
    /// A backend's address family differs from its VIP's.
    #[error("service {service}: backend {backend} is not of the VIP's address family")]
    FamilyMismatch {
        /// The service.
        service: String,
        /// The offending backend address.
        backend: Addr,
    },
    /// A local address of another family than the VIP's.
    #[error("service {service}: local address {addr} is not of the VIP's address family")]
    LocalAddrFamily {
        /// The service.
        service: String,
        /// The offending local address.
        addr: Addr,
    },
    /// Local addresses on a service that does not forward by FULLNAT.
    #[error("service {service}: local addresses are used by forwarding method fullnat only, not {method}")]
    LocalAddrsWithoutFullNat {
        /// The service.
        service: String,
        /// Its forwarding method.
        method: &'static str,
    },
    /// More backends behind one front end than a flow record can name.
    #[error("service {service}: {count} backends, at most {max} per service port")]
    TooManyBackends {
        /// The service.
        service: String,
        /// Its number of backends.
        count: usize,
        /// The limit ([`crate::flow_table::layout::MAX_BACKEND`] + 1).
        max: usize,
    },
    /// A persistence netmask longer than the VIP's address.
    #[error("service {service}: persistence netmask /{prefix} is longer than {max} bits, the length of its {family} address")]
    AffinityPrefix {
        /// The service.
        service: String,
        /// The prefix given.
        prefix: u8,
        /// The family's address length in bits (32 or 128).
        max: u8,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// More front ends than a flow record can name.
    #[error("{count} virtual services, at most {max}")]
    TooManyServices {
        /// The number of front ends.
        count: usize,
        /// The limit ([`crate::flow_table::layout::MAX_SERVICE`] + 1).
        max: usize,
    },
}

/// FULLNAT local addresses: only with that method, and of the VIP's
/// family.
fn check_local_addrs(spec: &ServiceSpec) -> Result<(), TableError> {
    if spec.local_addrs.is_empty() {
        return Ok(());
    }
    if spec.forward != ForwardMethod::FullNat {
        return Err(TableError::LocalAddrsWithoutFullNat {
            service: spec.name.clone(),
            method: spec.forward.as_str(),
        });
    }
    match spec
        .local_addrs
        .iter()
        .find(|a| a.is_v4() != spec.vip.addr.is_v4())
    {
        Some(a) => Err(TableError::LocalAddrFamily {
            service: spec.name.clone(),
            addr: *a,
        }),
        None => Ok(()),
    }
}

/// Refuses a persistence netmask longer than the VIP's address.
fn check_affinity_prefix(spec: &ServiceSpec) -> Result<(), TableError> {
    let (max, family) = if spec.vip.addr.is_v4() {
        (32, "IPv4")
    } else {
        (128, "IPv6")
    };
    match spec.affinity_prefix {
        Some(prefix) if prefix > max => Err(TableError::AffinityPrefix {
            service: spec.name.clone(),
            prefix,
            max,
            family,
        }),
        _ => Ok(()),
    }
}

/// The part of [`ServiceTable::build_from`] that decides where each spec
/// goes, before anything is built: its slot and the service it may share.
struct Placement {
    /// The slot of each spec, in spec order.
    slots: Vec<u32>,
    /// The slot space after the specs are placed.
    space: ids::IdSpace,
    /// The front-end index after the specs are placed.
    by_vip: HashMap<VipKey, u32>,
    /// Whether a slot fell free in this version.
    freed: bool,
}

impl ServiceSpec {
    /// Checks this spec on its own (families, port remapping, limits), as
    /// [`ServiceTable::build`] does for each.
    ///
    /// # Errors
    /// The [`TableError`] naming the spec and the cause.
    pub fn check(&self) -> Result<(), TableError> {
        let spec = self;
        let max_backends = MAX_BACKEND as usize + 1;
        if spec.backends.len() > max_backends {
            return Err(TableError::TooManyBackends {
                service: spec.name.clone(),
                count: spec.backends.len(),
                max: max_backends,
            });
        }
        if let Some(b) = spec
            .backends
            .iter()
            .find(|b| b.addr.is_v4() != spec.vip.addr.is_v4())
        {
            return Err(TableError::FamilyMismatch {
                service: spec.name.clone(),
                backend: b.addr,
            });
        }
        check_local_addrs(spec)?;
        if spec.forward == ForwardMethod::Tunnel {
            if let Some(b) = spec.backends.iter().find(|b| b.port != spec.vip.port) {
                return Err(TableError::TunnelPortRemap {
                    service: spec.name.clone(),
                    port: spec.vip.port,
                    backend_port: b.port,
                });
            }
        }
        check_affinity_prefix(spec)?;
        if spec.forward == ForwardMethod::Dr {
            if let Some(b) = spec.backends.iter().find(|b| b.port != spec.vip.port) {
                return Err(TableError::DrPortRemap {
                    service: spec.name.clone(),
                    port: spec.vip.port,
                    backend_port: b.port,
                });
            }
        }
        Ok(())
    }
}

/// Places `specs` over `prev`'s slots: a front end `prev` has keeps its
/// slot, a new one takes a freed slot old enough (`reuse_upto`) or a new
/// one, and the slots of the front ends that left are freed in `version`.
fn place(
    prev: &Inner,
    version: u64,
    specs: &[ServiceSpec],
    reuse_upto: u64,
) -> Result<Placement, TableError> {
    let max_services = MAX_SERVICE + 1;
    if specs.len() > max_services as usize {
        return Err(TableError::TooManyServices {
            count: specs.len(),
            max: max_services as usize,
        });
    }
    // Which spec claimed each old slot (+1; 0: none yet), and the new
    // front ends, to refuse a front end claimed twice.
    let mut claimed = vec![0u32; prev.slots.len()];
    let mut fresh: HashMap<VipKey, usize> = HashMap::new();
    let mut slots = vec![u32::MAX; specs.len()];
    for (i, spec) in specs.iter().enumerate() {
        spec.check()?;
        let first = match prev.by_vip.get(&spec.vip) {
            Some(&s) => {
                let c = &mut claimed[s as usize];
                let first = (*c != 0).then(|| *c as usize - 1);
                if first.is_none() {
                    *c = i as u32 + 1;
                    slots[i] = s;
                }
                first
            }
            None => fresh.insert(spec.vip, i),
        };
        if let Some(first) = first {
            return Err(TableError::DuplicateVip {
                vip: spec.vip,
                first: specs[first].name.clone(),
                second: spec.name.clone(),
            });
        }
    }
    let mut space = prev.space.clone();
    let mut by_vip = prev.by_vip.clone();
    let mut freed = false;
    for (slot, c) in claimed.iter().enumerate() {
        if let (0, Some(s)) = (*c, prev.slots.get(slot)) {
            by_vip.remove(&s.spec.vip);
            space.free(slot as u32, version);
            freed = true;
        }
    }
    let mut new: Vec<usize> = fresh.into_values().collect();
    new.sort_unstable();
    for i in new {
        // Fewer specs than slots: a number is always left.
        let s = space
            .take(reuse_upto, max_services)
            .expect("more slots than services");
        slots[i] = s;
        by_vip.insert(specs[i].vip, s);
    }
    Ok(Placement {
        slots,
        space,
        by_vip,
        freed,
    })
}

/// The ids of `spec`'s backends: a backend (address, port) of `prev`
/// keeps its id, a new one takes a freed id old enough (`reuse_upto`) or
/// a new one, and the ids of the backends that left are freed in
/// `version`. Returns the ids in backend order, the id → position map
/// and the id space, and whether an id fell free.
fn backend_ids(
    prev: Option<&Service>,
    spec: &ServiceSpec,
    version: u64,
    reuse_upto: u64,
) -> (Vec<u32>, Vec<u32>, ids::IdSpace, bool) {
    let Some(prev) = prev else {
        let n = spec.backends.len() as u32;
        return (
            (0..n).collect(),
            (0..n).collect(),
            ids::IdSpace::dense(n),
            false,
        );
    };
    // The old ids by (address, port), in order (one address and port may
    // be listed more than once).
    let mut old: HashMap<(Addr, u16), VecDeque<u32>> = HashMap::new();
    for (b, &id) in prev.spec.backends.iter().zip(&prev.backend_ids) {
        old.entry((b.addr, b.port)).or_default().push_back(id);
    }
    let mut ids: Vec<Option<u32>> = spec
        .backends
        .iter()
        .map(|b| old.get_mut(&(b.addr, b.port)).and_then(VecDeque::pop_front))
        .collect();
    let mut space = prev.id_space.clone();
    let mut left: Vec<u32> = old.into_values().flatten().collect();
    left.sort_unstable();
    let freed = !left.is_empty();
    for id in left {
        space.free(id, version);
    }
    for id in ids.iter_mut().filter(|i| i.is_none()) {
        // At most MAX_BACKEND + 1 backends (checked): a number is left.
        *id = space.take(reuse_upto, MAX_BACKEND + 1);
    }
    let ids: Vec<u32> = ids.into_iter().map(|i| i.unwrap_or(0)).collect();
    let mut pos = vec![NO_BACKEND; space.end() as usize];
    for (p, &id) in ids.iter().enumerate() {
        pos[id as usize] = p as u32;
    }
    (ids, pos, space, freed)
}

/// An immutable, versioned set of services, indexed by front end.
///
/// Each service sits in a slot that it keeps for as long as its front end
/// exists ([`ids`]): the number a flow record holds. A new table built
/// from the one in service ([`ServiceTable::build_from`]) shares every
/// service whose spec did not change (one [`Arc`] each, with its
/// scheduler state, connection counts and traffic counters) and builds
/// only the others. The workers still do one hash lookup and one index
/// per packet. The whole set sits behind one more [`Arc`], so that an
/// epoch that changes only what lies beside the table (next hops) shares
/// it whole ([`ServiceTable::with_version`]).
#[derive(Debug, Default)]
pub struct ServiceTable {
    version: u64,
    inner: Arc<Inner>,
}

/// 1 for a service that counts its connections, else 0.
fn counts(s: &Service) -> usize {
    usize::from(s.conns.enabled())
}

#[derive(Debug, Default)]
struct Inner {
    /// The services by slot; None: a freed slot.
    slots: slots::Slots,
    by_vip: HashMap<VipKey, u32>,
    /// Which slots are in use and which fell free when.
    space: ids::IdSpace,
    /// Services in use (the slots that are Some).
    live: usize,
    /// Of those, the ones that count connections (least-connection
    /// schedulers): when none does, a publish recounts nothing without
    /// walking the table.
    counting: usize,
    /// Whether this version freed a slot or a backend id.
    freed: bool,
}

impl ServiceTable {
    /// Builds a table from specs, from scratch: slot `i` for spec `i`,
    /// backend id `j` for its backend `j`.
    ///
    /// # Errors
    /// [`TableError`] when two specs share a front end, a backend's family
    /// differs from its VIP's, or a direct-routing service has a backend on
    /// another port. Nothing is built then.
    pub fn build(version: u64, specs: Vec<ServiceSpec>) -> Result<ServiceTable, TableError> {
        ServiceTable::default().build_from(version, specs, 0)
    }

    /// Builds the next table from `self`, the one in service: a front end
    /// of `self` keeps its slot and each of its backends (by address and
    /// port) its id; a service whose spec is unchanged is shared, counters
    /// and all. Slots and backend ids that fall free are handed out again
    /// only if freed in a version at or before `reuse_upto` (the control
    /// plane's promise that no flow of that time is left), unless the
    /// number space is full ([`ids`]).
    ///
    /// # Errors
    /// As [`ServiceTable::build`]; nothing is built then.
    pub fn build_from(
        &self,
        version: u64,
        specs: Vec<ServiceSpec>,
        reuse_upto: u64,
    ) -> Result<ServiceTable, TableError> {
        // A flow record keeps the service and backend indices in 24 and 16
        // bits (flow_table::layout): refuse here, at config time, what
        // would otherwise make new flows fail one by one.
        let prev = &*self.inner;
        let placed = place(prev, version, &specs, reuse_upto)?;
        let mut slots = prev.slots.clone();
        slots.resize(placed.space.end() as usize);
        let mut keep = vec![false; slots.len()];
        let mut freed = placed.freed;
        for (spec, &slot) in specs.into_iter().zip(&placed.slots) {
            keep[slot as usize] = true;
            let old = prev
                .slots
                .get(slot as usize)
                .filter(|s| s.spec.vip == spec.vip);
            if let Some(s) = old.filter(|s| s.spec == spec) {
                slots.set(slot as usize, Some(Arc::clone(s)));
                continue;
            }
            let (svc, f) = Service::new(spec, old.map(|s| &**s), version, reuse_upto);
            freed |= f;
            slots.set(slot as usize, Some(Arc::new(svc)));
        }
        for (i, k) in keep.iter().enumerate() {
            if !k {
                slots.set(i, None);
            }
        }
        let live = placed.slots.len();
        let counting = slots.iter().flatten().map(|s| counts(s)).sum();
        Ok(ServiceTable {
            version,
            inner: Arc::new(Inner {
                slots,
                by_vip: placed.by_vip,
                space: placed.space,
                live,
                counting,
                freed,
            }),
        })
    }

    /// Builds the next table from `self` given only what changed: the
    /// front ends in `removed` leave, each spec of `upserted` replaces the
    /// service of its front end (or adds one). Slots, backend ids and
    /// sharing follow the same rules as [`ServiceTable::build_from`] with
    /// the whole list; a new front end takes its slot in `upserted` order.
    /// Costs O(changes) besides copying the slot and front-end index
    /// (no comparison of the unchanged specs), so that one endpoint change
    /// at 100k services does not compare 100k specs.
    ///
    /// A front end both removed and upserted is upserted; one removed that
    /// `self` does not have is ignored.
    ///
    /// # Errors
    /// As [`ServiceTable::build`] (a spec that does not check, two upserts
    /// of one front end, too many services); nothing is built then.
    pub fn build_changed(
        &self,
        version: u64,
        removed: &[VipKey],
        upserted: Vec<ServiceSpec>,
        reuse_upto: u64,
    ) -> Result<ServiceTable, TableError> {
        let prev = &*self.inner;
        let mut seen: HashMap<VipKey, usize> = HashMap::with_capacity(upserted.len());
        for (i, spec) in upserted.iter().enumerate() {
            spec.check()?;
            if let Some(first) = seen.insert(spec.vip, i) {
                return Err(TableError::DuplicateVip {
                    vip: spec.vip,
                    first: upserted[first].name.clone(),
                    second: spec.name.clone(),
                });
            }
        }
        let leaving: Vec<u32> = removed
            .iter()
            .filter(|v| !seen.contains_key(*v))
            .filter_map(|v| prev.by_vip.get(v).copied())
            .collect();
        let fresh = upserted
            .iter()
            .filter(|s| !prev.by_vip.contains_key(&s.vip))
            .count();
        let live = prev.live - leaving.len() + fresh;
        let max_services = MAX_SERVICE + 1;
        if live > max_services as usize {
            return Err(TableError::TooManyServices {
                count: live,
                max: max_services as usize,
            });
        }
        let mut slots = prev.slots.clone();
        let mut by_vip = prev.by_vip.clone();
        let mut space = prev.space.clone();
        let mut freed = false;
        let mut counting = prev.counting;
        for slot in leaving {
            if let Some(s) = slots.take(slot as usize) {
                counting -= counts(&s);
                by_vip.remove(&s.spec.vip);
                space.free(slot, version);
                freed = true;
            }
        }
        for spec in upserted {
            let slot = match by_vip.get(&spec.vip) {
                Some(&s) => s,
                None => {
                    // At most MAX_SERVICE + 1 live (checked): a number is left.
                    let s = space
                        .take(reuse_upto, max_services)
                        .expect("more slots than services");
                    by_vip.insert(spec.vip, s);
                    s
                }
            };
            if slots.len() <= slot as usize {
                slots.resize(slot as usize + 1);
            }
            let old = slots
                .get(slot as usize)
                .filter(|s| s.spec.vip == spec.vip)
                .cloned();
            if old.as_ref().is_some_and(|s| s.spec == spec) {
                continue;
            }
            let (svc, f) = Service::new(spec, old.as_deref(), version, reuse_upto);
            freed |= f;
            if let Some(was) = slots.get(slot as usize) {
                counting -= counts(was);
            }
            counting += counts(&svc);
            slots.set(slot as usize, Some(Arc::new(svc)));
        }
        Ok(ServiceTable {
            version,
            inner: Arc::new(Inner {
                slots,
                by_vip,
                space,
                live,
                counting,
                freed,
            }),
        })
    }

    /// Checks `specs` as [`ServiceTable::build`] would, without building
    /// anything: each spec on its own ([`ServiceSpec::check`]), no front
    /// end twice, not more than a flow record can name.
    ///
    /// # Errors
    /// The [`TableError`] [`ServiceTable::build`] would return.
    pub fn check_specs(specs: &[ServiceSpec]) -> Result<(), TableError> {
        let max_services = MAX_SERVICE as usize + 1;
        if specs.len() > max_services {
            return Err(TableError::TooManyServices {
                count: specs.len(),
                max: max_services,
            });
        }
        let mut seen: HashMap<VipKey, usize> = HashMap::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            spec.check()?;
            if let Some(first) = seen.insert(spec.vip, i) {
                return Err(TableError::DuplicateVip {
                    vip: spec.vip,
                    first: specs[first].name.clone(),
                    second: spec.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether both tables hold the same services (one came from the other
    /// by [`ServiceTable::with_version`]): their per-service state, traffic
    /// counters included, is one and the same.
    pub fn shares_services_with(&self, other: &ServiceTable) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The services of `self` that `next` does not share (by slot: the
    /// same [`Arc`]), as a table of `self`'s version: what retires when
    /// `next` replaces `self`, so that counters are folded once.
    pub fn unshared_with(&self, next: &ServiceTable) -> ServiceTable {
        let slots = self.inner.slots.unshared_with(&next.inner.slots);
        let live = slots.iter().flatten().count();
        let counting = slots.iter().flatten().map(|s| counts(s)).sum();
        ServiceTable {
            version: self.version,
            inner: Arc::new(Inner {
                slots,
                live,
                counting,
                ..Inner::default()
            }),
        }
    }

    /// Whether building this version freed a slot or a backend id (the
    /// control plane notes when, to know when they may be reused).
    pub fn freed_ids(&self) -> bool {
        self.inner.freed
    }

    /// The same services under another version: shares every service (and
    /// its scheduler state) with `self`; O(1).
    pub fn with_version(&self, version: u64) -> ServiceTable {
        ServiceTable {
            version,
            inner: Arc::clone(&self.inner),
        }
    }

    /// The version this table was built as (increases with every reload).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The service behind a front end, with its slot.
    #[inline]
    pub fn lookup(&self, vip: &VipKey) -> Option<(u32, &Service)> {
        let idx = *self.inner.by_vip.get(vip)?;
        Some((idx, self.get(idx)?))
    }

    /// A service by slot.
    #[inline]
    pub fn get(&self, idx: u32) -> Option<&Service> {
        self.inner.slots.get(idx as usize).map(|s| &**s)
    }

    /// All services, in slot order.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.inner.slots.iter().flatten().map(|s| &**s)
    }

    /// All services with their slots, in slot order.
    pub fn indexed(&self) -> impl Iterator<Item = (u32, &Service)> {
        self.inner
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, &**s?)))
    }

    /// One past the highest slot: the length of a vector indexed by slot.
    pub fn slot_count(&self) -> usize {
        self.inner.slots.len()
    }

    /// Whether some service counts connections (a least-connection
    /// scheduler); O(1).
    pub fn counts_connections(&self) -> bool {
        self.inner.counting > 0
    }

    /// Recounts the connections of every service that counts them from
    /// `flows` ([`crate::sched::conns::recount`]); O(flow-table capacity),
    /// for the housekeeping thread.
    pub fn recount_connections(&self, flows: &crate::flow_table::FlowTable) {
        crate::sched::conns::recount(self, flows);
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.inner.live
    }

    /// Whether there is no service.
    pub fn is_empty(&self) -> bool {
        self.inner.live == 0
    }
}

impl Service {
    /// Builds the service for `spec`; its backends keep the ids they had in
    /// `prev` (the same front end in the table in service, if any).
    /// Returns whether a backend id fell free.
    fn new(
        spec: ServiceSpec,
        prev: Option<&Service>,
        version: u64,
        reuse_upto: u64,
    ) -> (Service, bool) {
        let (backend_ids, backend_pos, id_space, freed) =
            backend_ids(prev, &spec, version, reuse_upto);
        let affinity_id = crate::affinity::fnv64(spec.name.as_bytes());
        let backend_hashes = spec
            .backends
            .iter()
            .map(|b| crate::affinity::backend_hash(&b.addr, b.port))
            .collect();
        let sched_state = crate::sched::State::build(&spec);
        let conns = crate::sched::conns::ConnCounts::for_spec(&spec);
        let traffic = crate::traffic::Traffic::new(spec.backends.len());
        let svc = Service {
            spec,
            rr: AtomicU32::new(0),
            affinity_id,
            backend_hashes,
            sched_state,
            conns,
            traffic,
            backend_ids,
            backend_pos,
            id_space,
        };
        (svc, freed)
    }

    /// The stable id of the backend at `pos` in [`ServiceSpec::backends`]:
    /// what a flow record holds.
    #[inline]
    pub fn backend_id(&self, pos: usize) -> u32 {
        self.backend_ids[pos]
    }

    /// The position in [`ServiceSpec::backends`] of the backend with id
    /// `id`; None for an id no backend holds (one that left).
    #[inline]
    pub fn backend_position(&self, id: u32) -> Option<usize> {
        match self.backend_pos.get(id as usize) {
            Some(&p) if p != NO_BACKEND => Some(p as usize),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, vip: [u8; 4], port: u16, backends: &[[u8; 4]]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            vip: VipKey {
                addr: Addr::from_v4(vip),
                port,
                proto: proto::TCP,
            },
            backends: backends
                .iter()
                .map(|b| BackendSpec {
                    addr: Addr::from_v4(*b),
                    port: 8080,
                    weight: 1,
                    ..Default::default()
                })
                .collect(),
            sched: SchedKind::RoundRobin,
            ..Default::default()
        }
    }

    #[test]
    fn builds_and_looks_up() {
        let t = ServiceTable::build(
            3,
            vec![
                spec("a", [198, 18, 100, 1], 80, &[[198, 18, 1, 11]]),
                spec("b", [198, 18, 100, 1], 81, &[]),
            ],
        )
        .unwrap();
        assert_eq!(t.version(), 3);
        assert_eq!(t.len(), 2);
        let (i, s) = t
            .lookup(&VipKey {
                addr: Addr::from_v4([198, 18, 100, 1]),
                port: 81,
                proto: proto::TCP,
            })
            .unwrap();
        assert_eq!(i, 1);
        assert_eq!(s.spec.name, "b");
        assert!(t
            .lookup(&VipKey {
                addr: Addr::from_v4([198, 18, 100, 1]),
                port: 81,
                proto: proto::UDP,
            })
            .is_none());
    }

    #[test]
    fn duplicate_vip_refused() {
        let e = ServiceTable::build(
            1,
            vec![
                spec("a", [198, 18, 100, 1], 80, &[]),
                spec("b", [198, 18, 100, 1], 80, &[]),
            ],
        )
        .unwrap_err();
        assert!(matches!(e, TableError::DuplicateVip { .. }));
        assert!(e.to_string().contains("services a and b"));
    }

    /// The flow record's index widths are the table's limits: at the limit
    /// it builds, one more is refused with a message, not a half-working
    /// table whose new flows would be dropped one by one.
    #[test]
    fn backends_per_service_are_limited_by_the_flow_record() {
        let max = MAX_BACKEND as usize + 1;
        let mut s = spec("a", [198, 18, 100, 1], 80, &[[198, 18, 1, 11]]);
        s.backends = vec![s.backends[0]; max];
        assert!(ServiceTable::build(1, vec![s.clone()]).is_ok());
        s.backends.push(s.backends[0]);
        let e = ServiceTable::build(1, vec![s]).unwrap_err();
        assert_eq!(
            e,
            TableError::TooManyBackends {
                service: "a".into(),
                count: max + 1,
                max
            }
        );
        assert!(
            e.to_string().contains("65537 backends, at most 65536"),
            "{e}"
        );
    }

    #[test]
    fn dr_port_remap_refused() {
        let mut s = spec("a", [198, 18, 100, 1], 8080, &[[198, 18, 1, 11]]);
        s.forward = ForwardMethod::Dr;
        assert!(ServiceTable::build(1, vec![s.clone()]).is_ok());
        s.vip.port = 80;
        let e = ServiceTable::build(1, vec![s]).unwrap_err();
        assert_eq!(
            e,
            TableError::DrPortRemap {
                service: "a".into(),
                port: 80,
                backend_port: 8080
            }
        );
        assert!(e.to_string().contains("cannot remap port 80"));
    }

    #[test]
    fn local_addrs_need_fullnat_and_the_vips_family() {
        let mut s = spec("a", [198, 18, 100, 1], 80, &[[198, 18, 1, 11]]);
        s.local_addrs = vec![Addr::from_v4([198, 18, 0, 5])];
        let e = ServiceTable::build(1, vec![s.clone()]).unwrap_err();
        assert_eq!(
            e,
            TableError::LocalAddrsWithoutFullNat {
                service: "a".into(),
                method: "nat"
            }
        );
        s.forward = ForwardMethod::FullNat;
        assert!(ServiceTable::build(1, vec![s.clone()]).is_ok());
        let v6 = Addr::from_v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        s.local_addrs.push(v6);
        let e = ServiceTable::build(1, vec![s]).unwrap_err();
        assert_eq!(
            e,
            TableError::LocalAddrFamily {
                service: "a".into(),
                addr: v6
            }
        );
        assert!(e.to_string().contains("2001:db8::5"), "{e}");
    }

    #[test]
    fn tunnel_port_remap_refused() {
        let mut s = spec("a", [198, 18, 100, 1], 8080, &[[198, 18, 1, 11]]);
        s.forward = ForwardMethod::Tunnel;
        assert!(ServiceTable::build(1, vec![s.clone()]).is_ok());
        s.vip.port = 80;
        let e = ServiceTable::build(1, vec![s]).unwrap_err();
        assert!(matches!(
            e,
            TableError::TunnelPortRemap {
                port: 80,
                backend_port: 8080,
                ..
            }
        ));
        assert!(
            e.to_string()
                .contains("ipip tunnelling cannot remap port 80"),
            "{e}"
        );
    }

    #[test]
    fn affinity_prefix_is_bounded_by_the_family() {
        let mut s = spec("a", [198, 18, 100, 1], 80, &[]);
        for ok in [0, 24, 32] {
            s.affinity_prefix = Some(ok);
            assert!(ServiceTable::build(1, vec![s.clone()]).is_ok(), "/{ok}");
        }
        s.affinity_prefix = Some(33);
        let e = ServiceTable::build(1, vec![s.clone()]).unwrap_err();
        assert_eq!(
            e,
            TableError::AffinityPrefix {
                service: "a".into(),
                prefix: 33,
                max: 32,
                family: "IPv4"
            }
        );
        assert!(e.to_string().contains("/33 is longer than 32 bits"), "{e}");
        s.vip.addr = Addr::from_v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        s.affinity_prefix = Some(128);
        assert!(ServiceTable::build(1, vec![s.clone()]).is_ok());
        s.affinity_prefix = Some(129);
        assert!(matches!(
            ServiceTable::build(1, vec![s]),
            Err(TableError::AffinityPrefix { max: 128, .. })
        ));
    }

    #[test]
    fn family_mismatch_refused() {
        let mut s = spec("a", [198, 18, 100, 1], 80, &[]);
        s.backends.push(BackendSpec {
            addr: Addr::from_v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            port: 80,
            weight: 1,
            ..Default::default()
        });
        assert!(matches!(
            ServiceTable::build(1, vec![s]),
            Err(TableError::FamilyMismatch { .. })
        ));
    }
}
