//! Round-robin (IPVS `rr`, `ip_vs_rr.c`; kube-proxy's IPVS-mode default).
//!
//! The kernel keeps a pointer to the last server chosen and walks on from
//! it to the first usable one (weight > 0, not `OVERLOAD`ed). Here the
//! cursor is one atomic inside the service holding the index after the
//! last choice, advanced by compare-and-swap, so the rotation is global
//! and exact across workers: with N workers, consecutive new flows still
//! go to consecutive usable backends, and a drained backend does not give
//! its turn to its successor twice.

use std::sync::atomic::Ordering;

use super::{usable, Scheduler};
use crate::service::Service;
use crate::types::FlowKey;

/// Round-robin over usable backends.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundRobin;

impl Scheduler for RoundRobin {
    #[inline]
    fn pick(&self, service: &Service, _key: &FlowKey) -> Option<usize> {
        let n = service.spec.backends.len();
        if n == 0 {
            return None;
        }
        let mut cur = service.rr.load(Ordering::Relaxed);
        loop {
            let start = cur as usize % n;
            let i = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| usable(service, i))?;
            let next = ((i + 1) % n) as u32;
            match service
                .rr
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(i),
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{client, picks, set_counts, table, table_with};
    use crate::service::{SchedFlags, SchedKind, ServiceSpec, ServiceTable};

    const RR: SchedKind = SchedKind::RoundRobin;

    #[test]
    fn rotates_evenly() {
        let t = table(RR, &[1, 1, 1]);
        assert_eq!(picks(&t, &client(1, 1), 6), [0, 1, 2, 0, 1, 2]);
    }

    /// The kernel walks on from the last server chosen: a drained server
    /// in the middle does not make its successor take two turns
    /// (A, B(0), C: A C A C, not A C C A).
    #[test]
    fn drained_server_does_not_double_its_successor() {
        let t = table(RR, &[1, 0, 1]);
        assert_eq!(picks(&t, &client(1, 1), 4), [0, 2, 0, 2]);
        let t = table(RR, &[0, 0]);
        assert_eq!(picks(&t, &client(1, 1), 1), [usize::MAX]);
        let t = table(RR, &[]);
        assert_eq!(picks(&t, &client(1, 1), 1), [usize::MAX]);
    }

    #[test]
    fn overloaded_server_is_skipped() {
        let t = table_with(RR, SchedFlags::default(), &[1, 1], |i, b| {
            if i == 0 {
                b.upper = 2;
            }
        });
        set_counts(&t, 0, 1, 1);
        assert_eq!(picks(&t, &client(1, 1), 3), [1, 1, 1]);
        set_counts(&t, 0, 0, 1);
        assert_eq!(picks(&t, &client(1, 1), 2), [0, 1]);
    }

    #[test]
    fn terminating_backends_only_when_no_ready_one() {
        let t = table(RR, &[1, 0]);
        let mut specs: Vec<ServiceSpec> = t.services().map(|s| s.spec.clone()).collect();
        specs[0].backends[1].terminating = true;
        let t = ServiceTable::build(2, specs.clone()).unwrap();
        assert_eq!(picks(&t, &client(1, 1), 4), [0, 0, 0, 0]);
        specs[0].backends[0].weight = 0;
        let t = ServiceTable::build(3, specs).unwrap();
        assert_eq!(picks(&t, &client(1, 1), 2), [1, 1]);
    }
}
