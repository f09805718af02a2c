//! VIP announcement through BIRD 2 (`sluice run --bgp bird`, issue 14).
//!
//! A router namespace runs BIRD with a BGP session to a BIRD in the LB
//! namespace; the LB's BIRD has the `bird.conf` of README "Running a tier
//! (BGP with BIRD)" (static protocols `sluice`/`sluice6` that include the
//! files Sluice writes, exported to BGP); the router's BIRD installs what
//! it learns in its kernel table, and the client reaches the VIPs only
//! through the router (`TopologyOpts::router`). Nothing here speaks BGP but
//! BIRD.
//!
//! ```text
//!  client 198.18.0.2 ── brf ── rt 198.18.0.4 (bird, kernel routes, forwarding)
//!                        └──── lb 198.18.0.1 (sluice --bgp bird, bird) ── backends
//! ```
//!
//! Every wait is a bounded poll (15 s); nothing asserts on speed.

use std::time::Duration;

use sluice_tests::bird::{kernel_nexthops, Bird};
use sluice_tests::k8s::{endpoint_slice, Ep};
use sluice_tests::tier::{self, bgp_args, Tier, ROUTER_IP, ROUTE_WAIT};
use sluice_tests::{
    parse_backend_reply, poll_until, require_root, topology, ReloadOutcome, Role, Sluice, Topology,
    TopologyOpts, VIP,
};

const LB_IP: &str = "198.18.0.1";

/// `default/web` on the VIP, port 80 → 8080, backends b1 and b2, ready or
/// not (`ready: false, serving: false`: no usable endpoint).
fn config(ready: bool) -> String {
    let eps: Vec<Ep> = [1, 2]
        .iter()
        .map(|&i| Ep {
            ready,
            serving: ready,
            ..Ep::ready(Topology::backend_ip(i))
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  \
         type: ClusterIP\n  clusterIP: {VIP}\n  ports:\n  - name: http\n    \
         protocol: TCP\n    port: 80\n    targetPort: 8080\n---\n{}",
        endpoint_slice("web-1", "web", &[("http", 8080, "TCP")], &eps)
    )
}

/// Waits until the router's kernel route to the VIP has exactly `want` as
/// next hops (empty: no route); panics with both BIRDs' views otherwise.
fn wait_route(topo: &Topology, birds: &[&Bird], want: &[&str], what: &str, logs: &str) {
    tier::wait_route(topo, birds, want, what, logs)
}

/// One HTTP request from the client to the VIP (through the router):
/// the name of the backend that answered.
fn request(topo: &Topology) -> Result<String, String> {
    let out = topo.curl(&format!("http://{VIP}/"), None);
    if !out.success() {
        return Err(out.to_string());
    }
    parse_backend_reply(&out.stdout)
        .map(|r| r.0)
        .ok_or_else(|| out.to_string())
}

/// The LB's `/metrics` text (the default address, in its namespace).
fn metrics(topo: &Topology, lb: Role) -> String {
    tier::metrics(topo, lb)
}

/// `sluice_bgp_announced{vip="VIP"}` as the LB's `/metrics` shows it.
fn announced_metric(topo: &Topology) -> Option<u64> {
    let key = format!("sluice_bgp_announced{{vip=\"{VIP}\"}} ");
    metrics(topo, Role::Lb)
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_vip_is_announced_while_it_has_ready_endpoints_and_withdrawn_at_shutdown() {
    require_root();
    let topo = topology!(TopologyOpts::default().router(true).backends(2));
    let rt = Bird::start_router(&topo, ROUTER_IP, &[LB_IP]);
    let lb = Bird::start_lb(&topo, Role::Lb, LB_IP, ROUTER_IP);
    let args = bgp_args(&topo, Role::Lb);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sluice = Sluice::start(&topo, &config(true), &args);
    let birds = [&rt, &lb];

    // (a) After the warm-up the router has VIP/32 via the LB.
    wait_route(&topo, &birds, &[LB_IP], "after the warm-up", &sluice.logs());
    assert_eq!(announced_metric(&topo), Some(1), "{}", sluice.logs());
    let include = std::fs::read_to_string(Bird::include_path(&topo, Role::Lb)).expect("include");
    assert!(
        include.contains(&format!("route {VIP}/32 blackhole;")),
        "{include}"
    );

    // (b) A client's request through the router reaches a backend.
    let backend = poll_until(Duration::from_secs(10), || request(&topo).ok());
    assert!(
        backend.as_deref().is_some_and(|b| b == "b1" || b == "b2"),
        "no backend answered through the router: {:?}\n--- sluice log\n{}",
        request(&topo),
        sluice.logs()
    );

    // (c) No usable endpoint: withdrawn; ready again: announced again.
    sluice.rewrite_config(&config(false));
    let r = sluice.reload();
    assert!(matches!(r, ReloadOutcome::Applied(_)), "{r:?}");
    wait_route(&topo, &birds, &[], "endpoints not ready", &sluice.logs());
    assert_eq!(announced_metric(&topo), Some(0), "{}", sluice.logs());
    sluice.rewrite_config(&config(true));
    let r = sluice.reload();
    assert!(matches!(r, ReloadOutcome::Applied(_)), "{r:?}");
    wait_route(
        &topo,
        &birds,
        &[LB_IP],
        "endpoints ready again",
        &sluice.logs(),
    );
    assert!(
        poll_until(Duration::from_secs(10), || request(&topo).ok()).is_some(),
        "no answer after the route came back: {:?}",
        request(&topo)
    );

    // (d) SIGTERM: every VIP withdrawn before sluice exits.
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    wait_route(&topo, &birds, &[], "after SIGTERM", &report.logs);
    let include = std::fs::read_to_string(Bird::include_path(&topo, Role::Lb)).expect("include");
    assert!(!include.contains("route "), "{include}");
}

/// The limit README "Running a tier" states: a SIGKILLed sluice cannot
/// withdraw (its watchdog died with it; BIRD and its session stay up), so
/// the route stays; what the operator pairs it with, emptying the include
/// file and `birdc configure` (e.g. a systemd `ExecStopPost=`), withdraws
/// it. A restarted sluice also withdraws at once (its first sync, during
/// the warm-up, writes the empty set).
#[test]
fn a_sigkilled_sluice_leaves_its_route_until_the_include_is_emptied() {
    require_root();
    let topo = topology!(TopologyOpts::default().router(true).backends(2));
    let rt = Bird::start_router(&topo, ROUTER_IP, &[LB_IP]);
    let lb = Bird::start_lb(&topo, Role::Lb, LB_IP, ROUTER_IP);
    let args = bgp_args(&topo, Role::Lb);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let birds = [&rt, &lb];

    let sluice = Sluice::start(&topo, &config(true), &args);
    wait_route(&topo, &birds, &[LB_IP], "after the warm-up", &sluice.logs());
    drop(sluice); // SIGKILL, by PID
                  // Longer than the hold time (3 s): the session is BIRD's, not sluice's.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        kernel_nexthops(&topo, VIP),
        vec![LB_IP.to_string()],
        "a SIGKILLed sluice cannot withdraw; BIRD keeps announcing"
    );

    // A restarted sluice withdraws during its warm-up, then announces.
    let long_warmup: Vec<&str> = args
        .iter()
        .map(|a| if *a == "1s" { "30s" } else { a })
        .collect();
    let sluice = Sluice::start(&topo, &config(true), &long_warmup);
    wait_route(&topo, &birds, &[], "restart, warming up", &sluice.logs());
    drop(sluice);

    // Killed in its warm-up, it leaves nothing announced.
    wait_route(&topo, &birds, &[], "killed in the warm-up", "");

    // The operator's remedy after a crash: empty include, `birdc configure`.
    let sluice = Sluice::start(&topo, &config(true), &args);
    wait_route(&topo, &birds, &[LB_IP], "announced again", &sluice.logs());
    drop(sluice);
    std::fs::write(Bird::include_path(&topo, Role::Lb), "").expect("empty include");
    let out = lb.birdc("configure");
    assert!(out.stdout.contains("Reconfigured"), "{out}");
    wait_route(&topo, &birds, &[], "include emptied by the operator", "");
}

/// `default/dns` on the VIP, UDP 5353, backends b1 and b2, Maglev (`mh`,
/// on the client address: the same client goes to the same backend on
/// every host that has the same config).
fn mh_config() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns\n  namespace: default\n  \
         annotations:\n    sluice.dev/scheduler: mh\nspec:\n  type: ClusterIP\n  \
         clusterIP: {VIP}\n  ports:\n  - name: dns\n    protocol: UDP\n    port: 5353\n    \
         targetPort: 5353\n---\n{}",
        endpoint_slice(
            "dns-1",
            "dns",
            &[("dns", 5353, "UDP")],
            &[1, 2].map(|i| Ep::ready(Topology::backend_ip(i)))
        )
    )
}

/// Two LB hosts, each with sluice and BIRD, announce the same VIP
/// ([`Tier`]: the router's BIRD merges the two paths into one multipath
/// kernel route, `merge paths on`, and the kernel spreads flows by their
/// ports, `fib_multipath_hash_policy=1`; both hosts show the same table
/// digest). 64 UDP flows from distinct source ports are all answered,
/// both hosts carry some (the backend sees each host's own SNAT
/// address), and with `mh` both hosts send every flow of the one client
/// to the same backend. Withdrawing on one host leaves the route with the
/// other alone.
#[test]
fn two_hosts_announce_one_vip_and_ecmp_splits_flows_over_both() {
    require_root();
    let topo = topology!(Tier::opts(2));
    // Masqueraded, so that each backend's reply returns to the host that
    // forwarded the request (its own SNAT address) and names that host.
    let mut tier = Tier::start(&topo, &mh_config(), &["--masquerade-all"]);

    // 64 flows, each a new socket (a new source port), one query each.
    let mut by_host = std::collections::BTreeMap::<String, usize>::new();
    let mut by_backend = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..64 {
        let out = topo.testsrv(
            Role::Client,
            &[
                "udp-query",
                &format!("{VIP}:5353"),
                "--count",
                "1",
                "--timeout-ms",
                "2000",
            ],
            Duration::from_secs(5),
        );
        let (backend, peer, _) = parse_backend_reply(&out.stdout)
            .unwrap_or_else(|| panic!("flow {i} not answered: {out}\n{}", tier.logs()));
        *by_host.entry(peer).or_default() += 1;
        *by_backend.entry(backend).or_default() += 1;
    }
    eprintln!("ECMP split by SNAT address (host): {by_host:?}; by backend: {by_backend:?}");
    assert_eq!(
        by_host.keys().collect::<Vec<_>>(),
        ["198.18.1.1", "198.18.1.2"],
        "every flow answered, through both hosts: {by_host:?}"
    );
    assert_eq!(
        by_backend.len(),
        1,
        "mh on the client address: both hosts choose the same backend: {by_backend:?}"
    );

    // One host withdraws (SIGTERM): the route keeps the other alone.
    let report = tier.stop(1);
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    tier.wait_nexthops(&[0], "lb2 stopped");
    let out = topo.testsrv(
        Role::Client,
        &[
            "udp-query",
            &format!("{VIP}:5353"),
            "--count",
            "8",
            "--timeout-ms",
            "2000",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.contains("peer=198.18.1.1:"))
            .count(),
        8,
        "after lb2 withdrew, lb answers every query: {out}"
    );
    let report = tier.stop(0);
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    tier.wait_nexthops(&[], "both stopped");
}

/// The loss of a host ([`Tier::kill`]: lb2 cut off the network, the
/// front switch dropping its frames, and its sluice and BIRD SIGKILLed),
/// mid-stream. The router's BGP hold timer (3 s) removes lb2's path; the
/// flows ECMP had sent to lb2 move to lb, whose `mh` choice sends them to
/// the same backend, so every stream is answered again, by the backend
/// it had. How long the moved streams went unanswered is printed (not
/// asserted: speed is not a test's business).
#[test]
fn the_loss_of_a_host_moves_its_flows_to_the_other_and_the_same_backend() {
    require_root();
    let topo = topology!(Tier::opts(2));
    let mut tier = Tier::start(&topo, &mh_config(), &["--masquerade-all"]);

    // 16 streams (16 source ports), a datagram every 100 ms for 10 s.
    let streams: Vec<_> = (0..16)
        .map(|_| {
            topo.spawn_testsrv(
                Role::Client,
                &[
                    "udp-stream",
                    &format!("{VIP}:5353"),
                    "--count",
                    "100",
                    "--interval-ms",
                    "100",
                ],
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let killed = std::time::Instant::now();
    tier.kill(1);
    let gone = poll_until(ROUTE_WAIT, || {
        (kernel_nexthops(&topo, VIP) == [LB_IP]).then_some(killed.elapsed())
    });
    assert!(
        gone.is_some(),
        "lb2's path still at the router: {:?}",
        kernel_nexthops(&topo, VIP)
    );
    let mut moved = Vec::new();
    for (i, s) in streams.into_iter().enumerate() {
        let out = s.wait(Duration::from_secs(20));
        assert!(out.success(), "stream {i}: {out}");
        // (seq, host, backend) of the answered datagrams; timeouts counted.
        let mut answered = Vec::new();
        let mut lost = 0;
        for l in out.stdout.lines() {
            let seq: u32 = l
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            match parse_backend_reply(l) {
                Some((b, peer, _)) => answered.push((seq, peer, b)),
                None => lost += 1,
            }
        }
        let backends: std::collections::BTreeSet<_> = answered.iter().map(|a| &a.2).collect();
        assert_eq!(
            backends.len(),
            1,
            "stream {i} changed backend:\n{}",
            out.stdout
        );
        let last = answered.last().map(|a| a.0);
        assert_eq!(
            last,
            Some(99),
            "stream {i} is answered again at its end:\n{}",
            out.stdout
        );
        let first_host = answered.first().map(|a| a.1.clone());
        if first_host.as_deref() == Some("198.18.1.2") {
            assert!(
                answered.iter().any(|a| a.1 == "198.18.1.1"),
                "stream {i} on lb2 moved to lb:\n{}",
                out.stdout
            );
            moved.push(lost * 100);
        } else {
            assert_eq!(
                lost, 0,
                "stream {i} stayed on lb and lost nothing:\n{}",
                out.stdout
            );
        }
    }
    eprintln!(
        "host loss: lb2's path gone from the router after {gone:?}; {} of 16 streams moved, \
         unanswered for {moved:?} ms each",
        moved.len()
    );
    assert!(!moved.is_empty(), "ECMP sent no stream to lb2");
    let report = tier.stop(0);
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}

/// `sluice_config_last_reload_success` as the LB's `/metrics` shows it.
fn reload_metric(topo: &Topology) -> Option<u64> {
    metrics(topo, Role::Lb)
        .lines()
        .find_map(|l| l.strip_prefix("sluice_config_last_reload_success "))
        .and_then(|v| v.trim().parse().ok())
}

/// One source of truth (issue 14): a config file that fails to apply at
/// reload leaves the host on an older generation than its file, so it
/// withdraws its VIPs (it may disagree with the hosts that applied the
/// file) until a reload applies.
#[test]
fn a_host_whose_config_failed_to_apply_withdraws_until_a_reload_applies() {
    require_root();
    let topo = topology!(TopologyOpts::default().router(true).backends(2));
    let rt = Bird::start_router(&topo, ROUTER_IP, &[LB_IP]);
    let lb = Bird::start_lb(&topo, Role::Lb, LB_IP, ROUTER_IP);
    let args = bgp_args(&topo, Role::Lb);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sluice = Sluice::start(&topo, &config(true), &args);
    let birds = [&rt, &lb];
    wait_route(&topo, &birds, &[LB_IP], "after the warm-up", &sluice.logs());
    assert_eq!(reload_metric(&topo), Some(1), "{}", sluice.logs());

    sluice.rewrite_config("apiVersion: v1\nkind: Service\nmetadata: [not, a, map\n");
    let r = sluice.reload();
    assert!(matches!(r, ReloadOutcome::Rejected(_)), "{r:?}");
    wait_route(&topo, &birds, &[], "the reload failed", &sluice.logs());
    assert_eq!(reload_metric(&topo), Some(0), "{}", sluice.logs());
    // Still serving the old generation, only not announced.
    assert_eq!(announced_metric(&topo), Some(0), "{}", sluice.logs());

    sluice.rewrite_config(&config(true));
    let r = sluice.reload();
    assert!(matches!(r, ReloadOutcome::Applied(_)), "{r:?}");
    wait_route(&topo, &birds, &[LB_IP], "a reload applied", &sluice.logs());
    assert_eq!(reload_metric(&topo), Some(1), "{}", sluice.logs());
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
