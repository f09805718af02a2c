//! `sluice-testsrv`: the real peers of the integration tests.
//!
//! The tests drive Sluice with the kernel's own TCP/UDP stack on both sides, so
//! this is a small but real server (run in each backend namespace) and client
//! (run in the client namespace). It uses only std so that it builds in seconds
//! and cannot share a bug with the code under test.
//!
//! ```text
//! sluice-testsrv serve --name b1 [--http 8080] [--udp 5353] [--bulk 9000]
//! sluice-testsrv udp-query ADDR:PORT [--count N] [--timeout-ms T] [--bind IP]
//! sluice-testsrv bulk-get ADDR:PORT --bytes N [--rate BYTES_PER_S] [--timeout-ms T] [--bind IP]
//! ```
//!
//! * HTTP: any request gets `200` with body `backend=<name> peer=<ip>:<port>\n`
//!   and `Connection: close`; the peer is the source address the backend saw,
//!   which is how the tests observe scheduling and SNAT.
//! * UDP: each datagram is answered with `backend=<name> peer=<ip>:<port>`.
//! * bulk: the client sends `SEND <n> <rate>\n`; the server sends `n` bytes of a
//!   deterministic stream (xorshift64 seeded from `n`) at about `rate` bytes/s
//!   and closes. The client checks every byte against the same generator and
//!   prints `ok <bytes> <fnv1a-64 hex>`, so a transfer that crosses a config
//!   reload is proven intact, not just complete.
//!
//! `serve` prints `ready` on stdout once every listener is bound, then runs
//! until killed. Every client mode is bounded by `--timeout-ms`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

/// The deterministic byte stream of the bulk service (xorshift64, seeded from
/// the requested length so that client and server agree without talking).
struct Stream {
    state: u64,
    buf: [u8; 8],
    used: usize,
}

impl Stream {
    fn new(n: u64) -> Self {
        let seed = n ^ 0x9E37_79B9_7F4A_7C15;
        Self {
            state: if seed == 0 { 1 } else { seed },
            buf: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                let mut x = self.state;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.state = x;
                self.buf = x.to_le_bytes();
                self.used = 0;
            }
            *b = self.buf[self.used];
            self.used += 1;
        }
    }
}

/// FNV-1a 64, the checksum printed by `bulk-get`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

type Res<T> = Result<T, String>;

/// Parsed `--flag value` options plus positionals.
struct Args {
    positional: Vec<String>,
    flags: Vec<(String, String)>,
}

impl Args {
    fn parse(raw: &[String]) -> Res<Self> {
        let mut positional = Vec::new();
        let mut flags = Vec::new();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                flags.push((name.to_string(), v.clone()));
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Self { positional, flags })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn num(&self, name: &str, default: Option<u64>) -> Res<u64> {
        match self.get(name) {
            Some(v) => v.parse().map_err(|e| format!("--{name} {v}: {e}")),
            None => default.ok_or_else(|| format!("--{name} is required")),
        }
    }

    fn addr(&self) -> Res<SocketAddr> {
        let a = self.positional.first().ok_or("missing ADDR:PORT")?;
        a.parse().map_err(|e| format!("{a}: {e}"))
    }

    fn bind_ip(&self) -> Res<IpAddr> {
        match self.get("bind") {
            Some(v) => v.parse().map_err(|e| format!("--bind {v}: {e}")),
            None => Ok(IpAddr::from([0, 0, 0, 0])),
        }
    }
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = raw.split_first() else {
        eprintln!("usage: sluice-testsrv serve|udp-query|bulk-get ...");
        return ExitCode::from(2);
    };
    let result = Args::parse(rest).and_then(|args| match cmd.as_str() {
        "serve" => serve(&args),
        "udp-query" => udp_query(&args),
        "bulk-get" => bulk_get(&args),
        other => Err(format!("unknown command {other}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-testsrv {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &Args) -> Res<()> {
    let name: &'static str = Box::leak(
        args.get("name")
            .ok_or("--name is required")?
            .to_string()
            .into_boxed_str(),
    );
    let mut handles = Vec::new();
    if let Some(port) = args.get("http") {
        let l = TcpListener::bind(("0.0.0.0", port_of(port)?))
            .map_err(|e| format!("bind http {port}: {e}"))?;
        handles.push(thread::spawn(move || accept_loop(l, name, handle_http)));
    }
    if let Some(port) = args.get("bulk") {
        let l = TcpListener::bind(("0.0.0.0", port_of(port)?))
            .map_err(|e| format!("bind bulk {port}: {e}"))?;
        handles.push(thread::spawn(move || accept_loop(l, name, handle_bulk)));
    }
    if let Some(port) = args.get("udp") {
        let s = UdpSocket::bind(("0.0.0.0", port_of(port)?))
            .map_err(|e| format!("bind udp {port}: {e}"))?;
        handles.push(thread::spawn(move || udp_loop(s, name)));
    }
    if handles.is_empty() {
        return Err("nothing to serve: give --http, --udp or --bulk".into());
    }
    println!("ready");
    std::io::stdout().flush().ok();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn port_of(s: &str) -> Res<u16> {
    s.parse().map_err(|e| format!("port {s}: {e}"))
}

fn accept_loop(l: TcpListener, name: &'static str, handler: fn(TcpStream, &str, SocketAddr)) {
    for conn in l.incoming() {
        let Ok(stream) = conn else { continue };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        thread::spawn(move || handler(stream, name, peer));
    }
}

fn handle_http(mut s: TcpStream, name: &str, peer: SocketAddr) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    // Read the request head; the body (if any) is ignored.
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("backend={name} peer={peer}\n");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Let the client close first so the server does not hold TIME_WAIT races.
    let _ = s.read(&mut buf);
}

fn handle_bulk(s: TcpStream, _name: &str, _peer: SocketAddr) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let mut reader = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (Some("SEND"), Some(n), Some(rate)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(n), Ok(rate)) = (n.parse::<u64>(), rate.parse::<u64>()) else {
        return;
    };
    let _ = send_stream(s, n, rate);
}

fn send_stream(mut s: TcpStream, n: u64, rate: u64) -> std::io::Result<()> {
    let mut gen = Stream::new(n);
    let mut chunk = [0u8; 16 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let len = (n - sent).min(chunk.len() as u64) as usize;
        gen.fill(&mut chunk[..len]);
        s.write_all(&chunk[..len])?;
        sent += len as u64;
        if rate > 0 {
            // Pace by the total so far, so that short stalls are caught up.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
    s.shutdown(std::net::Shutdown::Write)
}

fn udp_loop(s: UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((_, peer)) = s.recv_from(&mut buf) else {
            continue;
        };
        let _ = s.send_to(format!("backend={name} peer={peer}").as_bytes(), peer);
    }
}

fn udp_query(args: &Args) -> Res<()> {
    let addr = args.addr()?;
    let count = args.num("count", Some(1))?;
    let timeout = Duration::from_millis(args.num("timeout-ms", Some(2000))?);
    let s = UdpSocket::bind((args.bind_ip()?, 0)).map_err(|e| format!("bind: {e}"))?;
    // A connected socket only accepts datagrams from `addr`: a reply from
    // any other source (a missing reverse NAT) is never received.
    s.connect(addr)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    for i in 0..count {
        s.send(format!("query {i}").as_bytes())
            .map_err(|e| format!("send {i}: {e}"))?;
        let n = s
            .recv(&mut buf)
            .map_err(|e| format!("no reply to query {i} from {addr} within {timeout:?}: {e}"))?;
        println!("{}", String::from_utf8_lossy(&buf[..n]));
    }
    Ok(())
}

fn bulk_get(args: &Args) -> Res<()> {
    let addr = args.addr()?;
    let bytes = args.num("bytes", None)?;
    let rate = args.num("rate", Some(0))?;
    let timeout = Duration::from_millis(args.num("timeout-ms", Some(30_000))?);
    let deadline = Instant::now() + timeout;
    let bind = args.bind_ip()?;
    let s = if bind.is_unspecified() {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    } else {
        connect_from(bind, addr)
    }
    .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    w.write_all(format!("SEND {bytes} {rate}\n").as_bytes())
        .map_err(|e| format!("send request: {e}"))?;
    let mut r = s;
    let mut gen = Stream::new(bytes);
    let mut fnv = Fnv::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timeout after {got} of {bytes} bytes"));
        }
        r.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(format!("read after {got} of {bytes} bytes: {e}")),
        };
        gen.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            return Err(format!("corrupt byte at offset {}", got + i as u64));
        }
        fnv.update(&buf[..n]);
        got += n as u64;
        if got > bytes {
            return Err(format!("received {got} bytes, more than {bytes}"));
        }
    }
    if got != bytes {
        return Err(format!("short transfer: {got} of {bytes} bytes"));
    }
    println!("ok {got} {:016x}", fnv.0);
    Ok(())
}

/// `connect` from a chosen source address (std has no bind-before-connect).
fn connect_from(bind: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (IpAddr::V4(src), SocketAddr::V4(dst)) = (bind, addr) else {
        return Err(std::io::Error::other("--bind supports IPv4 only"));
    };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2) call; the returned fd is checked and then owned
    // by the `TcpStream` below, which closes it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let src = sin(src, 0);
    // SAFETY: `src` is a valid sockaddr_in of `len` bytes for this call.
    if unsafe { libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let dst = sin(*dst.ip(), dst.port());
    // SAFETY: `dst` is a valid sockaddr_in of `len` bytes for this call.
    if unsafe { libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}
