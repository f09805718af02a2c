//! `sluice-bench`: end-to-end load through Sluice and its baselines on veth.
//!
//! `sluice-bench run` builds the test network (its own namespaces, a fresh
//! set per contender), starts servers in the backends, and puts the same
//! bounded loads through each contender in turn:
//!
//! - **sluice**: the real binary, `sluice run --workers 1`;
//! - **iptables**: the kernel's DNAT in kube-proxy's iptables-mode chains
//!   (KUBE-SERVICES → KUBE-SVC-* with `statistic --mode random` →
//!   KUBE-SEP-*, KUBE-MARK-MASQ / KUBE-POSTROUTING masquerade);
//! - **nftables**: kube-proxy's nftables-mode shape, a verdict map to a
//!   per-service chain that DNATs with `numgen random mod N map`;
//! - **xdp-fwd**: a raw AF_XDP forwarder that only rewrites MACs, over the
//!   same steering program and socket layout as Sluice (the ceiling of the
//!   I/O path).
//!
//! Loads, each bounded in packets/connections *and* seconds:
//! UDP 64-byte frames over 1…N flows from an `AF_PACKET` generator, counted
//! where the backends' UDP layer received them; TCP connections per second
//! (open, server closes, client closes) from a non-blocking client; bulk TCP
//! with `iperf3 -t`. Then a services sweep (1k, 10k services in the table).
//!
//! Pinning (2 cores): the LB's data path on `--lb-cpu` (Sluice's worker and
//! the raw forwarder via `taskset`, the kernel's forwarding via RPS on the
//! LB's links), everything else (generator, clients, servers, sinks, this
//! orchestrator) on `--load-cpu`. Veth does a frame's receive work on the
//! CPU that sent it, so what the LB sends is carried through the bridge
//! into the backends on the LB CPU; a separate paced run moves that to the
//! load CPU and measures the LB's own CPU time per packet.
//!
//! The other subcommands are the pieces it runs inside the namespaces.

mod conn;
mod contender;
mod fwd;
mod gen;
mod report;
mod runner;
mod serve;
mod sys;
mod topo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use contender::{Kind, LbOpts};
use sys::Res;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-bench",
    about = "End-to-end load through Sluice, iptables, nftables and a raw AF_XDP forwarder on veth"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the topology, run every contender, print the tables.
    Run(Box<RunArgs>),
    /// (internal) UDP generator, run in the client namespace.
    #[command(hide = true)]
    Gen(GenCmd),
    /// (internal) UDP sink and accept-and-close TCP servers, in a backend.
    #[command(hide = true)]
    Serve(ServeCmd),
    /// (internal) Connections/s client, in the client namespace.
    #[command(hide = true)]
    Conn(ConnCmd),
    /// (internal) The raw AF_XDP MAC-rewriting forwarder, in the LB namespace.
    #[command(hide = true)]
    Fwd(FwdCmd),
    /// (internal) Spin at SCHED_IDLE priority (keeps the CPU's tick running).
    #[command(hide = true)]
    Soak {
        #[arg(long)]
        seconds: f64,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Contenders, in the order they run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sluice,iptables,nftables,xdp-fwd"
    )]
    contenders: Vec<Kind>,
    /// Tests to run: udp, conn, tcp.
    #[arg(long, value_delimiter = ',', default_value = "udp,conn,tcp")]
    tests: Vec<String>,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Upper bound on the packets of one UDP measurement.
    #[arg(long, default_value_t = 20_000_000)]
    max_packets: u64,
    /// UDP flows for the main table and the services sweep.
    #[arg(long, default_value_t = 10_000)]
    flows: usize,
    /// UDP flow counts for the rate-vs-flows sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,100,10000")]
    flows_sweep: Vec<usize>,
    /// Service counts for the services sweep (1 is the main table; empty
    /// to skip).
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services_sweep: Vec<usize>,
    /// Runs of each UDP and conn/s measurement; the best is reported (the
    /// least disturbed by other work on the machine).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Concurrent connections of the connections/s client.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// UDP frames per second to offer (0: as fast as the generator can).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// CPU for the LB's data path (Sluice's worker, the raw forwarder, the
    /// kernel's forwarding via RPS).
    #[arg(long, default_value_t = 1)]
    lb_cpu: usize,
    /// CPU for the generator, clients, servers and sinks.
    #[arg(long, default_value_t = 0)]
    load_cpu: usize,
    /// Niceness of every process the bench starts (all the same, so the
    /// contenders are treated alike; negative so that unrelated work on a
    /// shared machine, such as builds, disturbs the measurement less. The
    /// kernel contenders' forwarding runs in softirq, above any process).
    #[arg(long, default_value_t = -10, allow_hyphen_values = true)]
    nice: i32,
    /// Threaded NAPI on the LB's links, pinned to the LB CPU, during the
    /// rate tests too (it always is in the LB-cost run). Only matters with
    /// an XDP program attached (Sluice, xdp-fwd): their XDP program and the
    /// copy into the AF_XDP ring then run on the LB CPU instead of in
    /// softirq on the sending CPU (veth's default).
    #[arg(long)]
    threaded_napi: bool,
    /// Carry what the LB sends through the bridge into the backends on the
    /// load CPU (RPS on the switch port) instead of the LB CPU (veth's
    /// default: the CPU that sent it). Always so in the LB-cost run.
    #[arg(long)]
    downstream_on_load_cpu: bool,
    /// Offered rate (frames/s) of the LB-cost run, which measures the LB
    /// CPU's time per packet (0: skip it). Keep it below what the load CPU
    /// can generate and deliver into the backends.
    #[arg(long, default_value_t = 100_000)]
    cost_rate: u64,
    /// Busy-poll in Sluice and the raw forwarder (a full core each).
    #[arg(long)]
    busy_poll: bool,
    /// iptables backend for the iptables contender: legacy or nft.
    #[arg(long, default_value = "legacy", value_parser = ["legacy", "nft"])]
    iptables: String,
    /// The sluice binary (default: next to this one).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Sluice's SNAT port range. Empty (the default): Sluice's own, every
    /// port from 1024 up outside the host's ephemeral range (36k ports
    /// with the usual 32768-60999; Sluice refuses a range that overlaps
    /// it, as 1024-65535 would).
    #[arg(long, default_value = "")]
    sluice_snat_ports: String,
    /// Extra argument for `sluice run` (repeatable).
    #[arg(long = "sluice-arg", allow_hyphen_values = true)]
    sluice_args: Vec<String>,
    /// Namespace prefix (default: sb + a random suffix).
    #[arg(long)]
    prefix: Option<String>,
    /// Write every measurement as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write a PNG of rate against flows and services.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct GenCmd {
    #[arg(long)]
    ifname: String,
    #[arg(long)]
    src_mac: String,
    #[arg(long)]
    dst_mac: String,
    #[arg(long, value_delimiter = ',')]
    src_ips: Vec<std::net::Ipv4Addr>,
    #[arg(long)]
    flows: usize,
    #[arg(long, default_value_t = 1)]
    services: usize,
    #[arg(long)]
    dport: u16,
    #[arg(long)]
    count: u64,
    #[arg(long)]
    seconds: f64,
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

#[derive(clap::Args, Debug)]
struct ServeCmd {
    #[arg(long)]
    udp: u16,
    #[arg(long, value_delimiter = ',')]
    tcp: Vec<u16>,
    #[arg(long)]
    seconds: f64,
}

#[derive(clap::Args, Debug)]
struct ConnCmd {
    #[arg(long)]
    addr: std::net::SocketAddrV4,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long)]
    seconds: f64,
}

#[derive(clap::Args, Debug)]
struct FwdCmd {
    #[arg(long)]
    front: String,
    #[arg(long)]
    back: String,
    #[arg(long)]
    client_mac: String,
    #[arg(long, value_delimiter = ',')]
    backend_macs: Vec<String>,
    #[arg(long)]
    pin_port: u16,
    #[arg(long)]
    seconds: f64,
    #[arg(long)]
    busy_poll: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(*a),
        Cmd::Gen(g) => gen_cmd(g),
        Cmd::Serve(s) => serve::run(s.udp, &s.tcp, s.seconds),
        Cmd::Conn(c) => conn::run(
            c.addr.ip().octets(),
            c.addr.port(),
            c.concurrency,
            c.seconds,
        )
        .map(|r| {
            println!(
                "ok {} errors {} timeouts {} secs {:.6}",
                r.ok, r.errors, r.timeouts, r.secs
            )
        }),
        Cmd::Fwd(f) => fwd_cmd(f),
        Cmd::Soak { seconds } => sys::soak(seconds),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn gen_cmd(g: GenCmd) -> Res<()> {
    let a = gen::GenArgs {
        ifname: g.ifname,
        src_mac: topo::parse_mac(&g.src_mac)?,
        dst_mac: topo::parse_mac(&g.dst_mac)?,
        src_ips: g.src_ips.iter().map(|i| i.octets()).collect(),
        flows: g.flows,
        services: g.services,
        dport: g.dport,
        count: g.count,
        seconds: g.seconds,
        rate: g.rate,
    };
    let (sent, secs) = gen::run(&a)?;
    println!("sent {sent} secs {secs:.6}");
    Ok(())
}

fn fwd_cmd(f: FwdCmd) -> Res<()> {
    use contender::{HTTP_PORT, IPERF_PORT, IPERF_VIP, UDP_PORT};
    use sluice_dataplane::types::proto;
    let a = fwd::FwdArgs {
        front: f.front,
        back: f.back,
        client_mac: topo::parse_mac(&f.client_mac)?,
        backend_macs: f
            .backend_macs
            .iter()
            .map(|m| topo::parse_mac(m))
            .collect::<Res<_>>()?,
        pin_port: f.pin_port,
        vips: vec![
            (topo::VIP, UDP_PORT, proto::UDP),
            (topo::VIP, HTTP_PORT, proto::TCP),
            (IPERF_VIP, IPERF_PORT, proto::TCP),
        ],
        busy_poll: f.busy_poll,
        seconds: f.seconds,
    };
    fwd::run(&a)
}

fn random_suffix() -> String {
    let mut b = [0u8; 2];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        b = (std::process::id() as u16).to_be_bytes();
    }
    format!("{:02x}{:02x}", b[0], b[1])
}

fn run(a: RunArgs) -> Res<()> {
    let stop = sys::stop_flag();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces, XDP, AF_XDP)".into());
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if a.lb_cpu >= ncpu || a.load_cpu >= ncpu {
        return Err(format!("--lb-cpu/--load-cpu must be below {ncpu}"));
    }
    // Up to 10 minutes: the sustained SNAT measurement (README, SNAT
    // capacity) runs the conn test that long.
    if a.seconds <= 0.0 || a.seconds > 600.0 {
        return Err("--seconds must be in (0, 600]".into());
    }
    if let Some(&s) = a.services_sweep.iter().find(|&&s| s == 0 || s > 32_000) {
        return Err(format!("{s} services: must be 1..32000"));
    }
    if let Some(&f) = a
        .flows_sweep
        .iter()
        .chain([&a.flows])
        .find(|&&f| f == 0 || f > 120_000)
    {
        return Err(format!("{f} flows: must be 1..120000"));
    }
    for tool in ["ip", "taskset", "ethtool"]
        .into_iter()
        .chain(a.tests.iter().any(|t| t == "tcp").then_some("iperf3"))
    {
        sys::run(&["sh", "-c", &format!("command -v {tool}")])
            .map_err(|_| format!("{tool} is not installed"))?;
    }
    let exe = sys::self_exe()?;
    let sluice = match a.sluice {
        Some(p) => p,
        None => PathBuf::from(&exe)
            .parent()
            .map(|d| d.join("sluice"))
            .ok_or("cannot locate sluice")?,
    };
    let mut contenders = a.contenders.clone();
    contenders.dedup();
    let prefix = a.prefix.unwrap_or_else(|| format!("sb{}", random_suffix()));
    let workdir = runner::workdir(&prefix)?;
    let per_contender = a.seconds * (a.flows_sweep.len() + 3 + 2 * a.services_sweep.len()) as f64;
    let o = runner::RunOpts {
        contenders: contenders.clone(),
        seconds: a.seconds,
        max_packets: a.max_packets,
        flows: a.flows,
        flows_sweep: a.flows_sweep.clone(),
        services_sweep: a.services_sweep.clone(),
        concurrency: a.concurrency,
        rate: a.rate,
        lb_cpu: a.lb_cpu,
        load_cpu: a.load_cpu,
        downstream_on_load: a.downstream_on_load_cpu,
        cost_rate: a.cost_rate,
        repeat: a.repeat.max(1),
        tests: a.tests.clone(),
        prefix: prefix.clone(),
        lb: LbOpts {
            lb_cpu: a.lb_cpu,
            sluice: sluice.clone(),
            sluice_snat_ports: a.sluice_snat_ports.clone(),
            sluice_args: a.sluice_args.clone(),
            busy_poll: a.busy_poll,
            threaded_napi: a.threaded_napi,
            iptables: a.iptables.clone(),
            workdir: workdir.clone(),
            self_exe: exe,
            // Safety bound on every helper process's life.
            max_seconds: (per_contender * 3.0 + 600.0) as u64,
        },
    };
    // The orchestrator sleeps most of the time; keep it off the LB core.
    sys::pin_self(a.load_cpu)?;
    sys::set_nice(a.nice);
    if (contenders.contains(&Kind::Sluice) || contenders.contains(&Kind::SluiceFast))
        && !sluice.exists()
    {
        eprintln!(
            "sluice-bench: {} does not exist; the sluice contender will fail (build it: cargo build --release -p sluice-control)",
            sluice.display()
        );
    }
    let kernel = sys::run(&["uname", "-r"]).unwrap_or_default();
    println!("# sluice-bench (prefix {prefix}, kernel {})", kernel.trim());
    println!();
    let xdp_rx = if a.threaded_napi {
        format!("in NAPI threads pinned to CPU {}", a.lb_cpu)
    } else {
        format!(
            "in softirq on the CPU that sent the frame (CPU {} for the client's traffic)",
            a.load_cpu
        )
    };
    let downstream = if a.downstream_on_load_cpu {
        format!("on CPU {} (RPS on the switch port)", a.load_cpu)
    } else {
        format!(
            "on CPU {} (veth delivers on the CPU that sent the frame)",
            a.lb_cpu
        )
    };
    println!("## Pinning\n");
    println!(
        "- LB data path on CPU {lb}: sluice runs under `taskset -c {lb}` (its one worker, --workers 1{bp}, pins itself inside that mask); \
         xdp-fwd is one thread under `taskset -c {lb}`; iptables/nftables forward in softirq, brought to CPU {lb} by RPS on the LB's front and back rx queues.\n\
         - CPU {ld}: the UDP generator, the conn/s client, iperf3 client and server, the backends' UDP sinks and TCP servers, and this orchestrator.\n\
         - XDP steering program and copy into the AF_XDP rings (sluice, xdp-fwd): {xdp_rx}.\n\
         - Bridge and backend stacks, for what the LB sends: {downstream}.\n\
         - LB-cost run (lb_cpu_us_per_pkt): {cost} pps offered, NAPI threads pinned to CPU {lb} and the bridge and backends moved to CPU {ld}, so CPU {lb} does the LB's work only; \
         the figure is CPU {lb}'s softirq time plus the LB's own threads' time (sluice or xdp-fwd, NAPI threads) per packet received by the backends.\n\
         - Every process the bench starts runs at nice {nice} (the same for all contenders).",
        lb = a.lb_cpu,
        ld = a.load_cpu,
        bp = if a.busy_poll { ", --busy-poll" } else { "" },
        nice = a.nice,
        cost = a.cost_rate,
    );
    println!("\n## Load\n");
    println!(
        "{}s per measurement; UDP 64-byte frames (max {} per run, {}), main table with {} flows over 1 service; conn/s with {} concurrent connections; iperf3 -t {}.",
        a.seconds,
        a.max_packets,
        if a.rate == 0 { "as fast as possible".to_string() } else { format!("{} pps offered", a.rate) },
        a.flows,
        a.concurrency,
        a.seconds.ceil()
    );
    println!();
    let _ = std::io::Write::flush(&mut std::io::stdout());

    let out = runner::run(&o);
    let names: Vec<String> = contenders.iter().map(|k| k.name().to_string()).collect();
    println!("## Results\n");
    println!("{}", report::main_table(&out.rows, &names, a.flows));
    println!(
        "sluice× = how many times better Sluice does: its rate over the contender's, or for cpu/pkt the contender's cost over Sluice's (> 1: Sluice better).\n"
    );
    let mut fl = a.flows_sweep.clone();
    fl.push(a.flows);
    fl.sort_unstable();
    fl.dedup();
    if a.tests.iter().any(|t| t == "udp") && fl.len() > 1 {
        println!("### UDP rate by number of flows (1 service)\n");
        println!("{}", report::flows_table(&out.rows, &names, &fl));
    }
    if a.services_sweep.iter().any(|&s| s > 1) {
        let mut sv = a.services_sweep.clone();
        if !sv.contains(&1) {
            sv.insert(0, 1);
        }
        let svc_names: Vec<String> = contenders
            .iter()
            .filter(|k| k.has_services())
            .map(|k| k.name().to_string())
            .collect();
        println!(
            "### By number of services ({} UDP flows spread over all services; the main services are listed last)\n",
            a.flows
        );
        println!("{}", report::services_table(&out.rows, &svc_names, &sv));
    }
    println!("### Where each data path ran, and counters\n");
    for (c, p) in &out.pinning {
        println!("- {c}: {p}");
    }
    for (c, n) in &out.notes {
        if !n.is_empty() {
            println!("- {c}: {}", n.join("; "));
        }
    }
    let failed: Vec<&report::Row> = out.rows.iter().filter(|r| r.value.is_none()).collect();
    if !failed.is_empty() {
        println!("\n### Failures\n");
        for r in failed {
            println!(
                "- {} {:?} (flows {}, services {}): {}",
                r.contender, r.test, r.flows, r.services, r.note
            );
        }
    }
    if let Some(p) = &a.csv {
        report::write_csv(p, &out.rows)?;
        println!("\nCSV: {}", p.display());
    }
    if let Some(p) = &a.plot {
        match report::plot(p, &out.rows, &names, a.flows) {
            Ok(()) => println!("Plot: {}", p.display()),
            Err(e) => eprintln!("sluice-bench: plot: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&workdir);
    if stop.load(std::sync::atomic::Ordering::Relaxed) {
        return Err("interrupted".into());
    }
    Ok(())
}
