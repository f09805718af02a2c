//! Faults survived without a restart (experiment scaffold).

use std::time::Duration;

use sluice_tests::k8s::web_http;
use sluice_tests::{poll_until, require_root, topology, Role, Sluice};

fn flap(topo: &sluice_tests::Topology, role: Role, dev: &str, ms: u64) {
    topo.ip(role, &["link", "set", dev, "down"]);
    std::thread::sleep(Duration::from_millis(ms));
    topo.ip(role, &["link", "set", dev, "up"]);
    let t = std::time::Instant::now();
    let ok = poll_until(Duration::from_secs(10), || {
        topo.curl("http://198.18.100.10/", None).success().then_some(())
    });
    eprintln!("after {role:?} {dev} flap: {:?} in {:?}", ok, t.elapsed());
}

#[test]
fn experiment_lb_link_flap() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &web_http(&[1, 2]), &["--workers", "1"]);
    assert!(topo.curl("http://198.18.100.10/", None).success());
    let stat = || std::fs::read_to_string(format!("/proc/{}/stat", sluice.pid())).unwrap().split_whitespace().nth(13).unwrap().parse::<u64>().unwrap();
    let u0 = stat();
    topo.ip(Role::Lb, &["link", "set", "front", "down"]);
    std::thread::sleep(Duration::from_millis(2000));
    eprintln!("utime ticks during 2s down: {}", stat() - u0);
    topo.ip(Role::Lb, &["link", "set", "front", "up"]);
    for args in [vec!["-L", "front", "rx", "1", "tx", "1"], vec!["-l", "front"]] {
        let mut a = vec!["ethtool"]; a.extend(args);
        eprintln!("{}", topo.exec(Role::Lb, &a, Duration::from_secs(3)));
    }
    let ok = poll_until(Duration::from_secs(5), || {
        topo.curl("http://198.18.100.10/", None).success().then_some(())
    });
    eprintln!("after -L 1: {ok:?}");
    eprintln!("{}", topo.exec(Role::Lb, &["ethtool", "-L", "front", "rx", "2", "tx", "2"], Duration::from_secs(3)));
    let mut n = 0;
    for _ in 0..10 { if topo.curl("http://198.18.100.10/", None).success() { n += 1; } }
    eprintln!("after -L 2: {n}/10");
    let report = sluice.stop();
    eprintln!("{}", report.logs);
}
