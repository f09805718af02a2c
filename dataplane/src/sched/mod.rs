//! Schedulers: which backend a new flow goes to.
//!
//! One file per scheduler (IPVS has one module per scheduler too), each
//! pure and deterministic given its inputs and its own cursor, behind the
//! [`Scheduler`] trait. Only new flows reach a scheduler; established flows
//! are pinned by the flow table. A scheduler never returns a backend with
//! weight 0 (draining, IPVS's graceful termination), except a terminating
//! one when no backend has a weight (Kubernetes ProxyTerminatingEndpoints).

pub mod rr;

use crate::service::{SchedKind, Service};
use crate::types::FlowKey;

/// Picks a backend for a new flow.
pub trait Scheduler: Send + Sync {
    /// The index (into `service.spec.backends`) of the backend for the flow
    /// `key`, or `None` when no backend can take new flows.
    fn pick(&self, service: &Service, key: &FlowKey) -> Option<usize>;
}

/// The scheduler implementing `kind`.
pub fn for_kind(kind: SchedKind) -> &'static dyn Scheduler {
    match kind {
        SchedKind::RoundRobin => &rr::RoundRobin,
    }
}

/// Schedules a new flow on `service` with its configured scheduler.
#[inline]
pub fn pick(service: &Service, key: &FlowKey) -> Option<usize> {
    match service.spec.sched {
        SchedKind::RoundRobin => rr::RoundRobin.pick(service, key),
    }
}
