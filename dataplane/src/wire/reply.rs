//! The answer a host gives when nobody serves a port, built in place over the
//! received frame: a TCP reset ([`tcp_rst`]) or an ICMP / ICMPv6 port
//! unreachable ([`icmp_port_unreachable`]).
//!
//! Why: kube-proxy REJECTs a packet for a service with no endpoints, so the
//! client fails in milliseconds instead of retrying into a timeout. A load
//! balancer that silently dropped it would turn "no backend" into a hang.
//!
//! Why in place: the received UMEM frame becomes the transmitted one, so the
//! answer costs no allocation and no copy beyond the quoted bytes. Both
//! functions swap the Ethernet addresses (keeping any 802.1Q tag and the
//! EtherType), write a fresh IP header without options at the same offset
//! (IPv6 extension headers are dropped), and write the L4 answer after it
//! with a full checksum. The answer goes back to the packet's sender, from
//! the address it was sent to (the VIP).
//!
//! Which packets get no answer (both return `None`, and leave the frame
//! unchanged):
//! - a frame that `p` does not describe (wrong offsets, EtherType or IP
//!   version, or shorter than the lengths its headers announce);
//! - a packet not from one unicast host or not to one: IPv4 source
//!   `0.0.0.0`, loopback, multicast, class E or broadcast; IPv6 source `::`
//!   or multicast; a multicast or broadcast destination address; a
//!   link-layer multicast or broadcast destination (RFC 1122 § 3.2.2,
//!   § 4.2.3.10; RFC 4443 § 2.4 (e); RFC 9293 § 3.9.1);
//! - for [`tcp_rst`], a segment that is itself a reset (RFC 9293
//!   § 3.10.7.1: "an incoming segment containing a RST is discarded");
//! - for [`icmp_port_unreachable`], anything but TCP, UDP or SCTP: an ICMP
//!   message has no port, and an ICMP error never answers an ICMP error
//!   (RFC 1122 § 3.2.2, RFC 4443 § 2.4 (e.1)).
//!
//! The builders read no clock, so they do not rate-limit: ICMP errors must
//! be rate-limited (RFC 1812 § 4.3.2.8, RFC 4443 § 2.4 (f)), and that is the
//! caller's job. The answers are not padded to the 60-byte Ethernet minimum
//! (an IPv4 RST is 54 bytes); the NIC pads short frames.
//!
//! # No-panic contract
//!
//! Both functions take any buffer, length and [`Parsed`] without panicking:
//! the received headers are read through checked views and every write
//! goes to a range checked before the first write.

use super::ethernet::{self, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use super::parse::Parsed;
use super::{icmp, ipv4, ipv6, tcp, tcp_flags};
use crate::types::proto;

/// The TTL or hop limit of an answer (Linux's default).
pub const REPLY_TTL: u8 = 64;

/// Bytes of the original datagram's data quoted after its IPv4 header in an
/// ICMP error (RFC 792: "Internet Header + 64 bits of Original Data
/// Datagram").
pub const ICMPV4_QUOTED_DATA: usize = 8;

/// The largest ICMPv6 error packet, IPv6 header included (RFC 4443 § 2.4
/// (c): as much of the invoking packet as fits in the IPv6 minimum MTU).
pub const ICMPV6_MAX_PACKET: usize = 1280;

/// ICMPv4 destination unreachable code "port unreachable" (RFC 792).
pub const ICMPV4_CODE_PORT_UNREACHABLE: u8 = 3;

/// ICMPv6 destination unreachable code "port unreachable" (RFC 4443 § 3.1).
pub const ICMPV6_CODE_PORT_UNREACHABLE: u8 = 4;

/// ICMP destination unreachable code "fragmentation needed and DF set"
/// (RFC 792).
pub const ICMPV4_CODE_FRAG_NEEDED: u8 = 4;

/// The smallest MTU an IPv4 link may have (RFC 791: every module must
/// forward a 68-byte datagram without fragmenting it).
pub const ICMPV4_MIN_MTU: u16 = 68;

/// The smallest MTU an IPv6 link may have (RFC 8200 § 5).
pub const ICMPV6_MIN_MTU: u16 = 1280;

/// The received packet's addresses, read from its IP header.
#[derive(Clone, Copy)]
enum Addrs {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

impl Addrs {
    /// Length of the answer's IP header (no options or extension headers).
    fn header_len(&self) -> usize {
        match self {
            Addrs::V4 { .. } => ipv4::MIN_HEADER_LEN,
            Addrs::V6 { .. } => ipv6::HEADER_LEN,
        }
    }

    /// Whether the packet came from one unicast host and went to one, so
    /// that it may be answered (RFC 1122 § 3.2.2 and § 4.2.3.10, RFC 4443
    /// § 2.4 (e)).
    fn unicast(&self) -> bool {
        match self {
            Addrs::V4 { src, dst } => {
                // 0/8 "this network", 127/8 loopback, 224/4 multicast and
                // 240/4 (class E, including 255.255.255.255).
                let bad_src = matches!(src[0], 0 | 127 | 224..=255);
                let bad_dst = dst[0] >= 224 || *dst == [0; 4];
                !bad_src && !bad_dst
            }
            Addrs::V6 { src, dst } => {
                let bad_src = src[0] == 0xff || *src == [0; 16];
                let bad_dst = dst[0] == 0xff || *dst == [0; 16];
                !bad_src && !bad_dst
            }
        }
    }
}

/// What the builders need from the received frame, checked against it.
struct Received {
    addrs: Addrs,
    /// Where the received IP packet ends in the frame (before any Ethernet
    /// padding).
    ip_end: usize,
    /// IPv4: the DF bit. IPv6: true (routers never fragment, RFC 8200
    /// § 5).
    dont_frag: bool,
}

/// Checks that `p` describes `frame` (EtherType and IP version agree, the
/// IP header and the lengths it announces fit, the L4 offset lies between
/// the end of the IP header and the end of the packet) and reads the
/// addresses.
fn received(frame: &[u8], p: &Parsed) -> Option<Received> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    // Link-layer broadcast or multicast: the I/G bit of the destination.
    if eth.dst_addr()[0] & 1 != 0 || eth.header_len() != p.l3_offset {
        return None;
    }
    let l3 = frame.get(p.l3_offset..)?;
    let (addrs, ip_header_len, ip_len, dont_frag) = match (eth.ethertype(), p.ip_version) {
        (ETHERTYPE_IPV4, 4) => {
            let ip = ipv4::Packet::new_checked(l3).ok()?;
            if ip.version() != 4 || ip.protocol() != p.key.proto || ip.is_fragment() {
                return None;
            }
            let addrs = Addrs::V4 {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
            };
            (
                addrs,
                ip.header_len(),
                usize::from(ip.total_len()),
                ip.dont_frag(),
            )
        }
        (ETHERTYPE_IPV6, 6) => {
            let ip = ipv6::Packet::new_checked(l3).ok()?;
            if ip.version() != 6 {
                return None;
            }
            let addrs = Addrs::V6 {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
            };
            let len = ipv6::HEADER_LEN + usize::from(ip.payload_len());
            (addrs, ipv6::HEADER_LEN, len, true)
        }
        _ => return None,
    };
    // `l3_offset + ip_len <= frame.len()` after the checked view, so none of
    // these sums can overflow.
    let ip_end = p.l3_offset + ip_len;
    if p.l4_offset < p.l3_offset + ip_header_len || p.l4_offset > ip_end || !addrs.unicast() {
        return None;
    }
    Some(Received {
        addrs,
        ip_end,
        dont_frag,
    })
}

/// Swaps the Ethernet source and destination addresses.
fn swap_macs(frame: &mut [u8]) {
    if let Some(h) = frame.get_mut(..12) {
        let (dst, src) = h.split_at_mut(6);
        dst.swap_with_slice(src);
    }
}

/// Writes the answer's IP header into `h` (exactly [`Addrs::header_len`]
/// bytes), addressed back to the sender: an IPv4 header without options,
/// identification 0 and DF (RFC 6864 § 4.1: an atomic datagram), or an IPv6
/// header with traffic class and flow label 0; TTL or hop limit
/// [`REPLY_TTL`]. `payload_len` is the length of what follows the header.
fn write_ip(h: &mut [u8], addrs: &Addrs, protocol: u8, payload_len: u16) {
    match *addrs {
        Addrs::V4 { src, dst } => {
            let mut ip = ipv4::Packet::new_unchecked(h);
            ip.set_version_ihl(4, 5);
            ip.set_dscp_ecn(0);
            ip.set_total_len(payload_len.saturating_add(ipv4::MIN_HEADER_LEN as u16));
            ip.set_ident(0);
            ip.set_frag(true, false, 0);
            ip.set_ttl(REPLY_TTL);
            ip.set_protocol(protocol);
            ip.set_src_addr(dst);
            ip.set_dst_addr(src);
            ip.fill_checksum();
        }
        Addrs::V6 { src, dst } => {
            let mut ip = ipv6::Packet::new_unchecked(h);
            ip.set_version_tc_flow(6, 0, 0);
            ip.set_payload_len(payload_len);
            ip.set_next_header(protocol);
            ip.set_hop_limit(REPLY_TTL);
            ip.set_src_addr(dst);
            ip.set_dst_addr(src);
        }
    }
}

/// Rewrites `buf[..len]` (a received frame whose parse is `p`) into a TCP
/// RST answering it, sent back to its sender.
///
/// The MACs, IP addresses and ports are swapped (IPv4 or IPv6, any VLAN tag
/// kept); the reset follows RFC 9293 § 3.10.7.1 (RFC 793 p. 36, "If the
/// state is CLOSED"): if the segment had ACK, `<SEQ=SEG.ACK><CTL=RST>`;
/// otherwise `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`, where SEG.LEN
/// counts the data plus one for SYN and one for FIN. The answer has no
/// options and no payload, window 0, TTL or hop limit [`REPLY_TTL`], IPv4
/// identification 0 with DF, and fresh checksums.
///
/// Returns the new frame length, at most `len` since the answer has no
/// options or payload (the caller shortens the frame), or `None` if `p` is
/// not TCP, the frame is short or does not match `p`, the segment is itself
/// a reset, or the packet is not unicast (see the module docs); the frame is
/// then unchanged.
pub fn tcp_rst(buf: &mut [u8], len: usize, p: &Parsed) -> Option<usize> {
    if p.key.proto != proto::TCP {
        return None;
    }
    let frame = buf.get_mut(..len)?;
    let r = received(frame, p)?;
    let seg = tcp::Packet::new_checked(frame.get(p.l4_offset..r.ip_end)?).ok()?;
    if seg.rst() {
        return None;
    }
    let (seq, ack, flags) = if seg.ack() {
        (seg.ack_number(), 0, tcp_flags::RST)
    } else {
        // The data length fits a u16 (it is inside an IP packet).
        let seg_len = seg.payload().len() as u32 + u32::from(seg.syn()) + u32::from(seg.fin());
        (
            0,
            seg.seq_number().wrapping_add(seg_len),
            tcp_flags::RST | tcp_flags::ACK,
        )
    };
    let (sport, dport) = (seg.src_port(), seg.dst_port());
    // Back to the sender, from the port it sent to.
    let end = write_bare_tcp(
        frame,
        p.l3_offset,
        &r.addrs,
        (dport, sport),
        seq,
        ack,
        flags,
    )?;
    swap_macs(frame);
    Some(end)
}

/// Writes a bare TCP segment (no options, no payload, window 0) after the
/// IP header at `l3`, both addressed as [`write_ip`] does (back to `addrs`'s
/// source), with `ports` = (source, destination) of the written segment and
/// fresh checksums. Returns the frame's new length, or `None` with the
/// frame unchanged if it is too short.
fn write_bare_tcp(
    frame: &mut [u8],
    l3: usize,
    addrs: &Addrs,
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
) -> Option<usize> {
    let l4 = l3.checked_add(addrs.header_len())?;
    let end = l4.checked_add(tcp::MIN_HEADER_LEN)?;
    if end > frame.len() {
        return None;
    }
    write_ip(
        frame.get_mut(l3..l4)?,
        addrs,
        proto::TCP,
        tcp::MIN_HEADER_LEN as u16,
    );
    let h = frame.get_mut(l4..end)?;
    // Reserved bits, window and urgent pointer stay zero.
    h.fill(0);
    let mut t = tcp::Packet::new_unchecked(h);
    t.set_src_port(ports.0);
    t.set_dst_port(ports.1);
    t.set_seq_number(seq);
    t.set_ack_number(ack);
    t.set_header_len(tcp::MIN_HEADER_LEN);
    t.set_flags(flags);
    match *addrs {
        // The segment's source is `addrs`'s destination.
        Addrs::V4 { src, dst } => t.fill_checksum_v4(&dst, &src),
        Addrs::V6 { src, dst } => t.fill_checksum_v6(&dst, &src),
    }
    Some(end)
}

/// Rewrites the frame into an ICMP destination unreachable / port
/// unreachable (ICMP type 3 code 3, RFC 792; ICMPv6 type 1 code 4, RFC 4443
/// § 3.1) back to the sender, from the address the client sent to (the
/// VIP).
///
/// The message quotes the received IP packet from its IP header on: for
/// IPv4 the header (with any options) and the first
/// [`ICMPV4_QUOTED_DATA`] bytes of its data (RFC 792), all of which must
/// fit; for IPv6 as much as fits in [`ICMPV6_MAX_PACKET`] bytes of ICMPv6
/// packet (RFC 4443 § 2.4 (c)) and in the buffer, but at least the IPv6
/// header, its extension headers and the first 8 bytes of the L4 header.
///
/// The answer is longer than the received packet, so `buf` is the frame's
/// whole buffer (e.g. a 2048-byte UMEM frame) and `len` the received
/// length. The quoted bytes are moved (overlapping copy) before the new
/// headers overwrite them.
///
/// Returns the new frame length, or `None` if the answer does not fit in
/// `buf`, the frame is not IP or does not match `p`, the packet is not TCP,
/// UDP or SCTP, or it is not unicast (see the module docs); the frame is
/// then unchanged.
pub fn icmp_port_unreachable(buf: &mut [u8], len: usize, p: &Parsed) -> Option<usize> {
    let r = received(buf.get(..len)?, p)?;
    let (v4, v6) = (
        (icmp::V4_DEST_UNREACHABLE, ICMPV4_CODE_PORT_UNREACHABLE),
        (icmp::V6_DEST_UNREACHABLE, ICMPV6_CODE_PORT_UNREACHABLE),
    );
    // The 4 bytes after the checksum are unused: zero (no RFC 4884 length,
    // no next-hop MTU).
    write_icmp_error(buf, p, &r, v4, v6, [0; 4])
}

/// Rewrites the frame into the error a router sends for a packet larger
/// than the next hop's MTU, back to its sender: ICMP destination
/// unreachable / fragmentation needed and DF set (type 3 code 4, RFC 792)
/// with the next-hop MTU in the low 16 bits of the second word (RFC 1191
/// § 4), or ICMPv6 packet too big (type 2 code 0, RFC 4443 § 3.2) with the
/// MTU as its 32-bit field. The sender's path MTU discovery (RFC 1191,
/// RFC 8201) then lowers its packets to `mtu`.
///
/// It comes from the address the packet was sent to (the VIP for a
/// client) and quotes what [`icmp_port_unreachable`] quotes: for IPv4 the
/// IP header and 8 bytes of data, which is what the sender's stack reads
/// to find the connection (Linux `icmp_unreach` → `tcp_v4_err` /
/// `__udp4_lib_err`); for IPv6 as much as fits in 1280 bytes.
///
/// Returns the new frame length, or `None`, with the frame unchanged,
/// where [`icmp_port_unreachable`] does, and also for an IPv4 packet
/// without DF (a router would fragment it; the caller drops it) and for
/// an `mtu` below the minimum of the family (68 for IPv4, RFC 791; 1280
/// for IPv6, RFC 8200 § 5), which no link may have.
pub fn icmp_too_big(buf: &mut [u8], len: usize, p: &Parsed, mtu: u16) -> Option<usize> {
    let r = received(buf.get(..len)?, p)?;
    let min_mtu = match r.addrs {
        Addrs::V4 { .. } => ICMPV4_MIN_MTU,
        Addrs::V6 { .. } => ICMPV6_MIN_MTU,
    };
    if !r.dont_frag || mtu < min_mtu {
        return None;
    }
    let word = match r.addrs {
        Addrs::V4 { .. } => {
            let m = mtu.to_be_bytes();
            [0, 0, m[0], m[1]]
        }
        Addrs::V6 { .. } => u32::from(mtu).to_be_bytes(),
    };
    write_icmp_error(
        buf,
        p,
        &r,
        (icmp::V4_DEST_UNREACHABLE, ICMPV4_CODE_FRAG_NEEDED),
        (icmp::V6_PACKET_TOO_BIG, 0),
        word,
    )
}

/// Rewrites the frame into the error a router sends for a packet whose TTL
/// or hop limit ran out on it: ICMP time exceeded in transit (type 11 code
/// 0, RFC 792) or ICMPv6 time exceeded / hop limit exceeded (type 3 code
/// 0, RFC 4443 § 3.3), back to its sender, from the address the packet was
/// sent to (the VIP for a client, as IPVS's `icmp_send` from the local
/// VIP does) and quoting what [`icmp_port_unreachable`] quotes. The four
/// bytes after the checksum are unused (zero).
///
/// Returns the new frame length, or `None`, with the frame unchanged,
/// where [`icmp_port_unreachable`] does (an ICMP packet is never answered
/// with an ICMP error, RFC 1812 § 4.3.2.7).
pub fn icmp_time_exceeded(buf: &mut [u8], len: usize, p: &Parsed) -> Option<usize> {
    let r = received(buf.get(..len)?, p)?;
    write_icmp_error(
        buf,
        p,
        &r,
        (icmp::V4_TIME_EXCEEDED, 0),
        (icmp::V6_TIME_EXCEEDED, 0),
        [0; 4],
    )
}

/// Writes an ICMP (`v4`: type, code) or ICMPv6 (`v6`) error about the
/// received packet `r` back to its sender, with `word` as the four bytes
/// after the checksum, quoting as [`icmp_port_unreachable`] documents.
/// Returns the new frame length, or `None` with the frame unchanged.
fn write_icmp_error(
    buf: &mut [u8],
    p: &Parsed,
    r: &Received,
    v4: (u8, u8),
    v6: (u8, u8),
    word: [u8; 4],
) -> Option<usize> {
    if !matches!(p.key.proto, proto::TCP | proto::UDP | proto::SCTP) {
        return None;
    }
    let l3 = p.l3_offset;
    let received_len = r.ip_end - l3; // received() checked l3 < ip_end
    let ip_len = r.addrs.header_len();
    let head = ip_len + icmp::HEADER_LEN;
    let quote = match r.addrs {
        Addrs::V4 { .. } => {
            // The IP header with options ends at the L4 offset.
            let q = (p.l4_offset - l3).saturating_add(ICMPV4_QUOTED_DATA);
            q.min(received_len)
        }
        Addrs::V6 { .. } => {
            let room = buf.len().checked_sub(l3.checked_add(head)?)?;
            let q = received_len.min(ICMPV6_MAX_PACKET - head).min(room);
            let at_least = (p.l4_offset - l3).saturating_add(8).min(received_len);
            if q < at_least {
                return None;
            }
            q
        }
    };
    let message_end = l3.checked_add(head)?.checked_add(quote)?;
    if message_end > buf.len() {
        return None;
    }
    let payload_len = u16::try_from(icmp::HEADER_LEN + quote).ok()?;

    // Every check is done: move the quote out of the way, then write.
    buf.copy_within(l3..l3 + quote, l3 + head);
    swap_macs(buf);
    let (protocol, (msg_type, code)) = match r.addrs {
        Addrs::V4 { .. } => (proto::ICMP, v4),
        Addrs::V6 { .. } => (proto::ICMPV6, v6),
    };
    write_ip(
        buf.get_mut(l3..l3 + ip_len)?,
        &r.addrs,
        protocol,
        payload_len,
    );
    let msg = buf.get_mut(l3 + ip_len..message_end)?;
    // Type, code, checksum (filled below), then `word`.
    if let Some(h) = msg.get_mut(..icmp::HEADER_LEN) {
        h.copy_from_slice(&[msg_type, code, 0, 0, word[0], word[1], word[2], word[3]]);
    }
    let mut m = icmp::Packet::new_unchecked(msg);
    match r.addrs {
        Addrs::V4 { .. } => m.fill_checksum_v4(),
        Addrs::V6 { src, dst } => m.fill_checksum_v6(&dst, &src),
    }
    Some(message_end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Addr, FlowKey};
    use crate::wire::{checksum, parse};
    use etherparse::{
        icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, Ipv4HeaderSlice, Ipv6HeaderSlice, NetSlice,
        PacketBuilder, SlicedPacket, TransportSlice, UdpHeaderSlice,
    };
    use proptest::prelude::*;

    const MAC_C: [u8; 6] = [2, 0, 0, 0, 0, 0xc1];
    const MAC_LB: [u8; 6] = [2, 0, 0, 0, 0, 0x1b];
    const CLIENT4: [u8; 4] = [192, 0, 2, 7];
    const VIP4: [u8; 4] = [198, 51, 100, 10];
    const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    const VIP6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    /// A UMEM frame's capacity.
    const FRAME_CAP: usize = 2048;

    #[derive(Clone, Copy, Debug)]
    struct Tcp {
        seq: u32,
        ack: Option<u32>,
        syn: bool,
        fin: bool,
        rst: bool,
    }

    const SYN: Tcp = Tcp {
        seq: 1000,
        ack: None,
        syn: true,
        fin: false,
        rst: false,
    };

    /// A client → VIP frame: TCP with `tcp` or UDP when `tcp` is `None`.
    fn frame(v6: bool, vlan: Option<u16>, tcp: Option<Tcp>, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MAC_C, MAC_LB);
        let mut v = Vec::new();
        macro_rules! l4 {
            ($ip:expr) => {
                match tcp {
                    Some(t) => {
                        let mut b = $ip.tcp(40000, 80, t.seq, 1024);
                        if let Some(a) = t.ack {
                            b = b.ack(a);
                        }
                        if t.syn {
                            b = b.syn();
                        }
                        if t.fin {
                            b = b.fin();
                        }
                        if t.rst {
                            b = b.rst();
                        }
                        b.write(&mut v, payload)
                    }
                    None => $ip.udp(5353, 53).write(&mut v, payload),
                }
            };
        }
        match (vlan, v6) {
            (None, false) => l4!(b.ipv4(CLIENT4, VIP4, 57)),
            (None, true) => l4!(b.ipv6(CLIENT6, VIP6, 57)),
            (Some(id), false) => {
                l4!(b
                    .single_vlan(etherparse::VlanId::try_new(id).unwrap())
                    .ipv4(CLIENT4, VIP4, 57))
            }
            (Some(id), true) => {
                l4!(b
                    .single_vlan(etherparse::VlanId::try_new(id).unwrap())
                    .ipv6(CLIENT6, VIP6, 57))
            }
        }
        .unwrap();
        v
    }

    fn fail(e: impl core::fmt::Debug) -> TestCaseError {
        TestCaseError::fail(format!("{e:?}"))
    }

    /// Checks what both answers share: MACs swapped, VLAN kept, addresses
    /// swapped, TTL 64, IPv4 ident 0 + DF and a valid header checksum, no
    /// options or extension headers. Returns etherparse's view.
    fn check_common<'a>(
        orig: &[u8],
        out: &'a [u8],
        l4_proto: u8,
    ) -> Result<SlicedPacket<'a>, TestCaseError> {
        let p0 = parse(orig).map_err(fail)?;
        prop_assert_eq!(&out[..6], &orig[6..12]);
        prop_assert_eq!(&out[6..12], &orig[..6]);
        prop_assert_eq!(&out[12..p0.l3_offset], &orig[12..p0.l3_offset]);
        let e = SlicedPacket::from_ethernet(out).map_err(fail)?;
        match &e.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                prop_assert_eq!(Addr::from_v4(h.source()), p0.key.dst);
                prop_assert_eq!(Addr::from_v4(h.destination()), p0.key.src);
                prop_assert_eq!(h.ttl(), REPLY_TTL);
                prop_assert_eq!(h.identification(), 0);
                prop_assert!(h.dont_fragment());
                prop_assert_eq!(h.ihl(), 5);
                prop_assert_eq!(h.protocol().0, l4_proto);
                prop_assert_eq!(usize::from(h.total_len()), out.len() - p0.l3_offset);
                prop_assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                prop_assert_eq!(
                    h.header_checksum(),
                    checksum::ipv4_header(&out[p0.l3_offset..p0.l3_offset + 20])
                );
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                prop_assert_eq!(Addr::from_v6(h.source()), p0.key.dst);
                prop_assert_eq!(Addr::from_v6(h.destination()), p0.key.src);
                prop_assert_eq!(h.hop_limit(), REPLY_TTL);
                prop_assert_eq!(h.next_header().0, l4_proto);
                prop_assert_eq!(
                    usize::from(h.payload_length()),
                    out.len() - p0.l3_offset - 40
                );
            }
            other => prop_assert!(false, "{:?}", other),
        }
        Ok(e)
    }

    /// Checks a reset answering `orig` against `(seq, ack, flags)`.
    fn check_rst(orig: &[u8], out: &[u8], want: (u32, u32, u8)) -> Result<(), TestCaseError> {
        let e = check_common(orig, out, proto::TCP)?;
        let p0 = parse(orig).map_err(fail)?;
        let p1 = parse(out).map_err(fail)?;
        prop_assert_eq!(p1.key, p0.key.reversed());
        prop_assert_eq!(p1.vlan, p0.vlan);
        prop_assert_eq!(p1.tcp_flags, want.2);
        let Some(TransportSlice::Tcp(t)) = &e.transport else {
            return Err(fail(&e.transport));
        };
        prop_assert_eq!(t.sequence_number(), want.0);
        prop_assert_eq!(t.acknowledgment_number(), want.1);
        prop_assert_eq!(t.data_offset(), 5);
        prop_assert!(t.payload().is_empty());
        prop_assert_eq!(t.window_size(), 0);
        let c = match &e.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                t.calc_checksum_ipv4(h.source(), h.destination())
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                t.calc_checksum_ipv6(h.source(), h.destination())
            }
            None => return Err(fail("no net")),
        };
        prop_assert_eq!(t.checksum(), c.map_err(fail)?);
        Ok(())
    }

    /// Answers `orig` in a copy of it and checks the reset.
    fn rst_of(orig: &[u8], want: (u32, u32, u8)) {
        let p = parse(orig).unwrap();
        let mut buf = orig.to_vec();
        let n = tcp_rst(&mut buf, orig.len(), &p).unwrap();
        let ip_len = if p.ip_version == 4 { 20 } else { 40 };
        assert_eq!(n, p.l3_offset + ip_len + 20);
        check_rst(orig, &buf[..n], want).unwrap();
    }

    #[test]
    fn rst_answers_syn_v4_v6_vlan() {
        use tcp_flags::{ACK, RST};
        for v6 in [false, true] {
            for vlan in [None, Some(100)] {
                rst_of(&frame(v6, vlan, Some(SYN), b""), (0, 1001, RST | ACK));
            }
        }
    }

    #[test]
    fn rst_answers_ack_with_payload_v4_v6_vlan() {
        let seg = Tcp {
            seq: 7,
            ack: Some(0xdead_beef),
            syn: false,
            fin: false,
            rst: false,
        };
        for v6 in [false, true] {
            for vlan in [None, Some(4094)] {
                let f = frame(v6, vlan, Some(seg), b"GET / HTTP/1.1\r\n\r\n");
                rst_of(&f, (0xdead_beef, 0, tcp_flags::RST));
            }
        }
    }

    #[test]
    fn rst_segment_length_counts_data_syn_and_fin() {
        use tcp_flags::{ACK, RST};
        // Data and FIN without ACK: SEG.LEN = 5 + 1.
        let t = Tcp {
            seq: 100,
            ack: None,
            syn: false,
            fin: true,
            rst: false,
        };
        rst_of(&frame(false, None, Some(t), b"hello"), (0, 106, RST | ACK));
        // SYN with data and FIN: 3 + 1 + 1, wrapping past 2^32.
        let t = Tcp {
            seq: u32::MAX - 1,
            ack: None,
            syn: true,
            fin: true,
            rst: false,
        };
        rst_of(&frame(true, None, Some(t), b"abc"), (0, 3, RST | ACK));
        // Ethernet padding is not data.
        let mut f = frame(false, None, Some(SYN), b"");
        f.resize(60, 0xee);
        rst_of(&f, (0, 1001, RST | ACK));
    }

    #[test]
    fn rst_drops_ip_options_and_extension_headers() {
        // IPv4 with a 4-byte option list and a TCP MSS option.
        let f = frame(false, None, Some(SYN), b"");
        let mut g = f[..34].to_vec();
        g.extend_from_slice(&[1, 1, 1, 0]);
        g.extend_from_slice(&f[34..]);
        g[14] = 0x46;
        let tl = u16::from_be_bytes([g[16], g[17]]) + 4;
        g[16..18].copy_from_slice(&tl.to_be_bytes());
        ipv4::Packet::new_checked(&mut g[14..])
            .unwrap()
            .fill_checksum();
        assert_eq!(parse(&g).unwrap().l4_offset, 38);
        rst_of(&g, (0, 1001, tcp_flags::RST | tcp_flags::ACK));

        // IPv6 with a Destination Options header before TCP.
        let f = frame(true, None, Some(SYN), b"");
        let mut g = f[..54].to_vec();
        g[20] = ipv6::NEXT_DEST_OPTS;
        g[18..20].copy_from_slice(&(20u16 + 8).to_be_bytes());
        g.extend_from_slice(&[proto::TCP, 0, 1, 4, 0, 0, 0, 0]);
        g.extend_from_slice(&f[54..]);
        assert_eq!(parse(&g).unwrap().l4_offset, 62);
        rst_of(&g, (0, 1001, tcp_flags::RST | tcp_flags::ACK));
    }

    #[test]
    fn rst_refusals_leave_the_frame_alone() {
        let rst = Tcp {
            rst: true,
            ack: Some(5),
            ..SYN
        };
        let cases: Vec<(Vec<u8>, usize)> = {
            let syn = frame(false, Some(3), Some(SYN), b"");
            let n = syn.len();
            vec![
                // A reset is never answered.
                (frame(false, None, Some(rst), b""), 0),
                (frame(true, None, Some(rst), b""), 0),
                // Not TCP.
                (frame(false, None, None, b"q"), 0),
                // Short: the received length cuts the TCP header.
                (syn.clone(), n - 1),
                (syn, 20),
            ]
        };
        for (f, cut) in cases {
            let len = if cut == 0 { f.len() } else { cut };
            let p = parse(&f).unwrap();
            let mut buf = f.clone();
            assert_eq!(tcp_rst(&mut buf, len, &p), None, "{f:02x?}");
            assert_eq!(buf, f);
            // len beyond the buffer.
            assert_eq!(tcp_rst(&mut buf, f.len() + 1, &p), None);
        }
    }

    #[test]
    fn no_answer_to_multicast_broadcast_or_bogus_sources() {
        let f = frame(false, None, Some(SYN), b"");
        let p = parse(&f).unwrap();
        let cases: [(usize, &[u8]); 6] = [
            (14 + 16, &[224, 0, 0, 1]),       // multicast destination
            (14 + 16, &[255, 255, 255, 255]), // broadcast destination
            (14 + 12, &[0, 0, 0, 0]),         // unspecified source
            (14 + 12, &[127, 0, 0, 1]),       // loopback source
            (14 + 12, &[239, 1, 2, 3]),       // multicast source
            (0, &[0x01, 0x00, 0x5e]),         // link-layer multicast
        ];
        for (at, bytes) in cases {
            let mut g = f.clone();
            g[at..at + bytes.len()].copy_from_slice(bytes);
            if at >= 14 {
                // A bogus address, not a corrupted header.
                let c = crate::wire::checksum::ipv4_header(&g[14..34]);
                g[24..26].copy_from_slice(&c.to_be_bytes());
            }
            let mut buf = g.clone();
            buf.resize(FRAME_CAP, 0);
            let mut q = p;
            q.key = parse(&g).unwrap().key;
            assert_eq!(tcp_rst(&mut buf, g.len(), &q), None, "{at} {bytes:?}");
            assert_eq!(icmp_port_unreachable(&mut buf, g.len(), &q), None);
            assert_eq!(&buf[..g.len()], &g[..]);
        }
        let f = frame(true, None, None, b"x");
        let p = parse(&f).unwrap();
        for (at, first) in [(14 + 24, 0xffu8), (14 + 8, 0xff)] {
            let mut g = f.clone();
            g[at] = first;
            let mut buf = g.clone();
            buf.resize(FRAME_CAP, 0);
            assert_eq!(icmp_port_unreachable(&mut buf, g.len(), &p), None);
        }
        let mut g = f.clone();
        g[14 + 8..14 + 24].fill(0);
        let mut buf = g.clone();
        buf.resize(FRAME_CAP, 0);
        assert_eq!(icmp_port_unreachable(&mut buf, g.len(), &p), None);
    }

    /// Checks a port unreachable answering `orig`, quoting `quote` bytes of
    /// the received IP packet.
    fn check_unreachable(orig: &[u8], out: &[u8], quote: usize) -> Result<(), TestCaseError> {
        let p0 = parse(orig).map_err(fail)?;
        let v4 = p0.ip_version == 4;
        let icmp_proto = if v4 { proto::ICMP } else { proto::ICMPV6 };
        let e = check_common(orig, out, icmp_proto)?;
        let l3 = p0.l3_offset;
        let quoted = &orig[l3..l3 + quote];
        let (payload, ports_at) = match (&e.net, &e.transport) {
            (Some(NetSlice::Ipv4(_)), Some(TransportSlice::Icmpv4(m))) => {
                prop_assert_eq!(
                    m.icmp_type(),
                    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port)
                );
                prop_assert_eq!(m.checksum(), m.icmp_type().calc_checksum(m.payload()));
                prop_assert_eq!(m.checksum(), checksum::icmpv4(m.slice()));
                prop_assert_eq!(m.bytes5to8(), [0; 4]);
                let q = Ipv4HeaderSlice::from_slice(m.payload()).map_err(fail)?;
                prop_assert_eq!(Addr::from_v4(q.source()), p0.key.src);
                prop_assert_eq!(Addr::from_v4(q.destination()), p0.key.dst);
                (m.payload(), usize::from(q.ihl()) * 4)
            }
            (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(m))) => {
                prop_assert_eq!(
                    m.icmp_type(),
                    Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port)
                );
                let h = ip.header();
                prop_assert!(m.is_checksum_valid(h.source(), h.destination()));
                prop_assert_eq!(m.bytes5to8(), [0; 4]);
                prop_assert!(out.len() - l3 <= ICMPV6_MAX_PACKET);
                let q = Ipv6HeaderSlice::from_slice(m.payload()).map_err(fail)?;
                prop_assert_eq!(Addr::from_v6(q.source()), p0.key.src);
                prop_assert_eq!(Addr::from_v6(q.destination()), p0.key.dst);
                (m.payload(), p0.l4_offset - l3)
            }
            other => return Err(fail(other)),
        };
        prop_assert_eq!(payload, quoted);
        // The quoted L4 header starts with the client's ports.
        let ports = match p0.key.proto {
            proto::UDP => {
                let u = UdpHeaderSlice::from_slice(&payload[ports_at..]).map_err(fail)?;
                (u.source_port(), u.destination_port())
            }
            _ => {
                let b = &payload[ports_at..ports_at + 4];
                (
                    u16::from_be_bytes([b[0], b[1]]),
                    u16::from_be_bytes([b[2], b[3]]),
                )
            }
        };
        prop_assert_eq!(ports, (p0.key.sport, p0.key.dport));
        Ok(())
    }

    /// Answers `orig` in a buffer of `cap` bytes; returns the new length.
    fn unreachable_of(orig: &[u8], cap: usize) -> Option<(Vec<u8>, usize)> {
        let p = parse(orig).unwrap();
        let mut buf = orig.to_vec();
        buf.resize(cap.max(orig.len()), 0x55);
        buf.truncate(cap);
        let n = icmp_port_unreachable(&mut buf, orig.len(), &p)?;
        Some((buf, n))
    }

    #[test]
    fn icmp_v4_udp_quotes_header_and_8_bytes() {
        for vlan in [None, Some(7)] {
            let f = frame(false, vlan, None, b"a DNS query longer than 8 bytes");
            let l3 = parse(&f).unwrap().l3_offset;
            let (buf, n) = unreachable_of(&f, FRAME_CAP).unwrap();
            assert_eq!(n, l3 + 20 + 8 + 20 + 8);
            check_unreachable(&f, &buf[..n], 28).unwrap();
            // Our own view of the answer agrees.
            let m = icmp::Packet::new_checked(&buf[l3 + 20..n]).unwrap();
            assert_eq!(m.msg_type(), icmp::V4_DEST_UNREACHABLE);
            assert_eq!(m.msg_code(), ICMPV4_CODE_PORT_UNREACHABLE);
            assert!(m.verify_checksum_v4());
        }
        // A shorter datagram is quoted whole (here 20 + 8 + 1 bytes).
        let f = frame(false, None, None, b"q");
        let (buf, n) = unreachable_of(&f, FRAME_CAP).unwrap();
        check_unreachable(&f, &buf[..n], 28).unwrap();
    }

    #[test]
    fn icmp_v4_tcp_keeps_ip_options_in_the_quote() {
        let f = frame(false, Some(9), Some(SYN), b"data");
        let mut g = f[..38].to_vec();
        g.extend_from_slice(&[1, 1, 1, 0]);
        g.extend_from_slice(&f[38..]);
        g[18] = 0x46;
        let tl = u16::from_be_bytes([g[20], g[21]]) + 4;
        g[20..22].copy_from_slice(&tl.to_be_bytes());
        ipv4::Packet::new_checked(&mut g[18..])
            .unwrap()
            .fill_checksum();
        let (buf, n) = unreachable_of(&g, FRAME_CAP).unwrap();
        assert_eq!(n, 18 + 28 + 24 + 8);
        check_unreachable(&g, &buf[..n], 32).unwrap();
    }

    #[test]
    fn icmp_v6_udp_quotes_whole_packet() {
        for vlan in [None, Some(42)] {
            let f = frame(true, vlan, None, b"query");
            let l3 = parse(&f).unwrap().l3_offset;
            let (buf, n) = unreachable_of(&f, FRAME_CAP).unwrap();
            let quote = f.len() - l3;
            assert_eq!(n, l3 + 48 + quote);
            check_unreachable(&f, &buf[..n], quote).unwrap();
            let m = icmp::Packet::new_checked(&buf[l3 + 40..n]).unwrap();
            assert_eq!(m.msg_type(), icmp::V6_DEST_UNREACHABLE);
            assert_eq!(m.msg_code(), ICMPV6_CODE_PORT_UNREACHABLE);
            assert!(m.verify_checksum_v6(&VIP6, &CLIENT6));
        }
    }

    #[test]
    fn icmp_v6_quote_is_capped_at_1280_and_at_the_buffer() {
        let f = frame(true, None, None, &[0xab; 1400]);
        let (buf, n) = unreachable_of(&f, FRAME_CAP).unwrap();
        assert_eq!(n, 14 + ICMPV6_MAX_PACKET);
        check_unreachable(&f, &buf[..n], ICMPV6_MAX_PACKET - 48).unwrap();
        // A buffer of just the received frame: the quote shrinks by the 48
        // bytes of new headers.
        let f = frame(true, None, None, &[0xcd; 1000]);
        let (buf, n) = unreachable_of(&f, f.len()).unwrap();
        assert_eq!(n, f.len());
        check_unreachable(&f, &buf[..n], f.len() - 14 - 48).unwrap();
    }

    #[test]
    fn icmp_too_small_buffer_is_refused_unchanged() {
        // IPv4: header + 8 bytes must fit after the 28 new bytes.
        let f = frame(false, None, None, b"a query longer than eight");
        let need = 14 + 28 + 28;
        assert!(unreachable_of(&f, need).is_some());
        for cap in [need - 1, f.len()] {
            let mut buf = f.clone();
            buf.resize(cap, 0);
            let before = buf.clone();
            let p = parse(&f).unwrap();
            assert_eq!(icmp_port_unreachable(&mut buf, f.len(), &p), None, "{cap}");
            assert_eq!(buf, before);
        }
        // IPv6: at least the IPv6 header and 8 bytes of UDP after the 48
        // new bytes.
        let f = frame(true, None, None, b"query");
        let p = parse(&f).unwrap();
        let need = 14 + 48 + 48;
        let (buf, n) = unreachable_of(&f, need).unwrap();
        assert_eq!(n, need);
        check_unreachable(&f, &buf[..n], 48).unwrap();
        let mut buf = f.clone();
        buf.resize(need - 1, 0);
        let before = buf.clone();
        assert_eq!(icmp_port_unreachable(&mut buf, f.len(), &p), None);
        assert_eq!(buf, before);
        // And the received length must lie inside the buffer.
        let mut buf = f.clone();
        assert_eq!(icmp_port_unreachable(&mut buf, f.len() + 1, &p), None);
    }

    #[test]
    fn icmp_is_never_answered_with_icmp() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_C, MAC_LB)
            .ipv4(CLIENT4, VIP4, 64)
            .icmpv4_echo_request(1, 2)
            .write(&mut f, b"ping")
            .unwrap();
        let p = parse(&f).unwrap();
        let mut buf = f.clone();
        buf.resize(FRAME_CAP, 0);
        assert_eq!(icmp_port_unreachable(&mut buf, f.len(), &p), None);
        assert_eq!(tcp_rst(&mut buf, f.len(), &p), None);
        // Nor is a parse that disagrees with the frame (TCP claimed, UDP sent).
        let f = frame(false, None, None, b"q");
        let mut p = parse(&f).unwrap();
        p.key.proto = proto::TCP;
        let mut buf = f.clone();
        buf.resize(FRAME_CAP, 0);
        assert_eq!(icmp_port_unreachable(&mut buf, f.len(), &p), None);
        assert_eq!(tcp_rst(&mut buf, f.len(), &p), None);
    }

    #[test]
    fn sctp_gets_a_port_unreachable() {
        // The SCTP fixture of parse's tests: a UDP frame relabelled.
        let mut f = frame(false, None, None, &[0; 8]);
        f[23] = proto::SCTP;
        ipv4::Packet::new_checked(&mut f[14..])
            .unwrap()
            .fill_checksum();
        let (buf, n) = unreachable_of(&f, FRAME_CAP).unwrap();
        check_unreachable(&f, &buf[..n], 28).unwrap();
    }

    fn tcp_strategy() -> impl Strategy<Value = Option<Tcp>> {
        proptest::option::of(
            (
                any::<u32>(),
                proptest::option::of(any::<u32>()),
                any::<(bool, bool, bool)>(),
            )
                .prop_map(|(seq, ack, (syn, fin, rst))| Tcp {
                    seq,
                    ack,
                    syn,
                    fin,
                    rst,
                }),
        )
    }

    proptest! {
        #[test]
        fn replies_to_valid_frames_parse(
            v6 in any::<bool>(),
            vlan in proptest::option::of(0u16..4095),
            tcp in tcp_strategy(),
            payload in proptest::collection::vec(any::<u8>(), 0..1500),
            pad in 0usize..20,
            cap_short in 0usize..200,
        ) {
            let mut f = frame(v6, vlan, tcp, &payload);
            let len = f.len() + pad;
            f.resize(len, 0xee);
            let orig = f[..len - pad].to_vec();
            let p = parse(&f).unwrap();

            let mut buf = f.clone();
            let r = tcp_rst(&mut buf, len, &p);
            match tcp {
                Some(t) if !t.rst => {
                    let n = r.ok_or_else(|| fail("no rst"))?;
                    prop_assert!(n <= len);
                    let want = match t.ack {
                        Some(a) => (a, 0, tcp_flags::RST),
                        None => {
                            let l = payload.len() as u32 + u32::from(t.syn) + u32::from(t.fin);
                            (0, t.seq.wrapping_add(l), tcp_flags::RST | tcp_flags::ACK)
                        }
                    };
                    check_rst(&orig, &buf[..n], want)?;
                }
                _ => {
                    prop_assert_eq!(r, None);
                    prop_assert_eq!(&buf, &f);
                }
            }

            let mut buf = f.clone();
            buf.resize(FRAME_CAP, 0x55);
            let n = icmp_port_unreachable(&mut buf, len, &p).ok_or_else(|| fail("no icmp"))?;
            let l3 = p.l3_offset;
            let whole = orig.len() - l3;
            let quote = if v6 { whole.min(ICMPV6_MAX_PACKET - 48) } else { whole.min(p.l4_offset - l3 + 8) };
            prop_assert_eq!(n, l3 + if v6 { 48 } else { 28 } + quote);
            check_unreachable(&orig, &buf[..n], quote)?;

            // A smaller buffer: an answer, if any, still checks out.
            let cap = (len + 100).saturating_sub(cap_short);
            let mut buf = f.clone();
            buf.resize(cap, 0x55);
            if let Some(n) = icmp_port_unreachable(&mut buf, len.min(cap), &p) {
                prop_assert!(n <= cap);
                let quote = n - l3 - if v6 { 48 } else { 28 };
                check_unreachable(&orig, &buf[..n], quote)?;
            }
        }

        #[test]
        fn arbitrary_input_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            cap_extra in 0usize..300,
            len in 0usize..700,
            l3 in 0usize..80, l4 in 0usize..200,
            ver in 0u8..8,
            pr in prop::sample::select(vec![0u8, 1, 6, 17, 58, 132]),
            ethertype in prop::sample::select(vec![[0x08u8, 0x00], [0x86, 0xdd], [0x81, 0x00]]),
            ipver in prop::sample::select(vec![0x45u8, 0x46, 0x60, 0x4f]),
        ) {
            let mut buf = bytes;
            // Steer some inputs past the first checks.
            if buf.len() > 14 {
                buf[12..14].copy_from_slice(&ethertype);
                buf[14] = ipver;
                buf[0] &= 0xfe;
            }
            let cap = buf.len() + cap_extra;
            buf.resize(cap, 0);
            let p = Parsed {
                l3_offset: l3,
                l4_offset: l4,
                ip_version: ver,
                key: FlowKey { proto: pr, ..FlowKey::default() },
                ..Parsed::default()
            };
            let mut b = buf.clone();
            if let Some(n) = tcp_rst(&mut b, len, &p) {
                prop_assert!(n <= len && n <= cap);
            } else {
                prop_assert_eq!(&b, &buf);
            }
            let mut b = buf.clone();
            if let Some(n) = icmp_too_big(&mut b, len, &p, 1400) {
                prop_assert!(n <= cap);
            } else {
                prop_assert_eq!(&b, &buf);
            }
            let mut b = buf.clone();
            if let Some(n) = icmp_port_unreachable(&mut b, len, &p) {
                prop_assert!(n <= cap);
            } else {
                prop_assert_eq!(&b, &buf);
            }
            // The real parse of the bytes, too.
            if let Ok(p) = parse(&buf[..len.min(cap)]) {
                let mut b = buf.clone();
                let _ = tcp_rst(&mut b, len, &p);
                let mut b = buf.clone();
                let _ = icmp_port_unreachable(&mut b, len, &p);
                let mut b = buf.clone();
                let _ = icmp_too_big(&mut b, len, &p, 1280);
            }
        }
    }

    /// `f` with the IPv4 DF bit set or cleared (header checksum refreshed).
    fn with_df(f: &[u8], df: bool) -> Vec<u8> {
        let mut g = f.to_vec();
        let l3 = parse(f).unwrap().l3_offset;
        let mut ip = ipv4::Packet::new_checked(&mut g[l3..]).unwrap();
        ip.set_frag(df, false, 0);
        ip.fill_checksum();
        g
    }

    /// Answers `orig` with a too-big error for `mtu` in a UMEM-sized buffer
    /// and checks everything but the quote's length against the received
    /// frame: addresses, TTL, checksums, type and code, the MTU field, and
    /// that the quote is the received packet's start with the client's
    /// ports. Returns the answer.
    fn too_big_of(orig: &[u8], mtu: u16) -> Vec<u8> {
        let p0 = parse(orig).unwrap();
        let mut buf = orig.to_vec();
        buf.resize(FRAME_CAP, 0x55);
        let n = icmp_too_big(&mut buf, orig.len(), &p0, mtu).expect("an answer");
        let out = &buf[..n];
        let v4 = p0.ip_version == 4;
        let icmp_proto = if v4 { proto::ICMP } else { proto::ICMPV6 };
        let e = check_common(orig, out, icmp_proto).unwrap();
        let l3 = p0.l3_offset;
        let quoted = match (&e.net, &e.transport) {
            (Some(NetSlice::Ipv4(_)), Some(TransportSlice::Icmpv4(m))) => {
                assert_eq!(
                    m.icmp_type(),
                    Icmpv4Type::DestinationUnreachable(
                        icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu }
                    )
                );
                assert_eq!(m.checksum(), m.icmp_type().calc_checksum(m.payload()));
                assert_eq!(m.checksum(), checksum::icmpv4(m.slice()));
                // RFC 1191 § 4: the unused high half of the word is zero.
                assert_eq!(&m.bytes5to8()[..2], &[0, 0]);
                // RFC 792: the header and 8 bytes of data.
                assert_eq!(m.payload().len(), p0.l4_offset - l3 + 8);
                m.payload().to_vec()
            }
            (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(m))) => {
                assert_eq!(
                    m.icmp_type(),
                    Icmpv6Type::PacketTooBig {
                        mtu: u32::from(mtu)
                    }
                );
                let h = ip.header();
                assert!(m.is_checksum_valid(h.source(), h.destination()));
                // RFC 4443 § 2.4 (c): as much as fits in 1280 bytes.
                let whole = orig.len() - l3;
                assert_eq!(m.payload().len(), whole.min(ICMPV6_MAX_PACKET - 48));
                m.payload().to_vec()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(&quoted[..], &orig[l3..l3 + quoted.len()]);
        let at = p0.l4_offset - l3;
        let ports = (
            u16::from_be_bytes([quoted[at], quoted[at + 1]]),
            u16::from_be_bytes([quoted[at + 2], quoted[at + 3]]),
        );
        assert_eq!(ports, (p0.key.sport, p0.key.dport));
        out.to_vec()
    }

    #[test]
    fn too_big_v4_with_df_says_the_next_hop_mtu() {
        let seg = Tcp {
            seq: 7,
            ack: Some(9),
            syn: false,
            fin: false,
            rst: false,
        };
        for vlan in [None, Some(12)] {
            for tcp in [Some(seg), None] {
                let f = with_df(&frame(false, vlan, tcp, &[0xab; 1460]), true);
                let out = too_big_of(&f, 1400);
                // 14 (+4) Ethernet, 20 IP, 8 ICMP, 20 + 8 quoted.
                assert_eq!(out.len(), parse(&f).unwrap().l3_offset + 56);
                // The MTU field, byte for byte: 1400 = 0x0578.
                let icmp = parse(&f).unwrap().l3_offset + 20;
                assert_eq!(&out[icmp..icmp + 8][..2], &[3, 4]);
                assert_eq!(&out[icmp + 4..icmp + 8], &[0, 0, 0x05, 0x78]);
            }
        }
    }

    #[test]
    fn too_big_v6_says_the_mtu_and_quotes_up_to_1280_bytes() {
        for vlan in [None, Some(12)] {
            for tcp in [Some(SYN), None] {
                let f = frame(true, vlan, tcp, &[0xcd; 1440]);
                let out = too_big_of(&f, 1400);
                let l3 = parse(&f).unwrap().l3_offset;
                assert_eq!(out.len(), l3 + ICMPV6_MAX_PACKET);
                assert_eq!(&out[l3 + 40..l3 + 48], {
                    let c = &out[l3 + 42..l3 + 44];
                    &[2, 0, c[0], c[1], 0, 0, 0x05, 0x78][..]
                });
            }
        }
        // A short packet is quoted whole.
        let f = frame(true, None, None, &[1; 100]);
        let out = too_big_of(&f, 1280);
        assert_eq!(out.len(), f.len() + 48);
    }

    #[test]
    fn too_big_refusals_leave_the_frame_alone() {
        let big = &[0u8; 1460];
        let cases: Vec<(Vec<u8>, u16)> = vec![
            // IPv4 without DF: a router fragments it; we drop it.
            (with_df(&frame(false, None, None, big), false), 1400),
            (with_df(&frame(false, None, Some(SYN), big), false), 1400),
            // No link has an MTU below the family's minimum.
            (with_df(&frame(false, None, None, big), true), 67),
            (frame(true, None, None, big), 1279),
        ];
        for (f, mtu) in cases {
            let p = parse(&f).unwrap();
            let mut buf = f.clone();
            buf.resize(FRAME_CAP, 0x55);
            let before = buf.clone();
            assert_eq!(icmp_too_big(&mut buf, f.len(), &p, mtu), None, "mtu {mtu}");
            assert_eq!(buf, before);
        }
        // An ICMP error is never answered with one (RFC 1122 § 3.2.2).
        let mut f = with_df(&frame(false, None, None, big), true);
        let mut p = parse(&f).unwrap();
        p.key.proto = proto::ICMP;
        f[p.l3_offset + 9] = proto::ICMP;
        let mut buf = f.clone();
        buf.resize(FRAME_CAP, 0);
        assert_eq!(icmp_too_big(&mut buf, f.len(), &p, 1400), None);
        // The minimum MTUs themselves are answered.
        too_big_of(&with_df(&frame(false, None, None, big), true), 68);
        too_big_of(&frame(true, None, None, big), 1280);
    }

    #[test]
    fn time_exceeded_v4_and_v6_quote_the_packet_from_its_destination() {
        for v6 in [false, true] {
            for tcp in [Some(SYN), None] {
                let f = frame(v6, None, tcp, &[0x11; 64]);
                let p0 = parse(&f).unwrap();
                let mut buf = f.clone();
                buf.resize(FRAME_CAP, 0x55);
                let n = icmp_time_exceeded(&mut buf, f.len(), &p0).expect("an answer");
                let out = &buf[..n];
                let icmp_proto = if v6 { proto::ICMPV6 } else { proto::ICMP };
                let e = check_common(&f, out, icmp_proto).unwrap();
                let l3 = p0.l3_offset;
                let quoted = match (&e.net, &e.transport) {
                    (Some(NetSlice::Ipv4(_)), Some(TransportSlice::Icmpv4(m))) => {
                        assert_eq!(
                            m.icmp_type(),
                            Icmpv4Type::TimeExceeded(
                                icmpv4::TimeExceededCode::TtlExceededInTransit
                            )
                        );
                        assert_eq!(m.checksum(), checksum::icmpv4(m.slice()));
                        assert_eq!(m.bytes5to8(), [0; 4]);
                        assert_eq!(m.payload().len(), p0.l4_offset - l3 + 8);
                        m.payload().to_vec()
                    }
                    (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(m))) => {
                        assert_eq!(
                            m.icmp_type(),
                            Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded)
                        );
                        let h = ip.header();
                        assert!(m.is_checksum_valid(h.source(), h.destination()));
                        assert_eq!(m.payload().len(), f.len() - l3);
                        m.payload().to_vec()
                    }
                    other => panic!("{other:?}"),
                };
                assert_eq!(&quoted[..], &f[l3..l3 + quoted.len()]);
            }
        }
        // An ICMP packet is not answered, and the frame stays as it was.
        let mut f = frame(false, None, None, &[0; 64]);
        let mut p = parse(&f).unwrap();
        p.key.proto = proto::ICMP;
        f[p.l3_offset + 9] = proto::ICMP;
        let mut buf = f.clone();
        buf.resize(FRAME_CAP, 0);
        let before = buf.clone();
        assert_eq!(icmp_time_exceeded(&mut buf, f.len(), &p), None);
        assert_eq!(buf, before);
    }
}

/// Rewrites `buf[..len]`, a TCP segment already addressed where it should go,
/// into a bare reset carrying the segment's own sequence number, in the
/// same direction: MACs, addresses and ports are kept; options and payload
/// are cut; flags become RST (plus ACK with the segment's acknowledgment
/// when it had one).
///
/// A load balancer uses this to reset a client whose flow lost its backend:
/// the backend's next segment carries exactly the sequence number the client
/// expects, so the client accepts the reset (RFC 9293 § 3.10.7.4: a reset
/// is valid if its sequence number is in the window), even a client that
/// only receives and would never send a segment to be answered.
///
/// Returns the new frame length (≤ `len`) or `None` (frame unchanged) when
/// `p` is not TCP, the frame does not match `p`, or the segment is a reset.
pub fn tcp_rst_same_direction(buf: &mut [u8], len: usize, p: &Parsed) -> Option<usize> {
    if p.key.proto != proto::TCP {
        return None;
    }
    let frame = buf.get_mut(..len)?;
    let r = received(frame, p)?;
    let seg = tcp::Packet::new_checked(frame.get(p.l4_offset..r.ip_end)?).ok()?;
    if seg.rst() {
        return None;
    }
    let (seq, ack, had_ack) = (seg.seq_number(), seg.ack_number(), seg.ack());
    let (sport, dport) = (seg.src_port(), seg.dst_port());
    // The swapped addresses of a "received" packet going the other way are
    // this packet's own: write_bare_tcp addresses its segment to `src`.
    let same = match r.addrs {
        Addrs::V4 { src, dst } => Addrs::V4 { src: dst, dst: src },
        Addrs::V6 { src, dst } => Addrs::V6 { src: dst, dst: src },
    };
    let (ack, flags) = if had_ack {
        (ack, tcp_flags::RST | tcp_flags::ACK)
    } else {
        (0, tcp_flags::RST)
    };
    write_bare_tcp(frame, p.l3_offset, &same, (sport, dport), seq, ack, flags)
}

#[cfg(test)]
mod same_direction_tests {
    use super::*;
    use crate::wire::parse;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    #[test]
    fn data_segment_becomes_a_reset_with_its_own_seq() {
        for v6 in [false, true] {
            let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            let b = if v6 {
                b.ipv6(
                    [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
                    [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                    64,
                )
            } else {
                b.ipv4([198, 18, 100, 10], [198, 18, 0, 2], 64)
            };
            let b = b.tcp(80, 40000, 777_000, 1000).ack(555).psh();
            let mut f = Vec::new();
            b.write(&mut f, &[7u8; 300]).unwrap();
            let len = f.len();
            let p = parse(&f).unwrap();
            let n = tcp_rst_same_direction(&mut f, len, &p).unwrap();
            let s = SlicedPacket::from_ethernet(&f[..n]).unwrap();
            let Some(TransportSlice::Tcp(t)) = &s.transport else {
                panic!()
            };
            assert!(t.rst() && t.ack() && !t.psh());
            assert_eq!((t.source_port(), t.destination_port()), (80, 40000));
            assert_eq!(
                (t.sequence_number(), t.acknowledgment_number()),
                (777_000, 555)
            );
            assert!(t.payload().is_empty());
            let expect = match &s.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    assert_eq!(ip.header().destination(), [198, 18, 0, 2]);
                    assert_eq!(
                        ip.header().header_checksum(),
                        ip.header().to_header().calc_header_checksum()
                    );
                    t.to_header()
                        .calc_checksum_ipv4(&ip.header().to_header(), &[])
                        .unwrap()
                }
                Some(etherparse::NetSlice::Ipv6(ip)) => {
                    assert_eq!(ip.header().destination()[15], 2);
                    t.to_header()
                        .calc_checksum_ipv6(&ip.header().to_header(), &[])
                        .unwrap()
                }
                _ => panic!(),
            };
            assert_eq!(t.checksum(), expect);
            let etherparse::LinkSlice::Ethernet2(eth) = s.link.unwrap() else {
                panic!()
            };
            assert_eq!(eth.destination(), [2, 0, 0, 0, 0, 2], "MACs kept");
            // A reset is never turned into another one.
            let mut again = f[..n].to_vec();
            let p2 = parse(&again).unwrap();
            assert_eq!(tcp_rst_same_direction(&mut again, n, &p2), None);
        }
    }
}
