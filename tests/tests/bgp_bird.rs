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
use sluice_tests::{
    parse_backend_reply, poll_until, require_root, topology, ReloadOutcome, Role, Sluice, Topology,
    TopologyOpts, VIP,
};

/// How long a route may take to appear or go (BGP session set-up with
/// 1 s timers, the 1 s warm-up, BIRD's reconfiguration).
const ROUTE_WAIT: Duration = Duration::from_secs(15);
const ROUTER_IP: &str = "198.18.0.4";
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

/// `sluice run` arguments that drive the LB's BIRD of `topo`.
fn bgp_args(topo: &Topology, role: Role) -> Vec<String> {
    let p = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    vec![
        "--workers".into(),
        "1".into(),
        "--bgp".into(),
        "bird".into(),
        "--bird-socket".into(),
        p(Bird::socket_path(topo, role)),
        "--bird-include".into(),
        p(Bird::include_path(topo, role)),
        "--bird-include6".into(),
        p(Bird::include6_path(topo, role)),
        "--announce-after".into(),
        "1s".into(),
    ]
}

/// Waits until the router's kernel route to the VIP has exactly `want` as
/// next hops (empty: no route); panics with both BIRDs' views otherwise.
fn wait_route(topo: &Topology, birds: &[&Bird], want: &[&str], what: &str, logs: &str) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let got = poll_until(ROUTE_WAIT, || {
        (kernel_nexthops(topo, VIP) == want).then_some(())
    });
    if got.is_none() {
        let views: Vec<String> = birds
            .iter()
            .map(|b| {
                let r = b.birdc("show route all");
                let p = b.birdc("show protocols");
                format!("{}\n{}", p.stdout, r.stdout)
            })
            .collect();
        panic!(
            "{what}: the router's route to {VIP} has next hops {:?}, want {want:?} \
             (after {ROUTE_WAIT:?})\n--- ip route in the router\n{}\n--- BIRDs\n{}\n--- sluice log\n{logs}",
            kernel_nexthops(topo, VIP),
            topo.exec(Role::Router, &["ip", "route"], Duration::from_secs(5))
                .stdout,
            views.join("\n---\n"),
        );
    }
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

/// `sluice_bgp_announced{vip="VIP"}` as the LB's `/metrics` shows it.
fn announced_metric(topo: &Topology) -> Option<u64> {
    let out = topo.exec(
        Role::Lb,
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://127.0.0.1:10249/metrics",
        ],
        Duration::from_secs(5),
    );
    let key = format!("sluice_bgp_announced{{vip=\"{VIP}\"}} ");
    out.stdout
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
