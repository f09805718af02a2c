//! The service DNS (`--dns 198.18.0.1:53`, zone `cluster.local`), queried
//! with `dig` from the client: A for a ClusterIP service, the endpoint
//! addresses for a headless one, a CNAME for an ExternalName service, SRV
//! `_http._tcp` for a named port, NXDOMAIN for a name that does not exist.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{require_root, topology, CmdOutput, Role, Sluice, Topology};

/// `web` (ClusterIP), `db` (headless over b1..b3) and `ext` (ExternalName).
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
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
---
{}---
apiVersion: v1
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
"#,
        endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &ready_backends(&[1, 2, 3])
        ),
        endpoint_slice(
            "db-1",
            "db",
            &[("http", 8080, "TCP")],
            &ready_backends(&[1, 2, 3])
        ),
    )
}

fn dig(topo: &Topology, args: &[&str]) -> CmdOutput {
    let mut argv = vec!["dig", "@198.18.0.1", "-p", "53", "+time=1", "+tries=2"];
    argv.extend_from_slice(args);
    topo.exec(Role::Client, &argv, Duration::from_secs(10))
}

fn short(topo: &Topology, name: &str, qtype: &str) -> BTreeSet<String> {
    let out = dig(topo, &["+short", name, qtype]);
    assert!(out.success(), "{out}");
    out.stdout
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn service_dns_records() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(
        &topo,
        &config(),
        &["--workers", "1", "--dns", "198.18.0.1:53"],
    );

    let a = short(&topo, "web.default.svc.cluster.local", "A");
    assert_eq!(
        a,
        BTreeSet::from(["198.18.100.10".to_string()]),
        "log:\n{}",
        sluice.logs()
    );

    let a = short(&topo, "db.default.svc.cluster.local", "A");
    let want: BTreeSet<String> = (1..=3).map(Topology::backend_ip).collect();
    assert_eq!(a, want, "headless A records are the endpoints");

    let out = dig(&topo, &["ext.default.svc.cluster.local", "CNAME"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 5
                && w[0] == "ext.default.svc.cluster.local."
                && w[3] == "CNAME"
                && w[4] == "backend.example.com."
        }),
        "ExternalName CNAME: {out}"
    );

    let srv = short(&topo, "_http._tcp.web.default.svc.cluster.local", "SRV");
    assert_eq!(srv.len(), 1, "{srv:?}");
    let rec = srv.iter().next().cloned().unwrap_or_default();
    let w: Vec<&str> = rec.split_whitespace().collect();
    assert_eq!(w.len(), 4, "SRV: priority weight port target: {rec}");
    assert_eq!(
        (w[2], w[3]),
        ("80", "web.default.svc.cluster.local."),
        "SRV {rec}"
    );

    let out = dig(&topo, &["nope.default.svc.cluster.local", "A"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("status: NXDOMAIN"), "{out}");

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
