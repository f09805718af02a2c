//! A LoadBalancer ingress IP (from `status.loadBalancer.ingress[].ip`)
//! answers, and `loadBalancerSourceRanges` filters its clients: a client
//! inside 198.18.0.128/25 (198.18.0.130) is served, one outside
//! (198.18.0.2) is dropped and counted in `drop_source_range`.

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
  type: LoadBalancer
  clusterIP: 198.18.100.10
  loadBalancerSourceRanges:
  - 198.18.0.128/25
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
    nodePort: 30080
status:
  loadBalancer:
    ingress:
    - ip: 198.18.100.20
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
fn source_ranges_filter_load_balancer_clients() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    for i in 0..3 {
        let out = topo.curl_in(
            Role::Client,
            &[
                "--max-time",
                "3",
                "--interface",
                "198.18.0.130",
                "http://198.18.100.20/",
            ],
        );
        assert!(
            out.success(),
            "allowed client (try {i}): {out}\nlog:\n{}",
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
            "--interface",
            "198.18.0.2",
            "http://198.18.100.20/",
        ],
    );
    assert!(
        !out.success(),
        "client outside the source ranges was served: {out}"
    );

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(
        report.counter("drop_source_range") >= 1,
        "{:?}",
        report.counters
    );
}
