//! Fixture tests of kube-proxy's remaining policy rules as the compiler
//! emits them: the short-circuit of pods to `externalTrafficPolicy: Local`
//! front ends, `allowFromNode` for load-balancer source ranges, and the
//! node-port range of the host. Same host as `semantics_tests.rs`: node
//! "node1", node addresses 198.18.0.1 and 198.18.1.1, external IP
//! 198.18.0.50 owned.

use sluice_dataplane::service::{VipKey, VipKind, WhenEmpty};
use sluice_dataplane::types::{proto, Cidr};

use super::semantics_tests::{a, get, load, node1, svc, two_nodes};
use super::*;

const LOCAL_LB: &str = "{type: LoadBalancer, clusterIP: 10.96.0.20, externalTrafficPolicy: Local, \
     externalIPs: [198.18.0.50], ports: [{name: http, port: 80, nodePort: 30080}]}";

fn lb_status(ip: &str) -> String {
    format!("status: {{loadBalancer: {{ingress: [{{ip: {ip}}}]}}}}\n")
}

fn cluster_ip_80() -> VipKey {
    VipKey {
        addr: a("10.96.0.20"),
        port: 80,
        proto: proto::TCP,
    }
}

#[test]
fn local_external_front_ends_short_circuit_to_the_cluster_ip() {
    let cfg = load(&(svc(LOCAL_LB) + &lb_status("198.18.5.1") + &two_nodes()));
    for (kind, vip) in [
        (VipKind::NodePort, "198.18.0.1:30080/tcp"),
        (VipKind::NodePort, "198.18.1.1:30080/tcp"),
        (VipKind::ExternalIp, "198.18.0.50:80/tcp"),
        (VipKind::LoadBalancer, "198.18.5.1:80/tcp"),
    ] {
        let s = get(&cfg, kind, vip);
        assert_eq!(s.short_circuit, Some(cluster_ip_80()), "{kind:?} {vip}");
        assert_eq!(s.backends.len(), 1, "{vip}: local endpoints only");
    }
    let c = get(&cfg, VipKind::ClusterIp, "10.96.0.20:80/tcp");
    assert_eq!(c.short_circuit, None);
    assert_eq!(c.backends.len(), 2, "the ClusterIP has every endpoint");
}

#[test]
fn cluster_policy_has_no_short_circuit() {
    let spec = LOCAL_LB.replace("externalTrafficPolicy: Local, ", "");
    let cfg = load(&(svc(&spec) + &two_nodes()));
    assert!(cfg.services.iter().all(|s| s.short_circuit.is_none()));
}

#[test]
fn short_circuit_keeps_to_the_front_end_family() {
    let spec =
        "{type: NodePort, ipFamilyPolicy: RequireDualStack, clusterIPs: [10.96.0.20, 'fd00::20'], \
         externalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}";
    let mut ctx = node1();
    ctx.node_addrs.push("2001:db8::1".parse().unwrap());
    let cfg = load_str_with(&(svc(spec) + &two_nodes()), "t.yaml", &ctx).unwrap();
    let v6 = get(&cfg, VipKind::NodePort, "[2001:db8::1]:30080/tcp");
    assert_eq!(v6.short_circuit.map(|k| k.addr), Some(a("fd00::20")));
    let v4 = get(&cfg, VipKind::NodePort, "198.18.0.1:30080/tcp");
    assert_eq!(v4.short_circuit.map(|k| k.addr), Some(a("10.96.0.20")));
}

fn lb_with_ranges(ranges: &str) -> Config {
    let spec = format!(
        "{{type: LoadBalancer, clusterIP: 10.96.0.20, loadBalancerIP: 198.18.5.3, \
         loadBalancerSourceRanges: [{ranges}], ports: [{{name: http, port: 80, nodePort: 30080}}]}}"
    );
    load(&(svc(&spec) + &lb_status("198.18.5.1") + &two_nodes()))
}

fn cidrs(v: &[&str]) -> Vec<Cidr> {
    v.iter().map(|c| c.parse().unwrap()).collect()
}

#[test]
fn ranges_holding_a_node_address_admit_the_load_balancer_ips() {
    let cfg = lb_with_ranges("198.18.0.0/24");
    for vip in ["198.18.5.1:80/tcp", "198.18.5.3:80/tcp"] {
        assert_eq!(
            get(&cfg, VipKind::LoadBalancer, vip).source_ranges,
            cidrs(&["198.18.0.0/24", "198.18.5.1/32", "198.18.5.3/32"]),
            "{vip}"
        );
    }
}

#[test]
fn ranges_without_a_node_address_do_not_admit_the_load_balancer_ips() {
    let cfg = lb_with_ranges("198.18.200.0/24");
    assert_eq!(
        get(&cfg, VipKind::LoadBalancer, "198.18.5.1:80/tcp").source_ranges,
        cidrs(&["198.18.200.0/24"])
    );
}

#[test]
fn the_node_port_range_of_the_host_is_used() {
    let text = svc("{type: NodePort, clusterIP: 10.96.0.20, ports: [{port: 80, nodePort: 3001}]}");
    assert!(matches!(
        load_str_with(&text, "t.yaml", &node1()),
        Err(ConfigError::Invalid { .. })
    ));
    let ctx = CompileCtx {
        nodeport_range: (3000, 32767),
        ..node1()
    };
    let cfg = load_str_with(&text, "t.yaml", &ctx).unwrap();
    get(&cfg, VipKind::NodePort, "198.18.0.1:3001/tcp");
}

/// A Service with externalIPs 198.18.0.50 (owned) and 198.18.0.60 (not),
/// policy `policy`, endpoints `eps` (from `slice`).
fn external_ips(policy: &str, eps: &[(&str, &str)]) -> Config {
    let spec = format!(
        "{{clusterIP: 10.96.0.30, externalTrafficPolicy: {policy}, externalIPs: [198.18.0.50, 198.18.0.60], \
         ports: [{{name: http, port: 80, targetPort: 8080}}]}}"
    );
    let mut text = svc(&spec);
    if !eps.is_empty() {
        text += "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints:\n";
        for (addr, node) in eps {
            text += &format!(
                "- {{addresses: ['{addr}'], nodeName: {node}, conditions: {{ready: true}}}}\n"
            );
        }
        text += "ports: [{name: http, port: 8080}]\n";
    }
    load(&text)
}

#[test]
fn unowned_external_ip_of_a_local_service_without_local_endpoint_drops() {
    let cfg = external_ips("Local", &[("10.1.0.2", "node2")]);
    let e = get(&cfg, VipKind::ExternalIp, "198.18.0.60:80/tcp");
    assert!(e.backends.is_empty());
    assert_eq!(e.when_empty, WhenEmpty::Drop);
    assert_eq!(
        e.short_circuit, None,
        "no pod is served on an address not ours"
    );
    // The owned one is the usual Local front end, short-circuited.
    let own = get(&cfg, VipKind::ExternalIp, "198.18.0.50:80/tcp");
    assert_eq!(own.short_circuit.map(|k| k.addr), Some(a("10.96.0.30")));
    // No endpoint anywhere: rejected, as on an owned address.
    let cfg = external_ips("Local", &[]);
    let e = get(&cfg, VipKind::ExternalIp, "198.18.0.60:80/tcp");
    assert_eq!(e.when_empty, WhenEmpty::Reject);
}

#[test]
fn unowned_external_ip_is_left_alone_otherwise() {
    let unowned = |cfg: &Config| cfg.services.iter().any(|s| s.vip.addr == a("198.18.0.60"));
    // A local endpoint: this host does not serve an address it does not own.
    assert!(!unowned(&external_ips("Local", &[("10.1.0.1", "node1")])));
    // Policy Cluster: not ours, not served, not dropped.
    assert!(!unowned(&external_ips("Cluster", &[("10.1.0.2", "node2")])));
}
