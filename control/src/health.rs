//! kube-proxy's `healthCheckNodePort` servers: for every LoadBalancer
//! service with `externalTrafficPolicy: Local`, an HTTP server on its
//! health-check node port that tells the cloud load balancer whether this
//! node has local endpoints.
//!
//! Every request (any path, any method; HEAD without a body) is answered
//! like kube-proxy does:
//!
//! ```text
//! HTTP/1.1 200 OK                      (503 Service Unavailable when N == 0)
//! Content-Type: application/json
//! X-Content-Type-Options: nosniff
//! Content-Length: …
//! Connection: close
//!
//! {"service":{"namespace":"NS","name":"NAME"},"localEndpoints":N,"serviceProxyHealthy":true}
//! ```
//!
//! A request that is not HTTP gets `400 Bad Request`; one that does not
//! finish its headers within [`REQUEST_TIMEOUT`] or [`MAX_REQUEST`] bytes is
//! closed (408/431). Each port has one listener thread, which polls the
//! listening sockets of every configured address, and one short-lived
//! thread per connection (at most [`MAX_CONNS_PER_PORT`] at once).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::model::HealthCheck;

/// How long a client has to send its request headers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The most bytes of request headers read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once per port; more are closed at once.
pub const MAX_CONNS_PER_PORT: usize = 32;
/// How often threads look at their stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Why (part of) an update failed. Ports that did not fail keep serving.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// A port could not be bound on one of the addresses; it serves on none.
    #[error("cannot bind health check port on {addr}: {source}")]
    Bind {
        /// The address and port.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A bound socket could not be set up.
    #[error("cannot set up health check listener on {addr}: {source}")]
    Socket {
        /// The address and port.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The listener thread could not be started.
    #[error("cannot start the health check thread for port {port}: {source}")]
    Spawn {
        /// The port.
        port: u16,
        /// The OS error.
        source: io::Error,
    },
    /// Two services asked for the same port; the first one is served.
    #[error("health check port {port} is used by both {first} and {second}; serving {first}")]
    DuplicatePort {
        /// The port.
        port: u16,
        /// The service served.
        first: String,
        /// The service ignored.
        second: String,
    },
    /// A check with port 0.
    #[error("health check for {service} has port 0")]
    InvalidPort {
        /// `namespace/name`.
        service: String,
    },
}

/// What a port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    namespace: String,
    name: String,
    local_endpoints: u32,
}

impl Status {
    fn of(check: &HealthCheck) -> Status {
        let (namespace, name) = check
            .service
            .split_once('/')
            .unwrap_or(("", &check.service));
        Status {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            local_endpoints: check.local_endpoints,
        }
    }
}

/// One port: its listener thread and what it reports.
struct Port {
    status: Arc<ArcSwap<Status>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Port {
    fn signal(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn join(mut self) {
        self.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The health-check node port servers of this node. Dropping it stops every
/// listener and connection thread.
pub struct HealthServer {
    addrs: Vec<IpAddr>,
    ports: BTreeMap<u16, Port>,
}

impl std::fmt::Debug for HealthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthServer")
            .field("addrs", &self.addrs)
            .field("ports", &self.ports())
            .finish()
    }
}

impl HealthServer {
    /// A server that binds each port on every one of `addrs` (no addresses:
    /// `0.0.0.0`, every IPv4 address, like kube-proxy's default). Serves
    /// nothing until [`HealthServer::update`].
    pub fn new(addrs: Vec<IpAddr>) -> HealthServer {
        let mut addrs = addrs;
        if addrs.is_empty() {
            addrs.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        }
        addrs.dedup();
        HealthServer {
            addrs,
            ports: BTreeMap::new(),
        }
    }

    /// Serves exactly `checks`: starts listeners for new ports, stops those
    /// of removed ports, and swaps the reported counts of the others
    /// atomically. Every check is attempted; the first failure is returned
    /// (the others are logged), and the failed ports are not served (a later
    /// update retries them).
    pub fn update(&mut self, checks: &[HealthCheck]) -> Result<(), HealthError> {
        let mut errors = Vec::new();
        let mut wanted: BTreeMap<u16, &HealthCheck> = BTreeMap::new();
        for c in checks {
            if c.port == 0 {
                errors.push(HealthError::InvalidPort {
                    service: c.service.clone(),
                });
                continue;
            }
            if let Some(first) = wanted.get(&c.port) {
                if first.service != c.service {
                    errors.push(HealthError::DuplicatePort {
                        port: c.port,
                        first: first.service.clone(),
                        second: c.service.clone(),
                    });
                }
                continue;
            }
            wanted.insert(c.port, c);
        }

        // Stop removed ports: signal them all, then join them all.
        let removed: Vec<u16> = self
            .ports
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        let removed: Vec<Port> = removed
            .iter()
            .filter_map(|p| self.ports.remove(p))
            .collect();
        for p in &removed {
            p.signal();
        }
        for p in removed {
            p.join();
        }

        for (port, check) in wanted {
            let status = Status::of(check);
            if let Some(p) = self.ports.get(&port) {
                if **p.status.load() != status {
                    p.status.store(Arc::new(status));
                }
                continue;
            }
            match start_port(&self.addrs, port, status) {
                Ok(p) => {
                    tracing::info!(port, service = %check.service, "health check port serving");
                    self.ports.insert(port, p);
                }
                Err(e) => errors.push(e),
            }
        }

        let mut errors = errors.into_iter();
        let first = errors.next();
        for e in errors {
            tracing::warn!("health checks: {e}");
        }
        first.map_or(Ok(()), Err)
    }

    /// The ports being served, ascending.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.keys().copied().collect()
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        let ports = std::mem::take(&mut self.ports);
        for p in ports.values() {
            p.signal();
        }
        for (_, p) in ports {
            p.join();
        }
    }
}

/// Binds `port` on every address (all or nothing) and starts its thread.
fn start_port(addrs: &[IpAddr], port: u16, status: Status) -> Result<Port, HealthError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for ip in addrs {
        let addr = SocketAddr::new(*ip, port);
        let l = TcpListener::bind(addr).map_err(|source| HealthError::Bind { addr, source })?;
        l.set_nonblocking(true)
            .map_err(|source| HealthError::Socket { addr, source })?;
        listeners.push(l);
    }
    let status = Arc::new(ArcSwap::from_pointee(status));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (stop.clone(), status.clone());
    let thread = thread::Builder::new()
        .name(format!("sluice-hc-{port}"))
        .spawn(move || serve_port(listeners, st, s))
        .map_err(|source| HealthError::Spawn { port, source })?;
    Ok(Port {
        status,
        stop,
        thread: Some(thread),
    })
}

/// Waits until one of `listeners` is readable or `timeout` passes; returns
/// which are readable.
fn poll_readable(listeners: &[TcpListener], timeout: Duration) -> Vec<bool> {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    // SAFETY: `fds` is a valid array of `n` initialised pollfds that lives
    // across the call; the descriptors belong to `listeners`, open for the
    // call's duration.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
    if rc <= 0 {
        return vec![false; listeners.len()];
    }
    fds.iter().map(|f| f.revents != 0).collect()
}

fn serve_port(listeners: Vec<TcpListener>, status: Arc<ArcSwap<Status>>, stop: Arc<AtomicBool>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let ready = poll_readable(&listeners, POLL);
        for (l, _) in listeners.iter().zip(ready).filter(|(_, r)| *r) {
            let stream = match l.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) {
                        tracing::debug!(error = %e, "health check accept failed");
                        thread::sleep(POLL);
                    }
                    continue;
                }
            };
            let (done, running): (Vec<_>, Vec<_>) =
                conns.drain(..).partition(JoinHandle::is_finished);
            for h in done {
                let _ = h.join();
            }
            conns = running;
            if conns.len() >= MAX_CONNS_PER_PORT {
                continue; // dropped: closed
            }
            let (st, s) = (status.clone(), stop.clone());
            match thread::Builder::new()
                .name("sluice-hc-conn".into())
                .spawn(move || serve_conn(stream, &st, &s))
            {
                Ok(h) => conns.push(h),
                Err(e) => tracing::warn!(error = %e, "cannot start a health check thread"),
            }
        }
    }
    for h in conns {
        let _ = h.join();
    }
}

/// What a request read ended with.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// Headers complete; whether the method was HEAD.
    Ok { head: bool },
    /// Not HTTP.
    Bad,
    /// Headers larger than [`MAX_REQUEST`].
    TooLarge,
    /// Headers not complete in time.
    Timeout,
    /// The client went away or the server is stopping: no response.
    Gone,
}

/// Parses the request line of a complete header block.
fn parse_request(headers: &[u8]) -> Request {
    let line_end = headers
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(headers.len());
    let Ok(line) = std::str::from_utf8(&headers[..line_end]) else {
        return Request::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method)
        || target.is_empty()
        || !target.bytes().all(|b| b.is_ascii_graphic())
        || !version.starts_with("HTTP/1.")
    {
        return Request::Bad;
    }
    Request::Ok {
        head: method == "HEAD",
    }
}

fn header_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn read_request(s: &mut TcpStream, stop: &AtomicBool) -> Request {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = header_end(&buf) {
            return parse_request(&buf[..end]);
        }
        if buf.len() >= MAX_REQUEST {
            return Request::TooLarge;
        }
        if stop.load(Ordering::Acquire) {
            return Request::Gone;
        }
        if Instant::now() >= deadline {
            return if buf.is_empty() {
                Request::Gone
            } else {
                Request::Timeout
            };
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                // Closed before the headers ended: answer what looks like a
                // request line, else nothing.
                return if buf.is_empty() {
                    Request::Gone
                } else {
                    Request::Bad
                };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Request::Gone,
        }
    }
}

/// Minimal JSON string escaping.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The body kube-proxy sends.
fn body(status: &Status) -> String {
    format!(
        "{{\"service\":{{\"namespace\":{},\"name\":{}}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}",
        json_str(&status.namespace),
        json_str(&status.name),
        status.local_endpoints
    )
}

/// The full response to `req`, if any.
fn response(req: &Request, status: &Status) -> Option<Vec<u8>> {
    let (code, body, head) = match req {
        Request::Ok { head } => {
            let code = if status.local_endpoints > 0 {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (code, body(status), *head)
        }
        Request::Bad => ("400 Bad Request", String::new(), false),
        Request::TooLarge => ("431 Request Header Fields Too Large", String::new(), false),
        Request::Timeout => ("408 Request Timeout", String::new(), false),
        Request::Gone => return None,
    };
    let content_type = if body.is_empty() {
        "text/plain; charset=utf-8"
    } else {
        "application/json"
    };
    let mut out = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    Some(out)
}

fn serve_conn(mut s: TcpStream, status: &ArcSwap<Status>, stop: &AtomicBool) {
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(POLL)).is_err()
        || s.set_write_timeout(Some(REQUEST_TIMEOUT)).is_err()
    {
        return;
    }
    let req = read_request(&mut s, stop);
    let Some(resp) = response(&req, &status.load()) else {
        return;
    };
    if s.write_all(&resp).is_err() {
        return;
    }
    // Half-close, then drain briefly what the client still sends so that
    // closing does not reset the connection before it reads the response.
    let _ = s.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 1024];
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 64 * 1024 && !stop.load(Ordering::Acquire) {
        match s.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests;
