//! Traffic the node itself sends (`--host-traffic on`, issue 12): clients in
//! the LB's own namespace reach a ClusterIP, an externalIP, a LoadBalancer
//! IP and NodePorts on the node's addresses (and 127.0.0.1), IPv4 and IPv6,
//! TCP and UDP (connected and unconnected), as kube-proxy serves them; a
//! port without endpoints is refused at once; the node's other traffic is
//! left alone; and nothing stays behind after SIGTERM or `kill -9`.
//!
//! The service is `externalTrafficPolicy: Local` with no endpoint on this
//! node: kube-proxy still serves the node's own connections to its external
//! front ends from every endpoint (its `--src-type LOCAL` rule), so they
//! must answer here too.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::{
    parse_backend_reply, require_root, topology, Role, Sluice, Topology, TopologyOpts,
};

const ON: &[&str] = &["--host-traffic", "on", "--workers", "1"];

fn config() -> String {
    let ports = [("http", 8080, "TCP"), ("dns", 5353, "UDP")];
    let v4: Vec<Ep> = (1..=3)
        .map(|i| Ep::ready(Topology::backend_ip(i)))
        .collect();
    let v6: Vec<Ep> = (1..=3)
        .map(|i| Ep::ready(Topology::backend_ip6(i)))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: LoadBalancer
  ipFamilyPolicy: RequireDualStack
  clusterIPs: [198.18.100.10, "2001:db8:100::10"]
  externalIPs: [198.18.0.1]
  externalTrafficPolicy: Local
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
    nodePort: 30080
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
    nodePort: 30053
status:
  loadBalancer:
    ingress: [{{ip: 198.18.100.50}}]
---
{}---
{}---
apiVersion: v1
kind: Service
metadata:
  name: empty
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.11
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
---
{}"#,
        endpoint_slice("web-4", "web", &ports, &v4),
        endpoint_slice("web-6", "web", &ports, &v6),
        endpoint_slice("empty-1", "empty", &ports, &[]),
    )
}

/// One GET from the LB's namespace: (backend, peer address the backend saw).
fn get_from_node(topo: &Topology, url: &str) -> Result<(String, String), String> {
    let out = topo.curl_in(
        Role::Lb,
        &["--max-time", "3", "--connect-timeout", "2", url],
    );
    if !out.success() {
        return Err(format!("{url}: {out}"));
    }
    let (name, peer, _) =
        parse_backend_reply(&out.stdout).ok_or_else(|| format!("{url}: {out}"))?;
    Ok((name, peer))
}

fn udp_from_node(topo: &Topology, cmd: &str, addr: &str) -> sluice_tests::CmdOutput {
    topo.testsrv(
        Role::Lb,
        &[cmd, addr, "--timeout-ms", "2000"],
        Duration::from_secs(5),
    )
}

/// The LB namespace's routes and rules, to compare before and after.
fn routing(topo: &Topology) -> String {
    let mut s = String::new();
    for argv in [
        ["ip", "-4", "route", "show", "table", "all"],
        ["ip", "-6", "route", "show", "table", "all"],
        ["ip", "-4", "rule", "show", "", ""],
        ["ip", "-6", "rule", "show", "", ""],
    ] {
        let argv: Vec<&str> = argv.into_iter().filter(|a| !a.is_empty()).collect();
        s += topo
            .exec(Role::Lb, &argv, Duration::from_secs(5))
            .expect_ok();
    }
    s
}

/// The node's own traffic to a non-service address: straight to a
/// backend's real address, from the node's address on that link.
fn direct_works(topo: &Topology) {
    let (name, peer) = get_from_node(topo, "http://198.18.1.11:8080/").expect("direct");
    assert_eq!((name.as_str(), peer.as_str()), ("b1", "198.18.1.1"));
}

#[test]
fn the_node_reaches_every_front_end_and_no_endpoints_is_refused() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true));
    let sluice = Sluice::start(&topo, &config(), ON);

    // Round robin from the node, as the data path's scheduler: three new
    // connections to the ClusterIP reach the three endpoints. The backend
    // sees the node's address towards it (what MASQUERADE picks).
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let (name, peer) = get_from_node(&topo, "http://198.18.100.10/")
            .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", sluice.logs()));
        assert_eq!(peer, "198.18.1.1");
        seen.insert(name);
    }
    assert_eq!(seen.len(), 3, "rr from the node: {seen:?}");

    for url in [
        "http://198.18.0.1/",          // externalIP (owned)
        "http://198.18.100.50/",       // LoadBalancer ingress IP
        "http://198.18.0.1:30080/",    // NodePort on the node's address
        "http://127.0.0.1:30080/",     // NodePort on localhost
        "http://[2001:db8:100::10]/",  // ClusterIP, IPv6
        "http://[2001:db8::1]:30080/", // NodePort on the node's IPv6 address
    ] {
        get_from_node(&topo, url).unwrap_or_else(|e| panic!("{e}\nlog:\n{}", sluice.logs()));
    }
    // No localhost NodePort over IPv6 (no route_localnet there).
    assert!(get_from_node(&topo, "http://[::1]:30080/").is_err());

    // UDP, connected (connect + getpeername path) and unconnected (sendmsg
    // and recvmsg: the reply must seem to come from the address sent to).
    for addr in [
        "198.18.100.10:5353",
        "198.18.0.1:30053",
        "[2001:db8:100::10]:5353",
    ] {
        let out = udp_from_node(&topo, "udp-query", addr);
        assert!(
            out.success() && out.stdout.contains("backend="),
            "{addr}: {out}"
        );
        let out = udp_from_node(&topo, "udp-sendto", addr);
        assert!(out.success(), "{addr}: {out}");
        assert!(
            out.stdout.contains(&format!("from={addr}")),
            "recvfrom must show the front end {addr}: {out}"
        );
    }

    // No endpoints: refused at once, TCP and UDP.
    let t = Instant::now();
    let out = topo.curl_in(Role::Lb, &["--max-time", "3", "http://198.18.100.11/"]);
    assert!(
        out.stderr.contains("Connection refused") || out.status.and_then(|s| s.code()) == Some(7),
        "{out}"
    );
    let out = udp_from_node(&topo, "udp-sendto", "198.18.100.11:5353");
    assert!(out.stdout.contains("refused"), "{out}");
    let out = udp_from_node(&topo, "udp-query", "198.18.100.11:5353");
    assert!(!out.success(), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "refusals took {:?}",
        t.elapsed()
    );

    // The node's other traffic is its own.
    direct_works(&topo);

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(
        report.counter("host_traffic_redirected") >= 15,
        "{:?}",
        report.counters
    );
    assert!(
        report.counter("host_traffic_refused") >= 3,
        "{:?}",
        report.counters
    );
}

#[test]
fn nothing_stays_after_sigterm_or_kill_9_and_a_restart_serves() {
    require_root();
    let topo = topology!();
    let before = routing(&topo);
    let vip = "http://198.18.100.10/";

    let sluice = Sluice::start(&topo, &config(), ON);
    get_from_node(&topo, vip).unwrap_or_else(|e| panic!("{e}\nlog:\n{}", sluice.logs()));
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    // Gone with Sluice: the VIP is not routed in this namespace.
    assert!(
        get_from_node(&topo, vip).is_err(),
        "still served after SIGTERM"
    );
    direct_works(&topo);
    assert_eq!(routing(&topo), before, "routes or rules changed");

    let sluice = Sluice::start(&topo, &config(), ON);
    get_from_node(&topo, vip).unwrap_or_else(|e| panic!("restart: {e}\nlog:\n{}", sluice.logs()));
    let pid = sluice.pid();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill -9");
    assert!(killed.success());
    // Dead once it is gone or a zombie (its parent, this test, reaps it on
    // drop): the kernel has closed its links by then.
    let gone = sluice_tests::poll_until(Duration::from_secs(5), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        matches!(state, None | Some("Z")).then_some(())
    });
    assert!(gone.is_some(), "sluice {pid} still alive after kill -9");
    drop(sluice);
    assert!(
        get_from_node(&topo, vip).is_err(),
        "still served after kill -9"
    );
    direct_works(&topo);
    assert_eq!(routing(&topo), before, "routes or rules changed");

    // And a restart after kill -9 serves again.
    let sluice = Sluice::start(&topo, &config(), ON);
    get_from_node(&topo, vip)
        .unwrap_or_else(|e| panic!("after kill -9: {e}\nlog:\n{}", sluice.logs()));
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}

#[test]
fn off_by_default() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);
    assert!(get_from_node(&topo, "http://198.18.100.10/").is_err());
    direct_works(&topo);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_eq!(report.counter("host_traffic_redirected"), 0);
}
