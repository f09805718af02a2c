//! IPv6 packets (RFC 8200) and the generic extension-header layout.
//!
//! The view spans the fixed 40-byte header and the payload that the payload
//! length announces; Ethernet padding after it is not payload. Jumbograms
//! (payload length 0 with a Jumbo Payload option) are not supported.
//!
//! Hop-by-Hop, Routing and Destination Options headers share one layout
//! (next header, length in 8-octet units beyond the first 8, RFC 8200 § 4):
//! [`ext_header`] reads it so the parser can skip them.
//!
//! # No-panic contract
//!
//! [`Packet::new_checked`] (or [`Packet::check_len`] after
//! [`Packet::new_unchecked`]) guarantees that the header and the announced
//! payload fit in the buffer, after which no getter or setter panics. On a
//! buffer that was not checked, accessors may panic. [`ext_header`] never
//! panics.

use super::parse::ParseError;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// Next-header value of the Hop-by-Hop Options header.
pub const NEXT_HOP_BY_HOP: u8 = 0;
/// Next-header value of the Routing header.
pub const NEXT_ROUTING: u8 = 43;
/// Next-header value of the Fragment header.
pub const NEXT_FRAGMENT: u8 = 44;
/// Next-header value of the Destination Options header.
pub const NEXT_DEST_OPTS: u8 = 60;
/// Next-header value meaning "no next header".
pub const NEXT_NONE: u8 = 59;

mod field {
    use core::ops::Range;

    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// A read/write view of an IPv6 packet.
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

    /// Checks that the fixed header and the announced payload fit.
    ///
    /// # Errors
    ///
    /// [`ParseError::Truncated`] if they do not.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < HEADER_LEN + usize::from(self.payload_len()) {
            return Err(ParseError::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn word0(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The version field (6 for IPv6).
    #[inline]
    pub fn version(&self) -> u8 {
        (self.word0() >> 28) as u8
    }

    /// The traffic class.
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.word0() >> 20) as u8
    }

    /// The flow label (20 bits).
    #[inline]
    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }

    /// The payload length (extension headers included).
    #[inline]
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PAYLOAD_LEN];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The next header after the fixed header.
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The source address.
    #[inline]
    pub fn src_addr(&self) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        a
    }

    /// The destination address.
    #[inline]
    pub fn dst_addr(&self) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        a
    }

    /// The payload (extension headers and upper-layer data), as long as the
    /// payload length says.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version, traffic class and flow label.
    #[inline]
    pub fn set_version_tc_flow(&mut self, version: u8, traffic_class: u8, flow_label: u32) {
        let w = (u32::from(version) << 28)
            | (u32::from(traffic_class) << 20)
            | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    /// Sets the payload length.
    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the next header.
    #[inline]
    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = v;
    }

    /// Sets the hop limit.
    #[inline]
    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, a: [u8; 16]) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a);
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, a: [u8; 16]) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a);
    }

    /// The payload, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// Reads the generic layout of a Hop-by-Hop, Routing or Destination Options
/// header at the start of `buf`: its next header and its length in bytes.
///
/// # Errors
///
/// [`ParseError::Truncated`] if the buffer is shorter than the header.
#[inline]
pub fn ext_header(buf: &[u8]) -> Result<(u8, usize), ParseError> {
    match buf {
        [next, len, ..] => {
            let hlen = (usize::from(*len) + 1) * 8;
            if buf.len() < hlen {
                Err(ParseError::Truncated)
            } else {
                Ok((*next, hlen))
            }
        }
        _ => Err(ParseError::Truncated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2001:db8::1 -> 2001:db8::2, TCP, 4 bytes of payload, then padding.
    const PACKET: [u8; 46] = [
        0x60, 0x12, 0x34, 0x56, 0x00, 0x04, 0x06, 0x40, // ver/tc/flow, len, nh, hop
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // src
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // dst
        0xa, 0xb, 0xc, 0xd, // payload
        0, 0, // padding
    ];

    #[test]
    fn getters() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0x01);
        assert_eq!(p.flow_label(), 0x23456);
        assert_eq!(p.payload_len(), 4);
        assert_eq!(p.next_header(), 6);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr()[15], 1);
        assert_eq!(p.dst_addr()[15], 2);
        assert_eq!(p.payload(), &[0xa, 0xb, 0xc, 0xd]);
        let e = etherparse::Ipv6HeaderSlice::from_slice(&PACKET).unwrap();
        assert_eq!(e.source(), p.src_addr());
        assert_eq!(e.destination(), p.dst_addr());
        assert_eq!(e.flow_label().value(), p.flow_label());
    }

    #[test]
    fn truncated() {
        for n in 0..44 {
            assert_eq!(
                Packet::new_checked(&PACKET[..n]).err(),
                Some(ParseError::Truncated)
            );
        }
        assert!(Packet::new_checked(&PACKET[..44]).is_ok());
    }

    #[test]
    fn setters_round_trip() {
        let mut b = PACKET;
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_version_tc_flow(6, 0xab, 0xfffff);
        p.set_payload_len(2);
        p.set_next_header(17);
        p.set_hop_limit(1);
        p.set_src_addr([1; 16]);
        p.set_dst_addr([2; 16]);
        p.payload_mut()[1] = 0xee;
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xab);
        assert_eq!(p.flow_label(), 0xfffff);
        assert_eq!(p.payload(), &[0xa, 0xee]);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 1);
        assert_eq!(p.src_addr(), [1; 16]);
        assert_eq!(p.dst_addr(), [2; 16]);
        assert_eq!(&b[..8], &[0x6a, 0xbf, 0xff, 0xff, 0, 2, 17, 1]);
    }

    #[test]
    fn ext_header_layout() {
        assert_eq!(ext_header(&[]), Err(ParseError::Truncated));
        assert_eq!(ext_header(&[6]), Err(ParseError::Truncated));
        assert_eq!(
            ext_header(&[6, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::Truncated)
        );
        assert_eq!(ext_header(&[6, 0, 0, 0, 0, 0, 0, 0]), Ok((6, 8)));
        assert_eq!(
            ext_header(&[17, 1, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::Truncated)
        );
        assert_eq!(
            ext_header(&[17, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Ok((17, 16))
        );
    }
}
