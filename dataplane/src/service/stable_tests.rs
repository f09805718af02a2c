//! Property tests of the stable ids: whatever sequence of tables is built
//! one from the other, a front end keeps its slot and a backend its id
//! while they exist, a number names something else only once it was freed
//! in a version the caller allowed to reuse, and an unchanged service is
//! shared.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

/// Front end `v` (one of a few) with backends at the listed addresses.
fn spec(v: u8, backends: &[u8], weight: u16) -> ServiceSpec {
    ServiceSpec {
        name: format!("default/s{v}:80"),
        vip: VipKey {
            addr: Addr::from_v4([198, 18, 100, v]),
            port: 80,
            proto: proto::TCP,
        },
        backends: backends
            .iter()
            .map(|&b| BackendSpec {
                addr: Addr::from_v4([198, 18, 1, b]),
                port: 8080,
                weight,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// One state: which front ends exist, with which backends and weight.
fn state() -> impl Strategy<Value = Vec<(u8, Vec<u8>, u16)>> {
    proptest::collection::btree_map(
        0u8..10,
        (proptest::collection::vec(0u8..6, 0..5), 1u16..3),
        0..8,
    )
    .prop_map(|m| m.into_iter().map(|(v, (b, w))| (v, b, w)).collect())
    .prop_shuffle()
}

/// What a number named last and, once it fell free, when.
#[derive(Default)]
struct Named<K> {
    by: HashMap<u32, (K, Option<u64>)>,
}

impl<K: PartialEq + Copy + std::fmt::Debug> Named<K> {
    /// `id` names `k` in `version`, built with `reuse_upto`.
    fn names(&mut self, id: u32, k: K, reuse_upto: u64) {
        if let Some((was, freed)) = self.by.get(&id) {
            if *was != k {
                let f = freed.expect("a live number renamed");
                assert!(
                    f <= reuse_upto,
                    "{id} freed at {f} reused (upto {reuse_upto}) for {k:?}, was {was:?}"
                );
            }
        }
        self.by.insert(id, (k, None));
    }

    /// Marks the numbers not in `live` freed in `version` (once).
    fn free_others(&mut self, live: &[u32], version: u64) {
        for (id, (_, freed)) in self.by.iter_mut() {
            if !live.contains(id) && freed.is_none() {
                *freed = Some(version);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn ids_stay_stable_and_are_reused_only_when_allowed(
        states in proptest::collection::vec((state(), 0u64..4), 1..12)
    ) {
        let mut table = ServiceTable::default();
        // The caller's promise only grows (no flow of a version comes back).
        let mut reuse_upto = 0u64;
        let mut slots: Named<VipKey> = Named::default();
        // Backend ids are per slot: a flow names both.
        let mut backends: HashMap<u32, Named<(Addr, u16, usize)>> = HashMap::new();
        for (i, (st, lag)) in states.iter().enumerate() {
            let version = i as u64 + 1;
            reuse_upto = reuse_upto.max(version.saturating_sub(*lag + 1));
            let specs: Vec<ServiceSpec> = st.iter().map(|(v, b, w)| spec(*v, b, *w)).collect();
            let next = table.build_from(version, specs.clone(), reuse_upto).unwrap();
            prop_assert_eq!(next.len(), specs.len());
            let mut live_slots = Vec::new();
            for s in &specs {
                let (slot, svc) = next.lookup(&s.vip).unwrap();
                prop_assert_eq!(&svc.spec, s);
                live_slots.push(slot);
                // The same front end in the old table: the same slot, and
                // shared when unchanged.
                if let Some((old_slot, old)) = table.lookup(&s.vip) {
                    prop_assert_eq!(old_slot, slot);
                    let shared = std::ptr::eq(old, svc);
                    prop_assert_eq!(shared, old.spec == *s);
                    // Each backend (address, port, occurrence) keeps its id.
                    for (p, b) in s.backends.iter().enumerate() {
                        let nth = s.backends[..p].iter().filter(|x| **x == *b).count();
                        let op = old.spec.backends.iter().enumerate()
                            .filter(|(_, x)| (x.addr, x.port) == (b.addr, b.port))
                            .nth(nth).map(|(q, _)| q);
                        if let Some(q) = op {
                            prop_assert_eq!(old.backend_id(q), svc.backend_id(p));
                        }
                    }
                }
                if slots.by.get(&slot).map(|x| x.0) != Some(s.vip) {
                    // A slot named anew (allowed, checked next): its ids start over.
                    backends.insert(slot, Named::default());
                }
                slots.names(slot, s.vip, reuse_upto);
                let named = backends.entry(slot).or_default();
                let mut live_ids = Vec::new();
                for (p, b) in s.backends.iter().enumerate() {
                    let id = svc.backend_id(p);
                    prop_assert_eq!(svc.backend_position(id), Some(p));
                    prop_assert!(id <= MAX_BACKEND);
                    let nth = s.backends[..p].iter().filter(|x| **x == *b).count();
                    named.names(id, (b.addr, b.port, nth), reuse_upto);
                    live_ids.push(id);
                }
                named.free_others(&live_ids, version);
            }
            // A front end that left frees its slot and all its ids.
            for (slot, named) in backends.iter_mut() {
                if !live_slots.contains(slot) {
                    named.free_others(&[], version);
                }
            }
            slots.free_others(&live_slots, version);
            // No slot outside the live ones holds a service.
            prop_assert_eq!(next.indexed().count(), specs.len());
            table = next;
        }
    }
}

/// A batch that removes an earlier front end and an earlier backend of a
/// later one: the later front end keeps its slot and its other backend
/// its id (the renumbering case of a from-scratch build).
#[test]
fn removing_an_earlier_service_and_backend_renumbers_nothing() {
    let t1 = ServiceTable::build(1, vec![spec(1, &[11], 1), spec(2, &[21, 22], 1)]).unwrap();
    let (slot, svc) = t1.lookup(&spec(2, &[], 1).vip).unwrap();
    let id22 = svc.backend_id(1);
    let t2 = t1.build_from(2, vec![spec(2, &[22], 1)], 0).unwrap();
    let (slot2, svc2) = t2.lookup(&spec(2, &[], 1).vip).unwrap();
    assert_eq!((slot, id22), (slot2, svc2.backend_id(0)));
    assert_eq!(svc2.backend_position(id22), Some(0));
    assert_eq!(
        svc2.backend_position(svc.backend_id(0)),
        None,
        "21 left: a hole"
    );
    assert!(t2.get(0).is_none(), "slot 0 is free");
    assert!(t2.freed_ids());
    // A from-scratch build of the same state renumbers both.
    let fresh = ServiceTable::build(2, vec![spec(2, &[22], 1)]).unwrap();
    assert_ne!(fresh.lookup(&spec(2, &[], 1).vip).unwrap().0, slot);
    // A new front end does not take the young free slot 0, nor a new
    // backend the young free id.
    let t3 = t2
        .build_from(3, vec![spec(3, &[31], 1), spec(2, &[23, 22], 1)], 1)
        .unwrap();
    assert_eq!(t3.lookup(&spec(3, &[], 1).vip).unwrap().0, 2);
    let s3 = t3.lookup(&spec(2, &[], 1).vip).unwrap().1;
    assert_eq!(s3.backend_id(0), 2, "not the id 21 left in version 2");
    // Once allowed, they are.
    let t4 = t3
        .build_from(
            4,
            vec![spec(3, &[31], 1), spec(2, &[23, 22], 1), spec(4, &[], 1)],
            2,
        )
        .unwrap();
    assert_eq!(t4.lookup(&spec(4, &[], 1).vip).unwrap().0, 0);
}

/// The retiring part of a table: only what the next one does not share.
#[test]
fn unshared_with_keeps_only_the_changed_services() {
    let t1 = ServiceTable::build(1, vec![spec(1, &[11], 1), spec(2, &[21], 1)]).unwrap();
    let t2 = t1
        .build_from(2, vec![spec(1, &[11], 1), spec(2, &[21, 22], 1)], 0)
        .unwrap();
    let old = t1.unshared_with(&t2);
    let names: Vec<_> = old.services().map(|s| s.spec.name.clone()).collect();
    assert_eq!(names, vec!["default/s2:80".to_string()]);
    assert_eq!(old.version(), 1);
    assert!(t1.unshared_with(&t1.with_version(2)).is_empty());
}
