//! A tier of Sluice hosts behind a router's ECMP (README "Running a
//! tier"), built once for every test that needs one: the router
//! namespace runs BIRD with one BGP session per LB host and installs
//! what it learns in its kernel table (`merge paths on`: one multipath
//! route), with `net.ipv4.fib_multipath_hash_policy=1` so that flows are
//! spread by their ports; each LB host runs its own BIRD
//! ([`Bird::start_lb`]) and a sluice driving it (`--bgp bird`,
//! `--announce-after 1s`), all with the same config.
//!
//! ```text
//!  client 198.18.0.2 ─ brf ─ rt eth0 198.18.0.4 (bird, ECMP) eth1 198.18.1.4 ─┐
//!                       ├─── lb  front 198.18.0.1 ── sluice ── back 198.18.1.1 ─ br0 ─ b1..bN
//!                       └─── lb2 front 198.18.0.3 ── sluice ── back 198.18.1.2 ─┘
//! ```
//!
//! The router also has a leg on the backends' segment (`eth1`, port `r0`
//! of `br0`) and is the backends' default gateway: the direct replies of
//! DR and IPIP backends (VIP → client) go through it, never through an LB
//! host, so a host's loss leaves them alone. NAT and FULLNAT replies go
//! to the host that translated the flow (its SNAT / local address, on
//! the segment), as they must.
//!
//! A host's loss ([`Tier::kill`]) is what the issue asks for: the host is
//! cut off at the front switch first (an nft bridge table drops every
//! frame to or from its MAC, so no FIN of its dying BGP session reaches
//! the router, which notices only when its hold timer, 3 s, expires),
//! then its sluice and its BIRD are SIGKILLed by PID. [`Tier::restart`]
//! undoes the cut and starts both again. Every wait is a bounded poll.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bird::{kernel_nexthops, Bird};
use crate::netns::{exec_timeout, CmdOutput};
use crate::sluice::{poll_until, sluice_bin, Sluice, StopReport};
use crate::topology::{Role, Topology, TopologyOpts};
use crate::VIP;

/// The router's front address (its BGP sessions, the client's VIP route).
pub const ROUTER_IP: &str = "198.18.0.4";
/// The router's address on the backends' segment (their gateway).
pub const ROUTER_BACK_IP: &str = "198.18.1.4";
/// How long a route may take to appear or go (BGP session set-up with
/// 1 s timers, the 1 s warm-up, BIRD's reconfiguration, the 3 s hold
/// time).
pub const ROUTE_WAIT: Duration = Duration::from_secs(15);
/// The LB hosts: role, front address (BGP), back address (SNAT / local
/// address, IPIP source).
pub const HOSTS: [(Role, &str, &str); 2] = [
    (Role::Lb, "198.18.0.1", "198.18.1.1"),
    (Role::Lb2, "198.18.0.3", "198.18.1.2"),
];

/// `sluice run` arguments that drive the BIRD of LB host `role` of
/// `topo`: one worker, `--bgp bird` with that BIRD's socket and include
/// files, a 1 s warm-up.
pub fn bgp_args(topo: &Topology, role: Role) -> Vec<String> {
    let p = |p: PathBuf| p.to_string_lossy().into_owned();
    vec![
        "--workers".into(),
        "1".into(),
        "--bgp".into(),
        "bird".into(),
        "--bird-socket".into(),
        p(Bird::socket_path(topo, role)),
        "--bird-include".into(),
        p(Bird::include_path(topo, role)),
        "--bird-include6".into(),
        p(Bird::include6_path(topo, role)),
        "--announce-after".into(),
        "1s".into(),
    ]
}

/// Waits until the router's kernel route to the VIP has exactly `want` as
/// next hops (empty: no route); panics with the BIRDs' views otherwise.
pub fn wait_route(topo: &Topology, birds: &[&Bird], want: &[&str], what: &str, logs: &str) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let got = poll_until(ROUTE_WAIT, || {
        (kernel_nexthops(topo, VIP) == want).then_some(())
    });
    if got.is_none() {
        let views: Vec<String> = birds
            .iter()
            .map(|b| {
                let r = b.birdc("show route all");
                let p = b.birdc("show protocols");
                format!("{}\n{}", p.stdout, r.stdout)
            })
            .collect();
        panic!(
            "{what}: the router's route to {VIP} has next hops {:?}, want {want:?} \
             (after {ROUTE_WAIT:?})\n--- ip route in the router\n{}\n--- BIRDs\n{}\n--- sluice log\n{logs}",
            kernel_nexthops(topo, VIP),
            topo.exec(Role::Router, &["ip", "route"], Duration::from_secs(5))
                .stdout,
            views.join("\n---\n"),
        );
    }
}

/// `GET /metrics` of the sluice in `lb` (the default address, in its
/// namespace).
pub fn metrics(topo: &Topology, lb: Role) -> String {
    topo.exec(
        lb,
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://127.0.0.1:10249/metrics",
        ],
        Duration::from_secs(5),
    )
    .stdout
}

/// The sum of every sample of metric `name` (all label sets) in a
/// `/metrics` text; `None` when it has none.
pub fn metric_sum(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once("} ").map(|(_, v)| v)
        } else {
            rest.strip_prefix(' ')
        };
        if let Some(v) = value.and_then(|v| v.trim().parse::<u64>().ok()) {
            *found.get_or_insert(0) += v;
        }
    }
    found
}

/// `sluice_table_digest_info{digest="..."}`'s digest in a `/metrics` text.
pub fn digest(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("sluice_table_digest_info{digest=\"")?;
        Some(rest.split('"').next()?.to_string())
    })
}

/// One row of `ipvsadm -Lnc`: a flow a host holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    /// `ESTABLISHED`, `TIME_WAIT`, ...
    pub state: String,
    /// The client's address:port.
    pub client: String,
    /// The virtual service's address:port.
    pub virtual_: String,
    /// The real server's address:port.
    pub backend: String,
}

impl Conn {
    /// The client's source port.
    pub fn client_port(&self) -> Option<u16> {
        self.client.rsplit_once(':')?.1.parse().ok()
    }
}

/// Compiles `tests/bpf/ipip_decap.c` (the backends' IPIP decapsulation;
/// this kernel has no ipip device) into a file unique to `topo`.
///
/// # Panics
/// If clang fails.
pub fn ipip_decap_object(topo: &Topology) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bpf/ipip_decap.c");
    let obj = std::env::temp_dir().join(format!("{}-ipip_decap.o", topo.prefix()));
    let multiarch = std::process::Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", std::env::consts::ARCH));
    let out = std::process::Command::new("clang")
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap_or_else(|e| panic!("cannot run clang (scripts/deps.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "clang {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    obj
}

/// One LB host of a [`Tier`].
struct Host {
    role: Role,
    front_ip: &'static str,
    args: Vec<String>,
    bird: Option<Bird>,
    sluice: Option<Sluice>,
    cut: bool,
}

/// A running tier; its daemons are ended by PID when it drops (before
/// the topology it borrows).
pub struct Tier<'t> {
    topo: &'t Topology,
    config: String,
    hosts: Vec<Host>,
    router: Bird,
}

impl<'t> Tier<'t> {
    /// The topology a tier needs: a router, two LB nodes, `backends`
    /// backends. Build it with [`topology!`](crate::topology) in the test.
    pub fn opts(backends: usize) -> TopologyOpts {
        TopologyOpts::default()
            .router(true)
            .lb_nodes(2)
            .backends(backends)
    }

    /// Sets the tier up on `topo` (from [`Tier::opts`]): the router's ECMP
    /// hash on ports, its leg on the backends' segment as their gateway,
    /// the router's BIRD, each host's BIRD and a sluice on `config` with
    /// [`bgp_args`] and `extra` arguments; returns once the router's route
    /// to the VIP has both hosts as next hops and both hosts show the
    /// same table digest.
    ///
    /// # Panics
    /// If a step fails, with what failed.
    pub fn start(topo: &'t Topology, config: &str, extra: &[&str]) -> Self {
        assert!(
            topo.has_router() && topo.lb_nodes() == 2,
            "a tier needs Tier::opts()"
        );
        let sh = |role: Role, argv: &[&str]| {
            let out = topo.exec(role, argv, Duration::from_secs(10));
            assert!(out.success(), "{role:?}: {out}");
        };
        sh(
            Role::Router,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        );
        // The router's leg on the backends' segment.
        let (rt, sw) = (topo.ns(Role::Router), topo.ns(Role::Sw));
        let mut c = std::process::Command::new("ip");
        c.args([
            "link", "add", "eth1", "netns", &rt, "type", "veth", "peer", "name", "r0", "netns", &sw,
        ]);
        let out = exec_timeout(c, Duration::from_secs(10));
        assert!(out.success(), "router leg: {out}");
        for (role, link) in [(Role::Router, "eth1"), (Role::Sw, "r0")] {
            sh(
                role,
                &[
                    "ethtool", "-K", link, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
                ],
            );
        }
        topo.ip(Role::Sw, &["link", "set", "r0", "master", "br0", "up"]);
        topo.add_address(Role::Router, &format!("{ROUTER_BACK_IP}/24"), "eth1");
        topo.ip(Role::Router, &["link", "set", "eth1", "up"]);
        sh(
            Role::Router,
            &["sysctl", "-q", "-w", "net.ipv4.conf.eth1.rp_filter=0"],
        );
        for i in 1..=topo.backend_count() {
            topo.set_backend_gateway(i, ROUTER_BACK_IP);
        }

        let lbs: Vec<&str> = HOSTS.iter().map(|h| h.1).collect();
        let router = Bird::start_router(topo, ROUTER_IP, &lbs);
        let mut tier = Tier {
            topo,
            config: config.to_string(),
            hosts: HOSTS
                .iter()
                .map(|&(role, front_ip, _)| {
                    let mut args = bgp_args(topo, role);
                    args.extend(extra.iter().map(|s| s.to_string()));
                    Host {
                        role,
                        front_ip,
                        args,
                        bird: None,
                        sluice: None,
                        cut: false,
                    }
                })
                .collect(),
            router,
        };
        for i in 0..tier.hosts.len() {
            tier.start_host(i);
        }
        tier.wait_nexthops(&[0, 1], "both hosts announce");
        let digests: Vec<_> = (0..tier.hosts.len())
            .map(|i| digest(&tier.metrics(i)))
            .collect();
        assert!(
            digests[0].is_some() && digests.iter().all(|d| *d == digests[0]),
            "the hosts' table digests differ: {digests:?}"
        );
        tier
    }

    fn start_host(&mut self, i: usize) {
        let topo = self.topo;
        let h = &mut self.hosts[i];
        h.bird = Some(Bird::start_lb(topo, h.role, h.front_ip, ROUTER_IP));
        let args: Vec<&str> = h.args.iter().map(String::as_str).collect();
        h.sluice = Some(Sluice::start_in(topo, h.role, &self.config, &args));
    }

    /// The topology.
    pub fn topo(&self) -> &Topology {
        self.topo
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the tier has no host (never: it has two).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i`'s role.
    pub fn role(&self, i: usize) -> Role {
        self.hosts[i].role
    }

    /// Host `i`'s front address (its BGP next hop at the router).
    pub fn front_ip(&self, i: usize) -> &'static str {
        self.hosts[i].front_ip
    }

    /// Host `i`'s sluice.
    ///
    /// # Panics
    /// If the host is down.
    pub fn sluice(&self, i: usize) -> &Sluice {
        self.hosts[i].sluice.as_ref().expect("host is down")
    }

    /// Every running sluice's log, for failure messages.
    pub fn logs(&self) -> String {
        self.hosts
            .iter()
            .filter_map(|h| Some(format!("--- {:?}\n{}", h.role, h.sluice.as_ref()?.logs())))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Host `i`'s `/metrics`.
    pub fn metrics(&self, i: usize) -> String {
        metrics(self.topo, self.hosts[i].role)
    }

    /// The sum over workers of `sluice_worker_flows_picked_up_total` on
    /// host `i`.
    ///
    /// # Panics
    /// If the metric is missing.
    pub fn picked_up(&self, i: usize) -> u64 {
        let m = self.metrics(i);
        metric_sum(&m, "sluice_worker_flows_picked_up_total")
            .unwrap_or_else(|| panic!("no sluice_worker_flows_picked_up_total:\n{m}"))
    }

    /// Host `i`'s connection table (`sluice ipvsadm -Lnc` over its API
    /// socket).
    ///
    /// # Panics
    /// If the command fails.
    pub fn conns(&self, i: usize) -> Vec<Conn> {
        let mut c = std::process::Command::new(sluice_bin());
        c.args(["ipvsadm", "-Lnc"])
            .env("SLUICE_SOCKET", self.sluice(i).api_socket());
        let out: CmdOutput = exec_timeout(c, Duration::from_secs(10));
        assert!(out.success(), "ipvsadm -Lnc on host {i}: {out}");
        out.stdout
            .lines()
            .skip(2)
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() == 6).then(|| Conn {
                    state: w[2].to_string(),
                    client: w[3].to_string(),
                    virtual_: w[4].to_string(),
                    backend: w[5].to_string(),
                })
            })
            .collect()
    }

    /// Waits until the router's route to the VIP has exactly hosts `want`
    /// as next hops.
    ///
    /// # Panics
    /// If it does not within [`ROUTE_WAIT`], with every BIRD's view.
    pub fn wait_nexthops(&self, want: &[usize], what: &str) {
        let mut ips: Vec<&str> = want.iter().map(|&i| self.hosts[i].front_ip).collect();
        ips.sort_unstable();
        let mut birds = vec![&self.router];
        birds.extend(self.hosts.iter().filter_map(|h| h.bird.as_ref()));
        wait_route(self.topo, &birds, &ips, what, &self.logs());
    }

    /// Stops host `i`'s sluice with SIGTERM (it withdraws its VIPs before
    /// it exits; its BIRD stays up) and returns what it reported.
    ///
    /// # Panics
    /// If the host is down.
    pub fn stop(&mut self, i: usize) -> StopReport {
        self.hosts[i].sluice.take().expect("host is down").stop()
    }

    /// The nft bridge table that cuts host `i` off at the front switch.
    fn cut_table(i: usize) -> String {
        format!("cut{i}")
    }

    /// The loss of host `i`: off the network at the front switch, then
    /// its sluice and its BIRD SIGKILLed (module doc). The router drops
    /// its path when its hold timer expires; wait for it with
    /// [`Tier::wait_nexthops`].
    ///
    /// # Panics
    /// If the cut cannot be made.
    pub fn kill(&mut self, i: usize) {
        let (topo, role) = (self.topo, self.hosts[i].role);
        let m = crate::craft::mac(topo, role, "front");
        let mac = m.map(|b| format!("{b:02x}")).join(":");
        let t = Self::cut_table(i);
        for cmd in [
            format!("add table bridge {t}"),
            format!("add chain bridge {t} cutoff {{ type filter hook forward priority 0; }}"),
            format!("add rule bridge {t} cutoff ether daddr {mac} drop"),
            format!("add rule bridge {t} cutoff ether saddr {mac} drop"),
        ] {
            let out = topo.exec(Role::Sw, &["nft", &cmd], Duration::from_secs(5));
            assert!(out.success(), "{out}");
        }
        let h = &mut self.hosts[i];
        h.cut = true;
        drop(h.sluice.take()); // SIGKILL, by PID
        drop(h.bird.take()); // and its BIRD: the host is gone
    }

    /// Host `i` back after [`Tier::kill`]: the cut undone, its BIRD and
    /// sluice started again (same config and arguments). It announces
    /// after its warm-up; wait for it with [`Tier::wait_nexthops`].
    ///
    /// # Panics
    /// If a step fails.
    pub fn restart(&mut self, i: usize) {
        if self.hosts[i].cut {
            let t = Self::cut_table(i);
            let out = self.topo.exec(
                Role::Sw,
                &["nft", "delete", "table", "bridge", &t],
                Duration::from_secs(5),
            );
            assert!(out.success(), "{out}");
            self.hosts[i].cut = false;
        }
        self.start_host(i);
    }

    /// Makes every backend a DR / IPIP real server: the VIP on `lo`, ARP
    /// for it suppressed, and with `decap` (from [`ipip_decap_object`])
    /// the IPIP decapsulation program on clsact ingress of `eth0`.
    ///
    /// # Panics
    /// If a step fails.
    pub fn direct_backends(&self, decap: Option<&Path>) {
        for i in 1..=self.topo.backend_count() {
            direct_backend(self.topo, i, VIP, decap);
        }
    }
}

/// Makes backend `i` of `topo` a real server that answers clients itself
/// (DR, IPIP): `vip` on its `lo`, ARP for it suppressed, and with `decap`
/// the IPIP decapsulation program on `eth0`'s ingress
/// ([`ipip_decap_object`]).
///
/// # Panics
/// If a step fails.
pub fn direct_backend(topo: &Topology, i: usize, vip: &str, decap: Option<&Path>) {
    let b = Role::Backend(i);
    let sh = |argv: &[&str]| {
        let out = topo.exec(b, argv, Duration::from_secs(10));
        assert!(out.success(), "{b:?}: {argv:?}: {out}");
    };
    sh(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.eth0.rp_filter=0",
    ]);
    topo.ip(b, &["addr", "add", &format!("{vip}/32"), "dev", "lo"]);
    if let Some(obj) = decap {
        let obj = obj.to_str().expect("utf-8 path");
        sh(&["tc", "qdisc", "add", "dev", "eth0", "clsact"]);
        sh(&[
            "tc",
            "filter",
            "add",
            "dev",
            "eth0",
            "ingress",
            "bpf",
            "direct-action",
            "obj",
            obj,
            "sec",
            "tc",
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_its_label_sets() {
        let t = "# HELP x\nsluice_worker_flows_picked_up_total{worker=\"0\"} 3\n\
                 sluice_worker_flows_picked_up_total{worker=\"1\"} 4\n\
                 sluice_worker_flows_picked_up_totally 9\nsluice_table_generation 2\n";
        assert_eq!(
            metric_sum(t, "sluice_worker_flows_picked_up_total"),
            Some(7)
        );
        assert_eq!(metric_sum(t, "sluice_table_generation"), Some(2));
        assert_eq!(metric_sum(t, "sluice_nothing"), None);
    }

    #[test]
    fn a_conn_names_its_client_port() {
        let c = Conn {
            state: "ESTABLISHED".into(),
            client: "198.18.0.2:41000".into(),
            virtual_: "198.18.100.10:9000".into(),
            backend: "198.18.1.11:9000".into(),
        };
        assert_eq!(c.client_port(), Some(41000));
    }
}
