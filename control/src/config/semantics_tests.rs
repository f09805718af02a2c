//! Fixture tests of the Kubernetes semantics: every Service type, traffic
//! policies, node-port allocation, affinity, Pods and selectors, endpoint
//! conditions, dual stack, DNS and health checks. Compiled for a node
//! "node1" with node addresses 198.18.0.1 and 198.18.1.1 that owns the
//! external IP 198.18.0.50.

use std::net::IpAddr;

use sluice_dataplane::service::{
    BackendSpec, ForwardMethod, MasqMode, ServiceSpec, VipKind, WhenEmpty,
};
use sluice_dataplane::types::{proto, Addr, Cidr};

use super::*;
use crate::model::{DnsService, HealthCheck, NamedPort, SrvProto};

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn a(s: &str) -> Addr {
    Addr::from(ip(s))
}

pub(super) fn node1() -> CompileCtx {
    CompileCtx {
        node_name: Some("node1".into()),
        node_addrs: vec![ip("198.18.0.1"), ip("198.18.1.1")],
        local_addrs: vec![ip("198.18.0.1"), ip("198.18.1.1"), ip("198.18.0.50")],
        nodeport_range: (30000, 32767),
        ..Default::default()
    }
}

#[track_caller]
pub(super) fn load(text: &str) -> Config {
    load_str_with(text, "t.yaml", &node1()).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts an `Invalid` error at this field; returns its reason.
#[track_caller]
fn invalid(text: &str, want_field: &str) -> String {
    match load_str_with(text, "t.yaml", &node1()) {
        Err(ConfigError::Invalid { field, reason, .. }) => {
            assert_eq!(field, want_field, "reason: {reason}");
            reason
        }
        other => panic!("expected Invalid at {want_field}, got {other:?}"),
    }
}

/// A backend: (address, port, weight, local); weight 0 = terminating.
fn be(addr: &str, port: u16, weight: u16, local: bool) -> BackendSpec {
    BackendSpec {
        addr: a(addr),
        port,
        weight,
        terminating: weight == 0,
        local,
        ..Default::default()
    }
}

/// The (kind, front end) of every spec, in order.
pub(super) fn fronts(cfg: &Config) -> Vec<(VipKind, String)> {
    cfg.services
        .iter()
        .map(|s| (s.kind, s.vip.to_string()))
        .collect()
}

#[track_caller]
pub(super) fn get<'c>(cfg: &'c Config, kind: VipKind, vip: &str) -> &'c ServiceSpec {
    cfg.services
        .iter()
        .find(|s| s.kind == kind && s.vip.to_string() == vip)
        .unwrap_or_else(|| panic!("no {kind:?} {vip} in {:?}", fronts(cfg)))
}

pub(super) fn svc(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {spec}\n")
}

/// An IPv4 slice for Service `web`: endpoints (address, node, conditions).
fn slice(name: &str, eps: &[(&str, &str, &str)], ports: &str) -> String {
    let mut s = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nendpoints:\n"
    );
    for (addr, node, cond) in eps {
        s += &format!("- {{addresses: ['{addr}'], nodeName: {node}, conditions: {cond}}}\n");
    }
    s + &format!("ports: {ports}\n")
}

const READY: &str = "{ready: true}";
const TERMINATING: &str = "{ready: false, serving: true, terminating: true}";

pub(super) fn two_nodes() -> String {
    slice(
        "web-1",
        &[("10.1.0.1", "node1", READY), ("10.1.0.2", "node2", READY)],
        "[{name: http, port: 8080}]",
    )
}

#[test]
fn nodeport_answers_on_every_node_address_of_the_family() {
    let text = svc(
        "{type: NodePort, clusterIP: 10.96.0.10, ports: [{name: http, port: 80, nodePort: 30080}]}",
    ) + &two_nodes();
    let cfg = load(&text);
    assert_eq!(
        fronts(&cfg),
        vec![
            (VipKind::ClusterIp, "10.96.0.10:80/tcp".into()),
            (VipKind::NodePort, "198.18.0.1:30080/tcp".into()),
            (VipKind::NodePort, "198.18.1.1:30080/tcp".into()),
        ]
    );
    let all = vec![
        be("10.1.0.1", 8080, 1, true),
        be("10.1.0.2", 8080, 1, false),
    ];
    let np = get(&cfg, VipKind::NodePort, "198.18.0.1:30080/tcp");
    assert_eq!(np.backends, all);
    assert_eq!(
        (np.masq, np.when_empty, np.name.as_str()),
        (MasqMode::Always, WhenEmpty::Reject, "default/web:http")
    );
    let cip = get(&cfg, VipKind::ClusterIp, "10.96.0.10:80/tcp");
    assert_eq!((cip.masq, &cip.backends), (MasqMode::OffCluster, &all));

    // An IPv6 node address is not used by an IPv4-only service, and a host
    // without node addresses has only the cluster IP.
    let mut cc = node1();
    cc.node_addrs.push(ip("2001:db8::1"));
    let cfg = load_str_with(&text, "t", &cc).unwrap();
    assert_eq!(cfg.services.len(), 3);
    let cfg = load_str(&text, "t").unwrap();
    assert_eq!(
        fronts(&cfg),
        vec![(VipKind::ClusterIp, "10.96.0.10:80/tcp".into())]
    );
}

/// The nodePort a compiled service port got (from its first NodePort spec).
fn node_port_of(cfg: &Config, name: &str) -> u16 {
    cfg.services
        .iter()
        .find(|s| s.kind == VipKind::NodePort && s.name == name)
        .unwrap_or_else(|| panic!("no node port for {name}"))
        .vip
        .port
}

#[test]
fn nodeport_allocation_is_stable_and_avoids_claims() {
    let np = |name: &str, ports: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{type: NodePort, clusterIP: 10.96.0.{}, ports: {ports}}}\n", name.len())
    };
    let one = np("a", "[{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}, {name: dnst, port: 53, protocol: TCP}]");
    let first = load(&one);
    let second = load(&one);
    assert_eq!(first, second, "same objects, same ports");
    let http = node_port_of(&first, "default/a:http");
    let dns = node_port_of(&first, "default/a:dns");
    assert!((30000..=32767).contains(&http));
    assert_ne!(http, dns);
    // TCP and UDP 53 share one node port, as the API server allocates them.
    assert_eq!(node_port_of(&first, "default/a:dnst"), dns);
    // Another service after it does not move it.
    let two = format!("{one}{}", np("bb", "[{name: http, port: 80}]"));
    let cfg = load(&two);
    assert_eq!(node_port_of(&cfg, "default/a:http"), http);
    assert_ne!(node_port_of(&cfg, "default/bb:http"), http);
    // A later explicit claim on the port wins; the allocation moves.
    let three = format!(
        "{one}{}",
        np(
            "cc",
            &format!("[{{name: http, port: 80, nodePort: {http}}}]")
        )
    );
    let cfg = load(&three);
    assert_eq!(node_port_of(&cfg, "default/cc:http"), http);
    assert_ne!(node_port_of(&cfg, "default/a:http"), http);
    // A small range allocates inside it.
    let mut cc = node1();
    cc.nodeport_range = (31000, 31001);
    let cfg = load_str_with(
        &np("a", "[{name: x, port: 1}, {name: y, port: 2}]"),
        "t",
        &cc,
    )
    .unwrap();
    let mut got = vec![
        node_port_of(&cfg, "default/a:x"),
        node_port_of(&cfg, "default/a:y"),
    ];
    got.sort();
    assert_eq!(got, vec![31000, 31001]);
    // ... and says so when it is full.
    let e = load_str_with(
        &np(
            "a",
            "[{name: x, port: 1}, {name: y, port: 2}, {name: z, port: 3}]",
        ),
        "t",
        &cc,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains(
            "spec.ports[2].nodePort: no free port left in the node-port range 31000-31001"
        ),
        "{e}"
    );
    // An unusable range is the caller's error.
    cc.nodeport_range = (31001, 31000);
    assert!(matches!(
        load_str_with("", "t", &cc),
        Err(ConfigError::Context(_))
    ));
}

#[test]
fn nodeport_conflicts_and_range_refused() {
    let np = |name: &str, ip: &str, ports: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{type: NodePort, clusterIP: {ip}, ports: {ports}}}\n")
    };
    let text = np("a", "10.96.0.1", "[{port: 80, nodePort: 30080}]")
        + &np("b", "10.96.0.2", "[{name: x, port: 81, protocol: UDP, nodePort: 30080}, {name: y, port: 82, nodePort: 30080}]");
    let e = load_str_with(&text, "t.yaml", &node1()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "t.yaml:6: Service default/b: spec.ports[1].nodePort: 30080/TCP is already used by Service default/a (spec.ports[0].nodePort, line 1)"
    );
    // Same number, other protocol, other service: fine.
    let ok = np("a", "10.96.0.1", "[{port: 80, nodePort: 30080}]")
        + &np(
            "b",
            "10.96.0.2",
            "[{port: 81, protocol: UDP, nodePort: 30080}]",
        );
    assert_eq!(load(&ok).services.len(), 6);
    // Within one service.
    let r = invalid(
        &svc("{type: NodePort, clusterIP: 10.96.0.1, ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]}"),
        "spec.ports[1].nodePort",
    );
    assert!(
        r.contains("duplicate nodePort 30080/TCP (also spec.ports[0])"),
        "{r}"
    );
    let r = invalid(
        &svc("{type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 8080}]}"),
        "spec.ports[0].nodePort",
    );
    assert_eq!(r, "must be in the node-port range 30000-32767, got 8080");
    let r = invalid(
        &svc("{clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}"),
        "spec.ports[0].nodePort",
    );
    assert!(r.contains("may not be used when type is ClusterIP"), "{r}");
    let r = invalid(
        &svc("{type: NodePort, clusterIP: None, ports: [{port: 80}]}"),
        "spec.clusterIP",
    );
    assert!(r.contains("may not be None for NodePort"), "{r}");
}

const LB: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  loadBalancerIP: 198.18.5.3
  loadBalancerSourceRanges: [198.18.200.0/24, ' 10.0.0.0/8 ', '2001:db8::/64']
  ports: [{name: http, port: 80, nodePort: 30080}]
status:
  loadBalancer:
    ingress:
    - ip: 198.18.5.1
    - {ip: 198.18.5.2, ipMode: Proxy}
    - hostname: lb.example.com
    - ip: 198.18.5.3
    - ip: '2001:db8::5'
";

#[test]
fn loadbalancer_ingress_and_source_ranges() {
    let cfg = load(&(LB.to_owned() + &two_nodes()));
    assert_eq!(
        fronts(&cfg),
        vec![
            (VipKind::ClusterIp, "10.96.0.20:80/tcp".into()),
            (VipKind::NodePort, "198.18.0.1:30080/tcp".into()),
            (VipKind::NodePort, "198.18.1.1:30080/tcp".into()),
            // ipMode Proxy, hostname-only and the IPv6 address of an
            // IPv4-only service are skipped; loadBalancerIP is deduplicated.
            (VipKind::LoadBalancer, "198.18.5.1:80/tcp".into()),
            (VipKind::LoadBalancer, "198.18.5.3:80/tcp".into()),
        ]
    );
    let lb = get(&cfg, VipKind::LoadBalancer, "198.18.5.1:80/tcp");
    let ranges: Vec<Cidr> = vec![
        "198.18.200.0/24".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
    ];
    assert_eq!(lb.source_ranges, ranges, "IPv4 ranges only");
    assert_eq!(
        (lb.masq, lb.when_empty),
        (MasqMode::Always, WhenEmpty::Reject)
    );
    assert_eq!(lb.backends.len(), 2);
    // Ranges filter only the load-balancer front ends.
    assert!(get(&cfg, VipKind::NodePort, "198.18.0.1:30080/tcp")
        .source_ranges
        .is_empty());
    assert!(get(&cfg, VipKind::ClusterIp, "10.96.0.20:80/tcp")
        .source_ranges
        .is_empty());
    // No health check with policy Cluster.
    assert!(cfg.health_checks.is_empty());

    // allocateLoadBalancerNodePorts: false: no allocated node ports, but an
    // explicit one still answers.
    let no_alloc = LB.replace(
        "  type: LoadBalancer\n",
        "  type: LoadBalancer\n  allocateLoadBalancerNodePorts: false\n",
    );
    let cfg = load(&no_alloc.replace(", nodePort: 30080", ""));
    assert!(cfg.services.iter().all(|s| s.kind != VipKind::NodePort));
    assert_eq!(cfg.services.len(), 3);
    assert_eq!(load(&no_alloc).services.len(), 5);

    // The annotation, when the field is empty.
    let ann = LB
        .replace("  loadBalancerSourceRanges: [198.18.200.0/24, ' 10.0.0.0/8 ', '2001:db8::/64']\n", "")
        .replace(
            "metadata: {name: web}",
            "metadata: {name: web, annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: '198.18.7.0/24, 198.18.8.0/24'}}",
        );
    let cfg = load(&ann);
    assert_eq!(
        get(&cfg, VipKind::LoadBalancer, "198.18.5.1:80/tcp").source_ranges,
        vec![
            "198.18.7.0/24".parse::<Cidr>().unwrap(),
            "198.18.8.0/24".parse().unwrap()
        ]
    );

    // Errors.
    let r = invalid(
        &LB.replace("' 10.0.0.0/8 '", "10.0.0.0/33"),
        "spec.loadBalancerSourceRanges[1]",
    );
    assert!(r.contains("not a CIDR"), "{r}");
    let r = invalid(
        &LB.replace("198.18.200.0/24,", "198.18.200.0,"),
        "spec.loadBalancerSourceRanges[0]",
    );
    assert!(r.contains("not a CIDR"), "{r}");
    invalid(
        &LB.replace("- ip: 198.18.5.1", "- ip: 198.18.5"),
        "status.loadBalancer.ingress[0].ip",
    );
    invalid(
        &LB.replace("ipMode: Proxy", "ipMode: Tunnel"),
        "status.loadBalancer.ingress[1].ipMode",
    );
    invalid(
        &LB.replace("loadBalancerIP: 198.18.5.3", "loadBalancerIP: x"),
        "spec.loadBalancerIP",
    );
    let r = invalid(
        &LB.replace("type: LoadBalancer", "type: NodePort"),
        "spec.loadBalancerSourceRanges",
    );
    assert!(r.contains("only be used when type is LoadBalancer"), "{r}");
}

#[test]
fn external_ips_only_where_owned() {
    let text = svc("{clusterIP: 10.96.0.30, externalIPs: [198.18.0.50, 198.18.0.51, '2001:db8::50'], ports: [{name: http, port: 80, targetPort: 8080}]}")
        + &two_nodes();
    let cfg = load(&text);
    assert_eq!(
        fronts(&cfg),
        vec![
            (VipKind::ClusterIp, "10.96.0.30:80/tcp".into()),
            (VipKind::ExternalIp, "198.18.0.50:80/tcp".into()),
        ]
    );
    let e = get(&cfg, VipKind::ExternalIp, "198.18.0.50:80/tcp");
    assert_eq!((e.masq, e.backends.len()), (MasqMode::Always, 2));
    // A host that owns none serves none.
    assert_eq!(load_str(&text, "t").unwrap().services.len(), 1);
    invalid(
        &svc("{clusterIP: 10.96.0.30, externalIPs: [198.18.0.500], ports: [{port: 80}]}"),
        "spec.externalIPs[0]",
    );
}

#[test]
fn local_policies() {
    let with = |policies: &str, eps: &str| {
        svc(&format!("{{type: NodePort, clusterIP: 10.96.0.40, {policies} ports: [{{name: http, port: 80, nodePort: 30080}}]}}")) + eps
    };
    let remote_only = slice(
        "web-1",
        &[("10.1.0.2", "node2", READY)],
        "[{name: http, port: 8080}]",
    );

    // externalTrafficPolicy: Local.
    let cfg = load(&with("externalTrafficPolicy: Local,", &two_nodes()));
    let np = get(&cfg, VipKind::NodePort, "198.18.1.1:30080/tcp");
    assert_eq!(np.backends, vec![be("10.1.0.1", 8080, 1, true)]);
    assert_eq!((np.masq, np.when_empty), (MasqMode::Never, WhenEmpty::Drop));
    // The cluster IP keeps every endpoint (internal policy Cluster).
    let cip = get(&cfg, VipKind::ClusterIp, "10.96.0.40:80/tcp");
    assert_eq!(cip.backends.len(), 2);
    assert_eq!(
        (cip.masq, cip.when_empty),
        (MasqMode::OffCluster, WhenEmpty::Reject)
    );
    // Endpoints elsewhere only: drop ("has no local endpoints").
    let cfg = load(&with("externalTrafficPolicy: Local,", &remote_only));
    let np = get(&cfg, VipKind::NodePort, "198.18.0.1:30080/tcp");
    assert_eq!((np.backends.len(), np.when_empty), (0, WhenEmpty::Drop));
    // No endpoint anywhere: reject ("has no endpoints"), as kube-proxy.
    let cfg = load(&with("externalTrafficPolicy: Local,", ""));
    let np = get(&cfg, VipKind::NodePort, "198.18.0.1:30080/tcp");
    assert_eq!((np.backends.len(), np.when_empty), (0, WhenEmpty::Reject));
    // Without a node name nothing is local.
    let cfg = load_str(&with("externalTrafficPolicy: Local,", &two_nodes()), "t").unwrap();
    assert!(cfg
        .services
        .iter()
        .all(|s| s.backends.iter().all(|b| !b.local)));

    // internalTrafficPolicy: Local.
    let cfg = load(&with("internalTrafficPolicy: Local,", &two_nodes()));
    let cip = get(&cfg, VipKind::ClusterIp, "10.96.0.40:80/tcp");
    assert_eq!(cip.backends, vec![be("10.1.0.1", 8080, 1, true)]);
    assert_eq!(
        (cip.masq, cip.when_empty),
        (MasqMode::OffCluster, WhenEmpty::Drop)
    );
    let np = get(&cfg, VipKind::NodePort, "198.18.0.1:30080/tcp");
    assert_eq!((np.backends.len(), np.masq), (2, MasqMode::Always));

    let r = invalid(
        &with("externalTrafficPolicy: local,", ""),
        "spec.externalTrafficPolicy",
    );
    assert!(r.contains("got \"local\""), "{r}");
    invalid(
        &with("internalTrafficPolicy: Nearby,", ""),
        "spec.internalTrafficPolicy",
    );
}

#[test]
fn session_affinity() {
    let with = |extra: &str| {
        svc(&format!(
            "{{clusterIP: 10.96.0.50, {extra} ports: [{{port: 80}}]}}"
        ))
    };
    assert_eq!(load(&with("")).services[0].affinity_timeout, None);
    assert_eq!(
        load(&with("sessionAffinity: None,")).services[0].affinity_timeout,
        None
    );
    assert_eq!(
        load(&with("sessionAffinity: ClientIP,")).services[0].affinity_timeout,
        Some(10800)
    );
    let explicit =
        "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}},";
    assert_eq!(load(&with(explicit)).services[0].affinity_timeout, Some(60));
    assert_eq!(
        load(&with(&explicit.replace("60", "86400"))).services[0].affinity_timeout,
        Some(86400)
    );
    for bad in ["0", "86401", "-5"] {
        let r = invalid(
            &with(&explicit.replace("60", bad)),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        );
        assert_eq!(r, format!("must be between 1 and 86400, got {bad}"));
    }
    invalid(&with("sessionAffinity: Cookie,"), "spec.sessionAffinity");
    invalid(
        &with("sessionAffinity: None, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}},"),
        "spec.sessionAffinityConfig",
    );
    // Affinity applies to every front end of the service.
    let cfg = load(&svc(
        "{type: NodePort, clusterIP: 10.96.0.50, sessionAffinity: ClientIP, ports: [{port: 80}]}",
    ));
    assert_eq!(cfg.services.len(), 3);
    assert!(cfg
        .services
        .iter()
        .all(|s| s.affinity_timeout == Some(10800)));
}

fn pod(
    name: &str,
    labels: &str,
    node: &str,
    ports: &str,
    status: &str,
    extra_meta: &str,
) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {labels}{extra_meta}}}\nspec: {{nodeName: {node}, containers: [{{name: c, ports: {ports}}}]}}\nstatus: {status}\n"
    )
}

const POD_READY: &str = "{podIP: 10.1.0.REPLACE, conditions: [{type: Ready, status: 'True'}]}";

fn ready_at(last: u8) -> String {
    POD_READY.replace("REPLACE", &last.to_string())
}

#[test]
fn pods_by_selector() {
    let service = svc("{clusterIP: 10.96.0.60, selector: {app: web}, ports: [{name: http, port: 80, targetPort: web}, {name: metrics, port: 9100}]}");
    let web = |n: u16| {
        format!("[{{name: web, containerPort: {n}}}, {{name: udp-web, containerPort: 7, protocol: UDP}}]")
    };
    let app = "{app: web, tier: fe}";
    let text = service.clone()
        + &pod("p1", app, "node1", &web(8080), &ready_at(1), "")
        + &pod("p2", app, "node2", &web(8081), &ready_at(2), "")
        // Not ready: no endpoint.
        + &pod("p3", app, "node1", &web(8080), "{podIP: 10.1.0.3, conditions: [{type: Ready, status: 'False'}]}", "")
        // Ready, without the named port: an endpoint of metrics only.
        + &pod("p4", app, "node1", "[{name: other, containerPort: 1}]", &ready_at(4), "")
        // Other labels, other namespace: not selected.
        + &pod("p5", "{app: db}", "node1", &web(8080), &ready_at(5), "")
        + &pod("p6", app, "node1", &web(8080), &ready_at(6), ", namespace: other")
        // Being deleted, still ready: serving and terminating.
        + &pod("p7", app, "node1", &web(8080), &ready_at(7), ", deletionTimestamp: '2024-05-02T10:11:12Z'")
        // Finished; no IP yet.
        + &pod("p8", app, "node1", &web(8080), &ready_at(8).replace("{podIP", "{phase: Succeeded, podIP"), "")
        + &pod("p9", app, "node1", &web(8080), "{conditions: [{type: Ready, status: 'True'}]}", "");
    let cfg = load(&text);
    assert_eq!(cfg.objects.pods, 9);
    assert_eq!(
        cfg.services[0].backends,
        vec![
            be("10.1.0.1", 8080, 1, true),
            be("10.1.0.2", 8081, 1, false),
            be("10.1.0.7", 8080, 0, true),
        ],
        "named targetPort resolves per Pod"
    );
    assert_eq!(
        cfg.services[1].backends,
        vec![
            be("10.1.0.1", 9100, 1, true),
            be("10.1.0.2", 9100, 1, false),
            be("10.1.0.4", 9100, 1, true),
            be("10.1.0.7", 9100, 0, true),
        ]
    );

    // Explicit endpoints win over the selector.
    let cfg = load(&format!(
        "{}{}",
        text,
        slice(
            "web-x",
            &[("10.9.0.1", "node2", READY)],
            "[{name: http, port: 1}, {name: metrics, port: 2}]"
        )
    ));
    assert_eq!(cfg.services[0].backends, vec![be("10.9.0.1", 1, 1, false)]);

    // publishNotReadyAddresses: every Pod with an IP is ready.
    let cfg = load(
        &(service.replace("selector:", "publishNotReadyAddresses: true, selector:")
            + &pod("p3", app, "node1", &web(8080), "{podIP: 10.1.0.3}", "")),
    );
    assert_eq!(
        cfg.services[0].backends,
        vec![be("10.1.0.3", 8080, 1, true)]
    );

    // Dual-stack Pods feed each family; podIP must be podIPs[0].
    let ds = svc("{clusterIPs: [10.96.0.61, 'fd00::61'], ipFamilyPolicy: PreferDualStack, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}")
        + &pod("p1", app, "node1", "[]", "{podIP: 10.1.0.1, podIPs: [{ip: 10.1.0.1}, {ip: 'fd00::1:1'}], conditions: [{type: Ready, status: 'True'}]}", "");
    let cfg = load(&ds);
    assert_eq!(
        cfg.services[0].backends,
        vec![be("10.1.0.1", 8080, 1, true)]
    );
    assert_eq!(
        cfg.services[1].backends,
        vec![be("fd00::1:1", 8080, 1, true)]
    );
    let bad = ds.replace("podIP: 10.1.0.1,", "podIP: 10.1.0.2,");
    match load_str_with(&bad, "t", &node1()) {
        Err(ConfigError::Invalid { kind, field, .. }) => {
            assert_eq!(
                (kind.as_str(), field.as_str()),
                ("Pod", "status.podIPs[0].ip")
            )
        }
        other => panic!("{other:?}"),
    }
    // Pod checks.
    for (body, field) in [
        (
            "spec: {containers: [{ports: [{name: web}]}]}",
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            "spec: {containers: [{ports: [{containerPort: 0}]}]}",
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            "spec: {containers: [{ports: [{containerPort: 80, name: Web}]}]}",
            "spec.containers[0].ports[0].name",
        ),
        ("status: {podIP: nope}", "status.podIP"),
    ] {
        let text = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\n{body}\n");
        match load_str_with(&text, "t", &node1()) {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{body}: {other:?}"),
        }
    }
    let dup = pod("p1", app, "node1", "[]", "{}", "").repeat(2);
    let e = load_str_with(&dup, "t", &node1()).unwrap_err();
    assert!(
        e.to_string().contains("duplicate Pod (first at line 1)"),
        "{e}"
    );
}

#[test]
fn endpoint_conditions() {
    let text = svc("{clusterIP: 10.96.0.70, ports: [{name: http, port: 80}]}")
        + &slice(
            "web-1",
            &[
                ("10.1.0.1", "node1", READY),
                ("10.1.0.2", "node1", TERMINATING),
                // Not serving: gone.
                ("10.1.0.3", "node1", "{ready: false, serving: false, terminating: true}"),
                // `serving` absent defers to `ready` (the API's rule).
                ("10.1.0.4", "node1", "{ready: false, terminating: true}"),
                // Not ready, not terminating: gone.
                ("10.1.0.5", "node1", "{ready: false, serving: false}"),
            ],
            "[{name: http, port: 8080}]",
        )
        // The same address ready in another slice: the ready copy wins.
        + &slice("web-2", &[("10.1.0.2", "node1", READY)], "[{name: http, port: 8080}]");
    let cfg = load(&text);
    assert_eq!(
        cfg.services[0].backends,
        vec![be("10.1.0.1", 8080, 1, true), be("10.1.0.2", 8080, 1, true)]
    );
    let cfg = load(&text.replace("name: web-2", "name: web-2x").replace(
        "- {addresses: ['10.1.0.2'], nodeName: node1, conditions: {ready: true}}",
        "- {addresses: ['10.1.0.9'], nodeName: node2, conditions: {ready: false}}",
    ));
    assert_eq!(
        cfg.services[0].backends,
        vec![be("10.1.0.1", 8080, 1, true), be("10.1.0.2", 8080, 0, true)]
    );
    // Endpoints v1: notReadyAddresses never get traffic; nodeName → local.
    let ep = svc("{clusterIP: 10.96.0.70, ports: [{port: 80}]}")
        + "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets: [{addresses: [{ip: 10.1.0.1, nodeName: node1}, {ip: 10.1.0.2}], notReadyAddresses: [{ip: 10.1.0.3}], ports: [{port: 8080}]}]\n";
    assert_eq!(
        load(&ep).services[0].backends,
        vec![
            be("10.1.0.1", 8080, 1, true),
            be("10.1.0.2", 8080, 1, false)
        ]
    );
}

#[test]
fn sctp_and_udp_compile() {
    let cfg = load(&svc("{type: NodePort, clusterIP: 10.96.0.80, ports: [{name: s, port: 9, protocol: SCTP, nodePort: 30009}, {name: u, port: 9, protocol: UDP, nodePort: 30009}]}"));
    let protos: Vec<u8> = cfg.services.iter().map(|s| s.vip.proto).collect();
    assert_eq!(
        protos,
        vec![
            proto::SCTP,
            proto::SCTP,
            proto::SCTP,
            proto::UDP,
            proto::UDP,
            proto::UDP
        ]
    );
    assert_eq!(
        *cfg.dns[0],
        DnsService::ClusterIp {
            namespace: "default".into(),
            name: "web".into(),
            ips: vec![ip("10.96.0.80")],
            ports: vec![
                NamedPort {
                    name: "s".into(),
                    proto: SrvProto::Sctp,
                    port: 9
                },
                NamedPort {
                    name: "u".into(),
                    proto: SrvProto::Udp,
                    port: 9
                },
            ],
        }
    );
}

#[test]
fn dual_stack() {
    let ds = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIPs: [10.96.0.90, 'fd00::90']
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{name: http, port: 80, nodePort: 30090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-4, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1], nodeName: node1}]
ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-6, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints: [{addresses: ['fd00::1:1'], nodeName: node2}]
ports: [{name: http, port: 8080}]
";
    let mut cc = node1();
    cc.node_addrs.push(ip("2001:db8::1"));
    let cfg = load_str_with(ds, "t", &cc).unwrap();
    assert_eq!(
        fronts(&cfg),
        vec![
            (VipKind::ClusterIp, "10.96.0.90:80/tcp".into()),
            (VipKind::ClusterIp, "[fd00::90]:80/tcp".into()),
            (VipKind::NodePort, "198.18.0.1:30090/tcp".into()),
            (VipKind::NodePort, "198.18.1.1:30090/tcp".into()),
            (VipKind::NodePort, "[2001:db8::1]:30090/tcp".into()),
        ]
    );
    assert_eq!(
        cfg.services[1].backends,
        vec![be("fd00::1:1", 8080, 1, false)]
    );
    assert_eq!(
        cfg.services[4].backends,
        vec![be("fd00::1:1", 8080, 1, false)]
    );
    assert_eq!(
        cfg.services[2].backends,
        vec![be("10.1.0.1", 8080, 1, true)]
    );
    // Absent policy with two IPs defaults to RequireDualStack.
    assert!(load_str_with(
        &ds.replace("  ipFamilyPolicy: RequireDualStack\n", ""),
        "t",
        &cc
    )
    .is_ok());

    let base = |spec: &str| svc(&format!("{{{spec}, ports: [{{port: 80}}]}}"));
    for (spec, field, reason) in [
        (
            "clusterIP: 10.96.0.1, ipFamilyPolicy: RequireDualStack",
            "spec.clusterIP",
            "RequireDualStack needs",
        ),
        (
            "clusterIPs: [10.96.0.1, 'fd00::1'], ipFamilies: [IPv6, IPv4]",
            "spec.ipFamilies[0]",
            "must be IPv4 to match cluster IP 10.96.0.1",
        ),
        (
            "clusterIPs: [10.96.0.1, 'fd00::1'], ipFamilyPolicy: SingleStack",
            "spec.clusterIPs",
            "one address when ipFamilyPolicy is SingleStack",
        ),
        (
            "clusterIP: 10.96.0.1, ipFamilies: [IPv4, IPv6], ipFamilyPolicy: SingleStack",
            "spec.ipFamilies",
            "one family",
        ),
        (
            "clusterIP: 10.96.0.1, ipFamilies: [IPv4, IPv4]",
            "spec.ipFamilies[1]",
            "duplicate family",
        ),
        (
            "clusterIP: 10.96.0.1, ipFamilies: [IPv5]",
            "spec.ipFamilies[0]",
            "got \"IPv5\"",
        ),
        (
            "clusterIP: 10.96.0.1, ipFamilyPolicy: Dual",
            "spec.ipFamilyPolicy",
            "got \"Dual\"",
        ),
    ] {
        let r = invalid(&base(spec), field);
        assert!(r.contains(reason), "{spec}: {r}");
    }
    // PreferDualStack with one IP is fine.
    assert_eq!(
        load(&base(
            "clusterIP: 10.96.0.1, ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6]"
        ))
        .services
        .len(),
        1
    );
}

#[test]
fn headless_and_external_name_dns() {
    let headless = "apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, targetPort: pg}, {port: 9, name: raw}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-4, namespace: data, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- addresses: [10.1.0.2]
- addresses: [10.1.0.1]
- addresses: [10.1.0.3]
  conditions: {ready: false, serving: true, terminating: true}
ports: [{name: pg, port: 5433}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-6, namespace: data, labels: {kubernetes.io/service-name: db}}
addressType: IPv6
endpoints: [{addresses: ['fd00::1:1']}]
ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: billing, namespace: data}
spec: {type: ExternalName, externalName: billing.example.com., ports: [{port: 443}]}
";
    let cfg = load(headless);
    assert!(cfg.services.is_empty());
    assert_eq!(
        cfg.dns.iter().map(|d| (**d).clone()).collect::<Vec<_>>(),
        vec![
            DnsService::Headless {
                namespace: "data".into(),
                name: "db".into(),
                ips: vec![ip("10.1.0.1"), ip("10.1.0.2"), ip("fd00::1:1")],
                ports: vec![
                    NamedPort {
                        name: "pg".into(),
                        proto: SrvProto::Tcp,
                        port: 5432
                    },
                    NamedPort {
                        name: "pg".into(),
                        proto: SrvProto::Tcp,
                        port: 5433
                    },
                ],
            },
            DnsService::ExternalName {
                namespace: "data".into(),
                name: "billing".into(),
                target: "billing.example.com".into(),
            },
        ]
    );
    assert_eq!((cfg.objects.services, cfg.objects.headless), (2, 1));

    // An unnamed port gets no SRV.
    let cfg = load(&svc("{clusterIP: 10.96.0.95, ports: [{port: 80}]}"));
    assert_eq!(
        cfg.dns.iter().map(|d| (**d).clone()).collect::<Vec<_>>(),
        vec![DnsService::ClusterIp {
            namespace: "default".into(),
            name: "web".into(),
            ips: vec![ip("10.96.0.95")],
            ports: vec![],
        }]
    );

    let r = invalid(&svc("{type: ExternalName}"), "spec.externalName");
    assert!(r.contains("required"), "{r}");
    let r = invalid(
        &svc("{type: ExternalName, externalName: 'Bad_Name.example'}"),
        "spec.externalName",
    );
    assert!(r.contains("must be a DNS name"), "{r}");
    let r = invalid(
        &svc("{type: ExternalName, externalName: a.example, clusterIP: 10.96.0.1}"),
        "spec.clusterIP",
    );
    assert!(r.contains("may not be set for ExternalName"), "{r}");
}

#[test]
fn health_checks() {
    let lb = |extra: &str| {
        svc(&format!("{{type: LoadBalancer, clusterIP: 10.96.1.1, externalTrafficPolicy: Local, {extra} ports: [{{name: http, port: 80}}, {{name: https, port: 443}}]}}"))
    };
    let eps = slice(
        "web-1",
        &[
            ("10.1.0.1", "node1", READY),
            ("10.1.0.2", "node1", READY),
            ("10.1.0.3", "node1", TERMINATING),
            ("10.1.0.4", "node2", READY),
        ],
        "[{name: http, port: 8080}, {name: https, port: 8443}]",
    );
    let cfg = load(&(lb("healthCheckNodePort: 32000,") + &eps));
    assert_eq!(
        cfg.health_checks,
        vec![HealthCheck {
            port: 32000,
            service: "default/web".into(),
            local_endpoints: 2
        }]
    );
    // Allocated when absent: in range, stable, not a node port of the service.
    let text = lb("") + &eps;
    let first = load(&text);
    let hc = first.health_checks[0].port;
    assert!((30000..=32767).contains(&hc));
    assert_eq!(load(&text).health_checks, first.health_checks);
    assert!(first.services.iter().all(|s| s.vip.port != hc));
    // No local endpoint: count 0 (kube-proxy answers 503).
    let cfg = load(&(lb("healthCheckNodePort: 32000,") + &two_nodes().replace("node1", "node3")));
    assert_eq!(cfg.health_checks[0].local_endpoints, 0);
    // Policy Cluster: none.
    assert!(load(&lb("").replace("Local", "Cluster"))
        .health_checks
        .is_empty());
    // Only LoadBalancer + Local may set it; NodePort + Local has none.
    let np = lb("healthCheckNodePort: 32000,").replace("LoadBalancer", "NodePort");
    let r = invalid(&np, "spec.healthCheckNodePort");
    assert!(r.contains("only be set when type is LoadBalancer"), "{r}");
    assert!(load(&lb("").replace("LoadBalancer", "NodePort"))
        .health_checks
        .is_empty());
    // It shares the node-port space: range and conflicts.
    invalid(&lb("healthCheckNodePort: 80,"), "spec.healthCheckNodePort");
    let clash = lb("healthCheckNodePort: 32000,")
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec: {type: NodePort, clusterIP: 10.96.1.2, ports: [{port: 80, nodePort: 32000}]}\n";
    let e = load_str_with(&clash, "t.yaml", &node1()).unwrap_err();
    assert!(
        e.to_string().contains("Service default/other: spec.ports[0].nodePort: 32000/TCP is already used by Service default/web (spec.healthCheckNodePort, line 1)"),
        "{e}"
    );
}

#[test]
fn examples_load() {
    let ex = |name: &str, text: &str| {
        load_str_with(text, name, &node1()).unwrap_or_else(|e| panic!("{e}"))
    };
    // demo: the ClusterIP service the demo script drives.
    let cfg = ex("demo.yaml", include_str!("../../../examples/demo.yaml"));
    assert_eq!(
        fronts(&cfg),
        vec![
            (VipKind::ClusterIp, "198.18.100.10:80/tcp".into()),
            (VipKind::ClusterIp, "198.18.100.10:5353/udp".into()),
        ]
    );
    assert_eq!(cfg.services[0].backends[0].port, 8080);

    let cfg = ex(
        "nodeport.yaml",
        include_str!("../../../examples/nodeport.yaml"),
    );
    assert_eq!(cfg.services.len(), 6);
    let http = get(&cfg, VipKind::NodePort, "198.18.0.1:30080/tcp");
    assert_eq!(http.backends.len(), 2);
    let dns = node_port_of(&cfg, "default/web-np:dns");
    assert!((30000..=32767).contains(&dns) && dns != 30080);

    let cfg = ex(
        "loadbalancer.yaml",
        include_str!("../../../examples/loadbalancer.yaml"),
    );
    let lb = get(&cfg, VipKind::LoadBalancer, "198.18.200.1:443/tcp");
    assert_eq!(
        lb.backends,
        vec![
            be("198.18.1.21", 8443, 1, true),
            be("198.18.1.23", 8443, 0, true)
        ]
    );
    assert_eq!(
        (lb.masq, lb.when_empty, lb.affinity_timeout),
        (MasqMode::Never, WhenEmpty::Drop, Some(600))
    );
    // The range holds the node's addresses, so the LB IP itself is
    // admitted too (kube-proxy's allowFromNode).
    assert_eq!(
        lb.source_ranges,
        vec![
            "198.18.0.0/15".parse::<Cidr>().unwrap(),
            "198.18.200.1/32".parse::<Cidr>().unwrap()
        ]
    );
    assert_eq!(
        cfg.health_checks,
        vec![HealthCheck {
            port: 32100,
            service: "default/web-lb".into(),
            local_endpoints: 1
        }]
    );

    let cfg = ex(
        "externalips.yaml",
        include_str!("../../../examples/externalips.yaml"),
    );
    assert_eq!(
        fronts(&cfg),
        vec![
            (VipKind::ClusterIp, "198.18.100.40:80/tcp".into()),
            (VipKind::ExternalIp, "198.18.0.50:80/tcp".into()),
        ]
    );
    assert_eq!(
        cfg.services[1].backends,
        vec![be("198.18.1.31", 8080, 1, true)]
    );

    let cfg = ex("pods.yaml", include_str!("../../../examples/pods.yaml"));
    assert_eq!(
        cfg.services[0].backends,
        vec![
            be("198.18.1.41", 8080, 1, true),
            be("198.18.1.42", 9090, 1, false)
        ]
    );

    let cfg = ex(
        "headless.yaml",
        include_str!("../../../examples/headless.yaml"),
    );
    assert!(cfg.services.is_empty());
    assert!(
        matches!(&*cfg.dns[0], DnsService::Headless { ips, ports, .. } if ips.len() == 2 && ports[0].port == 5432)
    );

    let cfg = ex(
        "externalname.yaml",
        include_str!("../../../examples/externalname.yaml"),
    );
    assert!(
        matches!(&*cfg.dns[0], DnsService::ExternalName { target, .. } if target == "billing.example.com")
    );

    let cfg = ex("dr.yaml", include_str!("../../../examples/dr.yaml"));
    assert_eq!(
        fronts(&cfg),
        vec![
            (VipKind::ClusterIp, "198.18.100.20:8080/tcp".into()),
            (VipKind::ClusterIp, "198.18.100.20:53/udp".into()),
        ]
    );
    for s in &cfg.services {
        assert_eq!((s.forward, s.masq), (ForwardMethod::Dr, MasqMode::Never));
        assert_eq!(s.affinity_timeout, Some(10800));
        assert_eq!(s.backends.len(), 3);
        assert!(s.backends.iter().all(|b| b.port == s.vip.port));
    }
    assert_eq!(cfg.services[0].backends[2].weight, 0, "terminating");

    // The default context loads them all too.
    for text in [
        include_str!("../../../examples/nodeport.yaml"),
        include_str!("../../../examples/loadbalancer.yaml"),
        include_str!("../../../examples/externalips.yaml"),
        include_str!("../../../examples/pods.yaml"),
        include_str!("../../../examples/headless.yaml"),
        include_str!("../../../examples/externalname.yaml"),
        include_str!("../../../examples/dr.yaml"),
    ] {
        load_str(text, "t").unwrap();
    }
}

/// A Service `web` with the forwarding-method annotation set to `method`
/// (a YAML scalar, written as is).
fn svc_method(method: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, annotations: {{sluice.dev/forwarding-method: {method}}}}}\nspec: {spec}\n")
}

const DR_FIELD: &str = "metadata.annotations[\"sluice.dev/forwarding-method\"]";

#[test]
fn dr_annotation_selects_direct_routing_on_every_front_end() {
    let text = svc_method(
        "dr",
        "{type: LoadBalancer, allocateLoadBalancerNodePorts: false, clusterIP: 10.96.0.10, externalIPs: [198.18.0.50], loadBalancerSourceRanges: [198.18.0.0/24], ports: [{name: http, port: 80, targetPort: 80}]}",
    ) + "status: {loadBalancer: {ingress: [{ip: 198.18.200.1}]}}\n"
        + &slice(
        "web-1",
        &[("10.1.0.1", "node1", READY), ("10.1.0.2", "node2", READY)],
        "[{name: http, port: 80}]",
    );
    let cfg = load(&text);
    assert_eq!(
        fronts(&cfg),
        vec![
            (VipKind::ClusterIp, "10.96.0.10:80/tcp".into()),
            (VipKind::ExternalIp, "198.18.0.50:80/tcp".into()),
            (VipKind::LoadBalancer, "198.18.200.1:80/tcp".into()),
        ]
    );
    for s in &cfg.services {
        // externalTrafficPolicy Cluster: every endpoint, but never SNAT.
        assert_eq!(s.forward, ForwardMethod::Dr, "{}", s.vip);
        assert_eq!(s.masq, MasqMode::Never, "{}", s.vip);
        assert_eq!(s.backends.len(), 2);
    }
    let lb = get(&cfg, VipKind::LoadBalancer, "198.18.200.1:80/tcp");
    // The range, and the LB IP (the range holds the node: allowFromNode).
    assert_eq!(lb.source_ranges.len(), 2);

    // Local keeps only local endpoints, still without SNAT.
    let local = text.replace(
        "allocateLoadBalancerNodePorts: false,",
        "allocateLoadBalancerNodePorts: false, externalTrafficPolicy: Local,",
    );
    let cfg = load(&local);
    let lb = get(&cfg, VipKind::LoadBalancer, "198.18.200.1:80/tcp");
    assert_eq!(
        (lb.backends.len(), lb.masq, lb.when_empty),
        (1, MasqMode::Never, WhenEmpty::Drop)
    );

    // nat, or no annotation: NAT as before.
    for t in [
        text.replace("forwarding-method: dr", "forwarding-method: nat"),
        text.replace(", annotations: {sluice.dev/forwarding-method: dr}", ""),
    ] {
        let cfg = load(&t);
        assert!(cfg.services.iter().all(|s| s.forward == ForwardMethod::Nat));
        assert_eq!(
            get(&cfg, VipKind::LoadBalancer, "198.18.200.1:80/tcp").masq,
            MasqMode::Always
        );
    }
}

#[test]
fn dr_refuses_what_it_cannot_do() {
    let ep = slice(
        "web-1",
        &[("10.1.0.1", "node1", READY)],
        "[{name: http, port: 80}]",
    );
    let r = invalid(
        &(svc_method(
            "tun",
            "{clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}",
        ) + &ep),
        DR_FIELD,
    );
    assert_eq!(
        r,
        "must be \"nat\", \"dr\", \"fullnat\" or \"ipip\", got \"tun\""
    );
    let r = invalid(
        &(svc_method(
            "1",
            "{clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}",
        ) + &ep),
        DR_FIELD,
    );
    assert!(r.contains("must be a string"), "{r}");

    // Port remapping, three ways.
    let r = invalid(
        &(svc_method(
            "dr",
            "{clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}",
        ) + &ep),
        "spec.ports[0].targetPort",
    );
    assert_eq!(r, "must equal port 80 with forwarding method dr (direct routing cannot remap ports), got 8080");
    let remapped = slice(
        "web-1",
        &[("10.1.0.1", "node1", READY)],
        "[{name: http, port: 8080}]",
    );
    let r = invalid(
        &(svc_method(
            "dr",
            "{clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: web}]}",
        ) + &remapped),
        "spec.ports[0].targetPort",
    );
    assert!(
        r.contains("endpoint 10.1.0.1 listens on 8080 for this port, the service port is 80"),
        "{r}"
    );
    let r = invalid(
        &(svc_method(
            "dr",
            "{clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}",
        ) + &remapped),
        "spec.ports[0].targetPort",
    );
    assert!(r.contains("cannot remap ports"), "{r}");

    // Node ports.
    let r = invalid(
        &(svc_method(
            "dr",
            "{type: NodePort, clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}",
        ) + &ep),
        "spec.type",
    );
    assert!(
        r.starts_with("NodePort cannot use forwarding method dr"),
        "{r}"
    );
    invalid(
        &(svc_method(
            "dr",
            "{type: LoadBalancer, clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}",
        ) + &ep),
        "spec.allocateLoadBalancerNodePorts",
    );
    invalid(
        &(svc_method("dr", "{type: LoadBalancer, allocateLoadBalancerNodePorts: false, clusterIP: 10.96.0.10, ports: [{name: http, port: 80, nodePort: 30080}]}") + &ep),
        "spec.ports[0].nodePort",
    );

    // Nothing to forward.
    let r = invalid(
        &svc_method("dr", "{clusterIP: None, ports: [{name: http, port: 80}]}"),
        DR_FIELD,
    );
    assert!(r.contains("headless"), "{r}");

    // The whole error names file, object and field.
    let e = load_str_with(
        &(svc_method(
            "dr",
            "{clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}",
        ) + &ep),
        "t.yaml",
        &node1(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("default/web") && e.contains("spec.ports[0].targetPort"),
        "{e}"
    );
}

#[test]
fn load_file_with_reads_the_file() {
    let cfg = load_file_with(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/nodeport.yaml"
        )),
        &node1(),
    )
    .unwrap();
    assert_eq!(cfg.services.len(), 6);
    assert_eq!(
        load_file(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/nodeport.yaml"
        )))
        .unwrap()
        .services
        .len(),
        2
    );
}

fn svc_fullnat(method: &str, local: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, annotations: {{sluice.dev/forwarding-method: {method}, sluice.dev/local-addresses: '{local}'}}}}\nspec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n")
        + &slice("web-1", &[("10.1.0.1", "node1", READY)], "[{name: http, port: 8080}]")
}

const LA_FIELD: &str = "metadata.annotations[\"sluice.dev/local-addresses\"]";

#[test]
fn fullnat_takes_local_addresses_of_each_front_ends_family() {
    let cfg = load(&svc_fullnat(
        "fullnat",
        "198.18.1.5, 2001:db8:1::5,198.18.1.6",
    ));
    let s = &cfg.services[0];
    assert_eq!(s.forward, ForwardMethod::FullNat);
    assert_eq!(s.backends[0].port, 8080, "FULLNAT remaps ports");
    let want: Vec<Addr> = ["198.18.1.5", "198.18.1.6"]
        .iter()
        .map(|a| Addr::from(a.parse::<IpAddr>().unwrap()))
        .collect();
    assert_eq!(s.local_addrs, want);
    // Without the annotation: none of its own (the run-wide set applies).
    let plain = svc_method(
        "fullnat",
        "{clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}",
    );
    assert!(load(&plain).services[0].local_addrs.is_empty());

    let r = invalid(&svc_fullnat("nat", "198.18.1.5"), LA_FIELD);
    assert!(r.contains("need forwarding method fullnat"), "{r}");
    let r = invalid(&svc_fullnat("fullnat", "198.18.1.5,nope"), LA_FIELD);
    assert!(r.contains("\"nope\" is not an IP address"), "{r}");
    let r = invalid(&svc_fullnat("fullnat", "198.18.1.5,198.18.1.5"), LA_FIELD);
    assert!(r.contains("listed twice"), "{r}");
    let r = invalid(&svc_fullnat("fullnat", " , "), LA_FIELD);
    assert!(r.contains("lists no address"), "{r}");
}

#[test]
fn ipip_follows_the_dr_rules() {
    let ep = slice(
        "web-1",
        &[("10.1.0.1", "node1", READY)],
        "[{name: http, port: 80}]",
    );
    let cfg = load(
        &(svc_method(
            "ipip",
            "{clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}",
        ) + &ep),
    );
    let s = &cfg.services[0];
    assert_eq!(
        (s.forward, s.masq),
        (ForwardMethod::Tunnel, MasqMode::Never)
    );
    let r = invalid(
        &(svc_method(
            "ipip",
            "{clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 81}]}",
        ) + &ep),
        "spec.ports[0].targetPort",
    );
    assert!(
        r.contains("forwarding method ipip (ipip tunnelling cannot remap ports)"),
        "{r}"
    );
}
