//! `sluice run`: bring the load balancer up, keep it serving, take it down.
//!
//! The calling thread is the control thread. It validates and compiles the
//! config, resolves next hops from the kernel, attaches the steering XDP
//! program, binds the AF_XDP sockets, starts one pinned worker per core and
//! then waits for signals: SIGHUP reloads (a new snapshot is built off the
//! packet path and published atomically; a bad config is refused and the old
//! one keeps serving), SIGINT/SIGTERM stop. Once a second it ages the flow
//! table; every `--stats-interval` it logs the counters.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use sluice_dataplane::affinity::AffinityTable;
use sluice_dataplane::flow_table::layout::MAX_PORT;
use sluice_dataplane::flow_table::{FlowTable, Timeouts};
use sluice_dataplane::pipeline::{is_dr_flow, MasqPolicy, NextHop, PortInfo, Snapshot};
use sluice_dataplane::service::{ForwardMethod, ServiceTable, VipKey};
use sluice_dataplane::snat::PortRanges;
use sluice_dataplane::steer::{AttachMode, SteerError, Steering};
use sluice_dataplane::types::{Addr, Cidr, L2Hop};
use sluice_dataplane::worker::{Counters, Shared, Worker, WorkerOpts};
use sluice_dataplane::xsk::{QueueSpec, XskConfig, XskError, XskPort};
use tracing::{error, info, warn};

use crate::config::{self, CompileCtx, Config, ConfigError};
use crate::dns::{DnsError, DnsServer, DnsZone};
use crate::health::HealthServer;
use crate::netlink::{self, Link, NetlinkError};
use crate::snat::SnatError;

/// What `sluice run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunArgs {
    /// Config file (reloaded on SIGHUP).
    pub config: PathBuf,
    /// Interfaces served, in port-index order.
    pub ifaces: Vec<String>,
    /// Worker count (default: min(cores, queues)).
    pub workers: Option<usize>,
    /// Clients inside these prefixes are not masqueraded.
    pub cluster_cidrs: Vec<Cidr>,
    /// Masquerade every client.
    pub masquerade_all: bool,
    /// Flow table capacity.
    pub flow_capacity: usize,
    /// Capacity of the connection table for IPv6 flows (default: a quarter
    /// of `flow_capacity`, at least 64).
    pub flow_capacity_v6: Option<usize>,
    /// Seconds between counter logs (0: never).
    pub stats_interval: u64,
    /// XDP attach mode.
    pub xdp_mode: AttachMode,
    /// Spin instead of sleeping when idle.
    pub busy_poll: bool,
    /// SNAT source ports (default: outside the host's ephemeral range).
    pub snat_ports: Option<PortRanges>,
    /// SNAT addresses (default: the route's source towards each backend).
    pub snat_addresses: Vec<IpAddr>,
    /// This host's node name (endpoints with this `nodeName` are local).
    pub node_name: Option<String>,
    /// NodePort range.
    pub nodeport_range: (u16, u16),
    /// Default scheduler (`--scheduler`).
    pub scheduler: sluice_dataplane::service::SchedKind,
    /// Serve the cluster DNS on this address.
    pub dns: Option<SocketAddr>,
    /// Cluster DNS domain.
    pub cluster_domain: String,
    /// Session-affinity table capacity (entries).
    pub affinity_capacity: usize,
}

/// Why `sluice run` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Not running with the privileges AF_XDP and XDP need.
    #[error("sluice run needs root (CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_SYS_ADMIN): run it with sudo")]
    NotRoot,
    /// An interface is missing or unreadable.
    #[error("interface {name}: {source}")]
    Interface {
        /// The interface.
        name: String,
        /// Cause.
        source: NetlinkError,
    },
    /// The same interface was given twice.
    #[error("interface {0} is given twice")]
    DuplicateInterface(String),
    /// More interfaces than a flow record can name.
    #[error(
        "{0} interfaces given: a flow record names at most 16 (flow_table::layout::MAX_PORT + 1)"
    )]
    TooManyInterfaces(usize),
    /// A flow-table capacity out of range.
    #[error("{flag} {value}: must be between 1 and {max}")]
    FlowCapacity {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: usize,
        /// The largest capacity.
        max: usize,
    },
    /// More workers than queues.
    #[error("--workers {workers}: the interfaces have at most {queues} queue(s); raise them with `ethtool -L IF combined N` or use fewer workers")]
    TooManyWorkers {
        /// Workers asked for.
        workers: usize,
        /// Largest queue count of the interfaces.
        queues: u32,
    },
    /// Steering program failure.
    #[error("{0}")]
    Steer(#[from] SteerError),
    /// The SNAT ports or addresses cannot be used.
    #[error("{0}")]
    Snat(#[from] SnatError),
    /// AF_XDP socket failure.
    #[error("worker {worker}: {source}")]
    Xsk {
        /// Worker index.
        worker: usize,
        /// Cause.
        source: XskError,
    },
    /// The DNS server could not start.
    #[error("cluster DNS: {0}")]
    Dns(#[from] DnsError),
    /// Signal handler installation failed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// A worker thread could not be started.
    #[error("starting worker {worker}: {source}")]
    Spawn {
        /// Worker index.
        worker: usize,
        /// Cause.
        source: std::io::Error,
    },
}

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
    fn keep_removed(
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

/// Compiles `cfg` into a snapshot: service table, next hops from the kernel
/// (route + neighbour), SNAT sources and the steering sets.
///
/// # Errors
/// A [`ConfigError`] when the table cannot be built (duplicate front ends).
pub fn compile(
    version: u64,
    cfg: &Config,
    links: &[Link],
    masq: &MasqPolicy,
    resolve_timeout: Duration,
) -> Result<Compiled, ConfigError> {
    let services = ServiceTable::build(version, cfg.services.clone()).map_err(ConfigError::from)?;
    let mut nexthops = HashMap::new();
    let mut unresolved = Vec::new();
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
            if s.spec.forward == ForwardMethod::Nat {
                backends.insert((b.addr, b.port, s.spec.vip.proto));
                nat_addrs.insert(b.addr);
            }
        }
    }
    for addr in addrs {
        match resolve_backend(addr, links, resolve_timeout) {
            Ok(nh) => {
                if nat_addrs.contains(&addr) {
                    snat.insert(nh.snat);
                }
                nexthops.insert(addr, nh);
            }
            Err(e) => {
                warn!("backend {addr}: next hop not resolved yet ({e}); new flows to it are dropped until it is");
                unresolved.push(addr);
            }
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
    };
    Ok(Compiled {
        snapshot,
        steer,
        unresolved,
    })
}

/// Where `addr` is reached: the route's interface (which must be one that
/// sluice serves), the next hop's MAC and the route's preferred source.
fn resolve_backend(addr: Addr, links: &[Link], timeout: Duration) -> Result<NextHop, String> {
    let ip = addr.to_ip();
    let nh = netlink::resolve(ip, timeout).map_err(|e| e.to_string())?;
    let Some(port) = links.iter().position(|l| l.index == nh.ifindex) else {
        return Err(format!(
            "the kernel routes it via interface index {} which sluice does not serve",
            nh.ifindex
        ));
    };
    let src = match nh.src {
        Some(s) => s,
        None => first_address(links[port].index, ip.is_ipv4()).ok_or_else(|| {
            format!(
                "{} has no address of {ip}'s family to masquerade with",
                links[port].name
            )
        })?,
    };
    Ok(NextHop {
        hop: L2Hop {
            port: port as u8,
            mac: nh.mac,
        },
        snat: Addr::from(src),
    })
}

fn first_address(ifindex: u32, v4: bool) -> Option<IpAddr> {
    netlink::addresses(ifindex)
        .ok()?
        .into_iter()
        .map(|(a, _)| a)
        .find(|a| a.is_ipv4() == v4)
}

fn apply_steer(
    steering: &mut [Steering],
    sets: &SteerSets,
    ports: &PortRanges,
) -> Result<(), SteerError> {
    // The host's addresses first, so that no reply to the host's own
    // connection to a new endpoint is taken meanwhile. Re-read at every
    // apply (start and each reload).
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

/// Sums the workers' counters by name.
fn totals(counters: &[Arc<Counters>]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for c in counters {
        for (k, v) in c.snapshot() {
            *m.entry(k).or_insert(0) += v;
        }
    }
    m
}

/// Runs the load balancer until SIGINT or SIGTERM.
///
/// # Errors
/// [`RunError`] when it cannot start (bad config, no privileges, missing
/// interface, XDP or AF_XDP failure).
pub fn run(args: RunArgs) -> Result<(), RunError> {
    // Validate the file before anything needs privileges, so that a config
    // mistake is reported as such everywhere.
    config::load_file_with(&args.config, &CompileCtx::default())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RunError::NotRoot);
    }
    if args.ifaces.len() > usize::from(MAX_PORT) + 1 {
        return Err(RunError::TooManyInterfaces(args.ifaces.len()));
    }
    let cap_v6 = args
        .flow_capacity_v6
        .unwrap_or((args.flow_capacity / 4).max(64));
    for (flag, value) in [
        ("--flow-capacity", args.flow_capacity),
        ("--flow-capacity-v6", cap_v6),
    ] {
        if value == 0 || value > FlowTable::MAX_CAPACITY {
            return Err(RunError::FlowCapacity {
                flag,
                value,
                max: FlowTable::MAX_CAPACITY,
            });
        }
    }
    let mut links = Vec::new();
    for (i, name) in args.ifaces.iter().enumerate() {
        if args.ifaces[..i].contains(name) {
            return Err(RunError::DuplicateInterface(name.clone()));
        }
        let l = netlink::link(name).map_err(|source| RunError::Interface {
            name: name.clone(),
            source,
        })?;
        links.push(l);
    }
    let node_addrs = node_addresses(&links);
    let ctx = CompileCtx {
        node_name: args.node_name.clone(),
        node_addrs: node_addrs.clone(),
        local_addrs: node_addrs.clone(),
        nodeport_range: args.nodeport_range,
        scheduler: args.scheduler,
    };
    let cfg = config::load_file_with(&args.config, &ctx)?;
    info!(
        "node {}: addresses {}",
        args.node_name.as_deref().unwrap_or("(no --node-name)"),
        node_addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let max_queues = links.iter().map(|l| l.rx_queues.max(1)).max().unwrap_or(1);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let workers = args
        .workers
        .unwrap_or_else(|| cores.len().max(1).min(max_queues as usize))
        .max(1);
    if workers > max_queues as usize {
        return Err(RunError::TooManyWorkers {
            workers,
            queues: max_queues,
        });
    }

    let (snat_ports, snat_addrs) =
        crate::snat::resolve(args.snat_ports.as_ref(), &args.snat_addresses)?;
    let masq = MasqPolicy {
        all: args.masquerade_all,
        cluster_cidrs: args.cluster_cidrs.clone(),
        ports: snat_ports,
        addrs: snat_addrs,
        seed: RandomState::new().hash_one(0u64),
    };
    let mut version = 1;
    let compiled = compile(version, &cfg, &links, &masq, Duration::from_secs(2))?;

    let mut steering = Vec::new();
    for l in &links {
        let s = Steering::attach(&l.name, args.xdp_mode)?;
        info!(
            "steering program attached to {} ({:?} mode)",
            l.name,
            s.mode()
        );
        steering.push(s);
    }
    apply_steer(&mut steering, &compiled.steer, &masq.ports)?;

    // Worker w owns queue q of every interface where q % workers == w.
    let mut ports = Vec::new();
    for w in 0..workers {
        let mut queues = Vec::new();
        for (p, l) in links.iter().enumerate() {
            for q in (0..l.rx_queues.max(1)).filter(|q| *q as usize % workers == w) {
                queues.push(QueueSpec {
                    port: p as u8,
                    ifname: l.name.clone(),
                    queue: q,
                });
            }
        }
        let port = XskPort::open(&queues, &XskConfig::default())
            .map_err(|source| RunError::Xsk { worker: w, source })?;
        for (p, q, fd) in port.sockets() {
            steering[p as usize].register_socket(q, fd)?;
        }
        info!(
            "worker {w}: {}; UMEM on {}",
            queues
                .iter()
                .map(|q| format!("{}/{}", q.ifname, q.queue))
                .collect::<Vec<_>>()
                .join(" "),
            if port.hugepages() {
                "huge pages"
            } else {
                "normal pages"
            }
        );
        ports.push(port);
    }

    let flows = FlowTable::with_capacities(args.flow_capacity, cap_v6, Timeouts::default());
    info!(
        "flow table: {} IPv4 + {} IPv6 flows, {} MiB ({} B per IPv4 flow, {} B per IPv6 flow)",
        args.flow_capacity,
        cap_v6,
        flows.memory_bytes() >> 20,
        FlowTable::BYTES_PER_FLOW_V4,
        FlowTable::BYTES_PER_FLOW_V6
    );
    let affinity = AffinityTable::new(args.affinity_capacity);
    let shared = Arc::new(Shared::new(compiled.snapshot, flows, affinity));
    let dns = match args.dns {
        Some(addr) => {
            let server = DnsServer::spawn(addr, DnsZone::new(&args.cluster_domain, &cfg.dns)?)?;
            info!("cluster DNS for {} on {addr}", args.cluster_domain);
            Some(server)
        }
        None => None,
    };
    let mut health = HealthServer::new(node_addrs.clone());
    if let Err(e) = health.update(&cfg.health_checks) {
        warn!("health checks: {e}");
    }
    let mut unresolved = compiled.unresolved;
    // The config last applied: retries and pruning recompile from it, never
    // from the file, which may hold edits the operator has not signalled yet.
    let mut applied_cfg = cfg.clone();
    // When each removed endpoint left; forgotten once its flows must be gone.
    let mut removed_since: HashMap<(Addr, u16, u8), Instant> = HashMap::new();
    let removed_ttl = {
        let t = shared.flows.timeouts();
        Duration::from_secs(u64::from(t.tcp_established) + u64::from(t.tcp_fin_wait))
    };
    let mut last_prune = Instant::now();
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])
        .map_err(RunError::Signals)?;

    let counters: Vec<Arc<Counters>> = (0..workers)
        .map(|_| Arc::new(Counters::default()))
        .collect();
    let mut handles = Vec::new();
    for (w, port) in ports.into_iter().enumerate() {
        let shared = shared.clone();
        let c = counters[w].clone();
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[w % cores.len()])
        };
        let opts = WorkerOpts {
            burst: 64,
            busy_poll: args.busy_poll,
        };
        let h = std::thread::Builder::new()
            .name(format!("sluice-w{w}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let mut worker = Worker::new(port, opts);
                worker.run(&shared, &c);
                worker
            })
            .map_err(|source| RunError::Spawn { worker: w, source })?;
        handles.push(h);
    }
    info!(
        "sluice ready: {} virtual services, {} workers on {}",
        shared.snapshot.load().services.len(),
        workers,
        args.ifaces.join(",")
    );

    let mut last_expire = Instant::now();
    let mut last_stats = Instant::now();
    let mut last_retry = Instant::now();
    let mut current_steer = compiled.steer;
    'main: loop {
        for sig in signals.pending() {
            match sig {
                SIGHUP => {
                    let result = config::load_file_with(&args.config, &ctx).and_then(|cfg| {
                        compile(version + 1, &cfg, &links, &masq, Duration::from_secs(2))
                            .map(|c| (cfg, c))
                    });
                    match result {
                        Ok((cfg, mut c)) => {
                            let live = live_backends(&c.snapshot);
                            let live_dr = live_dr_hops(&c.snapshot);
                            // Endpoints that left (now or earlier, and not
                            // back): their TCP flows are reset at their next
                            // segment by the workers.
                            let removed: hashbrown::HashSet<_> = {
                                let old = shared.snapshot.load();
                                live_backends(&old)
                                    .into_iter()
                                    .chain(old.removed.iter().copied())
                                    .filter(|b| !live.contains(b))
                                    .collect()
                            };
                            c.keep_removed(removed, &shared.snapshot.load().nexthops);
                            // Steer the union while the swap happens, so no
                            // packet of an old or new service reaches the
                            // kernel stack in between; then the new sets.
                            let union = union_sets(&current_steer, &c.steer);
                            let applied =
                                apply_steer(&mut steering, &union, &masq.ports).and_then(|_| {
                                    let n = c.snapshot.services.len();
                                    shared.publish(c.snapshot);
                                    apply_steer(&mut steering, &c.steer, &masq.ports).map(|_| n)
                                });
                            match applied {
                                Ok(n) => {
                                    version += 1;
                                    current_steer = c.steer;
                                    unresolved = c.unresolved;
                                    applied_cfg = cfg.clone();
                                    {
                                        let snap = shared.snapshot.load();
                                        removed_since.retain(|k, _| snap.removed.contains(k));
                                        for k in snap.removed.iter() {
                                            removed_since.entry(*k).or_insert_with(Instant::now);
                                        }
                                    }
                                    // UDP/SCTP flows to endpoints that left
                                    // are flushed (kube-proxy's conntrack
                                    // cleanup), so the client's next
                                    // datagram is scheduled anew. TCP ones
                                    // stay until their next segment, which
                                    // resets the client.
                                    let flushed = shared.flows.remove_where(|e| {
                                        e.reply.proto != sluice_dataplane::types::proto::TCP
                                            && if is_dr_flow(e) {
                                                // Named by next hop, not
                                                // address (keep_removed).
                                                !live_dr.contains(&(
                                                    e.orig_hop,
                                                    e.original.dport,
                                                    e.original.proto,
                                                ))
                                            } else {
                                                !live.contains(&(
                                                    e.reply.src,
                                                    e.reply.sport,
                                                    e.reply.proto,
                                                ))
                                            }
                                    });
                                    if let Some(d) = &dns {
                                        match DnsZone::new(&args.cluster_domain, &cfg.dns) {
                                            Ok(z) => d.update(z),
                                            Err(e) => error!("cluster DNS zone not updated: {e}"),
                                        }
                                    }
                                    if let Err(e) = health.update(&cfg.health_checks) {
                                        warn!("health checks: {e}");
                                    }
                                    info!(
                                        "reload applied version={version} services={n} flushed_flows={flushed}"
                                    );
                                }
                                Err(e) => {
                                    error!("reload failed while updating the steering maps: {e}")
                                }
                            }
                        }
                        Err(e) => error!("reload rejected: {e}; still serving version={version}"),
                    }
                }
                SIGINT | SIGTERM => break 'main,
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        if last_expire.elapsed() >= Duration::from_secs(1) {
            last_expire = Instant::now();
            let cap = shared.flows.capacity();
            shared.flows.expire(shared.now(), (cap / 8).max(4096));
            shared
                .snapshot
                .load()
                .services
                .recount_connections(&shared.flows);
        }
        if !unresolved.is_empty() && last_retry.elapsed() >= Duration::from_secs(5) {
            last_retry = Instant::now();
            {
                if let Ok(mut c) = compile(
                    version,
                    &applied_cfg,
                    &links,
                    &masq,
                    Duration::from_millis(500),
                ) {
                    {
                        let cur = shared.snapshot.load();
                        c.keep_removed(cur.removed.clone(), &cur.nexthops);
                    }
                    if c.unresolved.len() < unresolved.len()
                        && apply_steer(&mut steering, &c.steer, &masq.ports).is_ok()
                    {
                        info!(
                            "next hops resolved for {} more backend(s)",
                            unresolved.len() - c.unresolved.len()
                        );
                        shared.publish(c.snapshot);
                        current_steer = c.steer;
                        unresolved = c.unresolved;
                    }
                }
            }
        }
        if !removed_since.is_empty() && last_prune.elapsed() >= Duration::from_secs(10) {
            last_prune = Instant::now();
            let gone = expired_removals(&removed_since, Instant::now(), removed_ttl);
            if !gone.is_empty() {
                if let Ok(mut c) = compile(
                    version,
                    &applied_cfg,
                    &links,
                    &masq,
                    Duration::from_millis(500),
                ) {
                    let cur = shared.snapshot.load();
                    let kept = cur
                        .removed
                        .iter()
                        .filter(|k| !gone.contains(k))
                        .copied()
                        .collect();
                    c.keep_removed(kept, &cur.nexthops);
                    drop(cur);
                    if apply_steer(
                        &mut steering,
                        &union_sets(&current_steer, &c.steer),
                        &masq.ports,
                    )
                    .is_ok()
                    {
                        shared.publish(c.snapshot);
                        if apply_steer(&mut steering, &c.steer, &masq.ports).is_ok() {
                            current_steer = c.steer;
                        }
                        unresolved = c.unresolved;
                        for k in &gone {
                            removed_since.remove(k);
                        }
                        info!(
                            "forgot {} endpoint(s) removed more than {removed_ttl:?} ago",
                            gone.len()
                        );
                    }
                }
            }
        }
        if args.stats_interval > 0
            && last_stats.elapsed() >= Duration::from_secs(args.stats_interval)
        {
            last_stats = Instant::now();
            let t = totals(&counters);
            let drops: u64 = t
                .iter()
                .filter(|(k, _)| k.starts_with("drop_"))
                .map(|(_, v)| v)
                .sum();
            info!(
                "stats rx={} tx={} new_flows={} drops={} flows={}",
                t["rx"],
                t["tx"],
                t["new_flows"],
                drops,
                shared.flows.len()
            );
        }
    }

    info!("stopping");
    shared.stop.store(true, Ordering::Relaxed);
    let mut workers_back = Vec::new();
    for h in handles {
        if let Ok(w) = h.join() {
            workers_back.push(w);
        }
    }
    // Sockets close before the program detaches.
    drop(workers_back);
    let steer_stats: Vec<_> = steering.iter().map(|s| s.stats()).collect();
    drop(steering);
    drop(dns);
    drop(health);
    let t = totals(&counters);
    for (k, v) in &t {
        println!("counter {k} {v}");
    }
    println!("counter flows_live {}", shared.flows.len());
    for (k, v) in shared.flows.early_drops().named() {
        println!("counter {k} {v}");
    }
    for (l, s) in links.iter().zip(steer_stats) {
        match s {
            Ok(s) => {
                println!("counter xdp_redirected_{} {}", l.name, s.redirected);
                println!("counter xdp_passed_{} {}", l.name, s.passed);
                println!(
                    "counter xdp_fragments_passed_{} {}",
                    l.name, s.fragments_passed
                );
            }
            Err(e) => warn!(ifname = %l.name, error = %e, "no XDP counters to print"),
        }
    }
    info!("sluice stopped");
    Ok(())
}

/// The removed endpoints that left more than `ttl` before `now`: every
/// flow they had has timed out by then, so they need no resets any more.
fn expired_removals<K: Copy + Eq + std::hash::Hash>(
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
fn live_dr_hops(snap: &Snapshot) -> HashSet<(L2Hop, u16, u8)> {
    snap.services
        .services()
        .filter(|s| s.spec.forward == ForwardMethod::Dr)
        .flat_map(|s| {
            s.spec.backends.iter().filter_map(move |b| {
                let nh = snap.nexthops.get(&b.addr)?;
                Some((nh.hop, b.port, s.spec.vip.proto))
            })
        })
        .collect()
}

fn live_backends(snap: &Snapshot) -> HashSet<(Addr, u16, u8)> {
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

/// The addresses NodePorts answer on: every address of the served
/// interfaces but IPv6 link-local ones.
fn node_addresses(links: &[Link]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for l in links {
        match netlink::addresses(l.index) {
            Ok(addrs) => {
                for (a, _) in addrs {
                    let link_local =
                        matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                    if !link_local && !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            Err(e) => warn!("addresses of {}: {e}", l.name),
        }
    }
    out
}

fn union_sets(a: &SteerSets, b: &SteerSets) -> SteerSets {
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
