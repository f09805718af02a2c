//! The sans-I/O packet core: parse → flow lookup → schedule on miss →
//! rewrite → verdict.
//!
//! [`process`] takes one frame (in place), the published [`Snapshot`], the
//! shared [`FlowTable`] and the time, and returns a [`Verdict`]. It makes no
//! syscall, reads no clock, takes no lock and allocates nothing, so the
//! worker loop, the in-memory port, the tests and the benches all run the
//! very same code (quinn-proto's split between protocol core and I/O).
//!
//! NAT forwarding (IPVS "masquerading", kube-proxy's DNAT): the first
//! packet of a flow to a VIP picks a backend, and one flow record holds both
//! directions: the original tuple as received (client → VIP) and the reply
//! tuple as it will be received (backend → client, or backend → the LB's
//! SNAT address when the client is masqueraded). Every later packet of
//! either direction is rewritten into the reverse of the other direction's
//! tuple, so no per-direction NAT state is needed.

use hashbrown::HashMap;

use crate::flow_table::{Direction, FlowEntry, FlowTable, InsertError};
use crate::forward::nat;
use crate::sched;
use crate::service::{ServiceTable, VipKey};
use crate::types::{proto, Addr, Cidr, FlowKey, L2Hop, Mac};
use crate::wire::{self, tcp_flags, ParseError};

/// Where a backend is reached and which local address masquerades towards
/// it; resolved by the control plane from the kernel's route and neighbour
/// tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface and next-hop MAC.
    pub hop: L2Hop,
    /// The LB's own address used as the SNAT source towards this backend
    /// (the route's preferred source).
    pub snat: Addr,
}

/// One interface of the LB, by its index in the port set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// The interface's own MAC (source MAC of frames sent on it).
    pub mac: Mac,
}

/// When a client's source address is rewritten (kube-proxy's
/// KUBE-MARK-MASQ for ClusterIP traffic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqPolicy {
    /// Masquerade every client (kube-proxy `--masquerade-all`).
    pub all: bool,
    /// Clients inside these prefixes (the cluster CIDR) keep their address;
    /// all others are masqueraded. Empty with `all == false`: nobody is.
    pub cluster_cidrs: Vec<Cidr>,
    /// Inclusive range of SNAT source ports. It must lie outside the
    /// kernel's `ip_local_port_range` so that the LB host's own
    /// connections never collide with masqueraded flows.
    pub ports: (u16, u16),
}

impl Default for MasqPolicy {
    fn default() -> Self {
        MasqPolicy {
            all: false,
            cluster_cidrs: Vec::new(),
            ports: (61000, 65535),
        }
    }
}

impl MasqPolicy {
    /// Whether traffic from `client` is masqueraded.
    #[inline]
    pub fn masquerades(&self, client: &Addr) -> bool {
        if self.all {
            return true;
        }
        !self.cluster_cidrs.is_empty() && !self.cluster_cidrs.iter().any(|c| c.contains(client))
    }
}

/// Everything the packet path reads, published as one immutable value and
/// swapped by epoch ([`crate::worker::Shared`]).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Services by front end.
    pub services: ServiceTable,
    /// The LB's interfaces, indexed like `--iface`.
    pub ports: Vec<PortInfo>,
    /// Next hops of backends, by backend address.
    pub nexthops: HashMap<Addr, NextHop>,
    /// Masquerading policy.
    pub masq: MasqPolicy,
}

/// Why a frame was dropped; indexes the drop counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DropReason {
    /// The frame did not parse (the parse error is counted separately).
    Malformed,
    /// Not TCP, UDP or SCTP (ICMP errors following flows come later).
    UnsupportedProto,
    /// No flow and no service for the destination.
    NoService,
    /// A TCP segment without SYN for which no flow exists.
    NoFlow,
    /// The service has no backend that takes new flows.
    NoBackend,
    /// The chosen backend's next hop is not resolved yet.
    NoNextHop,
    /// The flow table is full and nothing could be evicted.
    FlowTableFull,
    /// No SNAT port was free for this backend.
    SnatExhausted,
    /// The new flow's reply tuple is already owned by another flow.
    FlowExists,
    /// The rewrite failed (family or protocol mismatch, short frame).
    Rewrite,
    /// The egress port index is not one of this LB's interfaces.
    BadEgress,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 11;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::UnsupportedProto,
        DropReason::NoService,
        DropReason::NoFlow,
        DropReason::NoBackend,
        DropReason::NoNextHop,
        DropReason::FlowTableFull,
        DropReason::SnatExhausted,
        DropReason::FlowExists,
        DropReason::Rewrite,
        DropReason::BadEgress,
    ];

    /// Counter index.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Counter name.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnsupportedProto => "unsupported_proto",
            DropReason::NoService => "no_service",
            DropReason::NoFlow => "no_flow",
            DropReason::NoBackend => "no_backend",
            DropReason::NoNextHop => "no_nexthop",
            DropReason::FlowTableFull => "flow_table_full",
            DropReason::SnatExhausted => "snat_exhausted",
            DropReason::FlowExists => "flow_exists",
            DropReason::Rewrite => "rewrite",
            DropReason::BadEgress => "bad_egress",
        }
    }
}

/// What to do with a frame after [`process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) frame on this port.
    Tx(u8),
    /// Drop it and count why.
    Drop(DropReason),
}

/// Per-worker counters, plain integers on the packet path; the worker
/// publishes them to shared atomics once per burst.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Flows created.
    pub new_flows: u64,
    /// Flows created with a masqueraded client.
    pub snat_flows: u64,
    /// Drops by [`DropReason`].
    pub drops: [u64; DropReason::COUNT],
    /// Parse failures by [`ParseError`].
    pub parse_errors: [u64; ParseError::COUNT],
}

impl Stats {
    /// Counts a verdict.
    #[inline]
    pub fn count(&mut self, v: Verdict) {
        match v {
            Verdict::Tx(_) => self.tx += 1,
            Verdict::Drop(r) => self.drops[r.index()] += 1,
        }
    }
}

/// How many SNAT ports are tried for one new flow before giving up.
const SNAT_PROBES: u32 = 64;

/// Processes one frame received on port `ingress` at time `now` (seconds on
/// any monotonic clock; flow ageing compares only differences).
///
/// On [`Verdict::Tx`] the frame has been rewritten in place (addresses,
/// ports, checksums, MACs) and must be sent on the returned port. Counters
/// `rx`, `new_flows`, `snat_flows` and `parse_errors` are updated here; the
/// caller counts the verdict with [`Stats::count`].
pub fn process(
    snap: &Snapshot,
    flows: &FlowTable,
    frame: &mut [u8],
    ingress: u8,
    now: u32,
    stats: &mut Stats,
) -> Verdict {
    stats.rx += 1;
    let p = match wire::parse(frame) {
        Ok(p) => p,
        Err(e) => {
            stats.parse_errors[e.index()] += 1;
            return Verdict::Drop(DropReason::Malformed);
        }
    };
    let key = p.key;
    if !matches!(key.proto, proto::TCP | proto::UDP | proto::SCTP) {
        return Verdict::Drop(DropReason::UnsupportedProto);
    }

    if let Some(hit) = flows.lookup(&key, now) {
        flows.touch(hit.id, hit.dir, p.tcp_flags, now);
        let (to, hop) = match hit.dir {
            Direction::Original => (hit.entry.reply.reversed(), hit.entry.orig_hop),
            Direction::Reply => (hit.entry.original.reversed(), hit.entry.reply_hop),
        };
        return emit(snap, frame, &p, &to, hop);
    }

    // A new flow: it must be addressed to a service.
    let vip = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
    };
    let Some((svc_idx, svc)) = snap.services.lookup(&vip) else {
        return Verdict::Drop(DropReason::NoService);
    };
    if key.proto == proto::TCP
        && (p.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST)) != tcp_flags::SYN
    {
        // IPVS creates TCP connections only on SYN; a stray segment of a
        // flow we do not know (expired, or from before a restart) must not
        // be scheduled anew onto a backend that never saw its handshake.
        return Verdict::Drop(DropReason::NoFlow);
    }
    let Some(b_idx) = sched::pick(svc, &key) else {
        return Verdict::Drop(DropReason::NoBackend);
    };
    let backend = svc.spec.backends[b_idx];
    let Some(nh) = snap.nexthops.get(&backend.addr) else {
        return Verdict::Drop(DropReason::NoNextHop);
    };
    let client_mac = src_mac(frame);
    let mut entry = FlowEntry {
        original: key,
        reply: FlowKey {
            src: backend.addr,
            dst: key.src,
            sport: backend.port,
            dport: key.sport,
            proto: key.proto,
        },
        orig_hop: nh.hop,
        reply_hop: L2Hop {
            port: ingress,
            mac: client_mac,
        },
        service: svc_idx,
        backend: b_idx as u32,
    };

    let masq = snap.masq.masquerades(&key.src);
    let inserted = if masq {
        entry.reply.dst = nh.snat;
        insert_with_snat_port(flows, &mut entry, &snap.masq, now)
    } else {
        flows.insert(&entry, now).map_err(|e| match e {
            InsertError::Full => DropReason::FlowTableFull,
            InsertError::Exists => DropReason::FlowExists,
        })
    };
    let id = match inserted {
        Ok(id) => id,
        Err(DropReason::FlowExists) => {
            // Another worker may have inserted this very flow a moment ago
            // (a retransmitted SYN on another queue): follow its record.
            // Otherwise the reply tuple belongs to another flow (the client
            // also talks to the backend directly with the same ports).
            return match flows.lookup(&key, now) {
                Some(hit) if hit.dir == Direction::Original => {
                    flows.touch(hit.id, hit.dir, p.tcp_flags, now);
                    let to = hit.entry.reply.reversed();
                    emit(snap, frame, &p, &to, hit.entry.orig_hop)
                }
                _ => Verdict::Drop(DropReason::FlowExists),
            };
        }
        Err(r) => return Verdict::Drop(r),
    };
    flows.touch(id, Direction::Original, p.tcp_flags, now);
    stats.new_flows += 1;
    if masq {
        stats.snat_flows += 1;
    }
    let to = entry.reply.reversed();
    emit(snap, frame, &p, &to, entry.orig_hop)
}

/// Inserts `entry` choosing a free SNAT source port: start from a hash of
/// the original tuple and probe linearly through the range, like the
/// kernel's `nf_nat_l4proto_unique_tuple`; a port is free when no live flow
/// already owns the resulting reply tuple.
fn insert_with_snat_port(
    flows: &FlowTable,
    entry: &mut FlowEntry,
    masq: &MasqPolicy,
    now: u32,
) -> Result<crate::flow_table::FlowId, DropReason> {
    let (lo, hi) = masq.ports;
    let span = u32::from(hi.saturating_sub(lo)) + 1;
    let start = hash_key(&entry.original) % span;
    for i in 0..SNAT_PROBES.min(span) {
        let port = lo + ((start + i) % span) as u16;
        entry.reply.dport = port;
        match flows.insert(entry, now) {
            Ok(id) => return Ok(id),
            Err(InsertError::Exists) => {
                if flows.lookup(&entry.original, now).is_some() {
                    // Not the port: the original tuple itself exists
                    // (another worker won the race for this flow).
                    return Err(DropReason::FlowExists);
                }
                continue;
            }
            Err(InsertError::Full) => return Err(DropReason::FlowTableFull),
        }
    }
    Err(DropReason::SnatExhausted)
}

/// FNV-1a over the parts of a tuple that identify a client connection.
#[inline]
fn hash_key(k: &FlowKey) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in k.src.0.iter().chain(k.sport.to_be_bytes().iter()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[inline]
fn src_mac(frame: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(6..12) {
        m.copy_from_slice(s);
    }
    m
}

#[inline]
fn emit(snap: &Snapshot, frame: &mut [u8], p: &wire::Parsed, to: &FlowKey, hop: L2Hop) -> Verdict {
    let Some(port) = snap.ports.get(hop.port as usize) else {
        return Verdict::Drop(DropReason::BadEgress);
    };
    if nat::rewrite(frame, p, to).is_err() {
        return Verdict::Drop(DropReason::Rewrite);
    }
    nat::set_macs(frame, port.mac, hop.mac);
    Verdict::Tx(hop.port)
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
