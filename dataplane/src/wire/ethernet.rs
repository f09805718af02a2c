//! Ethernet II frames with at most one VLAN tag (IEEE 802.1Q C-tag, TPID
//! 0x8100, or 802.1ad S-tag, TPID 0x88a8).
//!
//! Sluice only needs the addresses, the (possibly tagged) EtherType and where
//! the L3 header starts. One tag of either TPID is read, as the steering
//! program reads it (`bpf/steer.c`), so that both find the same L3 header; a
//! frame whose tag carries another tag (QinQ) reports the inner tag's TPID
//! as its [`Frame::ethertype`], which the parser treats as "not IP". The
//! data path serves untagged links: the pipeline drops tagged frames
//! (`DropReason::VlanTagged`) rather than send them on with their tag.
//!
//! # No-panic contract
//!
//! [`Frame::new_checked`] (or [`Frame::check_len`] after
//! [`Frame::new_unchecked`]) guarantees that every getter and setter stays in
//! bounds. On a buffer that was not checked, accessors may panic; the packet
//! path only ever builds views with `new_checked`.

use super::parse::ParseError;
use crate::types::Mac;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// TPID of an IEEE 802.1Q VLAN tag (C-tag).
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// TPID of an IEEE 802.1ad service tag (S-tag, the outer tag of QinQ).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// Length of an untagged Ethernet II header.
pub const HEADER_LEN: usize = 14;
/// Length of an Ethernet II header with one 802.1Q or 802.1ad tag.
pub const TAGGED_HEADER_LEN: usize = 18;

mod field {
    use core::ops::Range;

    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    /// Tag control information, present when ETHERTYPE is a tag TPID.
    pub const TCI: Range<usize> = 14..16;
    pub const INNER_ETHERTYPE: Range<usize> = 16..18;
}

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking its length.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer after [`Frame::check_len`].
    ///
    /// # Errors
    ///
    /// [`ParseError::Truncated`] if the header (with its tag, if tagged) does
    /// not fit in the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Frame<T>, ParseError> {
        let f = Frame::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Checks that the header, including a tag if there is one, fits.
    ///
    /// # Errors
    ///
    /// [`ParseError::Truncated`] if it does not.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        if self.is_tagged() && len < TAGGED_HEADER_LEN {
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

    /// The destination MAC.
    #[inline]
    pub fn dst_addr(&self) -> Mac {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        m
    }

    /// The source MAC.
    #[inline]
    pub fn src_addr(&self) -> Mac {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        m
    }

    /// The EtherType right after the addresses (the TPID if tagged).
    #[inline]
    pub fn outer_ethertype(&self) -> u16 {
        self.get16(field::ETHERTYPE)
    }

    /// Whether the frame carries a tag (802.1Q or 802.1ad TPID).
    #[inline]
    pub fn is_tagged(&self) -> bool {
        matches!(self.outer_ethertype(), ETHERTYPE_VLAN | ETHERTYPE_QINQ)
    }

    /// The VLAN identifier (the low 12 bits of the TCI), if tagged.
    #[inline]
    pub fn vlan_id(&self) -> Option<u16> {
        if self.is_tagged() {
            Some(self.get16(field::TCI) & 0x0fff)
        } else {
            None
        }
    }

    /// The priority code point (the top 3 bits of the TCI), if tagged.
    #[inline]
    pub fn vlan_pcp(&self) -> Option<u8> {
        if self.is_tagged() {
            Some((self.get16(field::TCI) >> 13) as u8)
        } else {
            None
        }
    }

    /// The EtherType of the payload: after the tag if tagged.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        if self.is_tagged() {
            self.get16(field::INNER_ETHERTYPE)
        } else {
            self.outer_ethertype()
        }
    }

    /// The header length: 14, or 18 with a tag.
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The payload (the L3 packet and any Ethernet padding).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC.
    #[inline]
    pub fn set_dst_addr(&mut self, mac: Mac) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac);
    }

    /// Sets the source MAC.
    #[inline]
    pub fn set_src_addr(&mut self, mac: Mac) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac);
    }

    /// Sets the EtherType of the payload (after the tag if tagged).
    #[inline]
    pub fn set_ethertype(&mut self, ethertype: u16) {
        let r = if self.is_tagged() {
            field::INNER_ETHERTYPE
        } else {
            field::ETHERTYPE
        };
        self.buffer.as_mut()[r].copy_from_slice(&ethertype.to_be_bytes());
    }

    /// Sets the VLAN identifier of a tagged frame, keeping PCP and DEI; does
    /// nothing on an untagged frame.
    #[inline]
    pub fn set_vlan_id(&mut self, vid: u16) {
        if self.is_tagged() {
            let tci = (self.get16(field::TCI) & 0xf000) | (vid & 0x0fff);
            self.buffer.as_mut()[field::TCI].copy_from_slice(&tci.to_be_bytes());
        }
    }

    /// The payload, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        &mut self.buffer.as_mut()[h..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTAGGED: [u8; 16] = [
        0x02, 0, 0, 0, 0, 0x01, // dst
        0x02, 0, 0, 0, 0, 0x02, // src
        0x08, 0x00, // IPv4
        0xaa, 0xbb, // payload
    ];

    const TAGGED: [u8; 20] = [
        0x02, 0, 0, 0, 0, 0x01, // dst
        0x02, 0, 0, 0, 0, 0x02, // src
        0x81, 0x00, 0xa0, 0x64, // 802.1Q, PCP 5, VID 100
        0x86, 0xdd, // IPv6
        0xcc, 0xdd, // payload
    ];

    #[test]
    fn untagged_getters() {
        let f = Frame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(f.dst_addr(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(f.src_addr(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(f.vlan_id(), None);
        assert_eq!(f.vlan_pcp(), None);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn tagged_getters() {
        let f = Frame::new_checked(&TAGGED[..]).unwrap();
        assert!(f.is_tagged());
        assert_eq!(f.outer_ethertype(), ETHERTYPE_VLAN);
        assert_eq!(f.vlan_id(), Some(100));
        assert_eq!(f.vlan_pcp(), Some(5));
        assert_eq!(f.ethertype(), ETHERTYPE_IPV6);
        assert_eq!(f.header_len(), 18);
        assert_eq!(f.payload(), &[0xcc, 0xdd]);
    }

    #[test]
    fn s_tag_is_a_tag() {
        let mut b = TAGGED;
        b[12..14].copy_from_slice(&ETHERTYPE_QINQ.to_be_bytes());
        let f = Frame::new_checked(&b[..]).unwrap();
        assert!(f.is_tagged());
        assert_eq!(f.vlan_id(), Some(100));
        assert_eq!(f.ethertype(), ETHERTYPE_IPV6);
        assert_eq!(f.header_len(), 18);
        assert_eq!(
            Frame::new_checked(&b[..17]).err(),
            Some(ParseError::Truncated)
        );
        // QinQ: the inner tag's TPID is the payload's EtherType.
        b[16..18].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.ethertype(), ETHERTYPE_VLAN);
    }

    #[test]
    fn short_buffers_are_rejected() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Frame::new_checked(&UNTAGGED[..n]).err(),
                Some(ParseError::Truncated)
            );
        }
        for n in 0..TAGGED_HEADER_LEN {
            assert_eq!(
                Frame::new_checked(&TAGGED[..n]).err(),
                Some(ParseError::Truncated)
            );
        }
        assert!(Frame::new_checked(&TAGGED[..TAGGED_HEADER_LEN]).is_ok());
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = TAGGED;
        let mut f = Frame::new_checked(&mut buf[..]).unwrap();
        f.set_dst_addr([1, 2, 3, 4, 5, 6]);
        f.set_src_addr([7, 8, 9, 10, 11, 12]);
        f.set_ethertype(ETHERTYPE_IPV4);
        f.set_vlan_id(0xabc);
        f.payload_mut()[0] = 0x11;
        assert_eq!(f.dst_addr(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(f.src_addr(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(f.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(f.vlan_id(), Some(0xabc));
        assert_eq!(f.vlan_pcp(), Some(5));
        assert_eq!(
            buf,
            [
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x81, 0x00, 0xaa, 0xbc, 0x08, 0x00, 0x11,
                0xdd
            ]
        );

        let mut buf = UNTAGGED;
        let mut f = Frame::new_checked(&mut buf[..]).unwrap();
        f.set_ethertype(ETHERTYPE_IPV6);
        f.set_vlan_id(7); // no-op, untagged
        assert_eq!(f.ethertype(), ETHERTYPE_IPV6);
        assert_eq!(f.vlan_id(), None);
        assert_eq!(&buf[12..14], &[0x86, 0xdd]);
    }
}
