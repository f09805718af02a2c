//! Round-robin (IPVS `rr`, kube-proxy's IPVS-mode default).
//!
//! The cursor is one relaxed atomic inside the service, shared by all
//! workers, so the rotation is global: with N workers, consecutive new flows
//! still go to consecutive backends (each `fetch_add` hands out one slot).
//! Backends with weight 0 are skipped, as IPVS skips quiesced servers.

use std::sync::atomic::Ordering;

use super::Scheduler;
use crate::service::Service;
use crate::types::FlowKey;

/// Round-robin over backends with a non-zero weight.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundRobin;

impl Scheduler for RoundRobin {
    #[inline]
    fn pick(&self, service: &Service, _key: &FlowKey) -> Option<usize> {
        let backends = &service.spec.backends;
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = service.rr.fetch_add(1, Ordering::Relaxed) as usize;
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| backends[i].weight > 0)
            .or_else(|| {
                // No ready backend: serving-but-terminating ones take new
                // flows (Kubernetes ProxyTerminatingEndpoints).
                (0..n)
                    .map(|i| (start + i) % n)
                    .find(|&i| backends[i].terminating)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{BackendSpec, SchedKind, ServiceSpec, ServiceTable, VipKey};
    use crate::types::{proto, Addr};

    fn table(weights: &[u16]) -> ServiceTable {
        let spec = ServiceSpec {
            name: "t".into(),
            vip: VipKey {
                addr: Addr::from_v4([198, 18, 100, 1]),
                port: 80,
                proto: proto::TCP,
            },
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| BackendSpec {
                    addr: Addr::from_v4([198, 18, 1, 10 + i as u8]),
                    port: 80,
                    weight: w,
                    ..Default::default()
                })
                .collect(),
            sched: SchedKind::RoundRobin,
            ..Default::default()
        };
        ServiceTable::build(1, vec![spec]).unwrap()
    }

    #[test]
    fn rotates_evenly() {
        let t = table(&[1, 1, 1]);
        let s = t.get(0).unwrap();
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[RoundRobin.pick(s, &FlowKey::default()).unwrap()] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
    }

    #[test]
    fn terminating_backends_only_when_no_ready_one() {
        let mut t = table(&[1, 0]);
        let mut specs: Vec<ServiceSpec> = t.services().map(|s| s.spec.clone()).collect();
        specs[0].backends[1].terminating = true;
        t = ServiceTable::build(2, specs.clone()).unwrap();
        for _ in 0..6 {
            assert_eq!(
                RoundRobin.pick(t.get(0).unwrap(), &FlowKey::default()),
                Some(0)
            );
        }
        specs[0].backends[0].weight = 0;
        t = ServiceTable::build(3, specs).unwrap();
        assert_eq!(
            RoundRobin.pick(t.get(0).unwrap(), &FlowKey::default()),
            Some(1)
        );
    }

    #[test]
    fn skips_drained_and_empty() {
        let t = table(&[1, 0, 1]);
        let s = t.get(0).unwrap();
        for _ in 0..10 {
            assert_ne!(RoundRobin.pick(s, &FlowKey::default()), Some(1));
        }
        let t = table(&[0, 0]);
        assert_eq!(
            RoundRobin.pick(t.get(0).unwrap(), &FlowKey::default()),
            None
        );
        let t = table(&[]);
        assert_eq!(
            RoundRobin.pick(t.get(0).unwrap(), &FlowKey::default()),
            None
        );
    }
}
