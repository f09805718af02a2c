//! IP fragments: later fragments follow their first.
//!
//! Only the first fragment of a datagram (offset 0) carries the L4 header,
//! so only it can be looked up by 5-tuple. It goes through the pipeline
//! like a whole packet ([`crate::wire::Parsed::fragment`]); what the
//! pipeline made of it (the egress port, the Ethernet header, and either
//! the new IP addresses or the outer header of an IPIP tunnel) is remembered
//! here as a [`FragRewrite`] under the datagram's [`FragKey`] (source,
//! destination, protocol and IP identification, RFC 791 § 3.2 / RFC 8200
//! § 4.5: what the receiver reassembles by). Every later fragment gets the
//! same L3 rewrite ([`apply`]): addresses and the IPv4 header checksum for
//! NAT and FULLNAT (the L4 checksum lives in the first fragment and was
//! fixed there incrementally), the MACs alone for DR, the same outer header
//! for IPIP. Fragments are forwarded one by one, never reassembled: the
//! receiver reassembles, and overlapping or duplicate fragments reach it as
//! they came (it drops what RFC 5722 tells it to).
//!
//! A later fragment that comes before its first is held, by its frame
//! handle (the frame stays in the port's memory; at most [`MAX_HELD`] per
//! worker, so the ring is never starved), and sent when the first has been
//! forwarded, or released as `frag_dropped_no_first` after
//! [`FRAG_TIMEOUT_SECS`]. A rewrite is forgotten when the last fragment
//! (MF clear) has passed and none of its datagram is held, or after
//! [`FRAG_TIMEOUT_SECS`]; a later fragment
//! that finds it older than that is dropped (`frag_dropped_expired`).
//!
//! # One table per worker
//!
//! The table belongs to one worker, with no sharing and no lock, because
//! every fragment of one datagram reaches the same receive queue: NICs hash
//! fragmented packets by their addresses alone (no ports are in the later
//! ones, and RSS drops to the 2-tuple for every packet with MF or an
//! offset, the first included), and a veth delivers a frame on the receive
//! queue its peer sent it on, which is the same for every fragment of one
//! datagram (the kernel fragments one skb on one transmit queue). The flow
//! table stays shared, so the first fragment finds its flow whichever queue
//! the flow's whole packets use. The steering program keeps a datagram
//! together too: it judges the first fragment by its ports and lets the
//! later ones follow it by the same key (`bpf/steer.c`).
//!
//! Fragments of SCTP and ICMP are not followed (the parser refuses them:
//! SCTP's CRC32c covers the whole packet). Maglev's 3-tuple fallback for a
//! later fragment with no state (Katran's and DPVS's alternative is to drop
//! them) is not done: such a fragment is held for its first.

use hashbrown::HashMap;

use crate::forward::ttl;
use crate::pipeline::{DropReason, Snapshot, Verdict};
use crate::types::Addr;
use crate::wire::{ipv4, ipv6, ParseError, Parsed};

/// How long a fragment's state lives: the kernel's `ipfrag_time` default
/// (30 s, `net.ipv4.ipfrag_time`, `net.ipv6.ip6frag_time`), after which the
/// receiver has given up on the datagram anyway.
pub const FRAG_TIMEOUT_SECS: u32 = 30;
/// Rewrites a worker remembers at once (about 100 bytes each).
pub const MAX_FRAG_ENTRIES: usize = 4096;
/// Frames a worker holds for a first fragment that has not come yet.
pub const MAX_HELD: usize = 32;

/// Length of the Ethernet header of the frames followed (untagged: tagged
/// frames are refused before).
const ETH_LEN: usize = 14;

/// What the fragments of one datagram share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// IP identification (IPv4: 16 bits).
    pub id: u32,
    /// L4 protocol.
    pub proto: u8,
}

impl FragKey {
    /// The key of a parsed first fragment; `None` for a whole packet.
    pub fn of_first(p: &Parsed) -> Option<FragKey> {
        Some(FragKey {
            src: p.key.src,
            dst: p.key.dst,
            id: p.fragment?,
            proto: p.key.proto,
        })
    }
}

/// The header of a later fragment (offset > 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaterFragment {
    /// Its datagram.
    pub key: FragKey,
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// The IP packet's length as its header gives it.
    pub ip_len: usize,
    /// MF is clear: the datagram's last fragment.
    pub last: bool,
}

/// Reads a later fragment's header from an untagged Ethernet frame; `None`
/// if it is not one (a first fragment the parser refused, a tagged frame, a
/// truncated header).
pub fn parse_later(frame: &[u8]) -> Option<LaterFragment> {
    let l3 = frame.get(ETH_LEN..)?;
    match frame.get(12..14)? {
        [0x08, 0x00] => later_v4(l3),
        [0x86, 0xdd] => later_v6(l3),
        _ => None,
    }
}

fn later_v4(l3: &[u8]) -> Option<LaterFragment> {
    let ip = ipv4::Packet::new_checked(l3).ok()?;
    if ip.version() != 4 || ip.frag_offset() == 0 {
        return None;
    }
    Some(LaterFragment {
        key: FragKey {
            src: Addr::from_v4(ip.src_addr()),
            dst: Addr::from_v4(ip.dst_addr()),
            id: u32::from(ip.ident()),
            proto: ip.protocol(),
        },
        v6: false,
        ip_len: usize::from(ip.total_len()),
        last: !ip.more_frags(),
    })
}

fn later_v6(l3: &[u8]) -> Option<LaterFragment> {
    let ip = ipv6::Packet::new_checked(l3).ok()?;
    if ip.version() != 6 {
        return None;
    }
    let mut rest = ip.payload();
    let mut next = ip.next_header();
    for _ in 0..=crate::wire::parse::MAX_IPV6_EXT_HEADERS {
        match next {
            ipv6::NEXT_HOP_BY_HOP | ipv6::NEXT_ROUTING | ipv6::NEXT_DEST_OPTS => {
                let (n, len) = ipv6::ext_header(rest).ok()?;
                rest = rest.get(len..)?;
                next = n;
            }
            ipv6::NEXT_FRAGMENT => {
                let h = rest.get(..crate::wire::parse::FRAG_HEADER_LEN)?;
                let off_m = u16::from_be_bytes([h[2], h[3]]);
                if off_m & 0xfff8 == 0 {
                    return None;
                }
                return Some(LaterFragment {
                    key: FragKey {
                        src: Addr::from_v6(ip.src_addr()),
                        dst: Addr::from_v6(ip.dst_addr()),
                        id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                        proto: h[0],
                    },
                    v6: true,
                    ip_len: ipv6::HEADER_LEN + usize::from(ip.payload_len()),
                    last: off_m & 1 == 0,
                });
            }
            _ => return None,
        }
    }
    None
}

/// What the pipeline did to a datagram's first fragment, to do again to the
/// others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragRewrite {
    /// Egress port.
    pub port: u8,
    /// The Ethernet header the first fragment left with.
    pub eth: [u8; ETH_LEN],
    /// The L3 change.
    pub l3: L3Rewrite,
}

/// The L3 part of a [`FragRewrite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3Rewrite {
    /// New source and destination addresses (NAT, FULLNAT; DR keeps both).
    Addrs {
        /// Source.
        src: Addr,
        /// Destination.
        dst: Addr,
    },
    /// An outer header put in front (IPIP): its first `len` bytes.
    Tunnel {
        /// The outer IPv4 or IPv6 header.
        hdr: [u8; ipv6::HEADER_LEN],
        /// Its length (20 or 40).
        len: u8,
    },
}

/// The rewrite to remember from a first fragment that the pipeline
/// forwarded: `out` is the frame as it leaves, `in_len` its received
/// length, `v` the verdict, `p` the frame as parsed on arrival. `None` when
/// it was not forwarded (dropped, answered, turned into a reset).
pub fn learn(out: &[u8], in_len: usize, v: Verdict, p: &Parsed) -> Option<FragRewrite> {
    if p.l3_offset != ETH_LEN || p.fragment.is_none() {
        return None;
    }
    let mut eth = [0u8; ETH_LEN];
    eth.copy_from_slice(out.get(..ETH_LEN)?);
    let l3 = out.get(ETH_LEN..)?;
    match v {
        Verdict::Tx(port) => {
            let (src, dst) = if p.ip_version == 4 {
                let ip = ipv4::Packet::new_checked(l3).ok()?;
                (Addr::from_v4(ip.src_addr()), Addr::from_v4(ip.dst_addr()))
            } else {
                let ip = ipv6::Packet::new_checked(l3).ok()?;
                (Addr::from_v6(ip.src_addr()), Addr::from_v6(ip.dst_addr()))
            };
            Some(FragRewrite {
                port,
                eth,
                l3: L3Rewrite::Addrs { src, dst },
            })
        }
        Verdict::TxLen(port, n) if n > in_len => {
            let len = n - in_len;
            if len != ipv4::MIN_HEADER_LEN && len != ipv6::HEADER_LEN {
                return None;
            }
            let mut hdr = [0u8; ipv6::HEADER_LEN];
            hdr[..len].copy_from_slice(l3.get(..len)?);
            Some(FragRewrite {
                port,
                eth,
                l3: L3Rewrite::Tunnel {
                    hdr,
                    len: len as u8,
                },
            })
        }
        _ => None,
    }
}

/// Rewrites the later fragment `h` in `buf` (`len` bytes received) as `rw`
/// says. Returns the verdict ([`Verdict::Tx`], or [`Verdict::TxLen`] with
/// the grown length for a tunnel); a fragment too big for the egress link
/// is dropped as [`DropReason::TooBig`] and one whose TTL / hop limit ran
/// out as [`DropReason::TtlExceeded`] (no ICMP error: it would quote no
/// ports), one of the other family or too short as
/// [`DropReason::Rewrite`]. The fragment leaves with a TTL one less
/// ([`ttl`]; for a tunnel, the inner one). On a drop the frame is
/// unchanged.
pub fn apply(
    snap: &Snapshot,
    buf: &mut [u8],
    len: usize,
    h: &LaterFragment,
    rw: &FragRewrite,
) -> Verdict {
    let Some(port) = snap.ports.get(usize::from(rw.port)) else {
        return Verdict::Drop(DropReason::BadEgress);
    };
    let ip_end = ETH_LEN + h.ip_len;
    if ip_end > len.min(buf.len()) {
        return Verdict::Drop(DropReason::Rewrite);
    }
    let version = if h.v6 { 6 } else { 4 };
    if ttl::expired(buf, ETH_LEN, version) {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    let mtu = usize::from(port.mtu);
    match rw.l3 {
        L3Rewrite::Addrs { src, dst } => {
            if src.is_v4() == h.v6 || dst.is_v4() == h.v6 {
                return Verdict::Drop(DropReason::Rewrite);
            }
            if h.ip_len > mtu {
                return Verdict::Drop(DropReason::TooBig);
            }
            ttl::decrement(buf, ETH_LEN, version);
            let l3 = &mut buf[ETH_LEN..ip_end];
            if h.v6 {
                let mut ip = ipv6::Packet::new_unchecked(l3);
                ip.set_src_addr(src.0);
                ip.set_dst_addr(dst.0);
            } else {
                let mut ip = ipv4::Packet::new_unchecked(l3);
                ip.set_src_addr(src.v4_octets());
                ip.set_dst_addr(dst.v4_octets());
                ip.fill_checksum();
            }
            buf[..ETH_LEN].copy_from_slice(&rw.eth);
            Verdict::Tx(rw.port)
        }
        L3Rewrite::Tunnel { hdr, len: hl } => {
            let hl = usize::from(hl);
            let new_len = ip_end + hl;
            if new_len > buf.len() {
                return Verdict::Drop(DropReason::Rewrite);
            }
            if h.ip_len + hl > mtu {
                return Verdict::Drop(DropReason::TooBig);
            }
            ttl::decrement(buf, ETH_LEN, version);
            buf.copy_within(ETH_LEN..ip_end, ETH_LEN + hl);
            let outer = &mut buf[ETH_LEN..ETH_LEN + hl];
            outer.copy_from_slice(&hdr[..hl]);
            if hl == ipv4::MIN_HEADER_LEN {
                let mut ip = ipv4::Packet::new_unchecked(outer);
                ip.set_total_len((hl + h.ip_len) as u16);
                ip.fill_checksum();
            } else {
                ipv6::Packet::new_unchecked(outer).set_payload_len(h.ip_len as u16);
            }
            buf[..ETH_LEN].copy_from_slice(&rw.eth);
            Verdict::TxLen(rw.port, new_len)
        }
    }
}

/// The fragment counters of one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FragStats {
    /// First fragments forwarded whose rewrite was remembered.
    pub first: u64,
    /// Later fragments forwarded with their first's rewrite (held ones
    /// included).
    pub followed: u64,
    /// Later fragments held because their first had not come.
    pub held: u64,
    /// Held fragments whose first did not come within
    /// [`FRAG_TIMEOUT_SECS`], or was not forwarded.
    pub dropped_no_first: u64,
    /// Rewrites not remembered, or fragments not held, for lack of room.
    pub dropped_table_full: u64,
    /// Later fragments whose first came more than [`FRAG_TIMEOUT_SECS`]
    /// before.
    pub dropped_expired: u64,
}

impl FragStats {
    /// Counter names (`frag_` prefixed) and values.
    pub fn pairs(&self) -> [(&'static str, u64); 6] {
        [
            ("frag_first", self.first),
            ("frag_followed", self.followed),
            ("frag_held", self.held),
            ("frag_dropped_no_first", self.dropped_no_first),
            ("frag_dropped_table_full", self.dropped_table_full),
            ("frag_dropped_expired", self.dropped_expired),
        ]
    }
}

/// A remembered rewrite and when its first fragment passed.
#[derive(Clone, Copy, Debug)]
struct Entry {
    rw: FragRewrite,
    since: u32,
}

/// A frame held for its first fragment.
#[derive(Debug)]
struct Held<F> {
    key: FragKey,
    since: u32,
    ingress: u8,
    frame: F,
}

/// One worker's fragment state: rewrites by datagram and held frames `F`.
/// Bounded in entries ([`MAX_FRAG_ENTRIES`], [`MAX_HELD`]) and time
/// ([`FRAG_TIMEOUT_SECS`]); allocates only when made.
#[derive(Debug)]
pub struct FragTable<F> {
    entries: HashMap<FragKey, Entry>,
    held: Vec<Held<F>>,
    last_purge: u32,
}

impl<F> Default for FragTable<F> {
    fn default() -> Self {
        FragTable {
            entries: HashMap::with_capacity(MAX_FRAG_ENTRIES),
            held: Vec::with_capacity(MAX_HELD),
            last_purge: 0,
        }
    }
}

/// What to do with a later fragment ([`FragTable::follow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send or drop it as the verdict says (counted like any verdict).
    Forward(Verdict),
    /// Its first has not come: hold it ([`FragTable::hold`]).
    Hold(FragKey),
    /// Its first came too long ago: release it (counted).
    Expired,
}

impl<F> FragTable<F> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rewrites remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no rewrite is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Frames held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Remembers the rewrite of `key`'s first fragment (a duplicate first
    /// replaces it). When the table is full, the expired entries go first;
    /// if none did, the rewrite is not remembered (counted).
    pub fn learn(&mut self, key: FragKey, rw: FragRewrite, now: u32, st: &mut FragStats) {
        if self.entries.len() >= MAX_FRAG_ENTRIES && !self.entries.contains_key(&key) {
            self.purge_now(now);
            if self.entries.len() >= MAX_FRAG_ENTRIES {
                st.dropped_table_full += 1;
                return;
            }
        }
        self.entries.insert(key, Entry { rw, since: now });
        st.first += 1;
    }

    /// Decides on the later fragment in `buf[..*len]` and, when it follows
    /// a known first, rewrites it in place (`*len` grows for a tunnel). The
    /// last fragment (MF clear) ends its datagram's entry.
    pub fn follow(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        len: &mut usize,
        now: u32,
        st: &mut FragStats,
    ) -> Action {
        let Some(h) = parse_later(buf.get(..*len).unwrap_or(&[])) else {
            return Action::Forward(Verdict::Drop(DropReason::from(ParseError::Fragment)));
        };
        let Some(e) = self.entries.get(&h.key).copied() else {
            return Action::Hold(h.key);
        };
        if now.wrapping_sub(e.since) >= FRAG_TIMEOUT_SECS {
            self.entries.remove(&h.key);
            st.dropped_expired += 1;
            return Action::Expired;
        }
        // The last fragment ends the entry, unless fragments of the same
        // datagram are held (they are being released, after it).
        if h.last && !self.held.iter().any(|x| x.key == h.key) {
            self.entries.remove(&h.key);
        }
        let v = apply(snap, buf, *len, &h, &e.rw);
        if let Verdict::TxLen(_, n) = v {
            *len = n;
        }
        if matches!(v, Verdict::Tx(_) | Verdict::TxLen(..)) {
            st.followed += 1;
        }
        Action::Forward(v)
    }

    /// Holds `frame` (received on `ingress`) for `key`'s first fragment;
    /// gives it back when [`MAX_HELD`] are held already (counted).
    pub fn hold(
        &mut self,
        key: FragKey,
        frame: F,
        ingress: u8,
        now: u32,
        st: &mut FragStats,
    ) -> Option<F> {
        if self.held.len() >= MAX_HELD {
            st.dropped_table_full += 1;
            return Some(frame);
        }
        self.held.push(Held {
            key,
            since: now,
            ingress,
            frame,
        });
        st.held += 1;
        None
    }

    /// The oldest frame held for `key`, with its ingress port.
    pub fn take_held(&mut self, key: &FragKey) -> Option<(F, u8)> {
        let i = self.held.iter().position(|h| h.key == *key)?;
        let h = self.held.remove(i);
        Some((h.frame, h.ingress))
    }

    /// A held frame whose first did not come within [`FRAG_TIMEOUT_SECS`]
    /// (counted), to release; call until `None`. Also forgets expired
    /// rewrites, at most once per second.
    pub fn take_expired(&mut self, now: u32, st: &mut FragStats) -> Option<F> {
        if now != self.last_purge {
            self.purge_now(now);
        }
        let i = self
            .held
            .iter()
            .position(|h| now.wrapping_sub(h.since) >= FRAG_TIMEOUT_SECS)?;
        st.dropped_no_first += 1;
        Some(self.held.remove(i).frame)
    }

    fn purge_now(&mut self, now: u32) {
        self.last_purge = now;
        self.entries
            .retain(|_, e| now.wrapping_sub(e.since) < FRAG_TIMEOUT_SECS);
    }
}

/// Whether a frame, as parsed, is a fragment for [`crate::frag`]: a first
/// fragment the parser accepted, or any other fragment it refused.
#[inline]
pub fn is_fragment(parsed: &Result<Parsed, ParseError>) -> bool {
    match parsed {
        Ok(p) => p.fragment.is_some(),
        Err(e) => *e == ParseError::Fragment,
    }
}

#[cfg(test)]
#[path = "frag_tests.rs"]
mod tests;
