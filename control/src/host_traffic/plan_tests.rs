use super::*;
use sluice_dataplane::service::{BackendSpec, SchedKind};
use sluice_dataplane::types::proto;

fn a(s: &str) -> Addr {
    Addr::from(s.parse::<std::net::IpAddr>().unwrap())
}

fn be(addr: &str, weight: u16) -> BackendSpec {
    BackendSpec {
        addr: a(addr),
        port: 8080,
        weight,
        ..BackendSpec::default()
    }
}

fn spec(vip: &str, port: u16, kind: VipKind, backends: Vec<BackendSpec>) -> ServiceSpec {
    ServiceSpec {
        name: format!("default/web:{port}"),
        vip: VipKey {
            addr: a(vip),
            port,
            proto: proto::TCP,
        },
        backends,
        kind,
        ..ServiceSpec::default()
    }
}

fn table(specs: Vec<ServiceSpec>) -> ServiceTable {
    ServiceTable::build(1, specs).unwrap()
}

fn entry(p: &HashMap<FrontKey, FrontEntry>, vip: &str, port: u16) -> Option<FrontEntry> {
    p.get(&front_key(a(vip), port, proto::TCP)).cloned()
}

fn slots(addrs: &[&str]) -> Vec<[u8; 20]> {
    addrs.iter().map(|s| backend_val(a(s), 8080)).collect()
}

#[test]
fn round_robin_gives_each_backend_once_per_turn() {
    let t = table(vec![spec(
        "198.18.100.10",
        80,
        VipKind::ClusterIp,
        vec![
            be("198.18.1.11", 1),
            be("198.18.1.12", 1),
            be("198.18.1.13", 1),
        ],
    )]);
    let e = entry(&plan(&t, &PlanOpts::default()), "198.18.100.10", 80).unwrap();
    assert!(!e.reject);
    let mut got = e.slots.clone();
    got.sort();
    assert_eq!(got, slots(&["198.18.1.11", "198.18.1.12", "198.18.1.13"]));
}

#[test]
fn weighted_round_robin_follows_the_weights() {
    let mut s = spec(
        "198.18.100.10",
        80,
        VipKind::ClusterIp,
        vec![be("198.18.1.11", 1), be("198.18.1.12", 2)],
    );
    s.sched = SchedKind::WeightedRoundRobin;
    let e = entry(
        &plan(&table(vec![s]), &PlanOpts::default()),
        "198.18.100.10",
        80,
    )
    .unwrap();
    assert_eq!(e.slots.len(), 3);
    let twos = e.slots.iter().filter(|b| **b == slots(&["198.18.1.12"])[0]);
    assert_eq!(twos.count(), 2);
}

#[test]
fn least_connections_rotates_over_the_node_own_flows() {
    let mut s = spec(
        "198.18.100.10",
        80,
        VipKind::ClusterIp,
        vec![be("198.18.1.11", 1), be("198.18.1.12", 1)],
    );
    s.sched = SchedKind::LeastConn;
    let e = entry(
        &plan(&table(vec![s]), &PlanOpts::default()),
        "198.18.100.10",
        80,
    )
    .unwrap();
    let mut got = e.slots.clone();
    got.sort();
    assert_eq!(got, slots(&["198.18.1.11", "198.18.1.12"]));
}

#[test]
fn no_endpoints_rejects_and_a_drop_front_end_is_left_out() {
    let reject = spec("198.18.100.10", 80, VipKind::ClusterIp, vec![]);
    let mut drop = spec("198.18.100.11", 80, VipKind::ExternalIp, vec![]);
    drop.when_empty = WhenEmpty::Drop;
    let p = plan(&table(vec![reject, drop]), &PlanOpts::default());
    let e = entry(&p, "198.18.100.10", 80).unwrap();
    assert!(e.reject && e.slots.is_empty());
    assert_eq!(entry(&p, "198.18.100.11", 80), None);
}

#[test]
fn a_local_external_front_end_serves_the_node_from_every_endpoint() {
    let cluster = spec(
        "198.18.100.10",
        80,
        VipKind::ClusterIp,
        vec![be("198.18.1.11", 1), be("198.18.1.12", 1)],
    );
    // The compiler lists only the local endpoints of a Local front end:
    // here none, so the data path drops.
    let mut np = spec("198.18.0.1", 30080, VipKind::NodePort, vec![]);
    np.when_empty = WhenEmpty::Drop;
    np.short_circuit = Some(cluster.vip);
    let p = plan(&table(vec![cluster, np]), &PlanOpts::default());
    let e = entry(&p, "198.18.0.1", 30080).unwrap();
    let mut got = e.slots.clone();
    got.sort();
    assert_eq!(got, slots(&["198.18.1.11", "198.18.1.12"]));
}

#[test]
fn localhost_nodeports_only_when_selected_and_only_ipv4() {
    let v4 = spec(
        "198.18.0.1",
        30080,
        VipKind::NodePort,
        vec![be("198.18.1.11", 1)],
    );
    let mut v6 = spec("2001:db8::1", 30080, VipKind::NodePort, vec![]);
    v6.backends = vec![BackendSpec {
        addr: a("2001:db8:1::11"),
        port: 8080,
        weight: 1,
        ..BackendSpec::default()
    }];
    let t = table(vec![v4, v6]);
    let on = PlanOpts {
        localhost_nodeports: true,
        ..PlanOpts::default()
    };
    assert!(entry(&plan(&t, &on), "127.0.0.1", 30080).is_some());
    assert!(entry(&plan(&t, &on), "::1", 30080).is_none());
    assert!(entry(&plan(&t, &PlanOpts::default()), "127.0.0.1", 30080).is_none());
}

#[test]
fn source_ranges_admit_the_node_only_when_they_hold_its_address() {
    let mut lb = spec(
        "198.18.200.1",
        80,
        VipKind::LoadBalancer,
        vec![be("198.18.1.11", 1)],
    );
    lb.source_ranges = vec!["198.18.0.0/24".parse().unwrap()];
    let t = table(vec![lb]);
    let inside = PlanOpts {
        host_addrs: vec![a("198.18.0.1")],
        ..PlanOpts::default()
    };
    let outside = PlanOpts {
        host_addrs: vec![a("198.18.1.1")],
        ..PlanOpts::default()
    };
    assert!(entry(&plan(&t, &inside), "198.18.200.1", 80).is_some());
    assert!(entry(&plan(&t, &outside), "198.18.200.1", 80).is_none());
}

#[test]
fn affinity_timeout_is_given_in_nanoseconds() {
    let mut s = spec(
        "198.18.100.10",
        80,
        VipKind::ClusterIp,
        vec![be("198.18.1.11", 1)],
    );
    s.affinity_timeout = Some(10800);
    let e = entry(
        &plan(&table(vec![s]), &PlanOpts::default()),
        "198.18.100.10",
        80,
    )
    .unwrap();
    assert_eq!(e.affinity_ns, 10_800_000_000_000);
}
