//! Maglev consistent hashing (IPVS `mh`, `ip_vs_mh.c`; Eisenbud et al.,
//! "Maglev", NSDI 2016, § 3.4).
//!
//! Each server gets a permutation of the table's slots from two hashes of
//! its address and port: `offset = h1 % M`, `skip = h2 % (M − 1) + 1`,
//! the j-th preference `(offset + j·skip) % M`. Servers take turns
//! claiming their next preferred free slot until the table is full; a
//! server of weight `w` claims `turns = (w / gcd) >> rshift` slots per
//! turn (at least 1 if `w > 0`, none if 0), where `rshift` keeps the
//! largest `w / gcd` within [`TURN_BITS`] bits (`ip_vs_mh_shift_weight`).
//! A client's slot is `h1(client address, source port with mh-port else
//! 0) % M`; a server of weight 0 or `OVERLOAD`ed refuses the flow unless
//! `mh-fallback`, which probes `h1(…, offset)` for offsets `ihash, ihash
//! + 1, …` (`ip_vs_mh_get_fallback`).
//!
//! The hashes are the kernel's: `hsiphash` (SipHash-1-3 on 64-bit
//! kernels, truncated to 32 bits) of the 32-bit `offset + port +
//! addr_fold`, keyed `{2654435761, 2654435761}` for h1 and `{2654446892,
//! 2654446892}` for h2 ([`siphasher`] provides SipHash-1-3).
//!
//! Where Sluice differs, and why:
//! * **M = 65537** by default ([`DEFAULT_SIZE`], Katran's and Envoy's
//!   prime) instead of the kernel's 4093: with M > 100 × N the slot share
//!   of each server is within about 1 % (the paper), for up to ~650
//!   servers. [`TURN_BITS`] is 8, the kernel's `IP_VS_MH_TAB_BITS` for its
//!   65521-slot table.
//! * **The fill order is the servers sorted by (address, port)**, not the
//!   list order: the table is a function of the set of servers and their
//!   weights alone, so every Sluice host given the same config builds the
//!   same table whatever order its sources listed the servers in.
//! * The kernel keeps a quiesced server's last non-zero weight in the
//!   table; a config here has no history, so weight 0 leaves the table
//!   (its slots move to the others; its established flows stay pinned in
//!   the flow table).
//!
//! Built with the service table, off the packet path: 4.7 ms for 100
//! servers, 6.4 ms for 1000, measured wall-clock on the shared 2-core
//! machine at load average 9 (`bench/benches/sched.rs`, `sched/maglev_build`).

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use super::{addr_fold, usable, Scheduler, State};
use crate::service::{BackendSpec, Service};
use crate::types::{Addr, FlowKey};

/// The default table size, a prime.
pub const DEFAULT_SIZE: u32 = 65537;

/// Bits of `weight / gcd` kept as turns.
pub const TURN_BITS: u32 = 8;

/// The kernel's `hash1` key.
const HASH1: (u64, u64) = (2654435761, 2654435761);
/// The kernel's `hash2` key.
const HASH2: (u64, u64) = (2654446892, 2654446892);

/// `ip_vs_mh_hashkey`: `hsiphash(offset + port + addr_fold)`.
#[inline]
pub(crate) fn hashkey(addr: &Addr, port: u16, key: (u64, u64), offset: u32) -> u32 {
    let v = offset
        .wrapping_add(u32::from(port))
        .wrapping_add(addr_fold(addr));
    let mut h = SipHasher13::new_with_keys(key.0, key.1);
    h.write(&v.to_le_bytes());
    h.finish() as u32
}

/// A built lookup table: slot → backend index.
pub struct Table {
    slots: Box<[u16]>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "maglev::Table({} slots)", self.slots.len())
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One server's place in the fill (`struct ip_vs_mh_dest_setup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Setup {
    pub offset: u32,
    pub skip: u32,
    pub turns: u32,
}

/// `ip_vs_mh_populate`: `setups` in fill order, each claiming `turns`
/// next free slots of its permutation per round, until `m` are filled.
/// Returns the setup index of every slot, or `None` if no setup has
/// turns.
pub(crate) fn populate(m: u32, setups: &[Setup]) -> Option<Vec<u32>> {
    if !setups.iter().any(|s| s.turns > 0) {
        return None;
    }
    let mut perm: Vec<u32> = setups.iter().map(|s| s.offset).collect();
    let mut table = vec![0u32; m as usize];
    // The kernel's `table` bitmap: 8 KB for 65537 slots, so the probing
    // of a nearly full table stays in L1.
    let mut taken = vec![0u64; (m as usize).div_ceil(64)];
    let is_taken = |t: &[u64], c: u32| t[(c / 64) as usize] >> (c % 64) & 1 != 0;
    let mut n = 0u32;
    loop {
        for (i, s) in setups.iter().enumerate() {
            for _ in 0..s.turns {
                let mut c = perm[i];
                while is_taken(&taken, c) {
                    c += s.skip;
                    if c >= m {
                        c -= m;
                    }
                }
                perm[i] = c;
                taken[(c / 64) as usize] |= 1 << (c % 64);
                table[c as usize] = i as u32;
                n += 1;
                if n == m {
                    return Some(table);
                }
            }
        }
    }
}

impl Table {
    /// The table of `backends` with `m` slots (a prime, ≥ 2), or `None` if
    /// no backend has a weight or there are more backends than slots
    /// (the kernel's `EINVAL`).
    pub fn build(backends: &[BackendSpec], m: u32) -> Option<Table> {
        if backends.len() > m as usize || m < 2 || backends.len() > usize::from(u16::MAX) + 1 {
            return None;
        }
        let mut order: Vec<usize> = (0..backends.len()).collect();
        order.sort_by_key(|&i| (backends[i].addr, backends[i].port, backends[i].weight));
        let g = backends
            .iter()
            .map(|b| u32::from(b.weight))
            .filter(|&w| w > 0)
            .fold(0, gcd);
        let max = backends.iter().map(|b| u32::from(b.weight)).max();
        // fls(max / gcd) - TURN_BITS, at least 0 (no weight: no shift).
        let rshift = max
            .and_then(|mw| mw.checked_div(g))
            .map_or(0, |mw| (32 - mw.leading_zeros()).saturating_sub(TURN_BITS));
        let setups: Vec<Setup> = order
            .iter()
            .map(|&i| {
                let b = &backends[i];
                let w = u32::from(b.weight);
                let turns = w.checked_div(g).map_or(0, |t| t >> rshift);
                Setup {
                    offset: hashkey(&b.addr, b.port, HASH1, 0) % m,
                    skip: hashkey(&b.addr, b.port, HASH2, 0) % (m - 1) + 1,
                    turns: if turns == 0 { u32::from(w != 0) } else { turns },
                }
            })
            .collect();
        let filled = populate(m, &setups)?;
        Some(Table {
            slots: filled
                .into_iter()
                .map(|k| order[k as usize] as u16)
                .collect(),
        })
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the table has no slot (never: a built table is full).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The backend index in slot `i`.
    pub fn slot(&self, i: usize) -> usize {
        usize::from(self.slots[i])
    }

    /// The slot a client hashes to (`offset` 0 is the first choice).
    #[inline]
    fn slot_of(&self, addr: &Addr, port: u16, offset: u32) -> usize {
        (hashkey(addr, port, HASH1, offset) % self.slots.len() as u32) as usize
    }
}

/// Maglev hashing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Maglev;

impl Scheduler for Maglev {
    #[inline]
    fn pick(&self, s: &Service, key: &FlowKey) -> Option<usize> {
        let State::Maglev(t) = &s.sched_state else {
            return None;
        };
        let flags = s.spec.sched_flags;
        let port = if flags.port { key.sport } else { 0 };
        let ihash = t.slot_of(&key.src, port, 0);
        let d = t.slot(ihash);
        if usable(s, d) {
            return Some(d);
        }
        // The kernel probes up to M offsets; when no server at all is
        // usable that is M hashes for nothing, so look first (O(n)).
        if !flags.fallback || !(0..s.spec.backends.len()).any(|i| usable(s, i)) {
            return None;
        }
        let m = t.len() as u32;
        (0..m)
            .map(|off| t.slot(t.slot_of(&key.src, port, (off + ihash as u32) % m)))
            .find(|&d| usable(s, d))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{client, picks, table, table_with};
    use super::*;
    use crate::service::{SchedFlags, SchedKind};

    const MH: SchedKind = SchedKind::Maglev;

    fn backends(n: usize, w: impl Fn(usize) -> u16) -> Vec<BackendSpec> {
        (0..n)
            .map(|i| BackendSpec {
                addr: Addr::from_v4([198, 18, 1 + (i / 250) as u8, (i % 250) as u8 + 1]),
                port: 8080,
                weight: w(i),
                ..Default::default()
            })
            .collect()
    }

    /// The paper's example (§ 3.4, M = 7), stepped by hand through
    /// `ip_vs_mh_populate`: B0 (offset 3, skip 4), B1 (0, 2), B2 (3, 1).
    #[test]
    fn populate_by_hand() {
        let s = |offset, skip| Setup {
            offset,
            skip,
            turns: 1,
        };
        let t = populate(7, &[s(3, 4), s(0, 2), s(3, 1)]).unwrap();
        assert_eq!(t, [1, 0, 1, 0, 2, 2, 0]);
        // Without B1: B0 3, B2 4; B0 0, B2 5; B0 1, B2 6; B0 2.
        let t = populate(7, &[s(3, 4), s(3, 1)]).unwrap();
        assert_eq!(t, [0, 0, 0, 0, 1, 1, 1]);
        // Two turns for B1 (weight 2 of 1): B0 3; B1 0, 2; B0 4; B1 6, 1;
        // B0 5.
        let t = populate(
            7,
            &[
                s(3, 4),
                Setup {
                    offset: 0,
                    skip: 2,
                    turns: 2,
                },
            ],
        )
        .unwrap();
        assert_eq!(t, [1, 1, 1, 0, 0, 0, 1]);
        assert_eq!(
            populate(
                7,
                &[Setup {
                    offset: 0,
                    skip: 1,
                    turns: 0
                }]
            ),
            None
        );
    }

    #[test]
    fn weights_to_turns() {
        // Weights 2:4:6 -> gcd 2 -> turns 1:2:3; 0 -> none; huge weights
        // shift into TURN_BITS.
        let b = backends(3, |i| 2 * (i as u16 + 1));
        let t = Table::build(&b, 65537).unwrap();
        let mut c = [0usize; 3];
        for i in 0..t.len() {
            c[t.slot(i)] += 1;
        }
        for (i, &x) in c.iter().enumerate() {
            let want = 65537.0 * (i + 1) as f64 / 6.0;
            assert!((x as f64 - want).abs() / 65537.0 < 0.01, "{c:?}");
        }
        let b = backends(2, |i| if i == 0 { 0 } else { 1 });
        let t = Table::build(&b, 65537).unwrap();
        assert!((0..t.len()).all(|i| t.slot(i) == 1));
        assert!(Table::build(&backends(2, |_| 0), 65537).is_none());
        assert!(Table::build(&backends(8, |_| 1), 7).is_none());
    }

    /// Removing 1 of 100 servers changes at most 1.6 % of the slots (its
    /// own ~1 % plus the permutation's reshuffle).
    #[test]
    fn removing_one_of_100_moves_little() {
        let b = backends(100, |_| 1);
        let before = Table::build(&b, DEFAULT_SIZE).unwrap();
        for gone in [0, 37, 99] {
            let mut less = b.clone();
            less.remove(gone);
            let after = Table::build(&less, DEFAULT_SIZE).unwrap();
            let moved = (0..before.len())
                .filter(|&i| b[before.slot(i)] != less[after.slot(i)])
                .count();
            let frac = moved as f64 / before.len() as f64;
            println!(
                "mh: removing #{gone} of 100 moved {:.2} % of the slots",
                frac * 100.0
            );
            assert!(frac <= 0.016, "removing #{gone} moved {frac:.4}");
            assert!(frac >= 0.009, "removing #{gone} moved only {frac:.4}");
        }
    }

    #[test]
    fn fallback_and_port_flags() {
        let t = table(MH, &[1, 1, 1]);
        let d = picks(&t, &client(7, 1), 1)[0];
        // Without mh-port the source port does not matter.
        for p in [2, 3, 4000, 65535] {
            assert_eq!(picks(&t, &client(7, p), 1), [d]);
        }
        // Overload the client's server: refused, or the next usable one
        // with mh-fallback (weight 0 would rebuild the table without it).
        let over = table_with(MH, SchedFlags::default(), &[1, 1, 1], |i, b| {
            if i == d {
                b.upper = 1;
            }
        });
        super::super::testutil::set_counts(&over, d, 0, 1);
        assert_eq!(picks(&over, &client(7, 1), 1), [usize::MAX]);
        let flags = SchedFlags {
            fallback: true,
            ..Default::default()
        };
        let over = table_with(MH, flags, &[1, 1, 1], |i, b| {
            if i == d {
                b.upper = 1;
            }
        });
        super::super::testutil::set_counts(&over, d, 0, 1);
        let got = picks(&over, &client(7, 1), 1)[0];
        assert!(got != d && got < 3);
        // mh-port: different source ports reach different servers.
        let flags = SchedFlags {
            port: true,
            ..Default::default()
        };
        let t = table_with(MH, flags, &[1, 1, 1], |_, _| {});
        let seen: std::collections::HashSet<usize> =
            (0..64).map(|p| picks(&t, &client(7, p), 1)[0]).collect();
        assert_eq!(seen.len(), 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// The table depends on the set of servers only: any order of the
        /// same servers builds the same slots (mapped back to servers).
        #[test]
        fn order_independent(n in 1usize..40, seed: u64, w in prop::collection::vec(1u16..5, 40)) {
            let b = backends(n, |i| w[i]);
            let mut shuffled = b.clone();
            // A seeded Fisher-Yates shuffle.
            let mut x = seed | 1;
            for i in (1..n).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let (t1, t2) = (Table::build(&b, 4093).unwrap(), Table::build(&shuffled, 4093).unwrap());
            for i in 0..t1.len() {
                prop_assert_eq!(b[t1.slot(i)], shuffled[t2.slot(i)]);
            }
        }

        /// Slot shares follow the weights within 1 % of the table.
        #[test]
        fn shares_follow_weights(w in prop::collection::vec(1u16..10, 1..20)) {
            let b = backends(w.len(), |i| w[i]);
            let t = Table::build(&b, DEFAULT_SIZE).unwrap();
            let mut c = vec![0usize; w.len()];
            for i in 0..t.len() {
                c[t.slot(i)] += 1;
            }
            let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
            for (i, &x) in w.iter().enumerate() {
                let want = f64::from(x) / total;
                let got = c[i] as f64 / t.len() as f64;
                prop_assert!((got - want).abs() < 0.01, "{:?} {:?}", w, c);
            }
        }
    }
}
