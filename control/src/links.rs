//! The served interfaces going down and up, and their queue count changing,
//! followed while sluice runs.
//!
//! Measured on veth (kernel 6.18, `tests/tests/faults.rs`): a link set down
//! and up again, on the LB's side or its peer's, keeps its AF_XDP sockets
//! bound (the kernel unbinds them only when the device is unregistered) and
//! its XDP program attached, and the workers neither spin nor fail while it
//! is down (`poll` just sees no frames; a TX kick on a down link fails and
//! is not retried). So nothing has to be re-created: traffic resumes with
//! the carrier, and TCP retransmits what the flap lost. What this module
//! adds is that the daemon knows: it follows the `RTM_NEWLINK` events of the
//! served links ([`crate::nexthop::Watch`] subscribes to `RTNLGRP_LINK`),
//! logs each transition, counts it (`link_down`, `link_up`), and warns when
//! a link comes back without the steering program (someone detached it:
//! `xdp_lost`), which only a restart re-attaches today.
//!
//! A queue count change (`ethtool -L`) sends no rtnetlink event, so the
//! daemon compares `/sys/class/net/NAME/queues` with the bound queues on its
//! retry timer ([`LinkMonitor::check_queues`]). The kernel refuses to shrink
//! the queues below a bound AF_XDP socket ("requested channel counts are
//! too low for existing zerocopy AF_XDP sockets", also in copy mode), so
//! only growth can happen while sluice runs; frames on a new queue have no
//! socket and go to the kernel's stack until a restart binds them, and the
//! daemon says so (`queues_changed`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::{info, warn};

use crate::netlink::{Link, LinkEvent};

/// Counters of link events on the served interfaces.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// A served link went from up to down.
    pub link_down: AtomicU64,
    /// A served link came back up.
    pub link_up: AtomicU64,
    /// A served link came up without the steering program attached.
    pub xdp_lost: AtomicU64,
    /// A served link's receive queue count changed from the bound one.
    pub queues_changed: AtomicU64,
}

impl LinkStats {
    /// Name and value of each counter, for the stop report.
    pub fn named(&self) -> [(&'static str, u64); 4] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("link_down", g(&self.link_down)),
            ("link_up", g(&self.link_up)),
            ("xdp_lost", g(&self.xdp_lost)),
            ("queues_changed", g(&self.queues_changed)),
        ]
    }
}

#[derive(Debug)]
struct Served {
    name: String,
    index: u32,
    up: bool,
    /// Queues the sockets are bound to.
    bound: u32,
    /// The count last seen (to warn once per change).
    seen: u32,
}

/// The state of each served link, updated from kernel events.
#[derive(Debug)]
pub struct LinkMonitor {
    served: Vec<Served>,
    stats: Arc<LinkStats>,
}

impl LinkMonitor {
    /// Follows `links` (all up and bound to `rx_queues` queues at start).
    pub fn new(links: &[Link], stats: Arc<LinkStats>) -> LinkMonitor {
        let served = links
            .iter()
            .map(|l| Served {
                name: l.name.clone(),
                index: l.index,
                up: true,
                bound: l.rx_queues.max(1),
                seen: l.rx_queues.max(1),
            })
            .collect();
        LinkMonitor { served, stats }
    }

    /// Takes the latest state of the links that reported one; counts and
    /// logs each change of a served link.
    pub fn observe(&mut self, events: &BTreeMap<u32, LinkEvent>) {
        for s in &mut self.served {
            let Some(e) = events.get(&s.index) else {
                continue;
            };
            if e.up != s.up {
                s.up = e.up;
                if e.up {
                    self.stats.link_up.fetch_add(1, Ordering::Relaxed);
                    info!(ifname = %s.name, "link up: serving again on the same AF_XDP sockets");
                } else {
                    self.stats.link_down.fetch_add(1, Ordering::Relaxed);
                    warn!(ifname = %s.name, "link down: no traffic until it comes back");
                }
                if e.up && e.xdp == Some(false) {
                    self.stats.xdp_lost.fetch_add(1, Ordering::Relaxed);
                    warn!(ifname = %s.name, "link up without the steering XDP program (detached by someone else): traffic goes to the kernel until sluice restarts");
                }
            }
        }
    }

    /// Compares each link's receive queue count (`queues(name)`, e.g.
    /// from sysfs) with the bound one; counts and warns once per change.
    pub fn check_queues(&mut self, queues: impl Fn(&str) -> Option<u32>) {
        for s in &mut self.served {
            let Some(n) = queues(&s.name) else {
                continue;
            };
            if n == s.seen {
                continue;
            }
            s.seen = n;
            self.stats.queues_changed.fetch_add(1, Ordering::Relaxed);
            if n > s.bound {
                warn!(ifname = %s.name, bound = s.bound, now = n, "receive queues grew: frames on queues {}..{} have no AF_XDP socket and reach the kernel until sluice restarts", s.bound, n);
            } else {
                info!(ifname = %s.name, bound = s.bound, now = n, "receive queue count changed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, index: u32, q: u32) -> Link {
        Link {
            name: name.into(),
            index,
            mac: [2, 0, 0, 0, 0, index as u8],
            mtu: 1500,
            rx_queues: q,
        }
    }

    fn ev(index: u32, up: bool, xdp: Option<bool>) -> BTreeMap<u32, LinkEvent> {
        [(index, LinkEvent { index, up, xdp })].into()
    }

    #[test]
    fn transitions_of_served_links_are_counted_once() {
        let stats = Arc::new(LinkStats::default());
        let mut m = LinkMonitor::new(&[link("front", 3, 2), link("back", 4, 2)], stats.clone());
        // Up while up (an MTU change, say): nothing.
        m.observe(&ev(3, true, Some(true)));
        // Down twice (admin down, then no carrier): one transition.
        m.observe(&ev(3, false, None));
        m.observe(&ev(3, false, None));
        // A link sluice does not serve: ignored.
        m.observe(&ev(9, false, None));
        m.observe(&ev(3, true, Some(true)));
        let c: BTreeMap<_, _> = stats.named().into_iter().collect();
        assert_eq!(c["link_down"], 1);
        assert_eq!(c["link_up"], 1);
        assert_eq!(c["xdp_lost"], 0);
        // Back without its program.
        m.observe(&ev(4, false, None));
        m.observe(&ev(4, true, Some(false)));
        let c: BTreeMap<_, _> = stats.named().into_iter().collect();
        assert_eq!((c["link_down"], c["link_up"], c["xdp_lost"]), (2, 2, 1));
    }

    #[test]
    fn queue_changes_are_counted_once_each() {
        let stats = Arc::new(LinkStats::default());
        let mut m = LinkMonitor::new(&[link("front", 3, 2)], stats.clone());
        m.check_queues(|_| Some(2));
        m.check_queues(|_| None);
        assert_eq!(stats.queues_changed.load(Ordering::Relaxed), 0);
        m.check_queues(|_| Some(4));
        m.check_queues(|_| Some(4));
        assert_eq!(stats.queues_changed.load(Ordering::Relaxed), 1);
        m.check_queues(|_| Some(2));
        assert_eq!(stats.queues_changed.load(Ordering::Relaxed), 2);
    }
}
