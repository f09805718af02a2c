//! A service with no ready endpoints rejects at once instead of letting the
//! client time out (kube-proxy's REJECT rule): a TCP SYN gets a RST
//! (`Connection refused`) and a UDP datagram gets an ICMP port unreachable,
//! which a connected UDP socket reports as `Connection refused`. Both are
//! counted in `rejected`.

use std::time::{Duration, Instant};

use sluice_tests::k8s::endpoint_slice;
use sluice_tests::{require_root, topology, Role, Sluice};

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
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
---
{}"#,
        endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
            &[]
        )
    )
}

#[test]
fn no_endpoints_means_rejected_at_once() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    let t = Instant::now();
    let out = topo.curl_in(
        Role::Client,
        &[
            "--connect-timeout",
            "3",
            "--max-time",
            "4",
            "http://198.18.100.10/",
        ],
    );
    let took = t.elapsed();
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("Connection refused") || out.status.and_then(|s| s.code()) == Some(7),
        "expected a refusal (RST): {out}\nlog:\n{}",
        sluice.logs()
    );
    assert!(
        took < Duration::from_millis(500),
        "TCP refusal took {took:?}"
    );

    let t = Instant::now();
    let out = topo.testsrv(
        Role::Client,
        &["udp-query", "198.18.100.10:5353", "--timeout-ms", "2000"],
        Duration::from_secs(5),
    );
    let took = t.elapsed();
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("Connection refused"),
        "expected ICMP port unreachable: {out}\nlog:\n{}",
        sluice.logs()
    );
    assert!(
        took < Duration::from_millis(500),
        "UDP refusal took {took:?}"
    );

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(report.counter("rejected") >= 2, "{:?}", report.counters);
}
