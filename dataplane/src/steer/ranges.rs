//! Service ranges (`sluice run --service-cidr`): the LPM trie that both
//! the steering XDP program (`bpf/steer.c`, map `service_ranges`) and the
//! node-traffic socket programs (`bpf/host_sock.c`, same name and layout)
//! match after their exact front-end lookup missed.
//!
//! kube-proxy's nftables mode (`pkg/proxy/nftables/proxier.go`, chain
//! `cluster-ips-check`, jumped to from `filter-forward` and
//! `filter-output-post-dnat` for new connections) has two rules, in order:
//! `ip daddr @cluster-ips reject` (a ClusterIP on a port no Service has;
//! nft's bare `reject` is ICMP port unreachable for every protocol, TCP
//! included) and `ip daddr { <service CIDRs> } drop` (an address in a
//! service range that no Service owns). The trie holds both as one
//! longest-prefix match: each `--service-cidr` prefix with
//! [`RangeClass::Drop`], each ClusterIP inside one of them as a /128 with
//! [`RangeClass::Reject`], which wins over its range.
//!
//! Key layout (20 bytes, the kernel's `struct bpf_lpm_trie_key` shape):
//! the prefix length as a host-order `u32` over the 128-bit form of the
//! address (IPv4 as IPv4-mapped IPv6, [`Addr`], so an IPv4 /N is 96 + N),
//! then the 16 address bytes. Value: one byte, the [`RangeClass`].

use std::collections::HashMap;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{MapData, MapError};

use crate::types::{Addr, Cidr};

/// What a packet to a matching address gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RangeClass {
    /// Inside a service range, owned by no Service: dropped.
    Drop = 1,
    /// A ClusterIP, on a port no Service has: rejected.
    Reject = 2,
}

/// A trie entry's key: prefix length over the 128-bit form, address.
pub type RangeKey = (u32, [u8; 16]);

/// Capacity of the trie (`SERVICE_RANGES_MAX`, which steer.c and host_sock.c set before they include `bpf/ranges.h`): every
/// front end could be a ClusterIP, plus the ranges.
pub const MAX_SERVICE_RANGES: usize = crate::steer::MAX_VIPS + 64;

/// The entries for `cidrs` and the ClusterIPs `cluster_ips` (each given
/// once; those outside every range are the caller's to leave out).
pub fn entries(cidrs: &[Cidr], cluster_ips: &[Addr]) -> HashMap<RangeKey, RangeClass> {
    let mut out = HashMap::with_capacity(cidrs.len() + cluster_ips.len());
    for c in cidrs {
        out.insert((u32::from(c.len128()), c.network().0), RangeClass::Drop);
    }
    for a in cluster_ips {
        out.insert((128, a.0), RangeClass::Reject);
    }
    out
}

/// One program's `service_ranges` map and what it holds (its only writer
/// keeps the shadow, so a change writes its difference only).
pub struct RangeMap {
    map: LpmTrie<MapData, [u8; 16], u8>,
    have: HashMap<RangeKey, RangeClass>,
}

impl std::fmt::Debug for RangeMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeMap")
            .field("entries", &self.have.len())
            .finish_non_exhaustive()
    }
}

impl RangeMap {
    /// Wraps a program's (empty) `service_ranges` map.
    pub fn new(map: LpmTrie<MapData, [u8; 16], u8>) -> RangeMap {
        RangeMap {
            map,
            have: HashMap::new(),
        }
    }

    /// Makes the map hold exactly `want`: new and changed entries are
    /// written before stale ones go, so an address never falls out of the
    /// trie between two classes. Returns the entries written or deleted.
    ///
    /// # Errors
    /// The failing map operation (`"insert"` or `"delete"`) and its cause;
    /// the shadow keeps what the kernel took, so calling again converges.
    pub fn sync(
        &mut self,
        want: &HashMap<RangeKey, RangeClass>,
    ) -> Result<usize, (&'static str, MapError)> {
        if want.len() > MAX_SERVICE_RANGES {
            return Err((
                "insert",
                MapError::OutOfBounds {
                    index: want.len() as u32,
                    max_entries: MAX_SERVICE_RANGES as u32,
                },
            ));
        }
        let mut n = 0;
        for (k, &c) in want {
            if self.have.get(k) == Some(&c) {
                continue;
            }
            self.map
                .insert(&Key::new(k.0, k.1), c as u8, 0)
                .map_err(|e| ("insert", e))?;
            self.have.insert(*k, c);
            n += 1;
        }
        let stale: Vec<RangeKey> = self
            .have
            .keys()
            .filter(|k| !want.contains_key(*k))
            .copied()
            .collect();
        for k in stale {
            match self.map.remove(&Key::new(k.0, k.1)) {
                Ok(()) | Err(MapError::KeyNotFound) => {
                    self.have.remove(&k);
                    n += 1;
                }
                Err(e) => return Err(("delete", e)),
            }
        }
        Ok(n)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.have.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.have.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_put_ranges_and_cluster_ips_in_the_mapped_form() {
        let v4: Cidr = "198.18.96.0/20".parse().unwrap();
        let v6: Cidr = "2001:db8:96::/112".parse().unwrap();
        let ip = Addr::from_v4([198, 18, 96, 10]);
        let e = entries(&[v4, v6], &[ip]);
        assert_eq!(e.len(), 3);
        assert_eq!(
            e.get(&(116, Addr::from_v4([198, 18, 96, 0]).0)),
            Some(&RangeClass::Drop)
        );
        let v6net: std::net::IpAddr = "2001:db8:96::".parse().unwrap();
        assert_eq!(e.get(&(112, Addr::from(v6net).0)), Some(&RangeClass::Drop));
        assert_eq!(e.get(&(128, ip.0)), Some(&RangeClass::Reject));
    }

    #[test]
    fn the_key_is_the_kernel_lpm_layout() {
        // struct range_key { __u32 prefixlen; __u8 addr[16]; }: 20 bytes,
        // no padding, as aya's packed Key.
        assert_eq!(std::mem::size_of::<Key<[u8; 16]>>(), 20);
    }
}
