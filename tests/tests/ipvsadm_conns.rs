//! `ipvsadm -Lnc`, `--stats`, `-Z`, `--set` and `-L --timeout` against a
//! running sluice, with real kernel TCP and UDP through the VIP: a paced
//! transfer held open is listed ESTABLISHED with its client, virtual and
//! real server addresses and the 15-minute expiry; `--stats` moves with its
//! bytes; `-Z` zeroes the ipvsadm view and leaves the monotonic
//! `/apis/sluice.dev/v1/stats` totals alone; `--set 0 0 2` makes a UDP flow
//! listed with 5 minutes to live expire within seconds; bad commands fail
//! with ipvsadm's message and exit code and change nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_tests::api;
use sluice_tests::{poll_until, require_root, sluice_bin, topology, Role, Sluice};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ipvsadm(sock: &Path, line: &str) -> Out {
    let o = Command::new(sluice_bin())
        .arg("ipvsadm")
        .args(line.split_whitespace())
        .env("SLUICE_SOCKET", sock)
        .output()
        .expect("run sluice ipvsadm");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(sock: &Path, line: &str) -> String {
    let o = ipvsadm(sock, line);
    assert_eq!(o.code, 0, "ipvsadm {line}: {}", o.stderr);
    o.stdout
}

const VIP: &str = "198.18.100.20";
const TITLE: &str = "IPVS connection entries\npro expire state       source             virtual            destination\n";

/// The rows of `-Lnc` (after the two title lines), split in columns.
fn rows(sock: &Path) -> Vec<Vec<String>> {
    parse(&ok(sock, "-Lnc"))
}

fn parse(out: &str) -> Vec<Vec<String>> {
    assert!(out.starts_with(TITLE), "{out:?}");
    out[TITLE.len()..]
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The numbers of the `--stats --exact` line that starts with `prefix`.
fn stats_line(sock: &Path, prefix: &str) -> Vec<u64> {
    let out = ok(sock, "-Ln --stats --exact");
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {out}"));
    line[prefix.len()..]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn ipvsadm_connections_stats_zero_and_timeouts() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start_empty(&topo, &["--workers", "1"]);
    let sock = sluice.api_socket().to_path_buf();
    for line in [
        "-A -t 198.18.100.20:9000 -s rr",
        "-a -t 198.18.100.20:9000 -r 198.18.1.11:9000 -m",
        "-A -u 198.18.100.20:5353 -s rr",
        "-a -u 198.18.100.20:5353 -r 198.18.1.12:5353 -m",
    ] {
        ok(&sock, line);
    }
    assert_eq!(ok(&sock, "-Lnc"), TITLE, "no connections yet");
    assert_eq!(
        ok(&sock, "-L --timeout"),
        "Timeout (tcp tcpfin udp): 900 120 300\n"
    );

    // A paced transfer (300 kB at 100 kB/s: 3 s) held open: listed
    // ESTABLISHED, with IPVS's 15 minutes to go.
    let mut bulk = topo.spawn_testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.100.20:9000",
            "--bytes",
            "300000",
            "--rate",
            "100000",
            "--timeout-ms",
            "15000",
        ],
    );
    let (text, row) = poll_until(Duration::from_secs(5), || {
        let text = ok(&sock, "-Lnc");
        // The entry appears at the SYN; wait for the handshake's ACK.
        let row = parse(&text)
            .into_iter()
            .find(|r| r[0] == "TCP" && r[2] == "ESTABLISHED")?;
        Some((text, row))
    })
    .unwrap_or_else(|| panic!("no established TCP entry; log:\n{}", sluice.logs()));
    assert!(bulk.is_running(), "the transfer is still open");
    assert_eq!(row.len(), 6, "{row:?}");
    assert!(row[1] == "15:00" || row[1].starts_with("14:5"), "{row:?}");
    assert_eq!(row[2], "ESTABLISHED", "{row:?}");
    assert!(row[3].starts_with("198.18.0.2:"), "{row:?}");
    assert_eq!(row[4], format!("{VIP}:9000"), "{row:?}");
    assert_eq!(row[5], "198.18.1.11:9000", "{row:?}");
    // The line itself in ipvsadm's columns.
    let want = format!(
        "TCP {:<6} {:<11} {:<18} {:<18} {}\n",
        row[1], row[2], row[3], row[4], row[5]
    );
    assert!(text.contains(&want), "{text:?} lacks {want:?}");

    let done = bulk.wait(Duration::from_secs(15));
    assert!(done.success(), "{done}");
    assert!(done.stdout.starts_with("ok 300000 "), "{done}");
    // Conns InPkts OutPkts InBytes OutBytes: one connection, its bytes
    // (payload and headers) out, on the service and its real server alike.
    let svc = stats_line(&sock, &format!("TCP  {VIP}:9000"));
    let rs = stats_line(&sock, "  -> 198.18.1.11:9000");
    assert_eq!(svc, rs, "one real server: service = its sum");
    assert_eq!(svc[0], 1, "{svc:?}");
    assert!(svc[4] > 300_000 && svc[3] > 0 && svc[1] > 0, "{svc:?}");

    // --rate: the estimator (a sample every 2 s) has seen the transfer.
    let rate = poll_until(Duration::from_secs(6), || {
        let out = ok(&sock, "-Ln --rate --exact");
        let l = out
            .lines()
            .find(|l| l.starts_with("  -> 198.18.1.11:9000"))?;
        let v: Vec<u64> = l[21..]
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        (v[4] > 0).then_some(v)
    });
    assert!(rate.is_some(), "OutBPS never moved");

    // -Z: the ipvsadm view starts again from zero, the totals do not.
    ok(&sock, "-Z");
    assert_eq!(stats_line(&sock, &format!("TCP  {VIP}:9000")), [0; 5]);
    let totals = api::stats(&sock).json();
    let conns = totals["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["port"] == 9000)
        .map(|s| s["conns"].as_u64().unwrap());
    assert_eq!(conns, Some(1), "sluice stats is monotonic: {totals}");

    // A UDP flow under the default 300 s.
    let q = |n: &str| {
        topo.testsrv(
            Role::Client,
            &["udp-query", "198.18.100.20:5353", "--count", n],
            Duration::from_secs(10),
        )
    };
    let out = q("1");
    assert!(out.success(), "{out}");
    let udp = rows(&sock)
        .into_iter()
        .find(|r| r[0] == "UDP")
        .expect("a UDP entry");
    assert!(udp[1] == "05:00" || udp[1].starts_with("04:5"), "{udp:?}");
    assert_eq!(
        (udp[2].as_str(), udp[5].as_str()),
        ("UDP", "198.18.1.12:5353")
    );
    // Its -Z alone: the UDP service's datagram counted, then zeroed, and
    // the TCP service untouched by a -Z of another.
    assert_eq!(stats_line(&sock, &format!("UDP  {VIP}:5353"))[1], 1);
    ok(&sock, "-Z -u 198.18.100.20:5353");
    assert_eq!(stats_line(&sock, &format!("UDP  {VIP}:5353")), [0; 5]);

    // Bad commands: ipvsadm's messages and exit codes, nothing changed.
    let bad: &[(&str, i32, &str)] = &[
        ("--set 1 2", 2, "--set option requires 3 timeout values\n"),
        ("--set 1 2 x", 2, "invalid timeout value `x' specified\n"),
        ("-Z -t 198.18.100.99:80", 255, "No such service\n"),
        (
            "-L -c --stats",
            2,
            "options conflicts in the list command\n",
        ),
    ];
    for (line, code, msg) in bad {
        let o = ipvsadm(&sock, line);
        assert_eq!((o.code, o.stderr.as_str()), (*code, *msg), "{line}");
    }
    assert_eq!(
        ok(&sock, "-L --timeout"),
        "Timeout (tcp tcpfin udp): 900 120 300\n"
    );

    // --set: 0 keeps tcp and tcpfin, UDP goes to 2 s, and the held UDP
    // flow (4:5x to go a moment ago) is gone within seconds.
    ok(&sock, "--set 0 0 2");
    assert_eq!(
        ok(&sock, "-L --timeout"),
        "Timeout (tcp tcpfin udp): 900 120 2\n"
    );
    let gone = poll_until(Duration::from_secs(6), || {
        (!rows(&sock).iter().any(|r| r[0] == "UDP")).then_some(())
    });
    assert!(gone.is_some(), "the UDP entry outlived its 2 s timeout");
    // A new flow is listed with the new timeout, and still works.
    let out = q("1");
    assert!(out.success(), "{out}");
    let r = rows(&sock)
        .into_iter()
        .find(|r| r[0] == "UDP")
        .expect("the new UDP flow, listed at once");
    assert!(r[1] == "00:02" || r[1] == "00:01", "{r:?}");
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
