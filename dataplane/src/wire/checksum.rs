//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! The hot path never recomputes a checksum over a whole packet: a NAT rewrite
//! changes a handful of 16-bit words, and RFC 1624 eqn. 3,
//! `HC' = ~(~HC + ~m + m')`, patches the stored checksum from the old and new
//! values of just those words. [`Delta`] accumulates `~m + m'` over every
//! changed word once, so the same address change can be applied to the IPv4
//! header checksum and to the TCP/UDP pseudo-header checksum.
//!
//! The full computations ([`ipv4_header`], [`l4_v4`], [`l4_v6`]) are the test
//! oracle and the builders' tool (e.g. for a TCP RST), not the forwarding path.
//!
//! Every function here takes any input without panicking: odd lengths are
//! padded with a zero byte as RFC 1071 says, and sums are kept in a `u64`,
//! which cannot overflow for any slice that fits in memory.

use crate::types::proto;

/// The one's-complement sum of `data` as big-endian 16-bit words (an odd last
/// byte is padded with zero), not yet folded to 16 bits. Add several of these
/// and [`fold`] once.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds the carries of an unfolded sum back into 16 bits (end-around carry).
///
/// A non-zero input folds to `1..=0xffff`; only `0` folds to `0`.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// RFC 1624 eqn. 3 for one 16-bit word: the checksum `check` after the word
/// it covers changes from `old` to `new`.
#[inline]
pub fn update_word(check: u16, old: u16, new: u16) -> u16 {
    let mut d = Delta::new();
    d.word(old, new);
    d.apply(check)
}

/// RFC 1624 eqn. 3 for an IPv4 address change (two 16-bit words).
#[inline]
pub fn update_addr4(check: u16, old: &[u8; 4], new: &[u8; 4]) -> u16 {
    let mut d = Delta::new();
    d.bytes4(old, new);
    d.apply(check)
}

/// RFC 1624 eqn. 3 for an IPv6 address change (eight 16-bit words).
#[inline]
pub fn update_addr16(check: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    let mut d = Delta::new();
    d.bytes16(old, new);
    d.apply(check)
}

/// The accumulated change `Σ (~m + m')` of a set of covered 16-bit words,
/// applied to a checksum with RFC 1624 eqn. 3.
///
/// Build one per rewrite, feed it every changed word, then [`Delta::apply`]
/// it to each checksum that covers those words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// No change.
    #[inline]
    pub const fn new() -> Delta {
        Delta(0)
    }

    /// Records that a covered word changed from `old` to `new`.
    #[inline]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Records that four covered bytes (two aligned words) changed.
    #[inline]
    pub fn bytes4(&mut self, old: &[u8; 4], new: &[u8; 4]) {
        self.word(
            u16::from_be_bytes([old[0], old[1]]),
            u16::from_be_bytes([new[0], new[1]]),
        );
        self.word(
            u16::from_be_bytes([old[2], old[3]]),
            u16::from_be_bytes([new[2], new[3]]),
        );
    }

    /// Records that sixteen covered bytes (eight aligned words) changed.
    #[inline]
    pub fn bytes16(&mut self, old: &[u8; 16], new: &[u8; 16]) {
        for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
            self.word(
                u16::from_be_bytes([o[0], o[1]]),
                u16::from_be_bytes([n[0], n[1]]),
            );
        }
    }

    /// The checksum `check` updated by this delta: `~(~check + delta)`.
    ///
    /// Given a correct `check`, the result equals a full recomputation over
    /// the new data (both are the complement of the unique value in
    /// `1..=0xffff` congruent to the data sum modulo `0xffff`).
    #[inline]
    pub fn apply(self, check: u16) -> u16 {
        !fold(u64::from(!check) + self.0)
    }
}

/// The IPv4 header checksum of `header` (the `ihl * 4` header bytes), computed
/// as if its checksum field (bytes 10..12) were zero.
pub fn ipv4_header(header: &[u8]) -> u16 {
    let mut acc = sum(header);
    if let Some(c) = header.get(10..12) {
        // Remove the stored checksum: adding ~c subtracts c in one's complement.
        acc += u64::from(!u16::from_be_bytes([c[0], c[1]]));
    }
    !fold(acc)
}

/// The unfolded sum of the IPv4 pseudo-header (RFC 793 § 3.1, RFC 768).
#[inline]
pub fn pseudo_header_v4(src: &[u8; 4], dst: &[u8; 4], protocol: u8, len: u16) -> u64 {
    sum(src) + sum(dst) + u64::from(protocol) + u64::from(len)
}

/// The unfolded sum of the IPv6 pseudo-header (RFC 8200 § 8.1).
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: u32) -> u64 {
    sum(src) + sum(dst) + u64::from(next_header) + u64::from(len >> 16) + u64::from(len & 0xffff)
}

/// Offset of the checksum field inside an L4 header of this protocol, for the
/// protocols whose checksum is the Internet checksum.
#[inline]
pub fn l4_checksum_offset(protocol: u8) -> Option<usize> {
    match protocol {
        proto::TCP => Some(16),
        proto::UDP => Some(6),
        proto::ICMP | proto::ICMPV6 => Some(2),
        _ => None,
    }
}

/// The checksum of `segment` (L4 header and payload) plus `pseudo`, with the
/// stored checksum field taken as zero; UDP's computed `0` is sent as
/// `0xffff` (RFC 768).
fn l4_finish(pseudo: u64, protocol: u8, segment: &[u8]) -> u16 {
    let mut acc = pseudo + sum(segment);
    if let Some(off) = l4_checksum_offset(protocol) {
        if let Some(c) = segment.get(off..off + 2) {
            acc += u64::from(!u16::from_be_bytes([c[0], c[1]]));
        }
    }
    let c = !fold(acc);
    if protocol == proto::UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// The full TCP/UDP checksum of `segment` carried over IPv4 from `src` to
/// `dst`, with the IPv4 pseudo-header; the checksum field in `segment` is
/// ignored. For ICMP (no pseudo-header) use [`icmpv4`].
pub fn l4_v4(src: &[u8; 4], dst: &[u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    let len = segment.len() as u16;
    l4_finish(pseudo_header_v4(src, dst, protocol, len), protocol, segment)
}

/// The full TCP/UDP/ICMPv6 checksum of `segment` carried over IPv6 from `src`
/// to `dst`, with the IPv6 pseudo-header; the checksum field in `segment` is
/// ignored.
pub fn l4_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, segment: &[u8]) -> u16 {
    let len = segment.len() as u32;
    l4_finish(
        pseudo_header_v6(src, dst, next_header, len),
        next_header,
        segment,
    )
}

/// The ICMPv4 checksum of `message` (no pseudo-header); the checksum field in
/// `message` is ignored.
pub fn icmpv4(message: &[u8]) -> u16 {
    l4_finish(0, proto::ICMP, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // RFC 1071 § 3 worked example.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12]), 0x1200);
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn fold_keeps_nonzero() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(u64::MAX), 0xffff);
    }

    // A header from Wikipedia's "IPv4 header checksum" example.
    #[test]
    fn ipv4_header_known_value() {
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        // The stored value is ignored.
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(ipv4_header(&z), 0xb861);
        // A correct header sums to 0xffff.
        assert_eq!(fold(sum(&h)), 0xffff);
    }

    #[test]
    fn empty_and_short_inputs_do_not_panic() {
        assert_eq!(ipv4_header(&[]), 0xffff);
        let _ = ipv4_header(&[0x45]);
        let _ = l4_v4(&[0; 4], &[0; 4], proto::TCP, &[1, 2, 3]);
        let _ = l4_v6(&[0; 16], &[0; 16], proto::UDP, &[]);
        let _ = icmpv4(&[8]);
    }

    proptest! {
        #[test]
        fn incremental_equals_full(
            mut data in proptest::collection::vec(any::<u8>(), 2..64),
            at in any::<prop::sample::Index>(),
            new in any::<u16>(),
        ) {
            // Make the data sum non-zero so that both forms are defined.
            data[0] |= 1;
            let words = data.len() / 2;
            let i = at.index(words) * 2;
            if i == 0 { return Ok(()); }
            let check = !fold(sum(&data));
            let old = u16::from_be_bytes([data[i], data[i + 1]]);
            data[i..i + 2].copy_from_slice(&new.to_be_bytes());
            prop_assert_eq!(update_word(check, old, new), !fold(sum(&data)));
        }

        #[test]
        fn address_updates_equal_full(
            head in any::<u16>(),
            old4 in any::<[u8; 4]>(), new4 in any::<[u8; 4]>(),
            old16 in any::<[u8; 16]>(), new16 in any::<[u8; 16]>(),
        ) {
            let head = head | 1;
            let mut b = [0u8; 6];
            b[..2].copy_from_slice(&head.to_be_bytes());
            b[2..].copy_from_slice(&old4);
            let c = !fold(sum(&b));
            b[2..].copy_from_slice(&new4);
            prop_assert_eq!(update_addr4(c, &old4, &new4), !fold(sum(&b)));

            let mut b = [0u8; 18];
            b[..2].copy_from_slice(&head.to_be_bytes());
            b[2..].copy_from_slice(&old16);
            let c = !fold(sum(&b));
            b[2..].copy_from_slice(&new16);
            prop_assert_eq!(update_addr16(c, &old16, &new16), !fold(sum(&b)));
        }
    }
}
