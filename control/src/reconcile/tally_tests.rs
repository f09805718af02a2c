//! The incremental tally against the whole one: after any sequence of
//! changes, committing each change gives what counting the whole new
//! table gives, and the keys a change says crossed are exactly the set
//! differences of the two tables.

use std::collections::BTreeSet;

use proptest::prelude::*;
use sluice_dataplane::service::{BackendSpec, ForwardMethod, ServiceSpec, ServiceTable, VipKey};
use sluice_dataplane::types::Addr;

use super::{Change, Counted, Moves, Tally};

fn vip(i: u8) -> VipKey {
    VipKey {
        addr: Addr::from_v4([198, 18, 100, 10 + i % 3]),
        port: 80 + u16::from(i / 3),
        proto: if i.is_multiple_of(2) { 6 } else { 17 },
    }
}

/// One front end's spec: `forward` 0..4, backends as (address, port)
/// indexes into small pools so that services share them.
fn spec(v: u8, forward: u8, backends: &[(u8, u8)], local: u8) -> ServiceSpec {
    let vk = vip(v);
    let forward = match forward % 4 {
        0 => ForwardMethod::Nat,
        1 => ForwardMethod::Dr,
        2 => ForwardMethod::Tunnel,
        _ => ForwardMethod::FullNat,
    };
    let remaps = matches!(forward, ForwardMethod::Nat | ForwardMethod::FullNat);
    let mut bs: Vec<BackendSpec> = Vec::new();
    for &(a, p) in backends {
        let b = BackendSpec {
            addr: Addr::from_v4([198, 18, 1, 11 + a % 4]),
            port: if remaps {
                8080 + u16::from(p % 2)
            } else {
                vk.port
            },
            weight: 1,
            ..Default::default()
        };
        if !bs.iter().any(|x| x.addr == b.addr && x.port == b.port) {
            bs.push(b);
        }
    }
    ServiceSpec {
        name: format!("default/s{v}"),
        vip: vk,
        backends: bs,
        forward,
        local_addrs: if forward == ForwardMethod::FullNat {
            vec![Addr::from_v4([198, 18, 2, 1 + local % 2])]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// One step: per front end touched, `None` removes it, `Some` upserts.
type Step = Vec<(u8, Option<(u8, Vec<(u8, u8)>, u8)>)>;

fn step() -> impl Strategy<Value = Step> {
    let one = (
        0u8..9,
        proptest::option::weighted(
            0.75,
            (
                0u8..4,
                proptest::collection::vec((0u8..4, 0u8..2), 0..4),
                0u8..2,
            ),
        ),
    );
    proptest::collection::vec(one, 1..4)
}

fn keys<K: std::hash::Hash + Eq + Copy + Ord>(c: &Counted<K>) -> BTreeSet<K> {
    c.keys().copied().collect()
}

/// The crossings as sorted sets, to compare with set differences.
fn sorted<K: Ord + Copy>(m: &Moves<K>) -> (BTreeSet<K>, BTreeSet<K>) {
    (
        m.up.iter().copied().collect(),
        m.down.iter().copied().collect(),
    )
}

fn diff<K: Ord + Copy>(before: &BTreeSet<K>, after: &BTreeSet<K>) -> (BTreeSet<K>, BTreeSet<K>) {
    (
        after.difference(before).copied().collect(),
        before.difference(after).copied().collect(),
    )
}

fn vip_tuple(v: &VipKey) -> (Addr, u16, u8) {
    (v.addr, v.port, v.proto)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn committed_changes_equal_the_whole_count(steps in proptest::collection::vec(step(), 1..12)) {
        let mut table = ServiceTable::default();
        let mut tally = Tally::default();
        let mut version = 1;
        let mut applied = 0;
        for st in steps {
            let mut removed = Vec::new();
            let mut upserted: Vec<ServiceSpec> = Vec::new();
            for (v, what) in &st {
                match what {
                    None => removed.push(vip(*v)),
                    Some((f, bs, l)) => {
                        if upserted.iter().all(|s| s.vip != vip(*v)) {
                            upserted.push(spec(*v, *f, bs, *l));
                        }
                    }
                }
            }
            let Ok(next) = table.build_changed(version, &removed, upserted.clone(), 0) else {
                continue;
            };
            version += 1;
            applied += 1;
            let touched: Vec<VipKey> = removed
                .iter()
                .copied()
                .chain(upserted.iter().map(|s| s.vip))
                .collect();
            let change = Change::of(&table, &next, &touched);
            let crossed = change.crossed(&tally);
            let whole_before = Tally::of(&table);
            let whole_after = Tally::of(&next);
            prop_assert_eq!(&tally, &whole_before);
            // Crossings are the set differences, per set.
            let vb: BTreeSet<_> = whole_before.vips.keys().map(vip_tuple).collect();
            let va: BTreeSet<_> = whole_after.vips.keys().map(vip_tuple).collect();
            let vu: BTreeSet<_> = crossed.vips.up.iter().map(vip_tuple).collect();
            let vd: BTreeSet<_> = crossed.vips.down.iter().map(vip_tuple).collect();
            prop_assert_eq!((vu, vd), diff(&vb, &va));
            prop_assert_eq!(sorted(&crossed.live), diff(&keys(&whole_before.live), &keys(&whole_after.live)));
            prop_assert_eq!(sorted(&crossed.dr), diff(&keys(&whole_before.dr), &keys(&whole_after.dr)));
            prop_assert_eq!(sorted(&crossed.steered), diff(&keys(&whole_before.steered), &keys(&whole_after.steered)));
            prop_assert_eq!(sorted(&crossed.addrs), diff(&keys(&whole_before.addrs), &keys(&whole_after.addrs)));
            prop_assert_eq!(sorted(&crossed.nat_addrs), diff(&keys(&whole_before.nat_addrs), &keys(&whole_after.nat_addrs)));
            prop_assert_eq!(sorted(&crossed.local_addrs), diff(&keys(&whole_before.local_addrs), &keys(&whole_after.local_addrs)));
            prop_assert_eq!(
                crossed.left(),
                !crossed.live.down.is_empty() || !crossed.dr.down.is_empty()
            );
            // The views of the state after, before committing.
            let steered_after: BTreeSet<_> = change.steered_keys_after(&tally).copied().collect();
            prop_assert_eq!(&steered_after, &keys(&whole_after.steered));
            let vips_after: BTreeSet<_> = change.vips_after(&tally).map(vip_tuple).collect();
            prop_assert_eq!(&vips_after, &va);
            let nat_after: BTreeSet<_> = change.nat_addrs_after(&tally).copied().collect();
            prop_assert_eq!(&nat_after, &keys(&whole_after.nat_addrs));
            let local_after: BTreeSet<_> = change.local_addrs_after(&tally).copied().collect();
            prop_assert_eq!(&local_after, &keys(&whole_after.local_addrs));
            for a in keys(&whole_before.addrs).union(&keys(&whole_after.addrs)) {
                prop_assert_eq!(change.addr_named_after(&tally, a), whole_after.addrs.contains(a));
            }
            tally.commit(&change);
            prop_assert_eq!(&tally, &whole_after);
            table = next;
        }
        prop_assert!(applied > 0 || version == 1);
    }
}

/// Two services naming one endpoint: removing one leaves it named (no
/// crossing), removing both makes it vanish.
#[test]
fn a_shared_endpoint_vanishes_only_with_its_last_service() {
    let a = spec(0, 0, &[(0, 0)], 0);
    let b = spec(2, 0, &[(0, 0)], 0);
    let t1 = ServiceTable::build(1, vec![a.clone(), b.clone()]).unwrap();
    let tally = Tally::of(&t1);
    let t2 = t1.build_changed(2, &[a.vip], Vec::new(), 0).unwrap();
    let c = Change::of(&t1, &t2, &[a.vip]);
    let x = c.crossed(&tally);
    assert!(x.live.is_empty() && x.steered.is_empty() && x.addrs.is_empty());
    assert_eq!(x.vips.down, vec![a.vip]);
    assert!(!x.left());
    let t3 = t1.build_changed(2, &[a.vip, b.vip], Vec::new(), 0).unwrap();
    let x = Change::of(&t1, &t3, &[a.vip, b.vip]).crossed(&tally);
    let e = (Addr::from_v4([198, 18, 1, 11]), 8080, 6);
    assert_eq!(x.live.down, vec![e]);
    assert_eq!(x.steered.down, vec![e]);
    assert!(x.left());
}
