//! The sans-I/O packet core: parse → flow lookup → schedule on miss →
//! rewrite → verdict.
//!
//! [`process`] takes one frame (in place), the published [`Snapshot`], the
//! shared [`FlowTable`] and [`AffinityTable`] and the time ([`Ctx`]), and
//! returns a [`Verdict`]. It makes no
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
//!
//! Direct routing (IPVS "gatewaying", [`ForwardMethod::Dr`]): the first
//! packet is scheduled the same way (source ranges, affinity, terminating
//! and removed endpoints, reject when empty), but the frame leaves with only
//! its MACs changed ([`dr::rewrite`]) and its TTL one less, and the backend answers the client
//! directly. The flow is still recorded, as IPVS keeps a connection entry
//! for DR, so that every packet of a connection reaches the same backend;
//! its TCP state advances on the client's packets alone. Its reply key is
//! the original reversed (VIP:port → client:port): the tuple of the
//! backend's direct replies, which never reach the AF_XDP sockets (the
//! steering program matches neither their source, the VIP, nor their
//! destination), and which no NAT flow can own (that would take a backend
//! whose address is the VIP). That equality is also how a DR flow is told
//! from a NAT flow ([`is_dr_flow`]) without a field in the flow record, and
//! it holds across reloads. The backend of a DR flow is identified by its
//! next hop (the MAC its packets go to) and the service port
//! ([`dr_flow_endpoint_removed`]).
//!
//! FULLNAT ([`ForwardMethod::FullNat`], [`fullnat`]): a NAT flow whose
//! client is always translated, to one of the service's local addresses
//! and a port of this worker's share ([`Ctx::share`]); everything after
//! the insert (both directions, ICMP errors, resets) is NAT's.
//!
//! IPIP ([`ForwardMethod::Tunnel`], [`ipip`]): scheduled and recorded as a
//! DR flow (its reply key is the original reversed, the backend answers
//! the client directly), but the client's packets leave encapsulated to
//! the backend's address, from the route's source towards it
//! ([`tunnel_ends`]), as [`Verdict::TxLen`] with the grown length. ICMP
//! errors about such a flow are forwarded as DR's (MAC only), not
//! tunnelled.
//!
//! A TCP segment without SYN that no flow owns is answered with a RST
//! (IPVS creates connections only on SYN), except for an `mh` service
//! forwarding by DR or IPIP, where it is scheduled and recorded like a SYN
//! ([`picks_up_mid_flow`]): the flows another host of a tier carried until
//! its loss keep their backend here (Katran's behaviour).
//!
//! Every method forwards as a router ([`ttl`]): a packet that arrives with
//! a TTL / hop limit of 0 or 1 is not sent on ([`Verdict::TtlExceeded`]:
//! the worker answers ICMP time exceeded), every other leaves with one
//! less (for IPIP, the inner header's; the outer one starts at 64).

use hashbrown::{HashMap, HashSet};

use crate::affinity::AffinityTable;
use crate::flow_table::{Direction, FlowEntry, FlowState, FlowTable, Hit, InsertError, KeyHash};
use crate::forward::{dr, fullnat, ipip, nat, ttl};
use crate::sched;
use crate::service::{ForwardMethod, MasqMode, Service, ServiceTable, VipKey, WhenEmpty};
use crate::snat::{self, Alloc, PortRanges, Share, SnatAddrs};
use crate::types::{proto, Addr, Cidr, FlowKey, L2Hop, Mac};
use crate::wire::{self, icmp_error, reply, tcp_flags, ParseError};

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
    /// The interface's MTU: the largest IP packet (VLAN tag and Ethernet
    /// header not counted, as Linux counts it) a frame sent on it may
    /// carry. A larger one gets [`Verdict::TooBig`].
    pub mtu: u16,
}

/// When a client's source address is rewritten (kube-proxy's
/// KUBE-MARK-MASQ for ClusterIP traffic). The default masquerades nobody,
/// over ports 61000-65535 ([`PortRanges::default`]) and the routes' sources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasqPolicy {
    /// Masquerade every client (kube-proxy `--masquerade-all`).
    pub all: bool,
    /// Clients inside these prefixes (the cluster CIDR) keep their address;
    /// all others are masqueraded. Empty with `all == false`: nobody is.
    pub cluster_cidrs: Vec<Cidr>,
    /// SNAT source ports. They must lie outside the kernel's
    /// `ip_local_port_range` so that the LB host's own connections never
    /// collide with masqueraded flows.
    pub ports: PortRanges,
    /// SNAT addresses (`--snat-address`); for a family with none, the
    /// route's preferred source towards the backend ([`NextHop::snat`]).
    pub addrs: SnatAddrs,
    /// Key of the hash that picks a flow's first SNAT probe ([`snat`]),
    /// random per process.
    pub seed: u64,
    /// The service ranges (`--service-cidr`): a packet steered here to an
    /// address inside one that no front end owns is a ClusterIP's port no
    /// Service has, and is rejected ([`DropReason::ClusterIpPort`]). Kept
    /// with the masquerade policy: both are the node's kube-proxy flags
    /// that every snapshot carries unchanged. Empty: no such rule.
    pub service_cidrs: Vec<Cidr>,
}

impl MasqPolicy {
    /// Whether `a` lies inside a service range (`--service-cidr`).
    #[inline]
    pub fn in_service_range(&self, a: &Addr) -> bool {
        !self.service_cidrs.is_empty() && self.service_cidrs.iter().any(|c| c.contains(a))
    }

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
    /// Backends (address, port, protocol) that configs removed and that are
    /// not back: TCP flows still pinned to one are reset at their next
    /// segment, other flows are scheduled anew. Usually empty. For
    /// direct-routing flows, which name no backend address, [`Snapshot::nexthops`]
    /// must still hold the removed backend's next hop (the control plane
    /// carries it over).
    pub removed: HashSet<(Addr, u16, u8)>,
    /// Next hops that moved while flows were pinned to them: old hop (as a
    /// flow record holds it) → the hop that replaced it, as when a pod
    /// restarts on the same address with a new MAC. Flow records keep the
    /// hop of their first packet; this map makes established flows follow
    /// the kernel's neighbour table. Usually empty (one length check per
    /// packet towards a backend); the control plane forgets an entry once
    /// the flows that could hold its old hop have timed out.
    pub moved: HashMap<L2Hop, L2Hop>,
}

impl Snapshot {
    /// The hop a flow pinned to `hop` uses now ([`Snapshot::moved`]).
    #[inline]
    pub fn current_hop(&self, hop: L2Hop) -> L2Hop {
        if self.moved.is_empty() {
            return hop;
        }
        self.moved.get(&hop).copied().unwrap_or(hop)
    }
}

/// Why a frame was dropped; indexes the drop counters.
///
/// A frame the parser refuses counts as [`DropReason::Malformed`] when its
/// structure is broken (truncated, not IP, a bad header length, an
/// unsupported protocol); the refusals that are a policy or a sign of an
/// attack have a reason of their own ([`DropReason::from`] a
/// [`ParseError`]). Either way the parse error is also counted by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DropReason {
    /// The frame did not parse (the parse error is counted separately).
    Malformed,
    /// Not TCP, UDP or SCTP, nor an ICMP error about one of them.
    UnsupportedProto,
    /// No flow and no service for the destination.
    NoService,
    /// A segment without SYN for which no flow exists (a RST is answered
    /// when possible; this counts the rest, e.g. stray RSTs), or an ICMP
    /// error about no known flow.
    NoFlow,
    /// The service has no backend that takes new flows and its policy says
    /// drop (`externalTrafficPolicy: Local` without a local endpoint), or
    /// no reject could be built.
    NoBackend,
    /// The client is outside the service's `loadBalancerSourceRanges`.
    SourceRange,
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
    /// The flow does not fit a flow-table record (its keys mix IPv4 and
    /// IPv6, or an index is beyond the record's limits: see
    /// `flow_table::layout`).
    FlowUnsupported,
    /// A fragment that [`crate::frag`] cannot follow: a first fragment of
    /// SCTP or ICMP, or a later fragment whose header does not parse
    /// (802.1Q-tagged, truncated).
    Fragment,
    /// The IPv4 header checksum is wrong or zero ([`ParseError::BadIpChecksum`]).
    BadIpChecksum,
    /// An IPv4 option has a broken length ([`ParseError::BadIpOptions`]).
    BadIpOptions,
    /// The IPv4 header carries a loose or strict source route
    /// ([`ParseError::IpSourceRoute`]).
    IpSourceRoute,
    /// An IPv6 Routing header with segments left
    /// ([`ParseError::Ipv6RoutingHeader`]).
    Ipv6RoutingHeader,
    /// A TCP flag combination that conntrack calls INVALID (SYN+FIN,
    /// SYN+RST, no flags, FIN without ACK, ...:
    /// [`wire::tcp::valid_flag_combination`]). Dropped before the flow
    /// lookup, so it neither creates nor advances a flow.
    BadTcpFlags,
    /// The frame carries an 802.1Q or 802.1ad tag. Sluice serves untagged
    /// links and would send the frame on with its tag; it drops it instead.
    VlanTagged,
    /// The packet is larger than the egress interface's MTU
    /// ([`Verdict::TooBig`]); counted whether or not an ICMP error answered
    /// it.
    TooBig,
    /// The packet's TTL or hop limit ran out here
    /// ([`Verdict::TtlExceeded`]); counted whether or not an ICMP error
    /// answered it.
    TtlExceeded,
    /// A new flow to an address inside a service range (`--service-cidr`)
    /// on a port no Service has: the steering program sends only
    /// ClusterIPs' here (it drops the range's other addresses itself).
    /// Answered with ICMP port unreachable, as kube-proxy's nftables
    /// `cluster-ips-check` rejects it (nft's bare `reject`, TCP included);
    /// counted whether or not an answer could be built.
    ClusterIpPort,
}

impl From<ParseError> for DropReason {
    /// The drop reason of a parse failure.
    fn from(e: ParseError) -> DropReason {
        match e {
            ParseError::Fragment => DropReason::Fragment,
            ParseError::BadIpChecksum => DropReason::BadIpChecksum,
            ParseError::BadIpOptions => DropReason::BadIpOptions,
            ParseError::IpSourceRoute => DropReason::IpSourceRoute,
            ParseError::Ipv6RoutingHeader => DropReason::Ipv6RoutingHeader,
            ParseError::Truncated
            | ParseError::NotIp
            | ParseError::BadIpHeader
            | ParseError::UnsupportedProto
            | ParseError::BadL4Header => DropReason::Malformed,
        }
    }
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 23;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::UnsupportedProto,
        DropReason::NoService,
        DropReason::NoFlow,
        DropReason::NoBackend,
        DropReason::SourceRange,
        DropReason::NoNextHop,
        DropReason::FlowTableFull,
        DropReason::SnatExhausted,
        DropReason::FlowExists,
        DropReason::Rewrite,
        DropReason::BadEgress,
        DropReason::FlowUnsupported,
        DropReason::Fragment,
        DropReason::BadIpChecksum,
        DropReason::BadIpOptions,
        DropReason::IpSourceRoute,
        DropReason::Ipv6RoutingHeader,
        DropReason::BadTcpFlags,
        DropReason::VlanTagged,
        DropReason::TooBig,
        DropReason::TtlExceeded,
        DropReason::ClusterIpPort,
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
            DropReason::SourceRange => "source_range",
            DropReason::NoNextHop => "no_nexthop",
            DropReason::FlowTableFull => "flow_table_full",
            DropReason::SnatExhausted => "snat_exhausted",
            DropReason::FlowExists => "flow_exists",
            DropReason::Rewrite => "rewrite",
            DropReason::BadEgress => "bad_egress",
            DropReason::FlowUnsupported => "flow_unsupported",
            DropReason::Fragment => "fragment",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::BadIpOptions => "bad_ip_options",
            DropReason::IpSourceRoute => "ip_source_route",
            DropReason::Ipv6RoutingHeader => "ipv6_routing_header",
            DropReason::BadTcpFlags => "bad_tcp_flags",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::TooBig => "too_big",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::ClusterIpPort => "cluster_ip_port",
        }
    }
}

/// What to do with a frame after [`process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) frame on this port.
    Tx(u8),
    /// The frame was rewritten into an answer to its sender (TCP RST or
    /// ICMP unreachable) of this many bytes: send it back out the port it
    /// came in on.
    Reply(usize),
    /// Send the frame, with this new length, on this port (a translated
    /// segment turned into a reset, or an encapsulated packet).
    TxLen(u8, usize),
    /// Drop it and count why.
    Drop(DropReason),
    /// The packet, left unchanged, does not fit the egress interface's MTU
    /// (this many bytes): a router drops it ([`DropReason::TooBig`]) and
    /// answers with ICMP fragmentation needed / packet too big when it may
    /// (`wire::reply::icmp_too_big`, rate-limited by the worker).
    TooBig(u16),
    /// The packet, left unchanged, arrived with a TTL / hop limit of 0 or
    /// 1 and may not be forwarded ([`crate::forward::ttl`]): a router drops it
    /// ([`DropReason::TtlExceeded`]) and answers with ICMP time exceeded
    /// when it may (`wire::reply::icmp_time_exceeded`, rate-limited by the
    /// worker with the too-big answers).
    TtlExceeded,
}

/// Per-worker counters, plain integers on the packet path; the worker
/// publishes them to shared atomics once per burst.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received.
    pub rx: u64,
    /// Frames sent (forwarded or answered).
    pub tx: u64,
    /// Flows created.
    pub new_flows: u64,
    /// Flows created with a masqueraded client.
    pub snat_flows: u64,
    /// Masqueraded flows that took the SNAT port of a closed flow.
    pub snat_port_reused: u64,
    /// Masqueraded flows that took the SNAT port of an embryonic flow,
    /// evicted for it.
    pub snat_embryonic_evicted: u64,
    /// New flows rejected (RST / ICMP unreachable) for lack of endpoints.
    pub rejected: u64,
    /// Stray TCP segments of unknown flows answered with a RST.
    pub resets: u64,
    /// Mid-flow TCP segments (no SYN) without a flow that were forwarded
    /// by the Maglev choice and got a flow ([`picks_up_mid_flow`]): the
    /// connections ECMP moved to this host from another of its tier.
    pub flows_picked_up: u64,
    /// New flows that followed a session-affinity entry.
    pub affinity_hits: u64,
    /// ICMP fragmentation needed / packet too big answers sent (the worker
    /// counts them; [`Verdict::TooBig`]).
    pub icmp_too_big_sent: u64,
    /// ICMP time exceeded answers sent (the worker counts them;
    /// [`Verdict::TtlExceeded`]).
    pub icmp_time_exceeded_sent: u64,
    /// Drops by [`DropReason`].
    pub drops: [u64; DropReason::COUNT],
    /// Parse failures by [`ParseError`].
    pub parse_errors: [u64; ParseError::COUNT],
    /// Packets of flows whose service or backend index no longer names
    /// their front end and backend in the table in service (renumbered by
    /// a reload): not counted per backend ([`crate::traffic`]).
    pub traffic_unattributed: u64,
    /// Fragment counters ([`crate::frag`]; the worker counts them).
    pub frag: crate::frag::FragStats,
}

impl Stats {
    /// Counts a verdict.
    #[inline]
    pub fn count(&mut self, v: Verdict) {
        match v {
            Verdict::Tx(_) | Verdict::Reply(_) | Verdict::TxLen(..) => self.tx += 1,
            Verdict::Drop(r) => self.drops[r.index()] += 1,
            Verdict::TooBig(_) => self.drops[DropReason::TooBig.index()] += 1,
            Verdict::TtlExceeded => self.drops[DropReason::TtlExceeded.index()] += 1,
        }
    }
}

/// What one call of [`process`] reads: the published snapshot, the shared
/// connection and affinity tables, and the time.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// The published tables.
    pub snap: &'a Snapshot,
    /// Connection tracking.
    pub flows: &'a FlowTable,
    /// Session affinity.
    pub affinity: &'a AffinityTable,
    /// Seconds on any monotonic clock (ageing compares differences only).
    pub now: u32,
    /// The part of the SNAT port space this worker hands out to FULLNAT
    /// flows ([`Share::WHOLE`] for a single worker or a test).
    pub share: Share,
}

/// Processes one frame received on port `ingress`: `buf` is the frame's
/// whole buffer and `len` the received length.
///
/// On [`Verdict::Tx`] the frame has been rewritten in place (addresses,
/// ports, checksums, MACs) and must be sent on the returned port; on
/// [`Verdict::Reply`] it has been turned into an answer of the returned
/// length for its sender. Counters other than the verdict's are updated
/// here; the caller counts the verdict with [`Stats::count`].
pub fn process(
    ctx: &Ctx<'_>,
    buf: &mut [u8],
    len: usize,
    ingress: u8,
    stats: &mut Stats,
) -> Verdict {
    let len = len.min(buf.len());
    let parsed = wire::parse(&buf[..len]);
    process_parsed(ctx, buf, len, parsed, ingress, stats)
}

/// Parses a frame and prefetches the flow-table lines its lookup will read:
/// the first pass of burst processing ([`crate::worker`]).
#[inline]
pub fn parse_and_prefetch(flows: &FlowTable, frame: &[u8]) -> Result<wire::Parsed, ParseError> {
    let p = wire::parse(frame)?;
    flows.prefetch(&p.key);
    Ok(p)
}

/// Parses a frame, hashes its flow key and prefetches the flow index's
/// home bucket, the first line the lookup will read: the first pass of burst processing
/// ([`crate::worker`]). The hash goes to [`FlowTable::prefetch_record`] in
/// the second pass and to [`process_hashed`] in the third.
#[inline]
pub fn parse_and_hash(
    flows: &FlowTable,
    frame: &[u8],
) -> (Result<wire::Parsed, ParseError>, Option<KeyHash>) {
    match wire::parse(frame) {
        Ok(p) => {
            let h = flows.hash(&p.key);
            flows.prefetch_hashed(&h);
            (Ok(p), Some(h))
        }
        Err(e) => (Err(e), None),
    }
}

/// [`process`] for a frame already parsed (by [`parse_and_prefetch`]).
pub fn process_parsed(
    ctx: &Ctx<'_>,
    buf: &mut [u8],
    len: usize,
    parsed: Result<wire::Parsed, ParseError>,
    ingress: u8,
    stats: &mut Stats,
) -> Verdict {
    process_hashed(ctx, buf, len, parsed, None, ingress, stats)
}

/// [`process_parsed`] with the flow key's hash from [`parse_and_hash`]
/// (`None`: hash it here).
pub fn process_hashed(
    ctx: &Ctx<'_>,
    buf: &mut [u8],
    len: usize,
    parsed: Result<wire::Parsed, ParseError>,
    hash: Option<&KeyHash>,
    ingress: u8,
    stats: &mut Stats,
) -> Verdict {
    stats.rx += 1;
    let len = len.min(buf.len());
    let p = match parsed {
        Ok(p) => p,
        Err(e) => {
            stats.parse_errors[e.index()] += 1;
            return Verdict::Drop(DropReason::from(e));
        }
    };
    if let Some(r) = refuse(&p) {
        return Verdict::Drop(r);
    }
    let key = p.key;
    let (snap, flows, now) = (ctx.snap, ctx.flows, ctx.now);
    if !matches!(key.proto, proto::TCP | proto::UDP | proto::SCTP) {
        if let Some(e) = icmp_error::parse_icmp_error(&buf[..len], &p) {
            return follow_icmp_error(ctx, &mut buf[..len], &p, &e);
        }
        return Verdict::Drop(DropReason::UnsupportedProto);
    }

    let hit = match hash {
        Some(h) => flows.lookup_hashed(h, now),
        None => flows.lookup(&key, now),
    };
    if let Some(hit) = hit {
        if !snap.removed.is_empty() && endpoint_removed(snap, &hit.entry, key.proto) {
            // The flow's endpoint was removed from the service (kube-proxy
            // flushes its conntrack entries). TCP: reset the client, at
            // once, whichever direction this segment goes. Other
            // protocols: forget the flow and schedule this packet anew,
            // so a UDP client is never black-holed.
            flows.remove(hit.id);
            if key.proto == proto::TCP {
                stats.resets += 1;
                return reset_client(snap, buf, len, &p, &hit);
            }
        } else {
            let st = flows.touch(hit.id, hit.dir, p.tcp_flags, now);
            count_transition(snap, &hit, st);
            count_traffic(
                snap,
                &hit.entry,
                hit.dir,
                len.saturating_sub(p.l3_offset),
                stats,
            );
            return forward_buf(snap, buf, len, &p, &hit.entry, hit.dir);
        }
    }
    // A new flow: it must be addressed to a service.
    let vip = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
    };
    let Some((svc_idx, svc)) = snap.services.lookup(&vip) else {
        return no_service(snap, buf, len, &p, stats);
    };
    let mid_flow = key.proto == proto::TCP
        && (p.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST)) != tcp_flags::SYN;
    if mid_flow && !picks_up_mid_flow(&svc.spec, p.tcp_flags) {
        // IPVS creates TCP connections only on SYN; a segment of a flow we
        // do not know (expired, flushed because its endpoint left, or from
        // before a restart) must not be scheduled onto a backend that never
        // saw its handshake. Answer it with a RST, as the host would, so the
        // client fails fast instead of retransmitting into a void (never a
        // RST for a RST: RFC 793). The exception, [`picks_up_mid_flow`],
        // goes on below like a SYN.
        if p.tcp_flags & tcp_flags::RST == 0 {
            if let Some(n) = reply::tcp_rst(buf, len, &p) {
                stats.resets += 1;
                return Verdict::Reply(n);
            }
        }
        return Verdict::Drop(DropReason::NoFlow);
    }
    if !svc.spec.source_ranges.is_empty()
        && !svc.spec.source_ranges.iter().any(|c| c.contains(&key.src))
    {
        return Verdict::Drop(DropReason::SourceRange);
    }
    // A pod reaching an external front end of a Local service is served by
    // the ClusterIP's endpoints, unmasqueraded (kube-proxy's short-circuit).
    let (svc_idx, svc, short) = match short_circuit(snap, &svc.spec, &key.src) {
        Some((i, s)) => (i, s, true),
        None => (svc_idx, svc, false),
    };
    let spec = &svc.spec;

    let Some(b_idx) = choose_backend(ctx, svc, &key, stats) else {
        return match spec.when_empty {
            WhenEmpty::Drop => Verdict::Drop(DropReason::NoBackend),
            WhenEmpty::Reject => match reject(buf, len, &p) {
                Some(n) => {
                    stats.rejected += 1;
                    Verdict::Reply(n)
                }
                None => Verdict::Drop(DropReason::NoBackend),
            },
        };
    };
    let backend = spec.backends[b_idx];
    let Some(nh) = snap.nexthops.get(&backend.addr) else {
        return Verdict::Drop(DropReason::NoNextHop);
    };
    let frame = &mut buf[..len];
    let direct = matches!(spec.forward, ForwardMethod::Dr | ForwardMethod::Tunnel);
    let mut entry = FlowEntry {
        original: key,
        reply: if direct {
            // The backend's own reply, VIP → client: a key no other flow
            // can own and no steered packet carries (module doc).
            key.reversed()
        } else {
            FlowKey {
                src: backend.addr,
                dst: key.src,
                sport: backend.port,
                dport: key.sport,
                proto: key.proto,
            }
        },
        orig_hop: nh.hop,
        reply_hop: L2Hop {
            port: ingress,
            mac: src_mac(frame),
        },
        service: svc_idx,
        // The backend's stable id, not its position: a later table that
        // drops an earlier backend keeps naming this one by it.
        backend: svc.backend_id(b_idx),
    };

    // DR never masquerades: the backend answers the client itself, from
    // the VIP, so there is nothing to translate back. FULLNAT always does.
    let full = spec.forward == ForwardMethod::FullNat;
    // A short-circuited pod keeps its address (even under
    // --masquerade-all, which kube-proxy applies to ClusterIP destinations
    // only), but for hairpin and for a pod on the backend's own segment,
    // whose replies would bypass the LB.
    let mode = if short { MasqMode::Never } else { spec.masq };
    let masq = full
        || !direct
            && (must_masquerade(snap, mode, &key.src, &backend.addr, ingress, nh.hop.port)
                || short && ingress == nh.hop.port);
    let inserted = if full {
        let space = snat::Space {
            addrs: fullnat::sources(spec, &snap.masq.addrs, &backend.addr, &nh.snat),
            ports: &snap.masq.ports,
            share: ctx.share,
            seed: snap.masq.seed,
        };
        allocate_counted(flows, &mut entry, &space, now, stats)
    } else if masq {
        insert_with_snat_port(flows, &mut entry, &snap.masq, nh.snat, now, stats)
    } else {
        flows.insert(&entry, now).map_err(|e| match e {
            InsertError::Full => DropReason::FlowTableFull,
            InsertError::Exists => DropReason::FlowExists,
            InsertError::Unsupported => DropReason::FlowUnsupported,
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
                    count_traffic(
                        snap,
                        &hit.entry,
                        hit.dir,
                        len.saturating_sub(p.l3_offset),
                        stats,
                    );
                    forward_buf(snap, buf, len, &p, &hit.entry, Direction::Original)
                }
                _ => Verdict::Drop(DropReason::FlowExists),
            };
        }
        Err(r) => return Verdict::Drop(r),
    };
    flows.touch(id, Direction::Original, p.tcp_flags, now);
    svc.conns.on_new(b_idx);
    svc.traffic.on_new(b_idx, len.saturating_sub(p.l3_offset));
    stats.new_flows += 1;
    if mid_flow {
        // Only [`picks_up_mid_flow`]'s services get here without a SYN.
        stats.flows_picked_up += 1;
    }
    if masq {
        stats.snat_flows += 1;
    }
    forward_buf(snap, buf, len, &p, &entry, Direction::Original)
}

/// The service that serves `client` instead of `spec` by kube-proxy's
/// short-circuit: `spec`'s [`ServiceSpec::short_circuit`] front end, when
/// the client is inside the cluster CIDR (a pod; no cluster CIDR, no pod)
/// and that front end is in the table.
///
/// [`ServiceSpec::short_circuit`]: crate::service::ServiceSpec::short_circuit
#[inline]
fn short_circuit<'s>(
    snap: &'s Snapshot,
    spec: &crate::service::ServiceSpec,
    client: &Addr,
) -> Option<(u32, &'s Service)> {
    let to = spec.short_circuit.as_ref()?;
    if !snap.masq.cluster_cidrs.iter().any(|c| c.contains(client)) {
        return None;
    }
    snap.services.lookup(to)
}

/// Whether `svc` is the service a flow addressed to `e.original`'s front
/// end was scheduled on: that front end itself, or the ClusterIP front end
/// it short-circuits pods to ([`short_circuit`]; one more table lookup, for
/// those flows only).
#[inline]
fn serves_front_end(snap: &Snapshot, svc: &Service, e: &FlowEntry) -> bool {
    let v = &svc.spec.vip;
    let o = &e.original;
    if (v.addr, v.port, v.proto) == (o.dst, o.dport, o.proto) {
        return true;
    }
    let front = VipKey {
        addr: o.dst,
        port: o.dport,
        proto: o.proto,
    };
    snap.services
        .lookup(&front)
        .is_some_and(|(_, f)| f.spec.short_circuit == Some(*v))
}

/// Whether a TCP segment without SYN that no flow owns is scheduled and
/// recorded as a new flow (Katran's behaviour, issue 14) rather than
/// answered with a RST: for a Maglev (`mh`) service forwarding by DR or
/// IPIP, whose choice is the same on every host with the same config
/// ([`crate::sched::maglev`]), and whose frames reach the backend with
/// the client's own addresses and ports. A flow that ECMP moves to this
/// host after another host's loss then reaches the backend that holds
/// its connection. Not for NAT or FULLNAT: the backend's socket is keyed
/// on the source the first host gave the flow (its SNAT or local address
/// and port, which this host does not own), so a segment translated here
/// reaches no connection; the backend would reset the client, as our
/// RST does now, after this host had spent a flow and a SNAT port on it.
/// Never for a RST (nothing to pick up).
#[inline]
fn picks_up_mid_flow(spec: &crate::service::ServiceSpec, tcp_flags: u8) -> bool {
    spec.sched == crate::service::SchedKind::Maglev
        && matches!(spec.forward, ForwardMethod::Dr | ForwardMethod::Tunnel)
        && tcp_flags & tcp_flags::RST == 0
}

/// Why a well-formed frame must not be forwarded at all, before any table
/// is read: a tagged frame (it would leave tagged on an untagged link) or a
/// TCP flag combination no stack sends (it must not create a flow, nor
/// reach a backend: kube-proxy drops conntrack INVALID in `KUBE-FORWARD`).
#[inline]
fn refuse(p: &wire::Parsed) -> Option<DropReason> {
    if p.vlan.is_some() {
        return Some(DropReason::VlanTagged);
    }
    if p.key.proto == proto::TCP && !wire::tcp::valid_flag_combination(p.tcp_flags) {
        return Some(DropReason::BadTcpFlags);
    }
    None
}

/// Counts a TCP flow entering or leaving ESTABLISHED for its backend's
/// connection counts ([`crate::sched::conns`]): the state the lookup read
/// against the state `touch` left. One compare per packet; a write only
/// at a transition, to the worker's own delta slot.
#[inline]
fn count_transition(snap: &Snapshot, hit: &Hit, now: FlowState) {
    let was = hit.state == FlowState::Established;
    if was != (now == FlowState::Established) && hit.entry.original.proto == proto::TCP {
        if let Some(svc) = snap.services.get(hit.entry.service) {
            if let Some(b) = svc.backend_position(hit.entry.backend) {
                svc.conns.on_established(b, !was);
            }
        }
    }
}

/// Counts a packet of a known flow for its backend ([`crate::traffic`]),
/// in the table in service. The flow names its service by slot and its
/// backend by id, both stable across reloads
/// ([`crate::service::ServiceTable::build_from`]); the check that they
/// still name its front end (and, for NAT, its backend's address and
/// port) stays, for the numbers a full number space reuses early and for
/// flows that outlive their backend's removal. Reads only the service the
/// flow names, which its packets keep in cache.
#[inline]
fn count_traffic(snap: &Snapshot, e: &FlowEntry, dir: Direction, bytes: usize, stats: &mut Stats) {
    let ok = snap.services.get(e.service).and_then(|svc| {
        let b = svc.backend_position(e.backend)?;
        let be = &svc.spec.backends[b];
        ((is_dr_flow(e) || (be.addr == e.reply.src && be.port == e.reply.sport))
            && serves_front_end(snap, svc, e))
        .then_some((svc, b))
    });
    match ok {
        Some((svc, b)) => svc.traffic.on_packet(b, dir == Direction::Original, bytes),
        None => stats.traffic_unattributed += 1,
    }
}

/// Whether a flow forwards by direct routing: its reply key is its
/// original key reversed (the backend answers from the VIP itself). A NAT
/// flow's reply key comes from the backend's address, which is never the
/// VIP of the same service port.
#[inline]
pub fn is_dr_flow(e: &FlowEntry) -> bool {
    e.reply == e.original.reversed()
}

/// Whether the endpoint a flow is pinned to was removed
/// ([`Snapshot::removed`]).
#[inline]
pub fn endpoint_removed(snap: &Snapshot, e: &FlowEntry, proto: u8) -> bool {
    if is_dr_flow(e) {
        dr_flow_endpoint_removed(snap, e, proto)
    } else {
        snap.removed.contains(&(e.reply.src, e.reply.sport, proto))
    }
}

/// Whether a direct-routing flow's backend was removed. The flow record
/// names no backend address (both its keys are client ↔ VIP), so the
/// backend is recognised by what DR forwards on: its next hop (egress port
/// and MAC) and the service port, which in DR is also the backend port.
/// Linear in the number of removed endpoints, which is small and usually
/// zero (the caller checks that first). Two addresses of one host share a
/// MAC: removing either resets the flows to that host, which is where the
/// packets of both go.
pub fn dr_flow_endpoint_removed(snap: &Snapshot, e: &FlowEntry, proto: u8) -> bool {
    snap.removed.iter().any(|&(addr, port, pr)| {
        pr == proto
            && port == e.original.dport
            && snap
                .nexthops
                .get(&addr)
                .is_some_and(|nh| nh.hop == snap.current_hop(e.orig_hop))
    })
}

/// Sends a packet of a known flow on, by the flow's method: NAT rewrites
/// it into the reverse of the other direction's tuple; DR changes only the
/// MACs. A DR reply (VIP → client) is not steered to us; if one comes
/// anyway (say an endpoint of another service is also listed with the
/// VIP's address), it goes to the client unchanged, as a router would send
/// it.
#[inline]
fn forward(
    snap: &Snapshot,
    frame: &mut [u8],
    p: &wire::Parsed,
    e: &FlowEntry,
    dir: Direction,
) -> Verdict {
    let hop = match dir {
        Direction::Original => snap.current_hop(e.orig_hop),
        Direction::Reply => e.reply_hop,
    };
    if is_dr_flow(e) {
        return emit_dr(snap, frame, p, hop);
    }
    let to = match dir {
        Direction::Original => e.reply.reversed(),
        Direction::Reply => e.original.reversed(),
    };
    emit(snap, frame, p, &to, hop)
}

/// Where the packets of an IPIP flow are tunnelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TunnelEnds {
    /// Not a flow of an IPIP service.
    NotTunnel,
    /// To this real server, from this source (the route's).
    To { dst: Addr, src: Addr },
    /// An IPIP flow whose backend is no longer in the service under its
    /// id with the same next hop (it left, or its id was reused): dropped
    /// rather than sent unencapsulated.
    Lost,
}

/// The outer addresses of a flow of an IPIP service: a DR-shaped flow
/// whose service (by index, still with the flow's VIP) tunnels; the real
/// server is the flow's backend, checked against the next hop recorded in
/// the flow.
#[inline]
fn tunnel_ends(snap: &Snapshot, e: &FlowEntry) -> TunnelEnds {
    if !is_dr_flow(e) {
        return TunnelEnds::NotTunnel;
    }
    let Some(svc) = snap.services.get(e.service) else {
        return TunnelEnds::NotTunnel;
    };
    if svc.spec.forward != ForwardMethod::Tunnel || !serves_front_end(snap, svc, e) {
        return TunnelEnds::NotTunnel;
    }
    match svc
        .backend_position(e.backend)
        .map(|p| &svc.spec.backends[p])
        .and_then(|b| Some((b.addr, snap.nexthops.get(&b.addr)?)))
    {
        // The flow's hop as the kernel's neighbour events have moved it.
        Some((dst, nh)) if nh.hop == snap.current_hop(e.orig_hop) => {
            TunnelEnds::To { dst, src: nh.snat }
        }
        _ => TunnelEnds::Lost,
    }
}

/// [`forward`] over the whole buffer (`len` bytes received): an IPIP flow's
/// client packets grow by the outer header.
#[inline]
fn forward_buf(
    snap: &Snapshot,
    buf: &mut [u8],
    len: usize,
    p: &wire::Parsed,
    e: &FlowEntry,
    dir: Direction,
) -> Verdict {
    if dir == Direction::Original {
        match tunnel_ends(snap, e) {
            TunnelEnds::NotTunnel => {}
            TunnelEnds::To { dst, src } => {
                return emit_tunnel(snap, buf, len, p, snap.current_hop(e.orig_hop), dst, src)
            }
            TunnelEnds::Lost => return Verdict::Drop(DropReason::NoNextHop),
        }
    }
    forward(snap, &mut buf[..len], p, e, dir)
}

/// Sends the frame encapsulated to `dst` from `src` ([`ipip::encapsulate`]);
/// too big for the egress MTU once encapsulated: [`Verdict::TooBig`] with
/// the MTU left for the inner packet.
fn emit_tunnel(
    snap: &Snapshot,
    buf: &mut [u8],
    len: usize,
    p: &wire::Parsed,
    hop: L2Hop,
    dst: Addr,
    src: Addr,
) -> Verdict {
    let Some(port) = snap.ports.get(hop.port as usize) else {
        return Verdict::Drop(DropReason::BadEgress);
    };
    if ttl::expired(buf, p.l3_offset, p.ip_version) {
        return Verdict::TtlExceeded;
    }
    if let Some(mtu) = ipip::too_big(p.ip_version, len.saturating_sub(p.l3_offset), port.mtu) {
        return Verdict::TooBig(mtu);
    }
    ttl::decrement(buf, p.l3_offset, p.ip_version);
    match ipip::encapsulate(buf, len, src, dst, port.mac, hop.mac) {
        Ok(n) => Verdict::TxLen(hop.port, n),
        Err(_) => Verdict::Drop(DropReason::Rewrite),
    }
}

/// Forwards an ICMP error about a packet of a known flow to the other end
/// of that flow, translated as the kernel's NAT does
/// (`nf_nat_icmp_reply_translation`, IPVS `ip_vs_nat_icmp`): the quoted
/// packet becomes the packet as that end sent it, and the error appears to
/// come from the address that end talked to (the VIP for a client, the
/// address the backend replied to for a backend). Port unreachable from a
/// backend's host thus reaches the client as from the VIP, and a "packet
/// too big" keeps path MTU discovery working through the LB.
fn follow_icmp_error(
    ctx: &Ctx<'_>,
    frame: &mut [u8],
    p: &wire::Parsed,
    e: &icmp_error::IcmpError,
) -> Verdict {
    // The quoted packet went out from us; its reverse is what we receive.
    let Some(hit) = ctx.flows.lookup(&e.inner.reversed(), ctx.now) else {
        return Verdict::Drop(DropReason::NoFlow);
    };
    if is_dr_flow(&hit.entry) {
        // Direct routing: the quoted packet went between the client and the
        // VIP, which the backend owns, so it is already what either end
        // sent; IPVS forwards such errors to the real server untouched but
        // for the MACs (`ip_vs_in_icmp` through the DR transmitter).
        let hop = match hit.dir {
            Direction::Reply => hit.entry.reply_hop,
            Direction::Original => ctx.snap.current_hop(hit.entry.orig_hop),
        };
        return emit_dr(ctx.snap, frame, p, hop);
    }
    let (inner_to, hop) = match hit.dir {
        // About a packet we sent towards the backend: goes to the client.
        Direction::Reply => (hit.entry.original, hit.entry.reply_hop),
        // About a packet we sent towards the client: goes to the backend.
        Direction::Original => (hit.entry.reply, ctx.snap.current_hop(hit.entry.orig_hop)),
    };
    let Some(port) = ctx.snap.ports.get(hop.port as usize) else {
        return Verdict::Drop(DropReason::BadEgress);
    };
    if ttl::expired(frame, p.l3_offset, p.ip_version) {
        return Verdict::TtlExceeded;
    }
    if too_big(frame, p, port) {
        return Verdict::TooBig(port.mtu);
    }
    ttl::decrement(frame, p.l3_offset, p.ip_version);
    if icmp_error::translate_icmp_error(frame, p, e, inner_to.dst, inner_to.src, &inner_to).is_err()
    {
        return Verdict::Drop(DropReason::Rewrite);
    }
    nat::set_macs(frame, port.mac, hop.mac);
    Verdict::Tx(hop.port)
}

/// Resets the client of a TCP flow whose endpoint was removed: a segment
/// from the client is answered with a RST; a segment from the endpoint is
/// translated towards the client as usual and cut down to a RST carrying
/// its own sequence number, which the client accepts.
fn reset_client(
    snap: &Snapshot,
    buf: &mut [u8],
    len: usize,
    p: &wire::Parsed,
    hit: &Hit,
) -> Verdict {
    match hit.dir {
        Direction::Original => match reply::tcp_rst(buf, len, p) {
            Some(n) => Verdict::Reply(n),
            None => Verdict::Drop(DropReason::NoFlow),
        },
        Direction::Reply => match forward(snap, &mut buf[..len], p, &hit.entry, Direction::Reply) {
            Verdict::Tx(port) => match reply::tcp_rst_same_direction(buf, len, p) {
                Some(n) => Verdict::TxLen(port, n),
                None => Verdict::Drop(DropReason::NoFlow),
            },
            other => other,
        },
    }
}

/// The backend for a new flow: the client's affinity entry when the service
/// has `sessionAffinity: ClientIP` and the remembered backend still takes
/// new flows, else the scheduler's choice (then remembered).
#[inline]
fn choose_backend(ctx: &Ctx<'_>, svc: &Service, key: &FlowKey, stats: &mut Stats) -> Option<usize> {
    let Some(timeout) = svc.spec.affinity_timeout else {
        return sched::pick(svc, key);
    };
    // The persistence netmask: a client subnet shares one entry.
    let client = crate::affinity::masked_client(&key.src, svc.spec.affinity_prefix);
    if let Some(h) = ctx
        .affinity
        .lookup(&client, svc.affinity_id, timeout, ctx.now)
    {
        if let Some(i) = svc.backend_hashes.iter().position(|&x| x == h) {
            if svc.spec.backends[i].weight > 0 {
                stats.affinity_hits += 1;
                return Some(i);
            }
        }
    }
    let i = sched::pick(svc, key)?;
    ctx.affinity
        .record(&client, svc.affinity_id, svc.backend_hashes[i], ctx.now);
    Some(i)
}

/// Whether the client's address is rewritten to the LB's for this flow.
///
/// Besides the service's mode, two cases always masquerade, or the reply
/// would bypass the LB: hairpin (the client is the chosen backend, as
/// kube-proxy's KUBE-SEP masquerade rule for the endpoint's own address)
/// and, for cluster traffic, a client that arrived on the interface the
/// backend is reached through (it shares the backend's segment and would
/// get the backend's answer directly).
#[inline]
fn must_masquerade(
    snap: &Snapshot,
    mode: MasqMode,
    client: &Addr,
    backend: &Addr,
    ingress: u8,
    egress: u8,
) -> bool {
    if client == backend {
        return true;
    }
    match mode {
        MasqMode::Always => true,
        MasqMode::Never => false,
        MasqMode::OffCluster => ingress == egress || snap.masq.masquerades(client),
    }
}

/// A new flow that no front end owns. Inside a service range it is a
/// ClusterIP's port no Service has (the steering program drops the
/// range's unowned addresses and sends ClusterIPs' on; module doc of
/// `crate::steer`): rejected with ICMP port unreachable for every
/// protocol, as nft's `reject` in kube-proxy's `cluster-ips-check` chain.
/// Otherwise (a stray from an endpoint, a front end gone between the
/// steering maps and this snapshot) it is dropped.
fn no_service(
    snap: &Snapshot,
    buf: &mut [u8],
    len: usize,
    p: &wire::Parsed,
    stats: &mut Stats,
) -> Verdict {
    if !snap.masq.in_service_range(&p.key.dst) {
        return Verdict::Drop(DropReason::NoService);
    }
    match reply::icmp_port_unreachable(buf, len, p) {
        Some(n) => {
            stats.drops[DropReason::ClusterIpPort.index()] += 1;
            Verdict::Reply(n)
        }
        None => Verdict::Drop(DropReason::ClusterIpPort),
    }
}

/// Turns the frame into the answer a host gives when nothing listens: a
/// RST for TCP, ICMP port unreachable for UDP (kube-proxy's REJECT).
fn reject(buf: &mut [u8], len: usize, p: &wire::Parsed) -> Option<usize> {
    match p.key.proto {
        proto::TCP => reply::tcp_rst(buf, len, p),
        proto::UDP => reply::icmp_port_unreachable(buf, len, p),
        _ => None,
    }
}

/// Inserts a masqueraded `entry` with a SNAT address and port
/// ([`snat::allocate`]): the configured addresses of the backend's family,
/// else `route_src`, and the policy's ports.
fn insert_with_snat_port(
    flows: &FlowTable,
    entry: &mut FlowEntry,
    masq: &MasqPolicy,
    route_src: Addr,
    now: u32,
    stats: &mut Stats,
) -> Result<crate::flow_table::FlowId, DropReason> {
    let mut addrs = masq.addrs.for_backend(&entry.reply.src);
    if addrs.is_empty() {
        addrs = std::slice::from_ref(&route_src);
    }
    let space = snat::Space {
        addrs,
        ports: &masq.ports,
        share: Share::WHOLE,
        seed: masq.seed,
    };
    allocate_counted(flows, entry, &space, now, stats)
}

/// [`snat::allocate`], counting how the port was found.
fn allocate_counted(
    flows: &FlowTable,
    entry: &mut FlowEntry,
    space: &snat::Space<'_>,
    now: u32,
    stats: &mut Stats,
) -> Result<crate::flow_table::FlowId, DropReason> {
    let (id, how) = snat::allocate(flows, entry, space, now)?;
    match how {
        Alloc::Free => {}
        Alloc::Reused => stats.snat_port_reused += 1,
        Alloc::Evicted => stats.snat_embryonic_evicted += 1,
    }
    Ok(id)
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
    if ttl::expired(frame, p.l3_offset, p.ip_version) {
        return Verdict::TtlExceeded;
    }
    if too_big(frame, p, port) {
        return Verdict::TooBig(port.mtu);
    }
    ttl::decrement(frame, p.l3_offset, p.ip_version);
    if nat::rewrite(frame, p, to).is_err() {
        return Verdict::Drop(DropReason::Rewrite);
    }
    nat::set_macs(frame, port.mac, hop.mac);
    Verdict::Tx(hop.port)
}

/// Sends the frame unchanged but for its MACs (direct routing).
#[inline]
fn emit_dr(snap: &Snapshot, frame: &mut [u8], p: &wire::Parsed, hop: L2Hop) -> Verdict {
    let Some(port) = snap.ports.get(hop.port as usize) else {
        return Verdict::Drop(DropReason::BadEgress);
    };
    if ttl::expired(frame, p.l3_offset, p.ip_version) {
        return Verdict::TtlExceeded;
    }
    if too_big(frame, p, port) {
        return Verdict::TooBig(port.mtu);
    }
    ttl::decrement(frame, p.l3_offset, p.ip_version);
    if dr::rewrite(frame, port.mac, hop.mac).is_err() {
        return Verdict::Drop(DropReason::Rewrite);
    }
    Verdict::Tx(hop.port)
}

/// Whether the IP packet in `frame` (everything after the Ethernet header
/// and any VLAN tag, as the link carries it) exceeds `port`'s MTU. Neither
/// rewrite changes the length, so the check reads the frame as received.
#[inline]
fn too_big(frame: &[u8], p: &wire::Parsed, port: &PortInfo) -> bool {
    frame.len().saturating_sub(p.l3_offset) > usize::from(port.mtu)
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "pipeline_dr_tests.rs"]
mod dr_tests;

#[cfg(test)]
#[path = "pipeline_hostile_tests.rs"]
mod hostile_tests;

#[cfg(test)]
#[path = "pipeline_fullnat_tests.rs"]
mod fullnat_tests;

#[cfg(test)]
#[path = "pipeline_ipip_tests.rs"]
mod ipip_tests;

#[cfg(test)]
#[path = "pipeline_policy_tests.rs"]
mod policy_tests;

#[cfg(test)]
#[path = "pipeline_pickup_tests.rs"]
mod pickup_tests;

#[cfg(test)]
#[path = "pipeline_range_tests.rs"]
mod range_tests;
