//! `--state-dir`: objects applied through the API survive `kill -9`, and
//! the first connection after the restart (no `--config`) succeeds on its
//! first SYN (the client gives up before the kernel's 1 s SYN
//! retransmit), which needs both the restore before the data path starts
//! and the steering program attached last; a corrupt state file is
//! refused with a clear message, kept aside, and sluice serves the config
//! file alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::api::request;
use sluice_tests::k8s::web_http;
use sluice_tests::{
    parse_backend_reply, poll_until, require_root, topology, Role, Sluice, Topology,
};

/// A state directory removed on drop (also when the test fails).
struct StateDir(PathBuf);

impl StateDir {
    fn new(topo: &Topology) -> StateDir {
        let d =
            std::env::temp_dir().join(format!("{}-state-{}", topo.prefix(), std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        StateDir(d)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": "198.18.100.10",
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    })
}

fn slice() -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [Topology::backend_ip(2)], "conditions": {"ready": true}}]
    })
}

/// One connection through the VIP whose connect must succeed within
/// 0.9 s: a lost first SYN (retransmitted after 1 s) fails it. Returns the
/// backend's name.
fn first_syn_backend(topo: &Topology) -> Result<String, String> {
    let out = topo.curl_in(
        Role::Client,
        &[
            "--connect-timeout",
            "0.9",
            "--max-time",
            "5",
            "http://198.18.100.10/",
        ],
    );
    if !out.success() {
        return Err(format!("curl failed: {}", out.stderr));
    }
    parse_backend_reply(&out.stdout)
        .map(|(n, _, _)| n)
        .ok_or_else(|| format!("no backend reply: {:?}", out.stdout))
}

fn names(sock: &Path, path: &str) -> Vec<String> {
    let r = request(sock, "GET", path, None, None);
    assert_eq!(r.code, 200, "{r:?}");
    r.json()["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn objects_survive_kill_9_and_the_first_syn_after_restart_gets_through() {
    require_root();
    let topo = topology!();
    let state = StateDir::new(&topo);
    let args = ["--workers", "1", "--state-dir", state.arg()];
    let sluice = Sluice::start_empty(&topo, &args);
    let sock = sluice.api_socket().to_path_buf();
    let svcs = "/api/v1/namespaces/default/services";
    let slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
    let r = request(&sock, "POST", svcs, None, Some(&service().to_string()));
    assert_eq!(r.code, 201, "{r:?}");
    let uid = r.json()["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let r = request(&sock, "POST", slices, None, Some(&slice().to_string()));
    assert_eq!(r.code, 201, "{r:?}");
    assert_eq!(first_syn_backend(&topo).as_deref(), Ok("b2"));
    // The answer does not wait for the fsync (persist module doc): wait
    // for the state dir to hold the slice before killing. The write after
    // the start is a line of the log, not a new snapshot.
    let (file, log) = (state.0.join("state.json"), state.0.join("state.log"));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    poll_until(Duration::from_secs(5), || {
        read(&log).contains("\"web-1\"").then_some(())
    })
    .unwrap_or_else(|| panic!("{} never held the slice", log.display()));
    assert!(
        !read(&file).contains("\"web-1\""),
        "the snapshot is not rewritten per change"
    );

    // kill -9 (the harness's drop sends SIGKILL to the PID it started).
    let pid = sluice.pid();
    drop(sluice);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still runs"
    );

    let sluice = Sluice::start_empty(&topo, &args);
    assert_eq!(
        first_syn_backend(&topo).as_deref(),
        Ok("b2"),
        "the first connection after the restart; log:\n{}",
        sluice.logs()
    );
    let sock = sluice.api_socket().to_path_buf();
    assert_eq!(names(&sock, svcs), ["web"]);
    assert_eq!(names(&sock, slices), ["web-1"]);
    let r = request(&sock, "GET", &format!("{svcs}/web"), None, None);
    assert_eq!(r.json()["metadata"]["uid"], uid.as_str(), "uid kept");
    assert!(
        sluice.logs().contains("restored 2 objects"),
        "{}",
        sluice.logs()
    );
    let report = sluice.stop();
    assert_eq!(report.status.map(|s| s.success()), Some(true));
}

#[test]
fn a_corrupt_state_file_is_kept_aside_and_the_config_serves() {
    require_root();
    let topo = topology!();
    let state = StateDir::new(&topo);
    std::fs::create_dir_all(&state.0).unwrap();
    let garbage = b"{\"format\": \"sluice-state\", \"version\": 1, \"objects\": [";
    std::fs::write(state.0.join("state.json"), garbage).unwrap();
    let sluice = Sluice::start(
        &topo,
        &web_http(&[1]),
        &["--workers", "1", "--state-dir", state.arg()],
    );
    // The config's service serves, from the first SYN.
    assert_eq!(first_syn_backend(&topo).as_deref(), Ok("b1"));
    let logs = sluice.logs();
    assert!(
        logs.contains("state file refused")
            && logs.contains("not a valid state file")
            && logs.contains("starting from the config file alone"),
        "{logs}"
    );
    let kept: Vec<PathBuf> = std::fs::read_dir(&state.0)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("state.json.corrupt-"))
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), garbage, "kept unchanged");
    // The new state (the config's objects) is written beside it.
    let file = state.0.join("state.json");
    poll_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|s| s.contains("\"web-1\""))
    })
    .unwrap_or_else(|| panic!("{} not rewritten", file.display()));
    let _ = sluice.stop();
}
