//! SCTP through the VIP. This kernel has no SCTP stack (GUIDE "This
//! machine"), so SCTP is tested with crafted packets: `sluice-testsrv
//! sctp-send` writes SCTP INIT chunks with a valid CRC32c over a raw IP
//! socket from the client to VIP:7000, and `sluice-testsrv sctp-capture`
//! reads protocol-132 frames on an AF_PACKET socket in each backend. Each
//! INIT must arrive at a backend with the destination rewritten to that
//! backend's address and the targetPort 7001, and with a CRC32c that still
//! verifies after the rewrite (the ports are inside the checksum).

use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{require_root, topology, Pipe, Role, Sluice, Topology};

fn config() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: sig
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  ports:
  - name: sig
    protocol: SCTP
    port: 7000
    targetPort: 7001
---
{}"#,
        endpoint_slice(
            "sig-1",
            "sig",
            &[("sig", 7001, "SCTP")],
            &ready_backends(&[1, 2, 3])
        )
    )
}

#[test]
fn sctp_init_is_forwarded_with_a_valid_crc() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    let captures: Vec<_> = (1..=3)
        .map(|i| {
            let c = topo.spawn_testsrv(Role::Backend(i), &["sctp-capture", "--ms", "3000"]);
            assert!(
                c.wait_for(Pipe::Stdout, 0, "ready", Duration::from_secs(5)),
                "capture in b{i}: {}",
                c.output(Pipe::Stderr)
            );
            c
        })
        .collect();

    // Three associations (three source ports): round robin, one each.
    let out = topo.testsrv(
        Role::Client,
        &[
            "sctp-send",
            "198.18.100.10:7000",
            "--count",
            "3",
            "--src-port",
            "40000",
        ],
        Duration::from_secs(5),
    );
    assert!(out.success(), "{out}");

    let mut total = 0;
    for (i, c) in captures.into_iter().enumerate() {
        let i = i + 1;
        let out = c.wait(Duration::from_secs(6));
        let inits: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("sctp ") && l.contains(" chunk=1 "))
            .collect();
        let dst = format!("dst={}:7001", Topology::backend_ip(i));
        for l in &inits {
            assert!(
                l.contains(&dst),
                "b{i} got an INIT not rewritten to {dst}: {l}"
            );
            assert!(l.ends_with("crc=ok"), "b{i}: bad CRC32c after NAT: {l}");
        }
        assert_eq!(
            inits.len(),
            1,
            "b{i} should get one of three INITs (round robin): {out}\nlog:\n{}",
            sluice.logs()
        );
        total += inits.len();
    }
    assert_eq!(total, 3);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(report.counter("new_flows") >= 3, "{:?}", report.counters);
}
