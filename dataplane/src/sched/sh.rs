//! Source hashing (IPVS `sh`, `ip_vs_sh.c`).
//!
//! 256 buckets (`CONFIG_IP_VS_SH_TAB_BITS` 8) filled walking the server
//! list, each server taking `weight` consecutive buckets (weight 0 still
//! takes one), cycling until all are filled (`ip_vs_sh_reassign`); rebuilt
//! with the service table. A client's bucket is
//! `(offset + hash_32(port + addr_fold, 8)) & 255` with the client's
//! address and, with `sh-port`, its source port (else 0). If that bucket's
//! server has weight 0 or is `OVERLOAD`ed the flow is refused, unless
//! `sh-fallback`: then the buckets at offsets `ihash + 0, 1, …` are tried
//! in turn (`ip_vs_sh_get_fallback`).
//!
//! The reference's example bucket (198.18.0.100 → 36) is the older
//! kernels' `(… ) * 2654435761 & 255`; current kernels use `hash_32` (the
//! top bits), which is what this follows: 198.18.0.100 → 141.

use super::{addr_fold, hash_32, usable, Scheduler, State};
use crate::service::{BackendSpec, Service};
use crate::types::{Addr, FlowKey};

/// Buckets of the table (`IP_VS_SH_TAB_SIZE`).
pub const BUCKETS: usize = 256;

/// The filled buckets for `backends`, or `None` without a backend.
pub(crate) fn buckets(backends: &[BackendSpec]) -> Option<Box<[u16]>> {
    if backends.is_empty() {
        return None;
    }
    let mut out = vec![0u16; BUCKETS];
    let (mut p, mut d_count) = (0usize, 0u32);
    for b in out.iter_mut() {
        *b = p as u16;
        d_count += 1;
        if d_count >= u32::from(backends[p].weight) {
            p = (p + 1) % backends.len();
            d_count = 0;
        }
    }
    Some(out.into_boxed_slice())
}

/// `ip_vs_sh_hashkey`.
#[inline]
pub(crate) fn hashkey(addr: &Addr, port: u16, offset: u32) -> usize {
    (offset.wrapping_add(hash_32(u32::from(port).wrapping_add(addr_fold(addr)), 8))) as usize
        & (BUCKETS - 1)
}

/// Source hashing.
#[derive(Debug, Default, Clone, Copy)]
pub struct SourceHash;

impl Scheduler for SourceHash {
    #[inline]
    fn pick(&self, s: &Service, key: &FlowKey) -> Option<usize> {
        let State::Buckets(t) = &s.sched_state else {
            return None;
        };
        let flags = s.spec.sched_flags;
        let port = if flags.port { key.sport } else { 0 };
        let ihash = hashkey(&key.src, port, 0);
        let d = usize::from(t[ihash]);
        if usable(s, d) {
            return Some(d);
        }
        if !flags.fallback {
            return None;
        }
        (0..BUCKETS as u32)
            .map(|off| {
                usize::from(t[hashkey(&key.src, port, (off + ihash as u32) % BUCKETS as u32)])
            })
            .find(|&d| usable(s, d))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, table, table_with};
    use super::*;
    use crate::service::{SchedFlags, SchedKind};

    const SH: SchedKind = SchedKind::SourceHash;

    #[test]
    fn kernel_buckets_and_hash() {
        // Weights 1, 2: buckets #0 #1 #1 #0 #1 #1 ...; weight 0 takes one.
        let t = buckets(&table(SH, &[1, 2]).get(0).unwrap().spec.backends).unwrap();
        assert_eq!(&t[..6], &[0, 1, 1, 0, 1, 1]);
        let t = buckets(&table(SH, &[0, 2]).get(0).unwrap().spec.backends).unwrap();
        assert_eq!(&t[..6], &[0, 1, 1, 0, 1, 1]);
        // hash_32(0xC6120064, 8) = 141 (198.18.0.100), .1 -> 188, .2 -> 30.
        assert_eq!(hashkey(&client(100, 0).src, 0, 0), 141);
        assert_eq!(hashkey(&client(1, 0).src, 0, 0), 188);
        assert_eq!(hashkey(&client(1, 0).src, 5555, 0), 143);
        // [1, 2]: bucket b -> #0 iff b % 3 == 0.
        let t = table(SH, &[1, 2]);
        assert_eq!(picks(&t, &client(100, 7), 3), [0, 0, 0]);
        assert_eq!(picks(&t, &client(1, 7), 1), [1]);
        assert_eq!(picks(&t, &client(2, 7), 1), [0]);
    }

    #[test]
    fn port_flag() {
        let t = table(SH, &[1, 1]);
        // Without sh-port the source port does not matter.
        assert_eq!(picks(&t, &client(1, 0), 1), picks(&t, &client(1, 5555), 1));
        let flags = SchedFlags {
            port: true,
            ..Default::default()
        };
        let t = table_with(SH, flags, &[1, 1], |_, _| {});
        assert_eq!(picks(&t, &client(1, 0), 1), [0]); // bucket 188
        assert_eq!(picks(&t, &client(1, 5555), 1), [1]); // bucket 143
    }

    #[test]
    fn unavailable_refused_unless_fallback() {
        // [0, 1, 1]: buckets b % 3; 198.18.0.100 hashes to 141 -> #0,
        // which has weight 0.
        let t = table(SH, &[0, 1, 1]);
        assert_eq!(picks(&t, &client(100, 0), 1), [usize::MAX]);
        let flags = SchedFlags {
            fallback: true,
            ..Default::default()
        };
        let t = table_with(SH, flags, &[0, 1, 1], |_, _| {});
        // Offset 0 from ihash 141: bucket (141 + 141) & 255 = 26 -> #2.
        assert_eq!(picks(&t, &client(100, 0), 1), [2]);
    }

    proptest! {
        /// Buckets follow the weights: each server holds weight × k or
        /// weight × k + (part of one turn) buckets.
        #[test]
        fn buckets_follow_weights(w in prop::collection::vec(1u16..8, 1..10)) {
            let t = table(SH, &w);
            let b = buckets(&t.get(0).unwrap().spec.backends).unwrap();
            let total: u32 = w.iter().map(|&x| u32::from(x)).sum();
            let rounds = BUCKETS as u32 / total;
            for (i, &x) in w.iter().enumerate() {
                let got = b.iter().filter(|&&d| usize::from(d) == i).count() as u32;
                prop_assert!(got >= rounds * u32::from(x) && got <= (rounds + 1) * u32::from(x));
            }
        }

        /// A client always lands on the same server.
        #[test]
        fn sticky(x in 0u8..255, p1: u16, p2: u16) {
            let t = table(SH, &[1, 2, 3]);
            prop_assert_eq!(picks(&t, &client(x, p1), 1), picks(&t, &client(x, p2), 1));
        }
    }
}
