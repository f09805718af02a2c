//! No packet lost while tables change: a steady UDP flow (one numbered
//! datagram every 20 ms, each answered within 18 ms) and a paced TCP transfer run
//! through Sluice while a client writes EndpointSlices of other services
//! through the API as fast as it can (the goal is 1000 updates/s; every
//! write is answered only after the workers loaded its table). Midway the
//! transfer's own service gains an endpoint and its first endpoint's weight
//! changes: the established flow keeps its backend and completes intact.
//!
//! The API client here is a small HTTP/1.1 keep-alive client on the Unix
//! socket (curl per request would measure process start-up, not Sluice).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::{require_root, topology, Role, Sluice, Topology, TopologyOpts};

const SVCS: &str = "/api/v1/namespaces/default/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
/// Services whose endpoints the update stream rewrites.
const OTHERS: usize = 20;
const UDP_COUNT: usize = 200;
const BYTES: u64 = 8_000_000;
const RATE: u64 = 2_000_000;

/// One keep-alive HTTP/1.1 connection to the API socket.
struct Api {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Api {
    fn connect(sock: &Path) -> Api {
        let s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Api {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// `METHOD path` with a JSON body; the status and the body.
    fn send(&mut self, method: &str, path: &str, body: &Value) -> (u16, String) {
        let body = body.to_string();
        write!(
            self.w,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write request");
        let mut line = String::new();
        self.r.read_line(&mut line).expect("status line");
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let (mut len, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("header");
            let h = line.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().expect("content-length");
            }
            if h.starts_with("transfer-encoding:") && h.contains("chunked") {
                chunked = true;
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line).expect("chunk size");
                let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
                let mut chunk = vec![0u8; n + 2];
                self.r.read_exact(&mut chunk).expect("chunk");
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else {
            out.resize(len, 0);
            self.r.read_exact(&mut out).expect("body");
        }
        (code, String::from_utf8_lossy(&out).into_owned())
    }
}

fn service(name: &str, ip: &str, port: u16, proto: &str, weights: Option<&str>) -> Value {
    let mut s = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": ip,
                 "ports": [{"name": "p", "protocol": proto, "port": port, "targetPort": port}]}
    });
    if let Some(w) = weights {
        s["metadata"]["annotations"] = json!({ "sluice.dev/weights": w });
    }
    s
}

fn slice(service: &str, port: u16, proto: &str, backends: &[usize]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": port, "protocol": proto}],
        "endpoints": backends.iter().map(|i| json!({
            "addresses": [Topology::backend_ip(*i)],
            "conditions": {"ready": true}
        })).collect::<Vec<_>>()
    })
}

fn create(api: &mut Api, path: &str, obj: &Value) {
    let (code, body) = api.send("POST", path, obj);
    assert!(code == 201 || code == 200, "POST {path}: {code} {body}");
}

#[test]
fn no_packet_lost_during_a_burst_of_updates() {
    require_root();
    let topo = topology!(TopologyOpts::default().backends(2));
    let sluice = Sluice::start_empty(&topo, &["--workers", "1"]);
    let mut api = Api::connect(sluice.api_socket());
    create(
        &mut api,
        SVCS,
        &service("steady", "198.18.100.10", 5353, "UDP", None),
    );
    create(&mut api, SLICES, &slice("steady", 5353, "UDP", &[1]));
    create(
        &mut api,
        SVCS,
        &service("bulk", "198.18.100.11", 9000, "TCP", None),
    );
    create(&mut api, SLICES, &slice("bulk", 9000, "TCP", &[1]));
    for i in 0..OTHERS {
        let name = format!("other{i}");
        let ip = format!("198.18.101.{}", i + 1);
        create(&mut api, SVCS, &service(&name, &ip, 80, "TCP", None));
        create(&mut api, SLICES, &slice(&name, 80, "TCP", &[1]));
    }

    let udp = topo.spawn_testsrv(
        Role::Client,
        &[
            "udp-stream",
            "198.18.100.10:5353",
            "--count",
            &UDP_COUNT.to_string(),
            "--interval-ms",
            "20",
        ],
    );
    let bulk = topo.spawn_testsrv(
        Role::Client,
        &[
            "bulk-get",
            "198.18.100.11:9000",
            "--bytes",
            &BYTES.to_string(),
            "--rate",
            &RATE.to_string(),
            "--timeout-ms",
            "20000",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));

    // Updates for 3.5 s (at most 10 000), to the other services; at 1 s
    // and 2 s the transfer's own service changes.
    let start = Instant::now();
    let (mut updates, mut own) = (0usize, 0);
    while start.elapsed() < Duration::from_millis(3500) && updates < 10_000 {
        let t = start.elapsed();
        if own == 0 && t > Duration::from_secs(1) {
            // One endpoint added.
            let (code, body) = api.send(
                "PUT",
                &format!("{SLICES}/bulk-1"),
                &slice("bulk", 9000, "TCP", &[1, 2]),
            );
            assert_eq!(code, 200, "{body}");
            own = 1;
        } else if own == 1 && t > Duration::from_secs(2) {
            // b1's weight changed.
            let w = format!("{}=3", Topology::backend_ip(1));
            let (code, body) = api.send(
                "PUT",
                &format!("{SVCS}/bulk"),
                &service("bulk", "198.18.100.11", 9000, "TCP", Some(&w)),
            );
            assert_eq!(code, 200, "{body}");
            own = 2;
        }
        let i = updates % OTHERS;
        let backends: &[usize] = if (updates / OTHERS).is_multiple_of(2) {
            &[2]
        } else {
            &[1]
        };
        let name = format!("other{i}");
        let (code, body) = api.send(
            "PUT",
            &format!("{SLICES}/{name}-1"),
            &slice(&name, 80, "TCP", backends),
        );
        assert_eq!(code, 200, "update {updates}: {body}");
        updates += 1;
    }
    let took = start.elapsed();
    let rate = updates as f64 / took.as_secs_f64();
    eprintln!("{updates} updates in {took:?}: {rate:.0}/s");
    assert_eq!(own, 2, "the transfer's own service was not changed");

    let udp_out = udp.wait(Duration::from_secs(20));
    let bulk_out = bulk.wait(Duration::from_secs(25));
    let report = sluice.stop();
    let drops: Vec<_> = report
        .counters
        .iter()
        .filter(|(k, v)| k.starts_with("drop_") && **v > 0)
        .collect();
    let ctx = format!("drops {drops:?}\nlog:\n{}", report.logs);
    assert!(udp_out.success(), "{udp_out}");
    let lines: Vec<&str> = udp_out.stdout.lines().collect();
    assert_eq!(lines.len(), UDP_COUNT, "{udp_out}");
    for (i, l) in lines.iter().enumerate() {
        let seq = l
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<usize>().ok());
        assert_eq!(seq, Some(i), "datagram {i} out of order: {l}");
        assert!(
            l.contains("backend=b1"),
            "datagram {i} lost or misrouted during the updates: {l}\n{}\n{ctx}",
            udp_out.stdout
        );
    }
    assert!(
        bulk_out.success() && bulk_out.stdout.starts_with(&format!("ok {BYTES} ")),
        "the transfer did not complete intact across the updates: {bulk_out}\n{ctx}"
    );
    assert!(drops.is_empty(), "the workers dropped packets: {ctx}");
    assert!(
        rate > 20.0,
        "only {rate:.0} updates/s: the burst did not load the reconciler"
    );
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
}
