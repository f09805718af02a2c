//! `--service-cidr CIDR[,CIDR...]`: the cluster's service ranges, and the
//! follower that keeps the programs' `service_ranges` tries in step with
//! the published table.
//!
//! kube-proxy's nftables mode drops a new connection to an address inside
//! a service range that no Service owns, and rejects one to a ClusterIP on
//! a port no Service has (chain `cluster-ips-check`, on forwarded traffic
//! and on the node's own output; the rules and the trie's layout are in
//! [`sluice_dataplane::steer::ranges`]). Without the flag such packets are
//! routed on by the kernel, as before. Sluice does both in the steering
//! XDP program and the workers (module doc of [`sluice_dataplane::steer`],
//! "Service ranges": the drop in XDP, the reject in the workers), and, for
//! the node's own sockets with `--host-traffic on`, in the cgroup programs
//! (`dataplane/bpf/host_sock.c`: `ECONNREFUSED` and `EPERM`).
//!
//! The ClusterIP entries follow the table: [`cluster_ips`] is the pure
//! decision (every ClusterIP front end's address inside a range), and a
//! thread polls the published snapshot, as the host-traffic one does, and
//! writes the difference into every trie ([`ServiceRanges`]) within a few
//! milliseconds of a publish. Meanwhile a new ClusterIP's other ports are
//! dropped (kube-proxy drops them too until its sync) and a removed one's
//! are rejected. A ClusterIP outside every range is still served (its
//! front ends are exact matches, looked up first) and logged once as a
//! warning, as kube-proxy does not refuse it either; its other ports are
//! left to the kernel.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_dataplane::pipeline::Snapshot;
use sluice_dataplane::service::{ServiceTable, VipKind};
use sluice_dataplane::steer::ranges::{entries, RangeMap};
use sluice_dataplane::types::{Addr, Cidr};
use sluice_dataplane::worker::Shared;
use tracing::{info, warn};

/// How often the published snapshot is checked for a change.
pub const POLL: Duration = Duration::from_millis(5);

/// The service ranges of `--service-cidr` (at least one prefix, each given
/// by its first address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCidrs(Vec<Cidr>);

/// Why a `--service-cidr` value or range is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceCidrError {
    /// The value is empty.
    #[error("expected CIDR[,CIDR...], e.g. 10.96.0.0/12,fd00:10:96::/112")]
    Empty,
    /// An item between commas is empty.
    #[error("{value:?}: item {index} is empty")]
    EmptyItem {
        /// The whole value.
        value: String,
        /// Index of the empty item.
        index: usize,
    },
    /// An item is not a prefix (the cause names it).
    #[error("{cause}")]
    BadCidr {
        /// The item.
        item: String,
        /// Why it does not parse.
        cause: String,
    },
    /// An item has bits set past its prefix length (likely a typo).
    #[error("{item:?} has host bits set: the range is {network}")]
    HostBits {
        /// The item.
        item: String,
        /// The prefix it names.
        network: String,
    },
    /// A range holds one of this node's addresses: its traffic would be
    /// dropped.
    #[error("--service-cidr {range} holds {addr}, an address of this node: its own traffic would be dropped")]
    HoldsNodeAddress {
        /// The range.
        range: String,
        /// The node's address.
        addr: IpAddr,
    },
}

impl FromStr for ServiceCidrs {
    type Err = ServiceCidrError;

    /// Comma-separated prefixes of either family (spaces around items are
    /// ignored).
    fn from_str(s: &str) -> Result<ServiceCidrs, ServiceCidrError> {
        if s.trim().is_empty() {
            return Err(ServiceCidrError::Empty);
        }
        let mut out = Vec::new();
        for (index, item) in s.split(',').map(str::trim).enumerate() {
            if item.is_empty() {
                return Err(ServiceCidrError::EmptyItem {
                    value: s.into(),
                    index,
                });
            }
            let c: Cidr = item.parse().map_err(|cause| ServiceCidrError::BadCidr {
                item: item.into(),
                cause,
            })?;
            let given = item
                .split_once('/')
                .and_then(|(a, _)| a.parse::<IpAddr>().ok());
            if given.is_some_and(|a| Addr::from(a) != c.network()) {
                let len = item.rsplit('/').next().unwrap_or("");
                return Err(ServiceCidrError::HostBits {
                    item: item.into(),
                    network: format!("{}/{len}", c.network()),
                });
            }
            out.push(c);
        }
        Ok(ServiceCidrs(out))
    }
}

impl fmt::Display for ServiceCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(Cidr::to_string).collect();
        f.write_str(&items.join(","))
    }
}

impl ServiceCidrs {
    /// The prefixes.
    pub fn cidrs(&self) -> &[Cidr] {
        &self.0
    }

    /// Several `--service-cidr` occurrences as one set.
    pub fn merge(all: Vec<ServiceCidrs>) -> Option<ServiceCidrs> {
        let v: Vec<Cidr> = all.into_iter().flat_map(|s| s.0).collect();
        (!v.is_empty()).then_some(ServiceCidrs(v))
    }

    /// Refuses a range that holds one of the node's addresses: the node's
    /// own traffic must never be dropped as an unowned service address.
    ///
    /// # Errors
    /// [`ServiceCidrError::HoldsNodeAddress`].
    pub fn check_node(&self, node_addrs: &[IpAddr]) -> Result<(), ServiceCidrError> {
        for c in &self.0 {
            if let Some(a) = node_addrs.iter().find(|a| c.contains(&Addr::from(**a))) {
                return Err(ServiceCidrError::HoldsNodeAddress {
                    range: c.to_string(),
                    addr: *a,
                });
            }
        }
        Ok(())
    }
}

/// The ClusterIPs of `table`: those inside a range (the trie's reject
/// entries), and the services whose ClusterIP lies outside every range
/// (name, address), for the warning.
pub fn cluster_ips(table: &ServiceTable, cidrs: &[Cidr]) -> (Vec<Addr>, Vec<(String, Addr)>) {
    let mut inside = BTreeSet::new();
    let mut outside = Vec::new();
    for s in table.services() {
        if s.spec.kind != VipKind::ClusterIp {
            continue;
        }
        let a = s.spec.vip.addr;
        if cidrs.iter().any(|c| c.contains(&a)) {
            inside.insert(a);
        } else {
            outside.push((s.spec.name.clone(), a));
        }
    }
    (inside.into_iter().collect(), outside)
}

/// The tries of the programs (one per served interface, and the node
/// programs' with `--host-traffic on`) and what they are kept to.
pub struct ServiceRanges {
    cidrs: Vec<Cidr>,
    maps: Vec<(String, RangeMap)>,
    /// ClusterIPs already warned about (once each).
    warned: HashSet<Addr>,
}

impl ServiceRanges {
    /// The follower's state, with no trie yet ([`ServiceRanges::add`]).
    pub fn new(cidrs: &ServiceCidrs) -> ServiceRanges {
        ServiceRanges {
            cidrs: cidrs.0.clone(),
            maps: Vec::new(),
            warned: HashSet::new(),
        }
    }

    /// Adds a program's trie (named for the logs) and fills it from `snap`.
    pub fn add(&mut self, name: &str, map: RangeMap, snap: &Snapshot) {
        self.maps.push((name.to_string(), map));
        self.sync(snap);
    }

    /// Makes every trie hold the ranges and `snap`'s ClusterIPs in them.
    pub fn sync(&mut self, snap: &Snapshot) {
        let (inside, outside) = cluster_ips(&snap.services, &self.cidrs);
        for (name, a) in outside {
            if self.warned.insert(a) {
                warn!("service {name}: ClusterIP {a} is outside every --service-cidr; served anyway, its other ports are left to the kernel");
            }
        }
        let want = entries(&self.cidrs, &inside);
        for (name, m) in &mut self.maps {
            if let Err((op, e)) = m.sync(&want) {
                warn!("service ranges ({name}): {op}: {e}");
            }
        }
    }

    /// Starts the thread that follows every later snapshot.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn spawn(mut self, shared: Arc<Shared>) -> std::io::Result<RangeFollower> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        info!(
            "service ranges {}: {} tries",
            self.cidrs
                .iter()
                .map(Cidr::to_string)
                .collect::<Vec<_>>()
                .join(","),
            self.maps.len()
        );
        let thread = std::thread::Builder::new()
            .name("service-ranges".into())
            .spawn(move || {
                let mut last = shared.snapshot.load_full();
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    let now = shared.snapshot.load_full();
                    if !Arc::ptr_eq(&now, &last) {
                        self.sync(&now);
                        last = now;
                    }
                }
            })?;
        Ok(RangeFollower {
            stop,
            thread: Some(thread),
        })
    }
}

/// The running follower; stopped when dropped.
pub struct RangeFollower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RangeFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataplane::service::{ServiceSpec, VipKey};
    use sluice_dataplane::types::proto;

    fn parse(s: &str) -> Result<ServiceCidrs, ServiceCidrError> {
        s.parse()
    }

    #[test]
    fn parses_both_families_and_lists() {
        let c = parse("198.18.96.0/20, 2001:db8:96::/112").unwrap();
        assert_eq!(c.cidrs().len(), 2);
        assert_eq!(c.to_string(), "198.18.96.0/20,2001:db8:96::/112");
        let m = ServiceCidrs::merge(vec![parse("198.18.96.0/20").unwrap(), c]).unwrap();
        assert_eq!(m.cidrs().len(), 3);
        assert_eq!(ServiceCidrs::merge(vec![]), None);
    }

    #[test]
    fn refuses_malformed_values_clearly() {
        assert_eq!(parse(""), Err(ServiceCidrError::Empty));
        assert!(matches!(
            parse("198.18.96.0/20,"),
            Err(ServiceCidrError::EmptyItem { index: 1, .. })
        ));
        let e = parse("198.18.96.0").unwrap_err();
        assert!(e.to_string().contains("expected ADDRESS/LENGTH"), "{e}");
        let e = parse("198.18.96.0/33").unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
        let e = parse("nonsense/12").unwrap_err();
        assert!(e.to_string().contains("not an IP address"), "{e}");
        let e = parse("198.18.96.1/20").unwrap_err();
        assert_eq!(
            e,
            ServiceCidrError::HostBits {
                item: "198.18.96.1/20".into(),
                network: "198.18.96.0/20".into()
            }
        );
        assert!(parse("2001:db8:96::1/112").is_err());
    }

    #[test]
    fn a_range_holding_a_node_address_is_refused() {
        let c = parse("198.18.0.0/16").unwrap();
        let node: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(
            c.check_node(&[node]),
            Err(ServiceCidrError::HoldsNodeAddress {
                range: "198.18.0.0/16".into(),
                addr: node
            })
        );
        let c = parse("198.18.96.0/20").unwrap();
        assert_eq!(c.check_node(&[node]), Ok(()));
    }

    fn spec(name: &str, addr: Addr, port: u16, kind: VipKind) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            vip: VipKey {
                addr,
                port,
                proto: proto::TCP,
            },
            kind,
            ..ServiceSpec::default()
        }
    }

    #[test]
    fn cluster_ips_are_the_clusterip_front_ends_inside_a_range() {
        let cidrs = parse("198.18.96.0/20,2001:db8:96::/112").unwrap();
        let inside = Addr::from_v4([198, 18, 96, 10]);
        let v6 = Addr::from("2001:db8:96::a".parse::<IpAddr>().unwrap());
        let outside = Addr::from_v4([198, 18, 120, 10]);
        let node = Addr::from_v4([198, 18, 0, 1]);
        let table = ServiceTable::build(
            1,
            vec![
                spec("web:80", inside, 80, VipKind::ClusterIp),
                spec("web:443", inside, 443, VipKind::ClusterIp),
                spec("v6:80", v6, 80, VipKind::ClusterIp),
                spec("old:80", outside, 80, VipKind::ClusterIp),
                spec("np", node, 30080, VipKind::NodePort),
                spec(
                    "lb",
                    Addr::from_v4([198, 18, 96, 20]),
                    80,
                    VipKind::LoadBalancer,
                ),
            ],
        )
        .unwrap();
        let (ips, out) = cluster_ips(&table, cidrs.cidrs());
        // Once each; NodePorts and LoadBalancer IPs are never rejected by
        // address (kube-proxy's cluster-ips set holds ClusterIPs only).
        assert_eq!(ips, vec![inside, v6]);
        assert_eq!(out, vec![("old:80".to_string(), outside)]);
    }
}
