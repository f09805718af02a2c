//! Node-port bookkeeping: explicit claims and deterministic allocation.
//!
//! The API server allocates a `nodePort` (and a `healthCheckNodePort`)
//! when a Service is created and writes it into the object, so a dump of a
//! real cluster always carries them. A hand-written file often does not:
//! Sluice then allocates one itself, and must give the same port on every
//! reload and on every host that loads the same file (clients and load
//! balancers are configured with it). So allocation is a pure function of
//! the objects: the port starts at a hash (FNV-1a, stable across Rust
//! releases, unlike `DefaultHasher`) of `namespace/name/portname` in the
//! range, and probes upwards (wrapping) for a free one. Explicit ports are
//! all claimed before any allocation, so an allocated port never takes one
//! a later object asks for; adding a Service only moves another's
//! allocated port when their probe sequences meet.
//!
//! Claims are keyed by (port, protocol): two Services may use the same
//! number for TCP and UDP (the brief's rule, and what the data path can
//! tell apart; the API server's allocator refuses that across Services,
//! within one Service it allows it). Allocation picks a number no claim
//! uses for any protocol, as the API server's allocator does.

use std::collections::BTreeMap;

/// The claims on node ports, and who made each.
pub(super) struct NodePorts {
    lo: u16,
    hi: u16,
    /// (port, protocol) → who claimed it (for the error naming both).
    used: BTreeMap<(u16, u8), String>,
}

impl NodePorts {
    /// An empty table for the inclusive range `lo..=hi` (`lo <= hi`).
    pub(super) fn new((lo, hi): (u16, u16)) -> NodePorts {
        NodePorts {
            lo,
            hi,
            used: BTreeMap::new(),
        }
    }

    /// Claims `port` for `proto` on behalf of `owner`.
    ///
    /// # Errors
    /// The owner of an earlier claim of the same port and protocol.
    pub(super) fn claim(&mut self, port: u16, proto: u8, owner: String) -> Result<(), &str> {
        match self.used.entry((port, proto)) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(owner);
                Ok(())
            }
            std::collections::btree_map::Entry::Occupied(o) => Err(o.into_mut().as_str()),
        }
    }

    /// Allocates and claims a port free for every protocol, starting at the
    /// hash of `key`; `None` when the range is full.
    pub(super) fn allocate(&mut self, key: &str, proto: u8, owner: String) -> Option<u16> {
        let size = u32::from(self.hi) - u32::from(self.lo) + 1;
        let start = (fnv1a(key.as_bytes()) % u64::from(size)) as u32;
        for i in 0..size {
            let port = (u32::from(self.lo) + (start + i) % size) as u16;
            if self
                .used
                .range((port, 0)..=(port, u8::MAX))
                .next()
                .is_none()
            {
                self.used.insert((port, proto), owner);
                return Some(port);
            }
        }
        None
    }
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn allocation_is_deterministic_and_avoids_claims() {
        let mut a = NodePorts::new((30000, 30009));
        let mut b = NodePorts::new((30000, 30009));
        let pa = a.allocate("default/web/http", 6, "x".into()).unwrap();
        let pb = b.allocate("default/web/http", 6, "x".into()).unwrap();
        assert_eq!(pa, pb);
        // A claim on the hashed port (any protocol) pushes the next one up.
        let mut c = NodePorts::new((30000, 30009));
        c.claim(pa, 17, "udp".into()).unwrap();
        let pc = c.allocate("default/web/http", 6, "x".into()).unwrap();
        assert_eq!(pc, if pa == 30009 { 30000 } else { pa + 1 });
        // Same port, other protocol: allowed; same protocol: refused.
        assert!(c.claim(pa, 6, "tcp".into()).is_ok());
        assert_eq!(c.claim(pa, 6, "again".into()), Err("tcp"));
    }

    #[test]
    fn full_range_is_none() {
        let mut t = NodePorts::new((30000, 30001));
        assert!(t.allocate("a", 6, "a".into()).is_some());
        assert!(t.allocate("b", 6, "b".into()).is_some());
        assert_eq!(t.allocate("c", 6, "c".into()), None);
    }
}
