//! Faults survived without a restart: links going down and up on either
//! side of the LB while it serves, a queue-count change the kernel refuses,
//! a backend's server killed mid-stream, and a backend unplugged.
//!
//! What was measured first (kernel 6.18, veth): a flap keeps the AF_XDP
//! sockets bound and the XDP program attached, and the workers stay idle
//! while the link is down, so traffic resumes with the carrier; sluice
//! follows the links' `RTM_NEWLINK` events and counts each transition
//! (`control/src/links.rs`). One topology per test; every wait is bounded.

use std::time::{Duration, Instant};

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{
    api, backend_spread, parse_backend_reply, poll_until, require_root, topology, BgProcess, Pipe,
    Role, Sluice, Topology, TopologyOpts,
};

/// How long a curl through the VIP may take to work again after a flap.
const RECOVER: Duration = Duration::from_secs(5);
/// Probes every 500 ms, down after 3 failures.
const CHECK: &str =
    "http path=/healthz status=200 port=8080 interval=500ms timeout=400ms rise=2 fall=3";
const INTERVAL: Duration = Duration::from_millis(500);
/// Slack on top of fall × interval (a loaded 2-core machine).
const SLACK: Duration = Duration::from_secs(4);

/// `web` on the VIP: HTTP on 80 and the bulk stream on 9000, optionally
/// health-checked.
fn config(check: Option<&str>, n: usize) -> String {
    let annotations = check
        .map(|c| format!("\n  annotations:\n    sluice.dev/health-check: \"{c}\""))
        .unwrap_or_default();
    let idx: Vec<usize> = (1..=n).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default{annotations}\n\
         spec:\n  type: ClusterIP\n  clusterIP: 198.18.100.10\n  ports:\n  - name: http\n    \
         protocol: TCP\n    port: 80\n    targetPort: 8080\n  - name: bulk\n    protocol: TCP\n    \
         port: 9000\n    targetPort: 9000\n---\n{}",
        endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP"), ("bulk", 9000, "TCP")],
            &ready_backends(&idx)
        )
    )
}

/// Waits until a new connection through the VIP is answered; how long it took.
fn recovers(topo: &Topology, what: &str) -> Duration {
    let t = Instant::now();
    poll_until(RECOVER, || {
        let out = topo.curl("http://198.18.100.10/", None);
        parse_backend_reply(&out.stdout)
    })
    .unwrap_or_else(|| panic!("no answer through the VIP {RECOVER:?} after {what}"));
    let took = t.elapsed();
    eprintln!("{what}: serving again after {took:?}");
    took
}

/// `ip link set DEV down`, `down_for`, then up.
fn flap(topo: &Topology, role: Role, dev: &str, down_for: Duration) {
    topo.ip(role, &["link", "set", dev, "down"]);
    std::thread::sleep(down_for);
    topo.ip(role, &["link", "set", dev, "up"]);
}

#[test]
fn link_flaps_on_either_side_are_survived_without_a_restart() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2));
    let sluice = Sluice::start(&topo, &config(None, 2), &["--workers", "1"]);
    recovers(&topo, "start");
    let pid = sluice.pid();

    // An established transfer across a short flap of the LB's front link:
    // 8 MB at 4 MB/s, the link down for 300 ms after 0.5 s; TCP
    // retransmits what was lost and the stream completes intact.
    let bulk = topo.spawn_testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.100.10:9000",
            "--bytes",
            "8000000",
            "--rate",
            "4000000",
            "--timeout-ms",
            "20000",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    flap(&topo, Role::Lb, "front", Duration::from_millis(300));
    let out = bulk.wait(Duration::from_secs(25));
    assert!(
        out.success() && out.stdout.starts_with("ok 8000000 "),
        "the transfer across the flap: {out}\nlog:\n{}",
        sluice.logs()
    );
    recovers(&topo, "front down 300 ms (LB side)");

    // The LB's own links, longer, and then their peers: the backends'
    // switch port and the client's link (whose route to the VIPs the
    // kernel drops with the link, so the client re-adds it as its
    // network config would).
    flap(&topo, Role::Lb, "back", Duration::from_secs(1));
    recovers(&topo, "back down 1 s (LB side)");
    flap(&topo, Role::Sw, "p0", Duration::from_secs(1));
    recovers(&topo, "p0 down 1 s (peer of back)");
    flap(&topo, Role::Client, "eth0", Duration::from_secs(1));
    topo.ip(
        Role::Client,
        &["route", "replace", "198.18.100.0/24", "via", "198.18.0.1"],
    );
    recovers(&topo, "client eth0 down 1 s (peer of front)");

    // Fewer queues than bound sockets: the kernel refuses, and says why;
    // serving goes on.
    let out = topo.exec(
        Role::Lb,
        &["ethtool", "-L", "front", "rx", "1", "tx", "1"],
        Duration::from_secs(5),
    );
    assert!(
        !out.success() && out.stderr.contains("AF_XDP"),
        "shrinking the queues under bound AF_XDP sockets: {out}"
    );
    recovers(&topo, "refused ethtool -L");

    assert_eq!(sluice.pid(), pid, "the same process served throughout");
    let logs = sluice.logs();
    for dev in ["front", "back"] {
        for what in ["link down: ", "link up: "] {
            let tag = format!("ifname={dev}");
            assert!(
                logs.lines().any(|l| l.contains(what) && l.contains(&tag)),
                "{what}{dev} is logged:\n{logs}"
            );
        }
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    // front (LB side), back (LB side), back (p0), front (client eth0).
    assert_eq!(report.counter("link_down"), 4, "{:?}", report.counters);
    assert_eq!(report.counter("link_up"), 4, "{:?}", report.counters);
    assert_eq!(report.counter("xdp_lost"), 0, "{:?}", report.counters);
    assert_eq!(report.counter("queues_changed"), 0, "{:?}", report.counters);
}

/// `sluice-testsrv serve` for HTTP and the bulk stream in backend `i`.
fn serve(topo: &Topology, i: usize) -> BgProcess {
    let name = Topology::backend_name(i);
    let p = topo.spawn_testsrv(
        Role::Backend(i),
        &["serve", "--name", &name, "--http", "8080", "--bulk", "9000"],
    );
    assert!(
        p.wait_for(Pipe::Stdout, 0, "ready", Duration::from_secs(10)),
        "server in {name}: {}",
        p.output(Pipe::Stderr)
    );
    p
}

/// The state of the check of `addr:8080`, from the API.
fn state(sluice: &Sluice, addr: &str) -> Option<String> {
    let r = api::request(
        sluice.api_socket(),
        "GET",
        "/apis/sluice.dev/v1/healthchecks",
        None,
        None,
    );
    assert_eq!(r.code, 200, "{r:?}");
    let j = r.json();
    j["items"].as_array()?.iter().find_map(|i| {
        (i["address"] == addr && i["port"] == 8080)
            .then(|| i["state"].as_str().unwrap_or("").to_string())
    })
}

/// Waits until backend `i`'s check is `want`; how long it took.
fn wait_state(sluice: &Sluice, i: usize, want: &str, timeout: Duration) -> Duration {
    let t = Instant::now();
    let addr = Topology::backend_ip(i);
    poll_until(timeout, || {
        (state(sluice, &addr).as_deref() == Some(want)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{addr} not {want} within {timeout:?}: {:?}\nlog:\n{}",
            state(sluice, &addr),
            sluice.logs()
        )
    });
    t.elapsed()
}

/// The backend (1 or 2) with an established connection on the bulk port.
fn holder(topo: &Topology) -> Option<usize> {
    (1..=2).find(|&i| {
        let out = topo.exec(
            Role::Backend(i),
            &["ss", "-Htn", "state", "established", "( sport = :9000 )"],
            Duration::from_secs(5),
        );
        !out.expect_ok().trim().is_empty()
    })
}

/// Two health-checked backends, both up.
fn checked_pair(topo: &Topology) -> (Vec<Option<BgProcess>>, Sluice) {
    let servers = (1..=2).map(|i| Some(serve(topo, i))).collect();
    let sluice = Sluice::start(topo, &config(Some(CHECK), 2), &["--workers", "1"]);
    for i in 1..=2 {
        wait_state(&sluice, i, "up", SLACK + 2 * INTERVAL);
    }
    (servers, sluice)
}

#[test]
fn a_backend_killed_mid_stream_resets_its_flow_and_new_flows_go_elsewhere() {
    require_root();
    let topo = topology!(TopologyOpts::default().servers(false).backends(2));
    let (mut servers, sluice) = checked_pair(&topo);
    // 40 MB at 4 MB/s (10 s), the client sending a byte every 200 ms that
    // the server never reads: killed with unread data, the server's kernel
    // answers with a RST, which the LB must deliver.
    let bulk = topo.spawn_testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.100.10:9000",
            "--bytes",
            "40000000",
            "--rate",
            "4000000",
            "--timeout-ms",
            "15000",
            "--poke-ms",
            "200",
        ],
    );
    let busy = poll_until(Duration::from_secs(5), || holder(&topo))
        .expect("the transfer reached no backend");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    drop(servers[busy - 1].take()); // SIGKILL, by PID.
    let out = bulk.wait(Duration::from_secs(3));
    let took = t.elapsed();
    assert!(
        !out.success() && out.stderr.contains("reset"),
        "the client's flow to the killed server is reset: {out}"
    );
    assert!(took < Duration::from_secs(3), "reset after {took:?}");
    eprintln!("reset {took:?} after the kill");
    let down = wait_state(&sluice, busy, "down", 3 * INTERVAL + SLACK);
    eprintln!("b{busy} down {down:?} after the kill (fall × interval = 1.5 s)");
    let other = Topology::backend_name(3 - busy);
    let hits = backend_spread(&topo, 8);
    assert_eq!(
        hits.get(&other),
        Some(&8),
        "new flows avoid b{busy}: {hits:?}"
    );
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}

#[test]
fn an_unplugged_backend_is_removed_by_health_checks_and_returns() {
    require_root();
    let topo = topology!(TopologyOpts::default().servers(false).backends(2));
    let (_servers, sluice) = checked_pair(&topo);
    assert_eq!(
        backend_spread(&topo, 6).len(),
        2,
        "both backends in rotation"
    );
    // Unplug b2: its switch port goes down (no carrier, nothing answers).
    topo.ip(Role::Sw, &["link", "set", "p2", "down"]);
    let down = wait_state(&sluice, 2, "down", 3 * INTERVAL + SLACK);
    eprintln!("unplugged b2 down after {down:?} (fall × interval = 1.5 s)");
    let hits = backend_spread(&topo, 8);
    assert_eq!(hits.get("b1"), Some(&8), "new flows go to b1: {hits:?}");
    topo.ip(Role::Sw, &["link", "set", "p2", "up"]);
    let up = wait_state(&sluice, 2, "up", 2 * INTERVAL + SLACK);
    eprintln!("plugged back, b2 up after {up:?}");
    let hits = backend_spread(&topo, 8);
    assert!(hits.contains_key("b2"), "b2 back in rotation: {hits:?}");
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
