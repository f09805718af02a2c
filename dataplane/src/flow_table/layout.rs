//! How a [`FlowEntry`] is packed into the words of a record.
//!
//! Two layouts, so that the common case pays for what it holds: an IPv4 flow
//! (all four addresses IPv4) takes 5 words after the meta word (48-byte
//! records), an IPv6 flow 11 words (96 bytes). Fields are narrowed to what
//! the packet path needs; [`pack`](Layout::pack) refuses an entry that does
//! not fit instead of truncating it:
//!
//! | field | bits | limit |
//! | --- | --- | --- |
//! | service index | 24 | 16 777 215 services |
//! | backend index (in the meta word) | 16 | 65 535 endpoints per service port |
//! | egress interface of each direction | 4 | 16 interfaces |
//! | protocol (in the meta word) | 4 | TCP, UDP, SCTP, ICMP, ICMPv6 |
//!
//! IPv4 words (`w0`..`w4`):
//!
//! ```text
//! w0: original src (32) | original dst (32)
//! w1: original sport | original dport | reply sport | reply dport (16 each)
//! w2: reply src (32) | reply dst (32)
//! w3: original-hop MAC (48) | reply-hop MAC bytes 0-1 (16)
//! w4: reply-hop MAC bytes 2-5 (32) | service (24) | orig port (4) | reply port (4)
//! ```
//!
//! IPv6 words: original src (2 words), original dst (2), ports as `w1`
//! above, reply src (2), reply dst (2), then `w3` and `w4` as above.

use crate::types::{proto, Addr, FlowKey, L2Hop};

use super::{Direction, FlowEntry};

/// Largest service index a record holds.
pub const MAX_SERVICE: u32 = (1 << 24) - 1;
/// Largest backend index a record holds.
pub const MAX_BACKEND: u32 = u16::MAX as u32;
/// Largest interface index a record holds.
pub const MAX_PORT: u8 = 15;

/// The 4-bit protocol code kept in the meta word (0 = not storable).
pub fn proto_code(p: u8) -> Option<u8> {
    match p {
        proto::TCP => Some(1),
        proto::UDP => Some(2),
        proto::SCTP => Some(3),
        proto::ICMP => Some(4),
        proto::ICMPV6 => Some(5),
        _ => None,
    }
}

/// The protocol number of a code from [`proto_code`].
pub fn proto_of(code: u8) -> u8 {
    match code {
        1 => proto::TCP,
        2 => proto::UDP,
        3 => proto::SCTP,
        4 => proto::ICMP,
        _ => proto::ICMPV6,
    }
}

/// A record layout of `N` words (after the meta word).
pub trait Layout<const N: usize> {
    /// A lookup key in the layout's packed form.
    type Key: Copy + PartialEq + std::fmt::Debug;
    /// The key in packed form, or `None` if it belongs to the other layout.
    fn key(k: &FlowKey) -> Option<Self::Key>;
    /// The key's protocol code.
    fn key_proto(k: &Self::Key) -> u8;
    /// A 64-bit keyed hash of the key.
    fn hash(k: &Self::Key, seed: &[u64; 4]) -> u64;
    /// The words of `e` (both keys, hops, service), or `None` if a field
    /// does not fit the layout.
    fn pack(e: &FlowEntry) -> Option<[u64; N]>;
    /// The entry back, given the protocol and backend kept in the meta word.
    fn unpack(w: &[u64; N], proto: u8, backend: u32) -> FlowEntry;
    /// Which of the record's two keys equals `k` (protocol aside).
    fn matches(w: &[u64; N], k: &Self::Key) -> Option<Direction>;
    /// The record's original and reply keys, given its protocol code.
    fn keys(w: &[u64; N], proto: u8) -> (Self::Key, Self::Key);
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline]
fn v4(a: &Addr) -> u32 {
    u32::from_ne_bytes([a.0[12], a.0[13], a.0[14], a.0[15]])
}

#[inline]
fn addr4(v: u32) -> Addr {
    Addr::from_v4(v.to_ne_bytes())
}

#[inline]
fn addr_words(a: &Addr) -> [u64; 2] {
    let v = u128::from_ne_bytes(a.0);
    [v as u64, (v >> 64) as u64]
}

#[inline]
fn words_addr(lo: u64, hi: u64) -> Addr {
    Addr((u128::from(lo) | (u128::from(hi) << 64)).to_ne_bytes())
}

#[inline]
fn mac48(m: &[u8; 6]) -> u64 {
    u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0])
}

#[inline]
fn mac_of(v: u64) -> [u8; 6] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

#[inline]
fn ports(sport: u16, dport: u16) -> u32 {
    u32::from(sport) | (u32::from(dport) << 16)
}

/// The port word: original ports low, reply ports high.
#[inline]
fn ports_word(e: &FlowEntry) -> u64 {
    u64::from(ports(e.original.sport, e.original.dport))
        | (u64::from(ports(e.reply.sport, e.reply.dport)) << 32)
}

/// `w3` and `w4` of the table above, or `None` if a field is too wide.
#[inline]
fn hop_words(e: &FlowEntry) -> Option<(u64, u64)> {
    if e.service > MAX_SERVICE || e.orig_hop.port > MAX_PORT || e.reply_hop.port > MAX_PORT {
        return None;
    }
    let om = mac48(&e.orig_hop.mac);
    let rm = mac48(&e.reply_hop.mac);
    let a = om | (rm << 48);
    let b = (rm >> 16)
        | (u64::from(e.service) << 32)
        | (u64::from(e.orig_hop.port) << 56)
        | (u64::from(e.reply_hop.port) << 60);
    Some((a, b))
}

/// Hops and service back from `w3`, `w4`.
#[inline]
fn unhop(a: u64, b: u64) -> (L2Hop, L2Hop, u32) {
    let om = a & ((1 << 48) - 1);
    let rm = (a >> 48) | ((b & 0xFFFF_FFFF) << 16);
    (
        L2Hop {
            port: ((b >> 56) & 0xF) as u8,
            mac: mac_of(om),
        },
        L2Hop {
            port: (b >> 60) as u8,
            mac: mac_of(rm),
        },
        ((b >> 32) & u64::from(MAX_SERVICE)) as u32,
    )
}

/// Whether both addresses of `k` are IPv4 (the key belongs to [`V4`]).
#[inline]
fn key_is_v4(k: &FlowKey) -> bool {
    k.src.is_v4() && k.dst.is_v4()
}

/// Both keys share a protocol the meta word can hold.
#[inline]
fn storable(e: &FlowEntry) -> bool {
    e.original.proto == e.reply.proto
        && proto_code(e.original.proto).is_some()
        && e.backend <= MAX_BACKEND
}

/// Flows whose four addresses are all IPv4: 5 words.
#[derive(Debug)]
pub struct V4;

/// A packed IPv4 key: addresses, ports, protocol code.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Key4 {
    addrs: u64,
    ports: u32,
    proto: u8,
}

impl Layout<5> for V4 {
    type Key = Key4;

    #[inline]
    fn key(k: &FlowKey) -> Option<Key4> {
        if !key_is_v4(k) {
            return None;
        }
        Some(Key4 {
            addrs: u64::from(v4(&k.src)) | (u64::from(v4(&k.dst)) << 32),
            ports: ports(k.sport, k.dport),
            proto: proto_code(k.proto).unwrap_or(0),
        })
    }

    #[inline]
    fn key_proto(k: &Key4) -> u8 {
        k.proto
    }

    #[inline]
    fn hash(k: &Key4, s: &[u64; 4]) -> u64 {
        let p = u64::from(k.ports) | (u64::from(k.proto) << 32);
        let h = fold(k.addrs ^ s[0], p ^ s[1]);
        fold(h ^ s[2], 0x9E37_79B9_7F4A_7C15 ^ s[3])
    }

    fn pack(e: &FlowEntry) -> Option<[u64; 5]> {
        if !(key_is_v4(&e.original) && key_is_v4(&e.reply) && storable(e)) {
            return None;
        }
        let (w3, w4) = hop_words(e)?;
        Some([
            u64::from(v4(&e.original.src)) | (u64::from(v4(&e.original.dst)) << 32),
            ports_word(e),
            u64::from(v4(&e.reply.src)) | (u64::from(v4(&e.reply.dst)) << 32),
            w3,
            w4,
        ])
    }

    fn unpack(w: &[u64; 5], proto: u8, backend: u32) -> FlowEntry {
        let (orig_hop, reply_hop, service) = unhop(w[3], w[4]);
        let key = |a: u64, p: u32| FlowKey {
            src: addr4(a as u32),
            dst: addr4((a >> 32) as u32),
            sport: p as u16,
            dport: (p >> 16) as u16,
            proto,
        };
        FlowEntry {
            original: key(w[0], w[1] as u32),
            reply: key(w[2], (w[1] >> 32) as u32),
            orig_hop,
            reply_hop,
            service,
            backend,
        }
    }

    #[inline]
    fn matches(w: &[u64; 5], k: &Key4) -> Option<Direction> {
        if w[0] == k.addrs && w[1] as u32 == k.ports {
            Some(Direction::Original)
        } else if w[2] == k.addrs && (w[1] >> 32) as u32 == k.ports {
            Some(Direction::Reply)
        } else {
            None
        }
    }

    fn keys(w: &[u64; 5], proto: u8) -> (Key4, Key4) {
        (
            Key4 {
                addrs: w[0],
                ports: w[1] as u32,
                proto,
            },
            Key4 {
                addrs: w[2],
                ports: (w[1] >> 32) as u32,
                proto,
            },
        )
    }
}

/// Every other flow (at least one IPv6 address): 11 words.
#[derive(Debug)]
pub struct V6;

/// A packed IPv6 key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Key6 {
    src: [u64; 2],
    dst: [u64; 2],
    ports: u32,
    proto: u8,
}

impl V6 {
    /// The packed form of any key (an IPv4 key too: what [`V4`] refuses).
    #[inline]
    pub fn key_any(k: &FlowKey) -> Key6 {
        Key6 {
            src: addr_words(&k.src),
            dst: addr_words(&k.dst),
            ports: ports(k.sport, k.dport),
            proto: proto_code(k.proto).unwrap_or(0),
        }
    }
}

impl Layout<11> for V6 {
    type Key = Key6;

    #[inline]
    fn key(k: &FlowKey) -> Option<Key6> {
        (!key_is_v4(k)).then(|| V6::key_any(k))
    }

    #[inline]
    fn key_proto(k: &Key6) -> u8 {
        k.proto
    }

    #[inline]
    fn hash(k: &Key6, s: &[u64; 4]) -> u64 {
        let p = u64::from(k.ports) | (u64::from(k.proto) << 32);
        let a = fold(k.src[0] ^ s[0], k.src[1] ^ s[1]);
        let b = fold(k.dst[0] ^ s[2], k.dst[1] ^ s[3]);
        let c = fold(p ^ s[1], a ^ s[2]);
        let h = fold(b ^ s[3], c ^ s[0]);
        fold(h ^ s[1], 0x9E37_79B9_7F4A_7C15)
    }

    fn pack(e: &FlowEntry) -> Option<[u64; 11]> {
        // A key that fits the IPv4 layout is looked up there: a flow with
        // such a key cannot live here (and one mixing both is refused).
        if key_is_v4(&e.original) || key_is_v4(&e.reply) || !storable(e) {
            return None;
        }
        let (w9, w10) = hop_words(e)?;
        let [a, b] = addr_words(&e.original.src);
        let [c, d] = addr_words(&e.original.dst);
        let [f, g] = addr_words(&e.reply.src);
        let [h, i] = addr_words(&e.reply.dst);
        Some([a, b, c, d, ports_word(e), f, g, h, i, w9, w10])
    }

    fn unpack(w: &[u64; 11], proto: u8, backend: u32) -> FlowEntry {
        let (orig_hop, reply_hop, service) = unhop(w[9], w[10]);
        let p = |x: u32| (x as u16, (x >> 16) as u16);
        let (os, od) = p(w[4] as u32);
        let (rs, rd) = p((w[4] >> 32) as u32);
        FlowEntry {
            original: FlowKey {
                src: words_addr(w[0], w[1]),
                dst: words_addr(w[2], w[3]),
                sport: os,
                dport: od,
                proto,
            },
            reply: FlowKey {
                src: words_addr(w[5], w[6]),
                dst: words_addr(w[7], w[8]),
                sport: rs,
                dport: rd,
                proto,
            },
            orig_hop,
            reply_hop,
            service,
            backend,
        }
    }

    #[inline]
    fn matches(w: &[u64; 11], k: &Key6) -> Option<Direction> {
        if w[0] == k.src[0]
            && w[1] == k.src[1]
            && w[2] == k.dst[0]
            && w[3] == k.dst[1]
            && w[4] as u32 == k.ports
        {
            Some(Direction::Original)
        } else if w[5] == k.src[0]
            && w[6] == k.src[1]
            && w[7] == k.dst[0]
            && w[8] == k.dst[1]
            && (w[4] >> 32) as u32 == k.ports
        {
            Some(Direction::Reply)
        } else {
            None
        }
    }

    fn keys(w: &[u64; 11], proto: u8) -> (Key6, Key6) {
        (
            Key6 {
                src: [w[0], w[1]],
                dst: [w[2], w[3]],
                ports: w[4] as u32,
                proto,
            },
            Key6 {
                src: [w[5], w[6]],
                dst: [w[7], w[8]],
                ports: (w[4] >> 32) as u32,
                proto,
            },
        )
    }
}
