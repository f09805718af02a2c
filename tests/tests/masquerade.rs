//! Masquerade by cluster CIDR (kube-proxy's KUBE-MARK-MASQ): a client outside
//! `--cluster-cidr` is SNATed to the LB's backend-side address, so replies
//! return through the LB; a client inside keeps its own address.
//!
//! The client namespace has two addresses: 198.18.0.2 (outside
//! 198.18.0.128/25) and 198.18.0.130 (inside).

use sluice_tests::{parse_backend_reply, require_root, topology, Sluice};

fn config() -> String {
    sluice_tests::k8s::web_http(&[1, 2, 3])
}

#[test]
fn outside_clients_are_masqueraded_inside_clients_are_not() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &config(), &["--cluster-cidr", "198.18.0.128/25"]);

    for _ in 0..3 {
        let out = topo.curl("http://198.18.100.10/", Some("198.18.0.2"));
        assert!(
            out.success(),
            "outside client: {out}\nlog:\n{}",
            sluice.logs()
        );
        let (_, peer, _) = parse_backend_reply(&out.stdout).expect("backend reply");
        assert_eq!(
            peer, "198.18.1.1",
            "outside client not SNATed: {}",
            out.stdout
        );

        let out = topo.curl("http://198.18.100.10/", Some("198.18.0.130"));
        assert!(
            out.success(),
            "inside client: {out}\nlog:\n{}",
            sluice.logs()
        );
        let (_, peer, _) = parse_backend_reply(&out.stdout).expect("backend reply");
        assert_eq!(
            peer, "198.18.0.130",
            "inside client was SNATed: {}",
            out.stdout
        );
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
