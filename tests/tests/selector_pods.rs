//! Endpoints computed from Pods: a Service with a selector and a named
//! `targetPort`, no EndpointSlice, and three Pods. The two running, ready
//! Pods with matching labels (b1, serving on 8080, and b2, on 8081, both
//! under the container port name `web`) get the traffic, each on its own
//! port number; a Pod with other labels (b3) gets none.
//!
//! b2 also runs the default server on 8080 under the name `b2`; the one on
//! 8081 is named `b2-8081`, so a reply proves which port was used.

use std::collections::BTreeMap;

use sluice_tests::{parse_backend_reply, require_root, topology, Role, Sluice, Topology};

fn pod(name: &str, app: &str, ip: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels:
    app: {app}
spec:
  nodeName: node1
  containers:
  - name: server
    image: sluice-testsrv
    ports:
    - name: web
      containerPort: {port}
      protocol: TCP
status:
  phase: Running
  podIP: {ip}
  podIPs:
  - ip: {ip}
  conditions:
  - type: Ready
    status: "True"
"#
    )
}

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
  selector:
    app: web
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: web
---
{}---
{}---
{}"#,
        pod("web-a", "web", &Topology::backend_ip(1), 8080),
        pod("web-b", "web", &Topology::backend_ip(2), 8081),
        pod("other", "db", &Topology::backend_ip(3), 8080),
    )
}

#[test]
fn selector_pods_with_named_ports() {
    require_root();
    let topo = topology!();
    let extra = topo.spawn_testsrv(
        Role::Backend(2),
        &["serve", "--name", "b2-8081", "--http", "8081"],
    );
    assert!(
        extra.wait_for(
            sluice_tests::Pipe::Stdout,
            0,
            "ready",
            std::time::Duration::from_secs(10)
        ),
        "server on b2:8081 not ready: {}",
        extra.output(sluice_tests::Pipe::Stderr)
    );
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    let mut hits = BTreeMap::new();
    for i in 0..6 {
        let out = topo.curl("http://198.18.100.10/", None);
        assert!(
            out.success(),
            "connection {i}: {out}\nlog:\n{}",
            sluice.logs()
        );
        let (name, _, _) = parse_backend_reply(&out.stdout).expect("backend reply");
        *hits.entry(name).or_insert(0usize) += 1;
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    let expected: BTreeMap<String, usize> =
        [("b1".to_string(), 3), ("b2-8081".to_string(), 3)].into();
    assert_eq!(hits, expected, "logs:\n{}", report.logs);
}
