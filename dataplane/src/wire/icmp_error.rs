//! ICMP and ICMPv6 errors that quote a load-balanced packet, and their NAT
//! translation, so that an error about a flow follows the flow.
//!
//! An ICMP error (RFC 792, RFC 4443 § 3) carries, after its eight-byte
//! header, the beginning of the packet that caused it: the inner IP header
//! and at least the first eight bytes of its L4 header (the ports). When that
//! packet was NATed by the load balancer, the error must be translated back,
//! like the kernel's `nf_nat_icmp_reply_translation` or IPVS's
//! `ip_vs_nat_icmp` do: the outer addresses are replaced, and so is the
//! quoted tuple, so that the original sender recognises its own packet.
//!
//! [`parse_icmp_error`] finds the quoted tuple; [`translate_icmp_error`]
//! rewrites both layers and patches every checksum incrementally (RFC 1624,
//! [`Delta`]): the inner IPv4 header checksum, the inner TCP/UDP checksum
//! when the quote holds it, the ICMP checksum (which covers the whole quote,
//! and for ICMPv6 the pseudo-header with the outer addresses) and the outer
//! IPv4 header checksum. An inner SCTP CRC32c is recomputed (keeping a wrong
//! one wrong) only when the whole inner packet is quoted; a truncated quote
//! keeps its stored CRC, which no receiver can check anyway.
//!
//! Every changed 16-bit word lies at an even offset from the start of the
//! ICMP message (the inner IP header starts 8 bytes in, IPv4 headers are a
//! multiple of 4 bytes and IPv6 extension headers of 8), so one [`Delta`]
//! accumulated over them patches the ICMP checksum whatever the quote's
//! length.
//!
//! # No-panic contract
//!
//! Neither function panics on any input: every access is bounds-checked.
//! [`translate_icmp_error`] checks all bounds before it writes anything, so
//! an error leaves the frame unchanged. Nothing allocates.

use super::checksum::Delta;
use super::parse::Parsed;
use super::{icmp, ipv6, sctp};
use crate::forward::nat::RewriteError;
use crate::types::{proto, Addr, FlowKey};

/// ICMPv4 parameter problem (RFC 792).
pub const V4_PARAMETER_PROBLEM: u8 = 12;
/// ICMPv6 parameter problem (RFC 4443 § 3.4).
pub const V6_PARAMETER_PROBLEM: u8 = 4;

/// At most this many IPv6 extension headers are skipped in the quoted packet.
const MAX_INNER_EXT_HEADERS: usize = 4;
/// Bytes of the quoted L4 header that must be present (the ports, and for
/// UDP the checksum).
const MIN_QUOTED_L4: usize = 8;

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const IPV4_TOTAL_LEN: usize = 2;
const IPV4_FLG_OFF: usize = 6;
const IPV4_PROTOCOL: usize = 9;
const IPV4_CHECKSUM: usize = 10;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const IPV6_PAYLOAD_LEN: usize = 4;
const IPV6_NEXT_HEADER: usize = 6;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
/// Fragment offset mask of the IPv4 flags/offset word.
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// An ICMP/ICMPv6 error (IPv4: destination unreachable 3, time exceeded 11,
/// parameter problem 12; IPv6: destination unreachable 1, packet too big 2,
/// time exceeded 3, parameter problem 4) quoting a TCP, UDP or SCTP packet.
///
/// The offsets index the frame that was parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    /// The quoted packet's tuple as quoted: the addresses and ports of the
    /// packet that caused the error (so `inner.src` is usually the address
    /// the error is sent to).
    pub inner: FlowKey,
    /// Offset of the quoted IP header in the frame.
    pub inner_l3: usize,
    /// Offset of the quoted L4 header in the frame.
    pub inner_l4: usize,
    /// End of the quote in the frame: the end of the outer IP packet as its
    /// header says (Ethernet padding excluded).
    pub quoted_end: usize,
}

/// Whether ICMP type `icmp_type` over IP version `ip_version` is one of the
/// errors [`parse_icmp_error`] accepts.
#[inline]
pub fn is_error_type(ip_version: u8, icmp_type: u8) -> bool {
    match ip_version {
        4 => matches!(
            icmp_type,
            icmp::V4_DEST_UNREACHABLE | icmp::V4_TIME_EXCEEDED | V4_PARAMETER_PROBLEM
        ),
        6 => matches!(
            icmp_type,
            icmp::V6_DEST_UNREACHABLE
                | icmp::V6_PACKET_TOO_BIG
                | icmp::V6_TIME_EXCEEDED
                | V6_PARAMETER_PROBLEM
        ),
        _ => false,
    }
}

#[inline]
fn be16_at(buf: &[u8], off: usize) -> Option<u16> {
    let b = buf.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

#[inline]
fn array_at<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    buf.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// The end of the outer IP packet (`p.l3_offset` + the length its header
/// gives), if its fixed header fits and it ends within the frame.
fn outer_end(frame: &[u8], p: &Parsed) -> Option<usize> {
    let end = match p.ip_version {
        4 => {
            array_at::<IPV4_HEADER_LEN>(frame, p.l3_offset)?;
            let total = be16_at(frame, p.l3_offset.checked_add(IPV4_TOTAL_LEN)?)?;
            p.l3_offset.checked_add(usize::from(total))?
        }
        6 => {
            array_at::<IPV6_HEADER_LEN>(frame, p.l3_offset)?;
            let len = be16_at(frame, p.l3_offset.checked_add(IPV6_PAYLOAD_LEN)?)?;
            p.l3_offset
                .checked_add(IPV6_HEADER_LEN + usize::from(len))?
        }
        _ => return None,
    };
    (end <= frame.len()).then_some(end)
}

/// Finds the packet quoted by the ICMP/ICMPv6 error in `frame`, whose outer
/// headers were parsed as `p` (`p.key.proto` ICMP over IPv4 or ICMPv6 over
/// IPv6, `p.icmp_type` set).
///
/// Returns `None` when the message is not one of the errors of
/// [`IcmpError`], or the quote does not hold the inner IP header (of the
/// outer packet's family) and the first eight bytes of a TCP, UDP or SCTP
/// header, or the quoted packet is a non-first IPv4 fragment or carries an
/// IPv6 Fragment header (no ports). Quoted IPv6 Hop-by-Hop, Routing and
/// Destination Options headers are skipped. Never panics.
pub fn parse_icmp_error(frame: &[u8], p: &Parsed) -> Option<IcmpError> {
    let v4 = match (p.ip_version, p.key.proto) {
        (4, proto::ICMP) => true,
        (6, proto::ICMPV6) => false,
        _ => return None,
    };
    let end = outer_end(frame, p)?;
    // Read the type from the frame rather than trusting `p`.
    let icmp_type = *frame.get(p.l4_offset)?;
    if !is_error_type(p.ip_version, icmp_type) {
        return None;
    }
    let inner_l3 = p.l4_offset.checked_add(icmp::HEADER_LEN)?;
    let quote = frame.get(inner_l3..end)?;

    let (src, dst, protocol, l4_rel) = if v4 {
        let h = quote.get(..IPV4_HEADER_LEN)?;
        if h[0] >> 4 != 4 {
            return None;
        }
        let hlen = usize::from(h[0] & 0x0f) * 4;
        if hlen < IPV4_HEADER_LEN {
            return None;
        }
        let flg_off = u16::from_be_bytes([h[IPV4_FLG_OFF], h[IPV4_FLG_OFF + 1]]);
        if flg_off & IPV4_OFFSET_MASK != 0 {
            return None;
        }
        (
            Addr::from_v4(array_at(h, IPV4_SRC)?),
            Addr::from_v4(array_at(h, IPV4_DST)?),
            h[IPV4_PROTOCOL],
            hlen,
        )
    } else {
        let h = quote.get(..IPV6_HEADER_LEN)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let mut next = h[IPV6_NEXT_HEADER];
        let mut off = IPV6_HEADER_LEN;
        let mut skipped = 0;
        while matches!(
            next,
            ipv6::NEXT_HOP_BY_HOP | ipv6::NEXT_ROUTING | ipv6::NEXT_DEST_OPTS
        ) {
            if skipped == MAX_INNER_EXT_HEADERS {
                return None;
            }
            let (n, len) = ipv6::ext_header(quote.get(off..)?).ok()?;
            next = n;
            off = off.checked_add(len)?;
            skipped += 1;
        }
        (
            Addr::from_v6(array_at(h, IPV6_SRC)?),
            Addr::from_v6(array_at(h, IPV6_DST)?),
            next,
            off,
        )
    };
    if !matches!(protocol, proto::TCP | proto::UDP | proto::SCTP) {
        return None;
    }
    let ports: [u8; 4] = array_at(quote, l4_rel)?;
    if quote.len() < l4_rel.checked_add(MIN_QUOTED_L4)? {
        return None;
    }
    Some(IcmpError {
        inner: FlowKey {
            src,
            dst,
            sport: u16::from_be_bytes([ports[0], ports[1]]),
            dport: u16::from_be_bytes([ports[2], ports[3]]),
            proto: protocol,
        },
        inner_l3,
        inner_l4: inner_l3.checked_add(l4_rel)?,
        quoted_end: end,
    })
}

/// Writes `new` at `off` and records the change of each 16-bit word in
/// every delta of `deltas`; `None` (and nothing written) if it does not fit.
/// `new.len()` must be even.
fn put(frame: &mut [u8], off: usize, new: &[u8], deltas: &mut [&mut Delta]) -> Option<()> {
    let dst = frame.get_mut(off..off.checked_add(new.len())?)?;
    for (o, n) in dst.chunks_exact(2).zip(new.chunks_exact(2)) {
        let (o, n) = (
            u16::from_be_bytes([o[0], o[1]]),
            u16::from_be_bytes([n[0], n[1]]),
        );
        for d in deltas.iter_mut() {
            d.word(o, n);
        }
    }
    dst.copy_from_slice(new);
    Some(())
}

/// Rewrites the ICMP/ICMPv6 error in `frame` (outer headers parsed as `p`,
/// quote found as `e` by [`parse_icmp_error`] on this very frame) so that it
/// follows a NAT translation: the outer source and destination addresses
/// become `outer_src` and `outer_dst`, and the quoted packet's addresses and
/// ports become those of `inner_to`.
///
/// Patched incrementally (RFC 1624): the quoted IPv4 header checksum; the
/// quoted TCP/UDP checksum when it lies inside the quote (a UDP checksum of
/// `0` stays `0`, an updated one of `0` is written `0xffff`); the ICMP
/// checksum, and for ICMPv6 its pseudo-header part with the new outer
/// addresses; the outer IPv4 header checksum. A quoted SCTP packet gets its
/// CRC32c recomputed when it is quoted whole (a wrong one stays wrong by the
/// same error), else keeps it.
///
/// # Errors
///
/// [`RewriteError::FamilyMismatch`] when an address is not of the packet's
/// family; [`RewriteError::ProtoMismatch`] when the outer packet is not
/// ICMP/ICMPv6 of its family or `inner_to.proto` differs from the quoted
/// protocol; [`RewriteError::Truncated`] when the offsets in `p` and `e` do
/// not describe headers within the frame. The frame is then unchanged.
pub fn translate_icmp_error(
    frame: &mut [u8],
    p: &Parsed,
    e: &IcmpError,
    outer_src: Addr,
    outer_dst: Addr,
    inner_to: &FlowKey,
) -> Result<(), RewriteError> {
    let v4 = match p.ip_version {
        4 => true,
        6 => false,
        _ => return Err(RewriteError::FamilyMismatch),
    };
    if [outer_src, outer_dst, inner_to.src, inner_to.dst]
        .iter()
        .any(|a| a.is_v4() != v4)
    {
        return Err(RewriteError::FamilyMismatch);
    }
    let outer_proto = if v4 { proto::ICMP } else { proto::ICMPV6 };
    if p.key.proto != outer_proto
        || inner_to.proto != e.inner.proto
        || !matches!(e.inner.proto, proto::TCP | proto::UDP | proto::SCTP)
    {
        return Err(RewriteError::ProtoMismatch);
    }

    // Check every bound before the first write.
    let l3_len = if v4 { IPV4_HEADER_LEN } else { IPV6_HEADER_LEN };
    let bounds_ok = (|| {
        let end = e.quoted_end;
        let ok = p.l3_offset.checked_add(l3_len)? <= p.l4_offset
            && e.inner_l3 == p.l4_offset.checked_add(icmp::HEADER_LEN)?
            && e.inner_l3.checked_add(l3_len)? <= e.inner_l4
            // Keep every changed word at an even offset in the ICMP message.
            && (e.inner_l4 - e.inner_l3).is_multiple_of(4)
            && e.inner_l4.checked_add(MIN_QUOTED_L4)? <= end
            && end <= frame.len();
        Some(ok)
    })();
    if bounds_ok != Some(true) {
        return Err(RewriteError::Truncated);
    }
    let end = e.quoted_end;

    // The quoted TCP/UDP checksum, if inside the quote; SCTP: the end of the
    // quoted packet if it is quoted whole.
    let l4_check = match e.inner.proto {
        proto::TCP => Some(16),
        proto::UDP => Some(6),
        _ => None,
    }
    .map(|off| e.inner_l4 + off)
    .filter(|&at| at + 2 <= end);
    let sctp_end = if e.inner.proto == proto::SCTP {
        inner_end(frame, e, v4).filter(|&x| x <= end && x >= e.inner_l4 + sctp::HEADER_LEN)
    } else {
        None
    };
    // The stored SCTP CRC and the right one before the ports change (None if
    // not quoted whole, the ports stay, or the stored CRC is zero).
    let sctp_old = match sctp_end {
        Some(x) => {
            let pkt = frame.get(e.inner_l4..x).ok_or(RewriteError::Truncated)?;
            let h = sctp::Packet::new_checked(pkt).map_err(|_| RewriteError::Truncated)?;
            let moved = (h.src_port(), h.dst_port()) != (inner_to.sport, inner_to.dport);
            (moved && h.checksum() != 0).then(|| (h.checksum(), sctp::sctp_checksum(pkt)))
        }
        None => None,
    };

    let t = || RewriteError::Truncated;
    // `outer`: outer addresses (outer IPv4 header checksum; ICMPv6
    // pseudo-header). `inner_ip`: quoted addresses (quoted IPv4 header
    // checksum). `inner_l4`: quoted addresses and ports (quoted L4
    // checksum). `msg`: every word of the ICMP message that changes.
    let mut outer = Delta::new();
    let mut inner_ip = Delta::new();
    let mut inner_l4 = Delta::new();
    let mut msg = Delta::new();

    // Outer addresses.
    if v4 {
        put(
            frame,
            p.l3_offset + IPV4_SRC,
            &outer_src.v4_octets(),
            &mut [&mut outer],
        )
        .ok_or_else(t)?;
        put(
            frame,
            p.l3_offset + IPV4_DST,
            &outer_dst.v4_octets(),
            &mut [&mut outer],
        )
        .ok_or_else(t)?;
        let at = p.l3_offset + IPV4_CHECKSUM;
        let old = be16_at(frame, at).ok_or_else(t)?;
        put(frame, at, &outer.apply(old).to_be_bytes(), &mut []).ok_or_else(t)?;
    } else {
        put(frame, p.l3_offset + IPV6_SRC, &outer_src.0, &mut [&mut msg]).ok_or_else(t)?;
        put(frame, p.l3_offset + IPV6_DST, &outer_dst.0, &mut [&mut msg]).ok_or_else(t)?;
    }

    // Quoted addresses.
    {
        let ds: &mut [&mut Delta] = &mut [&mut inner_ip, &mut inner_l4, &mut msg];
        if v4 {
            put(frame, e.inner_l3 + IPV4_SRC, &inner_to.src.v4_octets(), ds).ok_or_else(t)?;
            put(frame, e.inner_l3 + IPV4_DST, &inner_to.dst.v4_octets(), ds).ok_or_else(t)?;
        } else {
            put(frame, e.inner_l3 + IPV6_SRC, &inner_to.src.0, ds).ok_or_else(t)?;
            put(frame, e.inner_l3 + IPV6_DST, &inner_to.dst.0, ds).ok_or_else(t)?;
        }
    }
    if v4 {
        let at = e.inner_l3 + IPV4_CHECKSUM;
        let old = be16_at(frame, at).ok_or_else(t)?;
        put(
            frame,
            at,
            &inner_ip.apply(old).to_be_bytes(),
            &mut [&mut msg],
        )
        .ok_or_else(t)?;
    }

    // Quoted ports, then the quoted L4 checksum.
    let mut ports = [0u8; 4];
    ports[..2].copy_from_slice(&inner_to.sport.to_be_bytes());
    ports[2..].copy_from_slice(&inner_to.dport.to_be_bytes());
    put(frame, e.inner_l4, &ports, &mut [&mut inner_l4, &mut msg]).ok_or_else(t)?;
    if let Some(at) = l4_check {
        let old = be16_at(frame, at).ok_or_else(t)?;
        let is_udp = e.inner.proto == proto::UDP;
        if !(is_udp && old == 0) {
            let mut new = inner_l4.apply(old);
            if is_udp && new == 0 {
                new = 0xffff;
            }
            put(frame, at, &new.to_be_bytes(), &mut [&mut msg]).ok_or_else(t)?;
        }
    }
    if let (Some(x), Some((stored, valid))) = (sctp_end, sctp_old) {
        let pkt = frame.get(e.inner_l4..x).ok_or_else(t)?;
        let new = sctp::sctp_checksum(pkt) ^ stored ^ valid;
        // Stored as `sctp::Packet::set_checksum` does (little-endian).
        put(
            frame,
            e.inner_l4 + sctp::CHECKSUM_OFFSET,
            &new.to_le_bytes(),
            &mut [&mut msg],
        )
        .ok_or_else(t)?;
    }

    // The ICMP checksum last: it covers everything above.
    let at = p.l4_offset + icmp::CHECKSUM_OFFSET;
    let old = be16_at(frame, at).ok_or_else(t)?;
    put(frame, at, &msg.apply(old).to_be_bytes(), &mut []).ok_or_else(t)?;
    Ok(())
}

/// The end of the quoted packet as its own header says, if the field is in
/// the frame (it may lie beyond the quote).
fn inner_end(frame: &[u8], e: &IcmpError, v4: bool) -> Option<usize> {
    if v4 {
        let total = be16_at(frame, e.inner_l3.checked_add(IPV4_TOTAL_LEN)?)?;
        e.inner_l3.checked_add(usize::from(total))
    } else {
        let len = be16_at(frame, e.inner_l3.checked_add(IPV6_PAYLOAD_LEN)?)?;
        e.inner_l3.checked_add(IPV6_HEADER_LEN + usize::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{checksum, parse};
    use etherparse::{IpNumber, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn a4(o: [u8; 4]) -> Addr {
        Addr::from_v4(o)
    }

    fn a6(last: u8) -> Addr {
        let mut o = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        o[15] = last;
        Addr::from_v6(o)
    }

    fn key(src: Addr, dst: Addr, sport: u16, dport: u16, proto: u8) -> FlowKey {
        FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
        }
    }

    /// A whole IP packet (no Ethernet) with the tuple `k`: TCP (ACK, fixed
    /// sequence numbers), UDP (checksum zeroed if `udp_zero`) or SCTP (common
    /// header, then `payload` as chunks, CRC filled).
    fn inner(k: &FlowKey, payload: &[u8], udp_zero: bool) -> Vec<u8> {
        let mut v = Vec::new();
        let b = if k.src.is_v4() {
            PacketBuilder::ipv4(k.src.v4_octets(), k.dst.v4_octets(), 1)
        } else {
            PacketBuilder::ipv6(k.src.0, k.dst.0, 1)
        };
        let l3 = if k.src.is_v4() { 20 } else { 40 };
        match k.proto {
            proto::TCP => b
                .tcp(k.sport, k.dport, 0x0102_0304, 4096)
                .ack(0x0a0b_0c0d)
                .write(&mut v, payload)
                .unwrap(),
            proto::UDP => {
                b.udp(k.sport, k.dport).write(&mut v, payload).unwrap();
                if udp_zero {
                    v[l3 + 6] = 0;
                    v[l3 + 7] = 0;
                }
            }
            proto::SCTP => {
                let mut s = Vec::new();
                s.extend_from_slice(&k.sport.to_be_bytes());
                s.extend_from_slice(&k.dport.to_be_bytes());
                s.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]);
                s.extend_from_slice(payload);
                sctp::fill_checksum(&mut s).unwrap();
                b.write(&mut v, IpNumber(proto::SCTP), &s).unwrap();
            }
            _ => unreachable!(),
        }
        v
    }

    /// An Ethernet frame carrying an ICMP (over IPv4) or ICMPv6 (over IPv6)
    /// message of type `ty` from `src` to `dst` quoting `quote`.
    fn error(src: Addr, dst: Addr, ty: u8, code: u8, quote: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
        if src.is_v4() {
            b.ipv4(src.v4_octets(), dst.v4_octets(), 64)
                .icmpv4_raw(ty, code, [0, 0, 0, 0])
                .write(&mut v, quote)
                .unwrap();
        } else {
            b.ipv6(src.0, dst.0, 64)
                .icmpv6_raw(ty, code, [0, 0, 0x05, 0x00])
                .write(&mut v, quote)
                .unwrap();
        }
        v
    }

    /// A test case: an error about `from` between `outer` addresses, to be
    /// translated to `to` between `new_outer` addresses.
    struct Case {
        ty: u8,
        code: u8,
        outer: (Addr, Addr),
        from: FlowKey,
        new_outer: (Addr, Addr),
        to: FlowKey,
        payload: &'static [u8],
        udp_zero: bool,
    }

    /// ICMPv4 port unreachable from a backend 10.0.0.2 to the SNAT address
    /// 10.0.0.1, quoting UDP 10.0.0.1:40000 → 10.0.0.2:5353; translated to
    /// VIP 198.18.0.10 → client 203.0.113.7, quoting 203.0.113.7:1234 →
    /// 198.18.0.10:53.
    fn port_unreachable() -> Case {
        Case {
            ty: icmp::V4_DEST_UNREACHABLE,
            code: 3,
            outer: (a4([10, 0, 0, 2]), a4([10, 0, 0, 1])),
            from: key(
                a4([10, 0, 0, 1]),
                a4([10, 0, 0, 2]),
                40000,
                5353,
                proto::UDP,
            ),
            new_outer: (a4([198, 18, 0, 10]), a4([203, 0, 113, 7])),
            to: key(
                a4([203, 0, 113, 7]),
                a4([198, 18, 0, 10]),
                1234,
                53,
                proto::UDP,
            ),
            payload: b"a DNS query, more or less",
            udp_zero: false,
        }
    }

    /// ICMPv4 time exceeded from a router 192.0.2.254 quoting TCP.
    fn time_exceeded() -> Case {
        Case {
            ty: icmp::V4_TIME_EXCEEDED,
            code: 0,
            outer: (a4([192, 0, 2, 254]), a4([10, 0, 0, 1])),
            from: key(
                a4([10, 0, 0, 1]),
                a4([10, 0, 0, 2]),
                61000,
                8080,
                proto::TCP,
            ),
            new_outer: (a4([192, 0, 2, 254]), a4([203, 0, 113, 7])),
            to: key(
                a4([203, 0, 113, 7]),
                a4([198, 18, 0, 10]),
                55555,
                80,
                proto::TCP,
            ),
            payload: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            udp_zero: false,
        }
    }

    /// ICMPv6 packet too big quoting TCP over IPv6.
    fn packet_too_big() -> Case {
        Case {
            ty: icmp::V6_PACKET_TOO_BIG,
            code: 0,
            outer: (a6(0xfe), a6(1)),
            from: key(a6(1), a6(2), 50000, 8443, proto::TCP),
            new_outer: (a6(0xfe), a6(0x77)),
            to: key(a6(0x77), a6(0x10), 40001, 443, proto::TCP),
            payload: &[0xab; 300],
            udp_zero: false,
        }
    }

    /// ICMPv4 host unreachable quoting UDP without a checksum.
    fn udp_no_checksum() -> Case {
        Case {
            udp_zero: true,
            code: 1,
            ..port_unreachable()
        }
    }

    /// ICMPv6 destination unreachable quoting SCTP.
    fn sctp_v6() -> Case {
        Case {
            ty: icmp::V6_DEST_UNREACHABLE,
            code: 4,
            outer: (a6(2), a6(1)),
            from: key(a6(1), a6(2), 3868, 3868, proto::SCTP),
            new_outer: (a6(0x10), a6(0x77)),
            to: key(a6(0x77), a6(0x10), 5000, 3869, proto::SCTP),
            payload: &[0, 1, 0, 8, 9, 9, 9, 9],
            udp_zero: false,
        }
    }

    /// ICMPv4 parameter problem quoting SCTP.
    fn sctp_v4() -> Case {
        Case {
            ty: V4_PARAMETER_PROBLEM,
            code: 0,
            outer: (a4([10, 0, 0, 2]), a4([10, 0, 0, 1])),
            from: key(
                a4([10, 0, 0, 1]),
                a4([10, 0, 0, 2]),
                2905,
                2906,
                proto::SCTP,
            ),
            new_outer: (a4([198, 18, 0, 10]), a4([203, 0, 113, 7])),
            to: key(
                a4([203, 0, 113, 7]),
                a4([198, 18, 0, 10]),
                2905,
                9999,
                proto::SCTP,
            ),
            payload: &[0, 1, 0, 8, 1, 2, 3, 4],
            udp_zero: false,
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            port_unreachable(),
            time_exceeded(),
            packet_too_big(),
            udp_no_checksum(),
            sctp_v6(),
            sctp_v4(),
        ]
    }

    /// The frame before translation and the one expected after, quoting the
    /// first `cut` bytes of the inner packet (all if `None`).
    fn frames(c: &Case, cut: Option<usize>) -> (Vec<u8>, Vec<u8>, usize) {
        let i = inner(&c.from, c.payload, c.udp_zero);
        let j = inner(&c.to, c.payload, c.udp_zero);
        let n = cut.unwrap_or(i.len()).min(i.len());
        (
            error(c.outer.0, c.outer.1, c.ty, c.code, &i[..n]),
            error(c.new_outer.0, c.new_outer.1, c.ty, c.code, &j[..n]),
            i.len(),
        )
    }

    fn l3_len(v4: bool) -> usize {
        if v4 {
            20
        } else {
            40
        }
    }

    /// Checks every checksum of an ICMP error frame with etherparse and with
    /// a full recomputation, and that it reparses as `outer` quoting `inner`.
    fn verify(f: &[u8], outer: (Addr, Addr), want: &FlowKey, whole: bool) {
        let p = parse(f).unwrap();
        assert_eq!((p.key.src, p.key.dst), outer);
        let e = parse_icmp_error(f, &p).unwrap();
        assert_eq!(&e.inner, want);
        let msg = &f[p.l4_offset..e.quoted_end];
        let stored = u16::from_be_bytes([msg[2], msg[3]]);
        let s = SlicedPacket::from_ethernet(f).unwrap();
        match (&s.net, &s.transport) {
            (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(i))) => {
                let h = ip.header();
                assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                assert_eq!(h.header_checksum(), checksum::ipv4_header(&f[14..34]));
                assert_eq!(i.checksum(), i.icmp_type().calc_checksum(i.payload()));
                assert_eq!(stored, checksum::icmpv4(msg));
            }
            (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(i))) => {
                let h = ip.header();
                assert!(i.is_checksum_valid(h.source(), h.destination()));
                assert_eq!(
                    stored,
                    checksum::l4_v6(&h.source(), &h.destination(), proto::ICMPV6, msg)
                );
            }
            other => panic!("{other:?}"),
        }
        // The quoted packet.
        let q = &f[e.inner_l3..e.quoted_end];
        let v4 = want.src.is_v4();
        if v4 {
            assert_eq!(
                u16::from_be_bytes([q[10], q[11]]),
                checksum::ipv4_header(&q[..20])
            );
            let h = etherparse::Ipv4HeaderSlice::from_slice(q).unwrap();
            assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
        }
        let seg = &f[e.inner_l4..e.quoted_end];
        if whole {
            let (s16, d16) = (want.src.0, want.dst.0);
            let (s4, d4) = (want.src.v4_octets(), want.dst.v4_octets());
            let full = |pr| {
                if v4 {
                    checksum::l4_v4(&s4, &d4, pr, seg)
                } else {
                    checksum::l4_v6(&s16, &d16, pr, seg)
                }
            };
            match want.proto {
                proto::TCP => assert_eq!(u16::from_be_bytes([seg[16], seg[17]]), full(proto::TCP)),
                proto::UDP => {
                    let c = u16::from_be_bytes([seg[6], seg[7]]);
                    assert!(c == 0 || c == full(proto::UDP));
                }
                _ => assert!(sctp::verify_checksum(seg)),
            }
        }
    }

    #[test]
    fn fixtures_are_sound() {
        for c in cases() {
            let (before, after, _) = frames(&c, None);
            verify(&before, c.outer, &c.from, true);
            verify(&after, c.new_outer, &c.to, true);
        }
    }

    #[test]
    fn parses_the_quote() {
        let c = port_unreachable();
        let (f, _, _) = frames(&c, None);
        let p = parse(&f).unwrap();
        let e = parse_icmp_error(&f, &p).unwrap();
        assert_eq!(
            e,
            IcmpError {
                inner: c.from,
                inner_l3: 14 + 20 + 8,
                inner_l4: 14 + 20 + 8 + 20,
                quoted_end: f.len(),
            }
        );
        let c = packet_too_big();
        let (f, _, _) = frames(&c, Some(40 + 8));
        let p = parse(&f).unwrap();
        let e = parse_icmp_error(&f, &p).unwrap();
        assert_eq!((e.inner_l3, e.inner_l4, e.quoted_end), (62, 102, 110));
        assert_eq!(e.inner, c.from);
    }

    /// Translating each fixture, whole and cut at every length that keeps
    /// the ports, gives exactly the frame built from scratch with the new
    /// values (where the cut keeps no L4 checksum, or for SCTP the CRC is
    /// not quoted whole, the rest of the quote is as built).
    #[test]
    fn translate_equals_rebuilt() {
        for c in cases() {
            let v4 = c.from.src.is_v4();
            let (_, _, whole) = frames(&c, None);
            for cut in l3_len(v4) + 8..=whole {
                let (mut f, want, _) = frames(&c, Some(cut));
                let p = parse(&f).unwrap();
                let e = parse_icmp_error(&f, &p).unwrap();
                translate_icmp_error(&mut f, &p, &e, c.new_outer.0, c.new_outer.1, &c.to).unwrap();
                let l4 = 14 + l3_len(v4) + 8 + l3_len(v4);
                let icmp_check = 14 + l3_len(v4) + 2;
                let crc_cut = cut > l3_len(v4) + 8 && cut < whole;
                let half_tcp_check = c.from.proto == proto::TCP && cut == l3_len(v4) + 17;
                if c.from.proto == proto::SCTP && crc_cut {
                    // A truncated SCTP quote keeps its CRC (bytes 8..12);
                    // the rest is as built.
                    let (a, b) = (l4 + 8, (l4 + 12).min(f.len()));
                    assert_eq!(f[..icmp_check], want[..icmp_check]);
                    assert_eq!(f[icmp_check + 2..a], want[icmp_check + 2..a]);
                    assert_eq!(f[b..], want[b..]);
                    verify(&f, c.new_outer, &c.to, false);
                } else if half_tcp_check {
                    // The quote ends inside the TCP checksum: it is left
                    // alone, the rest is as built.
                    let last = f.len() - 1;
                    assert_eq!(f[..icmp_check], want[..icmp_check]);
                    assert_eq!(f[icmp_check + 2..last], want[icmp_check + 2..last]);
                    verify(&f, c.new_outer, &c.to, false);
                } else {
                    assert_eq!(f, want, "cut {cut} of {whole}");
                    verify(&f, c.new_outer, &c.to, cut == whole);
                }
            }
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        let c = udp_no_checksum();
        let (mut f, _, _) = frames(&c, None);
        let p = parse(&f).unwrap();
        let e = parse_icmp_error(&f, &p).unwrap();
        translate_icmp_error(&mut f, &p, &e, c.new_outer.0, c.new_outer.1, &c.to).unwrap();
        assert_eq!(f[e.inner_l4 + 6..e.inner_l4 + 8], [0, 0]);
    }

    /// A corrupted quote keeps wrong checksums wrong by the same error:
    /// once the corruption is undone, the frame is the one built from
    /// scratch (for SCTP too, whose CRC keeps its error).
    #[test]
    fn wrong_checksums_stay_wrong() {
        for c in cases() {
            let (mut f, want, _) = frames(&c, None);
            let p = parse(&f).unwrap();
            let e = parse_icmp_error(&f, &p).unwrap();
            let last = e.quoted_end - 1;
            f[last] ^= 0x40;
            translate_icmp_error(&mut f, &p, &e, c.new_outer.0, c.new_outer.1, &c.to).unwrap();
            let msg = &f[p.l4_offset..e.quoted_end];
            let stored = u16::from_be_bytes([msg[2], msg[3]]);
            if p.ip_version == 4 {
                assert_ne!(stored, checksum::icmpv4(msg));
            } else {
                let (s, d) = (c.new_outer.0 .0, c.new_outer.1 .0);
                assert_ne!(stored, checksum::l4_v6(&s, &d, proto::ICMPV6, msg));
            }
            if c.from.proto == proto::SCTP {
                assert!(!sctp::verify_checksum(&f[e.inner_l4..e.quoted_end]));
            }
            f[last] ^= 0x40;
            assert_eq!(f, want);
        }
    }

    #[test]
    fn non_errors_and_short_quotes_are_none() {
        // Echo request and reply.
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 2)
            .write(&mut v, &inner(&port_unreachable().from, b"x", false))
            .unwrap();
        assert_eq!(parse_icmp_error(&v, &parse(&v).unwrap()), None);
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(a6(1).0, a6(2).0, 64)
            .icmpv6_echo_reply(1, 2)
            .write(&mut v, &inner(&packet_too_big().from, b"x", false))
            .unwrap();
        assert_eq!(parse_icmp_error(&v, &parse(&v).unwrap()), None);
        // Neighbour solicitation (135).
        let c = packet_too_big();
        let i = inner(&c.from, b"", false);
        let v = error(c.outer.0, c.outer.1, 135, 0, &i);
        assert_eq!(parse_icmp_error(&v, &parse(&v).unwrap()), None);
        // Not ICMP at all.
        let v = {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4([1, 2, 3, 4], [5, 6, 7, 8], 1)
                .udp(1, 2)
                .write(&mut v, &i)
                .unwrap();
            v
        };
        assert_eq!(parse_icmp_error(&v, &parse(&v).unwrap()), None);
        // An IPv6 quote in an ICMPv4 error, and the other way round.
        let v = error(c.outer.0, c.outer.1, icmp::V6_PACKET_TOO_BIG, 0, &i);
        let p4 = port_unreachable();
        let i4 = inner(&p4.from, b"", false);
        let w = error(p4.outer.0, p4.outer.1, icmp::V4_DEST_UNREACHABLE, 3, &i);
        assert!(parse_icmp_error(&v, &parse(&v).unwrap()).is_some());
        assert_eq!(parse_icmp_error(&w, &parse(&w).unwrap()), None);
        let w = error(c.outer.0, c.outer.1, icmp::V6_PACKET_TOO_BIG, 0, &i4);
        assert_eq!(parse_icmp_error(&w, &parse(&w).unwrap()), None);
        // A quoted ICMP packet (an error about an error) is not followed.
        let mut q = inner(&p4.from, b"", false);
        q[9] = proto::ICMP;
        let w = error(p4.outer.0, p4.outer.1, icmp::V4_DEST_UNREACHABLE, 3, &q);
        assert_eq!(parse_icmp_error(&w, &parse(&w).unwrap()), None);
        // A non-first quoted fragment has no ports.
        let mut q = inner(&p4.from, b"", false);
        q[7] = 1;
        let w = error(p4.outer.0, p4.outer.1, icmp::V4_DEST_UNREACHABLE, 3, &q);
        assert_eq!(parse_icmp_error(&w, &parse(&w).unwrap()), None);
        // Quotes shorter than the inner header plus 8 bytes.
        for c in cases() {
            let v4 = c.from.src.is_v4();
            for cut in 0..l3_len(v4) + 8 {
                let (f, _, _) = frames(&c, Some(cut));
                let p = parse(&f).unwrap();
                assert_eq!(parse_icmp_error(&f, &p), None, "cut {cut}");
            }
        }
    }

    #[test]
    fn ipv6_extension_headers_in_the_quote() {
        let c = packet_too_big();
        let mut q = inner(&c.from, b"hi", false);
        // Insert an 8-byte Destination Options header after the fixed one.
        q.splice(40..40, [proto::TCP, 0, 1, 4, 0, 0, 0, 0]);
        q[6] = ipv6::NEXT_DEST_OPTS;
        let pl = u16::from_be_bytes([q[4], q[5]]) + 8;
        q[4..6].copy_from_slice(&pl.to_be_bytes());
        let mut f = error(c.outer.0, c.outer.1, c.ty, 0, &q);
        let p = parse(&f).unwrap();
        let e = parse_icmp_error(&f, &p).unwrap();
        assert_eq!(e.inner_l4, e.inner_l3 + 48);
        assert_eq!(e.inner, c.from);
        translate_icmp_error(&mut f, &p, &e, c.new_outer.0, c.new_outer.1, &c.to).unwrap();
        verify(&f, c.new_outer, &c.to, true);
        // A Fragment header is refused.
        let mut q = inner(&c.from, b"hi", false);
        q[6] = ipv6::NEXT_FRAGMENT;
        let f = error(c.outer.0, c.outer.1, c.ty, 0, &q);
        assert_eq!(parse_icmp_error(&f, &parse(&f).unwrap()), None);
    }

    #[test]
    fn translate_refuses_mismatches_and_leaves_the_frame() {
        let c = port_unreachable();
        let (f, _, _) = frames(&c, None);
        let p = parse(&f).unwrap();
        let e = parse_icmp_error(&f, &p).unwrap();
        let v6 = a6(9);
        let tcp = FlowKey {
            proto: proto::TCP,
            ..c.to
        };
        let v6_to = FlowKey { src: v6, ..c.to };
        let tries: [(Addr, Addr, FlowKey, RewriteError); 4] = [
            (v6, c.new_outer.1, c.to, RewriteError::FamilyMismatch),
            (c.new_outer.0, v6, c.to, RewriteError::FamilyMismatch),
            (
                c.new_outer.0,
                c.new_outer.1,
                v6_to,
                RewriteError::FamilyMismatch,
            ),
            (
                c.new_outer.0,
                c.new_outer.1,
                tcp,
                RewriteError::ProtoMismatch,
            ),
        ];
        for (s, d, to, want) in tries {
            let mut g = f.clone();
            assert_eq!(translate_icmp_error(&mut g, &p, &e, s, d, &to), Err(want));
            assert_eq!(g, f);
        }
        // Offsets that do not describe the frame.
        let bad = [
            IcmpError {
                inner_l3: e.inner_l3 + 2,
                ..e
            },
            IcmpError {
                inner_l4: e.inner_l4 + 2,
                ..e
            },
            IcmpError {
                inner_l4: e.inner_l3 + 4,
                ..e
            },
            IcmpError {
                quoted_end: f.len() + 1,
                ..e
            },
            IcmpError {
                quoted_end: e.inner_l4 + 7,
                ..e
            },
            IcmpError {
                inner_l3: usize::MAX - 3,
                ..e
            },
            IcmpError {
                inner_l4: usize::MAX,
                ..e
            },
        ];
        for b in bad {
            let mut g = f.clone();
            assert_eq!(
                translate_icmp_error(&mut g, &p, &b, c.new_outer.0, c.new_outer.1, &c.to),
                Err(RewriteError::Truncated),
                "{b:?}"
            );
            assert_eq!(g, f);
        }
        let mut g = f.clone();
        let q = Parsed {
            l4_offset: usize::MAX,
            ..p
        };
        assert!(translate_icmp_error(&mut g, &q, &e, c.new_outer.0, c.new_outer.1, &c.to).is_err());
        let q = Parsed { ip_version: 6, ..p };
        assert!(translate_icmp_error(&mut g, &q, &e, c.new_outer.0, c.new_outer.1, &c.to).is_err());
        assert_eq!(g, f);
    }

    /// Every truncation of every fixture: parsing never panics and finds no
    /// error (the outer length then lies beyond the frame), and translating
    /// with the whole frame's offsets fails and leaves the bytes alone.
    #[test]
    fn truncations_never_panic() {
        for c in cases() {
            let (f, _, _) = frames(&c, None);
            let p = parse(&f).unwrap();
            let e = parse_icmp_error(&f, &p).unwrap();
            for n in 0..f.len() {
                let cut = &f[..n];
                assert_eq!(parse_icmp_error(cut, &p), None, "{n}");
                if let Ok(q) = parse(cut) {
                    assert_eq!(parse_icmp_error(cut, &q), None, "{n}");
                }
                let mut g = cut.to_vec();
                assert!(
                    translate_icmp_error(&mut g, &p, &e, c.new_outer.0, c.new_outer.1, &c.to)
                        .is_err()
                );
                assert_eq!(g, cut);
            }
        }
    }

    proptest! {
        /// Random bytes behind a plausible outer Ethernet/IP/ICMP header
        /// whose type is an error: nothing panics, and a translation keeps
        /// a valid ICMP checksum valid.
        #[test]
        fn random_quotes_never_panic(
            v6 in any::<bool>(),
            ty in prop::sample::select(vec![1u8, 2, 3, 4, 11, 12, 128]),
            inner_proto in prop::sample::select(vec![6u8, 17, 132, 0, 43, 60, 1]),
            mut quote in proptest::collection::vec(any::<u8>(), 0..120),
            to_port in any::<(u16, u16)>(),
        ) {
            // Give the quote a plausible IP header half the time.
            if quote.len() > 9 && quote[1] & 1 == 0 {
                if v6 {
                    quote[0] = 0x60 | (quote[0] & 0x0f);
                    quote[6] = inner_proto;
                } else {
                    quote[0] = 0x45;
                    quote[6] &= 0xe0;
                    quote[7] = 0;
                    quote[9] = inner_proto;
                }
            }
            let (s, d) = if v6 { (a6(1), a6(2)) } else { (a4([1, 1, 1, 1]), a4([2, 2, 2, 2])) };
            let mut f = error(s, d, ty, 0, &quote);
            let Ok(p) = parse(&f) else { return Ok(()) };
            let Some(e) = parse_icmp_error(&f, &p) else { return Ok(()) };
            prop_assert!(e.inner_l3 < e.inner_l4 && e.inner_l4 + 8 <= e.quoted_end);
            prop_assert!(e.quoted_end <= f.len());
            let (ns, nd) = if v6 { (a6(3), a6(4)) } else { (a4([3, 3, 3, 3]), a4([4, 4, 4, 4])) };
            let to = FlowKey { src: nd, dst: ns, sport: to_port.0, dport: to_port.1, proto: e.inner.proto };
            translate_icmp_error(&mut f, &p, &e, ns, nd, &to).unwrap();
            let p = parse(&f).unwrap();
            let e2 = parse_icmp_error(&f, &p).unwrap();
            prop_assert_eq!(e2.inner, to);
            prop_assert_eq!((p.key.src, p.key.dst), (ns, nd));
            let msg = &f[p.l4_offset..e2.quoted_end];
            let stored = u16::from_be_bytes([msg[2], msg[3]]);
            if v6 {
                prop_assert_eq!(stored, checksum::l4_v6(&ns.0, &nd.0, proto::ICMPV6, msg));
            } else {
                prop_assert_eq!(stored, checksum::icmpv4(msg));
                prop_assert_eq!(
                    u16::from_be_bytes([f[24], f[25]]),
                    checksum::ipv4_header(&f[14..34])
                );
            }
        }

        /// Arbitrary frames and arbitrary offsets: never a panic.
        #[test]
        fn arbitrary_input_never_panics(
            mut f in proptest::collection::vec(any::<u8>(), 0..200),
            l3 in 0usize..64, l4 in 0usize..128,
            il3 in any::<usize>(), il4 in any::<usize>(), end in 0usize..256,
            ver in prop::sample::select(vec![0u8, 4, 6]),
            pr in prop::sample::select(vec![1u8, 58, 6, 17, 132]),
            ipr in prop::sample::select(vec![6u8, 17, 132, 1]),
        ) {
            let p = Parsed {
                l3_offset: l3,
                l4_offset: l4,
                ip_version: ver,
                key: FlowKey { proto: pr, ..FlowKey::default() },
                icmp_type: 3,
                ..Parsed::default()
            };
            let _ = parse_icmp_error(&f, &p);
            let e = IcmpError {
                inner: FlowKey { proto: ipr, ..FlowKey::default() },
                inner_l3: il3 % 256,
                inner_l4: if il4 % 2 == 0 { il4 % 256 } else { il4 },
                quoted_end: end,
            };
            let (a, b) = if ver == 6 { (a6(1), a6(2)) } else { (a4([1, 2, 3, 4]), a4([5, 6, 7, 8])) };
            let to = FlowKey { src: a, dst: b, sport: 1, dport: 2, proto: ipr };
            let before = f.clone();
            if translate_icmp_error(&mut f, &p, &e, a, b, &to).is_err() {
                prop_assert_eq!(f, before);
            }
        }
    }
}
