//! `/metrics` and `/healthz` of the real binary: the exposition text passes
//! a strict check of the Prometheus text format, the per-service and
//! per-backend new-flow counters move by exactly the connections made (and
//! the per-service packets add up to what the worker received), the stats
//! route agrees; `/healthz` is 200 while the worker runs and 503 while it
//! is stuck (the worker thread alone stopped with ptrace, as a hung thread
//! would be), then 200 again.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_tests::api;
use sluice_tests::k8s::web_http;
use sluice_tests::{poll_until, require_root, topology, Role, Sluice, Topology};

const METRICS: &str = "127.0.0.1:19249";
const HEALTHZ: &str = "127.0.0.1:19256";

/// GET `url` from the LB namespace: (HTTP code, body).
fn get(topo: &Topology, url: &str) -> (u16, String) {
    let out = topo.exec(
        Role::Lb,
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            url,
        ],
        Duration::from_secs(10),
    );
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// Parses `{k="v",...}`; the label values here need no escapes.
fn check_labels(s: &str) -> Result<(), String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix("\"}"))
        .ok_or("labels not in braces, or the last value unquoted")?;
    for pair in inner.split("\",") {
        let (k, v) = pair
            .split_once("=\"")
            .ok_or(format!("bad label {pair:?}"))?;
        if !is_name(k) || v.contains('"') {
            return Err(format!("bad label {pair:?}"));
        }
    }
    Ok(())
}

/// A strict check of the text exposition format (OpenMetrics as
/// prometheus-client writes it): `# HELP`/`# TYPE` lines for each family
/// before its samples, samples `name{labels} value` of a declared family,
/// and `# EOF` last. Returns the samples by `name{labels}`.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut families = Vec::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    if lines.last() != Some(&"# EOF") {
        return Err("does not end with # EOF".into());
    }
    for (i, line) in lines[..lines.len() - 1].iter().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("HELP"), Some(n), Some(_)) if is_name(n) => {}
                (Some("TYPE"), Some(n), Some(t))
                    if is_name(n)
                        && ["counter", "gauge", "histogram", "summary", "unknown"].contains(&t) =>
                {
                    families.push(n.to_string())
                }
                _ => return Err(bad("bad comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let v: f64 = value.parse().map_err(|_| bad("value not a number"))?;
        let name = match series.find('{') {
            Some(b) => {
                check_labels(&series[b..]).map_err(|e| bad(&e))?;
                &series[..b]
            }
            None => series,
        };
        if !is_name(name) {
            return Err(bad("bad metric name"));
        }
        let family_ok = families.iter().any(|f| {
            name == f
                || ["_total", "_bucket", "_count", "_sum", "_created"]
                    .iter()
                    .any(|s| name.strip_prefix(f.as_str()) == Some(s))
        });
        if !family_ok {
            return Err(bad("sample of an undeclared family"));
        }
        samples.insert(series.to_string(), v);
    }
    Ok(samples)
}

fn scrape(topo: &Topology) -> BTreeMap<String, f64> {
    let (code, body) = get(topo, &format!("http://{METRICS}/metrics"));
    assert_eq!(code, 200, "{body}");
    parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// The sum of the samples of `name` whose labels contain every one of
/// `having`.
fn sum(m: &BTreeMap<String, f64>, name: &str, having: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.strip_prefix(name)
                .is_some_and(|r| r.is_empty() || r.starts_with('{'))
                && having.iter().all(|h| k.contains(h))
        })
        .map(|(_, v)| v)
        .sum()
}

fn healthz(topo: &Topology) -> (u16, serde_json::Value) {
    let (code, body) = get(topo, &format!("http://{HEALTHZ}/healthz"));
    (code, serde_json::from_str(&body).unwrap_or_default())
}

const VIP: &str = "vip=\"198.18.100.10\"";

#[test]
fn metrics_parse_and_count_every_connection() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(
        &topo,
        &web_http(&[1, 2]),
        &[
            "--workers",
            "1",
            "--metrics-bind-address",
            METRICS,
            "--healthz-bind-address",
            HEALTHZ,
        ],
    );
    let before = scrape(&topo);
    let b1 = "backend=\"198.18.1.11:8080\"";
    let b2 = "backend=\"198.18.1.12:8080\"";
    for want in [
        "sluice_service_new_flows_total",
        "sluice_backend_packets_total",
        "sluice_worker_drops_total",
        "sluice_flow_table_capacity",
        "sluice_table_generation",
        "sluice_sync_duration_seconds_count",
        "sluice_last_sync_timestamp_seconds",
    ] {
        assert!(
            before.keys().any(|k| k.starts_with(want)),
            "{want} missing: {:?}",
            before.keys().collect::<Vec<_>>()
        );
    }
    const N: usize = 6;
    for i in 0..N {
        let out = topo.curl("http://198.18.100.10/", None);
        assert!(out.success(), "request {i}: {}", out.stderr);
    }
    // Let the last close handshakes pass before reading.
    std::thread::sleep(Duration::from_millis(500));
    let after = scrape(&topo);
    let d = |name: &str, having: &[&str]| sum(&after, name, having) - sum(&before, name, having);
    assert_eq!(d("sluice_service_new_flows_total", &[VIP]), N as f64);
    assert_eq!(
        d("sluice_backend_new_flows_total", &[VIP, b1]),
        (N / 2) as f64
    );
    assert_eq!(
        d("sluice_backend_new_flows_total", &[VIP, b2]),
        (N / 2) as f64
    );
    // Every frame the worker received belongs to these connections, each
    // counted once, in or out.
    let pkts_in = d("sluice_service_packets_total", &[VIP, "direction=\"in\""]);
    let pkts_out = d("sluice_service_packets_total", &[VIP, "direction=\"out\""]);
    let rx = d("sluice_worker_rx_packets_total", &[]);
    assert!(
        pkts_in >= (3 * N) as f64 && pkts_out >= (2 * N) as f64,
        "{pkts_in} {pkts_out}"
    );
    assert_eq!(pkts_in + pkts_out, rx, "in + out = received");
    assert_eq!(
        d("sluice_backend_packets_total", &[VIP, "direction=\"in\""]),
        pkts_in,
        "service = sum of backends"
    );
    assert!(d("sluice_service_bytes_total", &[VIP, "direction=\"in\""]) >= 40.0 * pkts_in);

    // The stats route says the same.
    let r = api::stats(sluice.api_socket());
    assert_eq!(r.code, 200, "{r:?}");
    let j = r.json();
    let svc = &j["services"][0];
    assert_eq!(svc["address"], "198.18.100.10");
    assert_eq!(svc["conns"], N as u64);
    assert_eq!(svc["inPackets"].as_u64(), Some(pkts_in as u64));
    assert_eq!(j["workers"].as_array().map(Vec::len), Some(1));
    // And `sluice stats` prints them as a table.
    let bin = sluice_tests::sluice_bin();
    let sock = sluice.api_socket().to_string_lossy().into_owned();
    let out = topo.exec(
        Role::Lb,
        &[&bin.to_string_lossy(), "stats", "--api-socket", &sock],
        Duration::from_secs(10),
    );
    assert!(out.success(), "{}", out.stderr);
    let head = out.stdout.lines().next().unwrap_or("");
    assert!(
        head.starts_with("SERVICE") && head.contains("CONNS"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("TCP/198.18.100.10:80") && out.stdout.contains("198.18.1.12:8080"),
        "{}",
        out.stdout
    );
    let _ = sluice.stop();
}

/// Finds the thread named `name` of process `pid`.
fn thread_of(pid: u32, name: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// Stops one thread (not its process) with ptrace until dropped.
struct Stopped(i32);

impl Stopped {
    fn new(tid: i32) -> Stopped {
        // SAFETY: PTRACE_SEIZE/INTERRUPT on a thread id, no pointers passed.
        let r = unsafe {
            let null = std::ptr::null_mut::<libc::c_void>();
            libc::ptrace(libc::PTRACE_SEIZE, tid, null, null)
                | libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null)
        };
        assert_eq!(r, 0, "ptrace {tid}: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: status is a valid out-pointer for the call.
        unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        Stopped(tid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // Detaching a thread this thread traces.
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, null, null) };
    }
}

#[test]
fn healthz_is_200_while_the_worker_runs_and_503_while_it_is_stuck() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start(
        &topo,
        &web_http(&[1]),
        &[
            "--workers",
            "1",
            "--metrics-bind-address",
            METRICS,
            "--healthz-bind-address",
            HEALTHZ,
        ],
    );
    let (code, body) = healthz(&topo);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["nodeHealthy"], true, "{body}");
    assert!(body["currentTime"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let tid = thread_of(sluice.pid(), "sluice-w0").expect("worker thread sluice-w0");
    {
        let _stuck = Stopped::new(tid);
        let down = poll_until(Duration::from_secs(10), || {
            let (code, body) = healthz(&topo);
            (code == 503).then_some(body)
        });
        let body = down.expect("healthz never 503 with the worker stopped");
        assert_eq!(body["nodeHealthy"], false, "{body}");
    }
    let up = poll_until(Duration::from_secs(10), || {
        (healthz(&topo).0 == 200).then_some(())
    });
    assert!(
        up.is_some(),
        "healthz not 200 again after the worker resumed"
    );
    assert!(topo.curl("http://198.18.100.10/", None).success());
    let _ = sluice.stop();
}
