//! The doorbell: an eventfd that the control thread rings after it
//! publishes a table, and that idle workers poll beside their sockets.
//!
//! An idle worker sleeps in `poll()` for up to 10 ms at a time, and only
//! loads a new table when it wakes. The control plane answers a write once
//! every worker has loaded the write's table, so without a doorbell every
//! write waited for the sleepers' timeout: about 5 ms on average and 10 ms
//! at worst, a floor under every change however small, and the whole cost
//! of a commit at a few thousand services. Ringing wakes every sleeper at
//! once (an eventfd is readable until read; all pollers see it).
//!
//! The counter is read back by each worker after it wakes ([`Doorbell::drain`]),
//! so that a ring does not keep later polls returning at once. A worker that
//! drains a ring meant for a table it then loads misses nothing: the ring
//! follows the table's store, and the worker loads the snapshot after the
//! drain.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An eventfd, non-blocking.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new doorbell.
    ///
    /// # Errors
    /// When the kernel refuses an eventfd (out of file descriptors).
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; the flags are valid.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by no one
        // else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Doorbell { fd })
    }

    /// Wakes every worker polling it.
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A
        // full counter (EAGAIN, after 2^64 - 2 rings unread) already wakes
        // pollers: the result is not needed.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    /// Reads the counter back to zero; whether it had been rung.
    pub fn drain(&self) -> bool {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; the fd is
        // non-blocking, so an unrung doorbell returns EAGAIN at once.
        let r = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::from_mut(&mut n).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        r == 8 && n > 0
    }

    /// The descriptor to poll for `POLLIN`.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(d: &Doorbell, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: d.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, timeout_ms) == 1 }
    }

    #[test]
    fn a_ring_wakes_a_poller_until_drained() {
        let d = Doorbell::new().unwrap();
        assert!(!readable(&d, 0), "quiet before a ring");
        assert!(!d.drain());
        d.ring();
        d.ring();
        assert!(readable(&d, 0));
        assert!(readable(&d, 0), "level-triggered: every poller sees it");
        assert!(d.drain());
        assert!(!readable(&d, 0), "drained");
        assert!(!d.drain());
    }

    #[test]
    fn a_ring_from_another_thread_ends_a_long_poll() {
        let d = std::sync::Arc::new(Doorbell::new().unwrap());
        let ringer = {
            let d = d.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                d.ring();
            })
        };
        // Without the ring this poll would sleep 10 s.
        assert!(readable(&d, 10_000));
        ringer.join().unwrap();
    }
}
