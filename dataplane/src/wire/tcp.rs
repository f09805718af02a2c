//! TCP segments (RFC 9293).
//!
//! The view covers the header (with options) and whatever follows it in the
//! buffer; give it exactly the IP payload so that [`Packet::payload`] is the
//! segment's data.
//!
//! # No-panic contract
//!
//! [`Packet::new_checked`] (or [`Packet::check_len`] after
//! [`Packet::new_unchecked`]) guarantees that the header and its options fit
//! in the buffer, after which no getter or setter panics. On a buffer that
//! was not checked, accessors may panic.

use super::checksum;
use super::parse::ParseError;
use crate::types::proto;

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// TCP flag bits as found in byte 13 of the header (RFC 9293 § 3.1).
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN echo (RFC 3168).
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced (RFC 3168).
    pub const CWR: u8 = 0x80;
}

/// Whether a TCP flag byte is a combination a real stack sends.
///
/// The table of Linux conntrack (`tcp_valid_flags` in
/// `net/netfilter/nf_conntrack_proto_tcp.c`), which marks every other
/// combination INVALID, and kube-proxy drops INVALID packets in
/// `KUBE-FORWARD`: SYN, SYN+URG, SYN+ACK, RST, RST+ACK, FIN+ACK,
/// FIN+ACK+URG, ACK, ACK+URG, each with any of PSH, ECE and CWR. So SYN+FIN,
/// SYN+RST, a FIN without ACK and a segment with no flags (scanners' "null",
/// "FIN" and "Xmas" probes) are refused.
#[inline]
pub fn valid_flag_combination(flags: u8) -> bool {
    use tcp_flags::{ACK, CWR, ECE, FIN, PSH, RST, SYN, URG};
    const VALID: [u8; 9] = [
        SYN,
        SYN | URG,
        SYN | ACK,
        RST,
        RST | ACK,
        FIN | ACK,
        FIN | ACK | URG,
        ACK,
        ACK | URG,
    ];
    let f = flags & !(PSH | ECE | CWR);
    VALID.contains(&f)
}

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Offset of the checksum field, for incremental updates on raw frames.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// A read/write view of a TCP segment.
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

    /// Checks that the header and its options fit.
    ///
    /// # Errors
    ///
    /// [`ParseError::Truncated`] if they do not;
    /// [`ParseError::BadL4Header`] if the data offset is below 5.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let hlen = self.header_len();
        if hlen < MIN_HEADER_LEN {
            return Err(ParseError::BadL4Header);
        }
        if len < hlen {
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

    fn get32(&self, r: core::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
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

    /// The sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        self.get32(field::SEQ_NUM)
    }

    /// The acknowledgment number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        self.get32(field::ACK_NUM)
    }

    /// The data offset field, in 32-bit words.
    #[inline]
    pub fn data_offset(&self) -> u8 {
        self.buffer.as_ref()[field::DATA_OFF] >> 4
    }

    /// The header length in bytes (`data_offset * 4`).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset()) * 4
    }

    /// The flag byte ([`tcp_flags`]).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether FIN is set.
    #[inline]
    pub fn fin(&self) -> bool {
        self.flags() & tcp_flags::FIN != 0
    }

    /// Whether SYN is set.
    #[inline]
    pub fn syn(&self) -> bool {
        self.flags() & tcp_flags::SYN != 0
    }

    /// Whether RST is set.
    #[inline]
    pub fn rst(&self) -> bool {
        self.flags() & tcp_flags::RST != 0
    }

    /// Whether PSH is set.
    #[inline]
    pub fn psh(&self) -> bool {
        self.flags() & tcp_flags::PSH != 0
    }

    /// Whether ACK is set.
    #[inline]
    pub fn ack(&self) -> bool {
        self.flags() & tcp_flags::ACK != 0
    }

    /// The window size.
    #[inline]
    pub fn window_len(&self) -> u16 {
        self.get16(field::WIN_SIZE)
    }

    /// The checksum as stored.
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.get16(field::CHECKSUM)
    }

    /// The urgent pointer.
    #[inline]
    pub fn urgent_at(&self) -> u16 {
        self.get16(field::URGENT)
    }

    /// The options (empty with a 20-byte header).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// The data after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Whether the stored checksum is right for a segment (the whole buffer)
    /// carried over IPv4 between `src` and `dst`.
    #[inline]
    pub fn verify_checksum_v4(&self, src: &[u8; 4], dst: &[u8; 4]) -> bool {
        checksum::l4_v4(src, dst, proto::TCP, self.buffer.as_ref()) == self.checksum()
    }

    /// Whether the stored checksum is right for a segment (the whole buffer)
    /// carried over IPv6 between `src` and `dst`.
    #[inline]
    pub fn verify_checksum_v6(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        checksum::l4_v6(src, dst, proto::TCP, self.buffer.as_ref()) == self.checksum()
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

    /// Sets the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::SEQ_NUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the acknowledgment number.
    #[inline]
    pub fn set_ack_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::ACK_NUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the header length in bytes (rounded down to 32-bit words),
    /// keeping the reserved bits.
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let words = ((len / 4) as u8) & 0x0f;
        let b = &mut self.buffer.as_mut()[field::DATA_OFF];
        *b = (*b & 0x0f) | (words << 4);
    }

    /// Sets the flag byte ([`tcp_flags`]).
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the window size.
    #[inline]
    pub fn set_window_len(&mut self, v: u16) {
        self.set16(field::WIN_SIZE, v);
    }

    /// Stores a checksum.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        self.set16(field::CHECKSUM, v);
    }

    /// Sets the urgent pointer.
    #[inline]
    pub fn set_urgent_at(&mut self, v: u16) {
        self.set16(field::URGENT, v);
    }

    /// Recomputes and stores the checksum of a segment (the whole buffer)
    /// carried over IPv4.
    #[inline]
    pub fn fill_checksum_v4(&mut self, src: &[u8; 4], dst: &[u8; 4]) {
        let c = checksum::l4_v4(src, dst, proto::TCP, self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// Recomputes and stores the checksum of a segment (the whole buffer)
    /// carried over IPv6.
    #[inline]
    pub fn fill_checksum_v6(&mut self, src: &[u8; 16], dst: &[u8; 16]) {
        let c = checksum::l4_v6(src, dst, proto::TCP, self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// The data after the header, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        &mut self.buffer.as_mut()[h..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1234 -> 80, seq 1, ack 2, 24-byte header (one MSS option), SYN|ACK.
    const SEGMENT: [u8; 27] = [
        0x04, 0xd2, 0x00, 0x50, // ports
        0, 0, 0, 1, // seq
        0, 0, 0, 2, // ack
        0x60, 0x12, 0xff, 0xff, // data offset 6, SYN|ACK, window
        0, 0, 0, 0, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
        b'a', b'b', b'c',
    ];
    const SRC: [u8; 4] = [10, 0, 0, 1];
    const DST: [u8; 4] = [10, 0, 0, 2];

    #[test]
    fn getters() {
        let p = Packet::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!(p.src_port(), 1234);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), 1);
        assert_eq!(p.ack_number(), 2);
        assert_eq!(p.data_offset(), 6);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), tcp_flags::SYN | tcp_flags::ACK);
        assert!(p.syn() && p.ack() && !p.fin() && !p.rst() && !p.psh());
        assert_eq!(p.window_len(), 0xffff);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(p.options(), &[2, 4, 5, 0xb4]);
        assert_eq!(p.payload(), b"abc");
    }

    #[test]
    fn check_len_errors() {
        for n in 0..24 {
            assert_eq!(
                Packet::new_checked(&SEGMENT[..n]).err(),
                Some(ParseError::Truncated)
            );
        }
        let mut b = SEGMENT;
        b[12] = 0x40;
        assert_eq!(
            Packet::new_checked(&b[..]).err(),
            Some(ParseError::BadL4Header)
        );
    }

    #[test]
    fn setters_and_checksum_round_trip() {
        let mut b = SEGMENT;
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_src_port(40000);
        p.set_dst_port(443);
        p.set_seq_number(0xdead_beef);
        p.set_ack_number(0x0102_0304);
        p.set_flags(tcp_flags::RST | tcp_flags::ACK);
        p.set_window_len(512);
        p.set_urgent_at(7);
        p.set_header_len(24);
        p.payload_mut()[0] = b'z';
        p.fill_checksum_v4(&SRC, &DST);
        assert!(p.verify_checksum_v4(&SRC, &DST));
        assert!(!p.verify_checksum_v4(&DST, &DST));
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 443);
        assert_eq!(p.seq_number(), 0xdead_beef);
        assert_eq!(p.ack_number(), 0x0102_0304);
        assert!(p.rst() && p.ack());
        assert_eq!(p.window_len(), 512);
        assert_eq!(p.urgent_at(), 7);
        assert_eq!(p.payload(), b"zbc");

        let e = etherparse::TcpSlice::from_slice(&b).unwrap();
        assert_eq!(e.calc_checksum_ipv4(SRC, DST).unwrap(), e.checksum());
        assert_eq!(e.source_port(), 40000);
        assert_eq!(e.sequence_number(), 0xdead_beef);

        let s6 = [1u8; 16];
        let d6 = [2u8; 16];
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.fill_checksum_v6(&s6, &d6);
        assert!(p.verify_checksum_v6(&s6, &d6));
        let e = etherparse::TcpSlice::from_slice(&b).unwrap();
        assert_eq!(e.calc_checksum_ipv6(s6, d6).unwrap(), e.checksum());
    }

    #[test]
    fn flag_combinations_follow_conntrack() {
        use tcp_flags::*;
        for ok in [
            SYN,
            SYN | ECE | CWR,
            SYN | ACK,
            SYN | ACK | ECE,
            ACK,
            ACK | PSH,
            FIN | ACK,
            FIN | ACK | PSH,
            RST,
            RST | ACK,
            ACK | URG,
        ] {
            assert!(valid_flag_combination(ok), "{ok:#04x}");
        }
        for bad in [
            0,
            SYN | FIN,
            SYN | FIN | ACK,
            SYN | RST,
            FIN,
            FIN | PSH | URG,
            PSH,
            SYN | FIN | RST | PSH | ACK | URG,
        ] {
            assert!(!valid_flag_combination(bad), "{bad:#04x}");
        }
        // Exactly 9 combinations of FIN/SYN/RST/ACK/URG, times 8 of the rest.
        assert_eq!(
            (0..=255u8).filter(|&f| valid_flag_combination(f)).count(),
            9 * 8
        );
    }
}
