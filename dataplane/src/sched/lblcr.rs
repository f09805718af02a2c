//! Locality-based least connections with replication (IPVS `lblcr`,
//! `ip_vs_lblcr.c`).
//!
//! A cache maps a destination address to a *set* of servers. The least
//! loaded usable member (by overhead / weight, `ip_vs_dest_set_min`) is
//! chosen unless it is lblc-overloaded ([`super::lblc::lblc_overloaded`]);
//! then the `wlc` choice over all servers is added to the set. A busy
//! destination so grows replicas.
//!
//! As in [`super::lblc`], the cache is direct-mapped (1024 buckets) and
//! lock-free; a set holds at most [`MEMBERS`] servers (the kernel's grows
//! without bound and sheds its most loaded member after 24 h unchanged):
//! adding to a full set replaces its most loaded member, which is the
//! kernel's shedding rule applied at once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::lblc::lblc_overloaded;
use super::{
    addr_fold, hash_32, least_weighted, less_loaded, overloaded, usable, Scheduler, State,
};
use crate::service::Service;
use crate::types::FlowKey;

/// Cache buckets (`IP_VS_LBLCR_TAB_SIZE`).
pub const BUCKETS: usize = 1024;
/// Servers per destination set.
pub const MEMBERS: usize = 4;

const VALID: u64 = 1 << 32;

#[derive(Debug, Default)]
struct Entry {
    /// `VALID | addr_fold`; 0 = empty.
    tag: AtomicU64,
    /// `server + 1`; 0 = free.
    members: [AtomicU32; MEMBERS],
}

/// The destination → server-set cache.
#[derive(Debug)]
pub struct Cache {
    entries: Box<[Entry]>,
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Cache {
        Cache {
            entries: (0..BUCKETS).map(|_| Entry::default()).collect(),
        }
    }
}

impl Default for Cache {
    fn default() -> Cache {
        Cache::new()
    }
}

fn members<'a>(s: &Service, e: &'a Entry) -> impl Iterator<Item = (usize, usize)> + 'a {
    let n = s.spec.backends.len();
    e.members.iter().enumerate().filter_map(move |(k, m)| {
        let v = m.load(Ordering::Relaxed) as usize;
        (v != 0 && v <= n).then(|| (k, v - 1))
    })
}

/// `ip_vs_dest_set_min`.
fn set_min(s: &Service, e: &Entry) -> Option<usize> {
    let w = |i: usize| s.spec.backends[i].weight;
    let mut least: Option<(usize, u64)> = None;
    for (_, d) in members(s, e) {
        match least {
            None if usable(s, d) => least = Some((d, s.conns.overhead(d))),
            None => {}
            Some((l, loh)) => {
                if overloaded(s, d) {
                    continue;
                }
                let doh = s.conns.overhead(d);
                if less_loaded(loh, w(l), doh, w(d)) {
                    least = Some((d, doh));
                }
            }
        }
    }
    least.map(|(d, _)| d)
}

/// `ip_vs_dest_set_insert`, replacing the most loaded member of a full
/// set.
fn set_insert(s: &Service, e: &Entry, d: usize) {
    let w = |i: usize| s.spec.backends[i].weight;
    if members(s, e).any(|(_, m)| m == d) {
        return;
    }
    let v = d as u32 + 1;
    if let Some(free) = e.members.iter().find(|m| m.load(Ordering::Relaxed) == 0) {
        free.store(v, Ordering::Relaxed);
        return;
    }
    let mut most: Option<(usize, usize, u64)> = None;
    for (k, m) in members(s, e) {
        let moh = s.conns.overhead(m);
        if most.is_none_or(|(_, x, xoh)| less_loaded(moh, w(m), xoh, w(x))) {
            most = Some((k, m, moh));
        }
    }
    let k = most.map_or(0, |(k, _, _)| k);
    e.members[k].store(v, Ordering::Relaxed);
}

/// Locality-based least connections with replication.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lblcr;

impl Scheduler for Lblcr {
    fn pick(&self, s: &Service, key: &FlowKey) -> Option<usize> {
        let State::Lblcr(cache) = &s.sched_state else {
            return None;
        };
        let fold = addr_fold(&key.dst);
        let e = &cache.entries[hash_32(fold, 10) as usize];
        if e.tag.load(Ordering::Relaxed) == VALID | u64::from(fold) {
            if let Some(d) = set_min(s, e) {
                if !lblc_overloaded(s, d) {
                    return Some(d);
                }
            }
            let d = least_weighted(s, |i| s.conns.overhead(i))?;
            set_insert(s, e, d);
            return Some(d);
        }
        let d = least_weighted(s, |i| s.conns.overhead(i))?;
        for m in &e.members[1..] {
            m.store(0, Ordering::Relaxed);
        }
        e.members[0].store(d as u32 + 1, Ordering::Relaxed);
        e.tag.store(VALID | u64::from(fold), Ordering::Relaxed);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, set_counts, table};
    use crate::service::SchedKind;

    const LBLCR: SchedKind = SchedKind::Lblcr;

    #[test]
    fn set_grows_when_overloaded_and_serves_its_least_loaded() {
        let t = table(LBLCR, &[1, 1, 1]);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]); // set {0}
                                                      // #0 over its weight, #1 and #2 idle: wlc over all adds #1.
        set_counts(&t, 0, 2, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]); // set {0, 1}
                                                      // Within the set, the least loaded per weight: #1 (1 active) vs
                                                      // #0 (2 active); #2 stays outside while #1 is not overloaded.
        set_counts(&t, 1, 1, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [1]);
        // #0 idle again: it is the set's least loaded.
        set_counts(&t, 0, 0, 0);
        assert_eq!(picks(&t, &client(1, 1), 1), [0]);
    }

    proptest! {
        /// The pick is always a usable server.
        #[test]
        fn usable_pick(w in prop::collection::vec(0u16..4, 1..8), loads in prop::collection::vec(0u32..6, 8)) {
            let t = table(LBLCR, &w);
            for (i, &l) in loads.iter().take(w.len()).enumerate() {
                set_counts(&t, i, l, 0);
            }
            for _ in 0..3 {
                match picks(&t, &client(1, 1), 1)[0] {
                    usize::MAX => prop_assert!(w.iter().all(|&x| x == 0)),
                    d => prop_assert!(w[d] > 0),
                }
            }
        }
    }
}
