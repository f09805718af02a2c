//! Kernel lookups over rtnetlink: interfaces, routes, neighbours, addresses.
//!
//! The data path writes Ethernet headers itself, so it needs what the kernel
//! would have used: the egress interface and next hop of a destination
//! (`ip route get`), the next hop's MAC (`ip neigh`), and the interface's own
//! MAC, MTU and receive queues (one AF_XDP socket per queue).
//!
//! Everything here is synchronous and runs on the control thread: one
//! `NETLINK_ROUTE` socket per call, one request, read until the answer (or
//! `NLMSG_DONE` for a dump) arrives. No runtime, no background task. The
//! kernel answers every request, so the reads do not need a timeout; only
//! [`resolve`] waits, and it bounds its wait by the caller's timeout.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr as NlAddr};

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const IFNAMSIZ_MAX: usize = 15;

/// How often [`resolve`] looks at the neighbour table while it waits.
const RESOLVE_POLL: Duration = Duration::from_millis(10);

/// Error from a kernel lookup.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened, or sending / receiving on it
    /// failed.
    #[error("netlink socket: {op}: {source}")]
    Socket {
        /// What was attempted (`open`, `bind`, `send`, `recv`).
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("{request}: the kernel answered: {source}")]
    Kernel {
        /// The request, e.g. `RTM_GETNEIGH 198.18.0.1 on ifindex 3`.
        request: String,
        /// The errno the kernel returned.
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be decoded, or lacked a field.
    #[error("{request}: cannot decode the kernel's answer: {reason}")]
    Decode {
        /// The request.
        request: String,
        /// What was wrong.
        reason: String,
    },
    /// No interface has this name (in this network namespace).
    #[error("no such interface: {name}")]
    NoSuchInterface {
        /// The name looked up.
        name: String,
    },
    /// The kernel has no route to the destination.
    #[error("no route to {dst}: {source}")]
    NoRoute {
        /// The destination.
        dst: IpAddr,
        /// The errno the kernel returned (ENETUNREACH, EHOSTUNREACH, ...).
        #[source]
        source: io::Error,
    },
    /// The next hop's MAC was not learned within the timeout.
    #[error("cannot resolve the MAC of {addr} on ifindex {ifindex} (next hop of {dst}) within {timeout:?}")]
    Unresolved {
        /// The address whose MAC is missing (the gateway, or the
        /// destination when it is on link).
        addr: IpAddr,
        /// The interface the neighbour was looked up on.
        ifindex: u32,
        /// The destination asked for.
        dst: IpAddr,
        /// How long [`resolve`] waited.
        timeout: Duration,
    },
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Hardware address (zero when the link has none, as `lo`).
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// Number of receive queues: the `rx-*` entries of
    /// `/sys/class/net/NAME/queues` (what an AF_XDP socket can bind to), or
    /// `IFLA_NUM_RX_QUEUES` when that sysfs does not show this namespace.
    pub rx_queues: u32,
}

/// The kernel's route to one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Egress interface index.
    pub ifindex: u32,
    /// Gateway, `None` when the destination is on link.
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would use.
    pub prefsrc: Option<IpAddr>,
}

/// Everything needed to send a frame to a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface index.
    pub ifindex: u32,
    /// Gateway, `None` when the destination is on link.
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would use.
    pub src: Option<IpAddr>,
    /// MAC of the gateway, or of the destination when on link.
    pub mac: [u8; 6],
}

/// What an `RTM_NEWLINK` event says about one interface: whether it is
/// operationally up (`IF_OPER_UP`, or `IFF_RUNNING` when the driver reports
/// no operational state) and whether an XDP program is attached, when the
/// event carries `IFLA_XDP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    /// Interface index.
    pub index: u32,
    /// Operationally up: carrier on both ends of a veth, admin up.
    pub up: bool,
    /// An XDP program is attached (`None`: the event did not say).
    pub xdp: Option<bool>,
}

impl LinkEvent {
    /// Reads the state out of a link message (an `RTM_NEWLINK` event).
    pub fn of(msg: &LinkMessage) -> LinkEvent {
        use netlink_packet_route::link::{LinkFlags, LinkXdp, State, XdpAttached};
        let mut oper = None;
        let mut xdp = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::OperState(s) => oper = Some(*s),
                LinkAttribute::Xdp(x) => {
                    for a in x {
                        if let LinkXdp::Attached(at) = a {
                            xdp = Some(*at != XdpAttached::None);
                        }
                    }
                }
                _ => {}
            }
        }
        let flags = msg.header.flags;
        let admin_up = flags.contains(LinkFlags::Up);
        let up = admin_up
            && match oper {
                Some(State::Up) => true,
                Some(State::Unknown) | None => flags.contains(LinkFlags::Running),
                Some(_) => false,
            };
        LinkEvent {
            index: msg.header.index,
            up,
            xdp,
        }
    }
}

/// Looks an interface up by name (`ip link show NAME`).
///
/// # Errors
/// [`NetlinkError::NoSuchInterface`] when there is none;
/// [`NetlinkError::Socket`], [`NetlinkError::Kernel`] or
/// [`NetlinkError::Decode`] when the lookup itself fails.
pub fn link(name: &str) -> Result<Link, NetlinkError> {
    if name.is_empty() || name.len() > IFNAMSIZ_MAX || name.contains(['\0', '/']) {
        return Err(NetlinkError::NoSuchInterface { name: name.into() });
    }
    let request = format!("RTM_GETLINK {name}");
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let answers = match exchange(RouteNetlinkMessage::GetLink(msg), false, &request) {
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
            return Err(NetlinkError::NoSuchInterface { name: name.into() })
        }
        other => other?,
    };
    let msg = answers
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .ok_or_else(|| decode(&request, "no RTM_NEWLINK in the answer"))?;

    let index = msg.header.index;
    let mut mac = [0u8; 6];
    let mut mtu = None;
    let mut num_rx = None;
    let mut real_name = name.to_string();
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(a) if a.len() == 6 => mac.copy_from_slice(a),
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            LinkAttribute::NumRxQueues(n) => num_rx = Some(*n),
            LinkAttribute::IfName(n) => real_name.clone_from(n),
            _ => {}
        }
    }
    let mtu = mtu.ok_or_else(|| decode(&request, "no IFLA_MTU"))?;
    let rx_queues = sysfs_rx_queues(&real_name, index).or(num_rx).unwrap_or(1);
    Ok(Link {
        name: real_name,
        index,
        mac,
        mtu,
        rx_queues,
    })
}

/// Counts `/sys/class/net/NAME/queues/rx-*`, if that sysfs shows the same
/// interface (same index): a sysfs mounted in another network namespace
/// shows that namespace's devices.
fn sysfs_rx_queues(name: &str, index: u32) -> Option<u32> {
    let dir = Path::new("/sys/class/net").join(name);
    let sys_index: u32 = std::fs::read_to_string(dir.join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if sys_index != index {
        return None;
    }
    let n = std::fs::read_dir(dir.join("queues"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    u32::try_from(n).ok().filter(|&n| n > 0)
}

/// The kernel's route to `dst` (`ip route get DST`): `RTM_GETROUTE` for one
/// address, answered by the FIB lookup the kernel itself would make.
///
/// # Errors
/// [`NetlinkError::NoRoute`] when the kernel has none (or the route is
/// unreachable / prohibit / blackhole); [`NetlinkError::Socket`],
/// [`NetlinkError::Kernel`] or [`NetlinkError::Decode`] otherwise.
pub fn route_get(dst: IpAddr) -> Result<Route, NetlinkError> {
    let request = format!("RTM_GETROUTE {dst}");
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(dst);
    msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    let answers = match exchange(RouteNetlinkMessage::GetRoute(msg), false, &request) {
        Err(NetlinkError::Kernel { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(
                    libc::ENETUNREACH
                        | libc::EHOSTUNREACH
                        | libc::EACCES
                        | libc::EINVAL
                        | libc::ESRCH
                )
            ) =>
        {
            return Err(NetlinkError::NoRoute { dst, source })
        }
        other => other?,
    };
    let msg = answers
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .ok_or_else(|| decode(&request, "no RTM_NEWROUTE in the answer"))?;

    let mut ifindex = None;
    let mut gateway = None;
    let mut prefsrc = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            RouteAttribute::Gateway(a) => gateway = route_ip(a),
            RouteAttribute::PrefSource(a) => prefsrc = route_ip(a),
            _ => {}
        }
    }
    let ifindex = ifindex.ok_or_else(|| decode(&request, "no RTA_OIF"))?;
    Ok(Route {
        ifindex,
        gateway,
        prefsrc,
    })
}

/// The MAC of `addr` in the neighbour table of interface `ifindex`
/// (`ip neigh get ADDR dev IF`), if the entry is usable: REACHABLE, STALE,
/// DELAY, PROBE, PERMANENT or NOARP. INCOMPLETE, FAILED and absent entries
/// give `None`. A usable entry without a link-layer address (a NOARP link
/// such as `lo`) gives the zero MAC, which is what the kernel writes too.
///
/// # Errors
/// [`NetlinkError::Socket`], [`NetlinkError::Kernel`] (for instance ENODEV
/// for an unknown `ifindex`) or [`NetlinkError::Decode`].
pub fn neighbour(ifindex: u32, addr: IpAddr) -> Result<Option<[u8; 6]>, NetlinkError> {
    let request = format!("RTM_GETNEIGH {addr} on ifindex {ifindex}");
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(addr);
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    let answers = match exchange(RouteNetlinkMessage::GetNeighbour(msg), false, &request) {
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(None)
        }
        other => other?,
    };
    for m in answers {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            continue;
        };
        if n.header.ifindex != ifindex {
            continue;
        }
        if !usable(n.header.state) {
            return Ok(None);
        }
        let mut mac = [0u8; 6];
        for attr in &n.attributes {
            if let NeighbourAttribute::LinkLocalAddress(ll) = attr {
                if ll.len() == 6 {
                    mac.copy_from_slice(ll);
                }
            }
        }
        return Ok(Some(mac));
    }
    Ok(None)
}

/// Whether a neighbour entry in this state has a MAC the kernel would send
/// to (`NUD_VALID` without the transient INCOMPLETE).
fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

/// Route and next-hop MAC for `dst`, resolving the MAC if needed.
///
/// Looks the route up ([`route_get`]), then the neighbour entry of the
/// gateway (or of `dst` when on link) on the egress interface. When there is
/// no usable entry, it makes the kernel resolve it the ordinary way, by
/// sending one empty UDP datagram to `dst` port 9 (discard) from a kernel
/// socket, and polls the neighbour table every 10 ms until `timeout`.
///
/// A destination routed through `lo` (a local address) has no neighbour
/// entry and ends in [`NetlinkError::Unresolved`]: the data path does not
/// send to itself.
///
/// # Errors
/// [`NetlinkError::Unresolved`] naming the address when no MAC appears in
/// time; the errors of [`route_get`] and [`neighbour`].
pub fn resolve(dst: IpAddr, timeout: Duration) -> Result<NextHop, NetlinkError> {
    let route = route_get(dst)?;
    let target = route.gateway.unwrap_or(dst);
    let hop = |mac| NextHop {
        ifindex: route.ifindex,
        gateway: route.gateway,
        src: route.prefsrc,
        mac,
    };
    if let Some(mac) = neighbour(route.ifindex, target)? {
        return Ok(hop(mac));
    }
    let deadline = Instant::now() + timeout;
    if let Err(e) = probe(dst, route.ifindex) {
        // Someone else may still resolve it; the deadline bounds the wait.
        tracing::debug!(%dst, error = %e, "neighbour probe datagram not sent");
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep(RESOLVE_POLL.min(deadline - now));
        if let Some(mac) = neighbour(route.ifindex, target)? {
            return Ok(hop(mac));
        }
    }
    Err(NetlinkError::Unresolved {
        addr: target,
        ifindex: route.ifindex,
        dst,
        timeout,
    })
}

/// Sends one empty UDP datagram to `dst`:9 so that the kernel resolves the
/// next hop's MAC (ARP / neighbour solicitation) as for any packet.
pub(crate) fn probe(dst: IpAddr, ifindex: u32) -> io::Result<()> {
    let (bind, to): (SocketAddr, SocketAddr) = match dst {
        IpAddr::V4(a) => ((Ipv4Addr::UNSPECIFIED, 0).into(), (a, 9).into()),
        IpAddr::V6(a) => {
            // A link-local destination needs its interface as scope.
            let scope = if a.segments()[0] & 0xffc0 == 0xfe80 {
                ifindex
            } else {
                0
            };
            (
                (Ipv6Addr::UNSPECIFIED, 0).into(),
                SocketAddrV6::new(a, 9, 0, scope).into(),
            )
        }
    };
    let sock = UdpSocket::bind(bind)?;
    sock.send_to(&[], to).map(|_| ())
}

/// The addresses configured on interface `ifindex`, with prefix lengths
/// (`ip addr show dev IF`). For IPv4 this is the local address
/// (`IFA_LOCAL`), which differs from `IFA_ADDRESS` on point-to-point links.
///
/// # Errors
/// [`NetlinkError::Socket`], [`NetlinkError::Kernel`] or
/// [`NetlinkError::Decode`].
pub fn addresses(ifindex: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
    dump_addresses(Some(ifindex))
}

/// Every address of every interface of the namespace (`ip addr show`),
/// with prefix lengths, as [`addresses`] reads them.
///
/// # Errors
/// As [`addresses`].
pub fn all_addresses() -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
    dump_addresses(None)
}

fn dump_addresses(ifindex: Option<u32>) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
    let request = match ifindex {
        Some(i) => format!("RTM_GETADDR dump for ifindex {i}"),
        None => "RTM_GETADDR dump".to_string(),
    };
    let mut msg = AddressMessage::default();
    msg.header.index = ifindex.unwrap_or(0);
    let answers = exchange(RouteNetlinkMessage::GetAddress(msg), true, &request)?;
    let mut out = Vec::new();
    for m in answers {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        if ifindex.is_some_and(|i| a.header.index != i) {
            continue;
        }
        let mut local = None;
        let mut address = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            out.push((ip, a.header.prefix_len));
        }
    }
    Ok(out)
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn decode(request: &str, reason: impl Into<String>) -> NetlinkError {
    NetlinkError::Decode {
        request: request.to_string(),
        reason: reason.into(),
    }
}

/// Sends one request on a fresh `NETLINK_ROUTE` socket and collects the
/// answer: the first message for a plain request, everything up to
/// `NLMSG_DONE` for a dump. A kernel error becomes
/// [`NetlinkError::Kernel`].
fn exchange(
    payload: RouteNetlinkMessage,
    dump: bool,
    request: &str,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let sock_err = |op| move |source| NetlinkError::Socket { op, source };
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(sock_err("open"))?;
    let local = sock.bind_auto().map_err(sock_err("bind"))?;
    sock.connect(&NlAddr::new(0, 0))
        .map_err(sock_err("connect"))?;

    const SEQ: u32 = 1;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    header.sequence_number = SEQ;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0).map_err(sock_err("send"))?;

    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full().map_err(sock_err("recv"))?;
        if data.is_empty() {
            return Err(decode(request, "empty datagram"));
        }
        let mut off = 0;
        while off < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                .map_err(|e| decode(request, e.to_string()))?;
            let len = m.header.length as usize;
            if len == 0 {
                return Err(decode(request, "zero-length netlink message"));
            }
            off += (len + 3) & !3;
            if m.header.sequence_number != SEQ
                || (m.header.port_number != 0 && m.header.port_number != local.port_number())
            {
                continue;
            }
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => {
                    out.push(inner);
                    if !dump {
                        return Ok(out);
                    }
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    if e.code.is_none() {
                        // An ACK: the request is complete.
                        return Ok(out);
                    }
                    return Err(NetlinkError::Kernel {
                        request: request.to_string(),
                        source: e.to_io(),
                    });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_link() {
        let lo = link("lo").unwrap();
        assert_eq!(lo.name, "lo");
        assert!(lo.index > 0);
        assert_eq!(lo.mac, [0; 6]);
        assert!(lo.mtu > 0);
        assert!(lo.rx_queues >= 1);
    }

    #[test]
    fn missing_link() {
        for name in ["nonexistent0", "", "much-too-long-interface-name"] {
            let e = link(name).unwrap_err();
            assert!(
                matches!(e, NetlinkError::NoSuchInterface { .. }),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn route_to_loopback() {
        let lo = link("lo").unwrap();
        let r = route_get(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        assert_eq!(r.ifindex, lo.index);
        assert_eq!(r.gateway, None);
        assert_eq!(r.prefsrc, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn loopback_addresses() {
        let lo = link("lo").unwrap();
        let addrs = addresses(lo.index).unwrap();
        assert!(
            addrs.contains(&(IpAddr::V4(Ipv4Addr::LOCALHOST), 8)),
            "{addrs:?}"
        );
    }

    #[test]
    fn absent_neighbour_is_none() {
        let lo = link("lo").unwrap();
        // 192.0.2.0/24 (TEST-NET-1) is never a neighbour on lo.
        let n = neighbour(lo.index, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77))).unwrap();
        assert_eq!(n, None);
    }

    #[test]
    fn usable_states() {
        assert!(usable(NeighbourState::Reachable));
        assert!(usable(NeighbourState::Stale));
        assert!(usable(NeighbourState::Permanent));
        assert!(!usable(NeighbourState::Incomplete));
        assert!(!usable(NeighbourState::Failed));
        assert!(!usable(NeighbourState::None));
    }
}
