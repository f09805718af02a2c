//! SCTP common header (RFC 9260 § 3.1) and its CRC32c checksum (RFC 9260
//! § 6.8 and Appendix A, first specified by RFC 3309).
//!
//! Unlike TCP and UDP, SCTP's checksum has no pseudo-header and is not a
//! one's-complement sum, so it cannot be patched word by word: a NAT that
//! changes the ports must run the CRC again over the whole SCTP packet (the
//! common header and every chunk). A change of IP addresses alone leaves it
//! valid.
//!
//! The CRC is CRC-32/ISCSI (Castagnoli polynomial `0x1EDC6F41`, reflected,
//! initial value and final XOR `0xFFFFFFFF`), computed with the checksum
//! field taken as zero. RFC 9260 Appendix A's reference code stores the
//! CRC's least significant byte first: on the wire the field is the CRC in
//! **little-endian** order, the one field of the common header that is not
//! in network byte order. [`Packet::checksum`] reads it back as the CRC
//! value, so it compares directly with [`sctp_checksum`].
//!
//! The table-driven CRC comes from the `crc` crate (`#![forbid(unsafe_code)]`,
//! `no_std`), with sixteen lanes ("slice-by-16", 16 KiB of tables built at
//! compile time).
//!
//! # No-panic contract
//!
//! [`Packet::new_checked`] (or [`Packet::check_len`] after
//! [`Packet::new_unchecked`]) guarantees that the 12-byte common header fits
//! in the buffer, after which no getter or setter panics. On a buffer that
//! was not checked, accessors may panic. The free functions
//! [`sctp_checksum`], [`verify_checksum`] and [`fill_checksum`] take any
//! input without panicking.

use crc::{Crc, Table, CRC_32_ISCSI};

use super::parse::ParseError;

/// Length of the common header.
pub const HEADER_LEN: usize = 12;

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const VERIFICATION_TAG: Range<usize> = 4..8;
    pub const CHECKSUM: Range<usize> = 8..12;
}

/// Offset of the checksum field inside the common header.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// CRC-32/ISCSI (CRC32c), slice-by-16.
static CRC32C: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

/// The CRC32c of `sctp_packet` (common header and chunks) with its checksum
/// field (bytes 8..12) taken as zero, whatever it holds (RFC 9260 § 6.8).
///
/// A buffer shorter than the common header is summed as it is, with
/// whatever part of bytes 8..12 it has taken as zero; such a buffer is not an
/// SCTP packet, but the function does not panic.
pub fn sctp_checksum(sctp_packet: &[u8]) -> u32 {
    let mut d = CRC32C.digest();
    let head = sctp_packet.len().min(CHECKSUM_OFFSET);
    d.update(sctp_packet.get(..head).unwrap_or_default());
    let zeros = sctp_packet.len().min(HEADER_LEN).saturating_sub(head);
    d.update(&[0u8; 4][..zeros]);
    d.update(sctp_packet.get(HEADER_LEN..).unwrap_or_default());
    d.finalize()
}

/// Whether the checksum stored in `sctp_packet` matches its contents; `false`
/// for a buffer shorter than the common header.
pub fn verify_checksum(sctp_packet: &[u8]) -> bool {
    Packet::new_checked(sctp_packet).is_ok_and(|p| p.verify_checksum())
}

/// Computes and stores the checksum of `sctp_packet` (the whole buffer is
/// the SCTP packet).
///
/// # Errors
///
/// [`ParseError::Truncated`] if the buffer is shorter than the common
/// header; it is then left unchanged.
pub fn fill_checksum(sctp_packet: &mut [u8]) -> Result<(), ParseError> {
    Packet::new_checked(sctp_packet)?.fill_checksum();
    Ok(())
}

/// A read/write view of an SCTP packet: the common header and the chunks
/// after it.
///
/// Give it exactly the IP payload (no Ethernet padding): the checksum covers
/// every byte of the buffer.
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

    /// Checks that the common header fits.
    ///
    /// # Errors
    ///
    /// [`ParseError::Truncated`] if it does not.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
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

    /// The verification tag (network byte order on the wire).
    #[inline]
    pub fn verification_tag(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VERIFICATION_TAG];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The stored CRC32c, read little-endian as RFC 9260 Appendix A stores
    /// it, so that it equals [`sctp_checksum`] of a correct packet.
    #[inline]
    pub fn checksum(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The chunks after the common header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Whether the stored checksum matches the packet (the whole buffer).
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        sctp_checksum(self.buffer.as_ref()) == self.checksum()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the source port (the checksum is not updated).
    #[inline]
    pub fn set_src_port(&mut self, v: u16) {
        self.set16(field::SRC_PORT, v);
    }

    /// Sets the destination port (the checksum is not updated).
    #[inline]
    pub fn set_dst_port(&mut self, v: u16) {
        self.set16(field::DST_PORT, v);
    }

    /// Sets the verification tag (the checksum is not updated).
    #[inline]
    pub fn set_verification_tag(&mut self, v: u32) {
        self.buffer.as_mut()[field::VERIFICATION_TAG].copy_from_slice(&v.to_be_bytes());
    }

    /// Stores a CRC32c value, least significant byte first (RFC 9260
    /// Appendix A).
    #[inline]
    pub fn set_checksum(&mut self, v: u32) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_le_bytes());
    }

    /// Recomputes and stores the checksum over the whole buffer.
    #[inline]
    pub fn fill_checksum(&mut self) {
        let c = sctp_checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// The chunks after the common header, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The CRC of the bare bytes, as a textbook bitwise CRC32c (RFC 9260
    /// Appendix A's algorithm, one bit at a time): an oracle independent of
    /// the table-driven crate.
    fn bitwise_crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// RFC 3720 § B.4 (iSCSI) CRC32c examples, and the catalogue check
    /// value over "123456789".
    #[test]
    fn rfc3720_vectors() {
        let inc: Vec<u8> = (0u8..32).collect();
        let dec: Vec<u8> = (0u8..32).rev().collect();
        let cases: [(&[u8], u32); 5] = [
            (&[0u8; 32], 0x8A91_36AA),
            (&[0xffu8; 32], 0x62A8_AB43),
            (&inc, 0x46DD_794E),
            (&dec, 0x113F_DB5C),
            (b"123456789", 0xE306_9283),
        ];
        for (data, want) in cases {
            assert_eq!(CRC32C.checksum(data), want, "{data:02x?}");
            assert_eq!(bitwise_crc32c(data), want, "{data:02x?}");
        }
        // RFC 3720 § B.4 lists the 32 zero bytes' CRC as the bytes
        // "aa 36 91 8a": the little-endian wire order SCTP uses too.
        assert_eq!(0x8A91_36AAu32.to_le_bytes(), [0xaa, 0x36, 0x91, 0x8a]);
    }

    /// RFC 3720 § B.4's iSCSI Read (10) command PDU.
    #[test]
    fn rfc3720_iscsi_pdu() {
        #[rustfmt::skip]
        let pdu: [u8; 48] = [
            0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
            0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18,
            0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(bitwise_crc32c(&pdu), 0xD996_3A56);
        assert_eq!(CRC32C.checksum(&pdu), 0xD996_3A56);
    }

    /// An SCTP INIT from 10.0.0.1:5000 to 10.0.0.2:80 (chunk: type 1, flags
    /// 0, length 20, initiate tag 0x01020304, a_rwnd 65536, 10 outbound and
    /// 65535 inbound streams, initial TSN 0x0a0b0c0d), whose checksum bytes
    /// were produced by an independent implementation (Scapy 2.7's
    /// `SCTP()/SCTPChunkInit()`, which computes CRC32c in pure Python).
    const INIT: [u8; 32] = [
        0x13, 0x88, 0x00, 0x50, // ports
        0x00, 0x00, 0x00, 0x00, // verification tag: 0 in an INIT
        0x00, 0x00, 0x00, 0x00, // checksum, filled below
        0x01, 0x00, 0x00, 0x14, // INIT, flags, length 20
        0x01, 0x02, 0x03, 0x04, // initiate tag
        0x00, 0x01, 0x00, 0x00, // a_rwnd
        0x00, 0x0a, 0xff, 0xff, // streams
        0x0a, 0x0b, 0x0c, 0x0d, // initial TSN
    ];
    /// The checksum field Scapy wrote for [`INIT`] (bytes 8..12 on the wire).
    const INIT_CHECKSUM_WIRE: [u8; 4] = [0xbd, 0xc1, 0xc7, 0x74];

    #[test]
    fn init_packet_matches_independent_implementation() {
        let mut pkt = INIT;
        pkt[8..12].copy_from_slice(&INIT_CHECKSUM_WIRE);
        let p = Packet::new_checked(&pkt[..]).unwrap();
        assert_eq!(p.src_port(), 5000);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.verification_tag(), 0);
        assert!(p.verify_checksum());
        assert!(verify_checksum(&pkt));
        assert_eq!(sctp_checksum(&pkt), u32::from_le_bytes(INIT_CHECKSUM_WIRE));
        assert_eq!(sctp_checksum(&INIT), bitwise_crc32c(&INIT));

        let mut fresh = INIT;
        fill_checksum(&mut fresh).unwrap();
        assert_eq!(fresh, pkt);

        // Any change of a covered byte (here the destination port) breaks it.
        pkt[3] = 0x51;
        assert!(!verify_checksum(&pkt));
        Packet::new_checked(&mut pkt[..]).unwrap().fill_checksum();
        assert!(verify_checksum(&pkt));
    }

    #[test]
    fn setters_round_trip() {
        let mut b = [0u8; 16];
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_src_port(2905);
        p.set_dst_port(2906);
        p.set_verification_tag(0xdead_beef);
        p.set_checksum(0x1234_5678);
        p.payload_mut().copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(p.src_port(), 2905);
        assert_eq!(p.dst_port(), 2906);
        assert_eq!(p.verification_tag(), 0xdead_beef);
        assert_eq!(p.checksum(), 0x1234_5678);
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
        assert_eq!(
            b[..12],
            [0x0b, 0x59, 0x0b, 0x5a, 0xde, 0xad, 0xbe, 0xef, 0x78, 0x56, 0x34, 0x12]
        );
    }

    #[test]
    fn short_buffers() {
        for n in 0..HEADER_LEN {
            let mut b = vec![0x5au8; n];
            assert_eq!(Packet::new_checked(&b[..]), Err(ParseError::Truncated));
            assert!(!verify_checksum(&b));
            assert_eq!(fill_checksum(&mut b), Err(ParseError::Truncated));
            assert!(b.iter().all(|&x| x == 0x5a));
            // Defined as the CRC with the present checksum bytes zeroed.
            let mut z = b.clone();
            for x in z.iter_mut().skip(CHECKSUM_OFFSET) {
                *x = 0;
            }
            assert_eq!(sctp_checksum(&b), bitwise_crc32c(&z));
        }
    }

    proptest! {
        #[test]
        fn checksum_ignores_field_and_matches_bitwise(
            mut pkt in proptest::collection::vec(any::<u8>(), 0..300),
            field in any::<[u8; 4]>(),
        ) {
            let c = sctp_checksum(&pkt);
            if pkt.len() >= HEADER_LEN {
                pkt[8..12].copy_from_slice(&field);
                prop_assert_eq!(sctp_checksum(&pkt), c);
                pkt[8..12].copy_from_slice(&[0; 4]);
                prop_assert_eq!(bitwise_crc32c(&pkt), c);
                fill_checksum(&mut pkt).unwrap();
                prop_assert!(verify_checksum(&pkt));
                prop_assert_eq!(&pkt[8..12], &c.to_le_bytes()[..]);
            }
        }
    }
}
