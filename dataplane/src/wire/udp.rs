//! UDP datagrams (RFC 768).
//!
//! Over IPv4 a stored checksum of `0` means "no checksum"; a computed `0` is
//! therefore sent as `0xffff`. Over IPv6 the checksum is mandatory (RFC 8200
//! § 8.1), save for the tunnel exception of RFC 6935.
//!
//! # No-panic contract
//!
//! [`Packet::new_checked`] (or [`Packet::check_len`] after
//! [`Packet::new_unchecked`]) guarantees that the header and the length it
//! announces fit in the buffer, after which no getter or setter panics. On a
//! buffer that was not checked, accessors may panic.

use super::checksum;
use super::parse::ParseError;
use crate::types::proto;

/// Length of the header.
pub const HEADER_LEN: usize = 8;

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Offset of the checksum field, for incremental updates on raw frames.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// A read/write view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Packet::check_len`].
    ///
    /// # Errors
    ///
    /// As [`Packet::check_len`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, ParseError> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the header and the announced length fit.
    ///
    /// # Errors
    ///
    /// [`ParseError::Truncated`] if they do not;
    /// [`ParseError::BadL4Header`] if the length field is below 8.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let ulen = usize::from(self.len());
        if ulen < HEADER_LEN {
            return Err(ParseError::BadL4Header);
        }
        if len < ulen {
            return Err(ParseError::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn get16(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        self.get16(field::SRC_PORT)
    }

    /// The destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        self.get16(field::DST_PORT)
    }

    /// The length of header and data.
    #[inline]
    pub fn len(&self) -> u16 {
        self.get16(field::LENGTH)
    }

    /// Whether the datagram carries no data.
    #[inline]
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// The checksum as stored (`0`: none, IPv4 only).
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.get16(field::CHECKSUM)
    }

    /// The data, as long as the length field says.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.len())]
    }

    /// Whether the stored checksum is right over IPv4 between `src` and
    /// `dst`; a stored `0` (none) is accepted.
    #[inline]
    pub fn verify_checksum_v4(&self, src: &[u8; 4], dst: &[u8; 4]) -> bool {
        let c = self.checksum();
        c == 0 || checksum::l4_v4(src, dst, proto::UDP, self.datagram()) == c
    }

    /// Whether the stored checksum is right over IPv6 between `src` and
    /// `dst`.
    #[inline]
    pub fn verify_checksum_v6(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        checksum::l4_v6(src, dst, proto::UDP, self.datagram()) == self.checksum()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the source port.
    #[inline]
    pub fn set_src_port(&mut self, v: u16) {
        self.set16(field::SRC_PORT, v);
    }

    /// Sets the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, v: u16) {
        self.set16(field::DST_PORT, v);
    }

    /// Sets the length field.
    #[inline]
    pub fn set_len(&mut self, v: u16) {
        self.set16(field::LENGTH, v);
    }

    /// Stores a checksum.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        self.set16(field::CHECKSUM, v);
    }

    /// Recomputes and stores the checksum over IPv4.
    #[inline]
    pub fn fill_checksum_v4(&mut self, src: &[u8; 4], dst: &[u8; 4]) {
        let c = checksum::l4_v4(src, dst, proto::UDP, self.datagram());
        self.set_checksum(c);
    }

    /// Recomputes and stores the checksum over IPv6.
    #[inline]
    pub fn fill_checksum_v6(&mut self, src: &[u8; 16], dst: &[u8; 16]) {
        let c = checksum::l4_v6(src, dst, proto::UDP, self.datagram());
        self.set_checksum(c);
    }

    /// The data, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 5353 -> 53, length 11, no checksum, "xyz", then padding.
    const DATAGRAM: [u8; 13] = [0x14, 0xe9, 0x00, 0x35, 0, 11, 0, 0, b'x', b'y', b'z', 0, 0];
    const SRC: [u8; 4] = [192, 0, 2, 1];
    const DST: [u8; 4] = [198, 51, 100, 7];

    #[test]
    fn getters() {
        let p = Packet::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.src_port(), 5353);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 11);
        assert!(!p.is_empty());
        assert_eq!(p.checksum(), 0);
        assert_eq!(p.payload(), b"xyz");
        assert!(p.verify_checksum_v4(&SRC, &DST));
    }

    #[test]
    fn check_len_errors() {
        for n in 0..11 {
            assert_eq!(
                Packet::new_checked(&DATAGRAM[..n]).err(),
                Some(ParseError::Truncated)
            );
        }
        let mut b = DATAGRAM;
        b[5] = 7;
        assert_eq!(
            Packet::new_checked(&b[..]).err(),
            Some(ParseError::BadL4Header)
        );
    }

    #[test]
    fn setters_and_checksum_round_trip() {
        let mut b = DATAGRAM;
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_src_port(1);
        p.set_dst_port(2);
        p.payload_mut()[2] = b'!';
        p.fill_checksum_v4(&SRC, &DST);
        assert_ne!(p.checksum(), 0);
        assert!(p.verify_checksum_v4(&SRC, &DST));
        assert!(!p.verify_checksum_v4(&SRC, &SRC));
        assert_eq!(p.payload(), b"xy!");
        let e = etherparse::UdpSlice::from_slice(&b[..11]).unwrap();
        let h = e.to_header();
        assert_eq!(
            h.calc_checksum_ipv4_raw(SRC, DST, e.payload()).unwrap(),
            h.checksum
        );

        let (s6, d6) = ([3u8; 16], [4u8; 16]);
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.fill_checksum_v6(&s6, &d6);
        assert!(p.verify_checksum_v6(&s6, &d6));
        let h = etherparse::UdpSlice::from_slice(&b[..11])
            .unwrap()
            .to_header();
        assert_eq!(
            h.calc_checksum_ipv6_raw(s6, d6, &b[8..11]).unwrap(),
            h.checksum
        );

        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_len(8);
        assert!(p.is_empty());
        assert!(p.payload().is_empty());
    }

    // A datagram whose computed checksum is 0 must carry 0xffff (RFC 768).
    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Pseudo-header + header sum to 0xffff when the data word is chosen
        // as the complement of everything else.
        let mut b = [0u8; 10];
        b[0..2].copy_from_slice(&1u16.to_be_bytes());
        b[2..4].copy_from_slice(&2u16.to_be_bytes());
        b[4..6].copy_from_slice(&10u16.to_be_bytes());
        let rest = checksum::pseudo_header_v4(&SRC, &DST, proto::UDP, 10) + checksum::sum(&b);
        let fill = !checksum::fold(rest);
        b[8..10].copy_from_slice(&fill.to_be_bytes());
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.fill_checksum_v4(&SRC, &DST);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum_v4(&SRC, &DST));
    }
}
