//! `--flow-state FILE` (issue 9): established flows survive `kill -9` and a
//! restart with the same flags. The flow table lives in a file on tmpfs
//! that the new process re-attaches and rebinds to its first table before
//! the first packet (`dataplane/src/flow_table/state_file.rs`,
//! `dataplane/src/restore.rs`).
//!
//! Each test kills sluice with SIGKILL in the middle of a transfer and
//! starts it again with the same flags; the transfer must complete with
//! its content intact. Without `--flow-state` the same scenario fails
//! (the "before": the new process knows no flow, drops the server's
//! segments and answers the client's with a RST).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{require_root, topology, Role, Sluice, StopReport, TopologyOpts};

/// A flow-state file under /dev/shm, removed on drop (also on failure).
struct StateFile(PathBuf);

impl StateFile {
    fn new(name: &str) -> StateFile {
        let p = PathBuf::from(format!(
            "/dev/shm/sluice-test-{}-{name}-flows",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        StateFile(p)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A ClusterIP with the bulk (TCP 9000) and UDP (5353) ports on backends
/// `backends`.
fn config(backends: &[usize]) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  ports:
  - name: dns
    protocol: UDP
    port: 5353
    targetPort: 5353
  - name: bulk
    protocol: TCP
    port: 9000
    targetPort: 9000
---
{}"#,
        endpoint_slice(
            "web-1",
            "web",
            &[("dns", 5353, "UDP"), ("bulk", 9000, "TCP")],
            &ready_backends(backends)
        )
    )
}

/// The flags of both runs; `state` adds `--flow-state`.
fn flags<'a>(state: Option<&'a StateFile>, more: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--workers", "1", "--flow-capacity", "65536"];
    if let Some(s) = state {
        v.extend(["--flow-state", s.arg()]);
    }
    v.extend_from_slice(more);
    v
}

/// Kills `sluice` with SIGKILL (the harness's drop) and checks it is gone.
fn kill_9(sluice: Sluice) {
    let pid = sluice.pid();
    drop(sluice);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still runs"
    );
}

fn stopped(sluice: Sluice) -> StopReport {
    let r = sluice.stop();
    assert!(r.status.is_some_and(|s| s.success()), "{r:?}");
    r
}

/// A 6 MB stream that only the server sends (paced at 1 MB/s), with the
/// client's heartbeat byte every 200 ms: sluice is killed 1.5 s in and
/// started again. Returns the transfer's output and the second run's
/// report.
fn stream_across_restart(
    state: Option<&StateFile>,
    more: &[&str],
) -> (sluice_tests::CmdOutput, StopReport, Duration) {
    let topo = topology!(TopologyOpts::default().backends(2));
    let args = flags(state, more);
    let sluice = Sluice::start(&topo, &config(&[1, 2]), &args);
    let bulk = topo.spawn_testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.100.10:9000",
            "--bytes",
            "6000000",
            "--rate",
            "1000000",
            "--poke-ms",
            "200",
            "--timeout-ms",
            "15000",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    kill_9(sluice);
    let t = Instant::now();
    let sluice = Sluice::start(&topo, &config(&[1, 2]), &args);
    let restart = t.elapsed();
    let out = bulk.wait(Duration::from_secs(20));
    let r = stopped(sluice);
    (out, r, restart)
}

#[test]
fn a_server_only_stream_completes_across_kill_9_and_restart() {
    require_root();
    let state = StateFile::new("stream");
    let (out, r, restart) = stream_across_restart(Some(&state), &[]);
    assert!(
        out.success() && out.stdout.starts_with("ok 6000000 "),
        "the stream did not complete intact across the restart (restart took {restart:?}): {out}\n{}",
        r.logs
    );
    assert!(
        r.logs.contains("re-attached 1 flows"),
        "the flow was not re-attached: {}",
        r.logs
    );
    assert_eq!(r.counter("resets"), 0, "a RST was sent: {}", r.logs);
    assert_eq!(
        r.counter("new_flows"),
        0,
        "the stream became a new flow: {}",
        r.logs
    );
    eprintln!("restart took {restart:?}");
}

/// The before: without `--flow-state` the new process knows no flow; the
/// client's heartbeat segments are answered with a RST and the transfer
/// fails.
#[test]
fn without_flow_state_the_stream_is_reset_by_the_restart() {
    require_root();
    let (out, r, _) = stream_across_restart(None, &[]);
    assert!(
        !out.success(),
        "the stream survived without --flow-state: {out}"
    );
    assert!(r.counter("resets") > 0, "no RST counted: {}", r.logs);
}

/// A masqueraded UDP flow (`--masquerade-all`): after the restart the
/// datagrams flow on through the re-attached flow, with the same SNAT
/// port (the backend sees the same peer) and no new flow.
#[test]
fn a_masqueraded_udp_flow_keeps_its_snat_port_across_kill_9() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2));
    let state = StateFile::new("udp");
    let args = flags(Some(&state), &["--masquerade-all"]);
    let sluice = Sluice::start(&topo, &config(&[1, 2]), &args);
    let stream = topo.spawn_testsrv(
        Role::Client,
        &[
            "udp-stream",
            "198.18.100.10:5353",
            "--count",
            "50",
            "--interval-ms",
            "100",
        ],
    );
    std::thread::sleep(Duration::from_millis(1200));
    kill_9(sluice);
    let sluice = Sluice::start(&topo, &config(&[1, 2]), &args);
    let out = stream.wait(Duration::from_secs(15));
    let r = stopped(sluice);
    let replies: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(" backend=").map(|(_, b)| b))
        .collect();
    assert!(replies.len() >= 30, "too few replies: {out}\n{}", r.logs);
    let first = replies[0];
    assert!(
        first.contains("peer=198.18.1.1:"),
        "not masqueraded: {first}"
    );
    assert!(
        replies.iter().all(|b| *b == first),
        "backend or SNAT port changed across the restart: {replies:?}\n{}",
        r.logs
    );
    let last = out.stdout.lines().last().unwrap_or("");
    assert!(last.contains("backend="), "replies stopped: {out}");
    assert_eq!(r.counter("new_flows"), 0, "a new flow was made: {}", r.logs);
}

/// A file written for other capacities is not re-attached: sluice says why
/// and serves with an empty table.
#[test]
fn a_file_for_another_capacity_starts_empty_and_says_why() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(1));
    let state = StateFile::new("capacity");
    let sluice = Sluice::start(&topo, &config(&[1]), &flags(Some(&state), &[]));
    stopped(sluice);
    let sluice = Sluice::start(
        &topo,
        &config(&[1]),
        &[
            "--workers",
            "1",
            "--flow-capacity",
            "4096",
            "--flow-state",
            state.arg(),
        ],
    );
    let r = stopped(sluice);
    assert!(r.logs.contains("not re-attached (capacities"), "{}", r.logs);
}
