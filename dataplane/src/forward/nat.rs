//! NAT forwarding: rewrite the 5-tuple in place and patch the checksums.
//!
//! [`rewrite`] replaces both addresses and both ports with those of the target
//! tuple. It never recomputes a checksum over the packet: it reads the old
//! words, accumulates `~old + new` once ([`Delta`], RFC 1624 eqn. 3)
//! and applies that to the IPv4 header checksum (addresses) and to the L4
//! checksum (addresses through the pseudo-header, plus ports). Only the
//! changed words and the checksum fields are touched, so for every protocol
//! but SCTP the cost does not depend on the packet length.
//!
//! Per protocol:
//! - TCP, UDP: addresses, ports, IPv4 header checksum and L4 checksum. A UDP
//!   checksum of `0` ("none", RFC 768) stays `0`; an updated UDP checksum of
//!   `0` is written `0xffff`. A zero UDP checksum is also left alone over IPv6
//!   (the RFC 6935 tunnel case, or a packet the receiver will drop anyway).
//! - SCTP: addresses, ports and the CRC32c ([`sctp`], RFC 9260 § 6.8). The
//!   CRC has no pseudo-header, so new addresses leave it valid, but it covers
//!   the ports and is no one's-complement sum: when a port changes, it is
//!   computed again over the whole SCTP packet (common header and chunks, up
//!   to the end the IP header gives, not the Ethernet padding). To keep a
//!   corrupted packet detectably corrupted, as the incremental updates do,
//!   the packet is checked first: a valid CRC is replaced by the new valid
//!   one; a wrong one is written with the same error (`new ^ stored ^ old`,
//!   CRCs of equal-length messages differing by the XOR of the messages'
//!   CRCs, RFC 3309 § 2); a zero one is left zero (RFC 9653's "zero
//!   checksum", where DTLS guards the packet instead). That is two passes
//!   over the packet, which only an SCTP port change pays.
//! - ICMP: addresses and the IPv4 header checksum (the ICMP checksum has no
//!   pseudo-header); ICMPv6: addresses and the ICMPv6 checksum
//!   (pseudo-header). Ports in the target are ignored.
//!
//! Neither function panics on any input: every access is bounds-checked, and
//! [`rewrite`] checks all of them before it writes anything, so an error
//! leaves the frame unchanged.

use crate::types::{proto, FlowKey, Mac};
use crate::wire::checksum::Delta;
use crate::wire::{sctp, Parsed};

/// Why [`rewrite`] refused a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RewriteError {
    /// The target addresses are not of the packet's IP family (or the parsed
    /// IP version is neither 4 nor 6).
    FamilyMismatch,
    /// The target protocol differs from the packet's, or is one `rewrite`
    /// does not handle (ICMP over IPv6, ICMPv6 over IPv4, anything but TCP,
    /// UDP, SCTP, ICMP and ICMPv6).
    ProtoMismatch,
    /// The frame is shorter than the headers the [`Parsed`] offsets describe.
    Truncated,
}

impl RewriteError {
    /// The snake_case name, for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RewriteError::FamilyMismatch => "family_mismatch",
            RewriteError::ProtoMismatch => "proto_mismatch",
            RewriteError::Truncated => "truncated",
        }
    }
}

impl core::fmt::Display for RewriteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for RewriteError {}

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const IPV4_TOTAL_LEN: usize = 2;
const IPV6_PAYLOAD_LEN: usize = 4;
const IPV4_CHECKSUM: usize = 10;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;

/// A fixed-size window of `buf` at `off`, or `None` if it does not fit.
#[inline]
fn window<const N: usize>(buf: &mut [u8], off: usize) -> Option<&mut [u8; N]> {
    buf.get_mut(off..off.checked_add(N)?)?.try_into().ok()
}

#[inline]
fn be16(b: &[u8; 2]) -> u16 {
    u16::from_be_bytes(*b)
}

/// Rewrites the source and destination address and port of the packet in
/// `frame` (parsed as `p`) to those of `to`, and updates the IPv4 header
/// checksum and the L4 checksum incrementally (RFC 1624).
///
/// `to.proto` must equal `p.key.proto` and `to`'s addresses must be of the
/// packet's family. `p` must come from parsing this very frame: the old
/// values are read from the frame, so a stale `p` cannot corrupt checksums,
/// but its offsets must point at the headers.
///
/// # Errors
///
/// [`RewriteError::FamilyMismatch`], [`RewriteError::ProtoMismatch`], or
/// [`RewriteError::Truncated`] if the frame is too short for the offsets in
/// `p`; on error the frame is unchanged.
pub fn rewrite(frame: &mut [u8], p: &Parsed, to: &FlowKey) -> Result<(), RewriteError> {
    if to.proto != p.key.proto {
        return Err(RewriteError::ProtoMismatch);
    }
    let v4 = match p.ip_version {
        4 => true,
        6 => false,
        _ => return Err(RewriteError::FamilyMismatch),
    };
    if to.src.is_v4() != v4 || to.dst.is_v4() != v4 {
        return Err(RewriteError::FamilyMismatch);
    }
    // Which L4 words change: ports (first 4 bytes) and/or a checksum at an
    // offset covering the pseudo-header.
    let (ports, l4_check) = match (to.proto, v4) {
        (proto::TCP, _) => (true, Some(16)),
        (proto::UDP, _) => (true, Some(6)),
        (proto::SCTP, _) => (true, None),
        (proto::ICMP, true) => (false, None),
        (proto::ICMPV6, false) => (false, Some(2)),
        _ => return Err(RewriteError::ProtoMismatch),
    };

    // Check every bound before the first write.
    let l3_len = if v4 { IPV4_HEADER_LEN } else { IPV6_HEADER_LEN };
    let l4_len = match l4_check {
        Some(off) => off + 2,
        None if ports => 4,
        None => 0,
    };
    let l3_end = p.l3_offset.checked_add(l3_len);
    let l4_end = p.l4_offset.checked_add(l4_len);
    match (l3_end, l4_end) {
        (Some(a), Some(b)) if a <= frame.len() && b <= frame.len() => {}
        _ => return Err(RewriteError::Truncated),
    }
    // SCTP: the packet the CRC covers, l4_offset to the end of the IP packet.
    let sctp_end = if to.proto == proto::SCTP {
        Some(sctp_extent(frame, p, v4).ok_or(RewriteError::Truncated)?)
    } else {
        None
    };

    // L3: addresses (and the IPv4 header checksum).
    let mut delta = Delta::new();
    if v4 {
        let ip = window::<IPV4_HEADER_LEN>(frame, p.l3_offset).ok_or(RewriteError::Truncated)?;
        let (src, dst) = (to.src.v4_octets(), to.dst.v4_octets());
        let old_src = [
            ip[IPV4_SRC],
            ip[IPV4_SRC + 1],
            ip[IPV4_SRC + 2],
            ip[IPV4_SRC + 3],
        ];
        let old_dst = [
            ip[IPV4_DST],
            ip[IPV4_DST + 1],
            ip[IPV4_DST + 2],
            ip[IPV4_DST + 3],
        ];
        delta.bytes4(&old_src, &src);
        delta.bytes4(&old_dst, &dst);
        ip[IPV4_SRC..IPV4_SRC + 4].copy_from_slice(&src);
        ip[IPV4_DST..IPV4_DST + 4].copy_from_slice(&dst);
        let c = delta.apply(u16::from_be_bytes([
            ip[IPV4_CHECKSUM],
            ip[IPV4_CHECKSUM + 1],
        ]));
        ip[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    } else {
        let ip = window::<IPV6_HEADER_LEN>(frame, p.l3_offset).ok_or(RewriteError::Truncated)?;
        let mut old_src = [0u8; 16];
        let mut old_dst = [0u8; 16];
        old_src.copy_from_slice(&ip[IPV6_SRC..IPV6_SRC + 16]);
        old_dst.copy_from_slice(&ip[IPV6_DST..IPV6_DST + 16]);
        delta.bytes16(&old_src, &to.src.0);
        delta.bytes16(&old_dst, &to.dst.0);
        ip[IPV6_SRC..IPV6_SRC + 16].copy_from_slice(&to.src.0);
        ip[IPV6_DST..IPV6_DST + 16].copy_from_slice(&to.dst.0);
    }

    // L4: ports, then the checksum with the pseudo-header change folded in.
    if ports {
        // SCTP: the stored CRC and the right one before the ports change;
        // None if the ports stay (the CRC then stays as valid or invalid as
        // it was) or the stored CRC is zero (it stays zero).
        let sctp_old = match sctp_end {
            Some(end) => {
                let pkt = frame.get(p.l4_offset..end).ok_or(RewriteError::Truncated)?;
                let h = sctp::Packet::new_checked(pkt).map_err(|_| RewriteError::Truncated)?;
                let moved = (h.src_port(), h.dst_port()) != (to.sport, to.dport);
                (moved && h.checksum() != 0).then(|| (h.checksum(), sctp::sctp_checksum(pkt)))
            }
            None => None,
        };
        let h = window::<4>(frame, p.l4_offset).ok_or(RewriteError::Truncated)?;
        delta.word(be16(&[h[0], h[1]]), to.sport);
        delta.word(be16(&[h[2], h[3]]), to.dport);
        h[..2].copy_from_slice(&to.sport.to_be_bytes());
        h[2..].copy_from_slice(&to.dport.to_be_bytes());
        if let (Some(end), Some((stored, valid))) = (sctp_end, sctp_old) {
            // Cannot fail: sctp_extent checked the bounds.
            let pkt = frame
                .get_mut(p.l4_offset..end)
                .ok_or(RewriteError::Truncated)?;
            let new = sctp::sctp_checksum(pkt);
            sctp::Packet::new_checked(pkt)
                .map_err(|_| RewriteError::Truncated)?
                .set_checksum(new ^ stored ^ valid);
        }
    }
    if let Some(off) = l4_check {
        let at = p.l4_offset + off; // cannot overflow: l4_end was checked
        let c = window::<2>(frame, at).ok_or(RewriteError::Truncated)?;
        let old = be16(c);
        let is_udp = to.proto == proto::UDP;
        if !(is_udp && old == 0) {
            let mut new = delta.apply(old);
            if is_udp && new == 0 {
                new = 0xffff;
            }
            *c = new.to_be_bytes();
        }
    }
    Ok(())
}

/// Where the SCTP packet of `frame` ends: the end of the IP packet as its
/// header says (IPv4 total length, IPv6 payload length), or `None` if that
/// lies beyond the frame or leaves no room for the common header after
/// `p.l4_offset`. The caller has checked that the fixed IP header fits.
fn sctp_extent(frame: &[u8], p: &Parsed, v4: bool) -> Option<usize> {
    let (at, base) = if v4 {
        (p.l3_offset.checked_add(IPV4_TOTAL_LEN)?, 0)
    } else {
        (p.l3_offset.checked_add(IPV6_PAYLOAD_LEN)?, IPV6_HEADER_LEN)
    };
    let b = frame.get(at..at.checked_add(2)?)?;
    let end = p
        .l3_offset
        .checked_add(base + usize::from(u16::from_be_bytes([b[0], b[1]])))?;
    let header_end = p.l4_offset.checked_add(sctp::HEADER_LEN)?;
    (header_end <= end && end <= frame.len()).then_some(end)
}

/// Sets the Ethernet source and destination MACs; does nothing on a frame
/// shorter than the two addresses.
#[inline]
pub fn set_macs(frame: &mut [u8], src: Mac, dst: Mac) {
    if let Some(h) = window::<12>(frame, 0) {
        h[..6].copy_from_slice(&dst);
        h[6..].copy_from_slice(&src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Addr;
    use crate::wire::{self, checksum, icmp, ipv4, parse};
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn build_v4(
        vlan: Option<u16>,
        udp: bool,
        src: [u8; 4],
        dst: [u8; 4],
        sp: u16,
        dp: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut v = Vec::new();
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
        match (vlan, udp) {
            (None, false) => b
                .ipv4(src, dst, 64)
                .tcp(sp, dp, 7, 1000)
                .ack(3)
                .write(&mut v, payload),
            (None, true) => b.ipv4(src, dst, 64).udp(sp, dp).write(&mut v, payload),
            (Some(id), false) => b
                .single_vlan(etherparse::VlanId::try_new(id).unwrap())
                .ipv4(src, dst, 64)
                .tcp(sp, dp, 7, 1000)
                .write(&mut v, payload),
            (Some(id), true) => b
                .single_vlan(etherparse::VlanId::try_new(id).unwrap())
                .ipv4(src, dst, 64)
                .udp(sp, dp)
                .write(&mut v, payload),
        }
        .unwrap();
        v
    }

    fn build_v6(
        vlan: Option<u16>,
        udp: bool,
        src: [u8; 16],
        dst: [u8; 16],
        sp: u16,
        dp: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut v = Vec::new();
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
        match (vlan, udp) {
            (None, false) => b
                .ipv6(src, dst, 64)
                .tcp(sp, dp, 7, 1000)
                .syn()
                .write(&mut v, payload),
            (None, true) => b.ipv6(src, dst, 64).udp(sp, dp).write(&mut v, payload),
            (Some(id), false) => b
                .single_vlan(etherparse::VlanId::try_new(id).unwrap())
                .ipv6(src, dst, 64)
                .tcp(sp, dp, 7, 1000)
                .write(&mut v, payload),
            (Some(id), true) => b
                .single_vlan(etherparse::VlanId::try_new(id).unwrap())
                .ipv6(src, dst, 64)
                .udp(sp, dp)
                .write(&mut v, payload),
        }
        .unwrap();
        v
    }

    /// Checks every checksum of `frame` against our oracle and etherparse,
    /// and that both parsers see `want`.
    fn verify(frame: &[u8], want: &FlowKey) -> Result<(), TestCaseError> {
        let p = parse(frame).map_err(|e| TestCaseError::fail(format!("reparse: {e}")))?;
        prop_assert_eq!(&p.key, want);
        let seg = &frame[p.l4_offset..];
        let e = SlicedPacket::from_ethernet(frame)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        match (&e.net, &e.transport) {
            (Some(NetSlice::Ipv4(ip)), Some(t)) => {
                let h = ip.header();
                let (s, d) = (h.source(), h.destination());
                prop_assert_eq!(Addr::from_v4(s), want.src);
                prop_assert_eq!(Addr::from_v4(d), want.dst);
                let ihl = h.ihl() as usize * 4;
                let ours = checksum::ipv4_header(&frame[p.l3_offset..p.l3_offset + ihl]);
                prop_assert_eq!(h.header_checksum(), ours);
                prop_assert_eq!(h.to_header().calc_header_checksum(), ours);
                let seg = &seg[..ip.payload().payload.len()];
                match t {
                    TransportSlice::Tcp(t) => {
                        prop_assert_eq!(
                            (t.source_port(), t.destination_port()),
                            (want.sport, want.dport)
                        );
                        let ours = checksum::l4_v4(&s, &d, proto::TCP, seg);
                        prop_assert_eq!(t.checksum(), ours);
                        prop_assert_eq!(t.calc_checksum_ipv4(s, d).unwrap(), ours);
                    }
                    TransportSlice::Udp(u) => {
                        prop_assert_eq!(
                            (u.source_port(), u.destination_port()),
                            (want.sport, want.dport)
                        );
                        let ours = checksum::l4_v4(&s, &d, proto::UDP, seg);
                        prop_assert_eq!(u.checksum(), ours);
                        prop_assert_eq!(
                            u.to_header()
                                .calc_checksum_ipv4_raw(s, d, u.payload())
                                .unwrap(),
                            ours
                        );
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
            (Some(NetSlice::Ipv6(ip)), Some(t)) => {
                let h = ip.header();
                let (s, d) = (h.source(), h.destination());
                prop_assert_eq!(Addr::from_v6(s), want.src);
                prop_assert_eq!(Addr::from_v6(d), want.dst);
                let seg = &seg[..ip.payload().payload.len()];
                match t {
                    TransportSlice::Tcp(t) => {
                        prop_assert_eq!(
                            (t.source_port(), t.destination_port()),
                            (want.sport, want.dport)
                        );
                        let ours = checksum::l4_v6(&s, &d, proto::TCP, seg);
                        prop_assert_eq!(t.checksum(), ours);
                        prop_assert_eq!(t.calc_checksum_ipv6(s, d).unwrap(), ours);
                    }
                    TransportSlice::Udp(u) => {
                        prop_assert_eq!(
                            (u.source_port(), u.destination_port()),
                            (want.sport, want.dport)
                        );
                        let ours = checksum::l4_v6(&s, &d, proto::UDP, seg);
                        prop_assert_eq!(u.checksum(), ours);
                        prop_assert_eq!(
                            u.to_header()
                                .calc_checksum_ipv6_raw(s, d, u.payload())
                                .unwrap(),
                            ours
                        );
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
            other => prop_assert!(false, "{:?}", other),
        }
        Ok(())
    }

    fn key4(s: [u8; 4], d: [u8; 4], sp: u16, dp: u16, pr: u8) -> FlowKey {
        FlowKey {
            src: Addr::from_v4(s),
            dst: Addr::from_v4(d),
            sport: sp,
            dport: dp,
            proto: pr,
        }
    }

    #[test]
    fn ipv4_tcp_fixture() {
        let mut f = build_v4(
            None,
            false,
            [192, 0, 2, 1],
            [198, 51, 100, 10],
            40000,
            80,
            b"GET /",
        );
        let p = parse(&f).unwrap();
        let to = key4([10, 1, 0, 1], [10, 2, 0, 20], 40001, 8080, proto::TCP);
        rewrite(&mut f, &p, &to).unwrap();
        verify(&f, &to).unwrap();
        // Only the tuple and the two checksums changed.
        let orig = build_v4(
            None,
            false,
            [192, 0, 2, 1],
            [198, 51, 100, 10],
            40000,
            80,
            b"GET /",
        );
        let changed: Vec<usize> = (0..f.len()).filter(|&i| f[i] != orig[i]).collect();
        let allowed = |i: usize| {
            (24..26).contains(&i)
                || (26..34).contains(&i)
                || (34..38).contains(&i)
                || (50..52).contains(&i)
        };
        assert!(changed.iter().all(|&i| allowed(i)), "{changed:?}");
        // And back again.
        let p2 = parse(&f).unwrap();
        rewrite(&mut f, &p2, &p.key).unwrap();
        assert_eq!(f, orig);
    }

    #[test]
    fn ipv6_udp_vlan_fixture() {
        let s: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let d: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut f = build_v6(Some(9), true, s, d, 5000, 53, b"query");
        let p = parse(&f).unwrap();
        let mut to = p.key;
        to.dst = Addr::from_v6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53]);
        to.dport = 5353;
        rewrite(&mut f, &p, &to).unwrap();
        verify(&f, &to).unwrap();
        assert_eq!(parse(&f).unwrap().vlan, Some(9));
    }

    #[test]
    fn ipv4_options_fixture() {
        let f = build_v4(None, true, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2, b"x");
        // Insert a 4-byte option; fix IHL, total length and header checksum.
        let mut g = f[..34].to_vec();
        g.extend_from_slice(&[1, 1, 1, 0]);
        g.extend_from_slice(&f[34..]);
        g[14] = 0x46;
        let tl = u16::from_be_bytes([g[16], g[17]]) + 4;
        g[16..18].copy_from_slice(&tl.to_be_bytes());
        ipv4::Packet::new_checked(&mut g[14..])
            .unwrap()
            .fill_checksum();
        let p = parse(&g).unwrap();
        assert_eq!(p.l4_offset, 38);
        let to = key4([9, 9, 9, 9], [8, 8, 8, 8], 3, 4, proto::UDP);
        rewrite(&mut g, &p, &to).unwrap();
        verify(&g, &to).unwrap();
    }

    #[test]
    fn udp_checksum_zero_stays_zero() {
        let mut f = build_v4(None, true, [1, 2, 3, 4], [5, 6, 7, 8], 1000, 53, b"abc");
        f[40..42].copy_from_slice(&[0, 0]);
        let p = parse(&f).unwrap();
        let to = key4([10, 0, 0, 1], [10, 0, 0, 2], 2000, 5353, proto::UDP);
        rewrite(&mut f, &p, &to).unwrap();
        assert_eq!(&f[40..42], &[0, 0]);
        assert_eq!(parse(&f).unwrap().key, to);
        assert_eq!(
            checksum::ipv4_header(&f[14..34]),
            u16::from_be_bytes([f[24], f[25]])
        );
    }

    #[test]
    fn udp_result_zero_is_written_ffff() {
        let (s, d) = ([1, 2, 3, 4], [5, 6, 7, 8]);
        let mut f = build_v4(None, true, s, d, 1000, 53, b"abcd");
        let p = parse(&f).unwrap();
        // Pick the source port that makes the new datagram sum to 0xffff:
        // with sport 0 the checksum is c0, so sport = c0 adds exactly ~sum.
        let (ns, nd) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let mut probe = build_v4(None, true, ns, nd, 0, 53, b"abcd");
        let c0 = checksum::l4_v4(&ns, &nd, proto::UDP, &probe[34..]);
        probe.clear();
        let to = key4(ns, nd, c0, 53, proto::UDP);
        rewrite(&mut f, &p, &to).unwrap();
        assert_eq!(&f[40..42], &[0xff, 0xff]);
        verify(&f, &to).unwrap();
    }

    #[test]
    fn icmp_rewrites_addresses() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
            .icmpv4_echo_request(5, 6)
            .write(&mut f, b"hi")
            .unwrap();
        let p = parse(&f).unwrap();
        let to = key4([3, 3, 3, 3], [4, 4, 4, 4], 0, 0, proto::ICMP);
        rewrite(&mut f, &p, &to).unwrap();
        assert_eq!(parse(&f).unwrap().key, to);
        assert!(ipv4::Packet::new_checked(&f[14..])
            .unwrap()
            .verify_checksum());
        assert!(icmp::Packet::new_checked(&f[34..])
            .unwrap()
            .verify_checksum_v4());

        let (s, d) = ([0x20; 16], [0x30; 16]);
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(s, d, 64)
            .icmpv6_echo_request(5, 6)
            .write(&mut f, b"hi")
            .unwrap();
        let p = parse(&f).unwrap();
        let to = FlowKey {
            src: Addr([0x40; 16]),
            dst: Addr([0x50; 16]),
            sport: 0,
            dport: 0,
            proto: proto::ICMPV6,
        };
        rewrite(&mut f, &p, &to).unwrap();
        assert_eq!(parse(&f).unwrap().key, to);
        assert!(icmp::Packet::new_checked(&f[54..])
            .unwrap()
            .verify_checksum_v6(&[0x40; 16], &[0x50; 16]));
    }

    /// An SCTP INIT, 5000 -> 80 (chunk: initiate tag 0x01020304, a_rwnd
    /// 65536, 10/65535 streams, TSN 0x0a0b0c0d), with its CRC32c as Scapy
    /// 2.7 computed it (bytes 8..12).
    const SCTP_INIT: [u8; 32] = [
        0x13, 0x88, 0x00, 0x50, 0x00, 0x00, 0x00, 0x00, 0xbd, 0xc1, 0xc7, 0x74, 0x01, 0x00, 0x00,
        0x14, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0a, 0xff, 0xff, 0x0a, 0x0b,
        0x0c, 0x0d,
    ];
    /// The same INIT from port 40000 to 8080, also from Scapy: what NAT of
    /// [`SCTP_INIT`] to those ports must produce.
    const SCTP_INIT_NATTED: [u8; 32] = [
        0x9c, 0x40, 0x1f, 0x90, 0x00, 0x00, 0x00, 0x00, 0x63, 0x4f, 0xd4, 0x77, 0x01, 0x00, 0x00,
        0x14, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0a, 0xff, 0xff, 0x0a, 0x0b,
        0x0c, 0x0d,
    ];

    /// An Ethernet frame carrying `sctp` (an SCTP packet) over IPv4 or IPv6.
    fn build_sctp(vlan: Option<u16>, src: Addr, dst: Addr, sctp: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
        let (s4, d4) = (src.v4_octets(), dst.v4_octets());
        let step = match (vlan, src.is_v4()) {
            (None, true) => b.ipv4(s4, d4, 64),
            (None, false) => b.ipv6(src.0, dst.0, 64),
            (Some(id), v4) => {
                let b = b.single_vlan(etherparse::VlanId::try_new(id).unwrap());
                if v4 {
                    b.ipv4(s4, d4, 64)
                } else {
                    b.ipv6(src.0, dst.0, 64)
                }
            }
        };
        step.write(&mut v, etherparse::IpNumber(proto::SCTP), sctp)
            .unwrap();
        v
    }

    /// The SCTP packet of a frame: from the L4 offset to the end of the IP
    /// packet.
    fn sctp_of(f: &[u8]) -> &[u8] {
        let p = parse(f).unwrap();
        let end = match SlicedPacket::from_ethernet(f).unwrap().net {
            Some(NetSlice::Ipv4(ip)) => p.l3_offset + usize::from(ip.header().total_len()),
            Some(NetSlice::Ipv6(ip)) => {
                p.l3_offset + 40 + usize::from(ip.header().payload_length())
            }
            None => panic!("no ip"),
        };
        &f[p.l4_offset..end]
    }

    #[test]
    fn sctp_rewrite_matches_independent_crc() {
        let (c, v) = (
            Addr::from_v4([192, 0, 2, 1]),
            Addr::from_v4([198, 51, 100, 10]),
        );
        let mut f = build_sctp(None, c, v, &SCTP_INIT);
        let p = parse(&f).unwrap();
        let to = key4([10, 1, 0, 1], [10, 2, 0, 20], 40000, 8080, proto::SCTP);
        rewrite(&mut f, &p, &to).unwrap();
        assert_eq!(sctp_of(&f), &SCTP_INIT_NATTED[..]);
        assert_eq!(parse(&f).unwrap().key, to);
        assert!(ipv4::Packet::new_checked(&f[14..])
            .unwrap()
            .verify_checksum());
        // And back.
        let p2 = parse(&f).unwrap();
        rewrite(&mut f, &p2, &p.key).unwrap();
        assert_eq!(f, build_sctp(None, c, v, &SCTP_INIT));
    }

    #[test]
    fn sctp_rewrite_v6_vlan_with_padding() {
        let (c, v) = (Addr([0x20; 16]), Addr([0x21; 16]));
        let mut f = build_sctp(Some(12), c, v, &SCTP_INIT);
        // The CRC covers the IP payload, not Ethernet padding after it.
        f.extend_from_slice(&[0xee; 9]);
        let p = parse(&f).unwrap();
        let to = FlowKey {
            src: Addr([0x30; 16]),
            dst: Addr([0x31; 16]),
            sport: 40000,
            dport: 8080,
            proto: proto::SCTP,
        };
        rewrite(&mut f, &p, &to).unwrap();
        assert_eq!(sctp_of(&f), &SCTP_INIT_NATTED[..]);
        assert_eq!(parse(&f).unwrap().key, to);
        assert_eq!(&f[f.len() - 9..], &[0xee; 9]);
    }

    #[test]
    fn sctp_address_change_alone_keeps_crc() {
        let mut f = build_sctp(
            None,
            Addr::from_v4([1, 2, 3, 4]),
            Addr::from_v4([5, 6, 7, 8]),
            &SCTP_INIT,
        );
        let p = parse(&f).unwrap();
        let to = key4([9, 9, 9, 9], [8, 8, 8, 8], 5000, 80, proto::SCTP);
        rewrite(&mut f, &p, &to).unwrap();
        assert_eq!(sctp_of(&f), &SCTP_INIT[..]);
    }

    #[test]
    fn sctp_wrong_crc_stays_wrong_and_zero_stays_zero() {
        let (c, v) = (Addr::from_v4([1, 2, 3, 4]), Addr::from_v4([5, 6, 7, 8]));
        let to = key4([9, 9, 9, 9], [8, 8, 8, 8], 40000, 8080, proto::SCTP);
        // A bit flipped in a chunk: the CRC keeps the same error.
        let mut bad = SCTP_INIT;
        bad[20] ^= 0x10;
        let syndrome =
            |s: &[u8]| sctp::Packet::new_checked(s).unwrap().checksum() ^ sctp::sctp_checksum(s);
        let before = syndrome(&bad);
        assert_ne!(before, 0);
        let mut f = build_sctp(None, c, v, &bad);
        let p = parse(&f).unwrap();
        rewrite(&mut f, &p, &to).unwrap();
        assert!(!sctp::verify_checksum(sctp_of(&f)));
        assert_eq!(syndrome(sctp_of(&f)), before);
        // Flipping the bit back yields the right packet.
        let n = f.len();
        f[n - 12] ^= 0x10;
        assert_eq!(sctp_of(&f), &SCTP_INIT_NATTED[..]);

        // A zero checksum (RFC 9653) stays zero.
        let mut zero = SCTP_INIT;
        zero[8..12].fill(0);
        let mut f = build_sctp(None, c, v, &zero);
        let p = parse(&f).unwrap();
        rewrite(&mut f, &p, &to).unwrap();
        assert_eq!(&sctp_of(&f)[8..12], &[0; 4]);
        assert_eq!(parse(&f).unwrap().key, to);
    }

    #[test]
    fn sctp_truncated_ip_length_is_refused() {
        let f = build_sctp(
            None,
            Addr::from_v4([1, 2, 3, 4]),
            Addr::from_v4([5, 6, 7, 8]),
            &SCTP_INIT,
        );
        let p = parse(&f).unwrap();
        let to = key4([9, 9, 9, 9], [8, 8, 8, 8], 1, 2, proto::SCTP);
        // The IP total length beyond the frame, or too short for the common
        // header after the L4 offset.
        for total in [f.len() - 14 + 1, 20 + 11, 0] {
            let mut g = f.clone();
            g[16..18].copy_from_slice(&(total as u16).to_be_bytes());
            assert_eq!(
                rewrite(&mut g, &p, &to),
                Err(RewriteError::Truncated),
                "{total}"
            );
            let mut want = f.clone();
            want[16..18].copy_from_slice(&(total as u16).to_be_bytes());
            assert_eq!(g, want);
        }
        let mut g = f.clone();
        g.truncate(f.len() - 1);
        assert_eq!(rewrite(&mut g, &p, &to), Err(RewriteError::Truncated));
    }

    #[test]
    fn mismatches_and_truncation_leave_frame_alone() {
        let f = build_v4(None, false, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2, b"");
        let p = parse(&f).unwrap();
        let mut g = f.clone();
        let v6 = FlowKey {
            src: Addr([0x20; 16]),
            dst: Addr([0x21; 16]),
            sport: 1,
            dport: 2,
            proto: proto::TCP,
        };
        assert_eq!(rewrite(&mut g, &p, &v6), Err(RewriteError::FamilyMismatch));
        let mixed = FlowKey {
            dst: Addr::from_v4([1, 1, 1, 1]),
            ..v6
        };
        assert_eq!(
            rewrite(&mut g, &p, &mixed),
            Err(RewriteError::FamilyMismatch)
        );
        let udp = key4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, proto::UDP);
        assert_eq!(rewrite(&mut g, &p, &udp), Err(RewriteError::ProtoMismatch));
        let mut bad = p;
        bad.ip_version = 5;
        let tcp = key4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, proto::TCP);
        assert_eq!(
            rewrite(&mut g, &bad, &tcp),
            Err(RewriteError::FamilyMismatch)
        );
        let mut gre = p;
        gre.key.proto = 47;
        let to_gre = FlowKey { proto: 47, ..tcp };
        assert_eq!(
            rewrite(&mut g, &gre, &to_gre),
            Err(RewriteError::ProtoMismatch)
        );
        assert_eq!(g, f);
        // Every shorter frame fails without a write or a panic.
        for n in 0..f.len() {
            let mut h = f[..n].to_vec();
            if n < 34 + 18 {
                assert_eq!(
                    rewrite(&mut h, &p, &tcp),
                    Err(RewriteError::Truncated),
                    "{n}"
                );
                assert_eq!(&h[..], &f[..n]);
            } else {
                assert!(rewrite(&mut h, &p, &tcp).is_ok());
            }
        }
        // Absurd offsets.
        let mut far = p;
        far.l4_offset = usize::MAX - 1;
        assert_eq!(rewrite(&mut g, &far, &tcp), Err(RewriteError::Truncated));
        far.l3_offset = usize::MAX;
        assert_eq!(rewrite(&mut g, &far, &tcp), Err(RewriteError::Truncated));
        assert_eq!(g, f);
    }

    #[test]
    fn set_macs_sets_and_ignores_short() {
        let mut f = build_v4(None, true, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2, b"");
        set_macs(&mut f, [0xa; 6], [0xb; 6]);
        assert_eq!(&f[..6], &[0xb; 6]);
        assert_eq!(&f[6..12], &[0xa; 6]);
        let e = wire::ethernet::Frame::new_checked(&f[..]).unwrap();
        assert_eq!(e.src_addr(), [0xa; 6]);
        for n in 0..12 {
            let mut s = vec![0u8; n];
            set_macs(&mut s, [1; 6], [2; 6]);
            assert!(s.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn error_names() {
        assert_eq!(RewriteError::FamilyMismatch.to_string(), "family_mismatch");
        assert_eq!(RewriteError::ProtoMismatch.as_str(), "proto_mismatch");
        assert_eq!(RewriteError::Truncated.as_str(), "truncated");
    }

    fn v4_addr() -> impl Strategy<Value = [u8; 4]> {
        any::<[u8; 4]>()
    }

    fn v6_addr() -> impl Strategy<Value = [u8; 16]> {
        // Avoid the IPv4-mapped prefix, which Addr treats as IPv4.
        any::<[u8; 16]>().prop_map(|mut a| {
            a[0] |= 0x20;
            a
        })
    }

    proptest! {
        #[test]
        fn rewrite_v4_matches_full_recompute(
            vlan in proptest::option::of(0u16..4095),
            udp in any::<bool>(),
            (s, d, ns, nd) in (v4_addr(), v4_addr(), v4_addr(), v4_addr()),
            (sp, dp, nsp, ndp) in any::<(u16, u16, u16, u16)>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            pad in 0usize..20,
        ) {
            let mut f = build_v4(vlan, udp, s, d, sp, dp, &payload);
            f.resize(f.len() + pad, 0xee);
            let p = parse(&f).unwrap();
            let pr = if udp { proto::UDP } else { proto::TCP };
            let to = key4(ns, nd, nsp, ndp, pr);
            rewrite(&mut f, &p, &to).unwrap();
            verify(&f, &to)?;
        }

        #[test]
        fn rewrite_v6_matches_full_recompute(
            vlan in proptest::option::of(0u16..4095),
            udp in any::<bool>(),
            (s, d, ns, nd) in (v6_addr(), v6_addr(), v6_addr(), v6_addr()),
            (sp, dp, nsp, ndp) in any::<(u16, u16, u16, u16)>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut f = build_v6(vlan, udp, s, d, sp, dp, &payload);
            let p = parse(&f).unwrap();
            let pr = if udp { proto::UDP } else { proto::TCP };
            let to = FlowKey { src: Addr::from_v6(ns), dst: Addr::from_v6(nd), sport: nsp, dport: ndp, proto: pr };
            rewrite(&mut f, &p, &to).unwrap();
            verify(&f, &to)?;
        }

        #[test]
        fn sctp_rewrite_yields_valid_crc(
            vlan in proptest::option::of(0u16..4095),
            v6 in any::<bool>(),
            (s4, d4, ns4, nd4) in (v4_addr(), v4_addr(), v4_addr(), v4_addr()),
            (s6, d6, ns6, nd6) in (v6_addr(), v6_addr(), v6_addr(), v6_addr()),
            (sp, dp, nsp, ndp) in any::<(u16, u16, u16, u16)>(),
            vtag in any::<u32>(),
            chunks in proptest::collection::vec(any::<u8>(), 0..200),
            pad in 0usize..20,
        ) {
            let mut pkt = vec![0u8; 12];
            pkt.extend_from_slice(&chunks);
            {
                let mut h = sctp::Packet::new_checked(&mut pkt[..]).unwrap();
                h.set_src_port(sp);
                h.set_dst_port(dp);
                h.set_verification_tag(vtag);
                h.fill_checksum();
            }
            let (c, v, to) = if v6 {
                (Addr::from_v6(s6), Addr::from_v6(d6), FlowKey {
                    src: Addr::from_v6(ns6), dst: Addr::from_v6(nd6),
                    sport: nsp, dport: ndp, proto: proto::SCTP,
                })
            } else {
                (Addr::from_v4(s4), Addr::from_v4(d4), key4(ns4, nd4, nsp, ndp, proto::SCTP))
            };
            let mut f = build_sctp(vlan, c, v, &pkt);
            f.resize(f.len() + pad, 0xee);
            let p = parse(&f).unwrap();
            rewrite(&mut f, &p, &to).unwrap();
            prop_assert_eq!(parse(&f).unwrap().key, to);
            let out = sctp_of(&f);
            prop_assert!(sctp::verify_checksum(out));
            // Only the ports and the CRC changed.
            prop_assert_eq!(&out[4..8], &pkt[4..8]);
            prop_assert_eq!(&out[12..], &pkt[12..]);
        }

        #[test]
        fn rewrite_never_panics(
            frame in proptest::collection::vec(any::<u8>(), 0..128),
            l3 in 0usize..140, l4 in 0usize..140, ver in 0u8..8,
            pr in prop::sample::select(vec![1u8, 6, 17, 58, 132, 47]),
            v4 in any::<bool>(),
        ) {
            let mut frame = frame;
            let a = if v4 { Addr::from_v4([1, 2, 3, 4]) } else { Addr([0x20; 16]) };
            let p = Parsed {
                l3_offset: l3, l4_offset: l4, ip_version: ver,
                key: FlowKey { src: a, dst: a, sport: 0, dport: 0, proto: pr },
                ..Parsed::default()
            };
            let _ = rewrite(&mut frame, &p, &p.key);
            set_macs(&mut frame, [1; 6], [2; 6]);
        }
    }
}
