//! keepalived.conf loaded unchanged with `--config` (recognised by its
//! syntax): the example's NAT virtual server serves curl through its VIP,
//! `sluice ipvsadm -Ln` lists both virtual servers as ipvsadm would, a
//! stopped real server leaves rotation by its TCP_CHECK (removed, as
//! keepalived does) and by its HTTP_GET (weight 0: `inhibit_on_failure`)
//! and comes back, a MISC_CHECK is refused at start naming its line, and a
//! SIGHUP with such a file keeps the old config.
//!
//! One topology, the servers started by the test (so that one can be
//! stopped by its PID). The file is the example itself, with the DR
//! service's `delay_loop` cut from 5 s to 1 s so that its three-probe fall
//! fits the test's time.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_tests::{
    api, backend_spread, poll_until, require_root, sluice_bin, topology, BgProcess, Pipe,
    ReloadOutcome, Role, Sluice, Topology, TopologyOpts,
};

const EXAMPLE: &str = include_str!("../../examples/keepalived.conf");
/// Probes of the NAT service: every 2 s, down after 2 failures; of the
/// DR service (here): every 1 s, down after 3. Plus slack for a loaded
/// 2-core machine.
const WAIT: Duration = Duration::from_secs(15);

fn config() -> String {
    let c = EXAMPLE.replace("    delay_loop 5\n", "    delay_loop 1\n");
    assert_ne!(c, EXAMPLE, "the example's DR delay_loop moved");
    c
}

/// The example with its first TCP_CHECK made a MISC_CHECK, and that line.
fn with_misc_check() -> (String, usize) {
    let line = EXAMPLE
        .lines()
        .position(|l| l.trim() == "TCP_CHECK {")
        .expect("the example has a TCP_CHECK")
        + 1;
    (config().replacen("TCP_CHECK {", "MISC_CHECK {", 1), line)
}

fn serve(topo: &Topology, i: usize) -> BgProcess {
    let name = Topology::backend_name(i);
    let p = topo.spawn_testsrv(
        Role::Backend(i),
        &["serve", "--name", &name, "--http", "8080"],
    );
    assert!(
        p.wait_for(Pipe::Stdout, 0, "ready", Duration::from_secs(10)),
        "server in {name}: {}",
        p.output(Pipe::Stderr)
    );
    p
}

/// (address, check) → (state, probes), from the API.
fn states(sluice: &Sluice) -> BTreeMap<(String, String), (String, u64)> {
    let r = api::request(
        sluice.api_socket(),
        "GET",
        "/apis/sluice.dev/v1/healthchecks",
        None,
        None,
    );
    assert_eq!(r.code, 200, "{r:?}");
    r.json()["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap_or("").to_string();
            (
                (s("address"), s("check")),
                (s("state"), i["probes"].as_u64().unwrap_or(0)),
            )
        })
        .collect()
}

/// Waits until backend `i`'s `check` (tcp, http) is `state` after at
/// least one probe.
fn wait_state(sluice: &Sluice, i: usize, check: &str, state: &str) {
    let key = (Topology::backend_ip(i), check.to_string());
    poll_until(WAIT, || {
        states(sluice)
            .get(&key)
            .filter(|(s, n)| s == state && *n >= 1)
            .map(|_| ())
    })
    .unwrap_or_else(|| {
        panic!(
            "{key:?} not {state} within {WAIT:?}: {:?}\nlog:\n{}",
            states(sluice),
            sluice.logs()
        )
    });
}

fn ipvsadm_ln(sock: &Path) -> String {
    let o = Command::new(sluice_bin())
        .args(["ipvsadm", "-Ln"])
        .env("SLUICE_SOCKET", sock)
        .output()
        .expect("run sluice ipvsadm");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const HEAD: &str = "IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
";

const ALL_UP: &str = "TCP  198.18.100.10:80 rr
  -> 198.18.1.11:8080             Masq    1      0          0         
  -> 198.18.1.12:8080             Masq    1      0          0         
  -> 198.18.1.13:8080             Masq    1      0          0         
TCP  198.18.100.20:8080 wlc persistent 300 mask 255.255.255.0
  -> 198.18.1.11:8080             Route   3      0          0         
  -> 198.18.1.12:8080             Route   1      0          0         
";

/// b2 down: removed from the NAT service (keepalived's default), weight 0
/// in the DR one (`inhibit_on_failure`).
const B2_DOWN: &str = "TCP  198.18.100.10:80 rr
  -> 198.18.1.11:8080             Masq    1      0          0         
  -> 198.18.1.13:8080             Masq    1      0          0         
TCP  198.18.100.20:8080 wlc persistent 300 mask 255.255.255.0
  -> 198.18.1.11:8080             Route   3      0          0         
  -> 198.18.1.12:8080             Route   0      0          0         
";

#[test]
fn keepalived_conf_serves_lists_checks_and_refuses_misc_check() {
    require_root();
    let topo = topology!(TopologyOpts::default().servers(false));
    let (bad, line) = with_misc_check();
    let want = format!(":{line}: MISC_CHECK is not supported by Sluice (it runs a script; use TCP_CHECK or HTTP_GET)");

    // Refused at start, naming the line, before anything is set up.
    let out = Sluice::run_to_exit(&topo, &bad, &["--workers", "1"], Duration::from_secs(10));
    assert!(!out.success(), "a MISC_CHECK file started: {out}");
    assert!(out.stderr.contains(&want), "{out}");

    let mut servers: Vec<Option<BgProcess>> = (1..=3).map(|i| Some(serve(&topo, i))).collect();
    let mut sluice = Sluice::start(&topo, &config(), &["--workers", "1"]);
    let logs = sluice.logs();
    assert!(
        logs.contains(":9: global_defs ignored")
            && logs.contains(":17: vrrp_instance VI_1 ignored"),
        "one line each for what is keepalived's own:\n{logs}"
    );
    for i in 1..=3 {
        wait_state(&sluice, i, "tcp", "up");
    }
    for i in 1..=2 {
        wait_state(&sluice, i, "http", "up");
    }
    let hits = backend_spread(&topo, 6);
    let even: BTreeMap<String, usize> = (1..=3).map(|i| (format!("b{i}"), 2)).collect();
    assert_eq!(hits, even, "round robin over the three real servers");
    assert_eq!(ipvsadm_ln(sluice.api_socket()), format!("{HEAD}{ALL_UP}"));

    // Stop b2's server (started by this test, by PID): both checks fail.
    drop(servers[1].take());
    wait_state(&sluice, 2, "tcp", "down");
    wait_state(&sluice, 2, "http", "down");
    assert_eq!(ipvsadm_ln(sluice.api_socket()), format!("{HEAD}{B2_DOWN}"));
    let hits = backend_spread(&topo, 4);
    assert_eq!(
        hits.keys().map(String::as_str).collect::<Vec<_>>(),
        ["b1", "b3"],
        "b2 left rotation: {hits:?}"
    );

    // A SIGHUP with a MISC_CHECK is rejected whole, naming the line.
    sluice.rewrite_config(&bad);
    match sluice.reload() {
        ReloadOutcome::Rejected(e) => assert!(e.contains(&want), "{e}"),
        o => panic!("{o:?}\nlog:\n{}", sluice.logs()),
    }
    assert_eq!(ipvsadm_ln(sluice.api_socket()), format!("{HEAD}{B2_DOWN}"));

    // b2 back: up at its first good probe (keepalived has no rise count).
    servers[1] = Some(serve(&topo, 2));
    wait_state(&sluice, 2, "tcp", "up");
    wait_state(&sluice, 2, "http", "up");
    assert_eq!(ipvsadm_ln(sluice.api_socket()), format!("{HEAD}{ALL_UP}"));
    assert_eq!(backend_spread(&topo, 6), even, "b2 back in rotation");

    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
