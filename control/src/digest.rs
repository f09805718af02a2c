//! The table digest (`sluice_table_digest_info{digest}` in `/metrics`): one
//! number that every host of a tier computes alike when it serves the same
//! services with the same endpoints, so an operator sees at a glance that
//! all hosts agree (issue 14, "One source of truth").
//!
//! It covers what decides where a new flow goes: each front end (address,
//! port, protocol), its name, scheduler and flags, kind, masquerading,
//! affinity, source ranges, forwarding method and behaviour without
//! endpoints, and each endpoint's address, port, weight, termination and
//! thresholds. It leaves out what is the host's own or its order: the
//! order of services and endpoints (both are sorted first, as the Maglev
//! fill order is, `sched/maglev.rs`), the `local` flag of endpoints, the
//! FULLNAT local addresses, the table's version, ids and slots. Hosts with
//! `Local` traffic policies legitimately differ (each lists its own
//! endpoints).
//!
//! The hash is 64-bit FNV-1a over a canonical text of the sorted lines:
//! stable across runs, builds and machines (no random seed, no
//! `std::hash` whose algorithm may change), not a cryptographic hash.

use sluice_dataplane::service::{ServiceSpec, ServiceTable};

/// FNV-1a 64, offset basis and prime (Fowler, Noll, Vo).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// The canonical line of one service.
fn line(s: &ServiceSpec) -> String {
    let mut backends: Vec<String> = s
        .backends
        .iter()
        .map(|b| {
            format!(
                "{}:{}/w{}/t{}/u{}/l{}",
                b.addr, b.port, b.weight, b.terminating as u8, b.upper, b.lower
            )
        })
        .collect();
    backends.sort();
    let mut ranges: Vec<String> = s.source_ranges.iter().map(|c| c.to_string()).collect();
    ranges.sort();
    format!(
        "{} {:?} {}/fb{}/p{} {:?} {:?} aff{:?}/{:?} src[{}] {} {:?} be[{}]",
        s.vip,
        s.name,
        s.sched.as_str(),
        s.sched_flags.fallback as u8,
        s.sched_flags.port as u8,
        s.kind,
        s.masq,
        s.affinity_timeout,
        s.affinity_prefix,
        ranges.join(","),
        s.forward.as_str(),
        s.when_empty,
        backends.join(",")
    )
}

/// The digest of `specs`, whatever their order.
pub fn digest<'a>(specs: impl IntoIterator<Item = &'a ServiceSpec>) -> u64 {
    let mut lines: Vec<String> = specs.into_iter().map(line).collect();
    lines.sort();
    lines
        .iter()
        .fold(FNV_OFFSET, |h, l| fnv1a(fnv1a(h, l.as_bytes()), b"\n"))
}

/// The digest of the services of `table`.
pub fn table_digest(table: &ServiceTable) -> u64 {
    digest(table.services().map(|s| &s.spec))
}

/// The digest as `/metrics` shows it: 16 hex digits.
pub fn hex(d: u64) -> String {
    format!("{d:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_dataplane::service::{BackendSpec, SchedKind, VipKey};
    use sluice_dataplane::types::{proto, Addr};
    use std::net::Ipv4Addr;

    fn spec(vip: u8, backends: &[(u8, u16)]) -> ServiceSpec {
        ServiceSpec {
            name: format!("default/s{vip}:http"),
            vip: VipKey {
                addr: Addr::from(Ipv4Addr::new(198, 18, 100, vip)),
                port: 80,
                proto: proto::TCP,
            },
            backends: backends
                .iter()
                .map(|&(b, w)| BackendSpec {
                    addr: Addr::from(Ipv4Addr::new(198, 18, 1, b)),
                    port: 8080,
                    weight: w,
                    ..BackendSpec::default()
                })
                .collect(),
            sched: SchedKind::Maglev,
            ..ServiceSpec::default()
        }
    }

    #[test]
    fn the_digest_changes_with_what_decides_a_flow() {
        let base = digest(&[spec(10, &[(11, 1), (12, 1)])]);
        for changed in [
            spec(10, &[(11, 1), (12, 2)]),
            spec(10, &[(11, 1)]),
            spec(10, &[(11, 1), (13, 1)]),
            spec(11, &[(11, 1), (12, 1)]),
            ServiceSpec {
                sched: SchedKind::RoundRobin,
                ..spec(10, &[(11, 1), (12, 1)])
            },
        ] {
            assert_ne!(digest(std::slice::from_ref(&changed)), base, "{changed:?}");
        }
        let mut local = spec(10, &[(11, 1), (12, 1)]);
        local.backends[0].local = true;
        local.local_addrs = vec![Addr::from(Ipv4Addr::new(198, 18, 0, 1))];
        assert_eq!(digest(&[local]), base, "host-local fields are left out");
    }

    #[test]
    fn the_digest_is_a_fixed_function_of_the_config() {
        // Pinned: a change of the canonical form or of the hash shows here,
        // and would make hosts on different builds disagree.
        assert_eq!(hex(digest(&[])), "cbf29ce484222325");
        let d = digest(&[spec(10, &[(11, 1), (12, 1)])]);
        assert_eq!(d, digest(&[spec(10, &[(12, 1), (11, 1)])]));
        assert_eq!(hex(d).len(), 16);
    }

    proptest! {
        /// Two hosts given the same services and endpoints in any order
        /// compute the same digest.
        #[test]
        fn the_digest_ignores_order(
            svcs in proptest::collection::btree_map(
                1u8..200,
                proptest::collection::btree_map(1u8..250, 0u16..5, 0..8),
                0..12,
            ),
            seed in any::<u64>(),
        ) {
            let specs: Vec<ServiceSpec> = svcs
                .iter()
                .map(|(v, bs)| spec(*v, &bs.iter().map(|(a, w)| (*a, *w)).collect::<Vec<_>>()))
                .collect();
            // A deterministic shuffle of services and of each one's endpoints.
            let mut shuffled = specs.clone();
            let mut x = seed | 1;
            let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
            for i in (1..shuffled.len()).rev() {
                let j = (next() % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            for s in &mut shuffled {
                for i in (1..s.backends.len()).rev() {
                    let j = (next() % (i as u64 + 1)) as usize;
                    s.backends.swap(i, j);
                }
            }
            prop_assert_eq!(digest(&specs), digest(&shuffled));
        }
    }
}
