//! Weighted failover (IPVS `fo`, `ip_vs_fo.c`).
//!
//! The usable server with the highest weight (the first of equals): all
//! new connections go to it until it is drained (weight 0) or overloaded,
//! then to the next highest.

use super::{usable, Scheduler};
use crate::service::Service;
use crate::types::FlowKey;

/// Weighted failover.
#[derive(Debug, Default, Clone, Copy)]
pub struct WeightedFailover;

impl Scheduler for WeightedFailover {
    #[inline]
    fn pick(&self, s: &Service, _key: &FlowKey) -> Option<usize> {
        let backends = &s.spec.backends;
        let mut hi: Option<usize> = None;
        for i in 0..backends.len() {
            if usable(s, i) && hi.is_none_or(|h| backends[i].weight > backends[h].weight) {
                hi = Some(i);
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, set_counts, table, table_with};
    use crate::service::{SchedFlags, SchedKind};

    const FO: SchedKind = SchedKind::WeightedFailover;

    #[test]
    fn highest_weight_then_failover() {
        let t = table(FO, &[2, 5, 5, 1]);
        assert_eq!(picks(&t, &client(1, 1), 3), [1, 1, 1]);
        let t = table(FO, &[2, 0, 0, 1]);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
        let t = table_with(FO, SchedFlags::default(), &[2, 5], |i, b| {
            if i == 1 {
                b.upper = 10;
            }
        });
        set_counts(&t, 1, 10, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
    }

    proptest! {
        /// The pick is always a server of the maximum usable weight.
        #[test]
        fn max_weight(w in prop::collection::vec(0u16..10, 1..10)) {
            let t = table(FO, &w);
            let got = picks(&t, &client(1, 1), 1)[0];
            let max = *w.iter().max().unwrap();
            if max == 0 {
                prop_assert_eq!(got, usize::MAX);
            } else {
                prop_assert_eq!(got, w.iter().position(|&x| x == max).unwrap());
            }
        }
    }
}
