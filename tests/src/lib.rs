//! Integration-test harness: the real `sluice` binary on veth pairs in network
//! namespaces, driven by the kernel's own TCP/UDP stack.
//!
//! Why namespaces and not mocks: the bugs that matter in an AF_XDP load
//! balancer (checksums after NAT, ARP, replies that land on another queue,
//! reloads under traffic) only show with real packets and real peers. Each
//! test builds its own [`Topology`] with a random name prefix, so tests run in
//! parallel, and everything it creates (namespaces, the veths inside them,
//! processes) is removed when the guard drops, also when the test panics.
//! `SLUICE_NS_PREFIX` (1-6 lower-case letters or digits) replaces the
//! prefix's leading `sl`, so that parallel runs of different people are
//! told apart.
//!
//! ```text
//!  <p>-client            <p>-lb                 <p>-sw (br0)          <p>-bN
//!  eth0 198.18.0.2/24 ── front 198.18.0.1/24
//!       198.18.0.130/24  back  198.18.1.1/24 ── p0
//!                                                p1..pN ───────────── eth0 198.18.1.1N/24
//! ```
//!
//! Variants ([`TopologyOpts`]): `ipv6(true)` adds 2001:db8::/64 in front and
//! 2001:db8:1::/64 behind; `lb_nodes(2)` adds a second LB node `<p>-lb2`
//! (front 198.18.0.3, back 198.18.1.2) on shared front and back bridges, and
//! [`Sluice::start_in`] runs sluice in either node. [`k8s`] builds the
//! EndpointSlices of test configs; [`tier`] sets up a tier of LB hosts
//! behind a router's ECMP, each announcing the VIPs through its own BIRD.
//!
//! Rules the harness keeps (GUIDE "The test network"): addresses only from
//! 198.18.0.0/15; every command bounded in time; processes ended by PID, only
//! the ones the harness started.

pub mod api;
pub mod bird;
pub mod craft;
pub mod fake_apiserver;
pub mod k8s;
mod netns;
mod sluice;
pub mod tier;
mod topology;

pub use netns::{exec_timeout, BgProcess, CmdOutput, Pipe};
pub use sluice::{poll_until, sluice_bin, ReloadOutcome, Sluice, StopReport};
pub use topology::{Role, Topology, TopologyOpts};

/// The VIP (ClusterIP) every test config uses.
pub const VIP: &str = "198.18.100.10";
/// Backend ports served by `sluice-testsrv serve` in every backend namespace.
pub const HTTP_PORT: u16 = 8080;
/// UDP echo-with-identity port on the backends.
pub const UDP_PORT: u16 = 5353;
/// Bulk (paced deterministic stream) port on the backends.
pub const BULK_PORT: u16 = 9000;

/// Parses the number of a JSON field `"key": N` out of a body
/// (the health-check responses), e.g. `json_number(body, "localEndpoints")`.
pub fn json_number(body: &str, key: &str) -> Option<u64> {
    let quoted = format!("\"{key}\"");
    let rest = &body[body.find(&quoted)? + quoted.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Panics unless the process is root with `CAP_NET_ADMIN`.
///
/// Integration tests never skip silently: a test that did not run must not
/// look like a test that passed.
pub fn require_root() {
    const MSG: &str = "integration tests need root and CAP_NET_ADMIN: run scripts/test.sh as root";
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "{MSG} (euid is {euid})");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u32 = 12;
    assert!(
        cap_eff & (1 << CAP_NET_ADMIN) != 0,
        "{MSG} (CapEff {cap_eff:#x} lacks CAP_NET_ADMIN)"
    );
}

/// Builds a [`Topology`] whose backends run this crate's `sluice-testsrv`.
///
/// A macro so that `env!("CARGO_BIN_EXE_sluice-testsrv")` is expanded in the
/// integration test (Cargo sets it only there).
///
/// ```ignore
/// let topo = sluice_tests::topology!(TopologyOpts::default().backends(4));
/// ```
#[macro_export]
macro_rules! topology {
    () => {
        $crate::topology!($crate::TopologyOpts::default())
    };
    ($opts:expr) => {
        $crate::Topology::new($opts.testsrv(env!("CARGO_BIN_EXE_sluice-testsrv")))
    };
}

/// Which backend answers each of `n` sequential new HTTP connections to
/// the default VIP (`http://198.18.100.10/`), counted by backend name.
///
/// # Panics
/// If a connection fails or its body is not a backend's reply.
pub fn backend_spread(topo: &Topology, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut hits = std::collections::BTreeMap::new();
    for i in 0..n {
        let out = topo.curl("http://198.18.100.10/", None);
        assert!(out.success(), "connection {i} failed: {out}");
        let (name, _, _) = parse_backend_reply(&out.stdout)
            .unwrap_or_else(|| panic!("connection {i}: not a backend reply: {out}"));
        *hits.entry(name).or_insert(0) += 1;
    }
    hits
}

/// Parses `backend=<name> peer=<ip>:<port>` (the body `sluice-testsrv` sends)
/// into `(name, peer ip, peer port)`.
pub fn parse_backend_reply(body: &str) -> Option<(String, String, u16)> {
    let mut name = None;
    let mut peer = None;
    for field in body.split_whitespace() {
        if let Some(v) = field.strip_prefix("backend=") {
            name = Some(v.to_string());
        } else if let Some(v) = field.strip_prefix("peer=") {
            peer = v.parse::<std::net::SocketAddr>().ok();
        }
    }
    let peer = peer?;
    Some((name?, peer.ip().to_string(), peer.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_reply() {
        assert_eq!(
            parse_backend_reply("backend=b2 peer=198.18.1.1:40000\n"),
            Some(("b2".into(), "198.18.1.1".into(), 40000))
        );
        assert_eq!(parse_backend_reply("garbage"), None);
        assert_eq!(
            parse_backend_reply("backend=b1 peer=[2001:db8:1::1]:40000"),
            Some(("b1".into(), "2001:db8:1::1".into(), 40000))
        );
    }

    #[test]
    fn parses_json_numbers() {
        let body = r#"{"service": {"namespace": "default", "name": "web"}, "localEndpoints": 1}"#;
        assert_eq!(json_number(body, "localEndpoints"), Some(1));
        assert_eq!(
            json_number(r#"{"localEndpoints":12,"x":1}"#, "localEndpoints"),
            Some(12)
        );
        assert_eq!(json_number("{}", "localEndpoints"), None);
    }
}
