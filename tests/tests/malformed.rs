//! Hostile frames sent to the VIP are dropped, each counted under its own
//! reason, and none reaches a backend, while good traffic keeps flowing:
//! IPv4 with a bad or a zero header checksum, with a loose or strict source
//! route, with an option whose length is broken; TCP SYN+FIN, SYN+RST and a
//! segment with no flags (none creates a flow); frames with an 802.1Q or an
//! 802.1ad tag on the untagged front link. A frame with two tags is not IP
//! to the steering program and passes to the kernel.
//!
//! Every hostile frame carries the same payload marker and the backend's
//! link is captured for it; a well-formed crafted datagram with a marker of
//! its own, sent in the same burst, shows that the capture and the crafting
//! work.

use sluice_tests::craft::{self, Capture, Ip4};
use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{parse_backend_reply, require_root, topology, Role, Sluice, StopReport, VIP};
use sluice_tests::{Topology, TopologyOpts};

const CLIENT: [u8; 4] = [198, 18, 0, 2];
const VIP4: [u8; 4] = [198, 18, 100, 10];

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const URG: u8 = 0x20;

fn counter(r: &StopReport, name: &str) -> u64 {
    *r.counters
        .get(name)
        .unwrap_or_else(|| panic!("counter {name} was not printed: {:?}", r.counters))
}

/// `default/web` (TCP 80 → 8080) and `default/dns` (UDP 53 → 5353), one
/// endpoint: backend 1.
fn config() -> String {
    format!(
        "{}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: dns\n  namespace: default\n\
         spec:\n  type: ClusterIP\n  clusterIP: {VIP}\n  ports:\n  - name: dns\n    \
         protocol: UDP\n    port: 53\n    targetPort: 5353\n---\n{}",
        sluice_tests::k8s::web_http(&[1]),
        endpoint_slice(
            "dns-1",
            "dns",
            &[("dns", 5353, "UDP")],
            &ready_backends(&[1])
        )
    )
}

fn curl_vip(topo: &Topology) {
    let out = topo.curl(&format!("http://{VIP}/"), None);
    assert!(out.success(), "curl through the VIP: {out}");
    let (name, _, _) =
        parse_backend_reply(&out.stdout).unwrap_or_else(|| panic!("not a backend reply: {out}"));
    assert_eq!(name, "b1");
}

#[test]
fn hostile_frames_are_dropped_counted_and_never_forwarded() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1));
    let sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);
    let (lb_mac, client_mac) = (
        craft::mac(&topo, Role::Lb, "front"),
        craft::mac(&topo, Role::Client, "eth0"),
    );
    let (bad, good) = (craft::marker(), craft::marker());
    let eth =
        |tags: &[(u16, u16)], p: &[u8]| craft::ether(lb_mac, client_mac, tags, craft::IPV4, p);
    let ip = Ip4::new(CLIENT, VIP4);
    let with_options = |opts: &[u8]| {
        let mut i = ip.clone();
        i.options = opts.to_vec();
        i
    };
    let mut sport = 41000u16;
    let mut next_port = || {
        sport += 1;
        sport
    };

    // (frame, the drop counter it must land in)
    let mut hostile: Vec<(Vec<u8>, &str)> = Vec::new();
    let mut p = ip.udp(next_port(), 53, &bad);
    p[11] ^= 0x5a; // header checksum wrong
    hostile.push((eth(&[], &p), "drop_bad_ip_checksum"));
    let mut p = ip.udp(next_port(), 53, &bad);
    p[10..12].copy_from_slice(&[0, 0]); // header checksum zero
    hostile.push((eth(&[], &p), "drop_bad_ip_checksum"));
    let lsrr = [0x83, 7, 4, 198, 18, 1, 11, 0];
    let p = with_options(&lsrr).udp(next_port(), 53, &bad);
    hostile.push((eth(&[], &p), "drop_ip_source_route"));
    let ssrr = [0x89, 7, 4, 198, 18, 1, 11, 0];
    let p = with_options(&ssrr).udp(next_port(), 53, &bad);
    hostile.push((eth(&[], &p), "drop_ip_source_route"));
    // An option of length 12 in a 4-byte option area, then length 0.
    let p = with_options(&[148, 12, 0, 0]).udp(next_port(), 53, &bad);
    hostile.push((eth(&[], &p), "drop_bad_ip_options"));
    let p = with_options(&[148, 0, 0, 0]).udp(next_port(), 53, &bad);
    hostile.push((eth(&[], &p), "drop_bad_ip_options"));
    for flags in [SYN | FIN, SYN | RST, 0, FIN | PSH | URG] {
        let p = ip.tcp(next_port(), 80, flags, &bad);
        hostile.push((eth(&[], &p), "drop_bad_tcp_flags"));
    }
    let p = ip.udp(next_port(), 53, &bad);
    hostile.push((eth(&[(craft::TPID_8021Q, 100)], &p), "drop_vlan_tagged"));
    let p = ip.udp(next_port(), 53, &bad);
    hostile.push((eth(&[(craft::TPID_8021AD, 100)], &p), "drop_vlan_tagged"));
    // QinQ: not IP after one tag, so the kernel gets it (and drops it).
    let qinq = eth(
        &[(craft::TPID_8021AD, 100), (craft::TPID_8021Q, 200)],
        &ip.udp(next_port(), 53, &bad),
    );
    let well_formed = eth(&[], &ip.udp(next_port(), 53, &good));

    curl_vip(&topo);
    let cap = Capture::start(&topo, Role::Backend(1), "eth0", &[], 4000);
    let mut burst: Vec<Vec<u8>> = hostile.iter().map(|(f, _)| f.clone()).collect();
    burst.push(qinq);
    burst.push(well_formed);
    craft::send_frames(&topo, Role::Client, "eth0", &burst);
    // Good traffic keeps flowing during and after the burst.
    curl_vip(&topo);
    curl_vip(&topo);
    let frames = cap.frames();
    let r = sluice.stop();
    assert!(r.status.is_some_and(|s| s.success()), "{r:?}");

    let carrying = |m: &[u8]| {
        frames
            .iter()
            .filter(|f| f.windows(m.len()).any(|w| w == m))
            .count()
    };
    assert_eq!(carrying(&bad), 0, "a hostile frame reached the backend");
    assert_eq!(
        carrying(&good),
        1,
        "the well-formed datagram reaches b1 once"
    );

    let mut want = std::collections::BTreeMap::<&str, u64>::new();
    for (_, name) in &hostile {
        *want.entry(name).or_default() += 1;
    }
    for (name, n) in &want {
        assert_eq!(counter(&r, name), *n, "{name}: {:?}", r.counters);
    }
    // Three curls and the well-formed datagram; no hostile frame made a
    // flow, and none was counted as anything else.
    assert_eq!(counter(&r, "new_flows"), 4, "{:?}", r.counters);
    assert_eq!(counter(&r, "drop_malformed"), 0, "{:?}", r.counters);
    let parse_errors: u64 = r
        .counters
        .iter()
        .filter(|(k, _)| k.starts_with("parse_"))
        .map(|(_, v)| v)
        .sum();
    let parse_refusals =
        want["drop_bad_ip_checksum"] + want["drop_ip_source_route"] + want["drop_bad_ip_options"];
    assert_eq!(parse_errors, parse_refusals, "{:?}", r.counters);
}
