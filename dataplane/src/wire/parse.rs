//! One pass from an Ethernet frame to the flow key and the offsets the
//! rewriters need.
//!
//! The parser reads Ethernet II (with at most one 802.1Q or 802.1ad tag),
//! then IPv4 or IPv6 (skipping up to [`MAX_IPV6_EXT_HEADERS`] extension
//! headers), then the first four bytes of TCP, UDP or SCTP (the ports) or
//! the type of ICMP/ICMPv6. It finds the L4 header exactly where the XDP
//! steering program does (the case table in [`crate::steer`]), so that every
//! frame steered to the sockets is either parsed or refused with a counted
//! reason, never misread.
//!
//! Besides its structure it checks what a host or router checks before it
//! acts on a header, because the load balancer forwards what it accepts:
//! the IPv4 header checksum (RFC 1122 § 3.2.1.2: a datagram with a bad one
//! is discarded silently), the IPv4 option list and its source routes
//! ([`ipv4::check_options`]), and, in IPv6, a Routing header with segments
//! left, which names a next hop other than this node (RFC 8200 § 4.4; a
//! Hop-by-Hop header anywhere but first is malformed, § 4.1). Nothing beyond
//! the L4 header is looked at and L4 checksums are not verified (an
//! incremental rewrite keeps a wrong checksum wrong, so the receiver still
//! drops a corrupted segment).
//!
//! Lengths come from the IP header, not from the frame: an IPv4 total length
//! or IPv6 payload length shorter than the frame means Ethernet padding, which
//! is ignored; a longer one means a truncated frame.
//!
//! A first fragment (IPv4 offset 0 with MF set; IPv6 Fragment header with
//! offset 0 and M set) of a TCP or UDP datagram is parsed like a whole
//! packet, since it carries the L4 header, and marked in
//! [`Parsed::fragment`]: the pipeline forwards it by its 5-tuple and
//! [`crate::frag`] remembers the rewrite for the rest. Its UDP length names
//! the whole datagram, so it is not checked against the fragment. Every
//! other fragment is refused ([`ParseError::Fragment`]): it carries no
//! ports, and [`crate::frag`] follows it by its IP identification instead.
//! Fragments of SCTP (whose CRC32c covers the whole packet, which no
//! fragment holds) and of ICMP are refused too. An IPv6 atomic fragment
//! (offset 0, M clear: RFC 6946) is a whole packet.
//!
//! [`parse`] accepts any byte slice and never panics; every failure is a
//! [`ParseError`], whose [`ParseError::index`] indexes a drop counter.

use core::fmt;

use super::ethernet::{self, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use super::{icmp, ipv4, ipv6, tcp, udp};
use crate::types::{proto, Addr, FlowKey};

/// At most this many IPv6 extension headers are skipped before the parser
/// gives up (a bound on work per packet).
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Length of the IPv6 Fragment header (RFC 8200 § 4.5).
pub const FRAG_HEADER_LEN: usize = 8;

/// Length of the SCTP common header (RFC 9260 § 3.1).
const SCTP_HEADER_LEN: usize = 12;

/// What the packet path needs to know about a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Parsed {
    /// The 802.1Q VLAN identifier, if the frame was tagged.
    pub vlan: Option<u16>,
    /// Offset of the IP header in the frame.
    pub l3_offset: usize,
    /// Offset of the L4 header in the frame (after IPv4 options or IPv6
    /// extension headers).
    pub l4_offset: usize,
    /// 4 or 6.
    pub ip_version: u8,
    /// The 5-tuple; ports are 0 for ICMP/ICMPv6.
    pub key: FlowKey,
    /// The TCP flag byte ([`super::tcp_flags`]); 0 for other protocols.
    pub tcp_flags: u8,
    /// The ICMP/ICMPv6 type; 0 for other protocols.
    pub icmp_type: u8,
    /// The IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// For a first fragment, its IP identification (IPv4: the 16-bit
    /// field; IPv6: the Fragment header's 32 bits); `None` for a whole
    /// packet.
    pub fragment: Option<u32>,
}

/// Why a frame could not be parsed. Each variant indexes a drop counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// The frame ends before a header, or before the length an IP or UDP
    /// header announces.
    Truncated,
    /// The EtherType is neither IPv4 nor IPv6 (after at most one VLAN tag).
    NotIp,
    /// The IP header is malformed: wrong version, IPv4 IHL below 5 or total
    /// length below the header, or too many IPv6 extension headers.
    BadIpHeader,
    /// The packet is an IPv4 fragment (MF set or non-zero offset) or carries
    /// an IPv6 Fragment header.
    Fragment,
    /// The L4 protocol is not TCP, UDP, SCTP, ICMP (over IPv4) or ICMPv6
    /// (over IPv6).
    UnsupportedProto,
    /// The L4 header is malformed: TCP data offset below 5 or UDP length
    /// below 8.
    BadL4Header,
    /// The IPv4 header checksum is wrong (zero included, unless zero is
    /// right).
    BadIpChecksum,
    /// An IPv4 option has a broken length ([`ipv4::OptionsError::BadLength`]).
    BadIpOptions,
    /// The IPv4 header carries a loose or strict source route.
    IpSourceRoute,
    /// An IPv6 Routing header with segments left: this node is not the
    /// packet's final destination (RFC 8200 § 4.4).
    Ipv6RoutingHeader,
}

impl ParseError {
    /// The number of variants.
    pub const COUNT: usize = 10;

    /// Every variant, in [`ParseError::index`] order.
    pub const ALL: [ParseError; ParseError::COUNT] = [
        ParseError::Truncated,
        ParseError::NotIp,
        ParseError::BadIpHeader,
        ParseError::Fragment,
        ParseError::UnsupportedProto,
        ParseError::BadL4Header,
        ParseError::BadIpChecksum,
        ParseError::BadIpOptions,
        ParseError::IpSourceRoute,
        ParseError::Ipv6RoutingHeader,
    ];

    /// A dense index in `0..COUNT`, for counter arrays.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The snake_case name, used as the counter name.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::Truncated => "truncated",
            ParseError::NotIp => "not_ip",
            ParseError::BadIpHeader => "bad_ip_header",
            ParseError::Fragment => "fragment",
            ParseError::UnsupportedProto => "unsupported_proto",
            ParseError::BadL4Header => "bad_l4_header",
            ParseError::BadIpChecksum => "bad_ip_checksum",
            ParseError::BadIpOptions => "bad_ip_options",
            ParseError::IpSourceRoute => "ip_source_route",
            ParseError::Ipv6RoutingHeader => "ipv6_routing_header",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ParseError {}

/// Parses an Ethernet frame down to its L4 ports.
///
/// # Errors
///
/// A [`ParseError`] saying which layer failed and why; never panics.
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    let eth = ethernet::Frame::new_checked(frame)?;
    let mut p = Parsed {
        vlan: eth.vlan_id(),
        l3_offset: eth.header_len(),
        ..Parsed::default()
    };
    let l3 = eth.payload();
    match eth.ethertype() {
        ETHERTYPE_IPV4 => parse_ipv4(l3, &mut p)?,
        ETHERTYPE_IPV6 => parse_ipv6(l3, &mut p)?,
        _ => return Err(ParseError::NotIp),
    }
    Ok(p)
}

fn parse_ipv4(l3: &[u8], p: &mut Parsed) -> Result<(), ParseError> {
    let ip = ipv4::Packet::new_checked(l3)?;
    if ip.version() != 4 {
        return Err(ParseError::BadIpHeader);
    }
    // RFC 1122 § 3.2.1.2: verify the header checksum, discard on failure.
    if !ip.verify_checksum() {
        return Err(ParseError::BadIpChecksum);
    }
    ipv4::check_options(ip.options()).map_err(|e| match e {
        ipv4::OptionsError::SourceRoute => ParseError::IpSourceRoute,
        ipv4::OptionsError::BadLength => ParseError::BadIpOptions,
    })?;
    // RFC 791: a fragment has MF set or a non-zero offset; only the first
    // (offset 0) carries the L4 header.
    if ip.is_fragment() {
        if ip.frag_offset() != 0 {
            return Err(ParseError::Fragment);
        }
        p.fragment = Some(u32::from(ip.ident()));
    }
    p.ip_version = 4;
    p.ttl = ip.ttl();
    p.key.src = Addr::from_v4(ip.src_addr());
    p.key.dst = Addr::from_v4(ip.dst_addr());
    p.l4_offset = p.l3_offset + ip.header_len();
    let protocol = ip.protocol();
    if protocol == proto::ICMPV6 {
        return Err(ParseError::UnsupportedProto);
    }
    parse_l4(protocol, ip.payload(), p)
}

fn parse_ipv6(l3: &[u8], p: &mut Parsed) -> Result<(), ParseError> {
    let ip = ipv6::Packet::new_checked(l3)?;
    if ip.version() != 6 {
        return Err(ParseError::BadIpHeader);
    }
    p.ip_version = 6;
    p.ttl = ip.hop_limit();
    p.key.src = Addr::from_v6(ip.src_addr());
    p.key.dst = Addr::from_v6(ip.dst_addr());

    // RFC 8200 § 4: skip the extension headers that share the generic
    // layout; a Fragment header means a fragment (even an atomic one).
    let mut rest = ip.payload();
    let mut off = ipv6::HEADER_LEN;
    let mut next = ip.next_header();
    let mut skipped = 0;
    loop {
        match next {
            ipv6::NEXT_HOP_BY_HOP | ipv6::NEXT_ROUTING | ipv6::NEXT_DEST_OPTS => {
                if skipped == MAX_IPV6_EXT_HEADERS {
                    return Err(ParseError::BadIpHeader);
                }
                // § 4.1: Hop-by-Hop Options only right after the header.
                if next == ipv6::NEXT_HOP_BY_HOP && skipped > 0 {
                    return Err(ParseError::BadIpHeader);
                }
                let (n, len) = ipv6::ext_header(rest)?;
                // § 4.4: with segments left (its fourth byte) the packet is
                // on its way to another node; with none it is ignored.
                if next == ipv6::NEXT_ROUTING && rest.get(3).is_some_and(|&s| s != 0) {
                    return Err(ParseError::Ipv6RoutingHeader);
                }
                rest = rest.get(len..).ok_or(ParseError::Truncated)?;
                off += len;
                next = n;
                skipped += 1;
            }
            ipv6::NEXT_FRAGMENT => {
                // § 4.5: next header, reserved, offset (13 bits) | res | M,
                // identification. One Fragment header at most, offset 0.
                let Some(h) = rest.get(..FRAG_HEADER_LEN) else {
                    return Err(ParseError::Truncated);
                };
                let off_m = u16::from_be_bytes([h[2], h[3]]);
                if p.fragment.is_some() || off_m & 0xfff8 != 0 {
                    return Err(ParseError::Fragment);
                }
                if off_m & 1 != 0 {
                    p.fragment = Some(u32::from_be_bytes([h[4], h[5], h[6], h[7]]));
                }
                next = h[0];
                rest = &rest[FRAG_HEADER_LEN..];
                off += FRAG_HEADER_LEN;
            }
            _ => break,
        }
    }
    p.l4_offset = p.l3_offset + off;
    if next == proto::ICMP {
        return Err(ParseError::UnsupportedProto);
    }
    parse_l4(next, rest, p)
}

fn parse_l4(protocol: u8, seg: &[u8], p: &mut Parsed) -> Result<(), ParseError> {
    p.key.proto = protocol;
    if p.fragment.is_some() {
        return parse_first_fragment(protocol, seg, p);
    }
    match protocol {
        proto::TCP => {
            let t = tcp::Packet::new_checked(seg)?;
            p.key.sport = t.src_port();
            p.key.dport = t.dst_port();
            p.tcp_flags = t.flags();
        }
        proto::UDP => {
            let u = udp::Packet::new_checked(seg)?;
            p.key.sport = u.src_port();
            p.key.dport = u.dst_port();
        }
        proto::SCTP => match seg {
            [s0, s1, d0, d1, ..] if seg.len() >= SCTP_HEADER_LEN => {
                p.key.sport = u16::from_be_bytes([*s0, *s1]);
                p.key.dport = u16::from_be_bytes([*d0, *d1]);
            }
            _ => return Err(ParseError::Truncated),
        },
        proto::ICMP | proto::ICMPV6 => {
            let i = icmp::Packet::new_checked(seg)?;
            p.icmp_type = i.msg_type();
        }
        _ => return Err(ParseError::UnsupportedProto),
    }
    Ok(())
}

/// The L4 header of a first fragment: TCP as usual (its header is in the
/// first fragment), UDP by its ports alone (its length is the datagram's),
/// anything else refused as a fragment.
fn parse_first_fragment(protocol: u8, seg: &[u8], p: &mut Parsed) -> Result<(), ParseError> {
    match protocol {
        proto::TCP => {
            let t = tcp::Packet::new_checked(seg)?;
            p.key.sport = t.src_port();
            p.key.dport = t.dst_port();
            p.tcp_flags = t.flags();
        }
        proto::UDP => match seg {
            [s0, s1, d0, d1, ..] if seg.len() >= udp::HEADER_LEN => {
                p.key.sport = u16::from_be_bytes([*s0, *s1]);
                p.key.dport = u16::from_be_bytes([*d0, *d1]);
            }
            _ => return Err(ParseError::Truncated),
        },
        _ => return Err(ParseError::Fragment),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp_flags;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const V4_A: [u8; 4] = [192, 0, 2, 1];
    const V4_B: [u8; 4] = [198, 51, 100, 2];
    const V6_A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// Recomputes the checksum of the IPv4 header at offset 14 after a
    /// fixture edited it.
    fn fix_v4(f: &mut [u8]) {
        let hl = usize::from(f[14] & 0x0f) * 4;
        let c = crate::wire::checksum::ipv4_header(&f[14..14 + hl]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }

    fn v4_tcp() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .tcp(40000, 80, 1, 1024)
            .syn()
            .write(&mut v, b"hello")
            .unwrap();
        v
    }

    fn v4_udp() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 7)
            .udp(5353, 53)
            .write(&mut v, b"q")
            .unwrap();
        v
    }

    fn vlan_v6_udp() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv6(V6_A, V6_B, 33)
            .udp(1000, 2000)
            .write(&mut v, b"data")
            .unwrap();
        v
    }

    fn v6_tcp() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(V6_A, V6_B, 64)
            .tcp(443, 50000, 9, 100)
            .ack(5)
            .fin()
            .write(&mut v, &[])
            .unwrap();
        v
    }

    fn v4_icmp() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .icmpv4_echo_request(0x77, 1)
            .write(&mut v, b"ping")
            .unwrap();
        v
    }

    fn v6_icmp() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(V6_A, V6_B, 64)
            .icmpv6_echo_reply(0x77, 1)
            .write(&mut v, b"pong")
            .unwrap();
        v
    }

    /// IPv6 with Hop-by-Hop (8 bytes) and Destination Options (16 bytes)
    /// headers before a bare TCP header.
    fn v6_ext_tcp() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&MAC_B);
        v.extend_from_slice(&MAC_A);
        v.extend_from_slice(&[0x86, 0xdd]);
        let payload_len: u16 = 8 + 16 + 20;
        v.extend_from_slice(&[0x60, 0, 0, 0]);
        v.extend_from_slice(&payload_len.to_be_bytes());
        v.extend_from_slice(&[ipv6::NEXT_HOP_BY_HOP, 5]);
        v.extend_from_slice(&V6_A);
        v.extend_from_slice(&V6_B);
        // Hop-by-Hop: next = Destination Options, PadN(4).
        v.extend_from_slice(&[ipv6::NEXT_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]);
        // Destination Options: next = TCP, 16 bytes, PadN(12).
        v.extend_from_slice(&[proto::TCP, 1, 1, 12]);
        v.extend_from_slice(&[0; 12]);
        // TCP header, SYN.
        v.extend_from_slice(&[0x30, 0x39, 0x00, 0x16, 0, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&[0x50, tcp_flags::SYN, 0xff, 0xff, 0, 0, 0, 0]);
        v
    }

    /// IPv4 SCTP INIT-ish packet (common header only matters).
    fn v4_sctp() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .udp(0, 0)
            .write(&mut v, &[0; 8])
            .unwrap();
        // Turn it into SCTP: protocol 132, the 16 L4 bytes as common header +
        // 4 bytes of chunk.
        v[23] = proto::SCTP;
        v[34..38].copy_from_slice(&[0x0b, 0x59, 0x0b, 0x5a]); // 2905 -> 2906
        fix_v4(&mut v);
        v
    }

    fn all_valid() -> Vec<Vec<u8>> {
        vec![
            v4_tcp(),
            v4_udp(),
            vlan_v6_udp(),
            v6_tcp(),
            v4_icmp(),
            v6_icmp(),
            v6_ext_tcp(),
            v4_sctp(),
        ]
    }

    #[test]
    fn ipv4_tcp() {
        let f = v4_tcp();
        let p = parse(&f).unwrap();
        assert_eq!(p.vlan, None);
        assert_eq!(p.l3_offset, 14);
        assert_eq!(p.l4_offset, 34);
        assert_eq!(p.ip_version, 4);
        assert_eq!(p.ttl, 64);
        assert_eq!(
            p.key,
            FlowKey {
                src: Addr::from_v4(V4_A),
                dst: Addr::from_v4(V4_B),
                sport: 40000,
                dport: 80,
                proto: proto::TCP
            }
        );
        assert_eq!(p.tcp_flags, tcp_flags::SYN);
        assert_eq!(p.icmp_type, 0);
    }

    #[test]
    fn ipv4_udp() {
        let p = parse(&v4_udp()).unwrap();
        assert_eq!(p.key.proto, proto::UDP);
        assert_eq!((p.key.sport, p.key.dport), (5353, 53));
        assert_eq!(p.ttl, 7);
        assert_eq!(p.tcp_flags, 0);
    }

    #[test]
    fn vlan_ipv6_udp() {
        let p = parse(&vlan_v6_udp()).unwrap();
        assert_eq!(p.vlan, Some(42));
        assert_eq!(p.l3_offset, 18);
        assert_eq!(p.l4_offset, 58);
        assert_eq!(p.ip_version, 6);
        assert_eq!(p.ttl, 33);
        assert_eq!(p.key.src, Addr::from_v6(V6_A));
        assert_eq!(p.key.dst, Addr::from_v6(V6_B));
        assert_eq!((p.key.sport, p.key.dport, p.key.proto), (1000, 2000, 17));
    }

    #[test]
    fn ipv6_tcp_flags() {
        let p = parse(&v6_tcp()).unwrap();
        assert_eq!(p.tcp_flags, tcp_flags::ACK | tcp_flags::FIN);
        assert_eq!((p.key.sport, p.key.dport), (443, 50000));
    }

    #[test]
    fn icmp_both_families() {
        let p = parse(&v4_icmp()).unwrap();
        assert_eq!(p.key.proto, proto::ICMP);
        assert_eq!((p.key.sport, p.key.dport), (0, 0));
        assert_eq!(p.icmp_type, icmp::V4_ECHO_REQUEST);
        let p = parse(&v6_icmp()).unwrap();
        assert_eq!(p.key.proto, proto::ICMPV6);
        assert_eq!(p.icmp_type, icmp::V6_ECHO_REPLY);
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        let f = v6_ext_tcp();
        let p = parse(&f).unwrap();
        assert_eq!(p.l4_offset, 14 + 40 + 8 + 16);
        assert_eq!((p.key.sport, p.key.dport), (12345, 22));
        assert_eq!(p.key.proto, proto::TCP);
        assert_eq!(p.tcp_flags, tcp_flags::SYN);
        // etherparse agrees on where TCP starts.
        let e = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        match e.transport {
            Some(etherparse::TransportSlice::Tcp(t)) => assert_eq!(t.destination_port(), 22),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_many_extension_headers() {
        let mut v = Vec::new();
        v.extend_from_slice(&[0; 12]);
        v.extend_from_slice(&[0x86, 0xdd]);
        let n = MAX_IPV6_EXT_HEADERS + 1;
        v.extend_from_slice(&[0x60, 0, 0, 0]);
        v.extend_from_slice(&((n * 8 + 8) as u16).to_be_bytes());
        v.extend_from_slice(&[ipv6::NEXT_DEST_OPTS, 64]);
        v.extend_from_slice(&[0; 32]);
        for _ in 0..n {
            v.extend_from_slice(&[ipv6::NEXT_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]);
        }
        v.extend_from_slice(&[0; 8]);
        assert_eq!(parse(&v), Err(ParseError::BadIpHeader));
    }

    #[test]
    fn ipv6_fragment_header() {
        let mut f = v6_ext_tcp();
        // Make the Destination Options header point at a Fragment header.
        f[14 + 40 + 8] = ipv6::NEXT_FRAGMENT;
        assert_eq!(parse(&f), Err(ParseError::Fragment));
        let mut f = v6_tcp();
        f[14 + 6] = ipv6::NEXT_FRAGMENT;
        assert_eq!(parse(&f), Err(ParseError::Fragment));
    }

    #[test]
    fn ipv4_fragments() {
        // First fragment: MF set, offset 0: parsed, with its id, and its
        // UDP length (the datagram's) not checked against the fragment.
        let mut f = v4_udp();
        f[14 + 6] = 0x20;
        f[14 + 4..14 + 6].copy_from_slice(&[0xab, 0xcd]);
        f[34 + 4..34 + 6].copy_from_slice(&3000u16.to_be_bytes());
        fix_v4(&mut f);
        let p = parse(&f).unwrap();
        assert_eq!(p.fragment, Some(0xabcd));
        assert_eq!((p.key.sport, p.key.dport), (5353, 53));
        assert_eq!(parse(&v4_udp()).unwrap().fragment, None);
        // A first fragment of SCTP or ICMP is refused.
        let mut g = v4_sctp();
        g[14 + 6] = 0x20;
        fix_v4(&mut g);
        assert_eq!(parse(&g), Err(ParseError::Fragment));
        let mut g = v4_icmp();
        g[14 + 6] = 0x20;
        fix_v4(&mut g);
        assert_eq!(parse(&g), Err(ParseError::Fragment));
        // Later fragment: offset 185 (1480 bytes), MF clear.
        let mut f = v4_udp();
        f[14 + 6] = 0x00;
        f[14 + 7] = 185;
        fix_v4(&mut f);
        assert_eq!(parse(&f), Err(ParseError::Fragment));
        // DF alone is not a fragment.
        let mut f = v4_udp();
        f[14 + 6] = 0x40;
        fix_v4(&mut f);
        assert!(parse(&f).is_ok());
    }

    /// `v6_tcp` with a Fragment header (offset `off`, M `more`, id 0x01020304)
    /// between the fixed header and TCP.
    fn v6_frag_tcp(off: u16, more: bool) -> Vec<u8> {
        let f = v6_tcp();
        let mut g = f[..54].to_vec();
        g[14 + 6] = ipv6::NEXT_FRAGMENT;
        let plen = u16::from_be_bytes([g[18], g[19]]) + 8;
        g[18..20].copy_from_slice(&plen.to_be_bytes());
        let off_m = (off & 0xfff8) | u16::from(more);
        g.extend_from_slice(&[proto::TCP, 0]);
        g.extend_from_slice(&off_m.to_be_bytes());
        g.extend_from_slice(&[1, 2, 3, 4]);
        g.extend_from_slice(&f[54..]);
        g
    }

    #[test]
    fn ipv6_first_fragment_is_parsed_later_ones_refused() {
        let p = parse(&v6_frag_tcp(0, true)).unwrap();
        assert_eq!(p.fragment, Some(0x0102_0304));
        assert_eq!(p.l4_offset, 14 + 40 + 8);
        assert_eq!((p.key.sport, p.key.dport), (443, 50000));
        // Atomic fragment (RFC 6946): a whole packet.
        let p = parse(&v6_frag_tcp(0, false)).unwrap();
        assert_eq!(p.fragment, None);
        assert_eq!(p.l4_offset, 14 + 40 + 8);
        // Later fragments carry no ports.
        assert_eq!(parse(&v6_frag_tcp(1232, true)), Err(ParseError::Fragment));
        assert_eq!(parse(&v6_frag_tcp(1232, false)), Err(ParseError::Fragment));
    }

    #[test]
    fn ipv4_options_move_l4() {
        // Insert a 4-byte NOP option list; fix IHL and total length.
        let f = v4_udp();
        let mut g = Vec::new();
        g.extend_from_slice(&f[..34]);
        g.extend_from_slice(&[1, 1, 1, 0]);
        g.extend_from_slice(&f[34..]);
        g[14] = 0x46;
        let tl = u16::from_be_bytes([g[16], g[17]]) + 4;
        g[16..18].copy_from_slice(&tl.to_be_bytes());
        fix_v4(&mut g);
        let p = parse(&g).unwrap();
        assert_eq!(p.l4_offset, 38);
        assert_eq!((p.key.sport, p.key.dport), (5353, 53));
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut f = v4_udp();
        let len = f.len();
        f.resize(60, 0xee);
        assert!(f.len() > len);
        let p = parse(&f).unwrap();
        assert_eq!((p.key.sport, p.key.dport), (5353, 53));
        let mut f = v6_tcp();
        f.extend_from_slice(&[0xee; 7]);
        assert!(parse(&f).is_ok());
    }

    #[test]
    fn sctp_ports() {
        let p = parse(&v4_sctp()).unwrap();
        assert_eq!(p.key.proto, proto::SCTP);
        assert_eq!((p.key.sport, p.key.dport), (2905, 2906));
    }

    #[test]
    fn error_kinds() {
        // ARP.
        let mut f = v4_udp();
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse(&f), Err(ParseError::NotIp));
        // QinQ: a second tag is not IP.
        let mut f = vlan_v6_udp();
        f[16..18].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(parse(&f), Err(ParseError::NotIp));
        // IPv4 EtherType with a version-6 header.
        let mut f = v4_udp();
        f[14] = 0x65;
        assert_eq!(parse(&f), Err(ParseError::BadIpHeader));
        // IPv6 EtherType with a version-4 header.
        let mut f = v6_tcp();
        f[14] = 0x40;
        assert_eq!(parse(&f), Err(ParseError::BadIpHeader));
        // IHL 4.
        let mut f = v4_udp();
        f[14] = 0x44;
        assert_eq!(parse(&f), Err(ParseError::BadIpHeader));
        // GRE.
        let mut f = v4_udp();
        f[14 + 9] = 47;
        fix_v4(&mut f);
        assert_eq!(parse(&f), Err(ParseError::UnsupportedProto));
        // ICMPv6 over IPv4 and ICMP over IPv6.
        let mut f = v4_udp();
        f[14 + 9] = proto::ICMPV6;
        fix_v4(&mut f);
        assert_eq!(parse(&f), Err(ParseError::UnsupportedProto));
        let mut f = v6_tcp();
        f[14 + 6] = proto::ICMP;
        assert_eq!(parse(&f), Err(ParseError::UnsupportedProto));
        // No next header.
        let mut f = v6_tcp();
        f[14 + 6] = ipv6::NEXT_NONE;
        assert_eq!(parse(&f), Err(ParseError::UnsupportedProto));
        // TCP data offset 4.
        let mut f = v4_tcp();
        f[34 + 12] = 0x40;
        assert_eq!(parse(&f), Err(ParseError::BadL4Header));
        // UDP length 7.
        let mut f = v4_udp();
        f[34 + 5] = 7;
        assert_eq!(parse(&f), Err(ParseError::BadL4Header));
        // IPv4 total length beyond the frame.
        let mut f = v4_udp();
        f[17] += 1;
        assert_eq!(parse(&f), Err(ParseError::Truncated));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for f in all_valid() {
            assert!(parse(&f).is_ok());
            for n in 0..f.len() {
                assert!(parse(&f[..n]).is_err(), "{n} of {}: {:?}", f.len(), &f[..n]);
            }
        }
    }

    #[test]
    fn agrees_with_etherparse() {
        for f in all_valid() {
            let p = parse(&f).unwrap();
            let e = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
            match e.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    assert_eq!(p.key.src, Addr::from_v4(ip.header().source()));
                    assert_eq!(p.key.dst, Addr::from_v4(ip.header().destination()));
                    assert_eq!(p.ttl, ip.header().ttl());
                }
                Some(etherparse::NetSlice::Ipv6(ip)) => {
                    assert_eq!(p.key.src, Addr::from_v6(ip.header().source()));
                    assert_eq!(p.key.dst, Addr::from_v6(ip.header().destination()));
                    assert_eq!(p.ttl, ip.header().hop_limit());
                }
                None => panic!("no net"),
            }
            match e.transport {
                Some(etherparse::TransportSlice::Tcp(t)) => {
                    assert_eq!(
                        (p.key.sport, p.key.dport),
                        (t.source_port(), t.destination_port())
                    );
                }
                Some(etherparse::TransportSlice::Udp(u)) => {
                    assert_eq!(
                        (p.key.sport, p.key.dport),
                        (u.source_port(), u.destination_port())
                    );
                }
                _ => {}
            }
        }
    }

    /// `v4_udp` with the option bytes `opts` (a multiple of 4) inserted.
    fn v4_udp_with_options(opts: &[u8]) -> Vec<u8> {
        assert_eq!(opts.len() % 4, 0);
        let f = v4_udp();
        let mut g = f[..34].to_vec();
        g.extend_from_slice(opts);
        g.extend_from_slice(&f[34..]);
        g[14] = 0x45 + (opts.len() / 4) as u8;
        let tl = u16::from_be_bytes([g[16], g[17]]) + opts.len() as u16;
        g[16..18].copy_from_slice(&tl.to_be_bytes());
        fix_v4(&mut g);
        g
    }

    #[test]
    fn ipv4_header_checksum_is_verified() {
        let good = v4_udp();
        assert!(parse(&good).is_ok());
        // One header bit flipped (TTL) without fixing the checksum.
        let mut f = good.clone();
        f[14 + 8] ^= 1;
        assert_eq!(parse(&f), Err(ParseError::BadIpChecksum));
        // A zero checksum (a sender that never filled it in).
        let mut f = good.clone();
        f[24..26].copy_from_slice(&[0, 0]);
        assert_eq!(parse(&f), Err(ParseError::BadIpChecksum));
        // The payload is not covered.
        let mut f = good;
        f[40] ^= 0xff;
        assert!(parse(&f).is_ok());
    }

    #[test]
    fn ipv4_options_are_checked() {
        assert!(parse(&v4_udp_with_options(&[1, 1, 1, 0])).is_ok());
        assert!(parse(&v4_udp_with_options(&[7, 7, 4, 0, 0, 0, 0, 0])).is_ok());
        // LSRR and SSRR through 198.18.0.9.
        let lsrr = [0x83, 7, 4, 198, 18, 0, 9, 0];
        assert_eq!(
            parse(&v4_udp_with_options(&lsrr)),
            Err(ParseError::IpSourceRoute)
        );
        let ssrr = [1, 0x89, 7, 4, 198, 18, 0, 9];
        assert_eq!(
            parse(&v4_udp_with_options(&ssrr)),
            Err(ParseError::IpSourceRoute)
        );
        // An option whose length runs past the header, and one of length 0.
        assert_eq!(
            parse(&v4_udp_with_options(&[148, 12, 0, 0])),
            Err(ParseError::BadIpOptions)
        );
        assert_eq!(
            parse(&v4_udp_with_options(&[148, 0, 0, 0])),
            Err(ParseError::BadIpOptions)
        );
    }

    #[test]
    fn ipv6_routing_header_with_segments_left_is_refused() {
        // Turn the Destination Options header of `v6_ext_tcp` into a Routing
        // header (type 4, segment routing; 16 bytes).
        let mut f = v6_ext_tcp();
        let rh = 14 + 40 + 8;
        f[14 + 40] = ipv6::NEXT_ROUTING;
        f[rh + 2] = 4; // routing type
        f[rh + 3] = 0; // segments left
        let p = parse(&f).unwrap();
        assert_eq!(p.l4_offset, 14 + 40 + 8 + 16);
        assert_eq!(p.key.dport, 22);
        f[rh + 3] = 1;
        assert_eq!(parse(&f), Err(ParseError::Ipv6RoutingHeader));
    }

    #[test]
    fn ipv6_hop_by_hop_only_first() {
        // Destination Options, then Hop-by-Hop: malformed (RFC 8200 § 4.1).
        let mut f = v6_ext_tcp();
        f[14 + 6] = ipv6::NEXT_DEST_OPTS;
        f[14 + 40] = ipv6::NEXT_HOP_BY_HOP;
        assert_eq!(parse(&f), Err(ParseError::BadIpHeader));
    }

    #[test]
    fn single_s_tag_is_read_like_a_c_tag() {
        let mut f = vlan_v6_udp();
        f[12..14].copy_from_slice(&[0x88, 0xa8]);
        let p = parse(&f).unwrap();
        assert_eq!(p.vlan, Some(42));
        assert_eq!(p.l3_offset, 18);
        assert_eq!(p.key.dport, 2000);
    }

    #[test]
    fn error_table() {
        assert_eq!(ParseError::ALL.len(), ParseError::COUNT);
        for (i, e) in ParseError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            let s = e.as_str();
            assert!(!s.is_empty());
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert_eq!(e.to_string(), s);
        }
        for (i, a) in ParseError::ALL.iter().enumerate() {
            for b in &ParseError::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(f in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&f);
        }

        /// Arbitrary bytes behind a plausible Ethernet/IP prefix, so that the
        /// deeper layers see random input too.
        #[test]
        fn arbitrary_ip_never_panics(
            tagged in any::<bool>(),
            v6 in any::<bool>(),
            next in prop::sample::select(vec![0u8, 1, 6, 17, 43, 44, 58, 60, 132, 255]),
            mut body in proptest::collection::vec(any::<u8>(), 0..160),
        ) {
            let mut f = vec![0u8; 12];
            if tagged {
                f.extend_from_slice(&[0x81, 0x00, 0, 5]);
            }
            if v6 {
                f.extend_from_slice(&[0x86, 0xdd]);
                if body.len() > 6 {
                    body[0] = 0x60 | (body[0] & 0x0f);
                    body[6] = next;
                    if body.len() >= 40 {
                        let pl = ((body.len() - 40) as u16).min(u16::from_be_bytes([body[4], body[5]]));
                        body[4..6].copy_from_slice(&pl.to_be_bytes());
                    }
                }
            } else {
                f.extend_from_slice(&[0x08, 0x00]);
                if body.len() > 9 {
                    body[0] = 0x45;
                    body[6] &= 0x40;
                    body[7] = 0;
                    body[9] = next;
                    let tl = body.len().min(u16::from_be_bytes([body[2], body[3]]) as usize) as u16;
                    body[2..4].copy_from_slice(&tl.to_be_bytes());
                }
            }
            f.extend_from_slice(&body);
            if let Ok(p) = parse(&f) {
                prop_assert!(p.l4_offset <= f.len());
                prop_assert!(p.l3_offset < p.l4_offset);
            }
        }
    }
}
