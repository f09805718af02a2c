//! The hop every forwarded packet takes off its IPv4 TTL or IPv6 hop limit.
//!
//! Sluice forwards as a router does (RFC 1812 § 5.3.1, RFC 8200 § 3): a
//! packet that arrives with a TTL / hop limit of 0 or 1 is not sent on but
//! answered with ICMP time exceeded (`wire::reply::icmp_time_exceeded`),
//! and every other one leaves with one less. IPVS does the same for every
//! forwarding method (`decrement_ttl` in `ip_vs_xmit.c`, NAT, DR and
//! tunnel alike), and so does the kernel's forwarding path that
//! kube-proxy's DNAT goes through. Without it a routing loop through the
//! LB never ends and `traceroute` cannot see the LB's hop.
//!
//! Both functions read the IP header at `l3` (the parser's `l3_offset`)
//! and do nothing to a frame too short to hold it.

use crate::wire::checksum;

/// Offsets in the IPv4 header (RFC 791 § 3.1).
mod v4 {
    /// Time to live; the protocol follows it in the same 16-bit word.
    pub const TTL: usize = 8;
    /// The header checksum.
    pub const CHECKSUM: std::ops::Range<usize> = 10..12;
}

/// Offset of the hop limit in the IPv6 header (RFC 8200 § 3).
const V6_HOP_LIMIT: usize = 7;

/// Whether the packet at `l3` (IP version `version`) may not be forwarded:
/// its TTL or hop limit is 0 or 1. A frame too short to tell is not
/// called expired (the parser has refused it before this is asked).
#[inline]
pub fn expired(frame: &[u8], l3: usize, version: u8) -> bool {
    let at = if version == 6 { V6_HOP_LIMIT } else { v4::TTL };
    matches!(frame.get(l3 + at), Some(0 | 1))
}

/// Takes one off the TTL or hop limit of the packet at `l3` (IP version
/// `version`), updating the IPv4 header checksum incrementally (RFC 1624:
/// the TTL is the high byte of the word it shares with the protocol). The
/// caller has checked [`expired`]; a TTL already 0 is left at 0.
#[inline]
pub fn decrement(frame: &mut [u8], l3: usize, version: u8) {
    if version == 6 {
        if let Some(h) = frame.get_mut(l3 + V6_HOP_LIMIT) {
            *h = h.saturating_sub(1);
        }
        return;
    }
    let Some(h) = frame.get_mut(l3..l3 + v4::CHECKSUM.end) else {
        return;
    };
    let (ttl, proto) = (h[v4::TTL], h[v4::TTL + 1]);
    if ttl == 0 {
        return;
    }
    let old = u16::from_be_bytes([ttl, proto]);
    let new = u16::from_be_bytes([ttl - 1, proto]);
    let c = &mut h[v4::CHECKSUM];
    let check = checksum::update_word(u16::from_be_bytes([c[0], c[1]]), old, new);
    c.copy_from_slice(&check.to_be_bytes());
    h[v4::TTL] = ttl - 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4;
    use proptest::prelude::*;

    /// A 20-byte IPv4 header with this TTL and a correct checksum.
    fn v4_header(ttl: u8, proto: u8) -> Vec<u8> {
        let mut h = vec![
            0x45, 0, 0, 20, 0x12, 0x34, 0x40, 0, ttl, proto, 0, 0, 198, 18, 0, 1, 198, 18, 1, 2,
        ];
        let c = checksum::ipv4_header(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn ttl_0_and_1_are_expired_2_is_not() {
        for (ttl, exp) in [(0, true), (1, true), (2, false), (255, false)] {
            assert_eq!(expired(&v4_header(ttl, 17), 0, 4), exp, "ttl {ttl}");
            let mut h6 = vec![0x60; 40];
            h6[V6_HOP_LIMIT] = ttl;
            assert_eq!(expired(&h6, 0, 6), exp, "hop limit {ttl}");
        }
        // Too short to tell.
        assert!(!expired(&[0x45; 8], 0, 4));
    }

    #[test]
    fn the_hop_limit_drops_by_one() {
        let mut f = vec![0u8; 14 + 40];
        f[14 + V6_HOP_LIMIT] = 64;
        decrement(&mut f, 14, 6);
        assert_eq!(f[14 + V6_HOP_LIMIT], 63);
        assert!(f.iter().enumerate().all(|(i, &b)| i == 14 + 7 || b == 0));
    }

    proptest! {
        /// The incremental update equals a full recomputation, for every
        /// TTL and protocol, at any offset.
        #[test]
        fn decrement_keeps_the_checksum_right(ttl in 1u8..=255, proto: u8, pad in 0usize..20) {
            let mut f = vec![0xaa; pad];
            f.extend(v4_header(ttl, proto));
            decrement(&mut f, pad, 4);
            let ip = ipv4::Packet::new_checked(&f[pad..]).unwrap();
            prop_assert_eq!(ip.ttl(), ttl - 1);
            prop_assert_eq!(ip.protocol(), proto);
            prop_assert!(ip.verify_checksum());
            prop_assert!(f[..pad].iter().all(|&b| b == 0xaa));
        }
    }

    #[test]
    fn a_short_frame_is_left_alone() {
        let mut f = vec![0x45; 11];
        decrement(&mut f, 0, 4);
        assert_eq!(f, vec![0x45; 11]);
        let mut g = vec![0x60; 7];
        decrement(&mut g, 0, 6);
        assert_eq!(g, vec![0x60; 7]);
    }
}
