//! Direct routing (IPVS "gatewaying", `ipvsadm -g`): rewrite the Ethernet
//! addresses only.
//!
//! # Why only the MACs
//!
//! In direct routing the real server owns the virtual IP itself (on `lo`,
//! with ARP for it suppressed: `arp_ignore=1`, `arp_announce=2`), so the
//! client's IP packet is already addressed to it: the load balancer only has
//! to put the frame on the wire towards the chosen server's MAC. The kernel's
//! `ip_vs_dr_xmit` (`net/netfilter/ipvs/ip_vs_xmit.c`) does exactly that: it
//! routes the unchanged skb to the real server's address
//! (`__ip_vs_get_out_rt` with the destination's `daddr`) and hands it to the
//! neighbour layer, which writes the server's MAC; no address, port or
//! checksum is touched, not even the TTL (the packet leaves through
//! `LOCAL_OUT`, not `FORWARD`). The server then answers the client directly
//! from the VIP, so replies never come back through the load balancer, and
//! port remapping is impossible: the server sees the service port, which is
//! why the control plane refuses a DR service whose `targetPort` differs
//! from its `port`.
//!
//! [`rewrite`] is therefore the whole per-packet cost of DR: twelve bytes
//! written, IPv4 or IPv6, with or without an 802.1Q tag (the tag sits after
//! the two addresses and is kept as it is). Everything past the two MAC
//! addresses is byte-identical before and after, which the property test
//! below checks on arbitrary frames.
//!
//! Like [`super::nat`], it never panics: a frame shorter than an Ethernet
//! header is refused and left unchanged.

use super::nat::RewriteError;
use crate::types::Mac;

/// Length of an untagged Ethernet header: destination, source, EtherType.
const ETH_HEADER_LEN: usize = 14;

/// Readdresses `frame` from `src` (the LB's egress interface) to `dst` (the
/// chosen real server's MAC, or the next hop's on its segment) and changes
/// nothing else.
///
/// # Errors
///
/// [`RewriteError::Truncated`] when the frame is shorter than an Ethernet
/// header (14 bytes); the frame is then unchanged.
#[inline]
pub fn rewrite(frame: &mut [u8], src: Mac, dst: Mac) -> Result<(), RewriteError> {
    let Some(h) = frame.get_mut(..ETH_HEADER_LEN) else {
        return Err(RewriteError::Truncated);
    };
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse;
    use proptest::prelude::*;

    const LB_MAC: Mac = [0x02, 0, 0, 0, 1, 0x01];
    const RS_MAC: Mac = [0x02, 0, 0, 0, 1, 0x11];

    /// A client's SYN, 198.18.0.2:40000 → VIP 198.18.100.10:80, as it
    /// arrives from the client's side (dst MAC = the LB's front port):
    /// Ethernet, IPv4 (TTL 64, DF), TCP SYN without options or payload.
    /// Both checksums were computed independently (Python, RFC 1071 sum)
    /// and are verified again below.
    const SYN_V4_IN: [u8; 54] = [
        // Ethernet: dst 02:00:00:00:00:01 (LB front), src 02:00:00:00:00:02
        // (client), IPv4.
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00,
        // IPv4: ver/ihl, tos, total 40, id 0, DF, ttl 64, TCP, checksum 0x4a9f.
        0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x4a, 0x9f, //
        198, 18, 0, 2, 198, 18, 100, 10, //
        // TCP: 40000 → 80, seq 1000, ack 0, offset 5, SYN, window 65535,
        // checksum 0x1f39, urgent 0.
        0x9c, 0x40, 0x00, 0x50, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xff,
        0xff, 0x1f, 0x39, 0x00, 0x00,
    ];

    /// What must leave towards the real server: the same bytes but the two
    /// MACs (dst the server 02:00:00:00:01:11, src the LB's back port
    /// 02:00:00:00:01:01). Destination still the VIP, ports and checksums
    /// as received.
    const SYN_V4_OUT: [u8; 54] = [
        0x02, 0x00, 0x00, 0x00, 0x01, 0x11, 0x02, 0x00, 0x00, 0x00, 0x01, 0x01, 0x08, 0x00, //
        0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x4a, 0x9f, //
        198, 18, 0, 2, 198, 18, 100, 10, //
        0x9c, 0x40, 0x00, 0x50, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xff,
        0xff, 0x1f, 0x39, 0x00, 0x00,
    ];

    #[test]
    fn ipv4_syn_fixture_changes_only_the_macs() {
        // The fixture is a valid packet: both checksums verify.
        assert!(crate::wire::ipv4::Packet::new_checked(&SYN_V4_IN[14..])
            .unwrap()
            .verify_checksum());
        assert_eq!(
            crate::wire::checksum::l4_v4(
                &[198, 18, 0, 2],
                &[198, 18, 100, 10],
                crate::types::proto::TCP,
                &SYN_V4_IN[34..],
            ),
            0x1f39
        );
        let mut f = SYN_V4_IN;
        rewrite(&mut f, LB_MAC, RS_MAC).unwrap();
        assert_eq!(f, SYN_V4_OUT);
        // Still the very tuple the client sent: dst the VIP, ports as sent.
        assert_eq!(parse(&f).unwrap().key, parse(&SYN_V4_IN).unwrap().key);
    }

    #[test]
    fn ipv6_udp_fixture_changes_only_the_macs() {
        let mut input = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv6(
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                [
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
                ],
                64,
            )
            .udp(5000, 53)
            .write(&mut input, b"query")
            .unwrap();
        let mut f = input.clone();
        rewrite(&mut f, LB_MAC, RS_MAC).unwrap();
        assert_eq!(&f[..6], &RS_MAC);
        assert_eq!(&f[6..12], &LB_MAC);
        assert_eq!(&f[12..], &input[12..]);
        assert_eq!(parse(&f).unwrap().key, parse(&input).unwrap().key);
    }

    #[test]
    fn vlan_tag_is_kept() {
        let mut input = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv4([198, 18, 0, 2], [198, 18, 100, 10], 64)
            .tcp(40000, 80, 1, 1000)
            .syn()
            .write(&mut input, b"")
            .unwrap();
        let mut f = input.clone();
        rewrite(&mut f, LB_MAC, RS_MAC).unwrap();
        // TPID 0x8100 and TCI (VLAN 42) right after the addresses.
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 42]);
        assert_eq!(&f[12..], &input[12..]);
        assert_eq!(parse(&f).unwrap().vlan, Some(42));
    }

    #[test]
    fn short_frames_are_refused_unchanged() {
        for n in 0..ETH_HEADER_LEN {
            let mut f = vec![0xaa; n];
            assert_eq!(
                rewrite(&mut f, LB_MAC, RS_MAC),
                Err(RewriteError::Truncated)
            );
            assert!(f.iter().all(|&b| b == 0xaa), "{n}");
        }
        let mut f = vec![0xaa; ETH_HEADER_LEN];
        rewrite(&mut f, LB_MAC, RS_MAC).unwrap();
        assert_eq!(&f[12..], &[0xaa, 0xaa]);
    }

    proptest! {
        /// Any frame: the addresses become the ones asked for and every
        /// byte after them (EtherType, tags, IP header, payload, padding)
        /// is byte-identical.
        #[test]
        fn only_the_two_macs_change(
            frame in proptest::collection::vec(any::<u8>(), 0..1600),
            src in any::<Mac>(),
            dst in any::<Mac>(),
        ) {
            let mut f = frame.clone();
            let r = rewrite(&mut f, src, dst);
            if frame.len() < ETH_HEADER_LEN {
                prop_assert_eq!(r, Err(RewriteError::Truncated));
                prop_assert_eq!(&f, &frame);
            } else {
                prop_assert_eq!(r, Ok(()));
                prop_assert_eq!(&f[..6], &dst[..]);
                prop_assert_eq!(&f[6..12], &src[..]);
                prop_assert_eq!(&f[12..], &frame[12..]);
            }
        }
    }
}
