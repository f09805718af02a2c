//! `sluice apply/get/delete` against a running sluice over its Unix socket:
//! apply a directory and stdin, get as aligned tables, JSON and YAML, a
//! refused apply that names the object and field and changes nothing,
//! delete by file and by kind and name; each change checked through the VIP.

use std::io::Write;
use std::process::{Command, Stdio};

use sluice_tests::k8s::{endpoint_slice, ready_backends};
use sluice_tests::{parse_backend_reply, require_root, sluice_bin, topology, Sluice, Topology};

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 198.18.100.10
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

fn slice(b: &[usize]) -> String {
    endpoint_slice("web-1", "web", &[("http", 8080, "TCP")], &ready_backends(b))
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `sluice ARGS` with SLUICE_SOCKET set, `stdin` fed to it.
fn cli(sock: &std::path::Path, args: &[&str], stdin: &str) -> Out {
    let mut child = Command::new(sluice_bin())
        .args(args)
        .env("SLUICE_SOCKET", sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
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
fn apply_get_delete_over_the_socket() {
    require_root();
    let topo = topology!();
    let sluice = Sluice::start_empty(&topo, &["--workers", "1"]);
    let sock = sluice.api_socket().to_path_buf();
    let dir = std::env::temp_dir().join(format!("{}-cli", topo.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a-svc.yaml"), SERVICE).unwrap();
    std::fs::write(dir.join("b-slice.yaml"), slice(&[1])).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an object").unwrap();
    let d = dir.to_string_lossy().into_owned();

    let o = cli(&sock, &["apply", "-f", &d], "");
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "service/web created\nendpointslice.discovery.k8s.io/web-1 created\n"
    );
    assert_reaches(&topo, "b1");

    // Tables for people: a header and aligned columns.
    let o = cli(&sock, &["get", "svc"], "");
    assert!(o.ok, "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", o.stdout);
    assert!(
        lines[0].starts_with("NAME   TYPE        CLUSTER-IP      EXTERNAL-IP   PORT(S)   AGE"),
        "{}",
        o.stdout
    );
    assert!(
        lines[1].starts_with("web    ClusterIP   198.18.100.10   <none>        80/TCP    "),
        "{}",
        o.stdout
    );
    let o = cli(&sock, &["get", "endpointslices", "-o", "wide"], "");
    assert!(
        o.stdout.contains("web-1") && o.stdout.contains("198.18.1.11"),
        "{}",
        o.stdout
    );
    let o = cli(&sock, &["get", "endpointslice", "web-1", "-o", "json"], "");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["endpoints"][0]["addresses"][0], "198.18.1.11");
    let o = cli(&sock, &["get", "svc", "web", "-o", "yaml"], "");
    assert!(
        o.stdout.contains("clusterIP: 198.18.100.10"),
        "{}",
        o.stdout
    );

    // A refused apply names the object and the field; nothing changes.
    let bad = SERVICE.replace("port: 80", "port: 0");
    let o = cli(&sock, &["apply", "-f", "-"], &bad);
    assert!(!o.ok, "{}", o.stdout);
    assert!(
        o.stderr.contains("Service default/web") && o.stderr.contains("spec.ports[0].port"),
        "{}",
        o.stderr
    );
    let o = cli(&sock, &["get", "svc", "web", "-o", "json"], "");
    assert!(o.stdout.contains("\"port\": 80"), "{}", o.stdout);
    assert_reaches(&topo, "b1");
    // A YAML error carries the line.
    let o = cli(&sock, &["apply", "-f", "-"], "kind: Service\n  bad: [\n");
    assert!(!o.ok && o.stderr.contains("-:2:"), "{}", o.stderr);

    // Apply from stdin moves the traffic.
    let o = cli(&sock, &["apply", "-f", "-"], &slice(&[2]));
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "endpointslice.discovery.k8s.io/web-1 configured\n"
    );
    assert_reaches(&topo, "b2");

    // Delete by kind and name, then by file.
    let o = cli(&sock, &["delete", "endpointslices", "web-1"], "");
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.stdout, "endpointslice \"web-1\" deleted\n");
    let out = topo.curl("http://198.18.100.10/", None);
    assert_eq!(out.status.and_then(|s| s.code()), Some(7), "refused: {out}");
    let f = dir.join("a-svc.yaml");
    let o = cli(&sock, &["delete", "-f", &f.to_string_lossy()], "");
    assert!(o.ok, "{}", o.stderr);
    let o = cli(&sock, &["get", "svc", "web"], "");
    assert!(!o.ok && o.stderr.contains("not found"), "{}", o.stderr);
    let o = cli(&sock, &["get", "deployments"], "");
    assert!(!o.ok && o.stderr.contains("unknown kind"), "{}", o.stderr);

    // One file with a Service and the slice naming it: applied in order,
    // deleted dependents first (the Service first would be refused while
    // the slice still names it).
    let both = dir.join("both.yaml");
    let svc = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&both, format!("{svc}\n---\n{}", slice(&[1]))).unwrap();
    let o = cli(&sock, &["apply", "-f", &both.to_string_lossy()], "");
    assert!(o.ok, "{}", o.stderr);
    assert_reaches(&topo, "b1");
    let o = cli(&sock, &["delete", "-f", &both.to_string_lossy()], "");
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "endpointslice \"web-1\" deleted\nservice \"web\" deleted\n"
    );
    let o = cli(&sock, &["get", "endpointslices"], "");
    assert!(!o.stdout.contains("web-1"), "{}", o.stdout);

    let _ = std::fs::remove_dir_all(&dir);
    sluice.stop();
    // Without a running sluice: a clear error.
    let o = cli(&sock, &["get", "svc"], "");
    assert!(
        !o.ok && o.stderr.contains("cannot reach sluice"),
        "{}",
        o.stderr
    );
}
