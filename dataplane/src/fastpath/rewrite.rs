//! What the workers publish for a flow direction ([`plan`]), and
//! [`apply`], the XDP program's rewrite (`bpf/fastpath.h`) in Rust.
//!
//! [`plan`] follows the pipeline's `forward`: the egress hop (the original
//! direction's as the kernel's neighbour events moved it, the reply's as
//! recorded), and for NAT and FULLNAT the tuple the packet leaves with, the
//! reverse of the other direction's. The checksum deltas are RFC 1624's
//! `Σ ~m + m'` over the changed words, folded once here so that the XDP
//! program adds a constant per packet (plus the TTL word's change, which
//! varies per packet). [`apply`] exists so that the tests can hold the fast
//! path's output against the pipeline's for the same frame; it is not on
//! any packet path.

use crate::flow_table::{Direction, FlowEntry};
use crate::pipeline::{is_dr_flow, Snapshot};
use crate::service::ForwardMethod;
use crate::types::{proto, FlowKey};
use crate::wire::checksum::{fold, Delta};

use super::entry::{FastValue, FLAG_NAT};

/// The rewrite of the packets of `e` in direction `dir`, or `None` when that
/// direction cannot take the fast path: not TCP or UDP, an IPIP flow (the
/// XDP program does not encapsulate), an egress port without an interface
/// index in `ifindex` (by port, as `--iface`; 0 = not allowed).
pub fn plan(snap: &Snapshot, e: &FlowEntry, dir: Direction, ifindex: &[u32]) -> Option<FastValue> {
    let from = match dir {
        Direction::Original => e.original,
        Direction::Reply => e.reply,
    };
    if !matches!(from.proto, proto::TCP | proto::UDP) {
        return None;
    }
    let dr = is_dr_flow(e);
    if dr
        && snap
            .services
            .get(e.service)
            .is_some_and(|s| s.spec.forward == ForwardMethod::Tunnel)
    {
        return None;
    }
    let hop = match dir {
        Direction::Original => snap.current_hop(e.orig_hop),
        Direction::Reply => e.reply_hop,
    };
    let port = snap.ports.get(usize::from(hop.port))?;
    let ifx = *ifindex.get(usize::from(hop.port))?;
    if ifx == 0 {
        return None;
    }
    let mut v = FastValue {
        dmac: hop.mac,
        smac: port.mac,
        ifindex: ifx,
        mtu: port.mtu,
        ..FastValue::default()
    };
    if !dr {
        let to = match dir {
            Direction::Original => e.reply.reversed(),
            Direction::Reply => e.original.reversed(),
        };
        let (ip, l4) = deltas(&from, &to);
        v.to = to;
        v.ip_delta = ip;
        v.l4_delta = l4;
        v.flags = FLAG_NAT;
    }
    Some(v)
}

/// The IPv4 header and L4 checksum deltas of rewriting `from` into `to`.
pub fn deltas(from: &FlowKey, to: &FlowKey) -> (u16, u16) {
    let mut addrs = Delta::new();
    if from.src.is_v4() {
        addrs.bytes4(&from.src.v4_octets(), &to.src.v4_octets());
        addrs.bytes4(&from.dst.v4_octets(), &to.dst.v4_octets());
    } else {
        addrs.bytes16(&from.src.0, &to.src.0);
        addrs.bytes16(&from.dst.0, &to.dst.0);
    }
    let mut l4 = addrs;
    l4.word(from.sport, to.sport);
    l4.word(from.dport, to.dport);
    (fold(raw(addrs)), fold(raw(l4)))
}

/// The unfolded sum inside a [`Delta`], recovered through its public
/// behaviour: applied to a checksum of `0xffff` (`~0xffff == 0`), the
/// delta gives `~fold(delta)`.
fn raw(d: Delta) -> u64 {
    u64::from(!d.apply(0xffff))
}

/// `~(~check + delta)` with a folded delta, as `csum_apply` in C.
fn csum_apply(check: u16, delta: u32) -> u16 {
    let mut s = u32::from(!check) + delta;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// The XDP program's fast path over an Ethernet frame, with the entry `v`
/// found for it: `true` and the frame rewritten as the program sends it, or
/// `false` and the frame unchanged where the program would leave the frame
/// to the usual path. Line for line as `fast_path()` in `bpf/fastpath.h`
/// (the key lookup aside).
pub fn apply(frame: &mut [u8], v: &FastValue) -> bool {
    const ETH: usize = 14;
    if frame.len() < ETH + 20 {
        return false;
    }
    let v6 = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => false,
        0x86dd => true,
        _ => return false,
    };
    let (l4, proto) = if v6 {
        if frame.len() < ETH + 40 {
            return false;
        }
        (ETH + 40, frame[ETH + 6])
    } else {
        (ETH + usize::from(frame[ETH] & 0x0f) * 4, frame[ETH + 9])
    };
    let csum_off = match proto {
        proto::TCP if frame.len() >= l4 + 20 => {
            if frame[l4 + 13] & 0x07 != 0 {
                return false;
            }
            l4 + 16
        }
        proto::UDP if frame.len() >= l4 + 8 => l4 + 6,
        _ => return false,
    };
    let len = frame.len() - ETH;
    if !well_formed(&frame[ETH..], v6, proto, l4 - ETH) {
        return false;
    }
    if len > usize::from(v.mtu) {
        return false;
    }
    let nat = v.flags & FLAG_NAT != 0;
    let old_l4 = u16::from_be_bytes([frame[csum_off], frame[csum_off + 1]]);
    if v6 {
        let hl = ETH + 7;
        if frame[hl] <= 1 || proto == proto::UDP && old_l4 == 0 {
            return false;
        }
        frame[hl] -= 1;
        if nat {
            frame[ETH + 8..ETH + 24].copy_from_slice(&v.to.src.0);
            frame[ETH + 24..ETH + 40].copy_from_slice(&v.to.dst.0);
        }
    } else {
        let ttl = ETH + 8;
        if frame[ttl] <= 1 {
            return false;
        }
        let old_w = u16::from_be_bytes([frame[ttl], frame[ttl + 1]]);
        frame[ttl] -= 1;
        let new_w = old_w - 0x100;
        let mut d = u32::from(!old_w) + u32::from(new_w);
        if nat {
            frame[ETH + 12..ETH + 16].copy_from_slice(&v.to.src.v4_octets());
            frame[ETH + 16..ETH + 20].copy_from_slice(&v.to.dst.v4_octets());
            d += u32::from(v.ip_delta);
        }
        let c = u16::from_be_bytes([frame[ETH + 10], frame[ETH + 11]]);
        frame[ETH + 10..ETH + 12].copy_from_slice(&csum_apply(c, d).to_be_bytes());
    }
    if nat {
        frame[l4..l4 + 2].copy_from_slice(&v.to.sport.to_be_bytes());
        frame[l4 + 2..l4 + 4].copy_from_slice(&v.to.dport.to_be_bytes());
        if !(proto == proto::UDP && old_l4 == 0) {
            let mut c = csum_apply(old_l4, u32::from(v.l4_delta));
            if proto == proto::UDP && c == 0 {
                c = 0xffff;
            }
            frame[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
    frame[0..6].copy_from_slice(&v.dmac);
    frame[6..12].copy_from_slice(&v.smac);
    true
}

/// `fast_ipv4_ok` and `fast_l4_ok` of `bpf/fastpath.h` over the IP packet
/// `ip` (to the frame's end) whose TCP or UDP header is at `l4` (its fixed
/// part within `ip`): what the parser would refuse never takes the fast
/// path. IPv4: IHL 5, a right header checksum, a total length within the
/// frame; IPv6: 40 + payload length within the frame; TCP data offset at
/// least 5 and within the IP payload; UDP length at least 8 and within it.
fn well_formed(ip: &[u8], v6: bool, proto: u8, l4: usize) -> bool {
    let l4len = if v6 {
        let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        if 40 + plen > ip.len() {
            return false;
        }
        plen
    } else {
        let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[0] & 0x0f != 5 || !(20..=ip.len()).contains(&tot) {
            return false;
        }
        if crate::wire::checksum::fold(crate::wire::checksum::sum(&ip[..20])) != 0xffff {
            return false;
        }
        tot - 20
    };
    if proto == proto::TCP {
        let doff = usize::from(ip[l4 + 12] >> 4);
        doff >= 5 && doff * 4 <= l4len
    } else {
        let ulen = usize::from(u16::from_be_bytes([ip[l4 + 4], ip[l4 + 5]]));
        (8..=l4len).contains(&ulen)
    }
}

#[cfg(test)]
mod tests;
