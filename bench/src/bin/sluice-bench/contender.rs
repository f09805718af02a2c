//! The contenders and their configuration: the same services, the same
//! backends and the same masquerade choice for all.
//!
//! Services (identical in every contender):
//! - `udp`: VIP 198.18.100.10:5353/UDP → the three backends :5353 (the
//!   packet-rate load);
//! - `http`: VIP:80/TCP → the three backends :8080 (connections/s);
//! - `iperf`: VIP:5201/TCP → backend 1 :5201 only (bulk throughput);
//! - for the services sweep, `svc-N`: 198.18.128.0+N:5353/UDP → the three
//!   backends :5353, listed *before* the main ones (so a linear chain walks
//!   all of them before reaching the main services: the worst case).
//!
//! Return path: every contender masquerades the client (it is outside the
//! cluster CIDR 198.19.0.0/16), as kube-proxy does with KUBE-MARK-MASQ and
//! KUBE-POSTROUTING, so replies come back through the LB by address, not
//! only by the backends' default route. The raw forwarder does no NAT at all
//! (direct routing, see [`crate::fwd`]): it is the ceiling, not a load
//! balancer.
//!
//! Kernel contenders: iptables (legacy or nft backend) in kube-proxy's
//! iptables-mode chain shape, and nftables in kube-proxy's nftables-mode
//! shape (a verdict map from address . protocol . port to a per-service
//! chain) whose per-service chain picks the endpoint with `dnat to numgen
//! random mod N map { ... }`. Both run with `ip_forward=1` in the LB
//! namespace; Sluice and the raw forwarder run with `ip_forward=0`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::{affinity, run_in, run_input, Proc, Res};
use crate::topo::{
    backend_ip, backend_mac, ip_str, mac_str, service_vip, sysctl, Topo, CLIENT_MAC, CLUSTER_CIDR,
    VIP,
};

/// UDP service port (= target port).
pub const UDP_PORT: u16 = 5353;
/// HTTP service port.
pub const HTTP_PORT: u16 = 80;
/// HTTP target port.
pub const HTTP_TARGET: u16 = 8080;
/// iperf3 port (service = target).
pub const IPERF_PORT: u16 = 5201;
/// The iperf3 service's VIP (its own, so that it can have one endpoint
/// without two Services sharing a cluster IP).
pub const IPERF_VIP: [u8; 4] = [198, 18, 100, 11];

/// Which load balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The real `sluice` binary.
    Sluice,
    /// iptables DNAT in kube-proxy's chain shape.
    Iptables,
    /// nftables DNAT with a verdict map and numgen.
    Nftables,
    /// A raw AF_XDP MAC-rewriting forwarder (the ceiling).
    XdpFwd,
    /// `sluice` with the XDP fast path for established flows
    /// (`--fast-path xdp`; GRO on at the LB's peers, [`Topo::peer_gro`]).
    SluiceFast,
}

impl Kind {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sluice => "sluice",
            Kind::Iptables => "iptables",
            Kind::Nftables => "nftables",
            Kind::XdpFwd => "xdp-fwd",
            Kind::SluiceFast => "sluice-fast",
        }
    }

    /// Whether it has a service table (the services sweep applies).
    pub fn has_services(self) -> bool {
        self != Kind::XdpFwd
    }
}

/// Options every contender needs.
#[derive(Clone, Debug)]
pub struct LbOpts {
    /// CPU of the LB's data path.
    pub lb_cpu: usize,
    /// The sluice binary.
    pub sluice: PathBuf,
    /// `--snat-ports` for `sluice run` (empty: Sluice's default).
    pub sluice_snat_ports: String,
    /// Extra arguments for `sluice run`.
    pub sluice_args: Vec<String>,
    /// Threaded NAPI on the LB's links, pinned to the LB CPU.
    pub threaded_napi: bool,
    /// Busy-poll (Sluice and the raw forwarder).
    pub busy_poll: bool,
    /// `legacy` or `nft`.
    pub iptables: String,
    /// Directory for generated files.
    pub workdir: PathBuf,
    /// This executable (for the forwarder).
    pub self_exe: String,
    /// Upper bound on a contender's life, in seconds.
    pub max_seconds: u64,
}

/// A running contender.
pub struct Lb {
    /// Which one.
    pub kind: Kind,
    proc: Option<Proc>,
    /// Where its data path runs (measured, for the pinning report).
    pub pinning: String,
    /// Notes (XDP mode, ...).
    pub notes: Vec<String>,
    ns: String,
    /// NAPI threads created for it (pinned to the LB CPU).
    napi: Vec<u32>,
}

/// Backends owning the VIPs on `lo` (direct routing), for the raw forwarder.
fn dr_addrs(topo: &Topo, add: bool) -> Res<()> {
    for i in 0..topo.backends {
        let b = topo.backend_ns(i);
        for a in [
            format!("{}/32", ip_str(VIP)),
            format!("{}/32", ip_str(IPERF_VIP)),
            "198.18.128.0/17".to_string(),
        ] {
            let verb = if add { "replace" } else { "del" };
            let r = crate::sys::run(&["ip", "-n", &b, "addr", verb, &a, "dev", "lo"]);
            if add {
                r?;
            }
        }
    }
    Ok(())
}

impl Lb {
    /// Starts `kind` on `topo` with `services` services in the table (1 = the
    /// main services only). Returns it and the seconds it took to apply the
    /// configuration.
    pub fn start(kind: Kind, topo: &Topo, services: usize, o: &LbOpts) -> Res<(Lb, f64)> {
        let ns = topo.ns("lb");
        let mut lb = Lb {
            kind,
            proc: None,
            pinning: String::new(),
            notes: Vec::new(),
            ns: ns.clone(),
            napi: Vec::new(),
        };
        topo.peer_gro(kind == Kind::SluiceFast)?;
        let t0 = Instant::now();
        match kind {
            Kind::Sluice | Kind::SluiceFast => {
                let cfg = write(
                    &o.workdir,
                    &format!("sluice-{services}.yaml"),
                    &yaml(services),
                )?;
                let mut args = vec![
                    o.sluice.to_string_lossy().into_owned(),
                    "run".into(),
                    "--config".into(),
                    cfg.to_string_lossy().into_owned(),
                    "--iface".into(),
                    "front".into(),
                    "--iface".into(),
                    "back".into(),
                    "--workers".into(),
                    "1".into(),
                    "--cluster-cidr".into(),
                    CLUSTER_CIDR.into(),
                    "--stats-interval".into(),
                    "0".into(),
                ];
                if o.busy_poll {
                    args.push("--busy-poll".into());
                }
                if !o.sluice_snat_ports.is_empty() {
                    args.push("--snat-ports".into());
                    args.push(o.sluice_snat_ports.clone());
                }
                // Explicit both ways: the default is xdp.
                let fast = if kind == Kind::SluiceFast {
                    "xdp"
                } else {
                    "off"
                };
                args.extend(["--fast-path".into(), fast.into()]);
                args.extend(o.sluice_args.iter().cloned());
                let mut p = Proc::spawn("sluice", &ns, o.lb_cpu, &args)?;
                let lines = p.wait_stderr("sluice ready", Duration::from_secs(120))?;
                lb.notes.extend(
                    lines
                        .iter()
                        .filter(|l| l.contains("attached to") || l.contains("worker 0"))
                        // Drop the log's timestamp and level.
                        .map(|l| {
                            l.split_once(" INFO ")
                                .map_or(l.as_str(), |(_, m)| m)
                                .trim()
                                .to_string()
                        }),
                );
                lb.pinning = affinity(p.pid());
                lb.proc = Some(p);
            }
            Kind::XdpFwd => {
                dr_addrs(topo, true)?;
                let macs: Vec<String> = (0..topo.backends)
                    .map(|i| mac_str(backend_mac(i)))
                    .collect();
                let mut args = vec![
                    o.self_exe.clone(),
                    "fwd".into(),
                    "--front".into(),
                    "front".into(),
                    "--back".into(),
                    "back".into(),
                    "--client-mac".into(),
                    mac_str(CLIENT_MAC),
                    "--backend-macs".into(),
                    macs.join(","),
                    "--pin-port".into(),
                    IPERF_PORT.to_string(),
                    "--seconds".into(),
                    o.max_seconds.to_string(),
                ];
                if o.busy_poll {
                    args.push("--busy-poll".into());
                }
                let mut p = Proc::spawn("xdp-fwd", &ns, o.lb_cpu, &args)?;
                p.wait_stdout("ready", Duration::from_secs(30))?;
                thread::sleep(Duration::from_millis(100));
                lb.notes.extend(
                    p.stderr_lines()
                        .into_iter()
                        .filter(|l| l.contains("attached")),
                );
                lb.pinning = affinity(p.pid());
                lb.proc = Some(p);
            }
            Kind::Iptables | Kind::Nftables => {
                lb.apply_kernel(services, o)?;
                sysctl(&ns, "net.ipv4.ip_forward", "1")?;
                lb.pinning = format!(
                    "kernel softirq: RPS of front/back rx queues -> CPU {}",
                    o.lb_cpu
                );
            }
        }
        let apply = t0.elapsed().as_secs_f64();
        if o.threaded_napi {
            lb.set_threaded(true, o.lb_cpu)?;
            if !lb.napi.is_empty() {
                let names: Vec<String> = lb
                    .napi
                    .iter()
                    .map(|p| crate::sys::thread_name(*p))
                    .collect();
                lb.pinning.push_str(&format!(
                    "; NAPI threads {} -> CPU {}",
                    names.join(","),
                    o.lb_cpu
                ));
            }
        }
        Ok((lb, apply))
    }

    /// Switches its links to threaded NAPI with the threads pinned to `cpu`
    /// (`on`), or back to NAPI in softirq. Only the contenders with an XDP
    /// program have NAPI on veth; for the others this does nothing.
    pub fn set_threaded(&mut self, on: bool, cpu: usize) -> Res<()> {
        if !matches!(self.kind, Kind::Sluice | Kind::SluiceFast | Kind::XdpFwd) {
            return Ok(());
        }
        if !on {
            self.napi.clear();
            return crate::topo::threaded_napi(&self.ns, false);
        }
        let before = crate::topo::napi_threads();
        crate::topo::threaded_napi(&self.ns, true)?;
        thread::sleep(Duration::from_millis(50));
        let new: Vec<u32> = crate::topo::napi_threads()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        for p in &new {
            crate::sys::run(&["taskset", "-p", "-c", &cpu.to_string(), &p.to_string()])?;
        }
        self.napi = new;
        Ok(())
    }

    /// CPU ticks (USER_HZ) used so far by its own threads: the process and
    /// its NAPI threads (the kernel contenders have none: their work is
    /// softirq, which the caller counts per CPU).
    pub fn own_ticks(&self) -> u64 {
        let mut t = self
            .proc
            .as_ref()
            .map_or(0, |p| crate::sys::proc_ticks(p.pid()));
        for &n in &self.napi {
            t += crate::sys::task_ticks(n, n);
        }
        t
    }

    fn apply_kernel(&mut self, services: usize, o: &LbOpts) -> Res<()> {
        match self.kind {
            Kind::Iptables => {
                let rules = iptables_rules(services);
                write(&o.workdir, &format!("iptables-{services}.rules"), &rules)?;
                let prog = format!("iptables-{}-restore", o.iptables);
                run_input(
                    &["ip", "netns", "exec", &self.ns, &prog],
                    Some(rules.as_bytes()),
                )?;
            }
            Kind::Nftables => {
                let rules = nft_rules(services);
                let f = write(&o.workdir, &format!("nft-{services}.nft"), &rules)?;
                run_in(&self.ns, &["nft", "-f", &f.to_string_lossy()])?;
            }
            _ => return Err("not a kernel contender".into()),
        }
        Ok(())
    }

    /// Stops it; returns the `counter NAME VALUE` lines it printed.
    pub fn stop(&mut self) -> Vec<String> {
        match self.proc.take() {
            Some(mut p) => p
                .stop(Duration::from_secs(10))
                .into_iter()
                .filter(|l| l.contains("counter ") && !l.trim_end().ends_with(" 0"))
                .map(|l| {
                    l[l.find("counter ").unwrap_or(0)..]
                        .trim_start_matches("counter ")
                        .to_string()
                })
                .collect(),
            None => Vec::new(),
        }
    }

    /// Whether its process (if any) is still running.
    pub fn alive(&mut self) -> bool {
        self.proc.as_mut().is_none_or(Proc::running)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Res<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
    Ok(p)
}

fn backends3() -> Vec<String> {
    (0..3).map(|i| ip_str(backend_ip(i))).collect()
}

/// Sluice's config: Kubernetes Services and EndpointSlices.
pub fn yaml(services: usize) -> String {
    let mut y = String::new();
    let eps = |ips: &[String]| {
        ips.iter()
            .map(|ip| format!("  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n"))
            .collect::<String>()
    };
    let all = backends3();
    for s in 1..services {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: bench}}\n\
             spec:\n  clusterIP: {vip}\n  ports:\n  - {{name: udp, protocol: UDP, port: {UDP_PORT}, targetPort: {UDP_PORT}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{s}-0\n  namespace: bench\n  labels: {{kubernetes.io/service-name: svc-{s}}}\n\
             addressType: IPv4\nports:\n- {{name: udp, protocol: UDP, port: {UDP_PORT}}}\nendpoints:\n{eps}---\n",
            vip = ip_str(service_vip(s)),
            eps = eps(&all),
        );
    }
    let vip = ip_str(VIP);
    let _ = write!(
        y,
        "apiVersion: v1\nkind: Service\nmetadata: {{name: main, namespace: bench}}\n\
         spec:\n  clusterIP: {vip}\n  ports:\n  - {{name: udp, protocol: UDP, port: {UDP_PORT}, targetPort: {UDP_PORT}}}\n  - {{name: http, protocol: TCP, port: {HTTP_PORT}, targetPort: {HTTP_TARGET}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: main-0\n  namespace: bench\n  labels: {{kubernetes.io/service-name: main}}\n\
         addressType: IPv4\nports:\n- {{name: udp, protocol: UDP, port: {UDP_PORT}}}\n- {{name: http, protocol: TCP, port: {HTTP_TARGET}}}\nendpoints:\n{eps}---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: iperf, namespace: bench}}\n\
         spec:\n  clusterIP: {ivip}\n  ports:\n  - {{name: iperf, protocol: TCP, port: {IPERF_PORT}, targetPort: {IPERF_PORT}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: iperf-0\n  namespace: bench\n  labels: {{kubernetes.io/service-name: iperf}}\n\
         addressType: IPv4\nports:\n- {{name: iperf, protocol: TCP, port: {IPERF_PORT}}}\nendpoints:\n{eps1}",
        eps = eps(&all),
        eps1 = eps(&all[..1]),
        ivip = ip_str(IPERF_VIP),
    );
    y
}

/// One service as the kernel contenders see it.
struct Svc {
    name: String,
    vip: String,
    proto: &'static str,
    port: u16,
    target: u16,
    endpoints: Vec<String>,
}

fn kernel_services(services: usize) -> Vec<Svc> {
    let all = backends3();
    let mut v: Vec<Svc> = (1..services)
        .map(|s| Svc {
            name: format!("bench/svc-{s}:udp"),
            vip: ip_str(service_vip(s)),
            proto: "udp",
            port: UDP_PORT,
            target: UDP_PORT,
            endpoints: all.clone(),
        })
        .collect();
    let vip = ip_str(VIP);
    v.push(Svc {
        name: "bench/main:udp".into(),
        vip: vip.clone(),
        proto: "udp",
        port: UDP_PORT,
        target: UDP_PORT,
        endpoints: all.clone(),
    });
    v.push(Svc {
        name: "bench/main:http".into(),
        vip,
        proto: "tcp",
        port: HTTP_PORT,
        target: HTTP_TARGET,
        endpoints: all.clone(),
    });
    v.push(Svc {
        name: "bench/iperf:iperf".into(),
        vip: ip_str(IPERF_VIP),
        proto: "tcp",
        port: IPERF_PORT,
        target: IPERF_PORT,
        endpoints: all[..1].to_vec(),
    });
    v
}

/// kube-proxy's chain-name hash: 16 base32 characters of a hash of the
/// inputs (kube-proxy uses SHA-256; any stable hash gives the same shape).
fn chain_hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut s = String::new();
    let mut x = h;
    for i in 0..16 {
        if i == 12 {
            x = h.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
        }
        s.push(A[(x & 31) as usize] as char);
        x >>= 5;
    }
    s
}

/// `iptables-restore` input in kube-proxy's iptables-mode shape
/// (pkg/proxy/iptables/proxier.go): PREROUTING/OUTPUT → KUBE-SERVICES →
/// one KUBE-SVC-* per service port (masquerade mark for sources outside the
/// cluster CIDR, then `statistic --mode random` over the endpoints) → one
/// KUBE-SEP-* per endpoint (hairpin mark, DNAT); POSTROUTING →
/// KUBE-POSTROUTING masquerades marked packets with --random-fully.
pub fn iptables_rules(services: usize) -> String {
    let svcs = kernel_services(services);
    let mut chains = String::new();
    let mut rules = String::new();
    let _ = writeln!(
        rules,
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    let _ = writeln!(
        rules,
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    let _ = writeln!(
        rules,
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
    );
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000");
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully");
    let mut svc_rules = String::new();
    for s in &svcs {
        let svc = format!("KUBE-SVC-{}", chain_hash(&[&s.name, s.proto]));
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p {p} -m comment --comment \"{n} cluster IP\" -m {p} --dport {} -j {svc}",
            s.vip,
            s.port,
            p = s.proto,
            n = s.name
        );
        let _ = writeln!(
            svc_rules,
            "-A {svc} ! -s {CLUSTER_CIDR} -d {}/32 -p {p} -m comment --comment \"{n} cluster IP\" -m {p} --dport {} -j KUBE-MARK-MASQ",
            s.vip,
            s.port,
            p = s.proto,
            n = s.name
        );
        let n = s.endpoints.len();
        for (i, ep) in s.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}", chain_hash(&[&s.name, s.proto, ep]));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let left = n - i;
            if left > 1 {
                let _ = writeln!(
                    svc_rules,
                    "-A {svc} -m comment --comment \"{} -> {ep}:{}\" -m statistic --mode random --probability {:.11} -j {sep}",
                    s.name,
                    s.target,
                    1.0 / left as f64
                );
            } else {
                let _ = writeln!(
                    svc_rules,
                    "-A {svc} -m comment --comment \"{} -> {ep}:{}\" -j {sep}",
                    s.name, s.target
                );
            }
            let _ = writeln!(
                svc_rules,
                "-A {sep} -s {ep}/32 -m comment --comment \"{n}\" -j KUBE-MARK-MASQ",
                n = s.name
            );
            let _ = writeln!(
                svc_rules,
                "-A {sep} -p {p} -m comment --comment \"{n}\" -m {p} -j DNAT --to-destination {ep}:{}",
                s.target,
                p = s.proto,
                n = s.name
            );
        }
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n{chains}{rules}{svc_rules}COMMIT\n"
    )
}

/// `nft -f` input in kube-proxy's nftables-mode shape
/// (pkg/proxy/nftables/proxier.go): a `service-ips` verdict map keyed by
/// address . protocol . port jumps to a per-service chain, which marks for
/// masquerade and DNATs with `numgen random mod N map { ... }`.
pub fn nft_rules(services: usize) -> String {
    let svcs = kernel_services(services);
    let mut t = String::new();
    let _ = writeln!(t, "flush ruleset");
    let _ = writeln!(t, "table ip kube-proxy {{");
    let _ = writeln!(
        t,
        "  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n  }}"
    );
    let _ = writeln!(
        t,
        "  chain mark-for-masquerade {{\n    mark set mark or 0x4000\n  }}"
    );
    let _ = writeln!(
        t,
        "  chain masquerading {{\n    mark and 0x4000 == 0 return\n    mark set mark xor 0x4000\n    masquerade fully-random\n  }}"
    );
    let _ = writeln!(
        t,
        "  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}"
    );
    let _ = writeln!(
        t,
        "  chain nat-output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}"
    );
    let _ = writeln!(
        t,
        "  chain nat-postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    jump masquerading\n  }}"
    );
    let _ = writeln!(
        t,
        "  chain services {{\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }}"
    );
    let mut elems = Vec::new();
    for s in &svcs {
        let chain = format!("service-{}", chain_hash(&[&s.name, s.proto]));
        let map = s
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : {ep} . {}", s.target))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            t,
            "  chain {chain} {{\n    ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade\n    meta l4proto {p} dnat ip to numgen random mod {n} map {{ {map} }}\n  }}",
            p = s.proto,
            n = s.endpoints.len()
        );
        elems.push(format!(
            "{} . {} . {} : goto {chain}",
            s.vip, s.proto, s.port
        ));
    }
    let _ = writeln!(t, "}}");
    for chunk in elems.chunks(2000) {
        let _ = writeln!(
            t,
            "add element ip kube-proxy service-ips {{ {} }}",
            chunk.join(", ")
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_shape() {
        let r = iptables_rules(2);
        assert!(r.starts_with("*nat\n"));
        assert!(r.ends_with("COMMIT\n"));
        // 4 services: udp extra, main udp, http, iperf.
        assert_eq!(r.matches("-A KUBE-SERVICES").count(), 4);
        assert_eq!(r.matches("--probability 0.33333333333").count(), 3);
        assert!(r.contains("--to-destination 198.18.1.11:8080"));
        assert!(r.contains("-d 198.18.128.1/32 -p udp"));
        // The extra service comes first (worst case for the main ones).
        assert!(r.find("198.18.128.1/32").unwrap() < r.find("198.18.100.10/32").unwrap());
    }

    #[test]
    fn nft_shape() {
        let r = nft_rules(3);
        assert!(r.contains("numgen random mod 3 map { 0 : 198.18.1.11 . 5353"));
        assert!(r.contains("numgen random mod 1 map { 0 : 198.18.1.11 . 5201 }"));
        assert!(r.contains("198.18.128.2 . udp . 5353 : goto service-"));
    }

    #[test]
    fn yaml_has_every_service() {
        let y = yaml(3);
        assert_eq!(y.matches("kind: Service\n").count(), 4);
        assert_eq!(y.matches("kind: EndpointSlice").count(), 4);
        assert!(y.contains("clusterIP: 198.18.128.2"));
    }

    #[test]
    fn chain_names_are_kube_proxy_sized() {
        let h = chain_hash(&["a", "tcp"]);
        assert_eq!(h.len(), 16);
        assert_ne!(h, chain_hash(&["b", "tcp"]));
        // iptables chain names are at most 28 characters.
        assert!(format!("KUBE-SEP-{h}").len() <= 28);
    }
}
