//! `sluice-testsrv`: the real peers of the integration tests.
//!
//! The tests drive Sluice with the kernel's own TCP/UDP stack on both sides, so
//! this is a small but real server (run in each backend namespace) and client
//! (run in the client namespace). It uses only std so that it builds in seconds
//! and cannot share a bug with the code under test.
//!
//! ```text
//! sluice-testsrv serve --name b1 [--http 8080] [--udp 5353] [--bulk 9000]
//! sluice-testsrv udp-query ADDR:PORT [--count N] [--timeout-ms T] [--bind IP] [--icmp-detail 1] [--size BYTES] [--ttl N]
//! sluice-testsrv udp-sendto ADDR:PORT [--timeout-ms T]
//! sluice-testsrv bulk-get ADDR:PORT --bytes N [--rate BYTES_PER_S] [--timeout-ms T] [--bind IP] [--src-port P] [--poke-ms P]
//! sluice-testsrv bulk-put ADDR:PORT --bytes N [--timeout-ms T]
//! sluice-testsrv udp-stream ADDR:PORT --count N [--interval-ms I] [--bind IP]
//! sluice-testsrv udp-echo ADDR:PORT --size BYTES --reply BYTES [--count N] [--timeout-ms T]
//! sluice-testsrv sctp-send ADDR:PORT [--count N] [--src-port P] [--bind IP]
//! sluice-testsrv sctp-capture --ms N
//! sluice-testsrv frame-send --iface IF HEX [HEX ...]
//! sluice-testsrv frame-capture --iface IF --ms N --marker HEX
//! sluice-testsrv syn-flood ADDR:PORT --src-base IP --sources N --count N --seconds S
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
//!   reload is proven intact, not just complete. The other way round, the
//!   client sends `RECV <n>\n` and then `n` bytes of the same stream; the
//!   server checks every byte and answers `ok <n> <fnv1a-64 hex>\n` (or
//!   `bad ...`).
//! * bulk-put: that upload; prints the server's answer and the path MTU the
//!   client's kernel holds for the connection: `ok <n> <hex> pmtu=<mtu>`.
//!
//! * udp-query: one connected socket, one datagram and one reply per
//!   `--count`; replies are printed one a line. When a query gets no reply
//!   it prints `refused (ECONNREFUSED)` (an ICMP port unreachable arrived
//!   for the flow; exit status 3) or `timeout` (exit status 4) on stdout,
//!   with details on stderr. `--icmp-detail 1` sets `IP_RECVERR` and, on a
//!   refusal, first prints the queued ICMP error: `icmp-error errno=111
//!   origin=2 type=3 code=3 offender=<outer source> quoted=<payload bytes>
//!   info=<ee_info>` (the MTU, for a too-big error). `--size BYTES` pads
//!   each query to that many bytes of UDP payload; the kernel sets DF
//!   (path MTU discovery), so a query too big for the path gets ICMP
//!   fragmentation needed / packet too big, which the socket reports as
//!   `too-big (EMSGSIZE)` (exit status 5; with `--icmp-detail 1` after the
//!   ICMP error line). `--ttl N` sends with that TTL / hop limit; one that
//!   runs out on the way gets ICMP time exceeded, which the socket (with
//!   `--icmp-detail 1`) reports as `unreachable (EHOSTUNREACH)` (exit
//!   status 6, after the ICMP error line).
//! * udp-stream: one connected UDP socket sends a datagram every
//!   `--interval-ms` (default 200), `--count` times, and prints one line per
//!   datagram: `<unix ms> <seq> <reply>` or `<unix ms> <seq> timeout` /
//!   `... error <e>`; it goes on after errors, so a test sees when replies
//!   stopped and resumed (and from which backend) across a reload.
//! * udp-echo (and `serve --udp-echo PORT [--echo-bind IP]`): datagrams larger than the
//!   link, which both kernels fragment (`IP_PMTUDISC_DONT`). The client
//!   sends `--size` bytes: `ECHO <reply> <fnv1a-64 hex>\n` and a
//!   deterministic body; the server checks the body against the hash and
//!   answers with `--reply` bytes: `backend=<name> ok|bad <received>\n` and
//!   a deterministic body, which the client checks byte for byte. It prints
//!   `ok backend=<name> sent=<n> got=<m>` per datagram, or the mismatch
//!   (exit status 1) or `timeout` (exit status 4).
//! * SCTP (this kernel has no SCTP stack, GUIDE "This machine"): `sctp-send`
//!   sends crafted SCTP INIT packets (valid CRC32c) over a raw IP socket,
//!   one per source port `--src-port`, `+1`, …; `sctp-capture` reads IPv4
//!   frames with protocol 132 arriving on an `AF_PACKET` socket for `--ms`
//!   milliseconds and prints `sctp src=IP:PORT dst=IP:PORT chunk=TYPE
//!   crc=ok|bad` per frame (after `ready`).
//! * Crafted frames (malformed ones included, which no socket API sends):
//!   `frame-send` writes each hex-encoded Ethernet frame as is to `--iface`
//!   through an `AF_PACKET` raw socket, 5 ms apart, and prints `sent N`;
//!   `frame-capture` reads every frame arriving on `--iface` for `--ms`
//!   milliseconds and prints `frame <hex>` for each one that contains the
//!   `--marker` bytes (every frame when the marker is empty, `--marker ""`),
//!   after `ready`, so a test can prove that a frame it marked did, or did
//!   not, get through.
//!
//! * syn-flood: `--count` TCP SYNs (IPv4, crafted over an `IPPROTO_RAW`
//!   socket, valid checksums) to ADDR:PORT from spoofed sources
//!   `--src-base` + 0..`--sources` (source port 1024 + k / sources), paced
//!   evenly over `--seconds`; stops after twice that in any case. Prints
//!   `sent N secs S`.
//!
//! `serve`, `sctp-capture` and `frame-capture` print `ready` on stdout once their sockets are
//! bound. `serve` listens dual-stack where IPv6 is available and prints IPv4
//! peers in their plain form. Every client mode is bounded in time.

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

    /// `--bind`, else the unspecified address of the target's family.
    fn bind_ip(&self) -> Res<IpAddr> {
        match self.get("bind") {
            Some(v) => v.parse().map_err(|e| format!("--bind {v}: {e}")),
            None => Ok(match self.addr() {
                Ok(SocketAddr::V6(_)) => IpAddr::from([0u16; 8]),
                _ => IpAddr::from([0, 0, 0, 0]),
            }),
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
        "udp-sendto" => udp_sendto(&args),
        "bulk-get" => bulk_get(&args),
        "bulk-put" => bulk_put(&args),
        "udp-stream" => udp_stream(&args),
        "udp-echo" => udp_echo(&args),
        "sctp-send" => sctp_send(&args),
        "sctp-capture" => sctp_capture(&args),
        "frame-send" => frame_send(&args),
        "frame-capture" => frame_capture(&args),
        "syn-flood" => syn_flood(&args),
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
    // `[::]` is dual-stack (net.ipv6.bindv6only is 0); where IPv6 is
    // disabled it may fail, and IPv4 alone is what the test wants then.
    if let Some(port) = args.get("http") {
        let p = port_of(port)?;
        let l = TcpListener::bind(("::", p))
            .or_else(|_| TcpListener::bind(("0.0.0.0", p)))
            .map_err(|e| format!("bind http {port}: {e}"))?;
        handles.push(thread::spawn(move || accept_loop(l, name, handle_http)));
    }
    if let Some(port) = args.get("bulk") {
        let p = port_of(port)?;
        let l = TcpListener::bind(("::", p))
            .or_else(|_| TcpListener::bind(("0.0.0.0", p)))
            .map_err(|e| format!("bind bulk {port}: {e}"))?;
        handles.push(thread::spawn(move || accept_loop(l, name, handle_bulk)));
    }
    if let Some(port) = args.get("udp") {
        let p = port_of(port)?;
        let s = UdpSocket::bind(("::", p))
            .or_else(|_| UdpSocket::bind(("0.0.0.0", p)))
            .map_err(|e| format!("bind udp {port}: {e}"))?;
        handles.push(thread::spawn(move || udp_loop(s, name)));
    }
    if let Some(port) = args.get("udp-echo") {
        let p = port_of(port)?;
        // `--echo-bind IP`: replies leave from that address (a DR real
        // server answers from the VIP it holds on lo; a wildcard socket
        // would answer from the route's source).
        let s = match args.get("echo-bind") {
            Some(ip) => {
                let ip: IpAddr = ip.parse().map_err(|e| format!("--echo-bind {ip}: {e}"))?;
                UdpSocket::bind((ip, p))
            }
            None => UdpSocket::bind(("::", p)).or_else(|_| UdpSocket::bind(("0.0.0.0", p))),
        }
        .map_err(|e| format!("bind udp-echo {port}: {e}"))?;
        allow_fragments(&s);
        handles.push(thread::spawn(move || udp_echo_loop(s, name)));
    }
    if handles.is_empty() {
        return Err("nothing to serve: give --http, --udp, --udp-echo or --bulk".into());
    }
    println!("ready");
    std::io::stdout().flush().ok();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// An IPv4 peer of a dual-stack socket shows as `::ffff:a.b.c.d`; print it
/// as `a.b.c.d`, which is what the tests compare with.
fn plain(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => peer,
        },
        v4 => v4,
    }
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
        thread::spawn(move || handler(stream, name, plain(peer)));
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
    if line.starts_with("RECV ") {
        let Some(Ok(n)) = parts.nth(1).map(str::parse::<u64>) else {
            return;
        };
        let answer = match receive_stream(&mut reader, n) {
            Ok(hash) => format!("ok {n} {hash:016x}\n"),
            Err(e) => format!("bad {e}\n"),
        };
        let mut s = s;
        let _ = s.write_all(answer.as_bytes());
        return;
    }
    let (Some("SEND"), Some(n), Some(rate)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(n), Ok(rate)) = (n.parse::<u64>(), rate.parse::<u64>()) else {
        return;
    };
    let _ = send_stream(s, n, rate);
}

/// Reads `n` bytes of the bulk stream for `n` and checks each one; returns
/// their FNV-1a hash.
fn receive_stream(r: &mut impl Read, n: u64) -> Result<u64, String> {
    let mut gen = Stream::new(n);
    let mut fnv = Fnv::new();
    let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut got = 0u64;
    while got < n {
        let room = (n - got).min(buf.len() as u64) as usize;
        let k = match r.read(&mut buf[..room]) {
            Ok(0) => return Err(format!("short: {got} of {n} bytes")),
            Ok(k) => k,
            Err(e) => return Err(format!("read after {got} of {n} bytes: {e}")),
        };
        gen.fill(&mut want[..k]);
        if let Some(i) = (0..k).find(|&i| buf[i] != want[i]) {
            return Err(format!("corrupt byte at offset {}", got + i as u64));
        }
        fnv.update(&buf[..k]);
        got += k as u64;
    }
    Ok(fnv.0)
}

/// `bulk-put`: uploads `--bytes` of the bulk stream and prints the
/// server's verdict with the connection's path MTU (`IP_MTU`).
fn bulk_put(args: &Args) -> Res<()> {
    use std::os::fd::AsRawFd;
    let addr = args.addr()?;
    let bytes = args.num("bytes", None)?;
    let timeout = Duration::from_millis(args.num("timeout-ms", Some(30_000))?);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("RECV {bytes}\n").as_bytes())
        .map_err(|e| format!("send request: {e}"))?;
    let mut gen = Stream::new(bytes);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let k = (bytes - sent).min(chunk.len() as u64) as usize;
        gen.fill(&mut chunk[..k]);
        s.write_all(&chunk[..k])
            .map_err(|e| format!("write after {sent} of {bytes} bytes: {e}"))?;
        sent += k as u64;
    }
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer after sending {bytes} bytes: {e}"))?;
    let (level, opt) = match addr {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `mtu` and `len` are valid for an int option; the fd is open.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(format!("IP_MTU: {}", std::io::Error::last_os_error()));
    }
    println!("{} pmtu={mtu}", answer.trim_end());
    if !answer.starts_with("ok ") {
        return Err(format!("server: {}", answer.trim_end()));
    }
    Ok(())
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
        let reply = format!("backend={name} peer={}", plain(peer));
        let _ = s.send_to(reply.as_bytes(), peer);
    }
}

/// Lets the kernel fragment datagrams larger than the path MTU (no DF):
/// `IP_PMTUDISC_DONT` / `IPV6_PMTUDISC_DONT`; the one of the other family
/// fails on a single-stack socket, harmlessly.
fn allow_fragments(s: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let dont: libc::c_int = 0;
    for (level, opt) in [
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
    ] {
        // SAFETY: a valid socket and a c_int option of its size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                opt,
                &dont as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// The deterministic body of an echo datagram of `total` bytes after its
/// header line.
fn echo_body(total: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7) ^ total) as u8)
        .collect()
}

/// FNV-1a 64 of `b`.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn udp_echo_loop(s: UdpSocket, name: &str) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, peer)) = s.recv_from(&mut buf) else {
            continue;
        };
        let got = &buf[..n];
        let Some(nl) = got.iter().position(|&b| b == b'\n') else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..nl]).into_owned();
        let mut w = head.split(' ');
        let (Some("ECHO"), Some(reply), Some(hash)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let Ok(reply) = reply.parse::<usize>() else {
            continue;
        };
        let ok = format!("{:016x}", fnv1a(&got[nl + 1..])) == hash;
        let mut r = format!("backend={name} {} {n}\n", if ok { "ok" } else { "bad" }).into_bytes();
        let body = echo_body(reply, reply.saturating_sub(r.len()));
        r.extend_from_slice(&body);
        let _ = s.send_to(&r, peer);
    }
}

fn udp_echo(args: &Args) -> Res<()> {
    let addr = args.addr()?;
    let size = args.num("size", None)? as usize;
    let reply = args.num("reply", None)? as usize;
    let count = args.num("count", Some(1))?;
    let timeout = Duration::from_millis(args.num("timeout-ms", Some(2000))?);
    let s = UdpSocket::bind((args.bind_ip()?, 0)).map_err(|e| format!("bind: {e}"))?;
    s.connect(addr)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    allow_fragments(&s);
    let mut buf = vec![0u8; 65536];
    for i in 0..count {
        // The header's length depends on the hash's, which is fixed (16
        // hex digits), so the body length is known before hashing.
        let head_len = format!("ECHO {reply} {:016x}\n", 0).len();
        let body = echo_body(size, size.saturating_sub(head_len));
        let mut q = format!("ECHO {reply} {:016x}\n", fnv1a(&body)).into_bytes();
        q.extend_from_slice(&body);
        s.send(&q).map_err(|e| format!("send {i}: {e}"))?;
        let n = match s.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                println!("timeout");
                eprintln!("sluice-testsrv udp-echo: datagram {i} ({size} bytes) to {addr}: {e}");
                let _ = std::io::stdout().flush();
                std::process::exit(UDP_TIMEOUT);
            }
        };
        let got = &buf[..n];
        let nl = got.iter().position(|&b| b == b'\n').unwrap_or(n);
        let head = String::from_utf8_lossy(&got[..nl]).into_owned();
        let mut w = head.split(' ');
        let name = w
            .next()
            .unwrap_or("")
            .trim_start_matches("backend=")
            .to_string();
        let verdict = w.next().unwrap_or("");
        let received = w.next().unwrap_or("");
        let body_ok = nl < n && got[nl + 1..] == echo_body(reply, n - nl - 1)[..];
        if verdict != "ok" || received != q.len().to_string() || n != reply || !body_ok {
            return Err(format!(
                "datagram {i}: sent {} bytes, got {n} (want {reply}): {head:?}, body ok: {body_ok}",
                q.len()
            ));
        }
        println!("ok backend={name} sent={} got={n}", q.len());
    }
    Ok(())
}

fn udp_query(args: &Args) -> Res<()> {
    let addr = args.addr()?;
    let count = args.num("count", Some(1))?;
    let timeout = Duration::from_millis(args.num("timeout-ms", Some(2000))?);
    let icmp_detail = args.num("icmp-detail", Some(0))? != 0;
    let size = args.num("size", Some(0))? as usize;
    let s = UdpSocket::bind((args.bind_ip()?, 0)).map_err(|e| format!("bind: {e}"))?;
    // A connected socket only accepts datagrams from `addr`: a reply from
    // any other source (a missing reverse NAT) is never received.
    s.connect(addr)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    if icmp_detail {
        set_recverr(&s, addr)?;
    }
    if args.get("ttl").is_some() {
        let ttl = u32::try_from(args.num("ttl", None)?).map_err(|e| format!("--ttl: {e}"))?;
        match addr {
            SocketAddr::V4(_) => s.set_ttl(ttl).map_err(|e| format!("IP_TTL: {e}"))?,
            SocketAddr::V6(_) => set_hop_limit(&s, ttl)?,
        }
    }
    let mut buf = [0u8; 2048];
    for i in 0..count {
        let mut q = format!("query {i}").into_bytes();
        if q.len() < size {
            q.resize(size, b'.');
        }
        s.send(&q).map_err(|e| format!("send {i}: {e}"))?;
        match s.recv(&mut buf) {
            Ok(n) => println!("{}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => {
                let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
                let too_big = e.raw_os_error() == Some(libc::EMSGSIZE);
                let unreachable = e.raw_os_error() == Some(libc::EHOSTUNREACH);
                if (refused || too_big || unreachable) && icmp_detail {
                    match read_icmp_error(&s) {
                        Ok(line) => println!("{line}"),
                        Err(d) => eprintln!("sluice-testsrv udp-query: no ICMP detail: {d}"),
                    }
                }
                let timed_out = matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
                let (what, code) = if refused {
                    ("refused (ECONNREFUSED)", UDP_REFUSED)
                } else if too_big {
                    ("too-big (EMSGSIZE)", UDP_TOO_BIG)
                } else if unreachable {
                    ("unreachable (EHOSTUNREACH)", UDP_UNREACHABLE)
                } else if timed_out {
                    ("timeout", UDP_TIMEOUT)
                } else {
                    ("error", 1)
                };
                println!("{what}");
                let why = if timed_out {
                    format!("no reply within {timeout:?}")
                } else {
                    e.to_string()
                };
                eprintln!("sluice-testsrv udp-query: query {i} to {addr}: {what}: {why}");
                let _ = std::io::stdout().flush();
                std::process::exit(code);
            }
        }
    }
    Ok(())
}

/// `udp-sendto`: one datagram from an *unconnected* socket (`sendto`), one
/// reply by `recvfrom`; prints the reply and `from=ADDR`, the source the
/// socket reported. A refused send exits [`UDP_REFUSED`].
fn udp_sendto(args: &Args) -> Res<()> {
    let addr = args.addr()?;
    let timeout = Duration::from_millis(args.num("timeout-ms", Some(2000))?);
    let s = UdpSocket::bind((args.bind_ip()?, 0)).map_err(|e| format!("bind: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    if let Err(e) = s.send_to(b"query 0", addr) {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            println!("refused (ECONNREFUSED)");
            eprintln!("sluice-testsrv udp-sendto: to {addr}: {e}");
            let _ = std::io::stdout().flush();
            std::process::exit(UDP_REFUSED);
        }
        return Err(format!("sendto {addr}: {e}"));
    }
    let mut buf = [0u8; 2048];
    let (n, from) = s
        .recv_from(&mut buf)
        .map_err(|e| format!("recvfrom: {e}"))?;
    println!("{} from={from}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

/// Exit status of `udp-query` when the socket reported ECONNREFUSED (an
/// ICMP port unreachable arrived for the flow).
const UDP_REFUSED: i32 = 3;
/// Exit status of `udp-query` when no reply came within the timeout.
const UDP_TIMEOUT: i32 = 4;
/// Exit status of `udp-query` when the socket reported EMSGSIZE (an ICMP
/// fragmentation needed / packet too big arrived for the flow).
const UDP_TOO_BIG: i32 = 5;
/// Exit status of `udp-query` when the socket reported EHOSTUNREACH (an
/// ICMP time exceeded or host unreachable arrived for the flow).
const UDP_UNREACHABLE: i32 = 6;

/// `IPV6_UNICAST_HOPS` (`--ttl` for an IPv6 destination): std has no
/// setter for it.
fn set_hop_limit(s: &UdpSocket, hops: u32) -> Res<()> {
    use std::os::fd::AsRawFd;
    let v = hops as libc::c_int;
    // SAFETY: `v` is a valid c_int for this option, the fd is open.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!(
            "IPV6_UNICAST_HOPS: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `IP_RECVERR` (`IPV6_RECVERR`): ICMP errors are queued with their details
/// (`--icmp-detail 1`).
fn set_recverr(s: &UdpSocket, addr: SocketAddr) -> Res<()> {
    use std::os::fd::AsRawFd;
    let (level, opt) = match addr {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_RECVERR),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
    };
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int for this option, the fd is open.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!("IP_RECVERR: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Reads one entry of the socket's error queue and describes it:
/// `icmp-error errno=E origin=O type=T code=C offender=IP quoted=N`, where
/// the offender is the source address of the ICMP packet (the outer
/// header) and `quoted` the length of the payload the ICMP error carried.
fn read_icmp_error(s: &UdpSocket) -> Res<String> {
    use std::os::fd::AsRawFd;
    let mut data = [0u8; 2048];
    // u64 words: aligned for cmsghdr.
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive
    // the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes valid buffers.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_ERRQUEUE) };
    if n < 0 {
        return Err(format!("MSG_ERRQUEUE: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `msg` was filled by recvmsg; the CMSG macros walk its control
    // buffer within `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (lvl, ty) = ((*c).cmsg_level, (*c).cmsg_type);
            if (lvl == libc::IPPROTO_IP && ty == libc::IP_RECVERR)
                || (lvl == libc::IPPROTO_IPV6 && ty == libc::IPV6_RECVERR)
            {
                let ee = libc::CMSG_DATA(c) as *const libc::sock_extended_err;
                let e = std::ptr::read_unaligned(ee);
                let off = libc::SO_EE_OFFENDER(ee);
                let offender = match i32::from((*off).sa_family) {
                    libc::AF_INET => {
                        let sa = std::ptr::read_unaligned(off as *const libc::sockaddr_in);
                        IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()).to_string()
                    }
                    libc::AF_INET6 => {
                        let sa = std::ptr::read_unaligned(off as *const libc::sockaddr_in6);
                        IpAddr::from(sa.sin6_addr.s6_addr).to_string()
                    }
                    _ => "none".to_string(),
                };
                return Ok(format!(
                    "icmp-error errno={} origin={} type={} code={} offender={offender} quoted={n} info={}",
                    e.ee_errno, e.ee_origin, e.ee_type, e.ee_code, e.ee_info
                ));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Err("no IP_RECVERR control message".into())
}

fn bulk_get(args: &Args) -> Res<()> {
    let addr = args.addr()?;
    let bytes = args.num("bytes", None)?;
    let rate = args.num("rate", Some(0))?;
    let timeout = Duration::from_millis(args.num("timeout-ms", Some(30_000))?);
    let deadline = Instant::now() + timeout;
    let bind = args.bind_ip()?;
    // `--src-port P`: from that port (a test that must know each
    // transfer's 5-tuple, e.g. to find it in a host's connection table).
    let sport = u16::try_from(args.num("src-port", Some(0))?).map_err(|e| e.to_string())?;
    let s = if bind.is_unspecified() && sport == 0 {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    } else {
        connect_from(bind, sport, addr)
    }
    .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    w.write_all(format!("SEND {bytes} {rate}\n").as_bytes())
        .map_err(|e| format!("send request: {e}"))?;
    // `--poke-ms N`: also send one byte every N ms while receiving (the
    // server ignores them), like a client with application heartbeats, so
    // the client keeps sending segments through the LB.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop_poking = StopOnDrop(done.clone());
    if let Some(ms) = args.get("poke-ms") {
        let every = Duration::from_millis(ms.parse().map_err(|e| format!("--poke-ms {ms}: {e}"))?);
        let done = done.clone();
        thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                thread::sleep(every);
                if w.write_all(b".").is_err() {
                    break;
                }
            }
        });
    }
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

/// Sets the flag when dropped (stops the poking thread on every return).
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `connect` from a chosen source address (std has no bind-before-connect).
fn connect_from(bind: IpAddr, sport: u16, addr: SocketAddr) -> std::io::Result<TcpStream> {
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
    let src = sin(src, sport);
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

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn udp_stream(args: &Args) -> Res<()> {
    let addr = args.addr()?;
    let count = args.num("count", None)?;
    let interval = Duration::from_millis(args.num("interval-ms", Some(200))?.max(10));
    let s = UdpSocket::bind((args.bind_ip()?, 0)).map_err(|e| format!("bind: {e}"))?;
    s.connect(addr)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    let mut out = std::io::stdout();
    for i in 0..count {
        let tick = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(w) = tick.checked_duration_since(Instant::now()) {
            thread::sleep(w);
        }
        let line = match s.send(format!("query {i}").as_bytes()) {
            Err(e) => format!("error send: {e}"),
            Ok(_) => {
                // Wait for the reply until shortly before the next tick.
                let wait = interval.mul_f32(0.9).max(Duration::from_millis(5));
                s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
                match s.recv(&mut buf) {
                    Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        "timeout".to_string()
                    }
                    Err(e) => format!("error {e}"),
                }
            }
        };
        let _ = writeln!(out, "{} {i} {line}", unix_ms());
        let _ = out.flush();
    }
    Ok(())
}

/// CRC32c (Castagnoli), as SCTP uses it (RFC 9260 appendix A): reflected,
/// initial value and final xor all ones.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The SCTP checksum of a packet (common header + chunks), computed with
/// the checksum field as zero. It is stored in the packet in little-endian
/// byte order (as Linux and Wireshark do).
fn sctp_checksum(pkt: &[u8]) -> u32 {
    let mut copy = pkt.to_vec();
    copy[8..12].fill(0);
    crc32c(&copy)
}

/// An SCTP packet holding one INIT chunk, with a valid checksum.
fn sctp_init(src_port: u16, dst_port: u16, tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, below
    p.push(1); // chunk type INIT
    p.push(0); // flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&tag.to_be_bytes()); // initiate tag
    p.extend_from_slice(&65_536u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&10u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&10u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    let crc = sctp_checksum(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

const IPPROTO_SCTP: libc::c_int = 132;

fn sin(ip: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Owns a raw file descriptor and closes it on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the fd was returned by socket(2) and is owned here only.
        unsafe { libc::close(self.0) };
    }
}

fn sctp_send(args: &Args) -> Res<()> {
    let SocketAddr::V4(dst) = args.addr()? else {
        return Err("sctp-send supports IPv4 only".into());
    };
    let count = args.num("count", Some(1))?;
    let base = args.num("src-port", Some(40_000))?;
    // A raw IP socket: the kernel writes the IP header (protocol 132) and
    // routes the packet; no SCTP stack is needed for that.
    // SAFETY: plain socket(2) call; the result is checked and owned by `Fd`.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            IPPROTO_SCTP,
        )
    };
    if fd < 0 {
        return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
    }
    let fd = Fd(fd);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    if let Some(b) = args.get("bind") {
        let ip: std::net::Ipv4Addr = b.parse().map_err(|e| format!("--bind {b}: {e}"))?;
        let src = sin(ip, 0);
        // SAFETY: `src` is a valid sockaddr_in of `len` bytes.
        if unsafe { libc::bind(fd.0, (&src as *const libc::sockaddr_in).cast(), len) } != 0 {
            return Err(format!("bind {ip}: {}", std::io::Error::last_os_error()));
        }
    }
    let to = sin(*dst.ip(), 0);
    for k in 0..count {
        let sport = u16::try_from(base + k).map_err(|_| "source port out of range")?;
        let pkt = sctp_init(sport, dst.port(), 0x5151_0000 | u32::from(sport));
        // SAFETY: `pkt` and `to` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.0,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                len,
            )
        };
        if n < 0 {
            return Err(format!("sendto: {}", std::io::Error::last_os_error()));
        }
        println!("sent INIT sport={sport} dport={}", dst.port());
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The Internet checksum (RFC 1071) over `parts`, concatenated.
fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let bytes = parts.iter().flat_map(|p| p.iter().copied());
    let mut hi = None;
    for b in bytes {
        match hi.take() {
            None => hi = Some(b),
            Some(h) => sum += u32::from(u16::from_be_bytes([h, b])),
        }
    }
    if let Some(h) = hi {
        sum += u32::from(h) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet holding a bare TCP SYN, checksums filled in.
fn syn_packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = inet_checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let pseudo = [&src[..], &dst[..], &[0, 6, 0, 20]].concat();
    let c = inet_checksum(&[&pseudo, &p[20..]]);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

fn syn_flood(args: &Args) -> Res<()> {
    let SocketAddr::V4(dst) = args.addr()? else {
        return Err("syn-flood supports IPv4 only".into());
    };
    let base: std::net::Ipv4Addr = args
        .get("src-base")
        .ok_or("--src-base is required")?
        .parse()
        .map_err(|e| format!("--src-base: {e}"))?;
    let sources = args.num("sources", None)?.max(1);
    let count = args.num("count", None)?;
    let seconds: f64 = args
        .get("seconds")
        .ok_or("--seconds is required")?
        .parse()
        .map_err(|e| format!("--seconds: {e}"))?;
    // SAFETY: plain socket(2) call; the result is checked and owned by `Fd`.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
    }
    let fd = Fd(fd);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let to = sin(*dst.ip(), 0);
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds * 2.0 + 1.0);
    let mut sent = 0u64;
    for k in 0..count {
        let due = Duration::from_secs_f64(seconds * k as f64 / count.max(1) as f64);
        let now = start.elapsed();
        if now > limit {
            break;
        }
        if due > now {
            thread::sleep(due - now);
        }
        let src = (u32::from(base) + (k % sources) as u32).to_be_bytes();
        let sport = 1024 + (k / sources) as u16;
        let seq = (k as u32).wrapping_mul(2_654_435_761);
        let pkt = syn_packet(src, dst.ip().octets(), sport, dst.port(), seq);
        // SAFETY: `pkt` and `to` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.0,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                thread::sleep(Duration::from_micros(200));
                continue;
            }
            return Err(format!("sendto: {e}"));
        }
        sent += 1;
    }
    println!("sent {sent} secs {:.3}", start.elapsed().as_secs_f64());
    Ok(())
}

fn sctp_capture(args: &Args) -> Res<()> {
    let ms = args.num("ms", None)?;
    let eth_p_ip = (libc::ETH_P_IP as u16).to_be();
    // SOCK_DGRAM: frames arrive without their link-layer header.
    // SAFETY: plain socket(2) call; the result is checked and owned by `Fd`.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::c_int::from(eth_p_ip),
        )
    };
    if fd < 0 {
        return Err(format!(
            "packet socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    let fd = Fd(fd);
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: `tv` is a valid timeval for SO_RCVTIMEO.
    unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    println!("ready");
    std::io::stdout().flush().ok();
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        // SAFETY: an all-zero sockaddr_ll is valid; recvfrom fills it.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                fd.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut flen,
            )
        };
        if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        if let Some(line) = describe_sctp(&buf[..n as usize]) {
            println!("{line}");
            std::io::stdout().flush().ok();
        }
    }
    Ok(())
}

fn from_hex(h: &str) -> Res<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return Err(format!("odd-length hex: {h}"));
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|e| format!("hex {h}: {e}")))
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An `AF_PACKET` raw socket bound to `ifname` (all EtherTypes), with a
/// 100 ms receive timeout.
fn packet_socket(ifname: &str) -> Res<(Fd, libc::sockaddr_ll)> {
    let name = std::ffi::CString::new(ifname).map_err(|e| format!("{ifname}: {e}"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(format!("{ifname}: no such interface"));
    }
    let eth_p_all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked and owned by `Fd`.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(eth_p_all),
        )
    };
    if fd < 0 {
        return Err(format!(
            "packet socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    let fd = Fd(fd);
    // SAFETY: an all-zero sockaddr_ll is valid; the fields follow.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = eth_p_all;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the length given.
    let rc = unsafe {
        libc::bind(
            fd.0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!(
            "bind {ifname}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: `tv` is a valid timeval for SO_RCVTIMEO.
    unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    Ok((fd, sll))
}

fn frame_send(args: &Args) -> Res<()> {
    let ifname = args.get("iface").ok_or("--iface is required")?;
    let frames = args
        .positional
        .iter()
        .map(|h| from_hex(h))
        .collect::<Res<Vec<_>>>()?;
    if frames.is_empty() {
        return Err("no frames given".into());
    }
    let (fd, sll) = packet_socket(ifname)?;
    for f in &frames {
        // SAFETY: `f` and `sll` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.0,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 || n as usize != f.len() {
            return Err(format!(
                "sendto {ifname} ({} bytes): {}",
                f.len(),
                std::io::Error::last_os_error()
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
    println!("sent {}", frames.len());
    Ok(())
}

fn frame_capture(args: &Args) -> Res<()> {
    let ifname = args.get("iface").ok_or("--iface is required")?;
    let ms = args.num("ms", None)?;
    let marker = from_hex(args.get("marker").ok_or("--marker is required")?)?;
    let (fd, _) = packet_socket(ifname)?;
    println!("ready");
    std::io::stdout().flush().ok();
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut buf = [0u8; 9216];
    while Instant::now() < deadline {
        // SAFETY: an all-zero sockaddr_ll is valid; recvfrom fills it.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                fd.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut flen,
            )
        };
        if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let f = &buf[..n as usize];
        if marker.is_empty() || f.windows(marker.len()).any(|w| w == marker.as_slice()) {
            println!("frame {}", to_hex(f));
            std::io::stdout().flush().ok();
        }
    }
    Ok(())
}

/// `sctp src=.. dst=.. chunk=.. crc=ok|bad` for an IPv4 packet carrying SCTP.
fn describe_sctp(ip: &[u8]) -> Option<String> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 132 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let sctp = ip.get(ihl..total)?;
    if sctp.len() < 12 {
        return None;
    }
    let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let sport = u16::from_be_bytes([sctp[0], sctp[1]]);
    let dport = u16::from_be_bytes([sctp[2], sctp[3]]);
    let stored = u32::from_le_bytes([sctp[8], sctp[9], sctp[10], sctp[11]]);
    let ok = stored == sctp_checksum(sctp);
    let chunk = sctp.get(12).map_or(-1, |&t| i32::from(t));
    Some(format!(
        "sctp src={src}:{sport} dst={dst}:{dport} chunk={chunk} crc={}",
        if ok { "ok" } else { "bad" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(from_hex("00ff10").unwrap(), vec![0, 0xff, 0x10]);
        assert_eq!(to_hex(&[0, 0xff, 0x10]), "00ff10");
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
    }

    #[test]
    fn crafted_syn_checksums_verify() {
        let p = syn_packet([198, 18, 64, 1], [198, 18, 100, 10], 1024, 80, 7);
        assert_eq!(inet_checksum(&[&p[..20]]), 0, "IPv4 header");
        let pseudo = [&p[12..20], &[0, 6, 0, 20][..]].concat();
        assert_eq!(inet_checksum(&[&pseudo, &p[20..]]), 0, "TCP");
        assert_eq!(p[33], 0x02);
    }

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn crafted_init_verifies() {
        let p = sctp_init(40_000, 7000, 1);
        assert_eq!(p.len(), 32);
        let stored = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
        assert_eq!(stored, sctp_checksum(&p));
        let mut ip = vec![0x45, 0, 0, 52, 0, 0, 0, 0, 64, 132, 0, 0];
        ip.extend_from_slice(&[198, 18, 0, 2, 198, 18, 1, 11]);
        ip.extend_from_slice(&p);
        let line = describe_sctp(&ip).expect("parsed");
        assert_eq!(
            line,
            "sctp src=198.18.0.2:40000 dst=198.18.1.11:7000 chunk=1 crc=ok"
        );
        ip[20 + 2] ^= 1;
        assert!(describe_sctp(&ip).expect("parsed").ends_with("crc=bad"));
    }
}
