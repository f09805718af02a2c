//! `--nodeport-addresses`: the node addresses NodePorts (and
//! `healthCheckNodePort`s) answer on, as kube-proxy's flag of that name.
//!
//! Without the flag every address of the served interfaces answers (IPv6
//! link-local ones excepted), as kube-proxy's iptables mode without it.
//! With `CIDR,...`, only those inside one of the prefixes; with `primary`
//! (the nftables mode's default), only the node's primary addresses. A
//! Sluice host has no Node object to read kubelet's `--node-ip` from, so
//! its primary addresses are taken to be the first IPv4 and the first IPv6
//! address of the first `--iface`, in the kernel's dump order: for IPv4 the
//! primary address of the subnet comes before its secondaries; for IPv6
//! global addresses come before link-local ones and, within a scope, the
//! most recently added comes first.
//!
//! The addresses are read once, at start (as the rest of the node's
//! addresses are), so a selection that matches none of them is refused
//! then ([`NodePortAddressesError::NoneSelected`]) rather than leaving a
//! node that silently serves no NodePort.
//!
//! The choice is pure ([`NodePortAddresses::select`]) over the addresses
//! the daemon reads per interface, so it is unit-tested here.

use std::net::IpAddr;
use std::str::FromStr;

use sluice_dataplane::types::{Addr, Cidr};

/// Which node addresses NodePorts answer on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every address of the served interfaces (no flag).
    #[default]
    All,
    /// Those inside one of these prefixes.
    Cidrs(Vec<Cidr>),
    /// The first address of each family of the first interface.
    Primary,
}

/// Why a `--nodeport-addresses` value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodePortAddressesError {
    /// The value is empty (omit the flag to use every address).
    #[error("empty: expected `primary` or CIDR[,CIDR...] (omit the flag for every node address)")]
    Empty,
    /// An item of the comma-separated list is empty (`a/24,,b/24`).
    #[error("item {index} of {value:?} is empty")]
    EmptyItem {
        /// The whole value.
        value: String,
        /// The item's position, from 0.
        index: usize,
    },
    /// `primary` given together with prefixes: it stands alone.
    #[error("{0:?}: `primary` cannot be combined with prefixes")]
    PrimaryInList(String),
    /// An item is not a prefix.
    #[error("{item:?}: {cause}")]
    BadCidr {
        /// The item.
        item: String,
        /// Why it is not a prefix.
        cause: String,
    },
    /// The selection matches none of the node's addresses.
    #[error("--nodeport-addresses {selection}: none of the node addresses ({}) is selected; NodePorts would answer nowhere", list(.addrs))]
    NoneSelected {
        /// The selection, as given.
        selection: String,
        /// The node's addresses it was applied to.
        addrs: Vec<IpAddr>,
    },
}

fn list(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for NodePortAddresses {
    type Err = NodePortAddressesError;

    /// `primary`, or comma-separated prefixes (`198.18.0.0/24,2001:db8::/64`;
    /// spaces around items are ignored).
    fn from_str(s: &str) -> Result<Self, NodePortAddressesError> {
        if s.trim().is_empty() {
            return Err(NodePortAddressesError::Empty);
        }
        if s.trim() == "primary" {
            return Ok(NodePortAddresses::Primary);
        }
        let mut cidrs = Vec::new();
        for (index, item) in s.split(',').map(str::trim).enumerate() {
            match item {
                "" => {
                    return Err(NodePortAddressesError::EmptyItem {
                        value: s.into(),
                        index,
                    })
                }
                "primary" => return Err(NodePortAddressesError::PrimaryInList(s.into())),
                _ => cidrs.push(item.parse::<Cidr>().map_err(|cause| {
                    NodePortAddressesError::BadCidr {
                        item: item.into(),
                        cause,
                    }
                })?),
            }
        }
        Ok(NodePortAddresses::Cidrs(cidrs))
    }
}

impl std::fmt::Display for NodePortAddresses {
    /// The flag's syntax (`all` for no flag).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodePortAddresses::All => f.write_str("all"),
            NodePortAddresses::Primary => f.write_str("primary"),
            NodePortAddresses::Cidrs(c) => {
                let items: Vec<String> = c.iter().map(Cidr::to_string).collect();
                f.write_str(&items.join(","))
            }
        }
    }
}

impl NodePortAddresses {
    /// The addresses NodePorts answer on, from each served interface's
    /// addresses (in `--iface` order, link-local ones already removed);
    /// each address once, in that order.
    pub fn select(&self, per_link: &[Vec<IpAddr>]) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        let mut push = |a: IpAddr| {
            if !out.contains(&a) {
                out.push(a);
            }
        };
        match self {
            NodePortAddresses::All => per_link.iter().flatten().copied().for_each(&mut push),
            NodePortAddresses::Cidrs(cidrs) => per_link
                .iter()
                .flatten()
                .filter(|a| cidrs.iter().any(|c| c.contains(&Addr::from(**a))))
                .copied()
                .for_each(&mut push),
            NodePortAddresses::Primary => {
                let first = per_link.first().map(Vec::as_slice).unwrap_or(&[]);
                for v4 in [true, false] {
                    if let Some(a) = first.iter().find(|a| a.is_ipv4() == v4) {
                        push(*a);
                    }
                }
            }
        }
        out
    }

    /// [`NodePortAddresses::select`], refusing an explicit selection that
    /// matches nothing (no flag over a host without addresses is today's
    /// behaviour and stays allowed).
    ///
    /// # Errors
    /// [`NodePortAddressesError::NoneSelected`] when a `primary` or prefix
    /// selection keeps none of the addresses.
    pub fn resolve(&self, per_link: &[Vec<IpAddr>]) -> Result<Vec<IpAddr>, NodePortAddressesError> {
        let sel = self.select(per_link);
        if sel.is_empty() && *self != NodePortAddresses::All {
            return Err(NodePortAddressesError::NoneSelected {
                selection: self.to_string(),
                addrs: NodePortAddresses::All.select(per_link),
            });
        }
        Ok(sel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn links() -> Vec<Vec<IpAddr>> {
        vec![
            ips(&["198.18.0.1", "2001:db8::1", "198.18.0.5", "2001:db8::5"]),
            ips(&["198.18.1.1", "2001:db8:1::1"]),
        ]
    }

    #[test]
    fn parses_primary_and_prefix_lists() {
        assert_eq!("primary".parse(), Ok(NodePortAddresses::Primary));
        assert_eq!(" primary ".parse(), Ok(NodePortAddresses::Primary));
        assert_eq!(
            "198.18.0.0/24, 2001:db8::/64".parse(),
            Ok(NodePortAddresses::Cidrs(vec![
                "198.18.0.0/24".parse().unwrap(),
                "2001:db8::/64".parse().unwrap()
            ]))
        );
    }

    #[test]
    fn refuses_bad_values_with_the_reason() {
        use NodePortAddressesError as E;
        let err = |s: &str| s.parse::<NodePortAddresses>().unwrap_err();
        assert_eq!(err(""), E::Empty);
        assert_eq!(err("  "), E::Empty);
        assert_eq!(
            err("198.18.0.0/24,,2001:db8::/64"),
            E::EmptyItem {
                value: "198.18.0.0/24,,2001:db8::/64".into(),
                index: 1
            }
        );
        assert!(matches!(
            err("198.18.0.0/24,"),
            E::EmptyItem { index: 1, .. }
        ));
        assert_eq!(
            err("primary,198.18.0.0/24"),
            E::PrimaryInList("primary,198.18.0.0/24".into())
        );
        for bad in [
            "198.18.0.0",
            "198.18.0.0/33",
            "2001:db8::/129",
            "eth0",
            "198.18.0.0/x",
        ] {
            match err(bad) {
                E::BadCidr { item, cause } => {
                    assert_eq!(item, bad);
                    assert!(!cause.is_empty());
                }
                e => panic!("{bad:?}: {e:?}"),
            }
        }
        // The message names the item and why.
        let msg = err("198.18.0.0/24,198.18.0.0/33").to_string();
        assert!(
            msg.contains("198.18.0.0/33") && msg.contains("too long"),
            "{msg}"
        );
    }

    #[test]
    fn all_is_every_address_once() {
        let mut l = links();
        l[1].push("198.18.0.1".parse().unwrap());
        assert_eq!(
            NodePortAddresses::All.select(&l),
            ips(&[
                "198.18.0.1",
                "2001:db8::1",
                "198.18.0.5",
                "2001:db8::5",
                "198.18.1.1",
                "2001:db8:1::1"
            ])
        );
    }

    #[test]
    fn prefixes_keep_the_addresses_inside_them() {
        let sel: NodePortAddresses = "198.18.1.0/24,2001:db8::5/128".parse().unwrap();
        assert_eq!(sel.select(&links()), ips(&["2001:db8::5", "198.18.1.1"]));
        let none: NodePortAddresses = "10.0.0.0/8".parse().unwrap();
        assert!(none.select(&links()).is_empty());
        // An IPv4 prefix never matches an IPv6 address and back.
        let v4all: NodePortAddresses = "0.0.0.0/0".parse().unwrap();
        assert_eq!(
            v4all.select(&links()),
            ips(&["198.18.0.1", "198.18.0.5", "198.18.1.1"])
        );
    }

    #[test]
    fn primary_is_the_first_of_each_family_of_the_first_link() {
        assert_eq!(
            NodePortAddresses::Primary.select(&links()),
            ips(&["198.18.0.1", "2001:db8::1"])
        );
        assert!(NodePortAddresses::Primary.select(&[]).is_empty());
        // A v4-only first link: its first address only, even when a later
        // link has IPv6.
        let l = vec![ips(&["198.18.0.7", "198.18.0.1"]), ips(&["2001:db8::9"])];
        assert_eq!(NodePortAddresses::Primary.select(&l), ips(&["198.18.0.7"]));
    }

    #[test]
    fn resolve_refuses_a_selection_of_nothing() {
        let none: NodePortAddresses = "10.0.0.0/8".parse().unwrap();
        let e = none.resolve(&links()).unwrap_err();
        assert!(
            matches!(&e, NodePortAddressesError::NoneSelected { selection, .. } if selection == "10.0.0.0/8")
        );
        assert!(e.to_string().contains("198.18.0.1"), "{e}");
        assert!(NodePortAddresses::Primary.resolve(&[vec![]]).is_err());
        // No flag on a host without addresses stays today's behaviour.
        assert_eq!(NodePortAddresses::All.resolve(&[]), Ok(vec![]));
        let one: NodePortAddresses = "198.18.0.5/32".parse().unwrap();
        assert_eq!(one.resolve(&links()), Ok(ips(&["198.18.0.5"])));
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            // Few distinct values, so that duplicates and matches happen.
            (0u8..4, 0u8..4).prop_map(|(a, b)| IpAddr::from([198, 18, a, b])),
            (0u16..4, 0u16..4).prop_map(|(a, b)| IpAddr::from([0x2001, 0xdb8, a, 0, 0, 0, 0, b])),
        ]
    }

    fn arb_cidr() -> impl Strategy<Value = Cidr> {
        prop_oneof![
            (arb_ip(), 0u8..=32).prop_filter_map("v4", |(ip, l)| ip
                .is_ipv4()
                .then(|| Cidr::new(Addr::from(ip), l))
                .flatten()),
            (arb_ip(), 0u8..=128).prop_filter_map("v6", |(ip, l)| ip
                .is_ipv6()
                .then(|| Cidr::new(Addr::from(ip), l))
                .flatten()),
        ]
    }

    proptest! {
        /// Prefixes keep exactly the addresses inside one of them, each
        /// once, in first-seen order: a subsequence of `All`.
        #[test]
        fn prefixes_select_exactly_the_contained_subsequence_of_all(
            per_link in prop::collection::vec(prop::collection::vec(arb_ip(), 0..6), 0..4),
            cidrs in prop::collection::vec(arb_cidr(), 1..4),
        ) {
            let all = NodePortAddresses::All.select(&per_link);
            let sel = NodePortAddresses::Cidrs(cidrs.clone()).select(&per_link);
            let inside = |a: &IpAddr| cidrs.iter().any(|c| c.contains(&Addr::from(*a)));
            let want: Vec<IpAddr> = all.iter().copied().filter(inside).collect();
            prop_assert_eq!(sel, want);
            // All: every address of every link, each once.
            for a in per_link.iter().flatten() {
                prop_assert_eq!(all.iter().filter(|b| *b == a).count(), 1);
            }
        }

        /// Primary is at most one address per family, from the first link,
        /// the first of its family there.
        #[test]
        fn primary_is_at_most_one_per_family_from_the_first_link(
            per_link in prop::collection::vec(prop::collection::vec(arb_ip(), 0..6), 0..4),
        ) {
            let sel = NodePortAddresses::Primary.select(&per_link);
            let first = per_link.first().cloned().unwrap_or_default();
            for v4 in [true, false] {
                let got: Vec<_> = sel.iter().filter(|a| a.is_ipv4() == v4).collect();
                let want = first.iter().find(|a| a.is_ipv4() == v4);
                prop_assert_eq!(got, want.into_iter().collect::<Vec<_>>());
            }
        }

        /// A prefix list survives Display → FromStr.
        #[test]
        fn prefix_lists_round_trip(cidrs in prop::collection::vec(arb_cidr(), 1..5)) {
            let sel = NodePortAddresses::Cidrs(cidrs);
            prop_assert_eq!(sel.to_string().parse::<NodePortAddresses>(), Ok(sel));
        }
    }
}
