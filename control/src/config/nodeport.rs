//! Node-port bookkeeping: explicit claims and deterministic allocation.
//!
//! The API server allocates a `nodePort` (and a `healthCheckNodePort`)
//! when a Service is created and writes it into the object, so a dump of a
//! real cluster always carries them. A hand-written file often does not:
//! Sluice then allocates one itself, and must give the same port on every
//! reload and on every host that loads the same file (clients and load
//! balancers are configured with it). So allocation is a pure function of
//! the objects: the port starts at a hash (FNV-1a, stable across Rust
//! releases, unlike `DefaultHasher`) of `namespace/name/portname` in the
//! range, and probes upwards (wrapping) for a free one. Explicit ports are
//! all claimed before any allocation, so an allocated port never takes one
//! a later object asks for; adding a Service only moves another's
//! allocated port when their probe sequences meet.
//!
//! Claims are keyed by (port, protocol): two Services may use the same
//! number for TCP and UDP (the brief's rule, and what the data path can
//! tell apart; the API server's allocator refuses that across Services,
//! within one Service it allows it). Allocation picks a number no claim
//! uses for any protocol, as the API server's allocator does.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_dataplane::types::proto;

use super::compile::{proto_name, Ctx, Svc};
use super::ConfigError;

/// The claims on node ports, and who made each.
pub(super) struct NodePorts {
    lo: u16,
    hi: u16,
    /// (port, protocol) → who claimed it (for the error naming both).
    used: BTreeMap<(u16, u8), String>,
}

impl NodePorts {
    /// An empty table for the inclusive range `lo..=hi` (`lo <= hi`).
    pub(super) fn new((lo, hi): (u16, u16)) -> NodePorts {
        NodePorts {
            lo,
            hi,
            used: BTreeMap::new(),
        }
    }

    /// Claims `port` for `proto` on behalf of `owner`.
    ///
    /// # Errors
    /// The owner of an earlier claim of the same port and protocol.
    pub(super) fn claim(&mut self, port: u16, proto: u8, owner: String) -> Result<(), &str> {
        match self.used.entry((port, proto)) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(owner);
                Ok(())
            }
            std::collections::btree_map::Entry::Occupied(o) => Err(o.into_mut().as_str()),
        }
    }

    /// Allocates and claims a port free for every protocol, starting at the
    /// hash of `key`; `None` when the range is full.
    pub(super) fn allocate(&mut self, key: &str, proto: u8, owner: String) -> Option<u16> {
        let size = u32::from(self.hi) - u32::from(self.lo) + 1;
        let start = (fnv1a(key.as_bytes()) % u64::from(size)) as u32;
        for i in 0..size {
            let port = (u32::from(self.lo) + (start + i) % size) as u16;
            if self
                .used
                .range((port, 0)..=(port, u8::MAX))
                .next()
                .is_none()
            {
                self.used.insert((port, proto), owner);
                return Some(port);
            }
        }
        None
    }
}

/// What one Service asks of the node-port table: its explicit ports and
/// which ports it wants allocated. Two Services with equal requests get
/// equal answers from [`assign_node_ports`] for the same other requests,
/// so a change that leaves every request as it was leaves every
/// assignment as it was (the incremental compile relies on it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePortReq {
    ctx: Ctx,
    ns: String,
    name: String,
    /// Per `spec.ports` entry: name, protocol, port, explicit `nodePort`.
    ports: Vec<(String, u8, u16, Option<u16>)>,
    allocate: bool,
    health_check: Option<u16>,
    needs_health_check: bool,
}

impl NodePortReq {
    /// The request of a checked Service.
    pub(super) fn of(svc: &Svc) -> NodePortReq {
        NodePortReq {
            ctx: svc.ctx.clone(),
            ns: svc.ns.clone(),
            name: svc.name.clone(),
            ports: svc
                .ports
                .iter()
                .map(|p| (p.name.clone(), p.proto, p.port, p.node_port))
                .collect(),
            allocate: svc.allocate_node_ports,
            health_check: svc.health_check_node_port,
            needs_health_check: svc.needs_health_check,
        }
    }

    /// Whether it asks nothing (a ClusterIP Service): its answer is "no
    /// node port" whatever the others ask, and it changes no other's.
    pub fn is_empty(&self) -> bool {
        self.health_check.is_none()
            && !self.needs_health_check
            && self.ports.iter().all(|p| p.3.is_none() && !self.allocate)
    }

    /// The answer to a request that [`NodePortReq::is_empty`].
    pub fn none(&self) -> Assigned {
        Assigned {
            node_ports: vec![None; self.ports.len()],
            health_check: None,
        }
    }

    fn owner(&self, field: &str) -> String {
        format!(
            "Service {}/{} ({field}, line {})",
            self.ns, self.name, self.ctx.line
        )
    }

    fn err(&self, origin: &Arc<str>, field: &str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            origin: origin.clone(),
            line: self.ctx.line,
            kind: self.ctx.kind.to_owned(),
            object: self.ctx.object.clone(),
            field: format!("{}{field}", self.ctx.prefix),
            reason,
        }
    }
}

/// The node ports a Service ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    /// Per `spec.ports` entry.
    pub(super) node_ports: Vec<Option<u16>>,
    pub(super) health_check: Option<u16>,
}

/// Claims every explicit node port, then allocates the missing ones in
/// request order (the Services' order in the config).
///
/// # Errors
/// [`ConfigError::Invalid`] naming the Service and field of a port claimed
/// twice, or one that found the range full.
pub fn assign_node_ports<'r>(
    origin: &Arc<str>,
    range: (u16, u16),
    reqs: impl IntoIterator<Item = &'r NodePortReq> + Clone,
) -> Result<Vec<Assigned>, ConfigError> {
    let mut table = NodePorts::new(range);
    let mut out = Vec::new();
    for r in reqs.clone() {
        for (j, p) in r.ports.iter().enumerate() {
            if let Some(np) = p.3 {
                let field = format!("spec.ports[{j}].nodePort");
                if let Err(other) = table.claim(np, p.1, r.owner(&field)) {
                    return Err(r.err(
                        origin,
                        &field,
                        format!("{np}/{} is already used by {other}", proto_name(p.1)),
                    ));
                }
            }
        }
        if let Some(hc) = r.health_check {
            let field = "spec.healthCheckNodePort";
            if let Err(other) = table.claim(hc, proto::TCP, r.owner(field)) {
                return Err(r.err(
                    origin,
                    field,
                    format!("{hc}/TCP is already used by {other}"),
                ));
            }
        }
        out.push(Assigned {
            node_ports: r.ports.iter().map(|p| p.3).collect(),
            health_check: r.health_check,
        });
    }
    let (lo, hi) = range;
    let full = |r: &NodePortReq, field: &str| {
        r.err(
            origin,
            field,
            format!("no free port left in the node-port range {lo}-{hi}"),
        )
    };
    for (r, a) in reqs.into_iter().zip(&mut out) {
        if r.allocate {
            for (j, p) in r.ports.iter().enumerate() {
                if a.node_ports[j].is_some() {
                    continue;
                }
                let field = format!("spec.ports[{j}].nodePort");
                // As the API server: ports sharing a number (TCP and
                // UDP 53) share one node port.
                let sibling = r
                    .ports
                    .iter()
                    .zip(&a.node_ports)
                    .find(|(q, np)| q.2 == p.2 && np.is_some())
                    .and_then(|(_, np)| *np);
                let np = match sibling {
                    Some(np) => {
                        if let Err(other) = table.claim(np, p.1, r.owner(&field)) {
                            return Err(r.err(
                                origin,
                                &field,
                                format!(
                                    "{np}/{} (shared with the port's other protocol) is already used by {other}",
                                    proto_name(p.1)
                                ),
                            ));
                        }
                        np
                    }
                    None => table
                        .allocate(
                            &format!("{}/{}/{}", r.ns, r.name, p.0),
                            p.1,
                            r.owner(&field),
                        )
                        .ok_or_else(|| full(r, &field))?,
                };
                a.node_ports[j] = Some(np);
            }
        }
        if r.needs_health_check && a.health_check.is_none() {
            let field = "spec.healthCheckNodePort";
            let key = format!("{}/{}/healthCheckNodePort", r.ns, r.name);
            a.health_check = Some(
                table
                    .allocate(&key, proto::TCP, r.owner(field))
                    .ok_or_else(|| full(r, field))?,
            );
        }
    }
    Ok(out)
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn allocation_is_deterministic_and_avoids_claims() {
        let mut a = NodePorts::new((30000, 30009));
        let mut b = NodePorts::new((30000, 30009));
        let pa = a.allocate("default/web/http", 6, "x".into()).unwrap();
        let pb = b.allocate("default/web/http", 6, "x".into()).unwrap();
        assert_eq!(pa, pb);
        // A claim on the hashed port (any protocol) pushes the next one up.
        let mut c = NodePorts::new((30000, 30009));
        c.claim(pa, 17, "udp".into()).unwrap();
        let pc = c.allocate("default/web/http", 6, "x".into()).unwrap();
        assert_eq!(pc, if pa == 30009 { 30000 } else { pa + 1 });
        // Same port, other protocol: allowed; same protocol: refused.
        assert!(c.claim(pa, 6, "tcp".into()).is_ok());
        assert_eq!(c.claim(pa, 6, "again".into()), Err("tcp"));
    }

    #[test]
    fn full_range_is_none() {
        let mut t = NodePorts::new((30000, 30001));
        assert!(t.allocate("a", 6, "a".into()).is_some());
        assert!(t.allocate("b", 6, "b".into()).is_some());
        assert_eq!(t.allocate("c", 6, "c".into()), None);
    }
}
