//! Destination hashing (IPVS `dh`, `ip_vs_dh.c`).
//!
//! 256 buckets, one per server in turn (weights are ignored by the fill),
//! keyed by `hash_32(addr_fold(destination), 8)`: every flow to one
//! destination address goes to one server, refused if it has weight 0 or
//! is `OVERLOAD`ed. (For a VIP:port service every flow has the same
//! destination; `dh` is for services over many destinations, such as
//! cache farms, which port-0 and firewall-mark services will bring.)

use super::{addr_fold, hash_32, usable, Scheduler, State};
use crate::service::{BackendSpec, Service};
use crate::types::FlowKey;

/// Buckets of the table (`IP_VS_DH_TAB_SIZE`).
pub const BUCKETS: usize = 256;

/// The filled buckets (`ip_vs_dh_reassign`), or `None` without a backend.
pub(crate) fn buckets(backends: &[BackendSpec]) -> Option<Box<[u16]>> {
    if backends.is_empty() {
        return None;
    }
    Some((0..BUCKETS).map(|i| (i % backends.len()) as u16).collect())
}

/// Destination hashing.
#[derive(Debug, Default, Clone, Copy)]
pub struct DestinationHash;

impl Scheduler for DestinationHash {
    #[inline]
    fn pick(&self, s: &Service, key: &FlowKey) -> Option<usize> {
        let State::Buckets(t) = &s.sched_state else {
            return None;
        };
        let d = usize::from(t[hash_32(addr_fold(&key.dst), 8) as usize]);
        usable(s, d).then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, table};
    use crate::service::SchedKind;
    use crate::types::Addr;

    const DH: SchedKind = SchedKind::DestinationHash;

    #[test]
    fn destination_bucket() {
        // 198.18.100.1: hash_32(0xC6126401, 8) = 17; 3 servers -> 17 % 3.
        let t = table(DH, &[1, 5, 1]);
        assert_eq!(picks(&t, &client(1, 1), 2), [2, 2]);
        assert_eq!(picks(&t, &client(9, 9), 1), [2]);
        let t = table(DH, &[1, 1, 0]);
        assert_eq!(picks(&t, &client(1, 1), 1), [usize::MAX]);
    }

    proptest! {
        /// Destinations spread one bucket per server in turn.
        #[test]
        fn spreads_destinations(n in 1usize..20) {
            let t = table(DH, &vec![1; n]);
            let s = t.get(0).unwrap();
            let mut counts = vec![0u32; n];
            for x in 0..=255u8 {
                for y in 0..16u8 {
                    let mut k = client(1, 1);
                    k.dst = Addr::from_v4([198, 19, y, x]);
                    counts[super::super::pick(s, &k).unwrap()] += 1;
                }
            }
            // 4096 destinations over 256 equal buckets: each server near
            // its 1/n share (a loose bound: the hash is not uniform on
            // small sets).
            for &c in &counts {
                prop_assert!(f64::from(c) > 4096.0 / n as f64 * 0.5, "{:?}", counts);
            }
        }
    }
}
