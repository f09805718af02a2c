//! The incremental compile against the whole compile: after any sequence of
//! random batches (Services, EndpointSlices, Endpoints, Pods and
//! VirtualServices added, modified, deleted; some of them invalid or
//! clashing), [`Incremental`] holds exactly the config
//! [`compile_config`](super::compile_config) gives for the store, refuses
//! exactly the batches the whole compile refuses (leaving itself as it
//! was), and its deltas build the table the whole spec list builds.

use std::collections::BTreeSet;
use std::time::SystemTime;

use proptest::prelude::*;
use serde_json::{json, Value};
use sluice_dataplane::service::ServiceTable;

use super::compile_config;
use super::incremental::Incremental;
use crate::config::CompileCtx;
use crate::store::{Batch, Key, Kind, Store, UpsertMode, Write};

/// A small node-port range, so that allocations probe and collide.
fn ctx() -> CompileCtx {
    CompileCtx {
        node_addrs: vec!["198.18.0.1".parse().unwrap()],
        nodeport_range: (30000, 30005),
        ..CompileCtx::default()
    }
}

fn ns(i: u8) -> &'static str {
    ["default", "other"][usize::from(i % 2)]
}

/// A Service: `ty` 0 ClusterIP, 1 NodePort, 2 headless; a cluster IP out
/// of three (so two Services may clash); one or two ports; a selector
/// or none; an explicit node port or none.
fn service((i, n, ty, ip, ports, sel, np): (u8, u8, u8, u8, u8, Option<u8>, Option<u8>)) -> Value {
    let mut spec = json!({
        "ports": (0..ports).map(|p| {
            let mut port = json!({"name": format!("p{p}"), "port": 80 + u16::from(p), "targetPort": 8080 + u16::from(p)});
            if let (1, Some(np), 0) = (ty, np, p) {
                port["nodePort"] = json!(30000 + u16::from(np % 6));
            }
            port
        }).collect::<Vec<_>>(),
    });
    match ty {
        1 => {
            spec["type"] = json!("NodePort");
            spec["clusterIP"] = json!(format!("198.18.100.{}", ip % 3 + 1));
        }
        2 => spec["clusterIP"] = json!("None"),
        _ => spec["clusterIP"] = json!(format!("198.18.100.{}", ip % 3 + 1)),
    }
    if let Some(s) = sel {
        spec["selector"] = json!({"app": format!("a{}", s % 2)});
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("s{}", i % 4), "namespace": ns(n)}, "spec": spec})
}

/// An EndpointSlice naming Service `svc` (perhaps one that does not
/// exist), with endpoints out of a few addresses.
fn slice((i, n, svc, eps, bad): (u8, u8, u8, Vec<u8>, bool)) -> Value {
    let port = if bad { json!(0) } else { json!(8080) };
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("e{}", i % 5), "namespace": ns(n),
                        "labels": {"kubernetes.io/service-name": format!("s{}", svc % 5)}},
           "addressType": "IPv4",
           "ports": [{"name": "p0", "port": port}, {"name": "p1", "port": 8081}],
           "endpoints": eps.iter().map(|e| json!({
               "addresses": [format!("198.18.1.{}", e % 6 + 1)],
               "conditions": {"ready": e % 5 != 0}
           })).collect::<Vec<_>>()})
}

fn endpoints((i, n, eps): (u8, u8, Vec<u8>)) -> Value {
    json!({"apiVersion": "v1", "kind": "Endpoints",
           "metadata": {"name": format!("s{}", i % 5), "namespace": ns(n)},
           "subsets": [{"addresses": eps.iter().map(|e| json!({"ip": format!("198.18.2.{}", e % 6 + 1)})).collect::<Vec<_>>(),
                        "ports": [{"name": "p0", "port": 9090}]}]})
}

fn pod((i, n, app, ip, ready): (u8, u8, u8, u8, bool)) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("p{}", i % 5), "namespace": ns(n),
                        "labels": {"app": format!("a{}", app % 3)}},
           "spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]},
           "status": {"podIP": format!("198.18.3.{}", ip % 6 + 1),
                      "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

/// A VirtualService on one of the cluster IPs (so it may clash).
fn virtual_service((i, ip, port): (u8, u8, u8)) -> Value {
    json!({"apiVersion": "sluice.dev/v1", "kind": "VirtualService",
           "metadata": {"name": format!("v{}", i % 2), "namespace": "default"},
           "spec": {"address": format!("198.18.100.{}", ip % 3 + 1), "port": 80 + u16::from(port % 3),
                    "scheduler": "rr",
                    "realServers": [{"address": "198.18.4.1", "port": 80 + u16::from(port % 3), "method": "masq"}]}})
}

fn object() -> impl Strategy<Value = Value> {
    let eps = || proptest::collection::vec(any::<u8>(), 0..4);
    prop_oneof![
        3 => (any::<u8>(), any::<u8>(), 0u8..3, any::<u8>(), 1u8..3,
              proptest::option::of(any::<u8>()), proptest::option::of(any::<u8>()))
            .prop_map(service),
        3 => (any::<u8>(), any::<u8>(), any::<u8>(), eps(), proptest::bool::weighted(0.05))
            .prop_map(slice),
        1 => (any::<u8>(), any::<u8>(), eps()).prop_map(endpoints),
        3 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<bool>()).prop_map(pod),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(virtual_service),
    ]
}

/// An upsert of a random object, or a delete of the key of one.
fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        3 => object().prop_map(|object| Write::Upsert {
            object,
            owner: "test".into(),
            mode: UpsertMode::Apply(None),
        }),
        1 => object().prop_map(|o| Write::Delete {
            key: Key::of(&o).unwrap(),
            must_exist: false,
        }),
    ]
}

fn batches() -> impl Strategy<Value = Vec<Vec<Write>>> {
    proptest::collection::vec(proptest::collection::vec(write(), 1..4), 1..25)
}

/// Commits `writes` through the incremental compile, checking it against
/// the whole compile on the same objects; returns whether it committed.
fn step(
    store: &mut Store,
    inc: &mut Incremental,
    table: &mut ServiceTable,
    writes: Vec<Write>,
) -> bool {
    let version = table.version() + 1;
    let r = store.commit_with(
        Batch { writes },
        SystemTime::UNIX_EPOCH,
        |objects, events| {
            let changed: BTreeSet<Key> = events.iter().map(|e| e.key.clone()).collect();
            let whole = compile_config(objects, inc.ctx());
            let before = inc.config();
            let delta = inc.apply(objects, &changed);
            match (&whole, &delta) {
                (Ok(w), Ok(_)) => assert_eq!(&inc.config(), w, "incremental config = whole config"),
                (Err(_), Err(_)) => {}
                (w, d) => panic!("whole {w:?} but incremental {d:?}"),
            }
            let delta = delta.map_err(|_| ())?;
            let after = inc.config();
            // What the publisher builds from the whole config only when
            // the delta says so must not change otherwise.
            if before.dns != after.dns {
                assert!(delta.dns_changed, "the DNS records changed");
            }
            if before.health_checks != after.health_checks {
                assert!(delta.health_changed, "the health-check servers changed");
            }
            let checked = |c: &crate::config::Config| {
                c.services
                    .iter()
                    .filter(|s| c.checks.contains_key(&s.name))
                    .map(|s| (s.name.clone(), s.backends.clone()))
                    .collect::<Vec<_>>()
            };
            if before.checks != after.checks || checked(&before) != checked(&after) {
                assert!(delta.checks_changed, "the checks' targets changed");
            }
            let next = table
                .build_changed(version, &delta.removed, delta.upserted, 0)
                .expect("a compiled delta builds");
            let mut specs: Vec<_> = next.services().map(|s| s.spec.clone()).collect();
            let mut want = whole.map_err(|_| ())?.services;
            specs.sort_by_key(|s| (s.vip.addr, s.vip.port, s.vip.proto));
            want.sort_by_key(|s| (s.vip.addr, s.vip.port, s.vip.proto));
            assert_eq!(
                specs, want,
                "the delta's table holds the whole compile's specs"
            );
            *table = next;
            Ok::<(), ()>(())
        },
    );
    r.is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn incremental_equals_whole_after_every_batch(batches in batches()) {
        let mut store = Store::default();
        let mut inc = Incremental::new(ctx());
        let mut table = ServiceTable::default();
        for writes in batches {
            step(&mut store, &mut inc, &mut table, writes);
            // Refused or not, the cache is the store's config.
            let whole = compile_config(store.objects(), &ctx()).expect("the store compiles");
            prop_assert_eq!(inc.config(), whole);
        }
        // Built from scratch, it is the same too.
        let fresh = Incremental::build(store.objects(), ctx()).unwrap();
        prop_assert_eq!(fresh.config(), inc.config());
    }
}

/// One endpoint change recompiles one Service, not the others.
/// A slice may come before its Service and outlive it, as in Kubernetes:
/// it waits, forwarding nothing, and feeds the Service once it exists
/// (`kubectl apply` of a slice first, `kubectl delete svc` with its slices
/// live).
#[test]
fn a_slice_waits_for_its_service_and_outlives_it() {
    let mut store = Store::default();
    let mut inc = Incremental::new(ctx());
    let mut table = ServiceTable::default();
    let w = |object| Write::Upsert {
        object,
        owner: "t".into(),
        mode: UpsertMode::Apply(None),
    };
    let svc = service((1, 0, 0, 1, 1, None, None));
    let backends = |table: &ServiceTable| {
        table
            .services()
            .map(|s| s.spec.backends.len())
            .collect::<Vec<_>>()
    };
    assert!(step(
        &mut store,
        &mut inc,
        &mut table,
        vec![w(slice((1, 0, 1, vec![1, 2], false)))]
    ));
    assert_eq!(inc.waiting().len(), 1, "{:?}", inc.waiting());
    assert_eq!(backends(&table), Vec::<usize>::new(), "no front end yet");
    assert!(step(&mut store, &mut inc, &mut table, vec![w(svc.clone())]));
    assert!(inc.waiting().is_empty());
    assert_eq!(backends(&table), [2], "the Service takes its waiting slice");
    let delete = Write::Delete {
        key: Key::of(&svc).unwrap(),
        must_exist: true,
    };
    assert!(
        step(&mut store, &mut inc, &mut table, vec![delete]),
        "the Service goes, its slice stays"
    );
    assert_eq!(store.objects().len(), 1);
    assert_eq!(inc.waiting()[0].object, "default/e1");
    assert_eq!(inc.summary().waiting, 1);
    assert_eq!(backends(&table), Vec::<usize>::new());
    assert!(step(&mut store, &mut inc, &mut table, vec![w(svc)]));
    assert_eq!(backends(&table), [2], "and feeds it again when it returns");
}

#[test]
fn an_endpoint_change_recompiles_only_its_service() {
    let mut store = Store::default();
    let mut inc = Incremental::new(ctx());
    let mut table = ServiceTable::default();
    let mut b = Vec::new();
    for i in 0..4 {
        b.push(Write::Upsert {
            object: service((i, 0, 0, i, 1, None, None)),
            owner: "t".into(),
            mode: UpsertMode::Apply(None),
        });
    }
    // Four Services on three cluster IPs: refused (a front end twice).
    assert!(!step(&mut store, &mut inc, &mut table, b.clone()));
    b.pop();
    assert!(step(&mut store, &mut inc, &mut table, b));
    let w = |o| Write::Upsert {
        object: o,
        owner: "t".into(),
        mode: UpsertMode::Apply(None),
    };
    assert!(step(
        &mut store,
        &mut inc,
        &mut table,
        vec![w(slice((1, 0, 1, vec![1, 2], false)))]
    ));
    let changed: BTreeSet<Key> = [Key::new(Kind::EndpointSlice, "default", "e1")].into();
    let delta = inc.apply(store.objects(), &changed).unwrap();
    assert_eq!(delta.recompiled, 1, "only default/s1");
    assert!(
        !delta.needs_config(),
        "a ClusterIP's endpoints touch no DNS record, health server or check"
    );
    assert!(delta
        .upserted
        .iter()
        .all(|s| s.name.starts_with("default/s1:")));
    assert_eq!(
        inc.config(),
        compile_config(store.objects(), &ctx()).unwrap()
    );
}

/// What else than specs a recompile changed is flagged: the endpoints of
/// a headless Service are DNS records, a checked Service's endpoints are
/// the checks' targets, and neither touches the health-check servers.
#[test]
fn the_delta_flags_what_the_whole_config_must_rebuild() {
    let mut store = Store::default();
    let mut inc = Incremental::new(ctx());
    let mut table = ServiceTable::default();
    let w = |o| Write::Upsert {
        object: o,
        owner: "t".into(),
        mode: UpsertMode::Apply(None),
    };
    let mut checked = service((1, 0, 0, 1, 1, None, None));
    checked["metadata"]["annotations"] =
        json!({"sluice.dev/health-check": "tcp interval=2s timeout=1s rise=2 fall=3"});
    let batch = vec![
        w(service((0, 0, 2, 0, 1, None, None))),
        w(checked),
        w(service((2, 0, 0, 2, 1, None, None))),
    ];
    assert!(step(&mut store, &mut inc, &mut table, batch));
    let flags = |store: &mut Store, inc: &mut Incremental, _: &mut ServiceTable, o: Value| {
        let mut got = None;
        store
            .commit_with(
                Batch { writes: vec![w(o)] },
                SystemTime::UNIX_EPOCH,
                |objects, events| {
                    let changed: BTreeSet<Key> = events.iter().map(|e| e.key.clone()).collect();
                    let d = inc.apply(objects, &changed).map_err(|_| ())?;
                    got = Some((d.dns_changed, d.health_changed, d.checks_changed));
                    Ok::<(), ()>(())
                },
            )
            .expect("the slice applies");
        got.expect("compiled")
    };
    // Each slice is new: the Service it names is recompiled with it.
    let headless = flags(
        &mut store,
        &mut inc,
        &mut table,
        slice((0, 0, 0, vec![1], false)),
    );
    assert_eq!(headless, (true, false, false), "headless: its records");
    let checked = flags(
        &mut store,
        &mut inc,
        &mut table,
        slice((1, 0, 1, vec![1], false)),
    );
    assert_eq!(checked, (false, false, true), "checked: its targets");
    let plain = flags(
        &mut store,
        &mut inc,
        &mut table,
        slice((2, 0, 2, vec![1], false)),
    );
    assert_eq!(plain, (false, false, false), "a ClusterIP: none");
}
