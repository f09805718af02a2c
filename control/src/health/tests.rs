use super::*;
use proptest::prelude::*;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn check(port: u16, service: &str, n: u32) -> HealthCheck {
    HealthCheck {
        port,
        service: service.into(),
        local_endpoints: n,
    }
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    TcpListener::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `server` on fresh ports for `checks` (whose port fields are
/// replaced), retrying if another process took a port in between.
fn serve(server: &mut HealthServer, mut checks: Vec<HealthCheck>) -> Vec<HealthCheck> {
    for _ in 0..10 {
        for c in &mut checks {
            c.port = free_port();
        }
        match server.update(&checks) {
            Ok(()) => return checks,
            Err(HealthError::Bind { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free ports");
}

/// Sends `request` raw and returns everything the server sends back.
fn raw(port: u16, request: &[u8]) -> io::Result<String> {
    let mut s = TcpStream::connect((LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn get(port: u16) -> String {
    raw(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n",
    )
    .unwrap()
}

#[test]
fn ok_then_unavailable_then_gone() {
    let mut server = HealthServer::new(vec![LOCALHOST]);
    let checks = serve(&mut server, vec![check(0, "default/web", 2)]);
    let port = checks[0].port;
    assert_eq!(server.ports(), vec![port]);

    let r = get(port);
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("\r\nContent-Type: application/json\r\n"), "{r}");
    assert!(r.contains("\r\nX-Content-Type-Options: nosniff\r\n"), "{r}");
    assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
    let body = r#"{"service":{"namespace":"default","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#;
    assert!(r.ends_with(&format!("\r\n\r\n{body}")), "{r}");
    assert!(
        r.contains(&format!("Content-Length: {}\r\n", body.len())),
        "{r}"
    );

    // Count to 0: 503 with the same body shape.
    server.update(&[check(port, "default/web", 0)]).unwrap();
    let r = get(port);
    assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
    assert!(r.contains(r#""localEndpoints":0"#), "{r}");
    assert!(r.contains("application/json"), "{r}");

    // Any path and HEAD.
    let r = raw(port, b"HEAD / HTTP/1.0\r\n\r\n").unwrap();
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");

    // Removed: the listener is gone.
    server.update(&[]).unwrap();
    assert!(server.ports().is_empty());
    assert!(TcpStream::connect((LOCALHOST, port)).is_err());
}

#[test]
fn ports_start_and_stop_independently() {
    let mut server = HealthServer::new(vec![LOCALHOST]);
    let checks = serve(
        &mut server,
        vec![check(0, "a/one", 1), check(0, "b/two", 0)],
    );
    let (p1, p2) = (checks[0].port, checks[1].port);
    let mut want = vec![p1, p2];
    want.sort();
    assert_eq!(server.ports(), want);
    assert!(get(p1).contains(r#""namespace":"a","name":"one""#));
    assert!(get(p2).starts_with("HTTP/1.1 503"));

    // Keep p2 with a new count, drop p1.
    server.update(&[check(p2, "b/two", 7)]).unwrap();
    assert_eq!(server.ports(), vec![p2]);
    assert!(get(p2).contains(r#""localEndpoints":7"#));
    assert!(TcpStream::connect((LOCALHOST, p1)).is_err());
}

#[test]
fn bind_failure_leaves_others_serving() {
    let mut server = HealthServer::new(vec![LOCALHOST]);
    let checks = serve(&mut server, vec![check(0, "a/ok", 1)]);
    let ok = checks[0].port;
    // Someone else holds this one.
    let taken = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let busy = taken.local_addr().unwrap().port();
    let err = server
        .update(&[check(ok, "a/ok", 3), check(busy, "a/busy", 1)])
        .unwrap_err();
    assert!(
        matches!(err, HealthError::Bind { addr, .. } if addr.port() == busy),
        "{err}"
    );
    assert_eq!(server.ports(), vec![ok]);
    assert!(get(ok).contains(r#""localEndpoints":3"#));
    // Freed: the next update picks it up.
    drop(taken);
    server
        .update(&[check(ok, "a/ok", 3), check(busy, "a/busy", 1)])
        .unwrap();
    assert!(get(busy).starts_with("HTTP/1.1 200"));
}

#[test]
fn invalid_and_duplicate_checks() {
    let mut server = HealthServer::new(vec![LOCALHOST]);
    let checks = serve(&mut server, vec![check(0, "a/x", 1)]);
    let p = checks[0].port;
    let err = server
        .update(&[check(p, "a/x", 1), check(p, "a/y", 1), check(0, "a/z", 1)])
        .unwrap_err();
    assert!(
        matches!(err, HealthError::DuplicatePort { port, .. } if port == p),
        "{err}"
    );
    assert_eq!(server.ports(), vec![p]);
    assert!(get(p).contains(r#""name":"x""#));
}

#[test]
fn junk_gets_400_or_close() {
    let mut server = HealthServer::new(vec![LOCALHOST]);
    let port = serve(&mut server, vec![check(0, "a/x", 1)])[0].port;

    for junk in [
        &b"\x00\x01\x02\x03\r\n\r\n"[..],
        b"hello\n\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"\xff\xfe / HTTP/1.1\r\n\r\n",
    ] {
        let r = raw(port, junk).unwrap();
        assert!(
            r.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{junk:?}: {r}"
        );
    }
    // Partial request then half-close: 400.
    let mut s = TcpStream::connect((LOCALHOST, port)).unwrap();
    s.write_all(b"GET / HT").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // Partial request, then silence: 408 after the request timeout.
    let t = Instant::now();
    let r = raw(port, b"GET / HT").unwrap();
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(t.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(2));
    // Oversized headers: 431 (or a reset, if the server closed while we wrote).
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(MAX_REQUEST * 4, b'a');
    if let Ok(r) = raw(port, &big) {
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
    }
    // Connect and say nothing: closed after the timeout, server still fine.
    let idle = TcpStream::connect((LOCALHOST, port)).unwrap();
    // A request with a body is answered; the body is ignored.
    let r = raw(port, b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").unwrap();
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(get(port).starts_with("HTTP/1.1 200 OK"));
    drop(idle);
}

#[test]
fn drop_stops_everything_promptly() {
    let mut server = HealthServer::new(vec![LOCALHOST]);
    let port = serve(&mut server, vec![check(0, "a/x", 1)])[0].port;
    // An idle connection in flight must not hold Drop up.
    let _idle = TcpStream::connect((LOCALHOST, port)).unwrap();
    thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    drop(server);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(TcpStream::connect((LOCALHOST, port)).is_err());
}

#[test]
fn service_name_split_and_escaping() {
    assert_eq!(
        Status::of(&check(1, "ns/name", 1)),
        Status {
            namespace: "ns".into(),
            name: "name".into(),
            local_endpoints: 1
        }
    );
    let s = Status::of(&check(1, "noslash", 0));
    assert_eq!((s.namespace.as_str(), s.name.as_str()), ("", "noslash"));
    let s = Status::of(&check(1, "a\"b/c\\d\n", 0));
    assert_eq!(
        body(&s),
        r#"{"service":{"namespace":"a\"b","name":"c\\d\u000a"},"localEndpoints":0,"serviceProxyHealthy":true}"#
    );
}

proptest! {
    #[test]
    fn request_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Some(end) = header_end(&bytes) {
            let r = parse_request(&bytes[..end]);
            let st = Status { namespace: "a".into(), name: "b".into(), local_endpoints: 1 };
            prop_assert!(response(&r, &st).is_some());
        }
    }
}
