//! Headless (`clusterIP: None`) and ExternalName services forward nothing:
//! there is no VIP to steer, so packets towards their endpoints go to the
//! LB's kernel (which does not forward), sluice creates no flow, and the
//! services exist only in DNS, which answers for both.

use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{require_root, topology, Role, Sluice, Topology};

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: default
spec:
  clusterIP: None
  ports:
  - name: http
    protocol: TCP
    port: 8080
    targetPort: 8080
---
{}---
apiVersion: v1
kind: Service
metadata:
  name: ext
  namespace: default
spec:
  type: ExternalName
  externalName: backend.example.com
  ports:
  - name: http
    protocol: TCP
    port: 80
"#,
        endpoint_slice(
            "db-1",
            "db",
            &[("http", 8080, "TCP")],
            &ready_backends(&[1, 2, 3])
        )
    )
}

#[test]
fn headless_and_external_name_forward_nothing() {
    require_root();
    let topo = topology!();
    // Send the endpoints' subnet to the LB, as a client of a headless
    // service would after resolving it.
    topo.ip(
        Role::Client,
        &["route", "add", "198.18.1.0/24", "via", "198.18.0.1"],
    );
    let sluice = Sluice::start(
        &topo,
        &config(),
        &["--workers", "1", "--dns", "198.18.0.1:53"],
    );

    let dig = |name: &str, qtype: &str| {
        topo.exec(
            Role::Client,
            &[
                "dig",
                "@198.18.0.1",
                "+time=1",
                "+tries=2",
                "+short",
                name,
                qtype,
            ],
            Duration::from_secs(10),
        )
    };
    let out = dig("db.default.svc.cluster.local", "A");
    assert!(out.success(), "{out}");
    assert_eq!(
        out.stdout.lines().count(),
        3,
        "headless A: {out}\nlog:\n{}",
        sluice.logs()
    );
    let out = dig("ext.default.svc.cluster.local", "CNAME");
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "backend.example.com.", "{out}");

    for i in 1..=3 {
        let url = format!("http://{}:8080/", Topology::backend_ip(i));
        let out = topo.curl_in(
            Role::Client,
            &["--connect-timeout", "1", "--max-time", "2", &url],
        );
        assert!(!out.success(), "{url} was forwarded: {out}");
    }

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(
        report.counters.contains_key("new_flows"),
        "no new_flows counter: {}",
        report.stdout
    );
    assert_eq!(report.counter("new_flows"), 0, "{:?}", report.counters);
}
