//! Locality-based least connections (IPVS `lblc`, `ip_vs_lblc.c`).
//!
//! A cache maps a destination address to the server last chosen for it;
//! the cached server is used while it is usable and not *lblc-overloaded*
//! (more active connections than its weight while some server has fewer
//! than half its weight, `is_overloaded` there); otherwise the `wlc`
//! choice over all servers replaces the entry.
//!
//! The kernel's cache is a chained hash table of 1024 buckets on
//! `hash_32(addr_fold(daddr), 10)` with a 60 s garbage collector. Here it
//! is direct-mapped on the same 1024 buckets, each entry one atomic word
//! (folded address, server), so workers share it without a lock; two
//! destinations in one bucket evict each other (they are rescheduled by
//! `wlc`, as an expired kernel entry would be), and entries are dropped
//! with the service table on every config change instead of after 24 h
//! idle (the scheduler reads no clock).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{addr_fold, hash_32, least_weighted, usable, Scheduler, State};
use crate::service::Service;
use crate::types::FlowKey;

/// Cache buckets (`IP_VS_LBLC_TAB_SIZE`).
pub const BUCKETS: usize = 1024;

/// The destination → server cache.
#[derive(Debug)]
pub struct Cache {
    /// `addr_fold << 32 | (server + 1)`; 0 = empty.
    entries: Box<[AtomicU64]>,
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Cache {
        Cache {
            entries: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Default for Cache {
    fn default() -> Cache {
        Cache::new()
    }
}

/// The lblc/lblcr `is_overloaded`: more active connections than weight,
/// while some server of the service has active × 2 < weight.
pub(crate) fn lblc_overloaded(s: &Service, d: usize) -> bool {
    let b = &s.spec.backends;
    s.conns.active(d) > u32::from(b[d].weight)
        && (0..b.len()).any(|i| u64::from(s.conns.active(i)) * 2 < u64::from(b[i].weight))
}

/// Locality-based least connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lblc;

impl Scheduler for Lblc {
    fn pick(&self, s: &Service, key: &FlowKey) -> Option<usize> {
        let State::Lblc(cache) = &s.sched_state else {
            return None;
        };
        let fold = addr_fold(&key.dst);
        let slot = &cache.entries[hash_32(fold, 10) as usize];
        let e = slot.load(Ordering::Relaxed);
        if (e >> 32) as u32 == fold && e as u32 != 0 {
            let d = (e as u32 - 1) as usize;
            if d < s.spec.backends.len() && usable(s, d) && !lblc_overloaded(s, d) {
                return Some(d);
            }
        }
        let d = least_weighted(s, |i| s.conns.overhead(i))?;
        slot.store(u64::from(fold) << 32 | (d as u64 + 1), Ordering::Relaxed);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, set_counts, table};
    use crate::service::SchedKind;
    use crate::types::Addr;

    const LBLC: SchedKind = SchedKind::Lblc;

    #[test]
    fn sticks_to_cached_server_until_overloaded() {
        let t = table(LBLC, &[1, 1]);
        // Empty: wlc takes #0 and caches it.
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
        // Busier than #1 but within its weight: still #0 (wlc would move).
        set_counts(&t, 0, 1, 5);
        assert_eq!(picks(&t, &client(2, 2), 1), [0]);
        // Over its weight while #1 is under half of its own: rescheduled.
        set_counts(&t, 0, 2, 0);
        assert_eq!(picks(&t, &client(3, 3), 1), [1]);
        // The cache now says #1, even with #0 idle again.
        set_counts(&t, 0, 0, 0);
        set_counts(&t, 1, 1, 0);
        assert_eq!(picks(&t, &client(4, 4), 1), [1]);
    }

    proptest! {
        /// Destinations that share nothing keep their own server: the
        /// same destination always gets the same one while loads stay
        /// within the weights.
        #[test]
        fn one_server_per_destination(dsts in prop::collection::vec(0u8..255, 1..20)) {
            let t = table(LBLC, &[3, 3, 3]);
            let s = t.get(0).unwrap();
            let mut first = std::collections::HashMap::new();
            for &d in dsts.iter().chain(&dsts) {
                let mut k = client(1, 1);
                k.dst = Addr::from_v4([198, 19, 0, d]);
                let got = super::super::pick(s, &k).unwrap();
                prop_assert_eq!(*first.entry(d).or_insert(got), got);
            }
        }
    }
}
