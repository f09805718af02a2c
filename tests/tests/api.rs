//! The API over its Unix socket, against the real binary started without a
//! config: create, get, list, replace, patch and delete Services and
//! EndpointSlices, each change checked by traffic through the VIP; every
//! bad request gets a 4xx `Status` and changes nothing (checked by GET and
//! by traffic); a watch stream sees a change; the socket is mode 0600; TCP
//! on a non-loopback address needs a token, and then every request too.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::api::{request, Reply};
use sluice_tests::{
    parse_backend_reply, poll_until, require_root, topology, BgProcess, Pipe, Role, Sluice,
    Topology,
};

const SVCS: &str = "/api/v1/namespaces/default/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": "198.18.100.10",
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    })
}

fn slice(backends: &[usize]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": backends.iter().map(|i| json!({
            "addresses": [Topology::backend_ip(*i)],
            "conditions": {"ready": true}
        })).collect::<Vec<_>>()
    })
}

fn send(sock: &Path, method: &str, path: &str, body: &Value) -> Reply {
    request(sock, method, path, None, Some(&body.to_string()))
}

/// The backend a new connection through the VIP reaches, or `None` when it
/// fails.
fn backend(topo: &Topology) -> Option<String> {
    let out = topo.curl("http://198.18.100.10/", None);
    out.success()
        .then(|| parse_backend_reply(&out.stdout).map(|(n, _, _)| n))
        .flatten()
}

/// Every new connection (5 of them) reaches `want`.
fn assert_reaches(topo: &Topology, want: &str) {
    for i in 0..5 {
        assert_eq!(backend(topo).as_deref(), Some(want), "connection {i}");
    }
}

/// The store's resource version (of an all-namespace list).
fn revision(sock: &Path) -> String {
    let r = request(sock, "GET", "/api/v1/services", None, None);
    assert_eq!(r.code, 200, "{r:?}");
    r.resource_version()
}

#[test]
fn crud_with_good_and_bad_bodies_changes_traffic_or_nothing() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start_empty(&topo, &["--workers", "1", "--api-max-body", "8192"]);
    let sock = sluice.api_socket().to_path_buf();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode");
    assert_eq!(backend(&topo), None, "no service yet");

    // Create: 201 with the metadata the server owns.
    let r = send(&sock, "POST", SVCS, &service());
    assert_eq!(r.code, 201, "{r:?}");
    let created = r.json();
    assert_eq!(created["metadata"]["uid"].as_str().map(str::len), Some(36));
    assert!(created["metadata"]["creationTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let r = send(&sock, "POST", SLICES, &slice(&[1]));
    assert_eq!(r.code, 201, "{r:?}");
    let slice_rv = r.resource_version();
    assert_reaches(&topo, "b1");

    // Every bad request: its 4xx, and nothing changed.
    let rv = revision(&sock);
    let mut bad_port = service();
    bad_port["metadata"]["name"] = json!("api");
    bad_port["spec"]["clusterIP"] = json!("198.18.100.11");
    bad_port["spec"]["ports"][0]["port"] = json!(0);
    let mut clash = service();
    clash["metadata"]["name"] = json!("web2");
    let mut stale = slice(&[2]);
    stale["metadata"]["resourceVersion"] = json!("1");
    let mut wrong_ns = slice(&[2]);
    wrong_ns["metadata"]["namespace"] = json!("prod");
    let big = json!({"kind": "Service", "metadata": {"name": "big", "annotations": {"x": "y".repeat(10_000)}}});
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        (
            "port 0",
            send(&sock, "POST", SVCS, &bad_port),
            422,
            "Invalid",
        ),
        (
            "same front end as web",
            send(&sock, "POST", SVCS, &clash),
            422,
            "Invalid",
        ),
        (
            "create of an existing object",
            send(&sock, "POST", SVCS, &service()),
            409,
            "AlreadyExists",
        ),
        (
            "stale resourceVersion",
            send(&sock, "PUT", &format!("{SLICES}/web-1"), &stale),
            409,
            "Conflict",
        ),
        (
            "not JSON",
            request(&sock, "POST", SVCS, None, Some("{\"kind\": ")),
            400,
            "BadRequest",
        ),
        (
            "namespace differs from the path",
            send(&sock, "POST", SLICES, &wrong_ns),
            400,
            "BadRequest",
        ),
        (
            "a Service to the slices path",
            send(&sock, "POST", SLICES, &service()),
            400,
            "BadRequest",
        ),
        (
            "replace of a missing object",
            send(&sock, "PUT", &format!("{SVCS}/nope"), &{
                let mut s = service();
                s["metadata"]["name"] = json!("nope");
                s
            }),
            404,
            "NotFound",
        ),
        (
            "merge patch: a port that is not a number",
            request(
                &sock,
                "PATCH",
                &format!("{SLICES}/web-1"),
                Some("application/merge-patch+json"),
                Some(r#"{"ports": [{"name": "http", "port": "x", "protocol": "TCP"}]}"#),
            ),
            422,
            "Invalid",
        ),
        (
            "JSON patch (unsupported)",
            request(
                &sock,
                "PATCH",
                &format!("{SLICES}/web-1"),
                Some("application/json-patch+json"),
                Some("[]"),
            ),
            415,
            "UnsupportedMediaType",
        ),
        (
            "body over --api-max-body",
            send(&sock, "POST", SVCS, &big),
            413,
            "",
        ),
        (
            "delete of a missing object",
            request(&sock, "DELETE", &format!("{SVCS}/nope"), None, None),
            404,
            "NotFound",
        ),
        (
            "unknown resource",
            request(
                &sock,
                "GET",
                "/api/v1/namespaces/default/deployments",
                None,
                None,
            ),
            404,
            "NotFound",
        ),
    ];
    for (what, r, code, reason) in &cases {
        assert_eq!(r.code, *code, "{what}: {r:?}");
        if !reason.is_empty() {
            let st = r.json();
            assert_eq!(st["kind"], "Status", "{what}: {r:?}");
            assert_eq!(st["reason"], *reason, "{what}: {r:?}");
        }
    }
    // 422 names the field.
    assert_eq!(
        cases[0].1.json()["details"]["causes"][0]["field"],
        "spec.ports[0].port",
        "{:?}",
        cases[0].1
    );
    assert_eq!(revision(&sock), rv, "a refused write changed the store");
    let r = request(&sock, "GET", &format!("{SLICES}/web-1"), None, None);
    assert_eq!(r.json()["endpoints"][0]["addresses"][0], "198.18.1.11");
    assert_eq!(
        request(&sock, "GET", &format!("{SVCS}/api"), None, None).code,
        404
    );
    assert_reaches(&topo, "b1");

    // Replace with the current resourceVersion, then without one.
    let mut next = slice(&[2]);
    next["metadata"]["resourceVersion"] = json!(slice_rv);
    let r = send(&sock, "PUT", &format!("{SLICES}/web-1"), &next);
    assert_eq!(r.code, 200, "{r:?}");
    assert_reaches(&topo, "b2");
    let r = send(&sock, "PUT", &format!("{SLICES}/web-1"), &slice(&[3]));
    assert_eq!(r.code, 200, "{r:?}");
    assert_reaches(&topo, "b3");
    // Merge patch (RFC 7386: the list is replaced).
    let r = request(
        &sock,
        "PATCH",
        &format!("{SLICES}/web-1"),
        Some("application/merge-patch+json"),
        Some(
            &json!({"endpoints": [{"addresses": ["198.18.1.11"], "conditions": {"ready": true}}]})
                .to_string(),
        ),
    );
    assert_eq!(r.code, 200, "{r:?}");
    assert_reaches(&topo, "b1");

    // Lists with label selectors; cluster-wide lists.
    let n = |path: &str| {
        let r = request(&sock, "GET", path, None, None);
        assert_eq!(r.code, 200, "{path}: {r:?}");
        r.json()["items"].as_array().map(Vec::len).unwrap_or(0)
    };
    assert_eq!(
        n(&format!(
            "{SLICES}?labelSelector=kubernetes.io/service-name%3Dweb"
        )),
        1
    );
    assert_eq!(
        n(&format!(
            "{SLICES}?labelSelector=kubernetes.io/service-name%3Dother"
        )),
        0
    );
    assert_eq!(n("/apis/discovery.k8s.io/v1/endpointslices"), 1);
    assert_eq!(n("/api/v1/namespaces/prod/services"), 0);

    // Delete: the VIP has no endpoint, so the client is refused at once
    // (curl's exit 7, "could not connect", from the RST; before the
    // Service existed the SYN went unanswered: exit 28, a timeout).
    let r = request(&sock, "DELETE", &format!("{SLICES}/web-1"), None, None);
    assert_eq!(r.code, 200, "{r:?}");
    let out = topo.curl("http://198.18.100.10/", None);
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(7),
        "no endpoint: refused: {out}"
    );
    let r = request(&sock, "DELETE", &format!("{SVCS}/web"), None, None);
    assert_eq!(r.code, 200, "{r:?}");
    assert_eq!(n(SVCS), 0);
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn a_watch_stream_sees_changes() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start_empty(&topo, &["--workers", "1"]);
    let sock = sluice.api_socket().to_path_buf();
    assert_eq!(send(&sock, "POST", SVCS, &service()).code, 201);
    let rv = revision(&sock);
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sSN",
        "--max-time",
        "20",
        "--unix-socket",
        &sock.to_string_lossy(),
        &format!("http://localhost{SLICES}?watch=true&resourceVersion={rv}"),
    ]);
    let watch = BgProcess::spawn(cmd);
    // Nothing happened after `rv`: the stream is quiet until the create.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(watch.output(Pipe::Stdout), "");
    assert_eq!(send(&sock, "POST", SLICES, &slice(&[1])).code, 201);
    let r = request(&sock, "DELETE", &format!("{SLICES}/web-1"), None, None);
    assert_eq!(r.code, 200);
    let lines = poll_until(Duration::from_secs(5), || {
        let out = watch.output(Pipe::Stdout);
        let lines: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (lines.len() >= 2).then_some(lines)
    })
    .unwrap_or_else(|| panic!("watch saw: {:?}", watch.output(Pipe::Stdout)));
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(lines[0]["object"]["metadata"]["name"], "web-1");
    assert_eq!(lines[1]["type"], "DELETED");
    let a: u64 = lines[0]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let d: u64 = lines[1]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(a > rv.parse().unwrap() && d > a, "{lines:?}");
    // Only slices: the Service created before is not in this stream.
    assert!(lines.iter().all(|l| l["object"]["kind"] == "EndpointSlice"));
    drop(watch);
    sluice.stop();
}

#[test]
fn tcp_off_loopback_needs_a_token_and_then_every_request_does() {
    require_root();
    let topo = topology!();
    let cfg = sluice_tests::k8s::web_http(&[1]);
    let out = Sluice::run_to_exit(
        &topo,
        &cfg,
        &["--api-listen", "198.18.0.1:6443"],
        Duration::from_secs(10),
    );
    assert!(
        out.status.is_some_and(|s| !s.success()),
        "started without a token: {out}"
    );
    assert!(out.stderr.contains("--api-token-file"), "{out}");

    let token = std::env::temp_dir().join(format!("{}-token", topo.prefix()));
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let tok = token.to_string_lossy().into_owned();
    let sluice = Sluice::start(
        &topo,
        &cfg,
        &["--api-listen", "198.18.0.1:6443", "--api-token-file", &tok],
    );
    let curl = |extra: &[&str]| {
        let mut args = vec![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ];
        args.extend_from_slice(extra);
        args.push("http://198.18.0.1:6443/api/v1/services");
        topo.curl_in(Role::Client, &args).stdout
    };
    assert_eq!(curl(&[]), "401", "no header");
    assert_eq!(curl(&["-H", "Authorization: Bearer wrong"]), "401");
    assert_eq!(curl(&["-H", "Authorization: Bearer s3cret-token"]), "200");
    // The Unix socket needs no token (its mode guards it).
    assert_eq!(
        request(sluice.api_socket(), "GET", "/api/v1/services", None, None).code,
        200
    );
    let _ = std::fs::remove_file(&token);
    sluice.stop();
}

/// A Service `name` on cluster IP `ip`, port 80 → 8080.
fn other_service(name: &str, ip: &str) -> Value {
    let mut s = service();
    s["metadata"]["name"] = json!(name);
    s["spec"]["clusterIP"] = json!(ip);
    s
}

/// `name`'s slice: backend `b`, on endpoint port `port` (0 is invalid).
fn other_slice(name: &str, b: usize, port: u16) -> Value {
    let mut s = slice(&[b]);
    s["metadata"]["name"] = json!(format!("{name}-1"));
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(name);
    s["ports"][0]["port"] = json!(port);
    s
}

/// Writes that arrive together are committed together (`api/group.rs`),
/// and each is still answered as if alone: a bad write fails alone while
/// the others of its group land, two writes of one object each get their
/// own object back, and every write has its own resourceVersion.
#[test]
fn concurrent_writes_are_committed_together_each_with_its_own_answer() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start_empty(&topo, &["--workers", "1"]);
    let sock = sluice.api_socket().to_path_buf();
    const N: usize = 40;
    for i in 0..N {
        let s = other_service(&format!("o{i}"), &format!("198.18.101.{}", i + 1));
        assert_eq!(send(&sock, "POST", SVCS, &s).code, 201);
    }
    assert_eq!(send(&sock, "POST", SVCS, &service()).code, 201);
    let commits = |topo: &Topology| {
        let text = sluice_tests::tier::metrics(topo, Role::Lb);
        sluice_tests::tier::metric_sum(&text, "sluice_sync_duration_seconds_count")
            .unwrap_or_else(|| panic!("no sync histogram in /metrics:\n{text}"))
    };
    let before = commits(&topo);
    // N good slices, one bad (port 0), and two writes of web-1 (b2, b3).
    let mut writes: Vec<(String, Value)> = (0..N)
        .map(|i| (format!("o{i}"), other_slice(&format!("o{i}"), 1, 8080)))
        .collect();
    writes.push(("bad".into(), other_slice("o0", 1, 0)));
    writes[N].1["metadata"]["name"] = json!("bad-1");
    writes.push(("web".into(), slice(&[2])));
    writes.push(("web".into(), slice(&[3])));
    let start = std::sync::Arc::new(std::sync::Barrier::new(writes.len()));
    let threads: Vec<_> = writes
        .into_iter()
        .map(|(who, body)| {
            let (sock, start) = (sock.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let r = send(&sock, "POST", SLICES, &body);
                (who, body, r)
            })
        })
        .collect();
    let answers: Vec<(String, Value, Reply)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let after = commits(&topo);
    let writes = answers.len() as u64;
    assert!(
        after - before < writes - 1,
        "{writes} writes took {} commits: none were grouped",
        after - before
    );
    let mut versions = std::collections::BTreeSet::new();
    let mut web_created = 0;
    for (who, body, r) in &answers {
        match who.as_str() {
            "bad" => {
                assert_eq!(r.code, 422, "the bad write fails alone: {r:?}");
                assert!(r.body.contains("ports[0].port"), "{r:?}");
            }
            "web" if r.code == 409 => {
                // The second create of web-1 finds the first's.
                assert!(r.body.contains("already exists"), "{r:?}");
            }
            _ => {
                assert_eq!(r.code, 201, "{who}: {r:?}");
                let got = r.json();
                assert_eq!(got["endpoints"], body["endpoints"], "{who}'s own object");
                assert!(versions.insert(r.resource_version()), "{r:?}");
                web_created += usize::from(who == "web");
            }
        }
    }
    assert_eq!(web_created, 1, "one create of web-1 wins: {answers:?}");
    assert_eq!(versions.len(), N + 1, "every write its own resourceVersion");
    let r = request(&sock, "GET", &format!("{SLICES}/bad-1"), None, None);
    assert_eq!(r.code, 404, "nothing of the bad write: {r:?}");
    for i in 0..N {
        let r = request(&sock, "GET", &format!("{SLICES}/o{i}-1"), None, None);
        assert_eq!(r.code, 200, "o{i}-1 landed: {r:?}");
    }
    // The winner is what the VIP reaches.
    let (_, body, _) = answers
        .iter()
        .find(|(w, _, r)| w == "web" && r.code == 201)
        .unwrap();
    let want = if body["endpoints"][0]["addresses"][0] == Topology::backend_ip(2) {
        "b2"
    } else {
        "b3"
    };
    assert_reaches(&topo, want);
    sluice.stop();
}
