//! XDP steering: which frames go to the AF_XDP sockets.
//!
//! Sluice shares its interfaces with the kernel: ARP, ping, neighbour
//! discovery, SSH and routing
//! protocols must keep reaching the host stack while load-balancer traffic
//! bypasses it. A small XDP program (`bpf/steer.c`, compiled by `build.rs`
//! and embedded here) makes that choice per frame and redirects the chosen
//! ones into the XSKMAP slot of the receive queue they arrived on, which is
//! where each worker's AF_XDP socket is registered
//! ([`Steering::register_socket`]). Everything else gets `XDP_PASS`.
//!
//! A frame is load-balancer traffic when it is TCP, UDP or SCTP over IPv4 or
//! IPv6 and
//! - its (destination address, destination port, protocol) is a virtual
//!   service ([`Steering::set_vips`]), or
//! - its (source address, source port, protocol) is an endpoint
//!   ([`Steering::set_backends`]) and its destination is not one of the
//!   host's own addresses ([`Steering::set_local_addrs`]): a real server's
//!   reply to a client whose address was kept, or
//! - its destination address is a SNAT address and its destination port lies
//!   in the SNAT port range ([`Steering::set_snat`]): a reply to a
//!   masqueraded flow.
//!
//! Only flows Sluice owns are taken: an endpoint's reply to a connection
//! the host opened itself (a health check, an operator's `curl` from the LB
//! host to a backend) goes to a host address with a port from the kernel's
//! ephemeral range, which is outside the SNAT range, so it matches none of
//! the rules and reaches the kernel's socket. A flow of Sluice's gets replies
//! at a host address only when it is masqueraded, and then at a SNAT
//! address and port (third rule).
//!
//! An ICMP/ICMPv6 error (IPv4 destination unreachable, time exceeded,
//! parameter problem; IPv6 destination unreachable, packet too big, time
//! exceeded, parameter problem) is steered too when the packet it quotes
//! belongs to a load-balanced flow, so that the error can follow the flow
//! ([`crate::wire::icmp_error`]). The quoted packet was sent by the load
//! balancer or a client, so the same rules are applied in the reverse
//! sense: the quoted packet, reversed, would be steered. Every other ICMP
//! message (echo, neighbour discovery, errors about the host's own traffic)
//! and ICMP in an IPv4 fragment passes. The quote must hold the inner IP
//! header (IPv4 with options, first fragment; IPv6 with at most four
//! extension headers before the L4 header) and eight bytes of the L4 header.
//!
//! # One case table for the program and the parser
//!
//! The program judges a frame by its addresses and ports and nothing else;
//! the workers' parser ([`crate::wire::parse`]) and the pipeline decide
//! whether a steered frame is fit to forward, and drop and count what is
//! not ([`crate::pipeline::DropReason`], printed as `counter drop_NAME N`).
//! For that split to hold, both must find the L4 header in the same place,
//! and every frame the program redirects must be one that the pipeline
//! either handles or drops under a reason of its own, never one it
//! misreads or loses without a count. Each row below has a parser or
//! pipeline fixture and a veth test (`tests/tests/steering.rs`,
//! `tests/tests/malformed.rs`):
//!
//! | frame | XDP program | parser / pipeline |
//! |---|---|---|
//! | untagged IPv4/IPv6, TCP/UDP/SCTP, matching a rule | redirect | forwarded |
//! | one 802.1Q or 802.1ad tag, inner packet matching | redirect | dropped: `vlan_tagged` (Sluice serves untagged links; the frame would leave tagged) |
//! | two tags (QinQ) | pass (not IP after one tag) | `not_ip` (never steered) |
//! | IPv6 with ≤ 8 Hop-by-Hop / Routing / Destination Options headers | skipped, then the rules | skipped alike, then forwarded |
//! | more than 8 of them | pass | `bad_ip_header` (never steered) |
//! | IPv6 Routing header with segments left ≠ 0, matching | redirect | dropped: `ipv6_routing_header` (RFC 8200 § 4.4: this node is not the final destination) |
//! | IPv6 Hop-by-Hop header after another extension header | redirect | dropped: `malformed` (`parse_bad_ip_header`, § 4.1) |
//! | first fragment (IPv4 offset 0 with MF; IPv6 Fragment header offset 0, M set, TCP/UDP right after it) of TCP/UDP, matching by its ports | redirect, its datagram remembered in `frags`, counted as `xdp_fragments_redirected_IF` | forwarded by its 5-tuple, its rewrite remembered ([`crate::frag`]) |
//! | later fragment of a datagram whose first was redirected | redirect (`xdp_fragments_redirected_IF`) | same L3 rewrite as its first; held if it overtook it (`frag_held`) |
//! | any other fragment: not matching, a later one whose first went to the kernel or has not come, ICMP or SCTP | pass, counted as `xdp_fragments_passed_IF` | `fragment` (never steered) |
//! | IPv6 atomic fragment (offset 0, M clear), matching | redirect | a whole packet: forwarded |
//! | IPv4 header checksum wrong or zero, matching | redirect | dropped: `bad_ip_checksum` |
//! | IPv4 LSRR / SSRR option, matching | redirect | dropped: `ip_source_route` |
//! | IPv4 option with a broken length, matching | redirect | dropped: `bad_ip_options` |
//! | TCP SYN+FIN, SYN+RST, no flags, FIN without ACK | redirect | dropped: `bad_tcp_flags`, before the flow lookup (no flow is created) |
//! | endpoint → a host address, port outside the SNAT range | pass (the host's own connection) | — |
//! | unicast to another MAC than the interface's, any content | pass, counted as `xdp_other_host_IF` (the kernel drops it: PACKET_OTHERHOST) | — |
//! | broadcast or multicast destination MAC, any content | pass (ARP, ND; no flow is addressed to a group MAC) | — |
//!
//! The fragments of one datagram must not be split between Sluice and the
//! kernel, and only the first carries ports: so the first decides, by the
//! same rules as a whole packet, and the program remembers the datagram
//! (source, destination, IP identification, protocol) in an LRU map for the
//! later ones. The kernel fragments in order and one datagram's fragments
//! reach one queue, so the first is judged first; a later fragment that
//! overtakes it passes to the kernel (the datagram is then lost, as it
//! would be through any router that loses a fragment). A fragmented
//! datagram of the host's own (a health check's reply from an endpoint)
//! has a first fragment that matches no rule, so all of it reaches the
//! kernel, which reassembles it.
//!
//! Direct-routing services need nothing more: the client's packets match
//! their VIP, and the backends' direct replies (from VIP:port to a client)
//! match no set, since only NAT endpoints are steered
//! (`control/src/run.rs`), so they pass to the kernel, which routes them
//! when the LB host is also the backends' gateway (`tests/tests/dr.rs`
//! checks that none is redirected).
//!
//! A frame for a queue without a registered socket passes too
//! (`bpf_redirect_map` falls back to `XDP_PASS`), so nothing is lost while
//! the workers start.
//!
//! We load the program with aya rather than libxdp: the sockets are created
//! with libxdp's program loading inhibited, the program is attached through a
//! `bpf_link` (kernel ≥ 5.9) that is owned by [`Steering`] and goes away with
//! it, and no bpffs mount is needed because nothing is pinned.
//!
//! # Map layouts (shared with `bpf/steer.c`)
//!
//! `vips` and `backends` keys are 20 bytes: the address as [`Addr`] (16
//! bytes, IPv4-mapped), the port in network byte order (as on the wire), the
//! protocol number, and one zero byte. `snat_addrs` and `local_addrs` keys
//! are the 16 address bytes. `snat_range[i]` (up to
//! [`crate::snat::MAX_RANGES`] entries) is `[lo, hi]` as two `u16` in host
//! byte order; an entry with `hi == 0` is unused. `stats` is a per-CPU
//! array of `u64` counters: `[0]` redirected, `[1]` passed, `[2]` ICMP
//! errors redirected (also counted in `[0]`), `[3]` fragments passed (also
//! counted in `[1]`), `[4]` fragments redirected (also counted in `[0]`).
//! `frags` (an LRU hash of [`MAX_FRAGS`] datagrams) is the program's own.
//! `[6]` counts frames dropped for their destination in a service range
//! (below). `service_ranges` is the LPM trie of [`ranges`].
//!
//! # Service ranges (`--service-cidr`)
//!
//! With [`LoadOpts::service_ranges`], a frame that matched no rule above
//! (nor the ICMP-error rules) is looked up in the `service_ranges` trie by
//! its destination: inside a range and not a ClusterIP, it is dropped here
//! and counted per interface (`[6]`, `xdp_service_cidr_dropped_IF`); a
//! ClusterIP (on a port no Service has, or the exact lookup would have
//! matched) is redirected to the workers, which answer ICMP port
//! unreachable (`crate::pipeline`, `drop_cluster_ip_port`). kube-proxy's
//! nftables `cluster-ips-check` chain, both rules ([`ranges`]).
//!
//! Why drop in XDP but reject in the workers: a drop needs nothing but the
//! verdict, and a scan or flood of a /12 of unallocated addresses then costs
//! no copy into user space and no worker time — the cheapest place; a
//! reject needs an answer built (quote, checksums, the family's ICMP, the
//! MACs back), which the workers already build for services without
//! endpoints (`wire::reply`), tested, rather than a second copy of it in
//! BPF. Cost for every other frame: the one trie lookup after the exact
//! ones missed, and none when the flag is unset (the loader leaves the
//! program's read-only `service_ranges_on` at 0 and the verifier removes
//! the block). The trie is filled before the program attaches and kept in
//! step with the snapshot by the control plane (`control/src/service_cidr.rs`).
//! Only whole TCP, UDP and SCTP packets to a ClusterIP are answered; other
//! protocols and first fragments inside a range are dropped; later
//! fragments pass as before (their first was dropped, so the datagram never
//! reassembles).

use std::collections::HashSet;
use std::hash::Hash;
use std::io;
use std::os::fd::RawFd;

pub mod ranges;

use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::{ProgramError, Xdp, XdpFlags};
use aya::{include_bytes_aligned, Ebpf, EbpfLoader, Pod};

use crate::fastpath::{FastMap, FastStats};
use crate::service::VipKey;
use crate::snat::PortRanges;
use crate::types::Addr;

/// The compiled steering program.
static STEER_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer.o"));

/// Name of the XDP function in `bpf/steer.c`.
const PROG: &str = "sluice_steer";

/// Capacity of the `xsks` map (receive queues that can hold a socket).
pub const MAX_QUEUES: u32 = 256;
/// Capacity of the `vips` map.
pub const MAX_VIPS: usize = 262_144;
/// Capacity of the `backends` map.
pub const MAX_BACKENDS: usize = 65536;
/// Capacity of the `snat_addrs` map.
pub const MAX_SNAT_ADDRS: usize = 256;
/// Capacity of the `local_addrs` map.
pub const MAX_LOCAL_ADDRS: usize = 4096;

/// Length of a `vips` / `backends` key.
const L4_KEY_LEN: usize = 20;
/// A `vips` / `backends` key as the BPF program sees it.
type L4Key = [u8; L4_KEY_LEN];

/// Index of the redirected counter in `stats`.
const STAT_REDIRECTED: u32 = 0;
/// Index of the passed counter in `stats`.
const STAT_PASSED: u32 = 1;
/// Index of the ICMP-errors-redirected counter in `stats`.
const STAT_ICMP_REDIRECTED: u32 = 2;
/// Index of the fragments-passed counter in `stats`.
const STAT_FRAGMENT_PASSED: u32 = 3;
/// Index of the fragments-redirected counter in `stats`.
const STAT_FRAGMENT_REDIRECTED: u32 = 4;
/// Index of the other-host counter in `stats` (unicast for another MAC).
const STAT_OTHER_HOST: u32 = 5;
/// Index of the service-range drop counter in `stats`.
const STAT_SERVICE_RANGE_DROPPED: u32 = 6;
/// Capacity of the `frags` map (datagrams whose later fragments follow
/// their redirected first).
pub const MAX_FRAGS: usize = 16384;

/// How the XDP program is attached to the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`): fastest; needs driver support
    /// (veth has it).
    Native,
    /// In the generic network stack (`XDP_FLAGS_SKB_MODE`): works on every
    /// interface, after an skb is allocated.
    Generic,
    /// Native if the driver supports it, else generic. [`Steering::mode`]
    /// reports which one was used.
    Auto,
}

/// Error loading, attaching or updating the steering program.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// The kernel refused a BPF operation with `EPERM`.
    #[error("{ifname}: {op} was refused (EPERM): needs root / CAP_NET_ADMIN + CAP_BPF")]
    PermissionDenied {
        /// The interface.
        ifname: String,
        /// What was attempted.
        op: &'static str,
    },
    /// The interface does not exist.
    #[error("{ifname}: no such interface")]
    NoSuchInterface {
        /// The interface.
        ifname: String,
    },
    /// Another XDP program is already attached to the interface.
    #[error("{ifname}: another XDP program is already attached (detach it: ip link set dev {ifname} xdp off)")]
    Busy {
        /// The interface.
        ifname: String,
    },
    /// Loading the object or the program (verifier) failed.
    #[error("{ifname}: cannot load the XDP steering program: {source}")]
    Load {
        /// The interface.
        ifname: String,
        /// The cause (for a verifier rejection, with the verifier log).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Attaching the program failed.
    #[error("{ifname}: cannot attach the XDP steering program in {mode:?} mode: {source}")]
    Attach {
        /// The interface.
        ifname: String,
        /// The mode that was tried last.
        mode: AttachMode,
        /// The cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map operation failed.
    #[error("{ifname}: map `{map}`: {op} failed: {source}")]
    Map {
        /// The interface.
        ifname: String,
        /// The map's name in `bpf/steer.c`.
        map: &'static str,
        /// What was attempted (`open`, `insert`, `delete`, `read`).
        op: &'static str,
        /// The cause.
        #[source]
        source: Box<MapError>,
    },
    /// More entries than a map holds.
    #[error("{ifname}: map `{map}`: {wanted} entries requested, it holds at most {max}")]
    Capacity {
        /// The interface.
        ifname: String,
        /// The map's name.
        map: &'static str,
        /// Entries requested.
        wanted: usize,
        /// The map's capacity.
        max: usize,
    },
    /// The receive queue is beyond the `xsks` map.
    #[error("{ifname}: queue {queue} is out of range (at most {MAX_QUEUES} queues)")]
    QueueOutOfRange {
        /// The interface.
        ifname: String,
        /// The queue asked for.
        queue: u32,
    },
    /// A SNAT port range whose low end is above its high end.
    #[error("{ifname}: SNAT port range {lo}-{hi} is empty")]
    InvalidPortRange {
        /// The interface.
        ifname: String,
        /// Low end.
        lo: u16,
        /// High end.
        hi: u16,
    },
}

/// Counters of the steering program, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerStats {
    /// Frames redirected to an AF_XDP socket.
    pub redirected: u64,
    /// Frames passed to the kernel (not load-balancer traffic, or no socket
    /// on the queue).
    pub passed: u64,
    /// ICMP/ICMPv6 errors about load-balanced flows redirected to an AF_XDP
    /// socket (also counted in `redirected`).
    pub icmp_errors: u64,
    /// IPv4 fragments and IPv6 packets with a Fragment header passed to the
    /// kernel (also counted in `passed`).
    pub fragments_passed: u64,
    /// Fragments redirected: first fragments of load-balancer traffic and
    /// the later fragments that follow them (also counted in `redirected`).
    pub fragments_redirected: u64,
    /// Unicast frames addressed to another MAC than the interface's
    /// ([`Steering::set_own_mac`]), passed to the kernel (which drops them
    /// as PACKET_OTHERHOST; also counted in `passed`).
    pub other_host: u64,
    /// Frames dropped because their destination lies in a service range
    /// and no front end owns it ([`LoadOpts::service_ranges`]; in neither
    /// `redirected` nor `passed`).
    pub service_range_dropped: u64,
}

/// What the program is loaded for (read-only globals the verifier sees).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOpts {
    /// Match the `service_ranges` trie after the exact rules missed
    /// (`--service-cidr`); off, the program never looks at it.
    pub service_ranges: bool,
}

/// The steering program attached to one interface.
///
/// Dropping it detaches the program (the `bpf_link` is closed) and frees its
/// maps.
pub struct Steering {
    ifname: String,
    mode: AttachMode,
    xsks: XskMap<MapData>,
    vips: HashMap<MapData, L4Key, u8>,
    backends: HashMap<MapData, L4Key, u8>,
    /// What `vips` and `backends` hold (only this type writes them): a
    /// change is diffed against these, never by reading every map key
    /// back (one syscall per key).
    vips_have: HashSet<L4Key>,
    backends_have: HashSet<L4Key>,
    snat_addrs: HashMap<MapData, [u8; 16], u8>,
    local_addrs: HashMap<MapData, [u8; 16], u8>,
    snat_range: Array<MapData, [u16; 2]>,
    own_mac: Array<MapData, [u8; 8]>,
    service_ranges: Option<ranges::RangeMap>,
    stats: PerCpuArray<MapData, u64>,
    fast: FastMap,
    fast_stats: PerCpuArray<MapData, u64>,
    link: Option<aya::programs::xdp::XdpLinkId>,
    ebpf: Ebpf,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("ifname", &self.ifname)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Steering {
    /// Loads the steering program and attaches it to `ifname`
    /// ([`Steering::load`], then [`Steering::attach_link`]).
    ///
    /// The maps start empty: every frame passes until sockets and services
    /// are registered.
    ///
    /// # Errors
    /// As [`Steering::load`] and [`Steering::attach_link`].
    pub fn attach(ifname: &str, mode: AttachMode) -> Result<Steering, SteerError> {
        let mut s = Steering::load(ifname, mode)?;
        s.attach_link()?;
        Ok(s)
    }

    /// Loads the steering program and creates its maps for `ifname`,
    /// without attaching it: nothing is steered until
    /// [`Steering::attach_link`]. Sockets can be registered and sets
    /// filled meanwhile.
    ///
    /// # Errors
    /// [`SteerError::PermissionDenied`] without root / `CAP_NET_ADMIN` +
    /// `CAP_BPF`; [`SteerError::NoSuchInterface`]; [`SteerError::Busy`] when
    /// another XDP program holds the interface; [`SteerError::Load`] when the
    /// object or the verifier fails; [`SteerError::Attach`] when the mode is
    /// not supported.
    pub fn load(ifname: &str, mode: AttachMode) -> Result<Steering, SteerError> {
        Steering::load_with(ifname, mode, LoadOpts::default())
    }

    /// [`Steering::load`] with `opts`.
    ///
    /// # Errors
    /// As [`Steering::load`].
    pub fn load_with(
        ifname: &str,
        mode: AttachMode,
        opts: LoadOpts,
    ) -> Result<Steering, SteerError> {
        let name = ifname.to_string();
        if ifname.is_empty() || ifname.contains('\0') || if_index(ifname) == 0 {
            return Err(SteerError::NoSuchInterface { ifname: name });
        }
        raise_memlock();

        let on = u8::from(opts.service_ranges);
        let mut ebpf = EbpfLoader::new()
            .set_global("service_ranges_on", &on, true)
            .load(STEER_OBJ)
            .map_err(|e| {
                if is_eperm(&e) {
                    SteerError::PermissionDenied {
                        ifname: name.clone(),
                        op: "creating BPF maps",
                    }
                } else {
                    SteerError::Load {
                        ifname: name.clone(),
                        source: Box::new(e),
                    }
                }
            })?;
        let prog = xdp_program(&mut ebpf, &name)?;
        prog.load().map_err(|e| {
            if is_eperm(&e) {
                SteerError::PermissionDenied {
                    ifname: name.clone(),
                    op: "loading the XDP program",
                }
            } else {
                SteerError::Load {
                    ifname: name.clone(),
                    source: Box::new(e),
                }
            }
        })?;

        // From here on, an early return drops `ebpf` (nothing is attached yet).
        let xsks = open_map(&mut ebpf, &name, "xsks", XskMap::try_from)?;
        let vips = open_map(&mut ebpf, &name, "vips", HashMap::try_from)?;
        let backends = open_map(&mut ebpf, &name, "backends", HashMap::try_from)?;
        let snat_addrs = open_map(&mut ebpf, &name, "snat_addrs", HashMap::try_from)?;
        let local_addrs = open_map(&mut ebpf, &name, "local_addrs", HashMap::try_from)?;
        let snat_range = open_map(&mut ebpf, &name, "snat_range", Array::try_from)?;
        let own_mac = open_map(&mut ebpf, &name, "own_mac", Array::try_from)?;
        let service_ranges = match opts.service_ranges {
            true => Some(ranges::RangeMap::new(open_map(
                &mut ebpf,
                &name,
                "service_ranges",
                LpmTrie::try_from,
            )?)),
            false => None,
        };
        let stats = open_map(&mut ebpf, &name, "stats", PerCpuArray::try_from)?;
        let fast = open_map(&mut ebpf, &name, "fast_flows", Ok)?;
        let fast = FastMap::new(&name, fast)?;
        let fast_stats = open_map(&mut ebpf, &name, "fast_stats", PerCpuArray::try_from)?;

        Ok(Steering {
            ifname: name,
            mode,
            xsks,
            vips,
            backends,
            vips_have: HashSet::new(),
            backends_have: HashSet::new(),
            snat_addrs,
            local_addrs,
            snat_range,
            own_mac,
            service_ranges,
            stats,
            fast,
            fast_stats,
            link: None,
            ebpf,
        })
    }

    /// Attaches the loaded program to its interface (`mode` as given to
    /// [`Steering::load`]): from now on it steers frames. `sluice run`
    /// calls it last, once every socket is registered, every worker runs
    /// and the first table is in the maps, so that the first frame it
    /// redirects meets a worker (the frames before it reach the kernel,
    /// which holds no VIP).
    ///
    /// # Errors
    /// As [`Steering::attach`].
    pub fn attach_link(&mut self) -> Result<(), SteerError> {
        if self.link.is_some() {
            return Ok(());
        }
        let (ifname, mode) = (self.ifname.clone(), self.mode);
        let name = ifname.clone();
        let prog = xdp_program(&mut self.ebpf, &name)?;
        let tries: &[AttachMode] = match mode {
            AttachMode::Native => &[AttachMode::Native],
            AttachMode::Generic => &[AttachMode::Generic],
            AttachMode::Auto => &[AttachMode::Native, AttachMode::Generic],
        };
        let mut attached = None;
        for (i, &m) in tries.iter().enumerate() {
            let flags = match m {
                AttachMode::Generic => XdpFlags::SKB_MODE,
                _ => XdpFlags::DRV_MODE,
            };
            match prog.attach(&ifname, flags) {
                Ok(id) => {
                    attached = Some((id, m));
                    break;
                }
                Err(e) => {
                    let errno = os_error(&e);
                    if errno == Some(libc::EPERM) {
                        return Err(SteerError::PermissionDenied {
                            ifname: name.clone(),
                            op: "attaching the XDP program",
                        });
                    }
                    if errno == Some(libc::EBUSY) || errno == Some(libc::EEXIST) {
                        return Err(SteerError::Busy { ifname: name });
                    }
                    if let ProgramError::UnknownInterface { .. } = e {
                        return Err(SteerError::NoSuchInterface { ifname: name });
                    }
                    if i + 1 == tries.len() {
                        return Err(SteerError::Attach {
                            ifname: name.clone(),
                            mode: m,
                            source: Box::new(e),
                        });
                    }
                    tracing::debug!(ifname = %ifname, mode = ?m, error = %e, "XDP attach failed, trying the next mode");
                }
            }
        }
        let Some((link, mode)) = attached else {
            unreachable!("every attach mode list is non-empty and the last failure returns")
        };
        tracing::info!(ifname = %ifname, ?mode, "XDP steering program attached");

        self.link = Some(link);
        self.mode = mode;
        Ok(())
    }

    /// The interface the program is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The mode actually used ([`AttachMode::Native`] or
    /// [`AttachMode::Generic`], never [`AttachMode::Auto`]).
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Registers the AF_XDP socket bound to receive queue `queue`: frames
    /// steered on that queue go to it from now on.
    ///
    /// # Errors
    /// [`SteerError::QueueOutOfRange`] beyond [`MAX_QUEUES`];
    /// [`SteerError::Map`] when the kernel refuses the socket (not an XDP
    /// socket, or not bound).
    pub fn register_socket(&mut self, queue: u32, xsk_fd: RawFd) -> Result<(), SteerError> {
        if queue >= MAX_QUEUES {
            return Err(SteerError::QueueOutOfRange {
                ifname: self.ifname.clone(),
                queue,
            });
        }
        self.xsks
            .set(queue, xsk_fd, 0)
            .map_err(|e| map_err(&self.ifname, "xsks", "insert", e))
    }

    /// Makes `vips` the whole set of virtual services: inserts the new ones
    /// and deletes those no longer present. Entries in both sets are not
    /// touched, so their traffic is never passed to the kernel meanwhile.
    ///
    /// # Errors
    /// [`SteerError::Capacity`] beyond [`MAX_VIPS`] (nothing is changed
    /// then); [`SteerError::Map`] when a map operation fails (the set may be
    /// partly applied; calling again converges).
    pub fn set_vips(&mut self, vips: &[VipKey]) -> Result<(), SteerError> {
        let want: HashSet<L4Key> = vips
            .iter()
            .map(|v| l4_key(v.addr, v.port, v.proto))
            .collect();
        replace_set(
            &self.ifname,
            "vips",
            (&mut self.vips, &mut self.vips_have),
            &want,
            MAX_VIPS,
        )
    }

    /// Makes `backends` — `(address, port, protocol)` of every endpoint —
    /// the whole set whose replies are steered to the load balancer.
    ///
    /// # Errors
    /// As [`Steering::set_vips`], with [`MAX_BACKENDS`].
    pub fn set_backends(&mut self, backends: &[(Addr, u16, u8)]) -> Result<(), SteerError> {
        let want: HashSet<L4Key> = backends
            .iter()
            .map(|&(a, p, pr)| l4_key(a, p, pr))
            .collect();
        replace_set(
            &self.ifname,
            "backends",
            (&mut self.backends, &mut self.backends_have),
            &want,
            MAX_BACKENDS,
        )
    }

    /// Adds the front ends `add` and removes `del` (a change's difference:
    /// costs what it names, where [`Steering::set_vips`] walks the whole
    /// set). Entries already present, or absent, are left alone.
    ///
    /// # Errors
    /// As [`Steering::set_vips`].
    pub fn update_vips(&mut self, add: &[VipKey], del: &[VipKey]) -> Result<(), SteerError> {
        let key = |v: &VipKey| l4_key(v.addr, v.port, v.proto);
        update_set(
            &self.ifname,
            "vips",
            (&mut self.vips, &mut self.vips_have),
            (add.iter().map(key), del.iter().map(key)),
            MAX_VIPS,
        )
    }

    /// [`Steering::update_vips`] for the backends of
    /// [`Steering::set_backends`].
    ///
    /// # Errors
    /// As [`Steering::set_backends`].
    pub fn update_backends(
        &mut self,
        add: &[(Addr, u16, u8)],
        del: &[(Addr, u16, u8)],
    ) -> Result<(), SteerError> {
        let key = |&(a, p, pr): &(Addr, u16, u8)| l4_key(a, p, pr);
        update_set(
            &self.ifname,
            "backends",
            (&mut self.backends, &mut self.backends_have),
            (add.iter().map(key), del.iter().map(key)),
            MAX_BACKENDS,
        )
    }

    /// Sets the SNAT (masquerade) addresses and the source-port ranges the
    /// data path allocates from: replies to those addresses with a
    /// destination port in one of the ranges are steered. An empty `addrs`
    /// turns the rule off.
    ///
    /// # Errors
    /// [`SteerError::Capacity`] beyond [`MAX_SNAT_ADDRS`];
    /// [`SteerError::Map`] when a map operation fails.
    pub fn set_snat(&mut self, addrs: &[Addr], ports: &PortRanges) -> Result<(), SteerError> {
        let want: HashSet<[u8; 16]> = addrs.iter().map(|a| a.0).collect();
        replace_read_set(
            &self.ifname,
            "snat_addrs",
            &mut self.snat_addrs,
            &want,
            MAX_SNAT_ADDRS,
        )?;
        for i in 0..crate::snat::MAX_RANGES {
            let r = ports.ranges().get(i).map_or([0, 0], |&(lo, hi)| [lo, hi]);
            self.snat_range
                .set(i as u32, r, 0)
                .map_err(|e| map_err(&self.ifname, "snat_range", "insert", e))?;
        }
        Ok(())
    }

    /// Makes `addrs` the host's own addresses: an endpoint's packet to one
    /// of them is steered only as a reply to a masqueraded flow (SNAT
    /// address and port, [`Steering::set_snat`]), so replies to the host's
    /// own connections to endpoints reach the kernel. Give every address
    /// of the host, on every interface (the kernel accepts a packet for any
    /// of them on any interface).
    ///
    /// # Errors
    /// [`SteerError::Capacity`] beyond [`MAX_LOCAL_ADDRS`] (nothing is
    /// changed then); [`SteerError::Map`] when a map operation fails.
    pub fn set_local_addrs(&mut self, addrs: &[Addr]) -> Result<(), SteerError> {
        let want: HashSet<[u8; 16]> = addrs.iter().map(|a| a.0).collect();
        replace_read_set(
            &self.ifname,
            "local_addrs",
            &mut self.local_addrs,
            &want,
            MAX_LOCAL_ADDRS,
        )
    }

    /// Sets the interface's own MAC: from now on only unicast frames
    /// addressed to it (and no broadcast or multicast frame) are judged by
    /// the rules; a unicast frame for another MAC passes to the kernel,
    /// which drops it (`SteerStats::other_host`). Until it is set, or with
    /// `None`, the program judges every frame whatever its destination
    /// MAC but a group one.
    ///
    /// # Errors
    /// [`SteerError::Map`] when the map cannot be written.
    pub fn set_own_mac(&mut self, mac: Option<[u8; 6]>) -> Result<(), SteerError> {
        let mut v = [0u8; 8];
        if let Some(m) = mac {
            v[..6].copy_from_slice(&m);
            v[6] = 1;
        }
        self.own_mac
            .set(0, v, 0)
            .map_err(|e| map_err(&self.ifname, "own_mac", "insert", e))
    }

    /// The program's counters, summed over CPUs.
    ///
    /// # Errors
    /// [`SteerError::Map`] when the counters cannot be read.
    pub fn stats(&self) -> Result<SteerStats, SteerError> {
        let sum = |idx: u32| -> Result<u64, SteerError> {
            let v = self
                .stats
                .get(&idx, 0)
                .map_err(|e| map_err(&self.ifname, "stats", "read", e))?;
            Ok(v.iter().fold(0u64, |a, &c| a.wrapping_add(c)))
        };
        Ok(SteerStats {
            redirected: sum(STAT_REDIRECTED)?,
            passed: sum(STAT_PASSED)?,
            icmp_errors: sum(STAT_ICMP_REDIRECTED)?,
            fragments_passed: sum(STAT_FRAGMENT_PASSED)?,
            fragments_redirected: sum(STAT_FRAGMENT_REDIRECTED)?,
            other_host: sum(STAT_OTHER_HOST)?,
            service_range_dropped: sum(STAT_SERVICE_RANGE_DROPPED)?,
        })
    }

    /// The `service_ranges` trie, handed to its one writer (the control
    /// plane's follower, which keeps it in step with every snapshot); the
    /// loaded program keeps the map alive. `None` for a program loaded
    /// without [`LoadOpts::service_ranges`], or once taken.
    pub fn take_service_ranges(&mut self) -> Option<ranges::RangeMap> {
        self.service_ranges.take()
    }
}

impl Steering {
    /// A handle on this program's fast-path map ([`crate::fastpath`]), for
    /// a worker or the sweep.
    ///
    /// # Errors
    /// [`SteerError::Map`] when the descriptor cannot be duplicated.
    pub fn fast_map(&self) -> Result<FastMap, SteerError> {
        self.fast.try_clone()
    }

    /// The fast path's counters, summed over CPUs.
    ///
    /// # Errors
    /// [`SteerError::Map`] when the counters cannot be read.
    pub fn fast_stats(&self) -> Result<FastStats, SteerError> {
        let sum = |idx: u32| -> Result<u64, SteerError> {
            let v = self
                .fast_stats
                .get(&idx, 0)
                .map_err(|e| map_err(&self.ifname, "fast_stats", "read", e))?;
            Ok(v.iter().fold(0u64, |a, &c| a.wrapping_add(c)))
        };
        Ok(FastStats {
            hits: sum(0)?,
            misses: sum(1)?,
            slow: sum(2)?,
            malformed: sum(3)?,
        })
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        let Some(link) = self.link.take() else { return };
        let res = match self.ebpf.program_mut(PROG) {
            Some(p) => <&mut Xdp>::try_from(p).and_then(|x| x.detach(link)),
            None => Ok(()),
        };
        match res {
            Ok(()) => tracing::info!(ifname = %self.ifname, "XDP steering program detached"),
            // The link is closed with `ebpf` anyway; only report it.
            Err(e) => {
                tracing::warn!(ifname = %self.ifname, error = %e, "detaching XDP steering program")
            }
        }
    }
}

/// Encodes a `vips` / `backends` key (layout in the module doc).
fn l4_key(addr: Addr, port: u16, proto: u8) -> L4Key {
    let mut k = [0u8; L4_KEY_LEN];
    k[..16].copy_from_slice(&addr.0);
    k[16..18].copy_from_slice(&port.to_be_bytes());
    k[18] = proto;
    k
}

/// Replaces the key set of a hash map with `want`: deletes stale keys first
/// (so a full map can be swapped for another full one), then inserts the
/// missing ones.
/// [`replace_set`] for a small map without a shadow: what it holds is
/// read back first.
fn replace_read_set<K: Pod + Eq + Hash>(
    ifname: &str,
    name: &'static str,
    map: &mut HashMap<MapData, K, u8>,
    want: &HashSet<K>,
    max: usize,
) -> Result<(), SteerError> {
    let mut have = map
        .keys()
        .collect::<Result<HashSet<K>, MapError>>()
        .map_err(|e| map_err(ifname, name, "read", e))?;
    replace_set(ifname, name, (map, &mut have), want, max)
}

/// A map and what it holds (its shadow, kept by the only writer).
type Shadowed<'a, K> = (&'a mut HashMap<MapData, K, u8>, &'a mut HashSet<K>);

/// Makes the map of `set` hold exactly `want`, diffed against its shadow.
fn replace_set<K: Pod + Eq + Hash>(
    ifname: &str,
    name: &'static str,
    set: Shadowed<'_, K>,
    want: &HashSet<K>,
    max: usize,
) -> Result<(), SteerError> {
    if want.len() > max {
        return Err(SteerError::Capacity {
            ifname: ifname.to_string(),
            map: name,
            wanted: want.len(),
            max,
        });
    }
    let (map, have) = set;
    let del: Vec<K> = have.difference(want).copied().collect();
    let add: Vec<K> = want.difference(have).copied().collect();
    apply_set(ifname, name, (map, have), &add, &del)
}

/// Adds `add` to and removes `del` from the map of `set` (entries already
/// present, or absent, are skipped), checking the capacity first.
fn update_set<K: Pod + Eq + Hash>(
    ifname: &str,
    name: &'static str,
    set: Shadowed<'_, K>,
    (add, del): (impl Iterator<Item = K>, impl Iterator<Item = K>),
    max: usize,
) -> Result<(), SteerError> {
    let (map, have) = set;
    let del: HashSet<K> = del.filter(|k| have.contains(k)).collect();
    let add: HashSet<K> = add
        .filter(|k| !have.contains(k) && !del.contains(k))
        .collect();
    let wanted = have.len() + add.len() - del.len();
    if wanted > max {
        return Err(SteerError::Capacity {
            ifname: ifname.to_string(),
            map: name,
            wanted,
            max,
        });
    }
    let add: Vec<K> = add.into_iter().collect();
    let del: Vec<K> = del.into_iter().collect();
    apply_set(ifname, name, (map, have), &add, &del)
}

/// Deletes `del` and inserts `add`, keeping the shadow in step with what
/// the kernel took (a failure leaves both agreeing on the part applied).
fn apply_set<K: Pod + Eq + Hash>(
    ifname: &str,
    name: &'static str,
    (map, have): Shadowed<'_, K>,
    add: &[K],
    del: &[K],
) -> Result<(), SteerError> {
    for k in del {
        match map.remove(k) {
            Ok(()) | Err(MapError::KeyNotFound) => {
                have.remove(k);
            }
            Err(e) => return Err(map_err(ifname, name, "delete", e)),
        }
    }
    for k in add {
        map.insert(k, 1u8, 0)
            .map_err(|e| map_err(ifname, name, "insert", e))?;
        have.insert(*k);
    }
    Ok(())
}

/// Takes a map out of the object as its typed view.
fn open_map<T>(
    ebpf: &mut Ebpf,
    ifname: &str,
    name: &'static str,
    conv: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, SteerError> {
    let map = ebpf.take_map(name).ok_or_else(|| {
        map_err(
            ifname,
            name,
            "open",
            MapError::InvalidName {
                name: name.to_string(),
            },
        )
    })?;
    conv(map).map_err(|e| map_err(ifname, name, "open", e))
}

fn map_err(ifname: &str, map: &'static str, op: &'static str, source: MapError) -> SteerError {
    if os_error(&source) == Some(libc::EPERM) {
        return SteerError::PermissionDenied {
            ifname: ifname.to_string(),
            op: "updating a BPF map",
        };
    }
    SteerError::Map {
        ifname: ifname.to_string(),
        map,
        op,
        source: Box::new(source),
    }
}

/// The steering program inside the loaded object.
fn xdp_program<'a>(ebpf: &'a mut Ebpf, ifname: &str) -> Result<&'a mut Xdp, SteerError> {
    ebpf.program_mut(PROG)
        .ok_or_else(|| SteerError::Load {
            ifname: ifname.to_string(),
            source: format!("program `{PROG}` missing from the object").into(),
        })?
        .try_into()
        .map_err(|e: ProgramError| SteerError::Load {
            ifname: ifname.to_string(),
            source: Box::new(e),
        })
}

/// The OS error code somewhere in an error's source chain.
///
/// aya's `#[error(transparent)]` variants forward `source()` past the
/// wrapped error, so an `io::Error` held directly by `MapError::IoError` is
/// not in the chain; those are matched by hand.
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let io = err
            .downcast_ref::<io::Error>()
            .or_else(|| match err.downcast_ref::<MapError>() {
                Some(MapError::IoError(io)) => Some(io),
                _ => None,
            })
            .or_else(|| match err.downcast_ref::<ProgramError>() {
                Some(ProgramError::MapError(MapError::IoError(io))) => Some(io),
                Some(ProgramError::IOError(io)) => Some(io),
                _ => None,
            });
        if let Some(code) = io.and_then(io::Error::raw_os_error) {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    os_error(e) == Some(libc::EPERM)
}

/// The interface index of `name`, 0 when there is none.
fn if_index(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Lifts RLIMIT_MEMLOCK for kernels before 5.11, which charge BPF maps to
/// it; newer kernels use memory cgroups and ignore it. Best effort.
fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `lim` is a valid, initialised rlimit that setrlimit only reads.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot raise RLIMIT_MEMLOCK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::proto;

    #[test]
    fn l4_key_v4_layout() {
        let k = l4_key(Addr::from_v4([198, 18, 0, 10]), 8080, proto::TCP);
        assert_eq!(
            k,
            [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 10, // addr
                0x1f, 0x90, // port 8080, network order
                6, 0, // proto, pad
            ]
        );
    }

    #[test]
    fn l4_key_v6_layout() {
        let ip: std::net::IpAddr = "2001:db8::53".parse().unwrap();
        let k = l4_key(Addr::from(ip), 53, proto::UDP);
        assert_eq!(&k[..16], &Addr::from(ip).0);
        assert_eq!(&k[16..], &[0, 53, 17, 0]);
    }

    #[test]
    fn l4_key_distinguishes_fields() {
        let a = Addr::from_v4([198, 18, 0, 1]);
        let base = l4_key(a, 80, proto::TCP);
        assert_ne!(base, l4_key(a, 80, proto::UDP));
        assert_ne!(base, l4_key(a, 81, proto::TCP));
        assert_ne!(base, l4_key(Addr::from_v4([198, 18, 0, 2]), 80, proto::TCP));
    }

    #[test]
    fn embedded_object_is_bpf_elf() {
        assert_eq!(&STEER_OBJ[..4], b"\x7fELF");
        // e_machine == EM_BPF (247), little-endian.
        assert_eq!(u16::from_le_bytes([STEER_OBJ[18], STEER_OBJ[19]]), 247);
    }

    #[test]
    fn os_error_walks_the_chain() {
        let e = MapError::IoError(io::Error::from_raw_os_error(libc::EPERM));
        assert!(is_eperm(&e));
        let e = ProgramError::MapError(MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: io::Error::from_raw_os_error(libc::EBUSY),
        }));
        assert_eq!(os_error(&e), Some(libc::EBUSY));
        assert_eq!(os_error(&MapError::KeyNotFound), None);
    }

    #[test]
    fn attach_to_missing_interface_fails_cleanly() {
        let e = Steering::attach("nonexistent0", AttachMode::Auto).unwrap_err();
        assert!(matches!(e, SteerError::NoSuchInterface { .. }), "{e}");
    }
}
