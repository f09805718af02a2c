//! externalIPs answer only on hosts that own them. The service lists
//! 198.18.0.50 and 198.18.0.51; the LB owns only .50 (added to `front`
//! before sluice starts). The client reaches .50 on-link (ARP answered by
//! the LB's kernel) and has a route sending .51 to the LB too, so that a
//! packet for .51 does arrive at the LB: sluice must not answer it.

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{parse_backend_reply, require_root, topology, Role, Sluice};

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  externalIPs:
  - 198.18.0.50
  - 198.18.0.51
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
---
{}"#,
        endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &ready_backends(&[1, 2, 3])
        )
    )
}

#[test]
fn external_ips_answer_only_where_owned() {
    require_root();
    let topo = topology!();
    topo.add_address(Role::Lb, "198.18.0.50/32", "front");
    topo.ip(
        Role::Client,
        &["route", "add", "198.18.0.51/32", "via", "198.18.0.1"],
    );
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    for i in 0..3 {
        let out = topo.curl_in(Role::Client, &["--max-time", "3", "http://198.18.0.50/"]);
        assert!(
            out.success(),
            "owned external IP (try {i}): {out}\nlog:\n{}",
            sluice.logs()
        );
        assert!(parse_backend_reply(&out.stdout).is_some(), "{out}");
    }
    let out = topo.curl_in(
        Role::Client,
        &[
            "--connect-timeout",
            "1",
            "--max-time",
            "2",
            "http://198.18.0.51/",
        ],
    );
    assert!(
        !out.success(),
        "external IP the LB does not own answered: {out}"
    );

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
