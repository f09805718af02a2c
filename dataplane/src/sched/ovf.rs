//! Weighted overflow (IPVS `ovf`, `ip_vs_ovf.c`).
//!
//! The highest-weight usable server whose active connections do not
//! exceed its weight (the weight is its capacity); once full, new
//! connections overflow to the next highest weight.

use super::{usable, Scheduler};
use crate::service::Service;
use crate::types::FlowKey;

/// Weighted overflow.
#[derive(Debug, Default, Clone, Copy)]
pub struct WeightedOverflow;

impl Scheduler for WeightedOverflow {
    #[inline]
    fn pick(&self, s: &Service, _key: &FlowKey) -> Option<usize> {
        let backends = &s.spec.backends;
        let mut hi: Option<usize> = None;
        for i in 0..backends.len() {
            let w = backends[i].weight;
            if !usable(s, i) || s.conns.active(i) > u32::from(w) {
                continue;
            }
            if hi.is_none_or(|h| w > backends[h].weight) {
                hi = Some(i);
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, set_counts, table};
    use crate::service::SchedKind;

    const OVF: SchedKind = SchedKind::WeightedOverflow;

    #[test]
    fn overflows_past_weight() {
        let t = table(OVF, &[2, 3]);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
        // active == weight still takes (the kernel skips only active > w).
        set_counts(&t, 1, 3, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
        set_counts(&t, 1, 4, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
        set_counts(&t, 0, 3, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [usize::MAX]);
    }

    proptest! {
        /// Filling servers one connection at a time, each server takes
        /// weight + 1 connections (0..=weight active before the pick), in
        /// decreasing weight order, then nothing.
        #[test]
        fn fills_by_weight(w in prop::collection::vec(0u16..5, 1..6)) {
            let t = table(OVF, &w);
            let s = t.get(0).unwrap();
            let cap: u32 = w.iter().filter(|&&x| x > 0).map(|&x| u32::from(x) + 1).sum();
            for _ in 0..cap {
                let i = super::super::pick(s, &client(1, 1)).unwrap();
                s.conns.on_new(i);
                s.conns.on_established(i, true);
            }
            prop_assert_eq!(super::super::pick(s, &client(1, 1)), None);
            for (i, &x) in w.iter().enumerate() {
                prop_assert_eq!(s.conns.active(i), if x > 0 { u32::from(x) + 1 } else { 0 });
            }
        }
    }
}
