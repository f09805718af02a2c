//! The cluster watch (`sluice run --kubeconfig`) against the fake API
//! server (`sluice_tests::fake_apiserver`), which listens on 127.0.0.1 in
//! the LB namespace where sluice runs; every change is checked by traffic
//! through the VIP:
//!
//! * a Service and its EndpointSlice created in the cluster serve; a slice
//!   modified (an endpoint not ready, another added) moves new connections;
//!   the Service deleted → its VIP is no longer steered and every new
//!   connection to it fails;
//! * a 410 Gone mid-watch → relist, and an object deleted while the watch
//!   could not see it is gone after the relist;
//! * a dropped connection → a new watch from the last version (no relist),
//!   and a later change applies; a watch from a compacted version, answered
//!   the way kube-apiserver does (an `ERROR` event with 410) and as an HTTP
//!   410 → relist;
//! * a Service that does not compile is refused, named in the log and
//!   counted, and the others keep flowing; a name the config file owns is
//!   left to the file; `--node-name` selects the local endpoints of an
//!   `internalTrafficPolicy: Local` Service;
//! * the fake itself, checked with the real kubectl (`get`, `get -w`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::api::request;
use sluice_tests::fake_apiserver::{FakeApiServer, GoneAnswer, Resource};
use sluice_tests::{
    parse_backend_reply, poll_until, require_root, topology, Pipe, Role, Sluice, Topology,
};

const WAIT: Duration = Duration::from_secs(20);

fn service(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    })
}

/// The slice `NAME` of Service `svc` over `(backend, ready, node)`.
fn slice(name: &str, svc: &str, eps: &[(usize, bool, &str)]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps.iter().map(|&(i, ready, node)| json!({
            "addresses": [Topology::backend_ip(i)],
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": node,
        })).collect::<Vec<_>>()
    })
}

/// The fake in the LB namespace, with a kubeconfig file naming it.
fn fake(topo: &Topology) -> (FakeApiServer, PathBuf) {
    let fake = FakeApiServer::start_in(&topo.ns(Role::Lb));
    let path = std::env::temp_dir().join(format!("{}-kubeconfig.yaml", topo.prefix()));
    fake.write_kubeconfig(&path);
    (fake, path)
}

fn start(topo: &Topology, kubeconfig: &Path, extra: &[&str]) -> Sluice {
    let kc = kubeconfig.to_string_lossy();
    let mut args = vec!["--workers", "1", "--kubeconfig", &kc];
    args.extend_from_slice(extra);
    Sluice::start_empty(topo, &args)
}

/// The backends 6 new connections to `ip` reach (`None` for a failed one).
fn spread(topo: &Topology, ip: &str) -> BTreeSet<Option<String>> {
    probe(topo, ip, 6)
}

/// The backends `n` new connections to `ip` reach, each given a second to
/// connect (`None` for a failed one).
fn probe(topo: &Topology, ip: &str, n: usize) -> BTreeSet<Option<String>> {
    let url = format!("http://{ip}/");
    (0..n)
        .map(|_| {
            let out = topo.curl_in(
                Role::Client,
                &["--max-time", "3", "--connect-timeout", "1", &url],
            );
            out.success()
                .then(|| parse_backend_reply(&out.stdout).map(|(n, _, _)| n))
                .flatten()
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<Option<String>> {
    names.iter().map(|n| Some((*n).to_owned())).collect()
}

/// Waits until new connections to `ip` reach exactly `want`.
fn await_spread(topo: &Topology, sluice: &Sluice, ip: &str, want: &[&str], what: &str) {
    let want = set(want);
    let mut last = BTreeSet::new();
    let ok = poll_until(WAIT, || {
        last = spread(topo, ip);
        (last == want).then_some(())
    });
    assert!(
        ok.is_some(),
        "{what}: {ip} reaches {last:?}, want {want:?}\n--- sluice log\n{}",
        sluice.logs()
    );
}

/// Waits until every new connection to `ip` fails.
fn await_gone(topo: &Topology, sluice: &Sluice, ip: &str, what: &str) {
    let ok = poll_until(WAIT, || (probe(topo, ip, 2) == [None].into()).then_some(()));
    assert!(
        ok.is_some(),
        "{what}: {ip} still answers\n--- sluice log\n{}",
        sluice.logs()
    );
}

fn await_true(what: &str, mut f: impl FnMut() -> bool) {
    assert!(poll_until(WAIT, || f().then_some(())).is_some(), "{what}");
}

#[test]
fn created_modified_deleted_in_the_cluster_follows_in_traffic() {
    require_root();
    let topo = topology!();
    let (fake, kc) = fake(&topo);
    fake.apply(service("web", "198.18.100.10"));
    fake.apply(slice(
        "web-1",
        "web",
        &[(1, true, "node1"), (2, true, "node2")],
    ));
    let sluice = start(&topo, &kc, &[]);
    await_spread(&topo, &sluice, "198.18.100.10", &["b1", "b2"], "listed");

    // Modified: b2 not ready, b3 added.
    fake.apply(slice(
        "web-1",
        "web",
        &[(1, true, "node1"), (2, false, "node2"), (3, true, "node1")],
    ));
    await_spread(&topo, &sluice, "198.18.100.10", &["b1", "b3"], "modified");

    // A second Service created while watching; its slice first (the two
    // watches run apart, so slices may come before their Service).
    fake.apply(slice("api-1", "api", &[(2, true, "node2")]));
    fake.apply(service("api", "198.18.100.11"));
    await_spread(&topo, &sluice, "198.18.100.11", &["b2"], "created");

    // Deleted: the VIP no longer serves; the other Service does.
    fake.delete("Service", "default", "web");
    fake.delete("EndpointSlice", "default", "web-1");
    await_gone(&topo, &sluice, "198.18.100.10", "deleted");
    await_spread(&topo, &sluice, "198.18.100.11", &["b2"], "untouched");

    let r = sluice.stop();
    assert_eq!(
        r.counter("cluster_lists"),
        2,
        "one list per kind, no relist"
    );
    assert_eq!(r.counter("cluster_refused"), 0);
    assert!(
        r.counter("cluster_writes") >= 5,
        "{}",
        r.counter("cluster_writes")
    );
    assert_eq!(fake.list_requests(Resource::Services), 1);
}

#[test]
fn gone_mid_watch_relists_and_what_was_deleted_meanwhile_is_gone() {
    require_root();
    let topo = topology!();
    let (fake, kc) = fake(&topo);
    fake.apply(service("web", "198.18.100.10"));
    fake.apply(slice("web-1", "web", &[(1, true, "")]));
    fake.apply(service("api", "198.18.100.11"));
    fake.apply(slice("api-1", "api", &[(2, true, "")]));
    let sluice = start(&topo, &kc, &[]);
    await_spread(&topo, &sluice, "198.18.100.10", &["b1"], "listed");
    await_spread(&topo, &sluice, "198.18.100.11", &["b2"], "listed");

    // The watches see nothing while `api` goes and `web` moves to b3; then
    // the history is compacted and every open watch gets ERROR 410.
    let lists = fake.list_requests(Resource::Services);
    fake.hold(true);
    fake.delete("Service", "default", "api");
    fake.delete("EndpointSlice", "default", "api-1");
    fake.apply(slice("web-1", "web", &[(3, true, "")]));
    fake.gone_mid_watch();
    fake.hold(false);
    await_gone(&topo, &sluice, "198.18.100.11", "deleted during the break");
    await_spread(
        &topo,
        &sluice,
        "198.18.100.10",
        &["b3"],
        "changed during the break",
    );
    // Both watches get the 410 at once, but each relists on its own
    // backoff: the slices' relist alone can empty `api`'s VIP, so wait for
    // the services' relist and then for `api` itself to leave the store.
    await_true("services relisted", || {
        fake.list_requests(Resource::Services) > lists
    });
    let api_path = "/api/v1/namespaces/default/services/api";
    await_true("api deleted from sluice's store by the relist", || {
        request(sluice.api_socket(), "GET", api_path, None, None).code == 404
    });
    let r = sluice.stop();
    assert!(
        r.counter("cluster_lists") >= 4,
        "{}",
        r.counter("cluster_lists")
    );
}

/// Cuts the watches; while they are cut, `web` moves to b2, then the
/// history is compacted: the new watch from the old version is gone and
/// `answer` says how the fake says so.
fn too_old_after_a_drop_relists(answer: GoneAnswer) {
    require_root();
    let topo = topology!();
    let (fake, kc) = fake(&topo);
    fake.set_gone_answer(answer);
    fake.apply(service("web", "198.18.100.10"));
    fake.apply(slice("web-1", "web", &[(1, true, "")]));
    fake.apply(service("api", "198.18.100.11"));
    fake.apply(slice("api-1", "api", &[(3, true, "")]));
    let sluice = start(&topo, &kc, &[]);
    await_spread(&topo, &sluice, "198.18.100.10", &["b1"], "listed");
    await_spread(&topo, &sluice, "198.18.100.11", &["b3"], "listed");
    let lists = fake.list_requests(Resource::EndpointSlices);
    fake.hold(true);
    fake.drop_watches();
    fake.apply(slice("web-1", "web", &[(2, true, "")]));
    fake.delete("Service", "default", "api");
    fake.delete("EndpointSlice", "default", "api-1");
    fake.compact();
    fake.hold(false);
    await_spread(&topo, &sluice, "198.18.100.10", &["b2"], "after the relist");
    await_gone(&topo, &sluice, "198.18.100.11", "deleted during the break");
    assert!(
        fake.list_requests(Resource::EndpointSlices) > lists,
        "relisted"
    );
    let r = sluice.stop();
    assert_eq!(r.counter("cluster_refused"), 0);
}

#[test]
fn a_watch_too_old_after_a_drop_relists_on_an_error_event() {
    too_old_after_a_drop_relists(GoneAnswer::Event);
}

#[test]
fn a_watch_too_old_after_a_drop_relists_on_an_http_410() {
    too_old_after_a_drop_relists(GoneAnswer::Http);
}

#[test]
fn a_dropped_connection_reconnects_and_a_later_change_applies() {
    require_root();
    let topo = topology!();
    let (fake, kc) = fake(&topo);
    fake.apply(service("web", "198.18.100.10"));
    fake.apply(slice("web-1", "web", &[(1, true, "")]));
    let sluice = start(&topo, &kc, &[]);
    await_spread(&topo, &sluice, "198.18.100.10", &["b1"], "listed");
    let (lists, watches) = (
        fake.list_requests(Resource::EndpointSlices),
        fake.watch_requests(Resource::EndpointSlices),
    );
    fake.drop_watches();
    await_true("a new watch of endpointslices", || {
        fake.watch_requests(Resource::EndpointSlices) > watches
    });
    fake.apply(slice("web-1", "web", &[(2, true, ""), (3, true, "")]));
    await_spread(
        &topo,
        &sluice,
        "198.18.100.10",
        &["b2", "b3"],
        "after the reconnect",
    );
    assert_eq!(
        fake.list_requests(Resource::EndpointSlices),
        lists,
        "a resumed watch, no relist: {:?}",
        fake.requests()
    );
    let r = sluice.stop();
    assert!(r.counter("cluster_errors") >= 1 || r.counter("cluster_lists") == 2);
}

#[test]
fn a_bad_service_is_refused_and_named_and_the_rest_flow() {
    require_root();
    let topo = topology!();
    let (fake, kc) = fake(&topo);
    // The config file owns `web` (b1); the cluster's `web` (b2) is left to it.
    let file = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.18.100.10
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-file, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [198.18.1.11], conditions: {ready: true}}]
"#;
    fake.apply(service("web", "198.18.100.10"));
    let mut bad = service("bad", "198.18.100.12");
    bad["spec"]["ports"][0]["port"] = json!(0);
    fake.apply(bad);
    fake.apply(slice("bad-1", "bad", &[(3, true, "")]));
    // Local: only node1's endpoint (b2), as sluice runs as node1.
    let mut local = service("local", "198.18.100.11");
    local["spec"]["internalTrafficPolicy"] = json!("Local");
    fake.apply(local);
    fake.apply(slice(
        "local-1",
        "local",
        &[(2, true, "node1"), (3, true, "node2")],
    ));
    let kcs = kc.to_string_lossy();
    let sluice = Sluice::start(
        &topo,
        file,
        &[
            "--workers",
            "1",
            "--kubeconfig",
            &kcs,
            "--node-name",
            "node1",
        ],
    );
    await_spread(
        &topo,
        &sluice,
        "198.18.100.11",
        &["b2"],
        "local endpoints only",
    );
    await_spread(&topo, &sluice, "198.18.100.10", &["b1"], "the file's web");
    let logs = sluice.logs();
    assert!(
        logs.contains("cluster object refused: Service default/bad"),
        "{logs}"
    );
    assert!(
        logs.contains("cluster Service default/web not applied: sluice-config-file owns it"),
        "{logs}"
    );
    // A later good change still applies.
    fake.apply(slice("local-1", "local", &[(1, true, "node1")]));
    await_spread(
        &topo,
        &sluice,
        "198.18.100.11",
        &["b1"],
        "after the refusal",
    );
    let r = sluice.stop();
    assert!(r.counter("cluster_refused") >= 1);
    assert!(r.counter("cluster_foreign") >= 1);
}

#[test]
fn the_fake_answers_the_real_kubectl_get_and_get_watch() {
    require_root();
    let topo = topology!(sluice_tests::TopologyOpts::default()
        .backends(1)
        .servers(false));
    let (fake, _kc) = fake(&topo);
    fake.apply(service("web", "198.18.100.10"));
    fake.apply(slice("web-1", "web", &[(1, true, "")]));
    let url = fake.url();
    let kubectl = |args: &[&str]| {
        let mut argv = vec!["kubectl", "--server", &url];
        argv.extend_from_slice(args);
        topo.exec(Role::Lb, &argv, Duration::from_secs(30))
    };
    let out = kubectl(&["get", "svc"]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.lines().any(|l| l.starts_with("web ")), "{out:?}");
    let out = kubectl(&["get", "endpointslices", "-o", "json"]);
    assert!(out.success(), "{out:?}");
    let list: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(list["items"][0]["metadata"]["name"], "web-1");
    assert_eq!(
        list["items"][0]["endpoints"][0]["addresses"][0],
        "198.18.1.11"
    );
    let out = kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(out.stdout, "198.18.100.10", "{out:?}");

    let url2 = url.clone();
    let w = topo.spawn(
        Role::Lb,
        &[
            "kubectl",
            "--server",
            &url2,
            "get",
            "svc",
            "-w",
            "--request-timeout",
            "30s",
        ],
    );
    assert!(
        w.wait_for(Pipe::Stdout, 0, "web", Duration::from_secs(20)),
        "kubectl get -w listed nothing: {}",
        w.output(Pipe::Stderr)
    );
    await_true("kubectl watches", || {
        fake.watch_requests(Resource::Services) > 0
    });
    fake.apply(service("api", "198.18.100.11"));
    assert!(
        w.wait_for(Pipe::Stdout, 0, "api", Duration::from_secs(20)),
        "kubectl get -w saw no event: {} {}",
        w.output(Pipe::Stdout),
        w.output(Pipe::Stderr)
    );
}
