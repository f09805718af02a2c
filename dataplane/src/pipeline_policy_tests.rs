//! Fixture tests of kube-proxy's policy rules in the packet core: the
//! short-circuit of pods to an external front end of an
//! `externalTrafficPolicy: Local` service ([`ServiceSpec::short_circuit`]).
//!
//! The fixture: a ClusterIP front end (VIP:80) over b0 (local) and b1 (on
//! another node), and a NodePort front end (NODE:30080) with policy Local:
//! b0 only, never masqueraded, drop when empty, short-circuited to the
//! ClusterIP. Pods are 198.18.0.128/25 (`--cluster-cidr`); clients arrive
//! on port 0, backends are behind port 1.

use std::collections::BTreeSet;

use super::tests::{
    backend_ip, backend_mac, fixture_snapshot, inspect, run_with, tcp, BACK_MAC, CLIENT_MAC,
    FRONT_MAC, VIP,
};
use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::Timeouts;
use crate::service::{BackendSpec, SchedKind, ServiceSpec, VipKind};

const NODE: [u8; 4] = [198, 18, 0, 1];
const NODE_PORT: u16 = 30080;
const POD: [u8; 4] = [198, 18, 0, 130];
const EXTERNAL: [u8; 4] = [198, 18, 0, 2];

fn backend(i: u8, local: bool) -> BackendSpec {
    BackendSpec {
        addr: Addr::from_v4(backend_ip(i)),
        port: 8080,
        weight: 1,
        local,
        ..Default::default()
    }
}

fn cluster_ip() -> VipKey {
    VipKey {
        addr: Addr::from_v4(VIP),
        port: 80,
        proto: proto::TCP,
    }
}

/// The NodePort front end with policy Local over `local` backends.
fn node_port(local: Vec<BackendSpec>, short_circuit: Option<VipKey>) -> ServiceSpec {
    ServiceSpec {
        name: "default/web:http".into(),
        vip: VipKey {
            addr: Addr::from_v4(NODE),
            port: NODE_PORT,
            proto: proto::TCP,
        },
        backends: local,
        sched: SchedKind::RoundRobin,
        kind: VipKind::NodePort,
        masq: MasqMode::Never,
        when_empty: WhenEmpty::Drop,
        short_circuit,
        ..Default::default()
    }
}

fn snapshot(front: ServiceSpec, masq: MasqPolicy) -> Snapshot {
    let cluster = ServiceSpec {
        name: "default/web:http".into(),
        vip: cluster_ip(),
        backends: vec![backend(0, true), backend(1, false)],
        sched: SchedKind::RoundRobin,
        ..Default::default()
    };
    let services = ServiceTable::build(1, vec![cluster, front]).unwrap();
    fixture_snapshot(services, 2, masq)
}

fn pods() -> MasqPolicy {
    MasqPolicy {
        cluster_cidrs: vec!["198.18.0.128/25".parse().unwrap()],
        ..MasqPolicy::default()
    }
}

fn local_front() -> ServiceSpec {
    node_port(vec![backend(0, true)], Some(cluster_ip()))
}

/// A SYN's fate: the (source, destination) it left with, or its verdict.
type Sent = Result<([u8; 4], [u8; 4]), Verdict>;

struct Env {
    snap: Snapshot,
    flows: FlowTable,
    aff: AffinityTable,
    stats: Stats,
}

impl Env {
    fn new(front: ServiceSpec, masq: MasqPolicy) -> Env {
        Env {
            snap: snapshot(front, masq),
            flows: FlowTable::new(1024, Timeouts::default()),
            aff: AffinityTable::new(64),
            stats: Stats::default(),
        }
    }

    fn run(&mut self, frame: &mut Vec<u8>, ingress: u8) -> Verdict {
        run_with(
            &self.snap,
            &self.flows,
            &self.aff,
            frame,
            ingress,
            1,
            &mut self.stats,
        )
    }

    /// SYNs from `client` to NODE:30080 from `n` source ports: the
    /// (source, destination) of each forwarded packet, or the verdict.
    fn syns(&mut self, client: [u8; 4], n: u16) -> Vec<Sent> {
        (0..n)
            .map(|i| {
                let mut f = tcp(
                    CLIENT_MAC,
                    FRONT_MAC,
                    client,
                    NODE,
                    41000 + i,
                    NODE_PORT,
                    tcp_flags::SYN,
                );
                match self.run(&mut f, 0) {
                    Verdict::Tx(1) => {
                        let o = inspect(&f);
                        Ok((o.src, o.dst))
                    }
                    v => Err(v),
                }
            })
            .collect()
    }
}

fn destinations(out: &[Sent]) -> BTreeSet<[u8; 4]> {
    out.iter().map(|r| r.as_ref().unwrap().1).collect()
}

#[test]
fn pods_reach_every_endpoint_unmasqueraded() {
    let mut env = Env::new(local_front(), pods());
    let out = env.syns(POD, 6);
    assert_eq!(
        destinations(&out),
        BTreeSet::from([backend_ip(0), backend_ip(1)]),
        "a pod must reach the remote endpoint too: {out:?}"
    );
    assert!(
        out.iter().all(|r| r.as_ref().unwrap().0 == POD),
        "the pod's address must be kept: {out:?}"
    );
    assert_eq!(env.stats.snat_flows, 0);
}

#[test]
fn clients_outside_the_cluster_keep_the_local_policy() {
    let mut env = Env::new(local_front(), pods());
    let out = env.syns(EXTERNAL, 4);
    assert_eq!(destinations(&out), BTreeSet::from([backend_ip(0)]));
    assert!(out.iter().all(|r| r.as_ref().unwrap().0 == EXTERNAL));
}

#[test]
fn without_a_cluster_cidr_nobody_is_a_pod() {
    let mut env = Env::new(local_front(), MasqPolicy::default());
    let out = env.syns(POD, 4);
    assert_eq!(destinations(&out), BTreeSet::from([backend_ip(0)]));
}

#[test]
fn masquerade_all_does_not_masquerade_short_circuited_pods() {
    let masq = MasqPolicy {
        all: true,
        ..pods()
    };
    let mut env = Env::new(local_front(), masq);
    let out = env.syns(POD, 4);
    // Short-circuited (the remote endpoint too), yet not masqueraded.
    assert_eq!(
        destinations(&out),
        BTreeSet::from([backend_ip(0), backend_ip(1)]),
        "{out:?}"
    );
    assert!(out.iter().all(|r| r.as_ref().unwrap().0 == POD), "{out:?}");
    assert_eq!(env.stats.snat_flows, 0);
}

#[test]
fn no_local_endpoint_drops_outsiders_but_serves_pods() {
    let mut env = Env::new(node_port(Vec::new(), Some(cluster_ip())), pods());
    assert_eq!(
        env.syns(EXTERNAL, 1),
        vec![Err(Verdict::Drop(DropReason::NoBackend))]
    );
    let out = env.syns(POD, 2);
    assert_eq!(
        destinations(&out),
        BTreeSet::from([backend_ip(0), backend_ip(1)])
    );
}

#[test]
fn source_ranges_apply_before_the_short_circuit() {
    let mut front = local_front();
    front.kind = VipKind::LoadBalancer;
    // POD (.130) is outside the range, another pod (.170) inside it.
    front.source_ranges = vec!["198.18.0.160/27".parse().unwrap()];
    let mut env = Env::new(front, pods());
    assert_eq!(
        env.syns(POD, 1),
        vec![Err(Verdict::Drop(DropReason::SourceRange))],
        "the ClusterIP it would short-circuit to has no ranges: they must apply first"
    );
    let inside = env.syns([198, 18, 0, 170], 4);
    assert_eq!(
        destinations(&inside),
        BTreeSet::from([backend_ip(0), backend_ip(1)]),
        "a pod inside the range is short-circuited: {inside:?}"
    );
}

#[test]
fn replies_come_from_the_front_end_the_pod_used_and_are_counted() {
    let mut env = Env::new(local_front(), pods());
    // Two SYNs: round robin puts the second on the remote endpoint b1.
    let out = env.syns(POD, 2);
    assert_eq!(out[1], Ok((POD, backend_ip(1))));
    let mut r = tcp(
        backend_mac(1),
        BACK_MAC,
        backend_ip(1),
        POD,
        8080,
        41001,
        tcp_flags::SYN | tcp_flags::ACK,
    );
    assert_eq!(env.run(&mut r, 1), Verdict::Tx(0));
    let o = inspect(&r);
    assert_eq!(
        (o.src, o.sport, o.dst, o.dport),
        (NODE, NODE_PORT, POD, 41001)
    );
    assert_eq!(o.dst_mac, CLIENT_MAC);
    // The flow names the ClusterIP's service; its packets are still
    // attributed to its backend, not counted as unattributed.
    assert_eq!(env.stats.traffic_unattributed, 0);
    let (_, cluster) = env.snap.services.lookup(&cluster_ip()).unwrap();
    let b1 = cluster
        .spec
        .backends
        .iter()
        .position(|b| b.addr == Addr::from_v4(backend_ip(1)))
        .unwrap();
    let t = cluster.traffic.backend(b1);
    assert_eq!((t[0], t[3]), (1, 1), "b1: one new flow, one reply: {t:?}");
}
