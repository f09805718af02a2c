//! `sluice run`: bring the load balancer up, keep it serving, take it down.
//!
//! The calling thread checks the arguments, compiles the desired state (the
//! `--config` file's objects, or nothing), resolves next hops, attaches the
//! steering XDP program, binds the AF_XDP sockets and starts one pinned
//! worker per core. Then one current-thread tokio runtime runs the control
//! plane: signals (SIGHUP re-applies the file, SIGINT/SIGTERM stop), the
//! timers (flow ageing each second, next-hop retries, forgetting removed
//! endpoints, counter logs), the API server and, when asked, the cluster
//! watch (`source::cluster`). Every change goes through
//! the [`Reconciler`] (on the runtime's blocking pool, as it compiles and
//! talks netlink); the packet path never touches the runtime.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::snat::SnatError;
use sluice_dataplane::affinity::AffinityTable;
use sluice_dataplane::fastpath::sync::{SharedSweeper, Sweeper};
use sluice_dataplane::fastpath::{Mode as FastMode, Publisher as FastPublisher};
use sluice_dataplane::flow_table::layout::MAX_PORT;
use sluice_dataplane::flow_table::{FlowTable, Timeouts};
use sluice_dataplane::pipeline::MasqPolicy;
use sluice_dataplane::snat::PortRanges;
use sluice_dataplane::steer::{AttachMode, SteerError, Steering};
use sluice_dataplane::types::Cidr;
use sluice_dataplane::worker::{Counters, Shared, Worker, WorkerOpts};
use sluice_dataplane::xsk::{QueueSpec, XskConfig, XskError, XskPort};
use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::api::{self, ApiError, ApiOpts};
use crate::config::{self, CompileCtx, ConfigError};
use crate::dns::{DnsError, DnsServer, DnsZone};
use crate::health::HealthServer;
use crate::netlink::{self, Link, NetlinkError};
use crate::nexthop;
use crate::nodeport_addresses::{NodePortAddresses, NodePortAddressesError};
use crate::reconcile::compile::apply_steer;
use crate::reconcile::{self, compile_config, Host, Publisher, Reconciler};
use crate::source;
use crate::store::{Commit, Store, StoreError};

/// The reconciler as the control tasks share it.
pub type SharedReconciler = Arc<Mutex<Reconciler>>;

/// What `sluice run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunArgs {
    /// Config file (applied at start and on SIGHUP); none: start empty.
    pub config: Option<PathBuf>,
    /// Interfaces served, in port-index order.
    pub ifaces: Vec<String>,
    /// Worker count (default: min(cores, queues)).
    pub workers: Option<usize>,
    /// Clients inside these prefixes are not masqueraded.
    pub cluster_cidrs: Vec<Cidr>,
    /// Masquerade every client.
    pub masquerade_all: bool,
    /// The service ranges (`--service-cidr`; [`crate::service_cidr`]).
    pub service_cidrs: Option<crate::service_cidr::ServiceCidrs>,
    /// Serve the node's own connections to services
    /// ([`crate::host_traffic`]).
    pub host_traffic: crate::host_traffic::Mode,
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
    /// The XDP fast path (`--fast-path`).
    pub fast_path: sluice_dataplane::fastpath::Mode,
    /// Packets of a flow direction a worker forwards before publishing it
    /// to the fast path (`--fast-path-after`).
    pub fast_path_after: u32,
    /// SNAT source ports (default: outside the host's ephemeral range).
    pub snat_ports: Option<PortRanges>,
    /// SNAT addresses (default: the route's source towards each backend).
    pub snat_addresses: Vec<IpAddr>,
    /// This host's node name (endpoints with this `nodeName` are local).
    pub node_name: Option<String>,
    /// NodePort range.
    pub nodeport_range: (u16, u16),
    /// Which node addresses NodePorts and health-check node ports answer
    /// on (`--nodeport-addresses`; default all).
    pub nodeport_addresses: NodePortAddresses,
    /// Default scheduler (`--scheduler`).
    pub scheduler: sluice_dataplane::service::SchedKind,
    /// Serve the cluster DNS on this address.
    pub dns: Option<SocketAddr>,
    /// Cluster DNS domain.
    pub cluster_domain: String,
    /// Session-affinity table capacity (entries).
    pub affinity_capacity: usize,
    /// The API server's sockets and limits.
    pub api: ApiOpts,
    /// The cluster to follow (`--kubeconfig`, `--cluster-watch`), if any.
    pub cluster: Option<source::cluster::ClusterSource>,
    /// Where the applied object set is kept across restarts
    /// ([`crate::persist`]).
    pub state_dir: PathBuf,
    /// The file the flow table lives in (`--flow-state`), re-attached at
    /// start ([`sluice_dataplane::flow_table::state_file`]); None:
    /// anonymous memory.
    pub flow_state: Option<PathBuf>,
    /// Prometheus `/metrics` address.
    pub metrics_bind: SocketAddr,
    /// `/healthz` address.
    pub healthz_bind: SocketAddr,
    /// Announce the VIPs through BIRD (`--bgp bird`), if asked.
    pub bgp: Option<crate::bgp::BgpOpts>,
}

/// Why `sluice run` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The `--flow-state` file cannot be used (in use by another process,
    /// or it cannot be created or mapped).
    #[error("--flow-state: {0}")]
    FlowState(#[from] sluice_dataplane::flow_table::state_file::StateFileError),
    /// A `--service-cidr` range holds a node address.
    #[error("{0}")]
    ServiceCidr(#[from] crate::service_cidr::ServiceCidrError),
    /// `--host-traffic on` could not start.
    #[error("{0}")]
    HostTraffic(#[from] crate::host_traffic::HostTrafficError),
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Not running with the capabilities AF_XDP and XDP need.
    #[error("{0}")]
    Capabilities(#[from] crate::caps::CapsError),
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
    /// The control plane's async runtime could not start.
    #[error("starting the control runtime: {0}")]
    Runtime(std::io::Error),
    /// The API server could not start.
    #[error("API: {0}")]
    Api(ApiError),
    /// The cluster watch could not start (kubeconfig, client).
    #[error("{0}")]
    Cluster(#[from] source::cluster::ClusterError),
    /// `--nodeport-addresses` selects none of the node's addresses.
    #[error("{0}")]
    NodePortAddresses(#[from] NodePortAddressesError),
    /// The metrics or healthz address could not be bound.
    #[error("{0}")]
    Metrics(#[from] crate::metrics::BindError),
    /// The BGP announcer's options are unusable.
    #[error("{0}")]
    Bgp(#[from] crate::bgp::BgpError),
    /// The store refused the first state.
    #[error("{0}")]
    Store(String),
    /// A worker thread could not be started.
    #[error("starting worker {worker}: {source}")]
    Spawn {
        /// Worker index.
        worker: usize,
        /// Cause.
        source: std::io::Error,
    },
}

/// Runs the load balancer until SIGINT or SIGTERM.
///
/// # Errors
/// [`RunError`] when it cannot start (bad config, no privileges, missing
/// interface, XDP or AF_XDP failure, API socket).
pub fn run(args: RunArgs) -> Result<(), RunError> {
    // Read and validate the file before anything needs privileges, so that
    // a config mistake is reported as such everywhere; its objects are kept
    // for the first commit ([`first_state`]), so a large file is parsed and
    // checked once at start, not once here and again there.
    // Against this run's node-port range: the file may use a range wider
    // than the default one (`--nodeport-range`).
    let file_objects = match &args.config {
        Some(path) => {
            let ctx = CompileCtx {
                nodeport_range: args.nodeport_range,
                ..CompileCtx::default()
            };
            source::file::read(path, &ctx)?
        }
        None => Vec::new(),
    };
    args.api.check().map_err(RunError::Api)?;
    if let Some(b) = &args.bgp {
        b.check()?;
    }
    crate::caps::check_run(args.dns.map(|a| a.port()))?;
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
    let links = open_links(&args.ifaces)?;
    let per_link = link_addresses(&links);
    // Every address is this host's (externalIPs it owns, allowFromNode);
    // NodePorts answer on the selected ones only.
    let host_addrs = NodePortAddresses::All.select(&per_link);
    let node_addrs = args.nodeport_addresses.resolve(&per_link)?;
    if let Some(s) = &args.service_cidrs {
        s.check_node(&host_addrs)?;
    }
    let (snat_ports, snat_addrs) =
        crate::snat::resolve(args.snat_ports.as_ref(), &args.snat_addresses)?;
    let host = Host {
        ctx: CompileCtx {
            node_name: args.node_name.clone(),
            node_addrs: node_addrs.clone(),
            local_addrs: host_addrs.clone(),
            nodeport_range: args.nodeport_range,
            scheduler: args.scheduler,
        },
        masq: MasqPolicy {
            all: args.masquerade_all,
            cluster_cidrs: args.cluster_cidrs.clone(),
            ports: snat_ports,
            addrs: snat_addrs,
            seed: RandomState::new().hash_one(0u64),
            service_cidrs: args
                .service_cidrs
                .as_ref()
                .map(|s| s.cidrs().to_vec())
                .unwrap_or_default(),
        },
        links: links.clone(),
        hops: Default::default(),
    };
    // The first state: the saved state with the file's objects applied on
    // top, compiled before anything is attached ([`first_state`]).
    let (store, first) = first_state(&args, &host, file_objects)?;
    let (cfg, compiled) = first.output;
    // A whole compile always builds its steering sets.
    let first_steer = compiled.steer.clone().unwrap_or_default();
    let show = |v: &[IpAddr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    info!(
        "node {}: addresses {}; NodePorts on {} (--nodeport-addresses {})",
        args.node_name.as_deref().unwrap_or("(no --node-name)"),
        show(&host_addrs),
        show(&node_addrs),
        args.nodeport_addresses
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
    // The runtime and the signal handlers come first, so that a signal
    // sent as soon as `sluice ready` is logged is never lost.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let signals = {
        let _guard = rt.enter();
        Signals::new().map_err(RunError::Signals)?
    };
    let listeners = rt.block_on(api::bind(&args.api)).map_err(RunError::Api)?;
    let cluster = match &args.cluster {
        Some(src) => Some(rt.block_on(source::cluster::client(src))?),
        None => None,
    };
    let metrics_listeners =
        rt.block_on(crate::metrics::bind(args.metrics_bind, args.healthz_bind))?;
    sluice_dataplane::traffic::set_slots(workers);

    // Attach last: the programs are loaded, the sockets registered, the
    // sets filled and the workers running before any program steers a
    // frame (`attach_all` below).
    let mut steering = Vec::new();
    for l in &links {
        let opts = sluice_dataplane::steer::LoadOpts {
            service_ranges: args.service_cidrs.is_some(),
        };
        let mut s = Steering::load_with(&l.name, args.xdp_mode, opts)?;
        // Only frames for this link's MAC (steer.c's header comment): a
        // segment that floods another host's frames here (a tier whose
        // switch forgot a dead host) must not get them forwarded twice.
        s.set_own_mac((l.mac != [0; 6]).then_some(l.mac))?;
        steering.push(s);
    }
    apply_steer(&mut steering, &first_steer, &host.masq.ports)?;
    let ports = open_ports(&links, workers, &mut steering)?;

    let affinity = AffinityTable::new(args.affinity_capacity);
    let (flows, epoch) = match &args.flow_state {
        None => (
            FlowTable::with_capacities(args.flow_capacity, cap_v6, Timeouts::default()),
            None,
        ),
        Some(path) => {
            let (flows, epoch) = open_flow_state(path, args.flow_capacity, cap_v6)?;
            restore_flows(&compiled.snapshot, &flows, &affinity, epoch);
            (flows, Some(epoch))
        }
    };
    info!(
        "flow table: {} IPv4 + {} IPv6 flows, {} MiB ({} B per IPv4 flow, {} B per IPv6 flow)",
        args.flow_capacity,
        cap_v6,
        flows.memory_bytes() >> 20,
        FlowTable::BYTES_PER_FLOW_V4,
        FlowTable::BYTES_PER_FLOW_V6
    );
    let mut shared = Shared::new(compiled.snapshot, flows, affinity);
    if let Some(e) = epoch {
        // The flows' clock continues the previous process's.
        shared.epoch = sluice_dataplane::flow_table::state_file::epoch_instant(e);
    }
    let shared = Arc::new(shared);
    let dns = match args.dns {
        Some(addr) => {
            let server = DnsServer::spawn(addr, DnsZone::new(&args.cluster_domain, &cfg.dns)?)?;
            info!("cluster DNS for {} on {addr}", args.cluster_domain);
            Some((server, args.cluster_domain.clone()))
        }
        None => None,
    };
    let mut health = HealthServer::new(node_addrs.clone());
    if let Err(e) = health.update(&cfg.health_checks) {
        warn!("health checks: {e}");
    }
    let counters: Vec<Arc<Counters>> = (0..workers)
        .map(|_| Arc::new(Counters::default()))
        .collect();
    let fast = fast_path(
        (args.fast_path, args.fast_path_after),
        &links,
        &steering,
        &counters,
    )?;
    let (publishers, sweeper, egress_on) = match fast {
        Some(f) => (
            f.publishers.into_iter().map(Some).collect(),
            Some(f.sweeper),
            f.egress_on,
        ),
        None => ((0..workers).map(|_| None).collect(), None, Vec::new()),
    };
    let handles = start_workers(
        ports,
        publishers,
        &shared,
        &counters,
        &cores,
        args.busy_poll,
    )?;
    // The sweep stops after the workers (its last withdrawals count what
    // they withdrew last).
    let sweep_stop = Arc::new(AtomicBool::new(false));
    let sweeper: Option<SharedSweeper> = sweeper.map(|s| Arc::new(Mutex::new(s)));
    let sweep = sweeper
        .clone()
        .map(|s| {
            let shared = shared.clone();
            let stop = sweep_stop.clone();
            std::thread::Builder::new()
                .name("sluice-fastpath".into())
                .spawn(move || Sweeper::run(&s, &shared, &stop))
                .map_err(RunError::Runtime)
        })
        .transpose()?;
    wait_workers_running(&counters);
    // The tries hold the ranges and the first table's ClusterIPs before a
    // program steers a frame.
    let mut ranges = args
        .service_cidrs
        .as_ref()
        .map(crate::service_cidr::ServiceRanges::new);
    if let Some(r) = ranges.as_mut() {
        let snap = shared.snapshot.load_full();
        for s in steering.iter_mut() {
            if let Some(m) = s.take_service_ranges() {
                r.add(s.ifname(), m, &snap);
            }
        }
    }
    attach_all(&mut steering)?;
    let mut host_traffic = start_host_traffic(&args, &shared, &host_addrs)?;
    if let (Some(r), Some(h)) = (ranges.as_mut(), host_traffic.as_mut()) {
        if let Some(m) = h.take_service_ranges() {
            r.add("node sockets", m, &shared.snapshot.load_full());
        }
    }
    let range_follower = ranges
        .map(|r| r.spawn(shared.clone()))
        .transpose()
        .map_err(RunError::Runtime)?;
    let persister =
        crate::persist::Persister::spawn(args.state_dir.clone()).map_err(RunError::Runtime)?;
    persister.submit(crate::persist::Pending::of(&store));
    let publisher = Publisher::new(
        host.clone(),
        steering,
        shared.clone(),
        counters.clone(),
        (first_steer, compiled.unresolved),
        cfg,
        dns,
        health,
    );
    let mut stats = crate::stats::Stats::new(shared.clone(), counters.clone());
    if let Some(s) = &sweeper {
        stats.set_fast_path(s.clone());
    }
    let mut publisher = publisher;
    publisher.set_stats(stats.clone());
    stats.spawn_estimator().map_err(RunError::Runtime)?;
    // The announcer's warm-up starts here, with the data path serving; no
    // early return follows that would leave it announcing without the
    // withdrawal at the end of this function.
    let applied = crate::bgp::ConfigApplied::default();
    let bgp = match &args.bgp {
        Some(o) => Some(
            crate::bgp::spawn(o.clone(), shared.clone(), counters.clone(), applied.clone())
                .map_err(RunError::Runtime)?,
        ),
        None => None,
    };
    if let Some(b) = &bgp {
        publisher.set_on_publish(Box::new(b.waker()));
    }
    let sync = crate::metrics::Sync::default();
    let mut rec = Reconciler::new(store, publisher);
    rec.set_persister(persister.clone());
    rec.set_sync(sync.clone());
    let sources = crate::metrics::Sources {
        stats,
        sync,
        bgp: bgp.as_ref().map(|b| b.status()),
        digest: Default::default(),
        applied: applied.clone(),
    };
    let metrics_task = rt.spawn(crate::metrics::serve(metrics_listeners, sources));
    let rec: SharedReconciler = Arc::new(Mutex::new(rec));
    info!(
        "sluice ready: {} virtual services, {} workers on {}",
        shared.snapshot.load().services.len(),
        workers,
        args.ifaces.join(",")
    );

    let watch_stats = Arc::new(source::cluster::WatchStats::default());
    let watch =
        cluster.map(|c| rt.spawn(source::cluster::follow(c, rec.clone(), watch_stats.clone())));
    let link_stats = Arc::new(crate::links::LinkStats::default());
    let monitor = crate::links::LinkMonitor::new(&links, link_stats.clone());
    rt.block_on(control_loop(
        &args, &host, &rec, &shared, &counters, signals, listeners, monitor, &applied,
    ));
    // Withdraw while the workers still serve, so that flows drain to the
    // other hosts as the routes go.
    if let Some(b) = bgp {
        match b.shutdown(BGP_SHUTDOWN_TIMEOUT) {
            Some(Ok(())) => info!("bgp: every VIP withdrawn"),
            Some(Err(e)) => error!("bgp: VIPs not withdrawn: {e}"),
            None => error!("bgp: the announcer did not answer within {BGP_SHUTDOWN_TIMEOUT:?}; VIPs may stay announced"),
        }
    }
    if let Some(w) = watch {
        w.abort();
    }
    metrics_task.abort();
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(range_follower);
    let host_counts = host_traffic.map_or((0, 0, 0), |h| h.stop());

    info!("stopping");
    persister.flush();
    shared.stop.store(true, Ordering::Relaxed);
    let mut workers_back = Vec::new();
    for h in handles {
        if let Ok(w) = h.join() {
            workers_back.push(w);
        }
    }
    sweep_stop.store(true, Ordering::Relaxed);
    if let Some(h) = sweep {
        let _ = h.join();
    }
    // Nothing writes the flows any more: the next start reports a clean
    // stop (the flows stay, for a restart to re-attach).
    shared.flows.mark_clean();
    // Sockets close before the program detaches.
    drop(workers_back);
    let parts = match Arc::try_unwrap(rec) {
        Ok(m) => Some(
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .into_publisher()
                .into_parts(),
        ),
        Err(_) => {
            error!("a control task still holds the reconciler; the steering program stays attached until exit");
            None
        }
    };
    let t = totals(&counters);
    for (k, v) in &t {
        println!("counter {k} {v}");
    }
    println!("counter flows_live {}", shared.flows.len());
    println!("counter host_traffic_redirected {}", host_counts.0);
    println!("counter host_traffic_refused {}", host_counts.1);
    println!(
        "counter host_traffic_service_cidr_refused {}",
        host_counts.2
    );
    for (k, v) in shared.flows.early_drops().named() {
        println!("counter {k} {v}");
    }
    for (k, v) in watch_stats.named() {
        println!("counter {k} {v}");
    }
    for (k, v) in link_stats.named() {
        println!("counter {k} {v}");
    }
    if let Some(parts) = parts {
        let steer_stats: Vec<_> = parts.steering.iter().map(|s| s.stats()).collect();
        let fast_stats: Vec<_> = parts.steering.iter().map(|s| s.fast_stats()).collect();
        drop(parts);
        for (l, on) in links.iter().zip(&egress_on) {
            println!("counter fast_path_egress_on_{} {}", l.name, u8::from(*on));
        }
        for (l, s) in links.iter().zip(fast_stats) {
            if let Ok(s) = s {
                println!("counter xdp_fast_hits_{} {}", l.name, s.hits);
                println!("counter xdp_fast_slow_{} {}", l.name, s.slow);
                println!("counter xdp_fast_malformed_{} {}", l.name, s.malformed);
            }
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
                    println!(
                        "counter xdp_fragments_redirected_{} {}",
                        l.name, s.fragments_redirected
                    );
                    println!("counter xdp_other_host_{} {}", l.name, s.other_host);
                    println!(
                        "counter xdp_service_cidr_dropped_{} {}",
                        l.name, s.service_range_dropped
                    );
                }
                Err(e) => warn!(ifname = %l.name, error = %e, "no XDP counters to print"),
            }
        }
    }
    api::remove_socket(&args.api);
    info!("sluice stopped");
    Ok(())
}

/// Opens the `--flow-state` file ([`state_file::open`]) and logs how:
/// re-attached (with what it kept), created, or discarded and why.
/// Returns the table and its epoch (`CLOCK_MONOTONIC` ns).
///
/// [`state_file::open`]: sluice_dataplane::flow_table::state_file::open
fn open_flow_state(
    path: &std::path::Path,
    v4: usize,
    v6: usize,
) -> Result<(FlowTable, u64), RunError> {
    use sluice_dataplane::flow_table::state_file::{self, Outcome};
    let o = state_file::open(path, v4, v6, Timeouts::default())?;
    let p = path.display();
    match &o.outcome {
        Outcome::Created => info!("flow state {p}: new file"),
        Outcome::Discarded(why) => {
            warn!("flow state {p}: not re-attached ({why}); starting with no flows")
        }
        Outcome::Attached {
            was_clean,
            restored: r,
        } => info!(
            "flow state {p}: re-attached {} flows in {:?} (previous stop {}; dropped {} invalid, {} expired, {} duplicate, {} without index room)",
            r.kept,
            o.took,
            if *was_clean { "clean" } else { "unclean: killed or crashed" },
            r.invalid,
            r.expired,
            r.duplicate,
            r.unindexed
        ),
    }
    Ok((o.table, o.epoch_ns))
}

/// Binds re-attached flows to the first table (new service slots and
/// backend ids, affinity; [`sluice_dataplane::restore`]) and recounts the
/// least-connection schedulers' connections from them, before the first
/// packet.
fn restore_flows(
    snap: &sluice_dataplane::pipeline::Snapshot,
    flows: &FlowTable,
    affinity: &AffinityTable,
    epoch_ns: u64,
) {
    if flows.is_empty() {
        return;
    }
    let t = std::time::Instant::now();
    let now =
        (sluice_dataplane::shm::monotonic_ns().saturating_sub(epoch_ns) / 1_000_000_000) as u32;
    let r = sluice_dataplane::restore::rebind(snap, flows, affinity, now);
    snap.services.recount_connections(flows);
    info!(
        "flow state: {} flows bound to the first table in {:?} ({} removed: no service, {} removed: backend gone; {} affinity entries)",
        r.kept,
        t.elapsed(),
        r.no_service,
        r.no_backend,
        r.affinity
    );
}

/// The node-traffic socket programs, when `--host-traffic on`.
fn start_host_traffic(
    args: &RunArgs,
    shared: &Arc<Shared>,
    host_addrs: &[IpAddr],
) -> Result<Option<crate::host_traffic::HostTraffic>, RunError> {
    if args.host_traffic == crate::host_traffic::Mode::Off {
        return Ok(None);
    }
    let opts = crate::host_traffic::PlanOpts {
        host_addrs: host_addrs.iter().map(|&a| a.into()).collect(),
        localhost_nodeports: crate::host_traffic::localhost_nodeports(&args.nodeport_addresses),
        service_ranges: args.service_cidrs.is_some(),
    };
    Ok(Some(crate::host_traffic::HostTraffic::start(
        shared.clone(),
        opts,
    )?))
}

/// The store and first commit `sluice run` starts from.
///
/// Precedence: the state saved by the previous run ([`crate::persist`])
/// is restored whole (every object with its owner), then the `--config`
/// file is applied on top as on a SIGHUP: its objects replace saved ones of
/// the same key, and objects the file wrote before but no longer holds are
/// deleted; objects written through the API stay. A saved state that, with
/// the file, does not compile is moved aside (`state.json.rejected-TIME`)
/// and the file alone is used; a corrupt one was already
/// ([`crate::persist::restore`]).
fn first_state(
    args: &RunArgs,
    host: &Host,
    objects: Vec<serde_json::Value>,
) -> Result<
    (
        Store,
        Commit<(config::Config, reconcile::compile::Compiled)>,
    ),
    RunError,
> {
    let restored = match crate::persist::restore(&args.state_dir) {
        crate::persist::Restore::Restored(s) => Some(s),
        _ => None,
    };
    if let Some(mut store) = restored {
        match commit_first(&mut store, objects.clone(), host) {
            Ok(c) => return Ok((store, c)),
            Err(RunError::Config(e)) => {
                let kept = crate::persist::set_aside_state(&args.state_dir, "rejected")
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|e| format!("(not moved: {e})"));
                error!("the saved state does not compile with the config: {e}; kept as {kept}; starting from the config file alone");
            }
            Err(e) => return Err(e),
        }
    }
    let mut store = Store::default();
    let c = commit_first(&mut store, objects, host)?;
    Ok((store, c))
}

fn commit_first(
    store: &mut Store,
    objects: Vec<serde_json::Value>,
    host: &Host,
) -> Result<Commit<(config::Config, reconcile::compile::Compiled)>, RunError> {
    let batch = source::file::batch(objects, store);
    store
        .commit(batch, SystemTime::now(), |objs| {
            let cfg = compile_config(objs, &host.ctx)?;
            let c = reconcile::compile_first(&cfg, host)?;
            Ok::<_, ConfigError>((cfg, c))
        })
        .map_err(|e| match e {
            StoreError::Invalid(e) => RunError::Config(e),
            other => RunError::Store(other.to_string()),
        })
}

/// How long the shutdown waits for BIRD to take the withdrawal.
const BGP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the start waits for every worker to enter its loop.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until every worker has loaded the first table (it stores the
/// table's version as it enters its loop, before its first burst).
fn wait_workers_running(counters: &[Arc<Counters>]) {
    let start = std::time::Instant::now();
    while !counters
        .iter()
        .all(|c| c.table_version.load(Ordering::Acquire) >= 1)
    {
        if start.elapsed() > WORKER_START_TIMEOUT {
            warn!("not every worker started within {WORKER_START_TIMEOUT:?}; attaching anyway");
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Attaches every interface's steering program: the last step of the start.
fn attach_all(steering: &mut [Steering]) -> Result<(), RunError> {
    for s in steering {
        s.attach_link()?;
        info!(
            "steering program attached to {} ({:?} mode)",
            s.ifname(),
            s.mode()
        );
    }
    Ok(())
}

fn open_links(ifaces: &[String]) -> Result<Vec<Link>, RunError> {
    let mut links = Vec::new();
    for (i, name) in ifaces.iter().enumerate() {
        if ifaces[..i].contains(name) {
            return Err(RunError::DuplicateInterface(name.clone()));
        }
        let l = netlink::link(name).map_err(|source| RunError::Interface {
            name: name.clone(),
            source,
        })?;
        links.push(l);
    }
    Ok(links)
}

/// Opens the AF_XDP sockets: worker w owns queue q of every interface where
/// q % workers == w.
fn open_ports(
    links: &[Link],
    workers: usize,
    steering: &mut [Steering],
) -> Result<Vec<XskPort>, RunError> {
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
    Ok(ports)
}

type WorkerHandle = std::thread::JoinHandle<Worker<XskPort>>;

/// The fast path's publishers (one per worker) and sweep, over handles on
/// every interface's `fast_flows` map, when `--fast-path xdp`.
///
/// Frames redirected into a veth are delivered only when its peer runs
/// NAPI (an XDP program on the peer, or GRO on it, kernel ≥ 5.13), which
/// the link advertises as `NDO_XMIT` ([`crate::xdp_features`]): a link
/// without it (or whose features cannot be read) gets no fast-path
/// traffic, with a logged reason, and its flows stay on the AF_XDP path.
/// Checked once at the start.
fn fast_path(
    (mode, after): (FastMode, u32),
    links: &[Link],
    steering: &[Steering],
    counters: &[Arc<Counters>],
) -> Result<Option<FastSetup>, RunError> {
    if mode == FastMode::Off {
        return Ok(None);
    }
    let ifindex: Vec<u32> = links
        .iter()
        .map(|l| match crate::xdp_features::xdp_features(l.index) {
            Ok(f) if f & crate::xdp_features::XDP_ACT_NDO_XMIT != 0 => l.index,
            Ok(_) => {
                warn!(
                    "fast path: not towards {}: it does not take redirected frames (a veth whose peer has neither GRO nor an XDP program: ethtool -K PEER gro on)",
                    l.name
                );
                0
            }
            Err(e) => {
                warn!("fast path: not towards {}: {e}", l.name);
                0
            }
        })
        .collect();
    let maps = || -> Result<Vec<_>, RunError> {
        Ok(steering
            .iter()
            .map(|s| s.fast_map())
            .collect::<Result<Vec<_>, _>>()?)
    };
    let withdrawals = sluice_dataplane::fastpath::sync::withdrawals();
    let mut pubs = Vec::new();
    for w in 0..counters.len() {
        // At most MAX_QUEUES (256) workers: one per queue.
        let w = u8::try_from(w).unwrap_or(u8::MAX);
        pubs.push(FastPublisher::new(
            maps()?,
            ifindex.clone(),
            w,
            withdrawals.clone(),
            after,
        ));
    }
    info!("fast path: xdp (established flow directions are forwarded by the steering program once a worker forwarded {after} packets of them)");
    let sweeper = Sweeper::new(maps()?, ifindex.clone(), counters.to_vec(), withdrawals);
    Ok(Some(FastSetup {
        publishers: pubs,
        sweeper,
        egress_on: ifindex.iter().map(|&i| i != 0).collect(),
    }))
}

/// What [`fast_path`] sets up.
struct FastSetup {
    publishers: Vec<FastPublisher>,
    sweeper: Sweeper,
    /// By link: whether the fast path may send there.
    egress_on: Vec<bool>,
}

fn start_workers(
    ports: Vec<XskPort>,
    publishers: Vec<Option<FastPublisher>>,
    shared: &Arc<Shared>,
    counters: &[Arc<Counters>],
    cores: &[core_affinity::CoreId],
    busy_poll: bool,
) -> Result<Vec<WorkerHandle>, RunError> {
    let mut handles = Vec::new();
    let ports_len = ports.len();
    for ((w, port), fast) in ports.into_iter().enumerate().zip(publishers) {
        let shared = shared.clone();
        let c = counters[w].clone();
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[w % cores.len()])
        };
        let opts = WorkerOpts {
            burst: 64,
            busy_poll,
            share: sluice_dataplane::snat::Share::new(w, ports_len),
        };
        let h = std::thread::Builder::new()
            .name(format!("sluice-w{w}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                sluice_dataplane::traffic::bind_worker(w);
                let mut worker = Worker::new(port, opts);
                if let Some(f) = fast {
                    worker.set_fast_path(f);
                }
                worker.run(&shared, &c);
                worker
            })
            .map_err(|source| RunError::Spawn { worker: w, source })?;
        handles.push(h);
    }
    Ok(handles)
}

/// The signals the daemon reacts to.
struct Signals {
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }
}

/// Runs `f` on the reconciler on the blocking pool (it compiles and talks
/// netlink), so the runtime keeps serving.
async fn with_reconciler<T: Send + 'static>(
    rec: &SharedReconciler,
    f: impl FnOnce(&mut Reconciler) -> T + Send + 'static,
) -> Option<T> {
    let rec = rec.clone();
    tokio::task::spawn_blocking(move || {
        let mut r = rec.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r)
    })
    .await
    .ok()
}

/// Signals, timers and the API, until SIGINT or SIGTERM.
#[allow(clippy::too_many_arguments)]
async fn control_loop(
    args: &RunArgs,
    host: &Host,
    rec: &SharedReconciler,
    shared: &Arc<Shared>,
    counters: &[Arc<Counters>],
    mut signals: Signals,
    listeners: api::Listeners,
    mut links: crate::links::LinkMonitor,
    applied: &crate::bgp::ConfigApplied,
) {
    let api = tokio::spawn(api::serve(listeners, rec.clone(), args.api.clone()));
    let checks = spawn_checks(rec).await;
    let mut expire = tokio::time::interval(Duration::from_secs(1));
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    let mut prune = tokio::time::interval(Duration::from_secs(10));
    let stats_every = Duration::from_secs(args.stats_interval.max(1));
    let mut stats =
        tokio::time::interval_at(tokio::time::Instant::now() + stats_every, stats_every);
    for i in [&mut expire, &mut retry, &mut prune, &mut stats] {
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let (hops, hops_task) = follow_next_hops(rec).await;
    loop {
        tokio::select! {
            _ = signals.hup.recv() => match &args.config {
                Some(path) => {
                    reload_file(rec, path.clone(), host.ctx.clone(), applied.clone()).await
                }
                None => info!("SIGHUP: no --config file to apply"),
            },
            _ = signals.int.recv() => break,
            _ = signals.term.recv() => break,
            _ = expire.tick() => {
                let shared = shared.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let cap = shared.flows.capacity();
                    shared.flows.expire(shared.now(), (cap / 8).max(4096));
                    shared
                        .snapshot
                        .load()
                        .services
                        .recount_connections(&shared.flows);
                })
                .await;
            }
            _ = retry.tick() => {
                links.check_queues(|name| netlink::link(name).ok().map(|l| l.rx_queues));
                with_reconciler(rec, |r| r.publisher().retry_unresolved()).await;
            }
            _ = prune.tick() => {
                with_reconciler(rec, |r| {
                    r.publisher().prune_removed();
                    r.publisher().prune_moved();
                })
                .await;
            }
            changes = async { hops.as_ref().map(|w| w.next()).expect("guarded").await }, if hops.is_some() => {
                links.observe(&changes.links);
                with_reconciler(rec, move |r| {
                    r.publisher().follow_kernel(&changes);
                })
                .await;
            }
            _ = stats.tick(), if args.stats_interval > 0 => log_stats(counters, shared),
        }
    }
    api.abort();
    if let Some(t) = hops_task {
        t.abort();
    }
    for t in checks {
        t.abort();
    }
}

/// Subscribes to the kernel's neighbour and route events
/// ([`nexthop::Watch`]) and catches up with what moved since the first
/// compile; without the subscription, next hops follow compiles and the
/// retry timer only.
async fn follow_next_hops(
    rec: &SharedReconciler,
) -> (Option<nexthop::Watch>, Option<tokio::task::JoinHandle<()>>) {
    match nexthop::Watch::open() {
        Ok((w, task)) => {
            let all = nexthop::Changes {
                routes: true,
                ..Default::default()
            };
            with_reconciler(rec, move |r| {
                r.publisher().follow_kernel(&all);
            })
            .await;
            (Some(w), Some(task))
        }
        Err(e) => {
            warn!("neighbour events: {e}; next hops are re-read at compiles and retries only");
            (None, None)
        }
    }
}

/// The real-server health checks: the probes, and the task that
/// republishes when a server changes state (`check/`).
async fn spawn_checks(rec: &SharedReconciler) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(checks) = with_reconciler(rec, |r| r.publisher().checks().clone()).await else {
        return Vec::new();
    };
    let changed = checks.changed();
    let rec = rec.clone();
    let republish = tokio::spawn(async move {
        loop {
            changed.notified().await;
            with_reconciler(&rec, |r| drop(r.republish_health())).await;
        }
    });
    vec![tokio::spawn(crate::check::run(checks)), republish]
}

/// Applies the file's objects (SIGHUP); a bad file changes nothing.
/// Applies the config file again (SIGHUP) and records in `applied`
/// whether it applied: a failure leaves the host on an older generation
/// than its file, which withholds its announcements ([`crate::bgp`]).
async fn reload_file(
    rec: &SharedReconciler,
    path: PathBuf,
    ctx: CompileCtx,
    applied: crate::bgp::ConfigApplied,
) {
    with_reconciler(rec, move |r| {
        let epoch = r.publisher().epoch();
        let result = source::file::read(&path, &ctx)
            .map_err(|e| e.to_string())
            .and_then(|objects| {
                let b = source::file::batch(objects, r.store());
                r.apply(b).map_err(|e| e.to_string())
            });
        applied.set(result.is_ok());
        match result {
            Ok(a) => info!(
                "reload applied version={} services={} flushed_flows={} objects_changed={}",
                a.commit.output.epoch,
                a.commit.output.services,
                a.commit.output.flushed,
                a.commit.events.len()
            ),
            Err(e) => error!("reload rejected: {e}; still serving version={epoch}"),
        }
    })
    .await;
}

fn log_stats(counters: &[Arc<Counters>], shared: &Shared) {
    let t = totals(counters);
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

/// The addresses of each served interface, in `--iface` order and the
/// kernel's dump order, IPv6 link-local ones left out (they are not node
/// addresses a client could reach a NodePort on); what
/// [`NodePortAddresses::select`] chooses from.
fn link_addresses(links: &[Link]) -> Vec<Vec<IpAddr>> {
    links
        .iter()
        .map(|l| match netlink::addresses(l.index) {
            Ok(addrs) => addrs
                .into_iter()
                .map(|(a, _)| a)
                .filter(|a| !matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
                .collect(),
            Err(e) => {
                warn!("addresses of {}: {e}", l.name);
                Vec::new()
            }
        })
        .collect()
}
