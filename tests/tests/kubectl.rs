//! The real kubectl against sluice's API (`--api-listen 127.0.0.1:PORT` in
//! the LB namespace): `create -f`, `get svc,endpointslices [-o yaml|wide]`,
//! `replace -f`, `apply --server-side -f`, `get -w`, `delete -f`, each
//! change proven by a connection through the VIP.

use std::time::Duration;

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{
    parse_backend_reply, poll_until, require_root, topology, CmdOutput, Pipe, Role, Sluice,
    Topology,
};

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.18.100.10
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
";

fn slice(backends: &[usize]) -> String {
    endpoint_slice(
        "web-1",
        "web",
        &[("http", 8080, "TCP")],
        &ready_backends(backends),
    )
}

struct Kubectl<'t> {
    topo: &'t Topology,
    server: String,
    cache: std::path::PathBuf,
    /// kubectl before 1.25 validates on the client against the OpenAPI v2
    /// schemas, which Sluice does not publish: it gets `--validate=false`
    /// (newer ones see in the OpenAPI v3 index that the server validates).
    old: bool,
}

/// The client's minor version (`kubectl version --client -o json`).
fn kubectl_minor() -> u32 {
    let out = std::process::Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .expect("kubectl not found: scripts/deps.sh installs it");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["clientVersion"]["minor"]
        .as_str()
        .and_then(|m| m.trim_end_matches('+').parse().ok())
        .unwrap_or(0)
}

impl Kubectl<'_> {
    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "kubectl",
            "--server",
            &self.server,
            "--cache-dir",
            self.cache.to_str().unwrap(),
        ];
        v.extend_from_slice(args);
        if self.old && matches!(args.first(), Some(&"create" | &"replace" | &"apply")) {
            v.push("--validate=false");
        }
        v
    }

    fn run(&self, args: &[&str]) -> CmdOutput {
        self.topo
            .exec(Role::Lb, &self.argv(args), Duration::from_secs(30))
    }

    /// Runs kubectl with `yaml` in a file given as `-f FILE`.
    fn with_file(&self, args: &[&str], yaml: &str) -> CmdOutput {
        let f = self.cache.join("obj.yaml");
        std::fs::write(&f, yaml).unwrap();
        let fs = f.to_string_lossy().into_owned();
        let mut a = args.to_vec();
        a.extend_from_slice(&["-f", &fs]);
        self.run(&a)
    }

    fn ok(&self, out: CmdOutput) -> String {
        assert!(out.success(), "kubectl failed: {out}");
        out.stdout
    }
}

fn backend(topo: &Topology) -> Option<String> {
    let out = topo.curl("http://198.18.100.10/", None);
    out.success()
        .then(|| parse_backend_reply(&out.stdout).map(|(n, _, _)| n))
        .flatten()
}

fn assert_reaches(topo: &Topology, want: &str) {
    for i in 0..4 {
        assert_eq!(backend(topo).as_deref(), Some(want), "connection {i}");
    }
}

#[test]
fn a_kubectl_session_changes_what_the_vip_reaches() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start_empty(
        &topo,
        &["--workers", "1", "--api-listen", "127.0.0.1:16443"],
    );
    let cache = std::env::temp_dir().join(format!("{}-kubectl", topo.prefix()));
    std::fs::create_dir_all(&cache).unwrap();
    let k = Kubectl {
        topo: &topo,
        server: "http://127.0.0.1:16443".into(),
        cache: cache.clone(),
        old: kubectl_minor() < 25,
    };

    let out = k.ok(k.with_file(&["create"], SERVICE));
    assert!(out.contains("service/web created"), "{out}");
    let out = k.ok(k.with_file(&["create"], &slice(&[1])));
    assert!(
        out.contains("endpointslice.discovery.k8s.io/web-1 created"),
        "{out}"
    );
    assert_reaches(&topo, "b1");
    // A second create is refused with the server's AlreadyExists.
    let out = k.with_file(&["create"], SERVICE);
    assert!(
        !out.success() && out.stderr.contains("already exists"),
        "{out}"
    );

    let out = k.ok(k.run(&["get", "svc,endpointslices"]));
    assert!(out.contains("web") && out.contains("web-1"), "{out}");
    let out = k.ok(k.run(&["get", "svc", "web", "-o", "wide"]));
    assert!(out.contains("web"), "{out}");
    let out = k.ok(k.run(&["get", "endpointslices", "web-1", "-o", "yaml"]));
    assert!(
        out.contains("198.18.1.11") && out.contains("resourceVersion:"),
        "{out}"
    );

    // Watch the slices while they change.
    let mut watch = topo.spawn(
        Role::Lb,
        &k.argv(&["get", "endpointslices", "-w", "-o", "name"]),
    );
    assert!(
        watch.wait_for(Pipe::Stdout, 0, "web-1", Duration::from_secs(10)),
        "watch: {}",
        watch.output(Pipe::Stderr)
    );
    let seen = watch.offset(Pipe::Stdout);

    let out = k.ok(k.with_file(&["replace"], &slice(&[2])));
    assert!(out.contains("replaced"), "{out}");
    assert_reaches(&topo, "b2");
    assert!(
        watch.wait_for(Pipe::Stdout, seen, "web-1", Duration::from_secs(10)),
        "the watch saw no change: {}",
        watch.output(Pipe::Stdout)
    );

    let out = k.ok(k.with_file(&["apply", "--server-side"], &slice(&[3])));
    assert!(out.contains("serverside-applied"), "{out}");
    assert_reaches(&topo, "b3");

    let out = k.ok(k.with_file(&["delete"], &slice(&[3])));
    assert!(out.contains("deleted"), "{out}");
    let out = topo.curl("http://198.18.100.10/", None);
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(7),
        "refused after delete: {out}"
    );
    let gone = poll_until(Duration::from_secs(5), || {
        let o = k.run(&["get", "endpointslices"]);
        (o.success() && !o.stdout.contains("web-1")).then_some(())
    });
    assert!(gone.is_some(), "web-1 still listed");

    // As in Kubernetes, a Service may be deleted with its slices live, and
    // a slice may wait for its Service: it feeds the Service once it is
    // created again.
    k.ok(k.with_file(&["create"], &slice(&[1])));
    assert_reaches(&topo, "b1");
    let out = k.ok(k.run(&["delete", "svc", "web"]));
    assert!(out.contains("deleted"), "{out}");
    let out = k.ok(k.run(&["get", "endpointslices"]));
    assert!(
        out.contains("web-1"),
        "the slice outlives its Service: {out}"
    );
    let out = k.ok(k.with_file(&["create"], SERVICE));
    assert!(out.contains("service/web created"), "{out}");
    assert_reaches(&topo, "b1");
    watch.signal(libc::SIGTERM);
    drop(watch);
    let _ = std::fs::remove_dir_all(&cache);
    sluice.stop();
}
