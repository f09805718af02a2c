//! Weighted least connections (IPVS `wlc`, `ip_vs_wlc.c`; IPVS's default).
//!
//! The server with the least overhead per weight: the first usable one,
//! then any later one not `OVERLOAD`ed with `loh * w(d) > doh * w(least)`
//! (s64 products in the kernel; here u128, so no overflow either). Ties go
//! to the earlier server; a later server of weight 0 never wins.

use super::{least_weighted, Scheduler};
use crate::service::Service;
use crate::types::FlowKey;

/// Weighted least connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct WeightedLeastConn;

impl Scheduler for WeightedLeastConn {
    #[inline]
    fn pick(&self, s: &Service, _key: &FlowKey) -> Option<usize> {
        least_weighted(s, |i| s.conns.overhead(i))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, set_counts, table};
    use crate::service::SchedKind;

    const WLC: SchedKind = SchedKind::WeightedLeastConn;

    #[test]
    fn overhead_per_weight() {
        // Weights 1, 3: overheads 256 (1 active) and 512 (2 active):
        // 256 * 3 > 512 * 1, so #1.
        let t = table(WLC, &[1, 3]);
        set_counts(&t, 0, 1, 0);
        set_counts(&t, 1, 2, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
        // 3 active on #1: 256 * 3 = 768 is not > 768 * 1: the tie keeps #0.
        set_counts(&t, 1, 3, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
        // Empty servers: the first.
        let t = table(WLC, &[1, 3]);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
        // Weight 0 first in the list is skipped, later never wins.
        let t = table(WLC, &[0, 1, 0]);
        set_counts(&t, 1, 5, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
    }

    proptest! {
        /// Held connections follow the weights: after each pick bumps the
        /// chosen server, every server's active count stays within one of
        /// its weighted share.
        #[test]
        fn distribution_follows_weights(w in prop::collection::vec(1u16..6, 1..6), rounds in 1u32..20) {
            let t = table(WLC, &w);
            let s = t.get(0).unwrap();
            let total: u32 = w.iter().map(|&x| u32::from(x)).sum::<u32>() * rounds;
            for _ in 0..total {
                let i = super::super::pick(s, &client(1, 1)).unwrap();
                s.conns.on_new(i);
                s.conns.on_established(i, true);
            }
            for (i, &x) in w.iter().enumerate() {
                prop_assert_eq!(s.conns.active(i), u32::from(x) * rounds);
            }
        }
    }
}
