//! The bench's own copy of the test network (the shape of
//! `scripts/topology.sh`), built fresh for every contender.
//!
//! ```text
//!  P-client eth0 198.18.0.2/24 (+.130)   routes 198.18.100.0/24, 198.18.128.0/17 via 198.18.0.1
//!     │ veth, 2 queues
//!  P-lb  front 198.18.0.1/24 ── (contender) ── back 198.18.1.1/24
//!     │ veth, 2 queues
//!  P-sw  br0 ── p1..pN ── P-b1..bN eth0 198.18.1.(10+i)/24, default via 198.18.1.1
//! ```
//!
//! Differences from `topology.sh`, all to take noise out of a measurement:
//! fixed MAC addresses and permanent neighbour entries (no ARP during a run,
//! and the raw forwarder and the generator can write MACs directly), RPS on
//! the LB's two links steering the kernel's own forwarding to the LB CPU
//! (the same core Sluice's worker and the raw forwarder are pinned to), and
//! a fresh set of namespaces per contender so that no conntrack entry, flow
//! or TIME_WAIT socket of one contender is seen by the next.
//!
//! Veths are created directly inside their namespaces; nothing appears in
//! the root namespace. Offloads are off on every veth (veth's partial TX
//! checksums break after NAT in user space). Dropping a [`Topo`] deletes its
//! namespaces, which removes every link in them.

use crate::sys::{run, Res};

/// The client's address.
pub const CLIENT_IP: [u8; 4] = [198, 18, 0, 2];
/// The LB's front address (the client's next hop).
pub const FRONT_IP: [u8; 4] = [198, 18, 0, 1];
/// The LB's back address (the backends' default gateway, the SNAT source).
pub const BACK_IP: [u8; 4] = [198, 18, 1, 1];
/// The main VIP.
pub const VIP: [u8; 4] = [198, 18, 100, 10];
/// Extra services (the services sweep) live at `EXTRA_BASE + s`, in
/// 198.18.128.0/17.
pub const EXTRA_BASE: u32 = u32::from_be_bytes([198, 18, 128, 0]);
/// The "cluster CIDR" handed to every contender: the client is outside it, so
/// every contender masquerades it (kube-proxy's KUBE-MARK-MASQ).
pub const CLUSTER_CIDR: &str = "198.19.0.0/16";

/// MAC of the client's eth0.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x5b, 0, 0, 0, 0x02];
/// MAC of the LB's front.
pub const FRONT_MAC: [u8; 6] = [0x02, 0x5b, 0, 0, 0, 0x01];
/// MAC of the LB's back.
pub const BACK_MAC: [u8; 6] = [0x02, 0x5b, 0, 0, 1, 0x01];

/// Address of backend `i` (0-based).
pub fn backend_ip(i: usize) -> [u8; 4] {
    [198, 18, 1, 11 + i as u8]
}

/// MAC of backend `i` (0-based).
pub fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0x5b, 0, 0, 1, 0x11 + i as u8]
}

/// Dotted quad.
pub fn ip_str(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// Colon-separated MAC.
pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a colon-separated MAC.
pub fn parse_mac(s: &str) -> Res<[u8; 6]> {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address"));
    }
    for (o, p) in m.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
    }
    Ok(m)
}

/// VIP of service `s` (0 is the main VIP).
pub fn service_vip(s: usize) -> [u8; 4] {
    if s == 0 {
        VIP
    } else {
        (EXTRA_BASE + s as u32).to_be_bytes()
    }
}

/// How the topology spreads work over the CPUs.
#[derive(Clone, Copy, Debug)]
pub struct TopoOpts {
    /// CPU of the LB's data path.
    pub lb_cpu: usize,
}

/// One built topology.
pub struct Topo {
    /// Namespace prefix.
    pub prefix: String,
    /// Number of backends.
    pub backends: usize,
    alive: bool,
}

impl Topo {
    /// Namespace of `role` (client, lb, sw, b1..bN).
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Namespace of backend `i` (0-based).
    pub fn backend_ns(&self, i: usize) -> String {
        self.ns(&format!("b{}", i + 1))
    }

    /// GRO on (or off) at the peers of the LB's links (client `eth0`,
    /// switch `p0`): NAPI there lets them take frames an XDP program
    /// redirects into the LB's veths, which Sluice's fast path needs
    /// (`--fast-path xdp`). Off for every other contender, as built.
    pub fn peer_gro(&self, on: bool) -> Res<()> {
        let v = if on { "on" } else { "off" };
        for (ns, ifc) in [(self.ns("client"), "eth0"), (self.ns("sw"), "p0")] {
            run(&["ip", "netns", "exec", &ns, "ethtool", "-K", ifc, "gro", v])?;
        }
        Ok(())
    }

    /// Builds the namespaces and links. On error, whatever was built is
    /// removed.
    pub fn up(prefix: &str, backends: usize, o: &TopoOpts) -> Res<Topo> {
        if !(1..=20).contains(&backends) {
            return Err("backends must be 1..20".into());
        }
        let t = Topo {
            prefix: prefix.to_string(),
            backends,
            alive: true,
        };
        t.build(o)?; // on error, Drop of `t` tears it down
        Ok(t)
    }

    fn build(&self, o: &TopoOpts) -> Res<()> {
        let (c, l, s) = (self.ns("client"), self.ns("lb"), self.ns("sw"));
        let mut all = vec![c.clone(), l.clone(), s.clone()];
        all.extend((0..self.backends).map(|i| self.backend_ns(i)));
        for ns in &all {
            if run(&["ip", "netns", "add", ns]).is_err() {
                // Left over from a killed run with the same prefix.
                run(&["ip", "netns", "del", ns])?;
                run(&["ip", "netns", "add", ns])?;
            }
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
            sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        sysctl(&l, "net.ipv4.ip_forward", "0")?;

        veth(&c, "eth0", CLIENT_MAC, &l, "front", FRONT_MAC, 2)?;
        veth(&l, "back", BACK_MAC, &s, "p0", [0x02, 0x5b, 0, 0, 2, 0], 2)?;
        run(&["ip", "-n", &s, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &s, "link", "set", "br0", "up"])?;
        run(&["ip", "-n", &s, "link", "set", "p0", "master", "br0"])?;
        for i in 0..self.backends {
            let b = self.backend_ns(i);
            let p = format!("p{}", i + 1);
            veth(
                &b,
                "eth0",
                backend_mac(i),
                &s,
                &p,
                [0x02, 0x5b, 0, 0, 2, 1 + i as u8],
                1,
            )?;
            run(&["ip", "-n", &s, "link", "set", &p, "master", "br0"])?;
        }
        tune(&c, "eth0")?;
        tune(&l, "front")?;
        tune(&l, "back")?;
        tune(&s, "p0")?;
        for i in 0..self.backends {
            tune(&self.backend_ns(i), "eth0")?;
            tune(&s, &format!("p{}", i + 1))?;
        }

        addr(&c, "198.18.0.2/24", "eth0")?;
        addr(&c, "198.18.0.130/24", "eth0")?;
        addr(&l, "198.18.0.1/24", "front")?;
        addr(&l, "198.18.1.1/24", "back")?;
        for net in ["198.18.100.0/24", "198.18.128.0/17"] {
            run(&["ip", "-n", &c, "route", "replace", net, "via", "198.18.0.1"])?;
        }
        neigh(&c, FRONT_IP, FRONT_MAC, "eth0")?;
        neigh(&l, CLIENT_IP, CLIENT_MAC, "front")?;
        neigh(&l, [198, 18, 0, 130], CLIENT_MAC, "front")?;
        for i in 0..self.backends {
            let b = self.backend_ns(i);
            addr(&b, &format!("{}/24", ip_str(backend_ip(i))), "eth0")?;
            run(&[
                "ip",
                "-n",
                &b,
                "route",
                "replace",
                "default",
                "via",
                "198.18.1.1",
            ])?;
            neigh(&b, BACK_IP, BACK_MAC, "eth0")?;
            neigh(&l, backend_ip(i), backend_mac(i), "back")?;
        }
        // RPS: the kernel's forwarding of frames arriving on the LB's links
        // runs on the LB CPU (XDP runs before RPS, so this only moves the
        // kernel contenders' work and the frames Sluice passes to the host).
        let mask = format!("{:x}", 1u64 << o.lb_cpu);
        let cmd = format!(
            "for f in /sys/class/net/front/queues/rx-*/rps_cpus \
             /sys/class/net/back/queues/rx-*/rps_cpus; do echo {mask} > $f; done"
        );
        run(&["ip", "netns", "exec", &l, "sh", "-c", &cmd])?;
        Ok(())
    }

    /// Where what the LB sends towards the backends (the bridge, the
    /// backends' stacks up to their sockets) is processed: `None` on the CPU
    /// that sent it (veth's default: the LB CPU), `Some(cpu)` on `cpu`, by
    /// RPS on the switch side of the LB's back link.
    pub fn downstream_cpu(&self, cpu: Option<usize>) -> Res<()> {
        let mask = cpu.map_or("0".to_string(), |c| format!("{:x}", 1u64 << c));
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns("sw"),
            "sh",
            "-c",
            &format!("for f in /sys/class/net/p0/queues/rx-*/rps_cpus; do echo {mask} > $f; done"),
        ])
        .map(|_| ())
    }

    /// Deletes the namespaces (processes in them must be stopped first).
    pub fn down(&mut self) {
        if !self.alive {
            return;
        }
        self.alive = false;
        let mut all = vec![self.ns("client"), self.ns("lb"), self.ns("sw")];
        all.extend((0..self.backends).map(|i| self.backend_ns(i)));
        for ns in all {
            let _ = run(&["ip", "netns", "del", &ns]);
        }
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        self.down();
    }
}

/// Switches the LB's links to threaded NAPI or back (possible only once NAPI
/// exists: on veth, while an XDP program is attached). The XDP program and
/// the copy into the AF_XDP ring then run in kernel threads, which the
/// caller pins to the LB CPU, instead of in softirq on whichever CPU
/// transmitted.
pub fn threaded_napi(lb_ns: &str, on: bool) -> Res<()> {
    let v = u8::from(on);
    run(&[
        "ip",
        "netns",
        "exec",
        lb_ns,
        "sh",
        "-c",
        &format!(
            "echo {v} > /sys/class/net/front/threaded && echo {v} > /sys/class/net/back/threaded"
        ),
    ])
    .map(|_| ())
}

/// PIDs of the NAPI kernel threads of interfaces named `front` or `back`
/// (threaded NAPI names them `napi/<ifname>-<id>`).
pub fn napi_threads() -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.starts_with("napi/front-") || comm.starts_with("napi/back-") {
                v.push(pid);
            }
        }
    }
    v
}

/// `sysctl -w` inside a namespace.
pub fn sysctl(ns: &str, key: &str, val: &str) -> Res<()> {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-q",
        "-w",
        &format!("{key}={val}"),
    ])
    .map(|_| ())
}

fn veth(nsa: &str, a: &str, mac_a: [u8; 6], nsb: &str, b: &str, mac_b: [u8; 6], q: u32) -> Res<()> {
    let q = q.to_string();
    run(&[
        "ip",
        "link",
        "add",
        a,
        "netns",
        nsa,
        "address",
        &mac_str(mac_a),
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
        nsb,
        "address",
        &mac_str(mac_b),
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ])
    .map(|_| ())
}

fn tune(ns: &str, ifc: &str) -> Res<()> {
    run(&[
        "ip", "netns", "exec", ns, "ethtool", "-K", ifc, "tx", "off", "tso", "off", "gso", "off",
        "gro", "off",
    ])?;
    run(&["ip", "-n", ns, "link", "set", ifc, "up"]).map(|_| ())
}

fn addr(ns: &str, cidr: &str, ifc: &str) -> Res<()> {
    run(&["ip", "-n", ns, "addr", "replace", cidr, "dev", ifc]).map(|_| ())
}

fn neigh(ns: &str, ip: [u8; 4], mac: [u8; 6], ifc: &str) -> Res<()> {
    run(&[
        "ip",
        "-n",
        ns,
        "neigh",
        "replace",
        &ip_str(ip),
        "lladdr",
        &mac_str(mac),
        "dev",
        ifc,
        "nud",
        "permanent",
    ])
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = backend_mac(2);
        assert_eq!(parse_mac(&mac_str(m)).unwrap(), m);
        assert!(parse_mac("02:00:00").is_err());
    }

    #[test]
    fn service_addresses() {
        assert_eq!(service_vip(0), VIP);
        assert_eq!(service_vip(1), [198, 18, 128, 1]);
        assert_eq!(service_vip(10_000), [198, 18, 167, 16]);
    }
}
