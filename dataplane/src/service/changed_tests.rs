//! Property tests of [`ServiceTable::build_changed`]: given only the
//! changed specs it builds the table [`ServiceTable::build_from`] builds
//! from the whole list: the same spec behind every front end, slots and
//! backend ids kept, unchanged services shared.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// Front end `v` with backends at the listed addresses.
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

/// One state: front end → (backends, weight).
fn state() -> impl Strategy<Value = BTreeMap<u8, (Vec<u8>, u16)>> {
    proptest::collection::btree_map(
        0u8..12,
        (proptest::collection::vec(0u8..6, 0..4), 1u16..3),
        0..9,
    )
}

fn specs_of(s: &BTreeMap<u8, (Vec<u8>, u16)>) -> BTreeMap<u8, ServiceSpec> {
    s.iter().map(|(v, (b, w))| (*v, spec(*v, b, *w))).collect()
}

proptest! {
    #[test]
    fn changed_specs_build_what_the_whole_list_builds(
        states in proptest::collection::vec(state(), 1..8),
        reuse in 0u64..4,
    ) {
        let mut by_changes = ServiceTable::default();
        let mut by_list = ServiceTable::default();
        let mut before: BTreeMap<u8, ServiceSpec> = BTreeMap::new();
        for (k, st) in states.iter().enumerate() {
            let version = k as u64 + 1;
            let now = specs_of(st);
            let removed: Vec<VipKey> = before
                .iter()
                .filter(|(v, _)| !now.contains_key(*v))
                .map(|(_, s)| s.vip)
                .collect();
            let upserted: Vec<ServiceSpec> = now
                .iter()
                .filter(|(v, s)| before.get(*v) != Some(*s))
                .map(|(_, s)| s.clone())
                .collect();
            let next = by_changes
                .build_changed(version, &removed, upserted, reuse)
                .unwrap();
            let whole = by_list
                .build_from(version, now.values().cloned().collect(), reuse)
                .unwrap();
            prop_assert_eq!(next.len(), now.len());
            prop_assert_eq!(next.len(), whole.len());
            for sp in now.values() {
                let vip = &sp.vip;
                let (slot, s) = next.lookup(vip).expect("every front end present");
                prop_assert_eq!(&s.spec, sp);
                prop_assert_eq!(&whole.lookup(vip).unwrap().1.spec, sp);
                if let Some((old_slot, old)) = by_changes.lookup(vip) {
                    prop_assert_eq!(slot, old_slot, "a front end keeps its slot");
                    // Unchanged: shared; changed: its kept backends keep ids.
                    prop_assert_eq!(std::ptr::eq(old, s), old.spec == *sp);
                    for (p, b) in old.spec.backends.iter().enumerate() {
                        if let Some(q) = sp.backends.iter().position(|x| x == b) {
                            if sp.backends.iter().filter(|x| *x == b).count() == 1
                                && old.spec.backends.iter().filter(|x| *x == b).count() == 1
                            {
                                prop_assert_eq!(s.backend_id(q), old.backend_id(p));
                            }
                        }
                    }
                }
            }
            for vip in &removed {
                prop_assert!(next.lookup(vip).is_none(), "removed front end gone");
            }
            prop_assert_eq!(next.services().count(), now.len());
            by_changes = next;
            by_list = whole;
            before = now;
        }
    }
}

#[test]
fn a_duplicate_upsert_or_a_bad_spec_builds_nothing() {
    let t = ServiceTable::build(1, vec![spec(1, &[1], 1)]).unwrap();
    let e = t
        .build_changed(2, &[], vec![spec(2, &[1], 1), spec(2, &[2], 1)], 0)
        .unwrap_err();
    assert!(matches!(e, TableError::DuplicateVip { .. }), "{e:?}");
    let mut v6 = spec(3, &[1], 1);
    v6.vip.addr = Addr::from_v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let e = t.build_changed(2, &[], vec![v6], 0).unwrap_err();
    assert!(matches!(e, TableError::FamilyMismatch { .. }), "{e:?}");
    assert_eq!(
        ServiceTable::check_specs(&[spec(1, &[], 1), spec(1, &[], 2)])
            .map_err(|e| matches!(e, TableError::DuplicateVip { .. })),
        Err(true)
    );
    assert!(ServiceTable::check_specs(&[spec(1, &[], 1), spec(2, &[], 2)]).is_ok());
}
