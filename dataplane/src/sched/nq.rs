//! Never queue (IPVS `nq`, `ip_vs_nq.c`).
//!
//! The first usable server with no active connection, at once; if every
//! server is busy, the `sed` choice (least `(active + 1) / weight`). Unlike
//! `sed`'s loop, the kernel's `nq` loop skips weight-0 servers everywhere.

use super::{less_loaded, sed, usable, Scheduler};
use crate::service::Service;
use crate::types::FlowKey;

/// Never queue.
#[derive(Debug, Default, Clone, Copy)]
pub struct NeverQueue;

impl Scheduler for NeverQueue {
    #[inline]
    fn pick(&self, s: &Service, _key: &FlowKey) -> Option<usize> {
        let backends = &s.spec.backends;
        let mut least: Option<(usize, u64)> = None;
        for i in 0..backends.len() {
            if !usable(s, i) {
                continue;
            }
            let doh = sed::overhead(s, i);
            if doh == 1 {
                return Some(i);
            }
            if least.is_none_or(|(l, loh)| {
                less_loaded(loh, backends[l].weight, doh, backends[i].weight)
            }) {
                least = Some((i, doh));
            }
        }
        least.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, set_counts, table};
    use crate::service::SchedKind;

    const NQ: SchedKind = SchedKind::NeverQueue;

    #[test]
    fn idle_server_first_then_sed() {
        // #0 busy with a high weight, #1 idle with a low one: the idle one.
        let t = table(NQ, &[10, 1]);
        set_counts(&t, 0, 1, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
        // All busy: sed. (1+1)*1 vs (1+1)*10: #0 (2/10 < 2/1).
        set_counts(&t, 1, 1, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
        // Idle means no *active* connection; inactive ones do not count.
        set_counts(&t, 1, 0, 50);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
    }

    proptest! {
        /// Every server gets a first connection before any gets a second.
        #[test]
        fn no_queue_while_a_server_is_idle(w in prop::collection::vec(1u16..6, 1..8)) {
            let t = table(NQ, &w);
            let s = t.get(0).unwrap();
            let mut seen = vec![false; w.len()];
            for _ in 0..w.len() {
                let i = super::super::pick(s, &client(1, 1)).unwrap();
                prop_assert!(!seen[i]);
                seen[i] = true;
                s.conns.on_new(i);
                s.conns.on_established(i, true);
            }
        }
    }
}
