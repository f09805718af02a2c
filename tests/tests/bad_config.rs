//! Bad configs are refused with the field named: at start sluice exits
//! non-zero; on reload it logs `reload rejected` and keeps serving the config
//! it had.

use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{parse_backend_reply, require_root, topology, ReloadOutcome, Sluice};

fn config(port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  ports:
  - name: http
    protocol: TCP
    port: {port}
    targetPort: 8080
---
{}"#,
        endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &ready_backends(&[1, 2])
        )
    )
}

#[test]
fn port_zero_is_refused_at_start() {
    require_root();
    let topo = topology!(sluice_tests::TopologyOpts::default().servers(false));
    let out = Sluice::run_to_exit(&topo, &config(0), &[], Duration::from_secs(15));
    assert!(!out.timed_out(), "sluice started with port 0: {out}");
    assert!(!out.success(), "sluice accepted port 0: {out}");
    assert!(
        out.stderr.contains("spec.ports[0].port"),
        "error does not name the field: {out}"
    );
}

#[test]
fn bad_reload_is_rejected_and_old_config_keeps_serving() {
    require_root();
    let topo = topology!();
    let mut sluice = Sluice::start(&topo, &config(80), &[]);
    let out = topo.curl("http://198.18.100.10/", None);
    assert!(
        out.success(),
        "before reload: {out}\nlog:\n{}",
        sluice.logs()
    );

    sluice.rewrite_config(&config(0));
    match sluice.reload() {
        ReloadOutcome::Rejected(e) => {
            assert!(
                e.contains("spec.ports[0].port"),
                "rejection does not name the field: {e}"
            )
        }
        other => panic!(
            "bad config was not rejected: {other:?}\nlog:\n{}",
            sluice.logs()
        ),
    }

    for i in 0..4 {
        let out = topo.curl("http://198.18.100.10/", None);
        assert!(out.success(), "connection {i} after rejected reload: {out}");
        assert!(parse_backend_reply(&out.stdout).is_some(), "{out}");
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}

/// Flow-table sizes out of range are refused at start with a message that
/// names the flag, before anything is attached.
#[test]
fn flow_capacity_out_of_range_is_refused_at_start() {
    require_root();
    let topo = topology!(sluice_tests::TopologyOpts::default().servers(false));
    for (flag, value) in [
        ("--flow-capacity", "0"),
        ("--flow-capacity", "16777215"),
        ("--flow-capacity-v6", "0"),
    ] {
        let out = Sluice::run_to_exit(&topo, &config(80), &[flag, value], Duration::from_secs(15));
        assert!(
            !out.timed_out(),
            "sluice started with {flag} {value}: {out}"
        );
        assert!(!out.success(), "sluice accepted {flag} {value}: {out}");
        let want = format!("{flag} {value}: must be between 1 and 16777214");
        assert!(out.stderr.contains(&want), "no `{want}`: {out}");
    }
}

/// A slice naming a Service the file lacks (often a typo) is not an error,
/// as in Kubernetes, but `sluice check` names it, with its line, and the
/// Service it waits for.
#[test]
fn check_names_a_slice_that_waits_for_its_service() {
    let text = format!(
        "{}---\n{}",
        config(80),
        endpoint_slice(
            "webb-1",
            "webb",
            &[("http", 8080, "TCP")],
            &ready_backends(&[3])
        )
    );
    let path = std::env::temp_dir().join(format!("sluice-waiting-{}.yaml", std::process::id()));
    std::fs::write(&path, &text).unwrap();
    let mut c = std::process::Command::new(sluice_tests::sluice_bin());
    c.arg("check").arg("--config").arg(&path);
    let out = sluice_tests::exec_timeout(c, Duration::from_secs(10));
    let _ = std::fs::remove_file(&path);
    assert!(out.success(), "a waiting slice is no error: {out}");
    assert!(
        out.stdout
            .contains("note: EndpointSlice default/webb-1 waits for Service default/webb (line "),
        "{out}"
    );
    assert!(
        out.stdout.contains("-> 2 backends"),
        "web keeps its own: {out}"
    );
}
