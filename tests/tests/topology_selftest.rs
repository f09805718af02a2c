//! The test network itself, without sluice: with kernel forwarding turned on
//! in the LB namespace, the client reaches the backends' real addresses
//! through the kernel router. Proves the namespaces, veths, bridge, routes,
//! `sluice-testsrv` and the cleanup guard, so that a failure in the other
//! tests points at sluice and not at the harness.

use std::time::Duration;

use sluice_tests::{parse_backend_reply, require_root, topology, Role, TopologyOpts};

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kernel_forwarding_reaches_backends() {
    require_root();
    let topo = topology!();
    let names = topo.namespaces().to_vec();
    assert_eq!(names.len(), 6, "client, lb, sw, b1..b3: {names:?}");
    topo.set_lb_forwarding(true);
    // The client only routes the VIP range to the LB; reach the backends'
    // real addresses too for this test.
    let r = topo.exec(
        Role::Client,
        &["ip", "route", "add", "198.18.1.0/24", "via", "198.18.0.1"],
        Duration::from_secs(5),
    );
    r.expect_ok();

    // HTTP to b1's real address: the backend sees the client's own address.
    let out = topo.curl("http://198.18.1.11:8080/", None);
    let (name, peer, _) = parse_backend_reply(out.expect_ok()).expect("backend reply");
    assert_eq!((name.as_str(), peer.as_str()), ("b1", "198.18.0.2"));

    // Second client address, second backend.
    let out = topo.curl("http://198.18.1.12:8080/", Some("198.18.0.130"));
    let (name, peer, _) = parse_backend_reply(out.expect_ok()).expect("backend reply");
    assert_eq!((name.as_str(), peer.as_str()), ("b2", "198.18.0.130"));

    // UDP request/response on a connected socket.
    let out = topo.testsrv(
        Role::Client,
        &[
            "udp-query",
            "198.18.1.13:5353",
            "--count",
            "3",
            "--timeout-ms",
            "2000",
        ],
        Duration::from_secs(10),
    );
    let replies: Vec<_> = out.expect_ok().lines().collect();
    assert_eq!(replies.len(), 3, "{out}");
    assert!(
        replies
            .iter()
            .all(|r| r.starts_with("backend=b3 peer=198.18.0.2:")),
        "{out}"
    );

    // Bulk stream verified byte for byte (1 MB, unpaced).
    let out = topo.testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.1.11:9000",
            "--bytes",
            "1000000",
            "--timeout-ms",
            "10000",
        ],
        Duration::from_secs(15),
    );
    assert!(out.expect_ok().starts_with("ok 1000000 "), "{out}");

    // Offloads and queues as promised.
    let k = topo.exec(
        Role::Lb,
        &["ethtool", "-k", "front"],
        Duration::from_secs(5),
    );
    assert!(k.expect_ok().contains("tx-checksum-ip-generic: off"), "{k}");
    let l = topo.exec(Role::Lb, &["ethtool", "-l", "back"], Duration::from_secs(5));
    let current = l
        .expect_ok()
        .split("Current hardware settings:")
        .nth(1)
        .unwrap_or("");
    assert!(
        current.contains("RX:\t\t2") && current.contains("TX:\t\t2"),
        "{l}"
    );

    drop(topo);
    let left = netns_list();
    for n in &names {
        assert!(
            !left.lines().any(|l| l.split_whitespace().next() == Some(n)),
            "{n} left behind"
        );
    }
}

#[test]
fn forwarding_is_off_by_default() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1));
    let out = topo.exec(
        Role::Lb,
        &["sysctl", "-n", "net.ipv4.ip_forward"],
        Duration::from_secs(5),
    );
    assert_eq!(out.expect_ok().trim(), "0");
    // Without sluice and without kernel forwarding nothing gets through.
    topo.exec(
        Role::Client,
        &["ip", "route", "add", "198.18.1.0/24", "via", "198.18.0.1"],
        Duration::from_secs(5),
    )
    .expect_ok();
    let out = topo.curl("http://198.18.1.11:8080/", None);
    assert!(!out.success(), "{out}");
}

#[test]
fn guard_cleans_up_when_the_test_panics() {
    require_root();
    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let topo = topology!(TopologyOpts::default().backends(1));
        names
            .lock()
            .unwrap()
            .extend(topo.namespaces().iter().cloned());
        let _srv = topo.spawn(Role::Client, &["sleep", "30"]);
        panic!("deliberate");
    });
    assert!(r.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 4);
    let left = netns_list();
    for n in &names {
        assert!(
            !left.lines().any(|l| l.split_whitespace().next() == Some(n)),
            "{n} left behind"
        );
    }
}

#[test]
fn ipv6_links_forward_through_the_kernel() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2).ipv6(true));
    topo.exec(
        Role::Lb,
        &["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"],
        Duration::from_secs(5),
    )
    .expect_ok();
    topo.ip(
        Role::Client,
        &[
            "-6",
            "route",
            "add",
            "2001:db8:1::/64",
            "via",
            "2001:db8::1",
        ],
    );
    // No DAD: the addresses are usable at once, no sleeping.
    let out = topo.curl_in(
        Role::Client,
        &[
            "-6",
            "-g",
            "--max-time",
            "3",
            "http://[2001:db8:1::12]:8080/",
        ],
    );
    let (name, peer, _) = parse_backend_reply(out.expect_ok()).expect("backend reply");
    assert_eq!((name.as_str(), peer.as_str()), ("b2", "2001:db8::2"));
    // IPv4 still works alongside, and the dual-stack server prints IPv4
    // peers plainly.
    topo.set_lb_forwarding(true);
    topo.ip(
        Role::Client,
        &["route", "add", "198.18.1.0/24", "via", "198.18.0.1"],
    );
    let out = topo.curl("http://198.18.1.11:8080/", None);
    let (name, peer, _) = parse_backend_reply(out.expect_ok()).expect("backend reply");
    assert_eq!((name.as_str(), peer.as_str()), ("b1", "198.18.0.2"));
    let out = topo.testsrv(
        Role::Client,
        &["udp-query", "[2001:db8:1::11]:5353", "--timeout-ms", "2000"],
        Duration::from_secs(5),
    );
    assert!(
        out.expect_ok()
            .starts_with("backend=b1 peer=[2001:db8::2]:"),
        "{out}"
    );
}

#[test]
fn two_lb_nodes_share_the_front_and_back_bridges() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2).lb_nodes(2));
    assert_eq!(topo.namespaces().len(), 6, "{:?}", topo.namespaces());
    for (lb, front) in [(Role::Lb, "198.18.0.1"), (Role::Lb2, "198.18.0.3")] {
        topo.exec(
            lb,
            &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
            Duration::from_secs(5),
        )
        .expect_ok();
        let out = topo.exec(
            Role::Client,
            &["ping", "-c", "1", "-W", "2", front],
            Duration::from_secs(5),
        );
        assert!(out.success(), "{out}");
    }
    // Through lb2: the client routes the backends via 198.18.0.3 and b1
    // answers via lb2 as well.
    topo.ip(
        Role::Client,
        &["route", "add", "198.18.1.0/24", "via", "198.18.0.3"],
    );
    topo.set_backend_gateway(1, "198.18.1.2");
    let out = topo.curl("http://198.18.1.11:8080/", None);
    let (name, peer, _) = parse_backend_reply(out.expect_ok()).expect("backend reply");
    assert_eq!((name.as_str(), peer.as_str()), ("b1", "198.18.0.2"));
    // And through lb for b2, whose default route is still lb's.
    topo.ip(
        Role::Client,
        &["route", "replace", "198.18.1.12/32", "via", "198.18.0.1"],
    );
    let out = topo.curl("http://198.18.1.12:8080/", None);
    let (name, _, _) = parse_backend_reply(out.expect_ok()).expect("backend reply");
    assert_eq!(name, "b2");
}
