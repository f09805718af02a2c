//! Weighted round-robin (IPVS `wrr`, `ip_vs_wrr.c`).
//!
//! The kernel's stepping: `di` = gcd of the positive weights (1 if none),
//! `mw` = max weight − (di − 1), the current weight `cw` starts at `mw`,
//! the cursor at the list head. A pick walks on from the cursor to the
//! first usable server with weight ≥ `cw`; passing the end of the list
//! lowers `cw` by `di`, back to `mw` once it reaches 0. Over a period of
//! Σ weight/di picks every server is chosen weight/di times, interleaved
//! (A4, B3, C2 listed C, B, A: A B A C B A C B A).
//!
//! The cursor and `cw` live in one atomic word advanced by compare-and-swap
//! (the kernel takes `svc->sched_lock`), so the sequence is one global
//! sequence across workers. The table is rebuilt on any change, which is
//! the kernel's `ip_vs_wrr_dest_changed` reset (cursor to the head, `cw`
//! to the new `mw`).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{usable, Scheduler, State};
use crate::service::{BackendSpec, Service};
use crate::types::FlowKey;

/// `wrr`'s mark: cursor, current weight and the two constants.
#[derive(Debug)]
pub struct WrrState {
    /// `cursor << 32 | cw`; the cursor is a backend index, or `n` for the
    /// list head.
    mark: AtomicU64,
    di: u32,
    mw: u32,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl WrrState {
    /// The mark for `backends` (`ip_vs_wrr_init_svc`).
    pub fn new(backends: &[BackendSpec]) -> WrrState {
        let di = backends
            .iter()
            .map(|b| u32::from(b.weight))
            .filter(|&w| w > 0)
            .fold(0, gcd)
            .max(1);
        let max = backends
            .iter()
            .map(|b| u32::from(b.weight))
            .max()
            .unwrap_or(0);
        let mw = max.saturating_sub(di - 1);
        WrrState {
            mark: AtomicU64::new((backends.len() as u64) << 32 | u64::from(mw)),
            di,
            mw,
        }
    }

    /// One step of the walk from mark `m`: the chosen index and the new
    /// mark, or `None` if no server is usable.
    fn step(&self, s: &Service, m: u64) -> Option<(usize, u64)> {
        let backends = &s.spec.backends;
        let n = backends.len();
        if self.mw == 0 || n == 0 {
            return None;
        }
        let (mut cl, mut cw) = ((m >> 32) as usize, m as u32 as i64);
        // Every server is looked at with every cw in at most
        // (mw / di + 1) passes over the list: past that, none is usable.
        let limit = (n + 1) * (self.mw / self.di + 2) as usize;
        for _ in 0..limit {
            cl = if cl >= n { 0 } else { cl + 1 };
            if cl == n {
                cw -= i64::from(self.di);
                if cw <= 0 {
                    cw = i64::from(self.mw);
                }
                continue;
            }
            if i64::from(backends[cl].weight) >= cw && usable(s, cl) {
                return Some((cl, (cl as u64) << 32 | cw as u64));
            }
        }
        None
    }
}

/// Weighted round-robin.
#[derive(Debug, Default, Clone, Copy)]
pub struct WeightedRoundRobin;

impl Scheduler for WeightedRoundRobin {
    #[inline]
    fn pick(&self, service: &Service, _key: &FlowKey) -> Option<usize> {
        let State::Wrr(st) = &service.sched_state else {
            return None;
        };
        let mut m = st.mark.load(Ordering::Relaxed);
        loop {
            let (i, next) = st.step(service, m)?;
            match st
                .mark
                .compare_exchange_weak(m, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(i),
                Err(now) => m = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, set_counts, table, table_with};
    use crate::service::{SchedFlags, SchedKind};

    const WRR: SchedKind = SchedKind::WeightedRoundRobin;

    /// The reference's sequences, hand-stepped through
    /// `ip_vs_wrr_schedule` (the kernel lists the newest server first, so
    /// "A then B" is the list B, A).
    #[test]
    fn kernel_sequences() {
        // A(3) added, then B(1): list [B, A] -> A A B A.
        let t = table(WRR, &[1, 3]);
        assert_eq!(picks(&t, &client(1, 1), 8), [1, 1, 0, 1, 1, 1, 0, 1]);
        // A4, B3, C2 added in that order: list [C, B, A] ->
        // A B A C B A C B A.
        let t = table(WRR, &[2, 3, 4]);
        assert_eq!(picks(&t, &client(1, 1), 9), [2, 1, 2, 0, 1, 2, 0, 1, 2]);
        // gcd 2: [2, 4] -> di 2, mw 3: cw 3 -> #1; cw 1 -> #0, #1.
        let t = table(WRR, &[2, 4]);
        assert_eq!(picks(&t, &client(1, 1), 6), [1, 0, 1, 1, 0, 1]);
    }

    #[test]
    fn weight_zero_and_overload() {
        let t = table(WRR, &[0, 2, 0]);
        assert_eq!(picks(&t, &client(1, 1), 3), [1, 1, 1]);
        let t = table(WRR, &[0, 0]);
        assert_eq!(picks(&t, &client(1, 1), 1), [usize::MAX]);
        let t = table_with(WRR, SchedFlags::default(), &[1, 3], |i, b| {
            if i == 1 {
                b.upper = 1;
            }
        });
        set_counts(&t, 1, 0, 1);
        assert_eq!(picks(&t, &client(1, 1), 3), [0, 0, 0]);
    }

    proptest! {
        /// Over one period (Σ weight / gcd picks) each server is chosen
        /// exactly weight / gcd times.
        #[test]
        fn distribution_follows_weights(w in prop::collection::vec(0u16..20, 1..8)) {
            let t = table(WRR, &w);
            let g = w.iter().filter(|&&x| x > 0).fold(0u32, |a, &x| super::gcd(a, u32::from(x)));
            prop_assume!(g > 0);
            let period: u32 = w.iter().map(|&x| u32::from(x) / g).sum();
            let mut counts = vec![0u32; w.len()];
            for i in picks(&t, &client(1, 1), period as usize * 3) {
                counts[i] += 1;
            }
            for (i, &x) in w.iter().enumerate() {
                prop_assert_eq!(counts[i], 3 * u32::from(x) / g);
            }
        }
    }
}
