//! The key and value of the `fast_flows` map, byte for byte as
//! `bpf/fastpath.h` declares them (`struct fast_key`, `struct fast_val`),
//! with encode and decode.
//!
//! Key (40 bytes): source and destination address (16 bytes each, IPv4 as
//! IPv4-mapped IPv6, as [`Addr`]), source and destination port in network
//! byte order, the protocol, three zero bytes. It is the 5-tuple of the
//! packets that hit, as received.
//!
//! Value (88 bytes): the new source and destination address and ports
//! (network order), the IPv4 header and L4 checksum deltas (host order:
//! the folded one's-complement sum of `~old + new` over big-endian words),
//! destination and source MAC, egress ifindex (host order), egress MTU,
//! flags ([`FLAG_NAT`]), the index of the worker that published it (which
//! the XDP program ignores; the sweep credits the entry's packets to that
//! worker's rx/tx), four zero bytes, then three `u64` in host order
//! that the XDP program writes: last-seen time (`bpf_ktime_get_ns`, i.e.
//! `CLOCK_MONOTONIC`), packets and bytes (IP bytes, as the workers count).

use crate::types::{Addr, FlowKey, Mac};

/// Length of an encoded [`FastKey`].
pub const KEY_LEN: usize = 40;
/// Length of an encoded [`FastValue`].
pub const VALUE_LEN: usize = 88;
/// [`FastValue::flags`]: rewrite addresses and ports (NAT, FULLNAT); without
/// it only the MACs change (DR).
pub const FLAG_NAT: u8 = 1;

/// A `fast_flows` key: the 5-tuple of the packets it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FastKey(pub FlowKey);

impl FastKey {
    /// The 40 bytes of `struct fast_key`.
    pub fn encode(&self) -> [u8; KEY_LEN] {
        let k = &self.0;
        let mut b = [0u8; KEY_LEN];
        b[0..16].copy_from_slice(&k.src.0);
        b[16..32].copy_from_slice(&k.dst.0);
        b[32..34].copy_from_slice(&k.sport.to_be_bytes());
        b[34..36].copy_from_slice(&k.dport.to_be_bytes());
        b[36] = k.proto;
        b
    }

    /// The key of 40 bytes of `struct fast_key`.
    pub fn decode(b: &[u8; KEY_LEN]) -> FastKey {
        FastKey(FlowKey {
            src: Addr(arr16(&b[0..16])),
            dst: Addr(arr16(&b[16..32])),
            sport: u16::from_be_bytes([b[32], b[33]]),
            dport: u16::from_be_bytes([b[34], b[35]]),
            proto: b[36],
        })
    }
}

/// A `fast_flows` value: the rewrite, and what the XDP program counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastValue {
    /// The tuple the packet leaves with (for DR: unused, zero).
    pub to: FlowKey,
    /// Delta for the IPv4 header checksum (addresses; the TTL's is added
    /// per packet).
    pub ip_delta: u16,
    /// Delta for the TCP/UDP checksum (pseudo-header addresses and ports).
    pub l4_delta: u16,
    /// Next hop's MAC.
    pub dmac: Mac,
    /// Egress interface's MAC.
    pub smac: Mac,
    /// Egress interface index.
    pub ifindex: u32,
    /// Egress MTU (largest IP packet).
    pub mtu: u16,
    /// [`FLAG_NAT`] or 0.
    pub flags: u8,
    /// The worker that published the entry (its packets count in that
    /// worker's rx and tx).
    pub worker: u8,
    /// `bpf_ktime_get_ns()` of the last packet (0: none yet).
    pub last_seen_ns: u64,
    /// Packets forwarded by the XDP program.
    pub packets: u64,
    /// Their IP bytes.
    pub bytes: u64,
}

impl FastValue {
    /// The 88 bytes of `struct fast_val`.
    pub fn encode(&self) -> [u8; VALUE_LEN] {
        let mut b = [0u8; VALUE_LEN];
        b[0..16].copy_from_slice(&self.to.src.0);
        b[16..32].copy_from_slice(&self.to.dst.0);
        b[32..34].copy_from_slice(&self.to.sport.to_be_bytes());
        b[34..36].copy_from_slice(&self.to.dport.to_be_bytes());
        b[36..38].copy_from_slice(&self.ip_delta.to_ne_bytes());
        b[38..40].copy_from_slice(&self.l4_delta.to_ne_bytes());
        b[40..46].copy_from_slice(&self.dmac);
        b[46..52].copy_from_slice(&self.smac);
        b[52..56].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[56..58].copy_from_slice(&self.mtu.to_ne_bytes());
        b[58] = self.flags;
        b[59] = self.worker;
        b[64..72].copy_from_slice(&self.last_seen_ns.to_ne_bytes());
        b[72..80].copy_from_slice(&self.packets.to_ne_bytes());
        b[80..88].copy_from_slice(&self.bytes.to_ne_bytes());
        b
    }

    /// The value of 88 bytes of `struct fast_val` (the protocol of
    /// [`FastValue::to`] is not stored: `proto` is the key's).
    pub fn decode(b: &[u8; VALUE_LEN], proto: u8) -> FastValue {
        let u16n = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let u64n = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_ne_bytes(a)
        };
        let mut dmac = [0u8; 6];
        let mut smac = [0u8; 6];
        dmac.copy_from_slice(&b[40..46]);
        smac.copy_from_slice(&b[46..52]);
        FastValue {
            to: FlowKey {
                src: Addr(arr16(&b[0..16])),
                dst: Addr(arr16(&b[16..32])),
                sport: u16::from_be_bytes([b[32], b[33]]),
                dport: u16::from_be_bytes([b[34], b[35]]),
                proto,
            },
            ip_delta: u16n(36),
            l4_delta: u16n(38),
            dmac,
            smac,
            ifindex: u32::from_ne_bytes([b[52], b[53], b[54], b[55]]),
            mtu: u16n(56),
            flags: b[58],
            worker: b[59],
            last_seen_ns: u64n(64),
            packets: u64n(72),
            bytes: u64n(80),
        }
    }
}

fn arr16(s: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(s);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(a: [u8; 16], b: [u8; 16], sp: u16, dp: u16, p: u8) -> FlowKey {
        FlowKey {
            src: Addr(a),
            dst: Addr(b),
            sport: sp,
            dport: dp,
            proto: p,
        }
    }

    #[test]
    fn key_layout_matches_struct_fast_key() {
        let k = FastKey(key([1; 16], [2; 16], 0x1234, 80, 6)).encode();
        assert_eq!(&k[0..16], &[1; 16]);
        assert_eq!(&k[16..32], &[2; 16]);
        assert_eq!(&k[32..36], &[0x12, 0x34, 0, 80]);
        assert_eq!(&k[36..], &[6, 0, 0, 0]);
    }

    #[test]
    fn value_layout_matches_struct_fast_val() {
        let v = FastValue {
            to: key([3; 16], [4; 16], 0xabcd, 0x0102, 17),
            ip_delta: 0x1111,
            l4_delta: 0x2222,
            dmac: [5; 6],
            smac: [6; 6],
            ifindex: 7,
            mtu: 1500,
            flags: FLAG_NAT,
            worker: 3,
            last_seen_ns: 9,
            packets: 10,
            bytes: 11,
        }
        .encode();
        assert_eq!(&v[32..36], &[0xab, 0xcd, 1, 2]);
        assert_eq!(&v[36..38], &0x1111u16.to_ne_bytes());
        assert_eq!(&v[40..52], &[5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6]);
        assert_eq!(&v[52..56], &7u32.to_ne_bytes());
        assert_eq!(&v[56..58], &1500u16.to_ne_bytes());
        assert_eq!(v[58], FLAG_NAT);
        assert_eq!(v[59], 3);
        assert_eq!(&v[60..64], &[0; 4]);
        assert_eq!(&v[64..72], &9u64.to_ne_bytes());
        assert_eq!(&v[80..88], &11u64.to_ne_bytes());
    }

    proptest! {
        #[test]
        fn key_round_trips(a: [u8; 16], b: [u8; 16], sp: u16, dp: u16, p: u8) {
            let k = FastKey(key(a, b, sp, dp, p));
            prop_assert_eq!(FastKey::decode(&k.encode()), k);
        }

        #[test]
        fn value_round_trips(a: [u8; 16], b: [u8; 16], sp: u16, dp: u16, p: u8,
                             d: (u16, u16), macs: ([u8; 6], [u8; 6]), ifx: u32, mtu: u16,
                             flags: u8, worker: u8, c: (u64, u64, u64)) {
            let v = FastValue {
                to: key(a, b, sp, dp, p),
                ip_delta: d.0,
                l4_delta: d.1,
                dmac: macs.0,
                smac: macs.1,
                ifindex: ifx,
                mtu,
                flags,
                worker,
                last_seen_ns: c.0,
                packets: c.1,
                bytes: c.2,
            };
            prop_assert_eq!(FastValue::decode(&v.encode(), p), v);
        }
    }
}
