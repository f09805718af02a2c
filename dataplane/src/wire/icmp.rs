//! ICMP (RFC 792) and ICMPv6 (RFC 4443) messages.
//!
//! Both share the first eight bytes that Sluice reads: type, code, checksum
//! and, for echo messages, identifier and sequence number. The checksum of
//! ICMPv4 covers the message only; that of ICMPv6 also covers the IPv6
//! pseudo-header.
//!
//! # No-panic contract
//!
//! [`Packet::new_checked`] (or [`Packet::check_len`] after
//! [`Packet::new_unchecked`]) guarantees that the eight-byte header fits,
//! after which no getter or setter panics. On a buffer that was not checked,
//! accessors may panic.

use super::checksum;
use super::parse::ParseError;
use crate::types::proto;

/// Length of the header Sluice reads (type, code, checksum, 4 more bytes).
pub const HEADER_LEN: usize = 8;

/// ICMPv4 echo reply.
pub const V4_ECHO_REPLY: u8 = 0;
/// ICMPv4 destination unreachable.
pub const V4_DEST_UNREACHABLE: u8 = 3;
/// ICMPv4 echo request.
pub const V4_ECHO_REQUEST: u8 = 8;
/// ICMPv4 time exceeded.
pub const V4_TIME_EXCEEDED: u8 = 11;
/// ICMPv6 destination unreachable.
pub const V6_DEST_UNREACHABLE: u8 = 1;
/// ICMPv6 packet too big.
pub const V6_PACKET_TOO_BIG: u8 = 2;
/// ICMPv6 time exceeded.
pub const V6_TIME_EXCEEDED: u8 = 3;
/// ICMPv6 echo request.
pub const V6_ECHO_REQUEST: u8 = 128;
/// ICMPv6 echo reply.
pub const V6_ECHO_REPLY: u8 = 129;

mod field {
    use core::ops::Range;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQNO: Range<usize> = 6..8;
}

/// Offset of the checksum field, for incremental updates on raw frames.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// A read/write view of an ICMP or ICMPv6 message.
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

    /// Checks that the eight-byte header fits.
    ///
    /// # Errors
    ///
    /// [`ParseError::Truncated`] if it does not.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(ParseError::Truncated)
        } else {
            Ok(())
        }
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

    /// The message type.
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The message code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The checksum as stored.
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.get16(field::CHECKSUM)
    }

    /// The echo identifier (meaningful for echo request/reply).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        self.get16(field::ECHO_IDENT)
    }

    /// The echo sequence number (meaningful for echo request/reply).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        self.get16(field::ECHO_SEQNO)
    }

    /// Everything after the eight-byte header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Whether the stored ICMPv4 checksum is right (the whole buffer is the
    /// message).
    #[inline]
    pub fn verify_checksum_v4(&self) -> bool {
        checksum::icmpv4(self.buffer.as_ref()) == self.checksum()
    }

    /// Whether the stored ICMPv6 checksum is right between `src` and `dst`.
    #[inline]
    pub fn verify_checksum_v6(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        checksum::l4_v6(src, dst, proto::ICMPV6, self.buffer.as_ref()) == self.checksum()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the message type.
    #[inline]
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    /// Sets the message code.
    #[inline]
    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    /// Stores a checksum.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        self.set16(field::CHECKSUM, v);
    }

    /// Sets the echo identifier.
    #[inline]
    pub fn set_echo_ident(&mut self, v: u16) {
        self.set16(field::ECHO_IDENT, v);
    }

    /// Sets the echo sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, v: u16) {
        self.set16(field::ECHO_SEQNO, v);
    }

    /// Recomputes and stores the ICMPv4 checksum.
    #[inline]
    pub fn fill_checksum_v4(&mut self) {
        let c = checksum::icmpv4(self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// Recomputes and stores the ICMPv6 checksum.
    #[inline]
    pub fn fill_checksum_v6(&mut self, src: &[u8; 16], dst: &[u8; 16]) {
        let c = checksum::l4_v6(src, dst, proto::ICMPV6, self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// Everything after the eight-byte header, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echo request, id 0x1234, seq 1, "ping".
    const ECHO: [u8; 12] = [8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];

    #[test]
    fn getters() {
        let p = Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!(p.msg_type(), V4_ECHO_REQUEST);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.echo_ident(), 0x1234);
        assert_eq!(p.echo_seq_no(), 1);
        assert_eq!(p.payload(), b"ping");
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&ECHO[..n]).err(),
                Some(ParseError::Truncated)
            );
        }
    }

    #[test]
    fn setters_and_checksums() {
        let mut b = ECHO;
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_msg_type(V4_ECHO_REPLY);
        p.set_msg_code(0);
        p.set_echo_ident(7);
        p.set_echo_seq_no(9);
        p.payload_mut()[0] = b'P';
        p.fill_checksum_v4();
        assert!(p.verify_checksum_v4());
        assert_eq!(p.msg_type(), 0);
        assert_eq!(p.echo_ident(), 7);
        assert_eq!(p.echo_seq_no(), 9);
        let e = etherparse::Icmpv4Slice::from_slice(&b).unwrap();
        assert_eq!(
            e.header().icmp_type.calc_checksum(e.payload()),
            e.checksum()
        );

        let (s, d) = ([0xfe; 16], [0xfd; 16]);
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_msg_type(V6_ECHO_REQUEST);
        p.fill_checksum_v6(&s, &d);
        assert!(p.verify_checksum_v6(&s, &d));
        let e = etherparse::Icmpv6Slice::from_slice(&b).unwrap();
        assert_eq!(
            e.header()
                .icmp_type
                .calc_checksum(s, d, e.payload())
                .unwrap(),
            e.checksum()
        );
    }
}
