//! What the node's own sockets get, per front end: pure, from the data
//! path's service table (tested without a kernel).
//!
//! kube-proxy's rules for traffic the node sends (its `OUTPUT` chain
//! jumping to `KUBE-SERVICES`), as this planner applies them:
//!
//! * ClusterIP: the front end's endpoints as the data path has them (with
//!   `internalTrafficPolicy: Local`, the local ones: kube-proxy's internal
//!   chain applies to the node too).
//! * NodePort, externalIP, LoadBalancer IP with `externalTrafficPolicy:
//!   Local`: *every* endpoint. kube-proxy's `KUBE-EXT-*` chain sends
//!   `--src-type LOCAL` traffic to the cluster-policy chain (and masquerades
//!   it) before the local-only rule, so a node reaches a Local service even
//!   without a local endpoint. The endpoints are the ClusterIP front end's
//!   ([`ServiceSpec::short_circuit`]), which the compiler lists in full.
//! * `loadBalancerSourceRanges`: the node is admitted when a range holds
//!   one of its addresses (kube-proxy's allowFromNode); otherwise the
//!   front end is left out (the kernel routes the address as without
//!   Sluice).
//! * No usable endpoint: refused at once (`ECONNREFUSED`, kube-proxy's
//!   REJECT). A front end that only drops (a `Local` one Sluice cannot
//!   serve, an unowned externalIP) is left out.
//! * NodePorts on `127.0.0.1` (kube-proxy's iptables mode, `route_localnet`;
//!   IPv4 only, never `::1`) when `--nodeport-addresses` selects loopback
//!   (unset: every address).
//!
//! The backend order: the sequence of choices the service's own scheduler
//! makes for consecutive new flows from the node (`sched::pick` on a
//! private copy of the service, each choice counted as a new connection so
//! that `lc`, `wlc`, `sed`, `nq` rotate as they would), at most
//! [`MAX_SLOTS`] long; the program walks it with a cursor. So `rr` and
//! `wrr` give the data path's rotation, the hashing schedulers (`sh`, `dh`,
//! `mh`) the node's one backend (the client address hashed is the
//! unspecified address: at connect time the source is not chosen yet).

use std::collections::HashMap;

use sluice_dataplane::host_sock::{backend_val, front_key, FrontEntry, FrontKey, MAX_SLOTS};
use sluice_dataplane::sched;
use sluice_dataplane::service::{ServiceSpec, ServiceTable, VipKey, VipKind, WhenEmpty};
use sluice_dataplane::types::{Addr, FlowKey};

/// What the plan depends on besides the table.
#[derive(Clone, Debug, Default)]
pub struct PlanOpts {
    /// The host's addresses (for `loadBalancerSourceRanges`).
    pub host_addrs: Vec<Addr>,
    /// Whether NodePorts answer on `127.0.0.1` too.
    pub localhost_nodeports: bool,
    /// Load the programs with the service-range rule (`--service-cidr`):
    /// not a plan input, how the programs are loaded.
    pub service_ranges: bool,
}

/// The front ends the node's sockets are redirected for.
pub fn plan(table: &ServiceTable, opts: &PlanOpts) -> HashMap<FrontKey, FrontEntry> {
    let mut out = HashMap::new();
    for svc in table.services() {
        let Some(entry) = entry_for(table, &svc.spec, opts) else {
            continue;
        };
        let vip = svc.spec.vip;
        if opts.localhost_nodeports && svc.spec.kind == VipKind::NodePort && vip.addr.is_v4() {
            out.entry(front_key(
                Addr::from_v4([127, 0, 0, 1]),
                vip.port,
                vip.proto,
            ))
            .or_insert_with(|| entry.clone());
        }
        out.insert(front_key(vip.addr, vip.port, vip.proto), entry);
    }
    out
}

/// The entry of one front end, None when the node's traffic to it is left
/// to the kernel.
fn entry_for(table: &ServiceTable, spec: &ServiceSpec, opts: &PlanOpts) -> Option<FrontEntry> {
    if !spec.source_ranges.is_empty()
        && !opts
            .host_addrs
            .iter()
            .any(|a| spec.source_ranges.iter().any(|r| r.contains(a)))
    {
        return None;
    }
    let mut spec = spec.clone();
    if spec.kind != VipKind::ClusterIp {
        if let Some((_, cluster)) = spec.short_circuit.and_then(|k| table.lookup(&k)) {
            spec.backends = cluster.spec.backends.clone();
            spec.when_empty = WhenEmpty::Reject;
        }
    }
    let slots = schedule(&spec);
    if slots.is_empty() {
        return (spec.when_empty == WhenEmpty::Reject).then(|| FrontEntry {
            slots: Vec::new(),
            reject: true,
            affinity_ns: 0,
        });
    }
    Some(FrontEntry {
        slots,
        reject: false,
        affinity_ns: spec
            .affinity_timeout
            .map_or(0, |s| u64::from(s) * 1_000_000_000),
    })
}

/// The scheduler's choices for consecutive new flows from the node.
fn schedule(spec: &ServiceSpec) -> Vec<[u8; 20]> {
    let vip: VipKey = spec.vip;
    let Ok(private) = ServiceTable::build(0, vec![spec.clone()]) else {
        return Vec::new();
    };
    let Some((_, svc)) = private.lookup(&vip) else {
        return Vec::new();
    };
    let mut slots = Vec::new();
    for i in 0..slot_count(spec) {
        let key = FlowKey {
            src: if vip.addr.is_v4() {
                Addr::from_v4([0; 4])
            } else {
                Addr::UNSPECIFIED
            },
            dst: vip.addr,
            sport: 32768 + i as u16,
            dport: vip.port,
            proto: vip.proto,
        };
        let Some(b) = sched::pick(svc, &key) else {
            break;
        };
        if svc.conns.enabled() {
            svc.conns.on_new(b);
        }
        let be = &svc.spec.backends[b];
        slots.push(backend_val(be.addr, be.port));
    }
    slots
}

/// How many choices make one turn of the scheduler: the weights over
/// their gcd (one turn of `wrr`), at least the backend count, at most
/// [`MAX_SLOTS`].
fn slot_count(spec: &ServiceSpec) -> usize {
    let weights: Vec<u64> = spec
        .backends
        .iter()
        .map(|b| u64::from(b.weight))
        .filter(|&w| w > 0)
        .collect();
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let turn = weights.iter().map(|w| w / g).sum::<u64>() as usize;
    turn.max(spec.backends.len()).clamp(1, MAX_SLOTS)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
