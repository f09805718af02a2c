//! `sluice`: the load balancer's command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_control::api::{ApiOpts, DEFAULT_MAX_BODY, DEFAULT_SOCKET};
use sluice_control::cli::{self, CliError, Output};
use sluice_control::daemon::{self as run, RunArgs, RunError};
use sluice_control::source::cluster::ClusterSource;
use sluice_dataplane::service::ForwardMethod;
use sluice_dataplane::snat::PortRanges;
use sluice_dataplane::steer::AttachMode;
use sluice_dataplane::types::Cidr;

/// Sluice: a user-space AF_XDP L4 load balancer with Kubernetes Service and
/// IPVS semantics.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Load-balance the services of a config file on the given interfaces.
    Run(Box<RunCmd>),
    /// Create or update objects from files, directories or `-` (stdin),
    /// through the running sluice's API.
    Apply {
        /// File, directory or `-`; repeatable.
        #[arg(long = "filename", short = 'f', required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// List objects of a kind (svc, ep, endpointslices, po), or show one.
    Get {
        /// Kind: services/svc, endpoints/ep, endpointslices, pods/po.
        kind: String,
        /// One object's name.
        name: Option<String>,
        /// Namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(long, short = 'A')]
        all_namespaces: bool,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Delete the objects of files (`-f`), or one object (`KIND NAME`).
    Delete {
        /// File, directory or `-`; repeatable.
        #[arg(long = "filename", short = 'f')]
        files: Vec<PathBuf>,
        /// Kind and name (instead of -f).
        #[arg(num_args = 0..=2)]
        kind_name: Vec<String>,
        /// Namespace (with KIND NAME).
        #[arg(long, short, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Per-service and per-backend traffic (new flows, packets, bytes,
    /// active flows) of the running sluice.
    Stats {
        /// Output format (table, or json).
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// One Service in detail: its spec, the front ends the workers serve
    /// (scheduler, method, policy), its endpoints (weight, state, health,
    /// local) and their counters.
    Describe {
        /// Kind: services/svc.
        kind: String,
        /// The Service's name.
        name: String,
        /// Namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// A live view of per-service and per-backend rates (packets/s,
    /// bits/s, new flows/s), refreshed every second; `q` quits.
    Top {
        /// Print one text frame (rates over one interval) and exit; also
        /// what happens when stdout is not a terminal.
        #[arg(long)]
        once: bool,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Validate a config file and print the virtual services it defines.
    Check {
        /// Kubernetes YAML (Service, Endpoints, EndpointSlice; `---` separated).
        #[arg(long, short)]
        config: PathBuf,
        /// Range nodePorts are allocated from and must lie in (as `sluice
        /// run --nodeport-range`).
        #[arg(long, default_value = "30000-32767", value_parser = parse_range)]
        nodeport_range: (u16, u16),
    },
}

#[derive(clap::Args, Debug)]
struct RunCmd {
    /// Kubernetes YAML (Service, Endpoints, EndpointSlice, Pod), applied at
    /// start and on each SIGHUP (objects that left the file are deleted).
    /// Without it Sluice starts empty and is configured through the API.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Interface to serve (repeat for several, e.g. a client side and a
    /// backend side).
    #[arg(long = "iface", short = 'i', required = true)]
    ifaces: Vec<String>,
    /// Worker threads, one per core, each owning its share of every
    /// interface's queues. Default: min(cores, queues).
    #[arg(long)]
    workers: Option<usize>,
    /// Pod/cluster prefix: clients outside it are masqueraded (SNAT to the
    /// LB's address) so replies return through the LB. Repeatable.
    #[arg(long = "cluster-cidr")]
    cluster_cidrs: Vec<Cidr>,
    /// Masquerade every client (kube-proxy --masquerade-all).
    #[arg(long)]
    masquerade_all: bool,
    /// The cluster's service ranges, CIDR[,CIDR...] of either family
    /// (repeatable), as kube-proxy's nftables mode uses them: a packet to an
    /// address inside one that no Service owns is dropped (counted as
    /// xdp_service_cidr_dropped_IF), one to a ClusterIP on a port no Service
    /// has is rejected with ICMP port unreachable (drop_cluster_ip_port);
    /// with --host-traffic on the node's own connect()/sendto() get EPERM
    /// and ECONNREFUSED. A ClusterIP outside every range is still served
    /// (warned). A range holding a node address is refused. Default: none
    /// (such packets are routed on by the kernel).
    #[arg(long = "service-cidr", value_name = "CIDR[,CIDR...]")]
    service_cidrs: Vec<sluice_control::service_cidr::ServiceCidrs>,
    /// Serve the node's own connections to its services (ClusterIPs,
    /// externalIPs, LoadBalancer IPs, NodePorts on its addresses and, when
    /// --nodeport-addresses selects it, 127.0.0.1) as kube-proxy does:
    /// cgroup socket programs of this network namespace pick the endpoint
    /// at connect(); no endpoint: ECONNREFUSED. Needs a cgroup2 mount.
    /// Off by default: on a dedicated LB host it would change where the
    /// host's own VIP connections go; turn it on where Sluice replaces
    /// kube-proxy on a node. README "From the node itself".
    #[arg(long, value_enum, default_value_t = sluice_control::host_traffic::Mode::Off)]
    host_traffic: sluice_control::host_traffic::Mode,
    /// Capacity of the connection table, in IPv4 flows (58 bytes each,
    /// allocated at start; at most 16777214).
    #[arg(long, default_value_t = 1 << 20)]
    flow_capacity: usize,
    /// Capacity of the connection table for IPv6 flows (106 bytes each;
    /// default: a quarter of --flow-capacity, at least 64).
    #[arg(long)]
    flow_capacity_v6: Option<usize>,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Seconds between counter log lines (0: never).
    #[arg(long, default_value_t = 10)]
    stats_interval: u64,
    /// How the steering XDP program attaches.
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    xdp_mode: XdpMode,
    /// Spin on the rings instead of sleeping when idle (a full core per
    /// worker; lowest latency).
    #[arg(long)]
    busy_poll: bool,
    /// The XDP fast path for established flows: `xdp` (the default) has
    /// the steering program rewrite and redirect them itself once a worker
    /// has published them (towards links that take redirected frames);
    /// `off` sends every packet through the workers.
    #[arg(long, env = "SLUICE_FAST_PATH", default_value = "xdp")]
    fast_path: sluice_dataplane::fastpath::Mode,
    /// With `--fast-path xdp`: publish a flow direction to the fast path
    /// once a worker has forwarded this many of its packets (1: at its
    /// first packet once established). Short connections, which would pay
    /// a map insert and its withdrawal for a packet or two, stay on the
    /// workers; bulk flows move to XDP after their first few packets.
    #[arg(long, env = "SLUICE_FAST_PATH_AFTER", value_name = "N",
          default_value_t = sluice_dataplane::fastpath::publish::DEFAULT_AFTER,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    fast_path_after: u32,
    /// SNAT source ports, LO-HI[,LO-HI...] (at most 8 ranges); they must lie
    /// outside the kernel's net.ipv4.ip_local_port_range. Default: every
    /// port from 1024 up outside it (1024-32767,61000-65535 with the usual
    /// 32768-60999).
    #[arg(long, value_parser = sluice_control::snat::parse_ports)]
    snat_ports: Option<PortRanges>,
    /// A local address to masquerade with (repeatable; each must be
    /// configured on this host). Every address multiplies the SNAT ports
    /// per backend. Default: the route's preferred source towards each
    /// backend.
    #[arg(long = "snat-address")]
    snat_addresses: Vec<std::net::IpAddr>,
    /// This node's name: endpoints whose nodeName equals it are local
    /// (traffic policies Local). Default: the host name.
    #[arg(long)]
    node_name: Option<String>,
    /// Range nodePorts are allocated from and must lie in.
    #[arg(long, default_value = "30000-32767", value_parser = parse_range)]
    nodeport_range: (u16, u16),
    /// Node addresses NodePorts and healthCheckNodePorts answer on
    /// (kube-proxy's flag): CIDR[,CIDR...] keeps the addresses of the
    /// --iface links inside one of the prefixes; `primary` keeps the first
    /// IPv4 and the first IPv6 address of the first --iface. Default: every
    /// address of the --iface links but IPv6 link-local ones. A selection
    /// that keeps no address is refused at start.
    #[arg(long)]
    nodeport_addresses: Option<sluice_control::nodeport_addresses::NodePortAddresses>,
    /// Scheduler of Services without a `sluice.dev/scheduler` annotation
    /// (kube-proxy's --ipvs-scheduler): rr wrr lc wlc sed nq sh dh lblc
    /// lblcr fo ovf mh.
    #[arg(long, default_value = "rr", value_parser = parse_scheduler)]
    scheduler: sluice_dataplane::service::SchedKind,
    /// Serve the cluster DNS (<svc>.<ns>.svc.<domain>) on this address,
    /// e.g. 198.18.0.1:53.
    #[arg(long)]
    dns: Option<std::net::SocketAddr>,
    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Capacity of the session-affinity table (client entries).
    #[arg(long, default_value_t = 1 << 16)]
    affinity_capacity: usize,
    /// The API's Unix socket (created mode 0600).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    api_socket: PathBuf,
    /// Also serve the API over TCP (for kubectl --server http://ADDR:PORT).
    /// A non-loopback address needs --api-token-file.
    #[arg(long)]
    api_listen: Option<std::net::SocketAddr>,
    /// File holding the bearer token every TCP request must carry.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Largest API request body, in bytes (413 above).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    api_max_body: usize,
    /// Follow the Services and EndpointSlices of the cluster this
    /// kubeconfig file names (its current context).
    #[arg(long, conflicts_with = "cluster_watch")]
    kubeconfig: Option<PathBuf>,
    /// Follow the cluster found as kubectl finds it: the in-cluster service
    /// account when KUBERNETES_SERVICE_HOST is set, else $KUBECONFIG or
    /// ~/.kube/config. Never implied: without this flag or --kubeconfig no
    /// cluster is followed.
    #[arg(long)]
    cluster_watch: bool,
    /// Directory of the saved object set (state.json and state.log), restored at start
    /// before the data path attaches.
    #[arg(long, default_value = sluice_control::persist::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Keep the connection table in this file (on tmpfs such as /dev/shm,
    /// or hugetlbfs) so that established flows survive kill -9 and a
    /// restart with the same flags: the next run re-attaches it. Default:
    /// anonymous memory, lost with the process. README "Reliability".
    #[arg(long)]
    flow_state: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (kube-proxy's
    /// flag and default).
    #[arg(long, default_value = sluice_control::metrics::DEFAULT_METRICS_ADDR)]
    metrics_bind_address: std::net::SocketAddr,
    /// Serve the health check at http://ADDR:PORT/healthz (kube-proxy's
    /// flag and default).
    #[arg(long, default_value = sluice_control::metrics::DEFAULT_HEALTHZ_ADDR)]
    healthz_bind_address: std::net::SocketAddr,
    /// Announce the VIPs that have ready endpoints through this routing
    /// daemon (README "Running a tier"): `bird`, BIRD 2 over its control
    /// socket.
    #[arg(long, value_enum)]
    bgp: Option<BgpDaemon>,
    /// BIRD's control socket (with --bgp bird).
    #[arg(long, default_value = sluice_control::bgp::DEFAULT_SOCKET, requires = "bgp")]
    bird_socket: PathBuf,
    /// The file of IPv4 VIP routes that bird.conf includes in its static
    /// protocol `sluice` (with --bgp bird).
    #[arg(long, default_value = sluice_control::bgp::DEFAULT_INCLUDE, requires = "bgp")]
    bird_include: PathBuf,
    /// The file of IPv6 VIP routes that bird.conf includes in its static
    /// protocol `sluice6` (with --bgp bird).
    #[arg(long, default_value = sluice_control::bgp::DEFAULT_INCLUDE6, requires = "bgp")]
    bird_include6: PathBuf,
    /// Serve this long before announcing anything (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, requires = "bgp")]
    announce_after: std::time::Duration,
}

/// The routing daemons `--bgp` drives.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BgpDaemon {
    /// BIRD 2 (Debian `bird2`).
    Bird,
}

/// The API socket the CLI talks to.
#[derive(clap::Args, Debug)]
struct SocketArg {
    /// The running sluice's API socket.
    #[arg(long = "api-socket", env = "SLUICE_SOCKET", default_value = DEFAULT_SOCKET)]
    api_socket: PathBuf,
}

/// A CLI command's exit: 0, or 1 with its error on stderr.
fn cli_exit(r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        // Each failed object was reported already.
        Err(CliError::Some(_)) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpMode {
    /// Native (driver) mode, falling back to generic.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode.
    Generic,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected LO-HI"))?;
    let lo: u16 = a.parse().map_err(|_| format!("{a:?} is not a port"))?;
    let hi: u16 = b.parse().map_err(|_| format!("{b:?} is not a port"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?}: need 1 <= LO <= HI"));
    }
    Ok((lo, hi))
}

/// The kernel's host name (kube-proxy's default node name).
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `--scheduler NAME`, by `ipvsadm -s` names.
fn parse_scheduler(s: &str) -> Result<sluice_dataplane::service::SchedKind, String> {
    use sluice_dataplane::service::SchedKind;
    SchedKind::from_name(s).ok_or_else(|| {
        let all: Vec<&str> = SchedKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown scheduler {s:?}: one of {}", all.join(", "))
    })
}

/// `ipvsadm ARGS` (the binary under that name, e.g. a symlink) or
/// `sluice ipvsadm ARGS`: ipvsadm's own syntax, so it bypasses clap. The
/// daemon is found through `--api-socket PATH` (anywhere in ARGS) or
/// `SLUICE_SOCKET`.
fn ipvsadm_args() -> Option<(String, Vec<String>)> {
    let mut argv: Vec<String> = std::env::args().collect();
    let arg0 = argv.first().cloned().unwrap_or_default();
    let base = Path::new(&arg0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if base == "ipvsadm" {
        argv.remove(0);
        Some((arg0, argv))
    } else if argv.get(1).map(String::as_str) == Some("ipvsadm") {
        Some(("ipvsadm".to_owned(), argv.split_off(2)))
    } else {
        None
    }
}

fn run_ipvsadm(prog: &str, mut args: Vec<String>) -> ExitCode {
    let mut socket = std::env::var_os("SLUICE_SOCKET")
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    if let Some(i) = args
        .iter()
        .position(|a| a == "--api-socket" || a.starts_with("--api-socket="))
    {
        let a = args.remove(i);
        match a.strip_prefix("--api-socket=") {
            Some(v) => socket = PathBuf::from(v),
            None if i < args.len() => socket = PathBuf::from(args.remove(i)),
            None => {
                eprintln!("--api-socket: missing argument");
                return ExitCode::from(255);
            }
        }
    }
    ExitCode::from(cli::ipvsadm::main(prog, &args, &socket))
}

/// How `sluice run` writes its log lines (stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`,
    /// `fields`), for log shippers.
    Json,
}

fn init_logging(format: LogFormat) {
    // netlink-packet-route warns about every attribute newer kernels add;
    // that is noise to an operator.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .init(),
        // Targets stay in JSON: a shipper filters on them.
        LogFormat::Json => fmt.json().with_ansi(false).init(),
    }
}

fn main() -> ExitCode {
    if let Some((prog, args)) = ipvsadm_args() {
        return run_ipvsadm(&prog, args);
    }
    let cli = Cli::parse();
    init_logging(match &cli.cmd {
        Cmd::Run(r) => r.log_format,
        _ => LogFormat::Text,
    });
    match cli.cmd {
        Cmd::Stats { output, socket } => cli_exit(cli::stats::stats(&socket.api_socket, output)),
        Cmd::Describe {
            kind,
            name,
            namespace,
            output,
            socket,
        } => cli_exit(cli::describe::describe(
            &socket.api_socket,
            &cli::describe::DescribeArgs {
                kind: &kind,
                name: &name,
                namespace: &namespace,
                output,
            },
        )),
        Cmd::Top {
            once,
            interval,
            socket,
        } => cli_exit(cli::top::top(&socket.api_socket, once, interval)),
        Cmd::Apply { files, socket } => cli_exit(cli::apply(&socket.api_socket, &files)),
        Cmd::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
            socket,
        } => cli_exit(cli::get(
            &socket.api_socket,
            &cli::GetArgs {
                kind: &kind,
                name: name.as_deref(),
                namespace: &namespace,
                all_namespaces,
                output,
            },
        )),
        Cmd::Delete {
            files,
            kind_name,
            namespace,
            socket,
        } => {
            let kn = match (files.is_empty(), kind_name.as_slice()) {
                (true, [k, n]) => Some((k.as_str(), n.as_str())),
                (false, []) => None,
                _ => {
                    eprintln!("sluice: delete takes -f FILE... or KIND NAME");
                    return ExitCode::from(2);
                }
            };
            cli_exit(cli::delete(&socket.api_socket, &files, kn, &namespace))
        }
        Cmd::Check {
            config,
            nodeport_range,
        } => match sluice_control::config::load_file_with(
            &config,
            &sluice_control::config::CompileCtx {
                nodeport_range,
                ..Default::default()
            },
        ) {
            Ok(cfg) => {
                for s in &cfg.services {
                    // NAT is the default and stays unmarked; DR is shown,
                    // since its backends must own the VIP.
                    let method = match s.forward {
                        ForwardMethod::Nat => "",
                        ForwardMethod::Dr => ", forwarding dr (backends own the VIP)",
                        ForwardMethod::FullNat => {
                            ", forwarding fullnat (clients translated to local addresses)"
                        }
                        ForwardMethod::Tunnel => {
                            ", forwarding ipip (backends decapsulate and own the VIP)"
                        }
                    };
                    println!(
                        "{} {} -> {} backends{method}",
                        s.name,
                        s.vip,
                        s.backends.len()
                    );
                    for b in &s.backends {
                        println!("  {}:{} weight {}", b.addr, b.port, b.weight);
                    }
                    for a in &s.local_addrs {
                        println!("  local address {a}");
                    }
                }
                for w in &cfg.waiting {
                    println!("note: {w}; it forwards nothing until that Service exists");
                }
                println!(
                    "{}: ok, {} virtual services",
                    config.display(),
                    cfg.services.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run(r) => {
            let r = *r;
            let args = RunArgs {
                config: r.config,
                ifaces: r.ifaces,
                workers: r.workers,
                cluster_cidrs: r.cluster_cidrs,
                masquerade_all: r.masquerade_all,
                service_cidrs: sluice_control::service_cidr::ServiceCidrs::merge(r.service_cidrs),
                host_traffic: r.host_traffic,
                flow_capacity: r.flow_capacity,
                flow_capacity_v6: r.flow_capacity_v6,
                stats_interval: r.stats_interval,
                xdp_mode: match r.xdp_mode {
                    XdpMode::Auto => AttachMode::Auto,
                    XdpMode::Native => AttachMode::Native,
                    XdpMode::Generic => AttachMode::Generic,
                },
                busy_poll: r.busy_poll,
                fast_path: r.fast_path,
                fast_path_after: r.fast_path_after,
                snat_ports: r.snat_ports,
                snat_addresses: r.snat_addresses,
                node_name: r.node_name.or_else(host_name),
                nodeport_range: r.nodeport_range,
                nodeport_addresses: r.nodeport_addresses.unwrap_or_default(),
                scheduler: r.scheduler,
                dns: r.dns,
                cluster_domain: r.cluster_domain,
                affinity_capacity: r.affinity_capacity,
                api: ApiOpts {
                    socket: r.api_socket,
                    listen: r.api_listen,
                    token_file: r.api_token_file,
                    max_body: r.api_max_body,
                },
                cluster: match (r.kubeconfig, r.cluster_watch) {
                    (Some(path), _) => Some(ClusterSource::Kubeconfig(path)),
                    (None, true) => Some(ClusterSource::Infer),
                    (None, false) => None,
                },
                state_dir: r.state_dir,
                flow_state: r.flow_state,
                metrics_bind: r.metrics_bind_address,
                healthz_bind: r.healthz_bind_address,
                bgp: r.bgp.map(|BgpDaemon::Bird| sluice_control::bgp::BgpOpts {
                    socket: r.bird_socket,
                    include: r.bird_include,
                    include6: r.bird_include6,
                    announce_after: r.announce_after,
                }),
            };
            match run::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("sluice: {e}");
                    ExitCode::from(match e {
                        RunError::Config(_)
                        | RunError::NodePortAddresses(_)
                        | RunError::ServiceCidr(_) => 2,
                        _ => 1,
                    })
                }
            }
        }
    }
}
