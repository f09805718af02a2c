//! IPv6: a single-stack IPv6 service (ClusterIP 2001:db8:100::10, endpoints
//! 2001:db8:1::11..13) is load-balanced round robin for a real IPv6 client
//! (`curl -6`), with a client outside `--cluster-cidr` masqueraded to the
//! LB's IPv6 back address;
//! its NodePort answers on the node's IPv6 address.

use std::collections::BTreeMap;

use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::{
    parse_backend_reply, require_root, topology, Role, Sluice, Topology, TopologyOpts,
};

fn config() -> String {
    let eps: Vec<Ep> = (1..=3)
        .map(|i| Ep::ready(Topology::backend_ip6(i)))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web6
  namespace: default
spec:
  type: NodePort
  clusterIP: 2001:db8:100::10
  clusterIPs: ["2001:db8:100::10"]
  ipFamilies: [IPv6]
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
    nodePort: 30080
---
{}"#,
        endpoint_slice("web6-1", "web6", &[("http", 8080, "TCP")], &eps)
    )
}

fn get(topo: &Topology, url: &str) -> (String, String) {
    let out = topo.curl_in(Role::Client, &["-6", "-g", "--max-time", "3", url]);
    assert!(out.success(), "{url}: {out}");
    let (name, peer, _) = parse_backend_reply(&out.stdout)
        .unwrap_or_else(|| panic!("{url}: not a backend reply: {out}"));
    (name, peer)
}

#[test]
fn ipv6_cluster_ip_round_robin() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true));
    // The backends' prefix is the cluster CIDR: the client is outside it,
    // so it is masqueraded to the LB's back address.
    let sluice = Sluice::start(
        &topo,
        &config(),
        &["--workers", "1", "--cluster-cidr", "2001:db8:1::/64"],
    );
    let mut hits = BTreeMap::new();
    for _ in 0..6 {
        let (name, peer) = get(&topo, "http://[2001:db8:100::10]/");
        assert_eq!(peer, "2001:db8:1::1", "client not masqueraded to the LB");
        *hits.entry(name).or_insert(0usize) += 1;
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    let expected: BTreeMap<String, usize> = (1..=3).map(|i| (format!("b{i}"), 2)).collect();
    assert_eq!(hits, expected, "logs:\n{}", report.logs);
}

#[test]
fn ipv6_node_port() {
    require_root();
    let topo = topology!(TopologyOpts::default().ipv6(true));
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);
    for _ in 0..3 {
        let (name, _) = get(&topo, "http://[2001:db8::1]:30080/");
        assert!(name.starts_with('b'), "{name}");
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
