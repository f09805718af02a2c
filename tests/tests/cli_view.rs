//! The CLI's views of a running sluice: `sluice describe svc` (front ends,
//! endpoints, counters; an unknown name is an error naming it),
//! `sluice top` in a real terminal (tmux renders it; the test reads the
//! screen with capture-pane, checks a non-zero rate, quits with `q`), and
//! `--log-format json` (every log line of the daemon is a JSON object).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_tests::k8s::web_http;
use sluice_tests::{poll_until, require_root, sluice_bin, topology, Sluice, Topology};

struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `sluice ARGS` against `sock`, stdout piped (so not a terminal).
fn cli(sock: &Path, args: &[&str]) -> Out {
    let o = Command::new(sluice_bin())
        .args(args)
        .env("SLUICE_SOCKET", sock)
        .stdin(Stdio::null())
        .output()
        .expect("run sluice");
    Out {
        ok: o.status.success(),
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn get_ok(topo: &Topology) -> bool {
    topo.curl("http://198.18.100.10/", None).success()
}

/// The whitespace-separated cells of the first line that starts with
/// `first` (after indentation).
fn row<'a>(text: &'a str, first: &str) -> Option<Vec<&'a str>> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.first() == Some(&first))
}

#[test]
fn describe_shows_front_ends_endpoints_and_counters_and_logs_are_json() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(
        &topo,
        &web_http(&[1, 2]),
        &["--workers", "1", "--log-format", "json"],
    );
    let sock = sluice.api_socket().to_path_buf();
    for i in 0..4 {
        assert!(get_ok(&topo), "connection {i}");
    }

    let o = cli(&sock, &["describe", "svc", "web"]);
    assert!(o.ok, "{}", o.stderr);
    let d = &o.stdout;
    assert!(d.starts_with("Name:  "), "{d}");
    assert_eq!(
        row(d, "Namespace:"),
        Some(vec!["Namespace:", "default"]),
        "{d}"
    );
    assert_eq!(row(d, "IP:"), Some(vec!["IP:", "198.18.100.10"]), "{d}");
    assert_eq!(
        row(d, "Port:"),
        Some(vec!["Port:", "http", "80/TCP"]),
        "{d}"
    );
    // The front end the workers serve, with scheduler, method, policy.
    let f = row(d, "198.18.100.10:80/TCP").expect("front-end row");
    assert_eq!(
        f[..7],
        [
            "198.18.100.10:80/TCP",
            "http",
            "ClusterIP",
            "rr",
            "nat",
            "off-cluster",
            "reject"
        ],
        "{d}"
    );
    // Four new flows over the front end, two to each endpoint (rr).
    assert_eq!(f[8], "4", "CONNS: {d}");
    let ep = |b: &str| {
        d.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|c| c.get(1) == Some(&b))
            .unwrap_or_else(|| panic!("no endpoint row {b}: {d}"))
    };
    for b in ["198.18.1.11:8080", "198.18.1.12:8080"] {
        let r = ep(b);
        assert_eq!(r[2..6], ["1", "ready", "-", "no"], "{d}");
        assert_eq!(r[6], "2", "CONNS of {b}: {d}");
        assert_ne!(r[7], "0", "INPKTS of {b}: {d}");
    }
    // The header lines up with the rows.
    let head = d
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("ENDPOINT"))
        .expect("endpoint header");
    let r1 = d.lines().find(|l| l.contains("198.18.1.11:8080")).unwrap();
    assert_eq!(head.find("STATE"), r1.find("ready"), "{d}");

    // -o json for scripts.
    let o = cli(&sock, &["describe", "svc", "web", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["frontends"][0]["scheduler"], "rr");
    assert_eq!(v["frontends"][0]["conns"], 4);
    assert_eq!(
        v["frontends"][0]["backends"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(v["service"]["spec"]["clusterIP"], "198.18.100.10");

    // An unknown name: an error naming it, exit 1.
    let o = cli(&sock, &["describe", "svc", "nope", "-n", "prod"]);
    assert_eq!(o.code, Some(1), "{}", o.stdout);
    assert!(
        o.stderr.contains("services \"nope\" not found") && o.stderr.contains("\"prod\""),
        "{}",
        o.stderr
    );
    let o = cli(&sock, &["describe", "deployment", "web"]);
    assert!(
        !o.ok && o.stderr.contains("unknown kind \"deployment\""),
        "{}",
        o.stderr
    );

    // `top --once` with stdout not a terminal: one text frame.
    let o = cli(&sock, &["top", "--once", "--interval", "0.2"]);
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stdout.starts_with("sluice top: 1 front ends"),
        "{}",
        o.stdout
    );
    assert!(row(&o.stdout, "default/web:http").is_some(), "{}", o.stdout);

    // --log-format json: every line of the daemon's log is one object
    // with a level, a target and the event's fields.
    let logs = sluice.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{logs}");
    let mut ready = false;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string(), "{l}");
        assert!(v["target"].as_str().is_some_and(|t| !t.is_empty()), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
        ready |= v["level"] == "INFO"
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("sluice ready: 1 virtual services"));
    }
    assert!(ready, "no `sluice ready` INFO line: {logs}");
    sluice.stop();
}

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    sock: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("tmux (scripts/deps.sh installs it)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        let _ = std::fs::remove_file(&self.sock);
    }
}

#[test]
fn top_in_a_terminal_shows_rates_and_quits_on_q() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(&topo, &web_http(&[1]), &["--workers", "1"]);
    let sock = sluice.api_socket().to_string_lossy().into_owned();
    let tmux = Tmux {
        sock: std::env::temp_dir()
            .join(format!("{}-tmux.sock", topo.prefix()))
            .to_string_lossy()
            .into_owned(),
    };
    let rc = std::env::temp_dir().join(format!("{}-top.rc", topo.prefix()));
    let _ = std::fs::remove_file(&rc);
    let script = format!(
        "{} top --api-socket {sock}; echo $? > {}",
        sluice_bin().display(),
        rc.display()
    );
    let o = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "120",
        "-y",
        "30",
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        o.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Traffic while top watches: bounded in count and time.
    let stop = AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..100 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = topo.curl("http://198.18.100.10/", None);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let seen = poll_until(Duration::from_secs(10), || {
            let screen = tmux.screen();
            let r = row(&screen, "default/web:http")?;
            // SERVICE FRONTEND PPS BPS FLOWS/S ACTIVE
            (r.len() == 6 && r[2] != "0" && r[3] != "0").then_some(screen)
        });
        stop.store(true, Ordering::Relaxed);
        seen
    });
    let screen = seen.unwrap_or_else(|| panic!("no non-zero rate on screen:\n{}", tmux.screen()));
    assert!(screen.starts_with("sluice top: 1 front ends"), "{screen}");
    assert!(screen.contains("TCP/198.18.100.10:80"), "{screen}");
    assert!(row(&screen, "198.18.1.11:8080").is_some(), "{screen}");

    let o = tmux.cmd(&["send-keys", "-t", "top", "q"]);
    assert!(o.status.success());
    let code = poll_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&rc).ok().filter(|s| !s.is_empty())
    });
    let _ = std::fs::remove_file(&rc);
    assert_eq!(
        code.as_deref().map(str::trim),
        Some("0"),
        "sluice top did not exit 0 within 5 s of `q`:\n{}",
        tmux.screen()
    );
    sluice.stop();
}
