//! Next hops of backends, resolved once and kept current by the kernel's
//! neighbour and route events.
//!
//! A compile used to resolve every backend afresh (`ip route get` and `ip
//! neigh get` on a new netlink socket each) and then kept the answer until
//! the next compile, so a backend whose MAC changed (a pod restarted on the
//! same address) was black-holed. Now:
//!
//! - [`NextHopCache`] holds, per backend address, where it is reached (port,
//!   MAC, SNAT source) and which neighbour entry that came from (the
//!   gateway's, or the backend's own when on link). A compile asks it only
//!   about addresses it has not seen; new ones are probed together and
//!   waited for together, not one timeout after the other.
//! - [`Watch`] is one `NETLINK_ROUTE` socket subscribed to `RTNLGRP_NEIGH`,
//!   the IPv4/IPv6 route groups and `RTNLGRP_LINK` (for
//!   [`crate::links`]), read on the daemon's tokio runtime
//!   (an [`AsyncFd`], no thread of its own). It reports which neighbours
//!   changed and whether any route did ([`Changes`]); the reconciler then
//!   re-reads only the backends behind them ([`NextHopCache::refresh`]) and
//!   republishes when one moved. A deleted or failed neighbour entry keeps
//!   the hop it had: the kernel is resolving it again, and the next event
//!   brings the answer.

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::mem;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use sluice_dataplane::pipeline::NextHop;
use sluice_dataplane::types::{Addr, L2Hop};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::netlink::{self, Link, NetlinkError};

/// `RTNLGRP_LINK` (linux/rtnetlink.h): interfaces going down and up.
const RTNLGRP_LINK: u32 = 1;
/// `RTNLGRP_NEIGH` (linux/rtnetlink.h).
const RTNLGRP_NEIGH: u32 = 3;
/// `RTNLGRP_IPV4_ROUTE`.
const RTNLGRP_IPV4_ROUTE: u32 = 7;
/// `RTNLGRP_IPV6_ROUTE`.
const RTNLGRP_IPV6_ROUTE: u32 = 11;
/// How often a compile looks at the neighbour table while new backends
/// resolve.
const POLL: Duration = Duration::from_millis(10);
/// More changed neighbours than this between two reads are treated as
/// "everything changed" (bounded memory under an event storm).
const MAX_PENDING: usize = 4096;

/// Where one backend is reached, and from which neighbour entry.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The hop, `None` while unresolved.
    hop: Option<NextHop>,
    /// The neighbour whose MAC the hop carries (gateway or the backend),
    /// `None` when even the route is unknown.
    target: Option<IpAddr>,
}

/// Backend address → next hop, shared by the first compile and the
/// publisher (one per daemon).
#[derive(Debug, Default)]
pub struct NextHopCache {
    entries: HashMap<Addr, Entry>,
}

/// The cache as the host description carries it.
pub type SharedCache = Arc<Mutex<NextHopCache>>;

/// A backend whose hop changed in a [`NextHopCache::refresh`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moved {
    /// The backend.
    pub addr: Addr,
    /// The hop it had (`None`: it was unresolved).
    pub old: Option<NextHop>,
    /// The hop it has now.
    pub new: NextHop,
}

impl NextHopCache {
    /// The hops of `addrs`: cached ones as they are, new ones resolved
    /// (all probed at once, then waited for together up to `timeout`).
    /// Addresses not in `addrs` are forgotten. Returns the resolved hops and
    /// the addresses still unresolved, in order.
    pub fn resolve_all(
        &mut self,
        addrs: &BTreeSet<Addr>,
        links: &[Link],
        timeout: Duration,
    ) -> (HashMap<Addr, NextHop>, Vec<Addr>) {
        self.entries.retain(|a, _| addrs.contains(a));
        self.resolve(addrs, links, timeout);
        let mut hops = HashMap::with_capacity(addrs.len());
        let mut unresolved = Vec::new();
        for &addr in addrs {
            match self.entries.get(&addr).and_then(|e| e.hop) {
                Some(h) => {
                    hops.insert(addr, h);
                }
                None => unresolved.push(addr),
            }
        }
        (hops, unresolved)
    }

    /// What an incremental compile needs: the hops of `add` (resolved as
    /// [`NextHopCache::resolve_all`] does), with `forget` forgotten. Returns
    /// the hops found and the addresses of `add` still unresolved, in
    /// order; costs what `add` and `forget` hold, not the cache.
    pub fn resolve_changed(
        &mut self,
        add: &BTreeSet<Addr>,
        forget: &std::collections::HashSet<Addr>,
        links: &[Link],
        timeout: Duration,
    ) -> (Vec<(Addr, NextHop)>, Vec<Addr>) {
        for a in forget {
            self.entries.remove(a);
        }
        self.resolve(add, links, timeout);
        let mut found = Vec::with_capacity(add.len());
        let mut unresolved = Vec::new();
        for &addr in add {
            match self.entries.get(&addr).and_then(|e| e.hop) {
                Some(h) => found.push((addr, h)),
                None => unresolved.push(addr),
            }
        }
        (found, unresolved)
    }

    /// Resolves the addresses of `addrs` that have no hop yet: all probed
    /// at once, then waited for together up to `timeout`.
    fn resolve(&mut self, addrs: &BTreeSet<Addr>, links: &[Link], timeout: Duration) {
        let mut pending = Vec::new();
        for &addr in addrs {
            if self.entries.get(&addr).is_some_and(|e| e.hop.is_some()) {
                continue;
            }
            let e = lookup(addr, links, true);
            if e.hop.is_none() && e.target.is_some() {
                pending.push(addr);
            }
            self.entries.insert(addr, e);
        }
        let deadline = Instant::now() + timeout;
        while !pending.is_empty() && Instant::now() < deadline {
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
            pending.retain(|&addr| {
                let e = lookup(addr, links, false);
                let done = e.hop.is_some();
                self.entries.insert(addr, e);
                !done
            });
        }
    }

    /// Re-reads the backends that `changes` may concern (behind a changed
    /// neighbour; every one on a route change) and returns those whose hop
    /// moved or resolved. A backend whose neighbour is gone or failed keeps
    /// its hop.
    pub fn refresh(&mut self, changes: &Changes, links: &[Link]) -> Vec<Moved> {
        let mut moved = Vec::new();
        for (addr, e) in self.entries.iter_mut() {
            let concerned = changes.routes
                || e.target.is_none()
                || e.target.is_some_and(|t| changes.neighbours.contains(&t));
            if !concerned {
                continue;
            }
            let now = lookup(*addr, links, false);
            if let Some(new) = now.hop {
                if e.hop != Some(new) {
                    moved.push(Moved {
                        addr: *addr,
                        old: e.hop,
                        new,
                    });
                }
                *e = now;
            } else if e.hop.is_none() || now.target.is_some() && now.target != e.target {
                // Unresolved stays unresolved, but learns its target; a
                // new route whose neighbour is not known yet keeps the old
                // hop until it is.
                e.target = now.target.or(e.target);
            }
        }
        moved
    }

    /// The current hop of `addr`, if resolved.
    pub fn get(&self, addr: &Addr) -> Option<NextHop> {
        self.entries.get(addr).and_then(|e| e.hop)
    }

    /// Whether some other backend than `except` is reached through `hop`.
    pub fn hop_in_use(&self, hop: L2Hop, except: &Addr) -> bool {
        self.entries
            .iter()
            .any(|(a, e)| a != except && e.hop.is_some_and(|h| h.hop == hop))
    }
}

/// One look-up of `addr` without waiting: route, then neighbour; with
/// `probe`, a missing neighbour is asked for (one datagram to port 9, as
/// [`netlink::resolve`] does).
fn lookup(addr: Addr, links: &[Link], probe: bool) -> Entry {
    let ip = addr.to_ip();
    let route = match netlink::route_get(ip) {
        Ok(r) => r,
        Err(e) => {
            debug!(%ip, error = %e, "no route to backend yet");
            return Entry {
                hop: None,
                target: None,
            };
        }
    };
    let target = route.gateway.unwrap_or(ip);
    let mac = match netlink::neighbour(route.ifindex, target) {
        Ok(m) => m,
        Err(e) => {
            debug!(%ip, error = %e, "neighbour look-up failed");
            None
        }
    };
    let hop = match mac {
        Some(mac) => to_hop(ip, &route, mac, links)
            .map_err(|e| warn!("backend {addr}: {e}"))
            .ok(),
        None => {
            if probe {
                if let Err(e) = netlink::probe(ip, route.ifindex) {
                    debug!(%ip, error = %e, "neighbour probe datagram not sent");
                }
            }
            None
        }
    };
    Entry {
        hop,
        target: Some(target),
    }
}

/// The data path's hop from the kernel's route and neighbour: the route's
/// interface (one that sluice serves), the MAC, and the route's preferred
/// source (or the interface's first address of the family).
fn to_hop(
    ip: IpAddr,
    route: &netlink::Route,
    mac: [u8; 6],
    links: &[Link],
) -> Result<NextHop, String> {
    let Some(port) = links.iter().position(|l| l.index == route.ifindex) else {
        return Err(format!(
            "the kernel routes it via interface index {} which sluice does not serve",
            route.ifindex
        ));
    };
    let src = match route.prefsrc {
        Some(s) => s,
        None => first_address(links[port].index, ip.is_ipv4()).ok_or_else(|| {
            format!(
                "{} has no address of {ip}'s family to masquerade with",
                links[port].name
            )
        })?,
    };
    Ok(NextHop {
        hop: L2Hop {
            port: port as u8,
            mac,
        },
        snat: Addr::from(src),
    })
}

fn first_address(ifindex: u32, v4: bool) -> Option<IpAddr> {
    netlink::addresses(ifindex)
        .ok()?
        .into_iter()
        .map(|(a, _)| a)
        .find(|a| a.is_ipv4() == v4)
}

/// What the kernel reported since the last look: neighbours whose entry
/// changed (added, updated, deleted), and whether a route changed (or
/// events were lost, which counts as every route).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Neighbour addresses named by `RTM_NEWNEIGH` / `RTM_DELNEIGH`.
    pub neighbours: HashSet<IpAddr>,
    /// A route was added or removed, or the socket overflowed.
    pub routes: bool,
    /// The last `RTM_NEWLINK` state of each interface that reported one
    /// (the daemon's [`crate::links::LinkMonitor`] reads the served ones).
    pub links: std::collections::BTreeMap<u32, netlink::LinkEvent>,
}

impl Changes {
    /// Whether nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.neighbours.is_empty() && !self.routes && self.links.is_empty()
    }

    fn add(&mut self, msg: &RouteNetlinkMessage) {
        match msg {
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                if let Some(ip) = neighbour_ip(n) {
                    self.neighbours.insert(ip);
                }
            }
            RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
                self.routes = true
            }
            RouteNetlinkMessage::NewLink(l) => {
                let e = netlink::LinkEvent::of(l);
                self.links.insert(e.index, e);
            }
            _ => {}
        }
        if self.links.len() > MAX_PENDING {
            self.links.clear();
        }
        if self.neighbours.len() > MAX_PENDING {
            self.neighbours.clear();
            self.routes = true;
        }
    }

    /// Decodes one datagram of events into `self`.
    fn add_datagram(&mut self, data: &[u8]) {
        let mut off = 0;
        while off < data.len() {
            let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..]) else {
                // An event we cannot decode may be one we need.
                self.routes = true;
                return;
            };
            let len = m.header.length as usize;
            if len == 0 {
                return;
            }
            off += (len + 3) & !3;
            if let NetlinkPayload::InnerMessage(inner) = &m.payload {
                self.add(inner);
            }
        }
    }
}

fn neighbour_ip(n: &NeighbourMessage) -> Option<IpAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

/// The kernel's neighbour and route events, gathered by a task on the
/// runtime ([`Watch::open`]) and taken by the reconciler ([`Watch::next`]).
#[derive(Clone)]
pub struct Watch {
    pending: Arc<Mutex<Changes>>,
    ready: Arc<Notify>,
}

impl Watch {
    /// Subscribes to the neighbour and route groups and spawns the reading
    /// task on the current tokio runtime. Must be called inside one.
    ///
    /// # Errors
    /// [`NetlinkError::Socket`] when the socket cannot be opened,
    /// subscribed or registered with the runtime.
    pub fn open() -> Result<(Watch, tokio::task::JoinHandle<()>), NetlinkError> {
        let err = |op| move |source| NetlinkError::Socket { op, source };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(err("open"))?;
        sock.bind_auto().map_err(err("bind"))?;
        for g in [
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_ROUTE,
        ] {
            sock.add_membership(g).map_err(err("subscribe"))?;
        }
        sock.set_non_blocking(true)
            .map_err(err("set non-blocking"))?;
        // SAFETY: `sock` owns its descriptor (netlink_sys::Socket closes it
        // on drop only), moves into the AsyncFd and is never closed or
        // replaced while the AsyncFd holds it, so `as_raw_fd` names the
        // same open socket for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
            .map_err(|e| NetlinkError::Socket {
                op: "register",
                source: e.into_parts().1,
            })?;
        let w = Watch {
            pending: Arc::default(),
            ready: Arc::default(),
        };
        let task = tokio::spawn(w.clone().read(fd));
        Ok((w, task))
    }

    /// Waits for events and takes everything gathered so far. Cancel-safe.
    pub async fn next(&self) -> Changes {
        loop {
            self.ready.notified().await;
            let c = mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
            if !c.is_empty() {
                return c;
            }
        }
    }

    async fn read(self, fd: AsyncFd<Socket>) {
        loop {
            let mut guard = match fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    warn!(
                        "neighbour events: the socket failed ({e}); next hops follow compiles only"
                    );
                    return;
                }
            };
            let mut got = Changes::default();
            loop {
                match guard.try_io(|s| s.get_ref().recv_from_full()) {
                    Ok(Ok((data, _))) => got.add_datagram(&data),
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        // Events were lost: re-read everything.
                        got.routes = true;
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => {
                        warn!("neighbour events: {e}");
                        break;
                    }
                    Err(_would_block) => break,
                }
            }
            if got.is_empty() {
                continue;
            }
            {
                let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                p.routes |= got.routes;
                p.neighbours.extend(got.neighbours);
                p.links.extend(got.links);
                if p.neighbours.len() > MAX_PENDING {
                    p.neighbours.clear();
                    p.routes = true;
                }
            }
            self.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkHeader;
    use std::net::Ipv4Addr;

    fn datagram(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(m));
            msg.finalize();
            let mut buf = vec![0u8; msg.buffer_len()];
            msg.serialize(&mut buf);
            buf.resize((buf.len() + 3) & !3, 0);
            out.extend(buf);
        }
        out
    }

    #[test]
    fn neighbour_and_route_events_are_gathered() {
        let mut n = NeighbourMessage::default();
        n.header.family = netlink_packet_route::AddressFamily::Inet;
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                Ipv4Addr::new(198, 18, 1, 11),
            )));
        let mut c = Changes::default();
        c.add_datagram(&datagram(vec![RouteNetlinkMessage::NewNeighbour(
            n.clone(),
        )]));
        assert!(c
            .neighbours
            .contains(&IpAddr::V4(Ipv4Addr::new(198, 18, 1, 11))));
        assert!(!c.routes);
        c.add_datagram(&datagram(vec![
            RouteNetlinkMessage::DelNeighbour(n),
            RouteNetlinkMessage::NewRoute(Default::default()),
        ]));
        assert_eq!(c.neighbours.len(), 1);
        assert!(c.routes);
        let mut bad = Changes::default();
        bad.add_datagram(&[0xff; 20]);
        assert!(bad.routes, "an undecodable event re-reads everything");
    }

    #[test]
    fn an_event_storm_becomes_a_full_refresh() {
        let mut c = Changes::default();
        for i in 0..=MAX_PENDING as u32 {
            let mut n = NeighbourMessage::default();
            n.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    Ipv4Addr::from(0xc612_0000 + i),
                )));
            c.add(&RouteNetlinkMessage::NewNeighbour(n));
        }
        assert!(c.routes && c.neighbours.is_empty());
    }

    fn link_msg(
        index: u32,
        up: bool,
        oper: netlink_packet_route::link::State,
    ) -> RouteNetlinkMessage {
        use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
        let mut l = LinkMessage::default();
        l.header.index = index;
        if up {
            l.header.flags = LinkFlags::Up | LinkFlags::Running;
        }
        l.attributes.push(LinkAttribute::OperState(oper));
        RouteNetlinkMessage::NewLink(l)
    }

    #[test]
    fn link_events_keep_the_last_state_per_interface() {
        use netlink_packet_route::link::State;
        let mut c = Changes::default();
        c.add_datagram(&datagram(vec![
            link_msg(3, true, State::Up),
            link_msg(4, true, State::Up),
            link_msg(3, true, State::LowerLayerDown),
        ]));
        assert!(!c.is_empty() && !c.routes);
        assert!(!c.links[&3].up, "carrier lost: down");
        assert!(c.links[&4].up);
        c.add_datagram(&datagram(vec![link_msg(4, false, State::Down)]));
        assert!(!c.links[&4].up, "admin down");
        // Unknown operational state (drivers without one): IFF_RUNNING.
        c.add_datagram(&datagram(vec![link_msg(5, true, State::Unknown)]));
        assert!(c.links[&5].up);
    }
}
