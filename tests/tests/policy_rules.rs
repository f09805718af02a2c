//! kube-proxy's remaining policy rules, each with the client kinds it
//! tells apart (issue 12, "The remaining rules"):
//!
//! * `--nodeport-range` is what the config is validated against, in
//!   `sluice run` and in `sluice check`;
//! * the short-circuit: a pod (a source inside `--cluster-cidr`, here
//!   198.18.0.130 with `--cluster-cidr 198.18.0.128/25`) reaching a NodePort
//!   or LoadBalancer IP of an `externalTrafficPolicy: Local` service goes to
//!   every endpoint, with its address kept; an external client
//!   (198.18.0.2) only to the local one;
//! * `allowFromNode`: `loadBalancerSourceRanges` holding a node address
//!   admit a packet whose source is the LoadBalancer IP itself (the client
//!   namespace SNATs its connection to the LB IP with nftables, as a
//!   cloud load balancer that keeps the LB IP as source would);
//! * `--nodeport-addresses`: on a node with two front addresses (198.18.0.1
//!   and a secondary 198.18.0.50), NodePorts and the healthCheckNodePort
//!   answer only on the selected one (by prefix, or `primary`); the other
//!   reaches the kernel, which refuses it (IPv4 and IPv6); without the flag
//!   both answer. A selection that keeps no
//!   node address, or a malformed one, stops `sluice run` with exit 2.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sluice_tests::k8s::{ready_backends, Ep, WebService};
use sluice_tests::{
    exec_timeout, parse_backend_reply, require_root, sluice_bin, topology, Role, Sluice, Topology,
    TopologyOpts,
};

const LB_IP: &str = "198.18.100.20";

fn node_port_service(node_port: u16) -> String {
    WebService::new("type: NodePort")
        .node_port(node_port)
        .yaml(&ready_backends(&[1, 2, 3]))
}

/// A config file of its own in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        let mut b = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .expect("urandom");
        let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let p = std::env::temp_dir().join(format!("sluice-policy-{name}.yaml"));
        std::fs::write(&p, text).expect("write temp config");
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn check_validates_against_the_given_node_port_range() {
    let f = TempFile::new(&node_port_service(3001));
    let check = |extra: &[&str]| {
        let mut c = Command::new(sluice_bin());
        c.arg("check").arg("--config").arg(&f.0).args(extra);
        exec_timeout(c, Duration::from_secs(10))
    };
    let out = check(&[]);
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(2),
        "3001 is outside the default range: {out}"
    );
    assert!(out.stderr.contains("30000-32767"), "{out}");
    let out = check(&["--nodeport-range", "3000-32767"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("198.18.100.10:80/tcp"), "{out}");
}

#[test]
fn run_serves_a_node_port_of_the_given_range() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(
        &topo,
        &node_port_service(3001),
        &["--workers", "1", "--nodeport-range", "3000-32767"],
    );
    let out = topo.curl("http://198.18.0.1:3001/", None);
    assert!(out.success(), "{out}\nlog:\n{}", sluice.logs());
    assert!(parse_backend_reply(&out.stdout).is_some(), "{out}");
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}

/// A LoadBalancer with policy Local: b1 on node1 (this LB), b2 and b3 on
/// node3.
fn local_lb() -> String {
    WebService::new(
        "type: LoadBalancer
         externalTrafficPolicy: Local
         healthCheckNodePort: 32100",
    )
    .node_port(30080)
    .lb_ip(LB_IP)
    .yaml(&[
        Ep::ready(Topology::backend_ip(1)).on("node1"),
        Ep::ready(Topology::backend_ip(2)).on("node3"),
        Ep::ready(Topology::backend_ip(3)).on("node3"),
    ])
}

/// The (backend, peer address) of `n` new connections from `from` to `url`.
fn answers(
    topo: &Topology,
    sluice: &Sluice,
    url: &str,
    from: &str,
    n: usize,
) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let out = topo.curl(url, Some(from));
            assert!(
                out.success(),
                "{url} from {from} (try {i}): {out}\nlog:\n{}",
                sluice.logs()
            );
            let (name, peer, _) = parse_backend_reply(&out.stdout).expect("backend reply");
            (name, peer)
        })
        .collect()
}

#[test]
fn pods_reach_every_endpoint_of_a_local_service_unmasqueraded() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(
        &topo,
        &local_lb(),
        &[
            "--workers",
            "1",
            "--node-name",
            "node1",
            "--cluster-cidr",
            "198.18.0.128/25",
        ],
    );
    let pod = "198.18.0.130";
    for url in ["http://198.18.0.1:30080/", &format!("http://{LB_IP}/")] {
        let got = answers(&topo, &sluice, url, pod, 6);
        let names: BTreeSet<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            BTreeSet::from(["b1", "b2", "b3"]),
            "{url}: a pod must reach every endpoint: {got:?}"
        );
        assert!(
            got.iter().all(|(_, peer)| peer == pod),
            "{url}: the pod's address must be kept: {got:?}"
        );
        // An external client: the local endpoint only, address kept.
        let got = answers(&topo, &sluice, url, "198.18.0.2", 3);
        assert!(
            got.iter().all(|(n, p)| n == "b1" && p == "198.18.0.2"),
            "{url}: external clients keep the Local policy: {got:?}"
        );
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_eq!(report.counter("snat_flows"), 0, "{:?}", report.counters);
}

fn lb_with_ranges(ranges: &str) -> String {
    WebService::new(&format!(
        "type: LoadBalancer
         loadBalancerSourceRanges: [{ranges}]"
    ))
    .node_port(30080)
    .lb_ip(LB_IP)
    .yaml(&ready_backends(&[1, 2, 3]))
}

/// In the client namespace, SNATs connections to the LB IP's port 80 to the
/// LB IP itself (nftables; the namespace's ruleset goes with it).
fn snat_to_lb_ip(topo: &Topology) {
    let rules = format!(
        "table ip lbsrc {{\n\
         chain pre {{ type nat hook prerouting priority -100; }}\n\
         chain post {{ type nat hook postrouting priority 100; ip daddr {LB_IP} tcp dport 80 snat to {LB_IP}; }}\n\
         }}\n"
    );
    let path = std::env::temp_dir().join(format!("{}-lbsrc.nft", topo.prefix()));
    std::fs::write(&path, rules).expect("write nft rules");
    let out = topo.exec(
        Role::Client,
        &["nft", "-f", &path.to_string_lossy()],
        Duration::from_secs(10),
    );
    let _ = std::fs::remove_file(&path);
    assert!(out.success(), "nft: {out}");
}

/// Connects from the client to the LB IP with its source translated to
/// the LB IP: whether a backend answered, and the attempt's output.
fn from_lb_ip(ranges: &str) -> (bool, String, sluice_tests::StopReport) {
    let topo = topology!();
    let sluice = Sluice::start(&topo, &lb_with_ranges(ranges), &["--workers", "1"]);
    // An ordinary client outside the ranges is refused either way.
    let out = topo.curl(&format!("http://{LB_IP}/"), Some("198.18.0.2"));
    assert!(!out.success(), "198.18.0.2 is outside {ranges}: {out}");
    snat_to_lb_ip(&topo);
    let out = topo.curl(&format!("http://{LB_IP}/"), Some("198.18.0.2"));
    let served = out.success() && parse_backend_reply(&out.stdout).is_some();
    let text = format!("{out}\nlog:\n{}", sluice.logs());
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    (served, text, report)
}

#[test]
fn ranges_holding_a_node_address_admit_the_load_balancer_ip_as_source() {
    require_root();
    // 198.18.0.1 is the LB node's front address.
    let (served, out, report) = from_lb_ip("198.18.0.1/32");
    assert!(served, "the LB IP as source must be admitted: {out}");
    assert!(report.counter("new_flows") >= 1, "{:?}", report.counters);
    // Ranges without a node address: the LB IP is an ordinary outsider.
    let (served, out, report) = from_lb_ip("198.18.0.128/25");
    assert!(!served, "the LB IP must not be admitted: {out}");
    assert!(
        report.counter("drop_source_range") >= 2,
        "{:?}",
        report.counters
    );
}

/// A Service with policy Local whose only endpoint (b1) is on another node,
/// and an external IP this host does not own (198.18.100.60; the client
/// routes 198.18.100.0/24 to the LB).
fn unowned_external_ip(policy: &str) -> String {
    WebService::new(&format!(
        "externalTrafficPolicy: {policy}
         externalIPs: [198.18.100.60]"
    ))
    .yaml(&[Ep::ready(Topology::backend_ip(1)).on("node3")])
}

#[test]
fn unowned_external_ip_without_local_endpoint_is_dropped_and_counted() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(
        &topo,
        &unowned_external_ip("Local"),
        &["--workers", "1", "--node-name", "node1"],
    );
    let out = topo.curl_in(
        Role::Client,
        &[
            "--connect-timeout",
            "2",
            "--max-time",
            "3",
            "http://198.18.100.60/",
        ],
    );
    // Dropped, not refused: curl gives up at its own timeout (exit 28).
    assert_eq!(out.status.and_then(|s| s.code()), Some(28), "{out}");
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(
        report.counter("drop_no_backend") >= 1,
        "{:?}",
        report.counters
    );
    assert_eq!(report.counter("new_flows"), 0, "{:?}", report.counters);
}

/// The LB node's secondary front address (`--nodeport-addresses` tests).
const SECOND_ADDR: &str = "198.18.0.50";

/// What a client sees on one node address: (NodePort answered by a
/// backend, healthCheckNodePort answered), with curl's output.
fn node_port_and_health(topo: &Topology, addr: &str) -> (bool, bool, String) {
    let np = topo.curl(&format!("http://{addr}:30080/"), Some("198.18.0.2"));
    let served = np.success() && parse_backend_reply(&np.stdout).is_some();
    let hc = topo.curl(&format!("http://{addr}:32100/healthz"), Some("198.18.0.2"));
    (
        served,
        hc.success(),
        format!("nodePort: {np}\nhealth: {hc}"),
    )
}

/// Starts sluice on [`local_lb`] with the LB node's front holding a second
/// address, with `extra` flags; what [`node_port_and_health`] sees on each
/// address (198.18.0.1, then [`SECOND_ADDR`]).
fn node_ports_by_address(extra: &[&str]) -> [(bool, bool, String); 2] {
    let topo = topology!();
    topo.add_address(Role::Lb, &format!("{SECOND_ADDR}/24"), "front");
    let mut args = vec!["--workers", "1", "--node-name", "node1"];
    args.extend_from_slice(extra);
    let sluice = Sluice::start(&topo, &local_lb(), &args);
    let got = ["198.18.0.1", SECOND_ADDR].map(|a| {
        let (np, hc, out) = node_port_and_health(&topo, a);
        (np, hc, format!("{a}: {out}\nlog:\n{}", sluice.logs()))
    });
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    got
}

#[test]
fn node_ports_answer_only_on_the_selected_node_addresses() {
    require_root();
    let [first, second] = node_ports_by_address(&["--nodeport-addresses", "198.18.0.48/30"]);
    assert!(
        second.0,
        "the selected address must serve the NodePort: {}",
        second.2
    );
    assert!(
        second.1,
        "the selected address must serve the health port: {}",
        second.2
    );
    assert!(
        !first.0,
        "an unselected address must not serve the NodePort: {}",
        first.2
    );
    assert!(
        !first.1,
        "an unselected address must not serve the health port: {}",
        first.2
    );
}

#[test]
fn primary_node_port_addresses_are_the_first_address_of_the_first_link() {
    require_root();
    // 198.18.0.1 is `front`'s primary address, 198.18.0.50 a secondary one.
    let [first, second] = node_ports_by_address(&["--nodeport-addresses", "primary"]);
    assert!(
        first.0 && first.1,
        "the primary address must answer: {}",
        first.2
    );
    assert!(
        !second.0 && !second.1,
        "a secondary address must not answer: {}",
        second.2
    );
}

/// A single-stack IPv6 NodePort service over the backends' IPv6 addresses.
fn node_port_v6() -> String {
    WebService::new(
        "type: NodePort
         clusterIPs: [\"2001:db8:100::10\"]
         ipFamilies: [IPv6]
         ipFamilyPolicy: SingleStack",
    )
    .cluster_ip("2001:db8:100::10")
    .node_port(30080)
    .yaml(
        &(1..=3)
            .map(|i| Ep::ready(Topology::backend_ip6(i)))
            .collect::<Vec<_>>(),
    )
}

#[test]
fn ipv6_node_ports_answer_only_on_the_selected_node_addresses() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true));
    topo.add_address(Role::Lb, "2001:db8::50/64", "front");
    let sluice = Sluice::start(
        &topo,
        &node_port_v6(),
        &["--workers", "1", "--nodeport-addresses", "2001:db8::50/128"],
    );
    let get = |host: &str| {
        let url = format!("http://[{host}]:30080/");
        let out = topo.curl_in(Role::Client, &["-6", "-g", "--max-time", "3", &url]);
        let served = out.success() && parse_backend_reply(&out.stdout).is_some();
        (served, format!("{url}: {out}\nlog:\n{}", sluice.logs()))
    };
    let (served, out) = get("2001:db8::50");
    assert!(
        served,
        "the selected address must serve the NodePort: {out}"
    );
    let (served, out) = get("2001:db8::1");
    assert!(!served, "an unselected address must not: {out}");
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}

#[test]
fn without_node_port_addresses_every_node_address_answers() {
    require_root();
    for (np, hc, out) in node_ports_by_address(&[]) {
        assert!(np && hc, "every node address must answer: {out}");
    }
}

#[test]
fn node_port_addresses_that_select_nothing_or_do_not_parse_exit_2() {
    require_root();
    let topo = topology!();
    for (value, says) in [
        ("10.0.0.0/8", "none of the node addresses"),
        ("198.18.0.0/33", "too long"),
        ("primary,198.18.0.0/24", "cannot be combined"),
    ] {
        let out = Sluice::run_to_exit(
            &topo,
            &local_lb(),
            &["--workers", "1", "--nodeport-addresses", value],
            Duration::from_secs(20),
        );
        assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{value}: {out}");
        assert!(out.stderr.contains(says), "{value}: {out}");
    }
}
