//! The backend side: a UDP sink and accept-and-close TCP servers.
//!
//! The UDP sink binds the service's target port and drains it with
//! `recvmmsg(2)`; it exists so that datagrams are delivered (not answered
//! with ICMP port unreachable). What a backend *received* is read from its
//! namespace's `/proc/net/snmp` by the orchestrator ([`udp_counters`]):
//! `InDatagrams + RcvbufErrors`, i.e. every datagram that reached the
//! backend's UDP layer with a valid checksum, whether or not the sink kept
//! up. A datagram a broken NAT left with a bad checksum lands in
//! `InCsumErrors` instead, and so counts as lost.
//!
//! The TCP servers accept and close at once (the server closes first, so
//! TIME_WAIT stays on the backend and the client's ports are free again
//! immediately).

use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::{run_in, Res};

/// Serves until `seconds` have passed (the process is normally stopped
/// earlier by the orchestrator).
pub fn run(udp_port: u16, tcp_ports: &[u16], seconds: f64) -> Res<()> {
    let udp = UdpSocket::bind(("0.0.0.0", udp_port)).map_err(|e| format!("udp bind: {e}"))?;
    let size: libc::c_int = 32 << 20;
    // SAFETY: setsockopt with a valid c_int of the stated size on our socket.
    unsafe {
        libc::setsockopt(
            udp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    thread::spawn(move || drain(&udp));
    for &p in tcp_ports {
        let l = TcpListener::bind(("0.0.0.0", p)).map_err(|e| format!("tcp bind {p}: {e}"))?;
        // std listens with a backlog of 128; a second listen(2) raises it.
        // SAFETY: listen(2) on a socket we own.
        unsafe {
            libc::listen(l.as_raw_fd(), 4096);
        }
        thread::spawn(move || loop {
            match l.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        });
    }
    println!("ready");
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn drain(s: &UdpSocket) {
    const N: usize = 64;
    let mut bufs = vec![[0u8; 128]; N];
    // SAFETY: iovec is a plain C struct; all-zero is a valid value (the
    // pointers are set before any use).
    let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; N];
    // SAFETY: as above, for mmsghdr.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; N];
    for i in 0..N {
        iov[i].iov_base = bufs[i].as_mut_ptr().cast();
        iov[i].iov_len = bufs[i].len();
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: `msgs` point at live iovecs over `bufs`, which outlive the
        // call; a null timeout is allowed (SO_RCVTIMEO bounds the wait).
        let n = unsafe {
            libc::recvmmsg(
                s.as_raw_fd(),
                msgs.as_mut_ptr(),
                N as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            thread::yield_now();
        }
    }
}

/// UDP counters of a namespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct UdpCounters {
    /// Delivered to a socket.
    pub in_datagrams: u64,
    /// Reached the socket but its buffer was full.
    pub rcvbuf_errors: u64,
    /// Bad checksum.
    pub csum_errors: u64,
    /// No socket on the port.
    pub no_ports: u64,
}

impl UdpCounters {
    /// Datagrams that reached the UDP layer intact.
    pub fn received(&self) -> u64 {
        self.in_datagrams + self.rcvbuf_errors
    }

    /// Difference `self - before`.
    pub fn since(&self, before: &UdpCounters) -> UdpCounters {
        UdpCounters {
            in_datagrams: self.in_datagrams.saturating_sub(before.in_datagrams),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            csum_errors: self.csum_errors.saturating_sub(before.csum_errors),
            no_ports: self.no_ports.saturating_sub(before.no_ports),
        }
    }
}

/// Reads `/proc/net/snmp`'s `Udp:` lines in namespace `ns`.
pub fn udp_counters(ns: &str) -> Res<UdpCounters> {
    parse_snmp(&run_in(ns, &["cat", "/proc/net/snmp"])?)
}

fn parse_snmp(text: &str) -> Res<UdpCounters> {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(vals)) = (lines.next(), lines.next()) else {
        return Err("no Udp: lines in /proc/net/snmp".into());
    };
    let mut c = UdpCounters::default();
    for (n, v) in names
        .split_whitespace()
        .zip(vals.split_whitespace())
        .skip(1)
    {
        let v: u64 = v.parse().unwrap_or(0);
        match n {
            "InDatagrams" => c.in_datagrams = v,
            "RcvbufErrors" => c.rcvbuf_errors = v,
            "InCsumErrors" => c.csum_errors = v,
            "NoPorts" => c.no_ports = v,
            _ => {}
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_snmp() {
        let t = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                 Udp: 100 2 5 0 5 0 3 0 0\n";
        let c = parse_snmp(t).unwrap();
        assert_eq!(c.received(), 105);
        assert_eq!(c.csum_errors, 3);
        assert_eq!(c.no_ports, 2);
    }
}
