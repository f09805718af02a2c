//! IPv4 packets (RFC 791).
//!
//! The view spans one IPv4 packet: header, options and payload. The payload
//! ends where the header's total length says, not where the buffer ends, so
//! Ethernet padding after a short packet is never taken for payload.
//!
//! # No-panic contract
//!
//! [`Packet::new_checked`] (or [`Packet::check_len`] after
//! [`Packet::new_unchecked`]) guarantees that the header, the options and the
//! total length all fit in the buffer, after which no getter or setter
//! panics. On a buffer that was not checked, accessors may panic.

use super::checksum;
use super::parse::ParseError;

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

mod field {
    use core::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Don't Fragment flag in the flags/offset word.
const FLAG_DF: u16 = 0x4000;
/// More Fragments flag in the flags/offset word.
const FLAG_MF: u16 = 0x2000;
/// Fragment offset (in 8-byte units) in the flags/offset word.
const OFFSET_MASK: u16 = 0x1fff;

/// Option type of End of Option List (RFC 791).
pub const OPT_END: u8 = 0;
/// Option type of No Operation (RFC 791).
pub const OPT_NOP: u8 = 1;
/// Option type of Record Route (RFC 791).
pub const OPT_RR: u8 = 7;
/// Option type of Timestamp (RFC 791).
pub const OPT_TIMESTAMP: u8 = 68;
/// Option type of Loose Source and Record Route (RFC 791).
pub const OPT_LSRR: u8 = 131;
/// Option type of Strict Source and Record Route (RFC 791).
pub const OPT_SSRR: u8 = 137;

/// What is wrong with an IPv4 option list ([`check_options`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionsError {
    /// A loose or strict source route (LSRR, SSRR).
    SourceRoute,
    /// An option's length is below 2 (or below its type's minimum), or runs
    /// past the header.
    BadLength,
}

/// Checks an IPv4 option list (the bytes between the fixed header and
/// IHL * 4) the way the kernel's `ip_options_compile` reads it: End of
/// Option List ends the list, No Operation is one byte, every other option
/// is type, length (counting both bytes), data, and must fit; Record Route
/// and the source routes take at least 3 bytes, Timestamp at least 4.
///
/// Source routes are refused whole: a host with the kernel's default
/// `accept_source_route = 0` drops them (`ip_rcv_options`), and a load
/// balancer must not let a sender choose the path of a packet it forwards
/// to a backend, nor the path of the backend's reply (RFC 1812 § 5.2.4.1
/// allows a router to refuse them; RFC 7126 § 4.3 and § 4.4 advise it).
///
/// # Errors
///
/// [`OptionsError::SourceRoute`] for LSRR or SSRR;
/// [`OptionsError::BadLength`] for a broken length.
pub fn check_options(mut opts: &[u8]) -> Result<(), OptionsError> {
    while let [kind, rest @ ..] = opts {
        match *kind {
            OPT_END => return Ok(()),
            OPT_NOP => opts = rest,
            kind => {
                let len = usize::from(*rest.first().ok_or(OptionsError::BadLength)?);
                let min = match kind {
                    OPT_RR | OPT_LSRR | OPT_SSRR => 3,
                    OPT_TIMESTAMP => 4,
                    _ => 2,
                };
                if len < min || len > opts.len() {
                    return Err(OptionsError::BadLength);
                }
                if matches!(kind, OPT_LSRR | OPT_SSRR) {
                    return Err(OptionsError::SourceRoute);
                }
                opts = &opts[len..];
            }
        }
    }
    Ok(())
}

/// A read/write view of an IPv4 packet.
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

    /// Checks that the fixed header, the options and the total length fit.
    ///
    /// The version field is not checked here (the parser does that).
    ///
    /// # Errors
    ///
    /// [`ParseError::Truncated`] if the buffer is shorter than the header or
    /// the total length; [`ParseError::BadIpHeader`] if the IHL is below 5 or
    /// the total length is shorter than the header.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let hlen = self.header_len();
        if hlen < MIN_HEADER_LEN {
            return Err(ParseError::BadIpHeader);
        }
        if len < hlen {
            return Err(ParseError::Truncated);
        }
        let total = usize::from(self.total_len());
        if total < hlen {
            return Err(ParseError::BadIpHeader);
        }
        if len < total {
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

    /// The version field (4 for IPv4).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The IHL field, in 32-bit words.
    #[inline]
    pub fn ihl(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] & 0x0f
    }

    /// The header length in bytes (`ihl * 4`).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl()) * 4
    }

    /// The DSCP/ECN byte (formerly type of service).
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// The total length of header and payload.
    #[inline]
    pub fn total_len(&self) -> u16 {
        self.get16(field::LENGTH)
    }

    /// The identification field.
    #[inline]
    pub fn ident(&self) -> u16 {
        self.get16(field::IDENT)
    }

    /// Whether Don't Fragment is set.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.get16(field::FLG_OFF) & FLAG_DF != 0
    }

    /// Whether More Fragments is set.
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.get16(field::FLG_OFF) & FLAG_MF != 0
    }

    /// The fragment offset in bytes (the field times 8).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (self.get16(field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// Whether this is any fragment of a larger datagram (MF set or a
    /// non-zero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.get16(field::FLG_OFF) & (FLAG_MF | OFFSET_MASK) != 0
    }

    /// The time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The protocol of the payload.
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The header checksum as stored.
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.get16(field::CHECKSUM)
    }

    /// The source address.
    #[inline]
    pub fn src_addr(&self) -> [u8; 4] {
        let b = &self.buffer.as_ref()[field::SRC_ADDR];
        [b[0], b[1], b[2], b[3]]
    }

    /// The destination address.
    #[inline]
    pub fn dst_addr(&self) -> [u8; 4] {
        let b = &self.buffer.as_ref()[field::DST_ADDR];
        [b[0], b[1], b[2], b[3]]
    }

    /// The header options (empty when `ihl == 5`).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// Whether the stored header checksum is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(&self.buffer.as_ref()[..self.header_len()])) == 0xffff
    }

    /// The payload: from the end of the header to the total length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets version and IHL (in 32-bit words).
    #[inline]
    pub fn set_version_ihl(&mut self, version: u8, ihl: u8) {
        self.buffer.as_mut()[field::VER_IHL] = (version << 4) | (ihl & 0x0f);
    }

    /// Sets the DSCP/ECN byte.
    #[inline]
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    /// Sets the total length.
    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        self.set16(field::LENGTH, len);
    }

    /// Sets the identification field.
    #[inline]
    pub fn set_ident(&mut self, v: u16) {
        self.set16(field::IDENT, v);
    }

    /// Sets the flags and fragment offset: `dont_frag`, `more_frags` and the
    /// offset in bytes (truncated to a multiple of 8).
    #[inline]
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut w = (offset >> 3) & OFFSET_MASK;
        if dont_frag {
            w |= FLAG_DF;
        }
        if more_frags {
            w |= FLAG_MF;
        }
        self.set16(field::FLG_OFF, w);
    }

    /// Sets the time to live.
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol of the payload.
    #[inline]
    pub fn set_protocol(&mut self, p: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = p;
    }

    /// Stores a header checksum.
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.set16(field::CHECKSUM, c);
    }

    /// Sets the source address (the checksum is not updated).
    #[inline]
    pub fn set_src_addr(&mut self, a: [u8; 4]) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a);
    }

    /// Sets the destination address (the checksum is not updated).
    #[inline]
    pub fn set_dst_addr(&mut self, a: [u8; 4]) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a);
    }

    /// Recomputes and stores the header checksum.
    #[inline]
    pub fn fill_checksum(&mut self) {
        let c = checksum::ipv4_header(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(c);
    }

    /// The payload, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buffer.as_mut()[h..t]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 192.168.0.1 -> 192.168.0.199, UDP, total length 28, DF, TTL 64.
    const PACKET: [u8; 30] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7, // header
        1, 2, 3, 4, 5, 6, 7, 8, // payload
        0, 0, // Ethernet padding
    ];

    fn fixture() -> [u8; 30] {
        let mut b = PACKET;
        let c = checksum::ipv4_header(&b[..20]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        b
    }

    #[test]
    fn getters() {
        let b = fixture();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.ihl(), 5);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.src_addr(), [192, 168, 0, 1]);
        assert_eq!(p.dst_addr(), [192, 168, 0, 199]);
        assert!(p.options().is_empty());
        assert!(p.verify_checksum());
        // Padding is not payload.
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn check_len_errors() {
        let b = fixture();
        for n in 0..28 {
            assert_eq!(
                Packet::new_checked(&b[..n]).err(),
                Some(ParseError::Truncated),
                "len {n}"
            );
        }
        let mut bad = b;
        bad[0] = 0x44; // ihl 4
        assert_eq!(
            Packet::new_checked(&bad[..]).err(),
            Some(ParseError::BadIpHeader)
        );
        let mut bad = b;
        bad[3] = 19; // total length below the header
        assert_eq!(
            Packet::new_checked(&bad[..]).err(),
            Some(ParseError::BadIpHeader)
        );
        let mut bad = b;
        bad[0] = 0x4f; // 60-byte header in a 30-byte buffer
        assert_eq!(
            Packet::new_checked(&bad[..]).err(),
            Some(ParseError::Truncated)
        );
    }

    #[test]
    fn setters_round_trip() {
        let mut b = fixture();
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_src_addr([10, 0, 0, 1]);
        p.set_dst_addr([10, 0, 0, 2]);
        p.set_ttl(3);
        p.set_ident(0xbeef);
        p.set_frag(false, true, 1480);
        p.set_protocol(6);
        p.set_dscp_ecn(0xb8);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        p.payload_mut()[0] = 0xff;
        assert_eq!(p.src_addr(), [10, 0, 0, 1]);
        assert_eq!(p.dst_addr(), [10, 0, 0, 2]);
        assert_eq!(p.ttl(), 3);
        assert_eq!(p.ident(), 0xbeef);
        assert!(!p.dont_frag());
        assert!(p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.is_fragment());
        assert_eq!(p.protocol(), 6);
        assert_eq!(p.dscp_ecn(), 0xb8);
        assert_eq!(b[20], 0xff);

        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_version_ihl(4, 6);
        p.set_total_len(30);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[0xff, 2, 3, 4]);
        assert!(p.check_len().is_ok());
    }

    #[test]
    fn matches_etherparse() {
        let b = fixture();
        let e = etherparse::Ipv4HeaderSlice::from_slice(&b).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(e.header_checksum(), p.checksum());
        assert_eq!(e.to_header().calc_header_checksum(), p.checksum());
        assert_eq!(e.source(), p.src_addr());
        assert_eq!(e.total_len(), p.total_len());
    }

    #[test]
    fn option_lists() {
        use OptionsError::*;
        let ok: &[&[u8]] = &[
            &[],
            &[OPT_NOP, OPT_NOP, OPT_NOP, OPT_END],
            &[OPT_END, 0xff, 0xff, 0xff], // after EOL: padding, not read
            &[OPT_RR, 7, 4, 0, 0, 0, 0, OPT_END],
            &[OPT_TIMESTAMP, 4, 5, 0],
            &[148, 4, 0, 0], // Router Alert
        ];
        for o in ok {
            assert_eq!(check_options(o), Ok(()), "{o:?}");
        }
        let bad: &[(&[u8], OptionsError)] = &[
            (&[OPT_LSRR, 7, 4, 198, 18, 0, 9, OPT_END], SourceRoute),
            (&[OPT_NOP, OPT_SSRR, 7, 4, 198, 18, 0, 9], SourceRoute),
            (&[OPT_RR], BadLength),          // no length byte
            (&[OPT_RR, 1, 0, 0], BadLength), // length below 2
            (&[OPT_RR, 2, 0, 0], BadLength), // below RR's minimum
            (&[OPT_TIMESTAMP, 3, 0, 0], BadLength),
            (&[148, 0, 0, 0], BadLength), // zero length (no progress)
            (&[148, 8, 0, 0], BadLength), // past the header
            (&[OPT_LSRR, 9, 4, 0], BadLength), // broken beats source route
        ];
        for (o, e) in bad {
            assert_eq!(check_options(o), Err(*e), "{o:?}");
        }
    }
}
