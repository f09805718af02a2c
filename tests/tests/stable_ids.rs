//! Stable ids across a reload: a flow record names its service by slot
//! and its backend by id, and a batch that removes an *earlier* service
//! and an *earlier* backend of the flow's own service renumbers neither
//! (a table built from scratch would shift both down by one).
//!
//! An established TCP transfer to the second backend of `web:9000` runs
//! while one reload removes service `aaa` (listed first) and web's first
//! backend. The transfer must complete intact, and its packets after the
//! reload must still be counted for its backend (the per-backend traffic
//! counters read the flow's service slot and backend id; renumbered, they
//! no longer name its front end and backend, and the packets go
//! unattributed).

use std::time::Duration;

use serde_json::Value;
use sluice_tests::api;
use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::{require_root, topology, ReloadOutcome, Role, Sluice, TopologyOpts};

const B1: &str = "198.18.1.11";
const B2: &str = "198.18.1.12";
const BYTES: u64 = 12_000_000;

/// `aaa` (when `with_aaa`) before `web`; web's bulk port has `b1` first
/// (terminating, so that new flows go to b2) when `with_b1`.
fn config(with_aaa: bool, with_b1: bool) -> String {
    let mut out = String::new();
    if with_aaa {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: aaa\n  namespace: default\n\
             spec:\n  type: ClusterIP\n  clusterIP: 198.18.100.20\n  ports:\n  - name: http\n    \
             protocol: TCP\n    port: 80\n    targetPort: 8080\n---\n{}---\n",
            endpoint_slice("aaa-1", "aaa", &[("http", 8080, "TCP")], &[Ep::ready(B1)])
        ));
    }
    let mut eps = Vec::new();
    if with_b1 {
        eps.push(Ep::terminating(B1));
    }
    eps.push(Ep::ready(B2));
    out.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n\
         spec:\n  type: ClusterIP\n  clusterIP: 198.18.100.10\n  ports:\n  - name: bulk\n    \
         protocol: TCP\n    port: 9000\n    targetPort: 9000\n---\n{}",
        endpoint_slice("web-1", "web", &[("bulk", 9000, "TCP")], &eps)
    ));
    out
}

/// The bytes (in + out) counted for backend `addr`:9000 of web:9000.
fn backend_bytes(sluice: &Sluice, addr: &str) -> u64 {
    let r = api::stats(sluice.api_socket());
    assert_eq!(r.code, 200, "{r:?}");
    let j = r.json();
    let svc = j["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["address"] == "198.18.100.10" && s["port"] == 9000)
        .unwrap_or_else(|| panic!("web:9000 not in the stats: {j}"));
    svc["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["address"] == addr)
        .map(|b: &Value| b["inBytes"].as_u64().unwrap_or(0) + b["outBytes"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn a_transfer_keeps_its_service_and_backend_ids_when_earlier_ones_leave() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2));
    let mut sluice = Sluice::start(&topo, &config(true, true), &["--workers", "1"]);

    // 12 MB at 4 MB/s: about 3 s on the wire.
    let mut bulk = topo.spawn_testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.100.10:9000",
            "--bytes",
            &BYTES.to_string(),
            "--rate",
            "4000000",
            "--timeout-ms",
            "20000",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    assert!(bulk.is_running(), "transfer ended before the reload");
    let before = backend_bytes(&sluice, B2);
    assert!(before > 0, "the transfer goes to b2");

    sluice.rewrite_config(&config(false, false));
    let outcome = sluice.reload();
    assert!(
        matches!(outcome, ReloadOutcome::Applied(_)),
        "{outcome:?}\nlog:\n{}",
        sluice.logs()
    );
    let at_reload = backend_bytes(&sluice, B2);
    assert!(
        bulk.is_running(),
        "the reload did not happen during the transfer"
    );

    let out = bulk.wait(Duration::from_secs(25));
    assert!(
        out.success(),
        "transfer across the reload: {out}\nlog:\n{}",
        sluice.logs()
    );
    assert!(out.stdout.starts_with(&format!("ok {BYTES} ")), "{out}");
    // Let the last segments pass before reading.
    std::thread::sleep(Duration::from_millis(300));
    let after = backend_bytes(&sluice, B2);
    // At least a third of the transfer came after the reload (it was
    // running at 0.8 s of about 3 s), all of it counted for b2.
    assert!(
        after >= at_reload + BYTES / 3,
        "b2's bytes: {before} before, {at_reload} at the reload, {after} after: the \
         flow's packets after the reload were not counted for its backend\nlog:\n{}",
        sluice.logs()
    );
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
