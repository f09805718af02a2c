//! Real-server health checks (`sluice.dev/health-check`): the host's own
//! probes to each backend, with rise and fall, taking a failing server out
//! of rotation (weight 0 by default) and back.
//!
//! The backends' servers are started by the tests themselves (not the
//! topology), so that one can be stopped by its PID and started again.
//! Every check here passing at all also shows that the steering program
//! leaves the probes' replies to the kernel (`steer.c` rule (b),
//! `local_addrs`): were they taken by the data path, every probe would time
//! out and every backend would be down.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{
    api, backend_spread, poll_until, require_root, topology, BgProcess, Pipe, ReloadOutcome, Role,
    Sluice, Topology, TopologyOpts,
};

/// 500 ms between probes; fall 3, rise 2.
const CHECK: &str =
    "http path=/healthz status=200 port=8080 interval=500ms timeout=400ms rise=2 fall=3";
const INTERVAL: Duration = Duration::from_millis(500);
/// Slack on top of fall × interval and rise × interval (a loaded 2-core
/// machine, the API poll, the republish).
const SLACK: Duration = Duration::from_secs(4);

fn config(check: &str, action: Option<&str>, n: usize) -> String {
    let action = action
        .map(|a| format!("\n    sluice.dev/health-check-action: {a}"))
        .unwrap_or_default();
    let idx: Vec<usize> = (1..=n).collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations:
    sluice.dev/health-check: "{check}"{action}
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
  - name: bulk
    protocol: TCP
    port: 9000
    targetPort: 9000
  - name: dns
    protocol: UDP
    port: 53
    targetPort: 5353
---
{}"#,
        endpoint_slice(
            "web-1",
            "web",
            &[
                ("http", 8080, "TCP"),
                ("bulk", 9000, "TCP"),
                ("dns", 5353, "UDP")
            ],
            &ready_backends(&idx)
        )
    )
}

/// `sluice-testsrv serve` in backend `i` with the given `--flag port`s.
fn serve(topo: &Topology, i: usize, ports: &[(&str, u16)]) -> BgProcess {
    let name = Topology::backend_name(i);
    let mut args: Vec<String> = vec!["serve".into(), "--name".into(), name.clone()];
    for (flag, port) in ports {
        args.push(format!("--{flag}"));
        args.push(port.to_string());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = topo.spawn_testsrv(Role::Backend(i), &argv);
    assert!(
        p.wait_for(Pipe::Stdout, 0, "ready", Duration::from_secs(10)),
        "server in {name}: {}",
        p.output(Pipe::Stderr)
    );
    p
}

const ALL: &[(&str, u16)] = &[("http", 8080), ("bulk", 9000), ("udp", 5353)];

/// (address, port) → (state, probes) of every check, from the API.
fn states(sluice: &Sluice) -> BTreeMap<(String, u16), (String, u64, String)> {
    let r = api::request(
        sluice.api_socket(),
        "GET",
        "/apis/sluice.dev/v1/healthchecks",
        None,
        None,
    );
    assert_eq!(r.code, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["kind"], "HealthCheckList", "{j}");
    j["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|i| {
            (
                (
                    i["address"].as_str().unwrap_or("").to_string(),
                    i["port"].as_u64().unwrap_or(0) as u16,
                ),
                (
                    i["state"].as_str().unwrap_or("").to_string(),
                    i["probes"].as_u64().unwrap_or(0),
                    i["lastError"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

/// Waits until the check of `addr:port` is in `state` with at least
/// `probes` probes run; how long that took.
fn wait_state(
    sluice: &Sluice,
    addr: &str,
    port: u16,
    state: &str,
    probes: u64,
    timeout: Duration,
) -> Duration {
    let t0 = Instant::now();
    let key = (addr.to_string(), port);
    poll_until(timeout, || {
        let s = states(sluice);
        s.get(&key)
            .filter(|(st, n, _)| st == state && *n >= probes)
            .map(|_| ())
    })
    .unwrap_or_else(|| {
        panic!(
            "{addr}:{port} not {state} within {timeout:?}: {:?}\nlog:\n{}",
            states(sluice),
            sluice.logs()
        )
    });
    t0.elapsed()
}

#[test]
fn a_stopped_server_leaves_rotation_and_returns() {
    require_root();
    let topo = topology!(TopologyOpts::default().servers(false));
    let mut servers: Vec<Option<BgProcess>> = (1..=3).map(|i| Some(serve(&topo, i, ALL))).collect();
    let mut sluice = Sluice::start(&topo, &config(CHECK, None, 3), &["--workers", "1"]);
    // Up after more probes than fall: the probes pass (their replies
    // reach the host's stack, not the data path).
    for i in 1..=3 {
        wait_state(&sluice, &Topology::backend_ip(i), 8080, "up", 4, SLACK);
    }
    let hits = backend_spread(&topo, 12);
    assert_eq!(hits.len(), 3, "all three in rotation: {hits:?}");

    // Stop b2's server (the process this test started, by PID).
    drop(servers[1].take());
    let b2 = Topology::backend_ip(2);
    let took = wait_state(&sluice, &b2, 8080, "down", 0, 3 * INTERVAL + SLACK);
    eprintln!(
        "b2 down after {took:?} (fall × interval = {:?})",
        3 * INTERVAL
    );
    let hits = backend_spread(&topo, 12);
    assert!(
        !hits.contains_key("b2") && hits.len() == 2,
        "only b1 and b3 take new connections: {hits:?}"
    );
    assert!(
        sluice
            .logs()
            .contains("real server down after 3 failed checks"),
        "the transition is logged:\n{}",
        sluice.logs()
    );
    // A config change meanwhile keeps b2 out (the overlay survives it).
    sluice.rewrite_config(&config(CHECK, None, 3).replace(
        "  annotations:\n",
        "  annotations:\n    example.com/touched: \"1\"\n",
    ));
    let outcome = sluice.reload();
    assert!(matches!(outcome, ReloadOutcome::Applied(_)), "{outcome:?}");
    let hits = backend_spread(&topo, 12);
    assert!(
        !hits.contains_key("b2"),
        "b2 back in rotation after a config change: {hits:?}"
    );

    servers[1] = Some(serve(&topo, 2, ALL));
    let took = wait_state(&sluice, &b2, 8080, "up", 0, 2 * INTERVAL + SLACK);
    eprintln!(
        "b2 up after {took:?} (rise × interval = {:?})",
        2 * INTERVAL
    );
    let hits = backend_spread(&topo, 12);
    assert!(
        hits.len() == 3 && hits.contains_key("b2"),
        "b2 is back in the rotation: {hits:?}"
    );

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}

#[test]
fn a_wrong_http_status_counts_as_down() {
    require_root();
    let topo = topology!(TopologyOpts::default().servers(false).backends(2));
    let _servers: Vec<BgProcess> = (1..=2).map(|i| serve(&topo, i, ALL)).collect();
    // The test server answers 200 to every path.
    let check = "http path=/ status=204 port=8080 interval=500ms timeout=400ms rise=2 fall=2";
    let sluice = Sluice::start(&topo, &config(check, None, 2), &["--workers", "1"]);
    for i in 1..=2 {
        wait_state(
            &sluice,
            &Topology::backend_ip(i),
            8080,
            "down",
            2,
            2 * INTERVAL + SLACK,
        );
    }
    let s = states(&sluice);
    let (_, _, why) = &s[&(Topology::backend_ip(1), 8080)];
    assert_eq!(why, "HTTP status 200, expected 204", "{s:?}");
    // Both at weight 0: the service has no usable endpoint and rejects.
    let out = topo.curl("http://198.18.100.10/", None);
    assert!(!out.success(), "a connection was served: {out}");
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}

/// The backend (1-based) with an established TCP connection on `port`.
fn holder(topo: &Topology, n: usize, port: u16) -> Option<usize> {
    (1..=n).find(|&i| {
        let out = topo.exec(
            Role::Backend(i),
            &[
                "ss",
                "-Htn",
                "state",
                "established",
                &format!("( sport = :{port} )"),
            ],
            Duration::from_secs(5),
        );
        !out.expect_ok().trim().is_empty()
    })
}

#[test]
fn weight0_lets_a_running_transfer_complete() {
    require_root();
    let topo = topology!(TopologyOpts::default().servers(false).backends(2));
    // Per backend: the checked HTTP server and, apart, the bulk server, so
    // that a server can fail its check while its transfer goes on.
    let mut http: Vec<Option<BgProcess>> = (1..=2)
        .map(|i| Some(serve(&topo, i, &[("http", 8080)])))
        .collect();
    let _bulk: Vec<BgProcess> = (1..=2)
        .map(|i| serve(&topo, i, &[("bulk", 9000)]))
        .collect();
    let check = "http port=8080 interval=500ms timeout=400ms rise=2 fall=2";
    let sluice = Sluice::start(
        &topo,
        &config(check, Some("weight0"), 2),
        &["--workers", "1"],
    );
    for i in 1..=2 {
        wait_state(&sluice, &Topology::backend_ip(i), 8080, "up", 1, SLACK);
    }
    // 20 MB at 4 MB/s: about 5 s on the wire.
    let mut bulk = topo.spawn_testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.100.10:9000",
            "--bytes",
            "20000000",
            "--rate",
            "4000000",
            "--timeout-ms",
            "30000",
        ],
    );
    let busy = poll_until(Duration::from_secs(5), || holder(&topo, 2, 9000))
        .expect("the transfer reached no backend");
    let other = 3 - busy;
    drop(http[busy - 1].take());
    wait_state(
        &sluice,
        &Topology::backend_ip(busy),
        8080,
        "down",
        0,
        2 * INTERVAL + SLACK,
    );
    assert!(
        bulk.is_running(),
        "the transfer ended before the check failed"
    );
    let hits = backend_spread(&topo, 6);
    assert_eq!(
        hits.get(&Topology::backend_name(other)),
        Some(&6),
        "new connections avoid the down server: {hits:?}"
    );
    let out = bulk.wait(Duration::from_secs(30));
    assert!(
        out.success() && out.stdout.starts_with("ok 20000000 "),
        "the transfer to the weight-0 server: {out}\nlog:\n{}",
        sluice.logs()
    );
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}

#[test]
fn udp_check_sees_port_unreachable() {
    require_root();
    let topo = topology!(TopologyOpts::default().servers(false).backends(2));
    let mut servers: Vec<Option<BgProcess>> = (1..=2).map(|i| Some(serve(&topo, i, ALL))).collect();
    let check =
        "udp send=ping expect=backend= port=5353 interval=500ms timeout=400ms rise=2 fall=2";
    let sluice = Sluice::start(
        &topo,
        &config(check, Some("remove"), 2),
        &["--workers", "1"],
    );
    let b1 = Topology::backend_ip(1);
    for i in 1..=2 {
        wait_state(&sluice, &Topology::backend_ip(i), 5353, "up", 2, SLACK);
    }
    drop(servers[0].take());
    wait_state(&sluice, &b1, 5353, "down", 0, 2 * INTERVAL + SLACK);
    let s = states(&sluice);
    assert_eq!(s[&(b1.clone(), 5353)].2, "ICMP port unreachable", "{s:?}");
    // Removed: every new HTTP connection goes to b2.
    let hits = backend_spread(&topo, 6);
    assert_eq!(hits.get("b2"), Some(&6), "{hits:?}");
    servers[0] = Some(serve(&topo, 1, ALL));
    wait_state(&sluice, &b1, 5353, "up", 0, 2 * INTERVAL + SLACK);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
