//! The test network: client, load balancer, a switch and N backends, each in
//! its own network namespace, joined by veth pairs. Mirrors
//! `scripts/topology.sh` (same names, addresses and offload settings).
//!
//! Two variants on top of the default one:
//!
//! * [`TopologyOpts::ipv6`]: every link also gets an IPv6 address
//!   (2001:db8::/64 in front, 2001:db8:1::/64 behind), with duplicate address
//!   detection off so that the addresses are usable at once.
//! * [`TopologyOpts::lb_nodes`]`(2)`: two LB nodes. The client and the two
//!   LBs' `front` links meet on a second bridge (`brf` in `<p>-sw`, ports
//!   `f0` client, `f1` lb, `f2` lb2); both LBs' `back` links join the
//!   backends' bridge (`p0` lb, `q0` lb2).
//! * [`TopologyOpts::router`]: a router namespace `<p>-rt` (`eth0`
//!   198.18.0.4/24, port `f3` of the front bridge, which it implies) that
//!   forwards; the client reaches 198.18.100.0/24 through it instead of
//!   through the LB, so VIP routes are the router's to learn (over BGP,
//!   `tests/src/bird.rs`). It sends no ICMP redirects (its next hops share
//!   the client's subnet).
//!
//! ```text
//!  two nodes:  client eth0 198.18.0.2 ─ f0 ┐          ┌ p0 ─ back 198.18.1.1  lb  front 198.18.0.1 ─ f1 ┐
//!                                         brf (sw)  br0 ─ q0 ─ back 198.18.1.2  lb2 front 198.18.0.3 ─ f2 ┘
//!                                                     └ pN ─ eth0 198.18.1.(10+N)  bN
//! ```
//!
//! Every veth is created directly inside its namespaces
//! (`ip link add NAME netns A type veth peer name NAME2 netns B`), so nothing
//! ever appears in the root namespace and link names can be fixed (`eth0`,
//! `front`, `back`) while the namespace names carry the random prefix.
//! Deleting the namespaces deletes the veths; [`Topology`]'s `Drop` kills the
//! processes it started first, so no namespace outlives the test.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::netns::{exec_timeout, BgProcess, CmdOutput, Pipe};
use crate::{BULK_PORT, HTTP_PORT, UDP_PORT};

/// Time limit for one setup command (`ip`, `ethtool`, `sysctl`).
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A namespace of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `<p>-client`: `eth0` 198.18.0.2/24 and 198.18.0.130/24.
    Client,
    /// `<p>-lb`: `front` 198.18.0.1/24, `back` 198.18.1.1/24; runs sluice.
    /// The first LB node (`node1`) of a two-node topology.
    Lb,
    /// `<p>-lb2`, only with [`TopologyOpts::lb_nodes`]`(2)`: `front`
    /// 198.18.0.3/24, `back` 198.18.1.2/24; the second LB node (`node2`).
    Lb2,
    /// `<p>-sw`: bridge `br0` over `p0` (to lb) and `p1..pN` (to backends).
    Sw,
    /// `<p>-rt`, only with [`TopologyOpts::router`]: `eth0` 198.18.0.4/24
    /// on the front bridge, IPv4 forwarding on.
    Router,
    /// `<p>-bN` (1-based): `eth0` 198.18.1.(10+N)/24.
    Backend(usize),
}

/// Options for [`Topology::new`].
#[derive(Debug, Clone)]
pub struct TopologyOpts {
    /// Number of backend namespaces (`b1..bN`), 1..=50. Default 3.
    pub backends: usize,
    /// Start `sluice-testsrv serve` in every backend. Default true.
    pub servers: bool,
    /// IPv6 on every link: client `eth0` 2001:db8::2/64, lb `front`
    /// 2001:db8::1/64 (lb2 ::3), lb `back` 2001:db8:1::1/64 (lb2 ::2),
    /// backend N 2001:db8:1::(10+N)/64 (written in decimal digits: `::11`);
    /// client route 2001:db8:100::/64 via 2001:db8::1, backends' default
    /// route via 2001:db8:1::1. DAD is off. Default false: IPv6 off keeps
    /// router solicitations and MLD reports out of the counters of tests
    /// that do not need it.
    pub ipv6: bool,
    /// LB nodes: 1 (default) or 2 (see the module doc).
    pub lb_nodes: usize,
    /// A router namespace in front of the LBs (see the module doc).
    /// Default false.
    pub router: bool,
    /// Path of the `sluice-testsrv` binary (set by the [`topology!`](crate::topology)
    /// macro); if `None`, `SLUICE_TESTSRV` or the binary next to the test
    /// executable's directory is used.
    pub testsrv: Option<PathBuf>,
    /// GRO on the veth ends facing the LB nodes (client, router, switch
    /// ports), which gives them NAPI: frames the LB's XDP fast path
    /// redirects into a veth are delivered only then (`--fast-path xdp`).
    /// Default: on unless `SLUICE_FAST_PATH=off`, as sluice runs with the
    /// fast path by default.
    pub fast_path: bool,
}

impl Default for TopologyOpts {
    fn default() -> Self {
        Self {
            backends: 3,
            servers: true,
            ipv6: false,
            lb_nodes: 1,
            router: false,
            testsrv: None,
            fast_path: !std::env::var("SLUICE_FAST_PATH").is_ok_and(|v| v == "off"),
        }
    }
}

impl TopologyOpts {
    /// Sets the number of backends.
    pub fn backends(mut self, n: usize) -> Self {
        self.backends = n;
        self
    }
    /// Sets whether backend servers are started.
    pub fn servers(mut self, on: bool) -> Self {
        self.servers = on;
        self
    }
    /// Sets whether the links get IPv6 addresses (and IPv6 stays enabled).
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }
    /// Sets the number of LB nodes (1 or 2).
    pub fn lb_nodes(mut self, n: usize) -> Self {
        self.lb_nodes = n;
        self
    }
    /// Sets whether a router namespace stands in front of the LBs.
    pub fn router(mut self, on: bool) -> Self {
        self.router = on;
        self
    }
    /// Sets whether the LB nodes' peers get GRO for the XDP fast path.
    pub fn fast_path(mut self, on: bool) -> Self {
        self.fast_path = on;
        self
    }
    /// Sets the `sluice-testsrv` path.
    pub fn testsrv(mut self, path: impl Into<PathBuf>) -> Self {
        self.testsrv = Some(path.into());
        self
    }
}

/// A built topology; everything is torn down when it drops.
pub struct Topology {
    prefix: String,
    backends: usize,
    lb_nodes: usize,
    ipv6: bool,
    router: bool,
    testsrv: PathBuf,
    /// Namespaces created so far, in creation order (deleted in reverse).
    created: Vec<String>,
    /// Backend servers, killed before the namespaces go.
    servers: Vec<BgProcess>,
}

fn random_hex() -> String {
    use std::io::Read;
    let mut b = [0u8; 4];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        // Fall back to pid and time: unique enough within one machine.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        b = (t ^ std::process::id().rotate_left(16)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `SLUICE_NS_PREFIX` when it is 1-6 lower-case ASCII letters or digits,
/// else `sl`.
fn ns_prefix() -> String {
    std::env::var("SLUICE_NS_PREFIX")
        .ok()
        .filter(|p| {
            (1..=6).contains(&p.len())
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .unwrap_or_else(|| "sl".to_string())
}

fn find_testsrv(opt: Option<PathBuf>) -> PathBuf {
    if let Some(p) = opt {
        return p;
    }
    if let Some(p) = std::env::var_os("SLUICE_TESTSRV") {
        return p.into();
    }
    // Integration tests run from target/<profile>/deps/; the binary is in
    // target/<profile>/.
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("sluice-testsrv")))
        .filter(|p| p.exists())
        .expect("sluice-testsrv not found: use the topology! macro or set SLUICE_TESTSRV")
}

impl Topology {
    /// Builds the topology with a random prefix (`sl` + 8 hex digits; the
    /// `sl` is `SLUICE_NS_PREFIX` instead when that is 1-6 lower-case
    /// letters or digits, so that parallel runs by different people are
    /// told apart at a glance).
    ///
    /// # Panics
    /// If any setup step fails; whatever was built is removed first.
    pub fn new(opts: TopologyOpts) -> Self {
        assert!(
            (1..=50).contains(&opts.backends),
            "backends must be 1..=50, got {}",
            opts.backends
        );
        assert!(
            (1..=2).contains(&opts.lb_nodes),
            "lb_nodes must be 1 or 2, got {}",
            opts.lb_nodes
        );
        let mut topo = Topology {
            prefix: format!("{}{}", ns_prefix(), random_hex()),
            backends: opts.backends,
            lb_nodes: opts.lb_nodes,
            ipv6: opts.ipv6,
            router: opts.router,
            testsrv: find_testsrv(opts.testsrv.clone()),
            created: Vec::new(),
            servers: Vec::new(),
        };
        eprintln!(
            "topology {}: building (if a run is interrupted: scripts/topology.sh down {})",
            topo.prefix, topo.prefix
        );
        // On error `topo` drops here and removes what was built.
        if let Err(e) = topo.build(&opts) {
            panic!("topology {}: setup failed: {e}", topo.prefix);
        }
        topo
    }

    fn build(&mut self, opts: &TopologyOpts) -> Result<(), String> {
        let two = self.lb_nodes == 2;
        let mut roles = vec![Role::Client, Role::Lb];
        if two {
            roles.push(Role::Lb2);
        }
        roles.push(Role::Sw);
        if self.router {
            roles.push(Role::Router);
        }
        roles.extend((1..=self.backends).map(Role::Backend));
        for &r in &roles {
            let ns = self.ns(r);
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            if opts.ipv6 {
                // Before any link exists, so that every link inherits it:
                // addresses are usable at once, no test waits for DAD.
                self.sysctl(
                    r,
                    &[
                        "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0",
                    ],
                )?;
            } else {
                self.sysctl(
                    r,
                    &[
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1",
                    ],
                )?;
            }
        }
        let lbs: &[Role] = if two {
            &[Role::Lb, Role::Lb2]
        } else {
            &[Role::Lb]
        };
        for &lb in lbs {
            // Sluice forwards, not the kernel: keep it off explicitly.
            self.sysctl(lb, &["net.ipv4.ip_forward=0"])?;
            if opts.ipv6 {
                self.sysctl(lb, &["net.ipv6.conf.all.forwarding=0"])?;
            }
        }
        if self.router {
            // Before its link exists, so that `eth0` inherits "no redirects".
            self.sysctl(
                Role::Router,
                &[
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.send_redirects=0",
                    "net.ipv4.conf.default.send_redirects=0",
                ],
            )?;
        }
        let front_bridge = two || self.router;

        let (client, lb, sw) = (self.ns(Role::Client), self.ns(Role::Lb), self.ns(Role::Sw));
        // (role, link, two queues): every veth end, for the offload settings.
        let mut ends: Vec<(Role, String, bool)> = Vec::new();
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        veth(&lb, "back", &sw, "p0", 2)?;
        ip(&["-n", &sw, "link", "set", "p0", "master", "br0"])?;
        ends.extend([
            (Role::Lb, "back".into(), true),
            (Role::Sw, "p0".into(), true),
        ]);
        if front_bridge {
            ip(&["-n", &sw, "link", "add", "brf", "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", "brf", "up"])?;
            veth(&client, "eth0", &sw, "f0", 2)?;
            veth(&lb, "front", &sw, "f1", 2)?;
            let mut ports = vec!["f0", "f1"];
            ends.extend([
                (Role::Client, "eth0".into(), true),
                (Role::Lb, "front".into(), true),
                (Role::Sw, "f0".into(), true),
                (Role::Sw, "f1".into(), true),
            ]);
            if two {
                let lb2 = self.ns(Role::Lb2);
                veth(&lb2, "front", &sw, "f2", 2)?;
                veth(&lb2, "back", &sw, "q0", 2)?;
                ports.push("f2");
                ip(&["-n", &sw, "link", "set", "q0", "master", "br0"])?;
                ends.extend([
                    (Role::Lb2, "front".into(), true),
                    (Role::Lb2, "back".into(), true),
                    (Role::Sw, "f2".into(), true),
                    (Role::Sw, "q0".into(), true),
                ]);
            }
            if self.router {
                veth(&self.ns(Role::Router), "eth0", &sw, "f3", 2)?;
                ports.push("f3");
                ends.extend([
                    (Role::Router, "eth0".into(), true),
                    (Role::Sw, "f3".into(), true),
                ]);
            }
            for port in ports {
                ip(&["-n", &sw, "link", "set", port, "master", "brf"])?;
            }
        } else {
            veth(&client, "eth0", &lb, "front", 2)?;
            ends.extend([
                (Role::Client, "eth0".into(), true),
                (Role::Lb, "front".into(), true),
            ]);
        }
        for i in 1..=self.backends {
            let b = self.ns(Role::Backend(i));
            let port = format!("p{i}");
            veth(&b, "eth0", &sw, &port, 1)?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ends.push((Role::Backend(i), "eth0".into(), false));
            ends.push((Role::Sw, port, false));
        }

        // Offloads off on every veth end: veth TX checksum offload leaves
        // CHECKSUM_PARTIAL packets whose checksum is wrong once NAT rewrites
        // them outside the kernel (GUIDE "This machine").
        for (r, ifname, two_queues) in &ends {
            self.ns_ok(
                *r,
                &[
                    "ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
                ],
            )?;
            if *two_queues {
                // Two queues on the LB's links so that two workers get traffic.
                self.ns_ok(*r, &["ethtool", "-L", ifname, "rx", "2", "tx", "2"])?;
            }
            ip(&["-n", &self.ns(*r), "link", "set", ifname, "up"])?;
        }
        // With the fast path, GRO on the LB's peers (not on the LB's own
        // links): XDP_REDIRECT into a veth needs NAPI on the receiving end
        // (kernel >= 5.13: GRO enables it). Only a change on a link that
        // is up enables NAPI and marks the sending end as a redirect
        // target (`veth_set_features`), hence after `up`.
        if opts.fast_path {
            for (r, ifname, _) in &ends {
                if !matches!(r, Role::Lb | Role::Lb2) {
                    self.ns_ok(*r, &["ethtool", "-K", ifname, "gro", "on"])?;
                }
            }
        }

        let mut addrs: Vec<(Role, &str, &str)> = vec![
            (Role::Client, "198.18.0.2/24", "eth0"),
            (Role::Client, "198.18.0.130/24", "eth0"),
            (Role::Lb, "198.18.0.1/24", "front"),
            (Role::Lb, "198.18.1.1/24", "back"),
        ];
        if two {
            addrs.push((Role::Lb2, "198.18.0.3/24", "front"));
            addrs.push((Role::Lb2, "198.18.1.2/24", "back"));
        }
        if self.router {
            addrs.push((Role::Router, "198.18.0.4/24", "eth0"));
        }
        if opts.ipv6 {
            addrs.push((Role::Client, "2001:db8::2/64", "eth0"));
            addrs.push((Role::Lb, "2001:db8::1/64", "front"));
            addrs.push((Role::Lb, "2001:db8:1::1/64", "back"));
            if two {
                addrs.push((Role::Lb2, "2001:db8::3/64", "front"));
                addrs.push((Role::Lb2, "2001:db8:1::2/64", "back"));
            }
        }
        for (r, a, dev) in addrs {
            self.add_addr(r, a, dev)?;
        }
        let vip_gateway = if self.router {
            "198.18.0.4"
        } else {
            "198.18.0.1"
        };
        ip(&[
            "-n",
            &client,
            "route",
            "add",
            "198.18.100.0/24",
            "via",
            vip_gateway,
        ])?;
        if opts.ipv6 {
            ip(&[
                "-n",
                &client,
                "-6",
                "route",
                "add",
                "2001:db8:100::/64",
                "via",
                "2001:db8::1",
            ])?;
        }
        for i in 1..=self.backends {
            let b = self.ns(Role::Backend(i));
            let addr = format!("{}/24", Self::backend_ip(i));
            ip(&["-n", &b, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &b, "route", "add", "default", "via", "198.18.1.1"])?;
            if opts.ipv6 {
                let addr6 = format!("{}/64", Self::backend_ip6(i));
                self.add_addr(Role::Backend(i), &addr6, "eth0")?;
                ip(&[
                    "-n",
                    &b,
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    "2001:db8:1::1",
                ])?;
            }
        }

        if opts.servers {
            for i in 1..=self.backends {
                self.start_server(i)?;
            }
        }
        Ok(())
    }

    /// `ip addr add` (with `nodad` for IPv6 addresses).
    fn add_addr(&self, role: Role, cidr: &str, dev: &str) -> Result<(), String> {
        let ns = self.ns(role);
        let mut args = vec!["-n", &ns, "addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ip(&args)
    }

    fn start_server(&mut self, i: usize) -> Result<(), String> {
        let name = Self::backend_name(i);
        let (http, udp, bulk) = (
            HTTP_PORT.to_string(),
            UDP_PORT.to_string(),
            BULK_PORT.to_string(),
        );
        let srv = self.testsrv.to_string_lossy().into_owned();
        let p = BgProcess::spawn(self.command(
            Role::Backend(i),
            &[
                &srv, "serve", "--name", &name, "--http", &http, "--udp", &udp, "--bulk", &bulk,
            ],
        ));
        let ready = p.wait_for(Pipe::Stdout, 0, "ready", Duration::from_secs(10));
        let err = p.output(Pipe::Stderr);
        self.servers.push(p);
        if ready {
            Ok(())
        } else {
            Err(format!("server in {name} did not become ready: {err}"))
        }
    }

    /// The random prefix, e.g. `sl1a2b3c4d`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of backends.
    pub fn backend_count(&self) -> usize {
        self.backends
    }

    /// Number of LB nodes (1 or 2).
    pub fn lb_nodes(&self) -> usize {
        self.lb_nodes
    }

    /// Whether a router namespace stands in front of the LBs.
    pub fn has_router(&self) -> bool {
        self.router
    }

    /// Whether the links have IPv6 addresses.
    pub fn has_ipv6(&self) -> bool {
        self.ipv6
    }

    /// Names of the namespaces created (all of them once `new` returned).
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// The name of backend `i` (1-based): `b1`, `b2`, ...
    pub fn backend_name(i: usize) -> String {
        format!("b{i}")
    }

    /// The address of backend `i` (1-based): 198.18.1.(10+i).
    pub fn backend_ip(i: usize) -> String {
        format!("198.18.1.{}", 10 + i)
    }

    /// The IPv6 address of backend `i` (1-based): 2001:db8:1::(10+i), the
    /// number written in decimal digits (`2001:db8:1::11` for b1).
    pub fn backend_ip6(i: usize) -> String {
        format!("2001:db8:1::{}", 10 + i)
    }

    /// The namespace name of `role`.
    pub fn ns(&self, role: Role) -> String {
        let p = &self.prefix;
        match role {
            Role::Client => format!("{p}-client"),
            Role::Lb => format!("{p}-lb"),
            Role::Lb2 => format!("{p}-lb2"),
            Role::Sw => format!("{p}-sw"),
            Role::Router => format!("{p}-rt"),
            Role::Backend(i) => format!("{p}-b{i}"),
        }
    }

    /// Path of the `sluice-testsrv` binary the topology uses.
    pub fn testsrv_path(&self) -> &std::path::Path {
        &self.testsrv
    }

    /// A `Command` that runs `argv` inside `role`'s namespace.
    pub fn command(&self, role: Role, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(role)]).args(argv);
        c
    }

    /// Runs `argv` in `role`'s namespace, killed after `timeout`.
    pub fn exec(&self, role: Role, argv: &[&str], timeout: Duration) -> CmdOutput {
        exec_timeout(self.command(role, argv), timeout)
    }

    /// Starts `argv` in `role`'s namespace in the background; it is killed
    /// when the returned guard drops.
    pub fn spawn(&self, role: Role, argv: &[&str]) -> BgProcess {
        BgProcess::spawn(self.command(role, argv))
    }

    /// Runs `sluice-testsrv ARGS` in `role`'s namespace, killed after `timeout`.
    pub fn testsrv(&self, role: Role, args: &[&str], timeout: Duration) -> CmdOutput {
        let srv = self.testsrv.to_string_lossy().into_owned();
        let mut argv = vec![srv.as_str()];
        argv.extend_from_slice(args);
        self.exec(role, &argv, timeout)
    }

    /// Starts `sluice-testsrv ARGS` in `role`'s namespace in the background.
    pub fn spawn_testsrv(&self, role: Role, args: &[&str]) -> BgProcess {
        let srv = self.testsrv.to_string_lossy().into_owned();
        let mut argv = vec![srv.as_str()];
        argv.extend_from_slice(args);
        self.spawn(role, &argv)
    }

    /// Runs `ip ARGS` in `role`'s namespace (e.g. `["route", "replace",
    /// "default", "via", "198.18.1.2"]`).
    ///
    /// # Panics
    /// If the command fails, with its output.
    pub fn ip(&self, role: Role, args: &[&str]) {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        let out = self.exec(role, &argv, SETUP_TIMEOUT);
        assert!(out.success(), "{out}");
    }

    /// Adds an address to a link of `role` (`nodad` for IPv6), e.g. an
    /// external IP the LB owns: `add_address(Role::Lb, "198.18.0.50/32", "front")`.
    ///
    /// # Panics
    /// If `ip addr add` fails.
    pub fn add_address(&self, role: Role, cidr: &str, dev: &str) {
        if let Err(e) = self.add_addr(role, cidr, dev) {
            panic!("add {cidr} to {dev}: {e}");
        }
    }

    /// Replaces backend `i`'s IPv4 default route, e.g. via lb2's back
    /// address 198.18.1.2 in a two-node topology, so that replies to a
    /// client whose address was preserved return through the node that
    /// forwarded the request.
    pub fn set_backend_gateway(&self, i: usize, via: &str) {
        self.ip(
            Role::Backend(i),
            &["route", "replace", "default", "via", via],
        );
    }

    /// Runs `curl -sS ARGS` in `role`'s namespace, killed after 15 s (give
    /// curl its own, shorter `--max-time`/`--connect-timeout`).
    pub fn curl_in(&self, role: Role, args: &[&str]) -> CmdOutput {
        let mut argv = vec!["curl", "-sS"];
        argv.extend_from_slice(args);
        self.exec(role, &argv, Duration::from_secs(15))
    }

    /// One HTTP GET with curl from the client namespace (a new connection,
    /// `--max-time 5`), optionally from source address `from`.
    pub fn curl(&self, url: &str, from: Option<&str>) -> CmdOutput {
        let mut argv = vec!["curl", "-sS", "--max-time", "5", "--connect-timeout", "3"];
        if let Some(f) = from {
            argv.extend_from_slice(&["--interface", f]);
        }
        argv.push(url);
        self.exec(Role::Client, &argv, Duration::from_secs(10))
    }

    /// Sets kernel IPv4 forwarding in the LB namespace (only the topology
    /// self-test turns it on).
    pub fn set_lb_forwarding(&self, on: bool) {
        let v = format!("net.ipv4.ip_forward={}", u8::from(on));
        self.sysctl(Role::Lb, &[&v]).expect("sysctl ip_forward");
    }

    fn sysctl(&self, role: Role, kv: &[&str]) -> Result<(), String> {
        let mut argv = vec!["sysctl", "-q", "-w"];
        argv.extend_from_slice(kv);
        self.ns_ok(role, &argv)
    }

    fn ns_ok(&self, role: Role, argv: &[&str]) -> Result<(), String> {
        let out = self.exec(role, argv, SETUP_TIMEOUT);
        if out.success() {
            Ok(())
        } else {
            Err(out.to_string())
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let mut c = Command::new("ip");
    c.args(args);
    let out = exec_timeout(c, SETUP_TIMEOUT);
    if out.success() {
        Ok(())
    } else {
        Err(out.to_string())
    }
}

/// A veth pair with one end in each namespace, created there directly.
fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str, queues: u8) -> Result<(), String> {
    let q = queues.to_string();
    ip(&[
        "link",
        "add",
        a,
        "netns",
        ns_a,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        ns_b,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ])
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first: a namespace with a process in it outlives its name.
        self.servers.clear();
        let mut failed = Vec::new();
        for ns in self.created.iter().rev() {
            if ip(&["netns", "del", ns]).is_err() {
                failed.push(ns.clone());
            }
        }
        if !failed.is_empty() {
            eprintln!(
                "topology {}: could not delete {failed:?}; run scripts/topology.sh down {}",
                self.prefix, self.prefix
            );
        }
    }
}
