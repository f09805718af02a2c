//! Flows re-attached from a flow-state file
//! ([`crate::flow_table::state_file`]), bound to the first service table of
//! the new process.
//!
//! A flow record names its service by slot and its backend by id
//! ([`crate::service::ids`]). Those numbers are stable only within one
//! process: a new one builds its first table from scratch, and after
//! reloads the old one may have numbered differently. So the numbers are
//! not trusted across a restart; each flow is *rebound* by what the record
//! itself says about where it goes, before the first packet:
//!
//! * the **service** is the one that serves the flow's front end (the
//!   original key's destination address, port and protocol), or the
//!   ClusterIP front end that one short-circuits pods to
//!   ([`crate::service::ServiceSpec::short_circuit`]);
//! * the **backend**, for NAT and FULLNAT flows, is the one whose address
//!   and port are the reply key's source (what the backend answers from);
//!   for DR and IPIP flows (whose keys are both client ↔ VIP) it is the
//!   one whose next hop is the flow's recorded next hop (egress and MAC),
//!   what the packets are sent to.
//!
//! A flow whose service or backend is not in the new table is removed and
//! counted, as a flow of a backend removed by a reload is. The same walk
//! records session affinity: a client with a re-attached flow to a
//! backend of an affinity service keeps that backend for its new
//! connections (the affinity table itself is not in the file; its entries
//! restart their timeout at the restart).
//!
//! SNAT ports need nothing: a port is taken exactly when a flow's reply
//! key holds it ([`crate::snat`] probes the flow table), so a re-attached
//! masqueraded flow keeps its port from new flows by being indexed.

use crate::affinity::{masked_client, AffinityTable};
use crate::flow_table::{FlowEntry, FlowTable};
use crate::pipeline::{is_dr_flow, Snapshot};
use crate::service::{Service, VipKey};

/// What [`rebind`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rebound {
    /// Flows bound to a service and backend of the table.
    pub kept: usize,
    /// Flows removed: no service serves their front end.
    pub no_service: usize,
    /// Flows removed: their service has no such backend any more.
    pub no_backend: usize,
    /// Affinity entries recorded for re-attached flows.
    pub affinity: usize,
}

/// Rebinds every flow of `flows` to `snap` (module docs) and records the
/// affinity of the kept ones at `now`. Call once, before the workers
/// start.
pub fn rebind(snap: &Snapshot, flows: &FlowTable, affinity: &AffinityTable, now: u32) -> Rebound {
    let mut r = Rebound::default();
    let (kept, _) = flows.rebind(|e| {
        let front = VipKey {
            addr: e.original.dst,
            port: e.original.dport,
            proto: e.original.proto,
        };
        let Some((idx, svc)) = snap.services.lookup(&front) else {
            r.no_service += 1;
            return None;
        };
        let short = svc
            .spec
            .short_circuit
            .as_ref()
            .and_then(|v| snap.services.lookup(v));
        for (i, s) in std::iter::once((idx, svc)).chain(short) {
            if let Some(pos) = backend_of(snap, s, e) {
                if let Some(_timeout) = s.spec.affinity_timeout {
                    let client = masked_client(&e.original.src, s.spec.affinity_prefix);
                    affinity.record(&client, s.affinity_id, s.backend_hashes[pos], now);
                    r.affinity += 1;
                }
                return Some((i, s.backend_id(pos)));
            }
        }
        r.no_backend += 1;
        None
    });
    r.kept = kept;
    r
}

/// The position in `svc` of the backend flow `e` goes to.
fn backend_of(snap: &Snapshot, svc: &Service, e: &FlowEntry) -> Option<usize> {
    let backends = &svc.spec.backends;
    if is_dr_flow(e) {
        let hop = snap.current_hop(e.orig_hop);
        backends
            .iter()
            .position(|b| snap.nexthops.get(&b.addr).is_some_and(|nh| nh.hop == hop))
    } else {
        backends
            .iter()
            .position(|b| b.addr == e.reply.src && b.port == e.reply.sport)
    }
}
