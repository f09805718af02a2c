//! Connections per second: a real kernel TCP client opening and closing
//! connections to VIP:port for a bounded time.
//!
//! One thread keeps `concurrency` non-blocking connections in flight with
//! `poll(2)`. A connection counts when it completes the whole exchange the
//! load balancer has to carry: SYN, SYN-ACK, ACK, then the server's FIN
//! (accept-and-close), seen by the client as end of file, after which the
//! client closes too. Refusals, resets and connections not done within a
//! second are errors.

use std::time::{Duration, Instant};

use crate::sys::Res;

/// Result of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnResult {
    /// Connections completed.
    pub ok: u64,
    /// Connections that failed (refused, reset, unreachable).
    pub errors: u64,
    /// Connections that took more than the per-connection timeout.
    pub timeouts: u64,
    /// Seconds the run lasted.
    pub secs: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Free,
    Connecting,
    Open,
}

struct Slot {
    fd: libc::c_int,
    state: State,
    since: Instant,
}

fn close(fd: libc::c_int) {
    // SAFETY: closing a descriptor this module opened and still owns.
    unsafe {
        libc::close(fd);
    }
}

/// Opens and closes connections to `addr:port` for `seconds`.
pub fn run(addr: [u8; 4], port: u16, concurrency: usize, seconds: f64) -> Res<ConnResult> {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    let sin_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let per_conn = Duration::from_secs(1);
    let mut slots: Vec<Slot> = (0..concurrency.max(1))
        .map(|_| Slot {
            fd: -1,
            state: State::Free,
            since: Instant::now(),
        })
        .collect();
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(slots.len());
    let mut idx: Vec<usize> = Vec::with_capacity(slots.len());
    let mut r = ConnResult::default();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut buf = [0u8; 256];
    loop {
        let now = Instant::now();
        let opening = now < end;
        // Refill free slots while the run lasts.
        for s in slots.iter_mut().filter(|s| s.state == State::Free) {
            if !opening {
                break;
            }
            // SAFETY: plain socket(2).
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: `sin` is a valid sockaddr_in of `sin_len` bytes.
            let rc =
                unsafe { libc::connect(fd, (&sin as *const libc::sockaddr_in).cast(), sin_len) };
            let err = std::io::Error::last_os_error().raw_os_error();
            if rc == 0 || err == Some(libc::EINPROGRESS) {
                *s = Slot {
                    fd,
                    state: if rc == 0 {
                        State::Open
                    } else {
                        State::Connecting
                    },
                    since: now,
                };
            } else {
                close(fd);
                r.errors += 1;
                if err == Some(libc::EADDRNOTAVAIL) {
                    // Out of local ports: let some close first.
                    std::thread::sleep(Duration::from_millis(1));
                    break;
                }
            }
        }
        // Time out stuck connections.
        for s in slots.iter_mut().filter(|s| s.state != State::Free) {
            if now.duration_since(s.since) > per_conn {
                close(s.fd);
                s.state = State::Free;
                r.timeouts += 1;
            }
        }
        pfds.clear();
        idx.clear();
        for (i, s) in slots.iter().enumerate() {
            let events = match s.state {
                State::Free => continue,
                State::Connecting => libc::POLLOUT,
                State::Open => libc::POLLIN,
            };
            pfds.push(libc::pollfd {
                fd: s.fd,
                events,
                revents: 0,
            });
            idx.push(i);
        }
        if pfds.is_empty() {
            if opening {
                continue;
            }
            break;
        }
        if !opening && now > end + per_conn {
            break;
        }
        // SAFETY: `pfds` is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 10) };
        if n <= 0 {
            continue;
        }
        for (p, &i) in pfds.iter().zip(&idx) {
            if p.revents == 0 {
                continue;
            }
            let s = &mut slots[i];
            if s.state == State::Connecting {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: getsockopt writes one c_int into `err`.
                unsafe {
                    libc::getsockopt(
                        s.fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut err as *mut libc::c_int).cast(),
                        &mut len,
                    );
                }
                if err != 0 {
                    close(s.fd);
                    s.state = State::Free;
                    r.errors += 1;
                    continue;
                }
                s.state = State::Open;
                if p.revents & (libc::POLLIN | libc::POLLHUP) == 0 {
                    continue;
                }
            }
            // Open: wait for the server's FIN.
            // SAFETY: reading into a stack buffer of the given length.
            let got = unsafe { libc::read(s.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if got == 0 {
                r.ok += 1;
                close(s.fd);
                s.state = State::Free;
            } else if got < 0 {
                let e = std::io::Error::last_os_error().raw_os_error();
                if e != Some(libc::EAGAIN) {
                    r.errors += 1;
                    close(s.fd);
                    s.state = State::Free;
                }
            }
        }
    }
    for s in slots.iter().filter(|s| s.state != State::Free) {
        close(s.fd);
    }
    r.secs = start.elapsed().as_secs_f64().min(seconds.max(1e-9));
    Ok(r)
}
