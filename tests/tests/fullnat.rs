//! FULLNAT (`sluice.dev/forwarding-method: fullnat`) on veth with real
//! clients: every client is translated to one of the service's local
//! addresses (`sluice.dev/local-addresses`, two addresses added to the
//! LB's back link), so the backend (`sluice-testsrv serve`, which reports
//! its peer) sees a local address as its client, and its replies come back
//! to the LB even though the backends have no route to the clients at all
//! (their default route is deleted: plain NAT without masquerading could
//! not answer). Two workers on the two veth queues: worker `w` of 2 hands
//! out the SNAT ports whose rank is `w` modulo 2, which for the default
//! ranges (1024-32767,61000-65535) is the port's parity, so ports of both
//! parities among the peers show that both workers allocated. IPv6 too; a
//! local address the host does not own is refused, named.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends, Ep};
use sluice_tests::{
    parse_backend_reply, require_root, topology, Role, Sluice, Topology, TopologyOpts,
};

/// The `default/web` service with forwarding method fullnat and the given
/// local addresses, cluster IP `vip`, endpoints `eps`.
fn config(vip: &str, family: &str, local: &str, eps: &[Ep]) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations:
    sluice.dev/forwarding-method: fullnat
    sluice.dev/local-addresses: "{local}"
spec:
  type: ClusterIP
  clusterIP: {vip}
  clusterIPs: ["{vip}"]
  ipFamilies: [{family}]
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
---
{}"#,
        endpoint_slice("web-1", "web", &[("http", 8080, "TCP")], eps)
    )
}

/// Removes every backend's default route (both families): a reply can
/// then only go to an address on the backends' own link.
fn isolate_backends(topo: &Topology, v6: bool) {
    for i in 1..=topo.backend_count() {
        topo.ip(Role::Backend(i), &["route", "del", "default"]);
        if v6 {
            topo.ip(Role::Backend(i), &["-6", "route", "del", "default"]);
        }
    }
}

/// `n` HTTP GETs through `url` (each a new connection); the backends'
/// names and the peers (address, port) they saw.
fn get_many(topo: &Topology, url: &str, v6: bool, n: usize) -> Vec<(String, String, u16)> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut args = vec!["--max-time", "3", "--connect-timeout", "2"];
        if v6 {
            args.extend_from_slice(&["-6", "-g"]);
        }
        args.push(url);
        let r = topo.curl_in(Role::Client, &args);
        assert!(r.success(), "request {i}: {r}");
        out.push(
            parse_backend_reply(&r.stdout)
                .unwrap_or_else(|| panic!("request {i}: not a backend reply: {r}")),
        );
    }
    out
}

#[test]
fn fullnat_backends_see_local_addresses_and_replies_return() {
    require_root();
    let topo = topology!();
    topo.add_address(Role::Lb, "198.18.1.5/24", "back");
    topo.add_address(Role::Lb, "198.18.1.6/24", "back");
    isolate_backends(&topo, false);
    let cfg = config(
        "198.18.100.10",
        "IPv4",
        "198.18.1.5,198.18.1.6",
        &ready_backends(&[1, 2, 3]),
    );
    let sluice = Sluice::start(&topo, &cfg, &["--workers", "2"]);
    let seen = get_many(&topo, "http://198.18.100.10/", false, 40);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");

    let peers: BTreeSet<&str> = seen.iter().map(|(_, ip, _)| ip.as_str()).collect();
    let expected: BTreeSet<&str> = ["198.18.1.5", "198.18.1.6"].into();
    assert_eq!(peers, expected, "peers the backends saw: {seen:?}");
    let backends: BTreeSet<&str> = seen.iter().map(|(b, _, _)| b.as_str()).collect();
    assert_eq!(backends.len(), 3, "{seen:?}");
    for (_, _, port) in &seen {
        assert!(
            (1024..=32767).contains(port) || *port >= 61000,
            "port {port} outside the SNAT ranges"
        );
    }
    let parities: BTreeSet<u16> = seen.iter().map(|(_, _, p)| p % 2).collect();
    assert_eq!(
        parities.len(),
        2,
        "one worker allocated every port (ports {:?})\nlogs:\n{}",
        seen.iter().map(|s| s.2).collect::<Vec<_>>(),
        report.logs
    );
    assert!(report.counter("snat_flows") >= 40, "{:?}", report.counters);
}

#[test]
fn fullnat_over_ipv6() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true));
    topo.add_address(Role::Lb, "2001:db8:1::5/64", "back");
    isolate_backends(&topo, true);
    let eps: Vec<Ep> = (1..=3)
        .map(|i| Ep::ready(Topology::backend_ip6(i)))
        .collect();
    let cfg = config("2001:db8:100::10", "IPv6", "2001:db8:1::5", &eps);
    let sluice = Sluice::start(&topo, &cfg, &["--workers", "2"]);
    let seen = get_many(&topo, "http://[2001:db8:100::10]/", true, 12);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    for (b, ip, _) in &seen {
        assert_eq!(ip, "2001:db8:1::5", "{b} saw {ip}\nlogs:\n{}", report.logs);
    }
}

#[test]
fn a_local_address_the_host_does_not_own_is_refused() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1));
    let cfg = config(
        "198.18.100.10",
        "IPv4",
        "198.18.1.77",
        &ready_backends(&[1]),
    );
    let out = Sluice::run_to_exit(&topo, &cfg, &[], Duration::from_secs(15));
    assert!(!out.timed_out() && !out.success(), "sluice started: {out}");
    let want = "local address 198.18.1.77 is not an address of this host";
    assert!(out.stderr.contains(want), "no `{want}`: {out}");
}
