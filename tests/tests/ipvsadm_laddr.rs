//! DPVS's local addresses and IPVS's persistence templates through
//! `sluice ipvsadm` against a running sluice, with real kernel TCP:
//!
//! * a FULLNAT virtual service built by ipvsadm commands with
//!   `--add-laddr -z 198.18.1.5` (an address added to the LB's back link):
//!   the backends, which have no route to the clients at all, see that
//!   local address as their peer and answer through Sluice; `-G` lists it
//!   in DPVS's layout with its live flows; bad local-address commands fail
//!   with DPVS's messages and exit codes and change nothing (an address the
//!   host does not own is refused, named); `-S` saves an `--add-laddr`
//!   line that `-R` restores into a fresh daemon, which translates to it
//!   again, and keeps it across a restart (`--state-dir`); `--del-laddr`
//!   takes it away (the peer is then the LB's own
//!   route source);
//! * a persistent service (`-p 300`): after one connection `-Lnc` lists
//!   the persistence template (client port 0, state NONE, expiry counting
//!   down from 5:00) beside the flow, and `--persistent-conn` counts it as
//!   its real server's PersistConn.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_tests::{
    parse_backend_reply, poll_until, require_root, sluice_bin, topology, Role, Sluice, Topology,
};

/// A state directory removed on drop (also when the test fails).
struct StateDir(std::path::PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(sock: &Path, args: &[&str], stdin: &str) -> Out {
    let mut child = Command::new(sluice_bin())
        .arg("ipvsadm")
        .args(args)
        .env("SLUICE_SOCKET", sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice ipvsadm");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ipvsadm(sock: &Path, line: &str) -> Out {
    let args: Vec<&str> = line.split_whitespace().collect();
    run(sock, &args, "")
}

fn ok(sock: &Path, line: &str) -> String {
    let o = ipvsadm(sock, line);
    assert_eq!(o.code, 0, "ipvsadm {line}: {}", o.stderr);
    o.stdout
}

/// Removes every backend's default route: a reply can then only go to an
/// address on the backends' own link.
fn isolate_backends(topo: &Topology) {
    for i in 1..=topo.backend_count() {
        topo.ip(Role::Backend(i), &["route", "del", "default"]);
    }
}

/// `n` GETs through `url`: (backend, peer address, peer port) of each.
fn get_many(topo: &Topology, url: &str, n: usize) -> Vec<(String, String, u16)> {
    (0..n)
        .map(|i| {
            let r = topo.curl(url, None);
            assert!(r.success(), "request {i}: {}", r.stderr);
            parse_backend_reply(&r.stdout)
                .unwrap_or_else(|| panic!("request {i}: not a backend reply: {}", r.stdout))
        })
        .collect()
}

const FN_VIP: &str = "198.18.100.30";
const LADDR: &str = "198.18.1.5";

/// `-G` for the one service with `laddrs` (address, flows), DPVS's layout.
fn g_listing(laddrs: &[(&str, u32)]) -> String {
    let mut s = format!(
        "{:<20} {:<8} {:<20} {:<10} {:<10}\n{:<20} {:<8} \n",
        "VIP:VPORT",
        "TOTAL",
        "SNAT_IP",
        "CONFLICTS",
        "CONNS",
        format!("{FN_VIP}:80"),
        laddrs.len()
    );
    for (a, n) in laddrs {
        s.push_str(&format!("{:<20} {:<8} {a:<20} {:<10} {n:<10}\n", "", "", 0));
    }
    s
}

#[test]
fn fullnat_local_addresses_through_ipvsadm() {
    require_root();
    let topo = topology!();
    topo.add_address(Role::Lb, &format!("{LADDR}/24"), "back");
    isolate_backends(&topo);
    let sluice = Sluice::start_empty(&topo, &["--workers", "2"]);
    let sock = sluice.api_socket().to_path_buf();
    for line in [
        "-A -t 198.18.100.30:80 -s rr",
        "--add-laddr -z 198.18.1.5 -t 198.18.100.30:80 -F back",
        "-a -t 198.18.100.30:80 -r 198.18.1.11:8080 --fullnat",
        "-a -t 198.18.100.30:80 -r 198.18.1.12:8080 --fullnat",
    ] {
        ok(&sock, line);
    }
    let url = format!("http://{FN_VIP}/");
    let seen = get_many(&topo, &url, 10);
    for (b, peer, _) in &seen {
        assert_eq!(peer, LADDR, "{b} saw {peer}: {seen:?}");
    }
    // Every connection is still in the table (closing TCP is kept for
    // minutes): CONNS counts them all.
    let listing = g_listing(&[(LADDR, 10)]);
    assert_eq!(ok(&sock, "-G"), listing);
    assert_eq!(ok(&sock, "--get-laddr -t 198.18.100.30:80"), listing);
    let saved = ok(&sock, "-Sn");
    assert_eq!(
        saved,
        "-A -t 198.18.100.30:80 -s rr\n\
         -a -t 198.18.100.30:80 -r 198.18.1.11:8080 --fullnat -w 1\n\
         -a -t 198.18.100.30:80 -r 198.18.1.12:8080 --fullnat -w 1\n\
         --add-laddr -z 198.18.1.5 -t 198.18.100.30:80\n"
    );

    // Bad commands: DPVS's messages and exit codes, nothing changed.
    let bad: &[(&str, i32, &str)] = &[
        (
            "--add-laddr -z 198.18.1.5 -t 198.18.100.30:80",
            255,
            "Local address already exists\n",
        ),
        (
            "--add-laddr -z 198.18.1.77 -t 198.18.100.30:80",
            255,
            "local address 198.18.1.77 is not an address of this host",
        ),
        (
            "--add-laddr -z 198.18.1.5 -t 198.18.100.31:80",
            255,
            "Service not defined\n",
        ),
        (
            "--del-laddr -z 198.18.1.6 -t 198.18.100.30:80",
            255,
            "No such Local address\n",
        ),
        (
            "--add-laddr -z 2001:db8::5 -t 198.18.100.30:80",
            255,
            "Operation not supported with specified address family\n",
        ),
        (
            "--add-laddr -t 198.18.100.30:80",
            2,
            "You need to supply the 'local-address' option for the 'add-laddr' command\n",
        ),
        (
            "--add-laddr -z nonsense -t 198.18.100.30:80",
            2,
            "illegal local address\n",
        ),
        ("-G -t 198.18.100.31:80", 1, "Service not defined\n"),
        (
            // Local addresses are FULLNAT's: a masq server is refused.
            "-a -t 198.18.100.30:80 -r 198.18.1.13:8080 -m",
            255,
            "local addresses, which are FULLNAT's",
        ),
    ];
    for (line, code, msg) in bad {
        let o = ipvsadm(&sock, line);
        assert_eq!(o.code, *code, "{line}: {}", o.stderr);
        assert!(o.stderr.contains(msg), "{line}: {:?}", o.stderr);
    }
    assert_eq!(ok(&sock, "-Sn"), saved);
    assert_eq!(ok(&sock, "-G"), listing);
    // The daemon's refusal names the service and the address.
    let o = ipvsadm(&sock, "--add-laddr -z 198.18.1.77 -t 198.18.100.30:80");
    assert_eq!(
        o.stderr,
        "service VirtualService ipvs/tcp-198-18-100-30-80: local address 198.18.1.77 is not an address of this host (replies to it would never reach it); add it to an interface first\n"
    );

    // -S | -R into a fresh daemon: the same rules, the same translation.
    drop(sluice);
    let state = StateDir(std::env::temp_dir().join(format!("{}-laddr-state", topo.prefix())));
    let args = ["--workers", "2", "--state-dir", state.0.to_str().unwrap()];
    let fresh = Sluice::start_empty(&topo, &args);
    let sock = fresh.api_socket().to_path_buf();
    let o = run(&sock, &["-R"], &saved);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(ok(&sock, "-Sn"), saved);
    for (b, peer, _) in get_many(&topo, &url, 4) {
        assert_eq!(peer, LADDR, "{b} after -R");
    }

    // Kept in the state directory like every object: a restart serves it.
    let held = || {
        ["state.json", "state.log"].iter().any(|f| {
            std::fs::read_to_string(state.0.join(f)).is_ok_and(|t| t.contains("localAddresses"))
        })
    };
    poll_until(Duration::from_secs(5), || held().then_some(()))
        .expect("the state directory never held the local address");
    let report = fresh.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    let again = Sluice::start_empty(&topo, &args);
    let sock = again.api_socket().to_path_buf();
    assert_eq!(ok(&sock, "-Sn"), saved);
    for (b, peer, _) in get_many(&topo, &url, 2) {
        assert_eq!(peer, LADDR, "{b} after a restart");
    }

    // --del-laddr: the service keeps serving FULLNAT from the route's
    // source towards the backends, no longer from the local address.
    ok(&sock, "--del-laddr -z 198.18.1.5 -t 198.18.100.30:80");
    assert_eq!(ok(&sock, "-G"), g_listing(&[]));
    for (b, peer, _) in get_many(&topo, &url, 4) {
        assert_ne!(peer, LADDR, "{b} after --del-laddr");
        assert!(peer.starts_with("198.18.1."), "{b} saw {peer}");
    }
}

#[test]
fn a_persistence_template_is_listed_and_counted() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start_empty(&topo, &["--workers", "1"]);
    let sock = sluice.api_socket().to_path_buf();
    for line in [
        "-A -t 198.18.100.20:80 -s rr -p 300",
        "-a -t 198.18.100.20:80 -r 198.18.1.11:8080 -m",
        "-a -t 198.18.100.20:80 -r 198.18.1.12:8080 -m",
    ] {
        ok(&sock, line);
    }
    let title = "IPVS connection entries\npro expire state       source             virtual            destination\n";
    assert_eq!(ok(&sock, "-Lnc"), title, "no flow, no template yet");

    let url = "http://198.18.100.20/";
    let seen = get_many(&topo, url, 3);
    assert!(
        seen.iter().all(|s| s.0 == seen[0].0),
        "persistence keeps one backend: {seen:?}"
    );
    let (chosen, other) = match seen[0].0.as_str() {
        "b1" => ("198.18.1.11:8080", "198.18.1.12:8080"),
        "b2" => ("198.18.1.12:8080", "198.18.1.11:8080"),
        b => panic!("backend {b}"),
    };
    let out = ok(&sock, "-Lnc");
    let rows: Vec<&str> = out[title.len()..].lines().collect();
    let templates: Vec<&&str> = rows.iter().filter(|r| r.contains(" NONE ")).collect();
    assert_eq!(templates.len(), 1, "{out}");
    let t = templates[0];
    // ipvsadm's row: "%-3s %-6s %-11s %-18s %-18s %s".
    let expire = &t[4..10];
    let want = format!(
        "TCP {expire} {:<11} {:<18} {:<18} {chosen}",
        "NONE", "198.18.0.2:0", "198.18.100.20:80"
    );
    assert_eq!(*t, want, "{out}");
    let (m, s) = expire.trim().split_once(':').unwrap();
    let left = m.parse::<u32>().unwrap() * 60 + s.parse::<u32>().unwrap();
    assert!((280..=300).contains(&left), "expiry {expire}: {out}");
    // The three connections are listed too (closing TCP is kept).
    assert_eq!(rows.len(), 4, "{out}");

    // PersistConn (weight, then templates): 1 for the chosen server, 0
    // for the other.
    let pc = ok(&sock, "-Ln --persistent-conn");
    let line = |d: &str| {
        pc.lines()
            .find(|l| l.starts_with(&format!("  -> {d}")))
            .unwrap_or_else(|| panic!("{d} not in {pc}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(line(chosen)[2..4], ["1", "1"], "{pc}");
    assert_eq!(line(other)[2..4], ["1", "0"], "{pc}");
}
