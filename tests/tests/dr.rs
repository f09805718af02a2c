//! Direct routing (`sluice.dev/forwarding-method: dr`, IPVS `-g`): Sluice
//! changes only the destination MAC of the client's packets; each backend
//! owns the VIP on `lo` and answers the client directly, from the VIP.
//!
//! Roles in the standard topology:
//! * backends `b1..b3`: the VIP 198.18.100.10/32 on `lo`, with
//!   `arp_ignore=1` / `arp_announce=2` so that they never answer or
//!   announce ARP for it (the segment must keep sending VIP traffic to the
//!   LB), and `sluice-testsrv` listening on every address, port 8080;
//! * the LB namespace is also the backends' router (their default route
//!   is 198.18.1.1): their replies (source VIP:8080, destination the
//!   client) reach its `back` link, where the steering program passes them
//!   to the kernel, which forwards them to the client (`ip_forward=1`;
//!   `rp_filter` off, since the LB has no route back to the VIP). The
//!   replies do not go through Sluice's AF_XDP path; this test proves it
//!   with the counters: the XDP program redirected nothing that arrived on
//!   `back` while it passed at least the replies, and every frame Sluice
//!   received came in on `front`.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_tests::{k8s, parse_backend_reply, require_root, topology, Role, Sluice, Topology, VIP};

/// The service: DR on VIP:8080 (DR cannot remap ports, so the service
/// port is the port the backends serve on).
fn config() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  \
         annotations:\n    sluice.dev/forwarding-method: dr\nspec:\n  type: ClusterIP\n  \
         clusterIP: {VIP}\n  ports:\n  - name: http\n    protocol: TCP\n    port: 8080\n    \
         targetPort: 8080\n---\n{}",
        k8s::endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &k8s::ready_backends(&[1, 2, 3])
        )
    )
}

fn sh(topo: &Topology, role: Role, argv: &[&str]) {
    let out = topo.exec(role, argv, Duration::from_secs(10));
    assert!(out.success(), "{role:?}: {argv:?}: {out}");
}

/// What a DR real server needs: the VIP on `lo`, ARP for it suppressed.
fn make_dr_backend(topo: &Topology, i: usize) {
    let b = Role::Backend(i);
    sh(
        topo,
        b,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
        ],
    );
    let vip = format!("{VIP}/32");
    topo.ip(b, &["addr", "add", &vip, "dev", "lo"]);
}

#[test]
fn backends_answer_clients_directly_and_see_their_address() {
    require_root();
    let topo = topology!();
    for i in 1..=3 {
        make_dr_backend(&topo, i);
    }
    // The LB namespace routes the backends' direct replies (module doc).
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
    const N: usize = 30;
    let url = format!("http://{VIP}:8080/");
    let mut hits: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..N {
        let out = topo.curl(&url, None);
        assert!(
            out.success(),
            "request {i} failed: {out}\nlog:\n{}",
            sluice.logs()
        );
        let (name, peer, _) = parse_backend_reply(&out.stdout)
            .unwrap_or_else(|| panic!("request {i}: not a backend reply: {out}"));
        // No SNAT: the backend saw the client itself.
        assert_eq!(peer, "198.18.0.2", "request {i}: {}", out.stdout);
        *hits.entry(name).or_insert(0) += 1;
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");

    // One worker: exact round robin.
    let expected: BTreeMap<String, usize> = [("b1", 10), ("b2", 10), ("b3", 10)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert_eq!(hits, expected, "logs:\n{}", report.logs);

    eprintln!("counters: {:?}", report.counters);
    let c = |k: &str| report.counter(k);
    assert_eq!(c("new_flows"), N as u64, "{:?}", report.counters);
    assert_eq!(c("snat_flows"), 0, "{:?}", report.counters);
    // Replies bypassed the AF_XDP path: nothing arriving on the backend side
    // was redirected to a socket, while the kernel got at least the
    // replies (each connection: SYN-ACK, response, FIN, ...).
    assert_eq!(c("xdp_redirected_back"), 0, "{:?}", report.counters);
    assert!(
        c("xdp_passed_back") >= 3 * N as u64,
        "the replies should have reached the kernel on back: {:?}",
        report.counters
    );
    // Every frame Sluice handled came from the client side, and each was
    // forwarded (client → backend only): received by the worker, or with
    // --fast-path xdp forwarded by the XDP program for it (counted in rx).
    assert_eq!(
        c("rx"),
        c("xdp_redirected_front") + c("xdp_fast_hits_front"),
        "{:?}",
        report.counters
    );
    assert!(c("rx") >= 3 * N as u64, "{:?}", report.counters);
    assert_eq!(c("tx"), c("rx"), "{:?}", report.counters);
}
