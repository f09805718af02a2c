//! IP-in-IP encapsulation (IPVS `-i`, "tunnelling"): the client's IP
//! packet, unchanged (destination still the VIP), is wrapped in an outer
//! header to the real server, which decapsulates it and, owning the VIP,
//! answers the client directly.
//!
//! - IPv4 in IPv4 (RFC 2003, protocol 4): outer version 4, IHL 5, TOS
//!   copied from the inner header (§ 3.1), total length = inner + 20,
//!   identification 0, DF copied from the inner header (§ 3.1: "if the DF
//!   bit is set in the inner header, it MUST be set in the outer"), TTL 64,
//!   protocol 4, header checksum computed, source = the LB's address on
//!   the egress route, destination = the real server.
//! - IPv6 in IPv6 (RFC 2473, next header 41): outer version 6, traffic
//!   class copied from the inner header, flow label 0, payload length =
//!   inner packet length, hop limit 64.
//!
//! The inner packet is moved back by the outer header's length inside the
//! frame's buffer (one `copy_within` of the IP packet): the frame handed
//! to the packet core starts at the Ethernet header with no headroom
//! exposed ([`crate::port::Port::with_frame`]), so growing at the front
//! would need the port to hand out the headroom; that is left for later.
//! Only the IP packet as its header gives its length is moved, not any
//! Ethernet padding after it.
//!
//! The packet core sends the client packets of an IPIP flow through
//! [`encapsulate`] (`pipeline::emit_tunnel`), after [`too_big`].
//!
//! [`encapsulate`] never panics: every bound is checked before the first
//! write, so an error leaves the frame unchanged.

use crate::types::{Addr, Mac};
use crate::wire::checksum;

/// Length of an Ethernet header without a tag (tagged frames are refused
/// before forwarding: `DropReason::VlanTagged`).
const ETH_LEN: usize = 14;
/// Outer IPv4 header (no options).
pub const IPV4_OVERHEAD: usize = 20;
/// Outer IPv6 header (no extension headers).
pub const IPV6_OVERHEAD: usize = 40;
/// Protocol number of IPv4 in IPv4 (RFC 2003).
pub const PROTO_IPIP: u8 = 4;
/// Next header of IPv6 in IPv6 (RFC 2473).
pub const PROTO_IPV6: u8 = 41;
/// TTL / hop limit of the outer header (Linux's `ip_tunnel` default when
/// the tunnel does not inherit it).
pub const OUTER_TTL: u8 = 64;

/// Why [`encapsulate`] refused a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// The frame holds no IPv4 or IPv6 packet at offset 14 (untagged), or
    /// its IP header's length lies beyond the frame.
    #[error("not an untagged IP packet of the length its header gives")]
    Malformed,
    /// The outer addresses are not of the inner packet's family.
    #[error("outer addresses of another family than the packet")]
    FamilyMismatch,
    /// The buffer has no room for the outer header.
    #[error("no room in the buffer for the outer header")]
    NoRoom,
}

/// The outer header's length for an inner packet of this IP version.
#[inline]
pub fn overhead(ip_version: u8) -> usize {
    if ip_version == 4 {
        IPV4_OVERHEAD
    } else {
        IPV6_OVERHEAD
    }
}

/// Whether the encapsulated packet (inner `ip_len` bytes plus the outer
/// header) exceeds `mtu`; if so, the MTU to announce to the client in
/// ICMP fragmentation needed / packet too big: the link's minus the
/// encapsulation overhead (what the kernel's `ip_tunnel` reports).
#[inline]
pub fn too_big(ip_version: u8, ip_len: usize, mtu: u16) -> Option<u16> {
    let oh = overhead(ip_version);
    (ip_len + oh > usize::from(mtu)).then(|| mtu.saturating_sub(oh as u16))
}

/// The IP packet's length as its header gives it, if the frame holds it.
fn inner_len(buf: &[u8], len: usize) -> Option<(u8, usize)> {
    let ip = buf.get(ETH_LEN..len)?;
    let version = ip.first()? >> 4;
    let n = match version {
        4 => usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?])),
        6 => 40 + usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?])),
        _ => return None,
    };
    (n <= ip.len() && n >= if version == 4 { 20 } else { 40 }).then_some((version, n))
}

/// Wraps the IP packet of the Ethernet frame `buf[..len]` in an outer IP
/// header from `src` to `dst` (module doc), and sets the MACs; returns the
/// new frame length.
///
/// # Errors
/// [`EncapError`]; the frame is then unchanged.
pub fn encapsulate(
    buf: &mut [u8],
    len: usize,
    src: Addr,
    dst: Addr,
    src_mac: Mac,
    dst_mac: Mac,
) -> Result<usize, EncapError> {
    let (version, ip_len) = inner_len(buf, len.min(buf.len())).ok_or(EncapError::Malformed)?;
    let v4 = version == 4;
    if src.is_v4() != v4 || dst.is_v4() != v4 {
        return Err(EncapError::FamilyMismatch);
    }
    let oh = overhead(version);
    let new_len = ETH_LEN + oh + ip_len;
    if new_len > buf.len() {
        return Err(EncapError::NoRoom);
    }
    buf.copy_within(ETH_LEN..ETH_LEN + ip_len, ETH_LEN + oh);
    let (inner, outer) = {
        let (head, rest) = buf[ETH_LEN..].split_at_mut(oh);
        (&rest[..ip_len], head)
    };
    if v4 {
        write_v4(outer, inner, ip_len, &src, &dst);
    } else {
        write_v6(outer, inner, ip_len, &src, &dst);
    }
    buf[..6].copy_from_slice(&dst_mac);
    buf[6..12].copy_from_slice(&src_mac);
    Ok(new_len)
}

/// The outer IPv4 header (RFC 2003 § 3.1).
fn write_v4(h: &mut [u8], inner: &[u8], ip_len: usize, src: &Addr, dst: &Addr) {
    let total = (ip_len + IPV4_OVERHEAD) as u16;
    h[0] = 0x45;
    h[1] = inner[1];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&[0, 0]);
    // DF copied from the inner header; never MF or an offset.
    h[6] = inner[6] & 0x40;
    h[7] = 0;
    h[8] = OUTER_TTL;
    h[9] = PROTO_IPIP;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&src.v4_octets());
    h[16..20].copy_from_slice(&dst.v4_octets());
    let c = checksum::ipv4_header(&h[..IPV4_OVERHEAD]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The outer IPv6 header (RFC 2473 § 6).
fn write_v6(h: &mut [u8], inner: &[u8], ip_len: usize, src: &Addr, dst: &Addr) {
    // Traffic class: the inner's (bits 4..12 of the first word).
    let tc = ((inner[0] & 0x0f) << 4) | (inner[1] >> 4);
    h[0] = 0x60 | (tc >> 4);
    h[1] = tc << 4;
    h[2..4].copy_from_slice(&[0, 0]);
    h[4..6].copy_from_slice(&(ip_len as u16).to_be_bytes());
    h[6] = PROTO_IPV6;
    h[7] = OUTER_TTL;
    h[8..24].copy_from_slice(&src.0);
    h[24..40].copy_from_slice(&dst.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket};
    use proptest::prelude::*;

    const LB: Mac = [2, 0, 0, 0, 1, 1];
    const RS: Mac = [2, 0, 0, 0, 1, 0x11];

    fn v6(last: u8) -> Addr {
        Addr::from_v6([0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, last])
    }

    fn syn4(tos: u8, df: bool) -> Vec<u8> {
        let mut ip = etherparse::Ipv4Header::new(
            0,
            61,
            etherparse::IpNumber::TCP,
            [198, 18, 0, 2],
            [198, 18, 100, 10],
        )
        .unwrap();
        ip.dont_fragment = df;
        ip.dscp = etherparse::Ipv4Dscp::try_new(tos >> 2).unwrap();
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp(40000, 80, 1, 65535)
            .syn()
            .write(&mut out, b"hello")
            .unwrap();
        out
    }

    fn syn6() -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv6(v6(2).0, v6(0x64).0, 61)
            .tcp(40000, 80, 1, 65535)
            .syn()
            .write(&mut out, b"hello")
            .unwrap();
        out
    }

    #[test]
    fn ipv4_in_ipv4_outer_header_is_exact() {
        for (tos, df) in [(0u8, true), (0xb8, false)] {
            let inner = syn4(tos, df);
            let mut buf = inner.clone();
            // Ethernet padding after the packet is not carried.
            buf.extend_from_slice(&[0xee; 6]);
            let len = buf.len();
            buf.resize(2048, 0);
            let (src, dst) = (
                Addr::from_v4([198, 18, 1, 1]),
                Addr::from_v4([198, 18, 1, 11]),
            );
            let n = encapsulate(&mut buf, len, src, dst, LB, RS).unwrap();
            assert_eq!(n, inner.len() + 20);
            let f = &buf[..n];
            assert_eq!(&f[..6], &RS);
            assert_eq!(&f[6..12], &LB);
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            let outer = etherparse::Ipv4HeaderSlice::from_slice(&f[14..]).unwrap();
            assert_eq!(outer.ihl(), 5);
            assert_eq!(outer.dcp().value() << 2 | outer.ecn().value(), tos);
            assert_eq!(usize::from(outer.total_len()), inner.len() - 14 + 20);
            assert_eq!(outer.identification(), 0);
            assert_eq!(outer.dont_fragment(), df);
            assert!(!outer.more_fragments());
            assert_eq!(outer.ttl(), 64);
            assert_eq!(outer.protocol().0, 4);
            assert_eq!(outer.source(), [198, 18, 1, 1]);
            assert_eq!(outer.destination(), [198, 18, 1, 11]);
            assert_eq!(
                outer.header_checksum(),
                outer.to_header().calc_header_checksum()
            );
            // The inner packet, byte for byte.
            assert_eq!(&f[34..], &inner[14..]);
        }
    }

    #[test]
    fn ipv6_in_ipv6_outer_header_is_exact() {
        let mut inner = syn6();
        // Traffic class 0xb8 on the inner packet.
        inner[14] = 0x6b;
        inner[15] = (inner[15] & 0x0f) | 0x80;
        let mut buf = inner.clone();
        let len = buf.len();
        buf.resize(2048, 0);
        let n = encapsulate(&mut buf, len, v6(1), v6(0x11), LB, RS).unwrap();
        assert_eq!(n, inner.len() + 40);
        let f = &buf[..n];
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let outer = etherparse::Ipv6HeaderSlice::from_slice(&f[14..]).unwrap();
        assert_eq!(outer.traffic_class(), 0xb8);
        assert_eq!(outer.flow_label().value(), 0);
        assert_eq!(usize::from(outer.payload_length()), inner.len() - 14);
        assert_eq!(outer.next_header().0, 41);
        assert_eq!(outer.hop_limit(), 64);
        assert_eq!(Addr::from_v6(outer.source()), v6(1));
        assert_eq!(Addr::from_v6(outer.destination()), v6(0x11));
        assert_eq!(&f[54..], &inner[14..]);
        // etherparse reads the whole thing as IPv6 in IPv6.
        assert!(SlicedPacket::from_ethernet(f).is_ok());
    }

    #[test]
    fn refusals_leave_the_frame_unchanged() {
        let inner = syn4(0, true);
        let (a4, b4) = (Addr::from_v4([1, 1, 1, 1]), Addr::from_v4([2, 2, 2, 2]));
        // No room: the buffer is the frame.
        let mut buf = inner.clone();
        let len = buf.len();
        assert_eq!(
            encapsulate(&mut buf, len, a4, b4, LB, RS),
            Err(EncapError::NoRoom)
        );
        assert_eq!(buf, inner);
        // Family mismatch.
        buf.resize(2048, 0);
        assert_eq!(
            encapsulate(&mut buf, len, v6(1), v6(2), LB, RS),
            Err(EncapError::FamilyMismatch)
        );
        // A total length beyond the frame, and a frame cut short.
        for n in [len - 1, 20, 0] {
            assert_eq!(
                encapsulate(&mut buf, n, a4, b4, LB, RS),
                Err(EncapError::Malformed),
                "{n}"
            );
        }
        assert_eq!(&buf[..len], &inner[..]);
    }

    #[test]
    fn too_big_announces_the_mtu_minus_the_overhead() {
        assert_eq!(too_big(4, 1480, 1500), None);
        assert_eq!(too_big(4, 1481, 1500), Some(1480));
        assert_eq!(too_big(6, 1460, 1500), None);
        assert_eq!(too_big(6, 1500, 1500), Some(1460));
    }

    proptest! {
        #[test]
        fn encapsulate_never_panics(
            frame in proptest::collection::vec(any::<u8>(), 0..200),
            cap in 0usize..260, len in 0usize..260, v4 in any::<bool>(),
        ) {
            let mut buf = frame.clone();
            buf.resize(cap.max(frame.len()), 0);
            let (s, d) = if v4 {
                (Addr::from_v4([1, 2, 3, 4]), Addr::from_v4([5, 6, 7, 8]))
            } else {
                (v6(1), v6(2))
            };
            let before = buf.clone();
            if encapsulate(&mut buf, len, s, d, LB, RS).is_err() {
                prop_assert_eq!(buf, before);
            }
        }
    }
}
