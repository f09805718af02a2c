//! Round robin over a ClusterIP: new TCP connections spread evenly.
//!
//! With one worker the scheduler sees every new flow in order, so 30
//! connections over 3 ready endpoints land exactly 10 on each (kube-proxy's
//! IPVS default `rr`). With two workers the cursor is shared (one atomic per
//! service) but their picks can interleave, so only "every connection
//! succeeds and every backend is used" is promised.

use std::collections::BTreeMap;

use sluice_tests::k8s::web_http;
use sluice_tests::{backend_spread, require_root, topology, Sluice};

#[test]
fn one_worker_splits_exactly_evenly() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &web_http(&[1, 2, 3]), &["--workers", "1"]);
    let hits = backend_spread(&topo, 30);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    let expected: BTreeMap<String, usize> = [("b1", 10), ("b2", 10), ("b3", 10)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert_eq!(hits, expected, "logs:\n{}", report.logs);
    assert!(report.counter("new_flows") >= 30, "{:?}", report.counters);
}

#[test]
fn two_workers_use_every_backend() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &web_http(&[1, 2, 3]), &["--workers", "2"]);
    let hits = backend_spread(&topo, 30);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert_eq!(hits.values().sum::<usize>(), 30);
    for b in ["b1", "b2", "b3"] {
        assert!(
            hits.get(b).copied().unwrap_or(0) >= 1,
            "{b} got nothing: {hits:?}"
        );
    }
}
