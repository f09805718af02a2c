//! Shortest expected delay (IPVS `sed`, `ip_vs_sed.c`).
//!
//! Like `wlc` but with overhead `active + 1` (inactive connections do not
//! count): the server whose `(active + 1) / weight` is least, the expected
//! delay if the new connection joined it.

use super::{least_weighted, Scheduler};
use crate::service::Service;
use crate::types::FlowKey;

/// `ip_vs_sed_dest_overhead`.
#[inline]
pub(crate) fn overhead(s: &Service, i: usize) -> u64 {
    u64::from(s.conns.active(i)) + 1
}

/// Shortest expected delay.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShortestExpectedDelay;

impl Scheduler for ShortestExpectedDelay {
    #[inline]
    fn pick(&self, s: &Service, _key: &FlowKey) -> Option<usize> {
        least_weighted(s, |i| overhead(s, i))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, set_counts, table};
    use crate::service::SchedKind;

    const SED: SchedKind = SchedKind::ShortestExpectedDelay;

    #[test]
    fn expected_delay() {
        // Weights 1, 2, both idle: (0+1)*2 > (0+1)*1, so #1 (wlc would
        // take #0: 0 * 2 is not > 0).
        let t = table(SED, &[1, 2]);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
        // #1 with 1 active: (1+1)/2 = 1 vs 1/1: tie, #0 kept.
        set_counts(&t, 1, 1, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
        // Inactive connections do not count.
        set_counts(&t, 0, 0, 1000);
        set_counts(&t, 1, 2, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
    }

    proptest! {
        /// Held connections follow the weights (within one connection).
        #[test]
        fn distribution_follows_weights(w in prop::collection::vec(1u16..6, 1..6), rounds in 1u32..20) {
            let t = table(SED, &w);
            let s = t.get(0).unwrap();
            let sum: u32 = w.iter().map(|&x| u32::from(x)).sum();
            for _ in 0..sum * rounds {
                let i = super::super::pick(s, &client(1, 1)).unwrap();
                s.conns.on_new(i);
                s.conns.on_established(i, true);
            }
            for (i, &x) in w.iter().enumerate() {
                let want = i64::from(u32::from(x) * rounds);
                prop_assert!((i64::from(s.conns.active(i)) - want).abs() <= 1);
            }
        }
    }
}
