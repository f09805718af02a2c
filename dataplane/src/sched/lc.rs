//! Least connections (IPVS `lc`, `ip_vs_lc.c`).
//!
//! The usable server with the least overhead `(active << 8) + inactive`
//! (`ip_vs_dest_conn_overhead`: an active connection weighs 256 inactive
//! ones); ties go to the first in the list (strict `<`). Weights only
//! decide usability (0: none). O(n) over the counts, like the kernel.

use super::{usable, Scheduler};
use crate::service::Service;
use crate::types::FlowKey;

/// Least connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastConn;

impl Scheduler for LeastConn {
    #[inline]
    fn pick(&self, s: &Service, _key: &FlowKey) -> Option<usize> {
        let mut least: Option<(usize, u64)> = None;
        for i in 0..s.spec.backends.len() {
            if !usable(s, i) {
                continue;
            }
            let doh = s.conns.overhead(i);
            if least.is_none_or(|(_, loh)| doh < loh) {
                least = Some((i, doh));
            }
        }
        least.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, set_counts, table, table_with};
    use crate::service::{SchedFlags, SchedKind};

    const LC: SchedKind = SchedKind::LeastConn;

    #[test]
    fn least_overhead_first_on_ties() {
        let t = table(LC, &[1, 1, 1]);
        assert_eq!(picks(&t, &client(1, 1), 2), [0, 0]);
        // One active (256) outweighs 255 inactive.
        set_counts(&t, 0, 1, 0);
        set_counts(&t, 1, 0, 255);
        set_counts(&t, 2, 0, 256);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
        set_counts(&t, 1, 0, 256);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
        // Weights do not scale lc, but 0 excludes.
        let t = table(LC, &[0, 5, 1]);
        set_counts(&t, 1, 2, 0);
        set_counts(&t, 2, 1, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [2]);
    }

    #[test]
    fn threshold() {
        let t = table_with(LC, SchedFlags::default(), &[1, 1], |i, b| {
            if i == 0 {
                b.upper = 3;
                b.lower = 1;
            }
        });
        set_counts(&t, 0, 3, 0);
        set_counts(&t, 1, 9, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
        set_counts(&t, 0, 1, 0); // not under lower 1 yet
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
        set_counts(&t, 0, 0, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
    }

    proptest! {
        /// Each new connection goes to the least loaded server, so held
        /// connections end up spread evenly (max − min ≤ 1) over the
        /// servers with a weight, whatever the weights.
        #[test]
        fn spreads_evenly(w in prop::collection::vec(0u16..4, 1..8), n in 0usize..100) {
            let t = table(LC, &w);
            let s = t.get(0).unwrap();
            let mut held = vec![0u32; w.len()];
            for _ in 0..n {
                let Some(i) = super::super::pick(s, &client(1, 1)) else { break };
                s.conns.on_new(i);
                s.conns.on_established(i, true);
                held[i] += 1;
            }
            let live: Vec<u32> = w.iter().zip(&held).filter(|(&w, _)| w > 0).map(|(_, &h)| h).collect();
            if !live.is_empty() {
                prop_assert!(live.iter().max().unwrap() - live.iter().min().unwrap() <= 1);
                prop_assert_eq!(live.iter().sum::<u32>() as usize, n);
            }
        }
    }
}
