//! IPIP tunnelling (`sluice.dev/forwarding-method: ipip`, IPVS `-i`):
//! Sluice sends the client's packet unchanged inside an outer IPv4 header
//! (protocol 4) from the LB's back address to the real server, which
//! decapsulates it and answers the client directly, from the VIP.
//!
//! This kernel has no ipip device, so each backend decapsulates with a
//! small tc BPF program (`tests/bpf/ipip_decap.c`, compiled here with
//! clang, attached on clsact ingress of `eth0`: `bpf_skb_adjust_room`
//! strips the outer header). Each backend owns the VIP on `lo` with ARP for
//! it suppressed, as for DR; the LB namespace routes their direct replies
//! to the client. The test captures on backend b1's `eth0` (tcpdump sees a
//! frame before tc ingress does) and checks the outer header, and that
//! every request completes with the client's own address seen.

use std::path::PathBuf;
use std::time::Duration;

use sluice_tests::{
    k8s, parse_backend_reply, require_root, topology, Pipe, Role, Sluice, Topology, VIP,
};

/// The service: IPIP on VIP:8080 (no port remapping, as DR).
fn config() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  \
         annotations:\n    sluice.dev/forwarding-method: ipip\nspec:\n  type: ClusterIP\n  \
         clusterIP: {VIP}\n  ports:\n  - name: http\n    protocol: TCP\n    port: 8080\n    \
         targetPort: 8080\n---\n{}",
        k8s::endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &k8s::ready_backends(&[1, 2])
        )
    )
}

fn sh(topo: &Topology, role: Role, argv: &[&str]) {
    let out = topo.exec(role, argv, Duration::from_secs(10));
    assert!(out.success(), "{role:?}: {argv:?}: {out}");
}

/// Compiles the decapsulation program into a file unique to this test.
fn decap_object(topo: &Topology) -> PathBuf {
    sluice_tests::tier::ipip_decap_object(topo)
}

/// A real server behind an IPIP tunnel: VIP on `lo`, ARP for it
/// suppressed, the decapsulation program on `eth0`.
fn make_tunnel_backend(topo: &Topology, i: usize, obj: &std::path::Path) {
    sluice_tests::tier::direct_backend(topo, i, VIP, Some(obj));
}

#[test]
fn requests_are_tunnelled_to_the_real_servers_which_answer_directly() {
    require_root();
    let topo = topology!(sluice_tests::TopologyOpts::default().backends(2));
    let obj = decap_object(&topo);
    for i in 1..=2 {
        make_tunnel_backend(&topo, i, &obj);
    }
    let _ = std::fs::remove_file(&obj);
    // The LB namespace routes the backends' direct replies (as for DR).
    topo.set_lb_forwarding(true);
    sh(
        &topo,
        Role::Lb,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.back.rp_filter=0",
            "net.ipv4.conf.front.rp_filter=0",
        ],
    );
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);

    // Capture the first encapsulated frame that reaches b1.
    let cap = topo.spawn(
        Role::Backend(1),
        &[
            "timeout",
            "20",
            "tcpdump",
            "-l",
            "-n",
            "-v",
            "-c",
            "1",
            "-i",
            "eth0",
            "ip proto 4",
        ],
    );
    assert!(
        cap.wait_for(Pipe::Stderr, 0, "listening on", Duration::from_secs(10)),
        "tcpdump did not start: {}",
        cap.output(Pipe::Stderr)
    );

    let url = format!("http://{VIP}:8080/");
    let mut names = std::collections::BTreeSet::new();
    for i in 0..6 {
        let out = topo.curl(&url, None);
        assert!(
            out.success(),
            "request {i} failed: {out}\nlog:\n{}",
            sluice.logs()
        );
        let (name, peer, _) = parse_backend_reply(&out.stdout)
            .unwrap_or_else(|| panic!("request {i}: not a backend reply: {out}"));
        // The inner packet is the client's: no SNAT.
        assert_eq!(peer, "198.18.0.2", "request {i}: {}", out.stdout);
        names.insert(name);
    }
    assert_eq!(names.len(), 2, "{names:?}");
    let captured = cap.wait(Duration::from_secs(10));
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");

    // The outer header: IPIP from the LB's back address to b1, DF copied
    // from the client's SYN, TTL 64; inside, the client's packet to the VIP.
    let text = captured.stdout.clone();
    for want in [
        "proto IPIP (4)",
        "ttl 64",
        "flags [DF]",
        "198.18.1.1 > 198.18.1.11:",
        "198.18.0.2.",
        &format!("> {VIP}.8080:"),
    ] {
        assert!(
            text.contains(want),
            "capture lacks `{want}`:\n{text}\n{}",
            captured.stderr
        );
    }
    assert_eq!(report.counter("snat_flows"), 0, "{:?}", report.counters);
    assert!(report.counter("new_flows") >= 6, "{:?}", report.counters);
}
