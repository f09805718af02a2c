//! The AF_XDP port: one worker's sockets over one shared UMEM (xsk-rs).
//!
//! Like s2n-quic-xdp's `umem`/`ring`/`socket`, this holds the packet path's
//! `unsafe`, kept small: the UMEM, the four rings per socket, and
//! `poll(2)`. (The other `unsafe` of the workspace is outside the packet
//! I/O: the prefetch and huge-page hints in `prefetch.rs` and `thp.rs`, two
//! libc calls in `steer.rs`, and a few libc calls in the control plane;
//! the README lists them.) Every socket of a worker
//! (one per interface × queue it owns) binds to the same UMEM
//! (`XDP_SHARED_UMEM`, one fill and one completion ring per socket), so a
//! frame received on one interface is rewritten in place and sent on
//! another without a copy in user space (on veth the kernel still copies:
//! copy mode).
//!
//! Frame ownership is the invariant every `unsafe` block relies on: each
//! descriptor is, at any moment, in exactly one of the free list, a fill
//! ring, an rx ring, the worker's hands (between [`Port::recv`] and
//! [`Port::send`]/[`Port::release`]), a pending-tx list, a tx ring or a
//! completion ring. The type system keeps the worker's part of it: the
//! worker holds an [`XskFrame`], which only [`Port::recv`] makes, which is
//! neither `Copy` nor `Clone`, and which `send` and `release` consume, so
//! safe code cannot hand one descriptor back twice.
//!
//! The XDP program is ours ([`crate::steer`]); sockets are created with
//! `XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD` so libxdp loads nothing, and their
//! fds are registered in our XSKMAP by the caller.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::port::{Port, RxFrame};

/// Size of one UMEM frame, in bytes.
const FRAME_SIZE: u32 = 2048;

/// Whether the huge-page counters in `meminfo` (the text of
/// `/proc/meminfo`) leave enough free huge pages for a UMEM of `bytes`:
/// `HugePages_Free - HugePages_Rsvd` (free pages not already promised to
/// another mapping) at least `bytes` rounded up to `Hugepagesize`. False
/// when a field is missing or unreadable (no hugetlbfs support).
pub fn hugepages_fit(meminfo: &str, bytes: u64) -> bool {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let (Some(free), Some(size_kb)) = (field("HugePages_Free"), field("Hugepagesize")) else {
        return false;
    };
    let rsvd = field("HugePages_Rsvd").unwrap_or(0);
    let page = size_kb.saturating_mul(1024);
    if page == 0 {
        return false;
    }
    let need = bytes.div_ceil(page);
    need > 0 && free.saturating_sub(rsvd) >= need
}

/// Sizes of the UMEM and rings.
#[derive(Clone, Copy, Debug)]
pub struct XskConfig {
    /// Size of each ring (rx, tx, fill, completion); a power of two.
    pub ring_size: u32,
    /// UMEM frames per socket (the UMEM holds `sockets × this`).
    pub frames_per_socket: u32,
    /// Try to back the UMEM with huge pages (`MAP_HUGETLB`): used when
    /// `/proc/meminfo` shows enough free ones (the operator reserved them,
    /// e.g. `vm.nr_hugepages`) and the mapping succeeds; otherwise the UMEM
    /// falls back to normal pages. [`XskPort::hugepages`] tells which.
    pub hugepages: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            ring_size: 1024,
            frames_per_socket: 2048,
            hugepages: true,
        }
    }
}

/// One queue this port binds to.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    /// Index of the interface (as in `--iface` order).
    pub port: u8,
    /// Interface name.
    pub ifname: String,
    /// Queue id on that interface.
    pub queue: u32,
}

/// Why the AF_XDP port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// Invalid sizes.
    #[error("invalid AF_XDP sizes: {0}")]
    Config(String),
    /// The UMEM could not be created.
    #[error("creating the UMEM ({frames} frames): {source}")]
    Umem {
        /// Frames asked for.
        frames: u32,
        /// Cause.
        source: xsk_rs::umem::UmemCreateError,
    },
    /// A socket could not be created or bound.
    #[error("binding an AF_XDP socket to {ifname} queue {queue}: {source} (needs root, and the queue must exist: see `ethtool -l {ifname}`)")]
    Socket {
        /// Interface.
        ifname: String,
        /// Queue id.
        queue: u32,
        /// Cause.
        source: xsk_rs::socket::SocketCreateError,
    },
    /// A queue was bound twice.
    #[error("{ifname} queue {queue} is listed twice")]
    Duplicate {
        /// Interface.
        ifname: String,
        /// Queue id.
        queue: u32,
    },
}

/// A received UMEM frame, owned by the worker until it is sent or released
/// (move-only: see the module doc). Dropping it instead leaks the frame
/// until the port is dropped.
#[derive(Debug)]
#[must_use = "a frame must be sent or released, or it leaks from the UMEM"]
pub struct XskFrame(FrameDesc);

struct Sock {
    port: u8,
    queue: u32,
    rx: RxQueue,
    tx: TxQueue,
    fq: FillQueue,
    cq: CompQueue,
    fd: RawFd,
    /// Frames queued by [`Port::send`] during this burst.
    pending: Vec<FrameDesc>,
    /// Frames in the tx ring not yet completed.
    in_flight: u32,
}

/// One worker's AF_XDP sockets over a shared UMEM.
pub struct XskPort {
    umem: Umem,
    socks: Vec<Sock>,
    /// Interface index → the socket used to transmit on it.
    tx_sock: Vec<Option<usize>>,
    free: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    next_rx: usize,
    pollfds: Vec<libc::pollfd>,
    tx_dropped: u64,
    ring_size: u32,
    /// Whether the UMEM is backed by huge pages.
    hugepages: bool,
}

impl std::fmt::Debug for XskPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskPort")
            .field("sockets", &self.sockets().collect::<Vec<_>>())
            .field("free", &self.free.len())
            .field("hugepages", &self.hugepages)
            .finish()
    }
}

impl XskPort {
    /// Creates the UMEM and binds one socket per queue, all sharing it, and
    /// fills every fill ring.
    ///
    /// # Errors
    /// [`XskError`] naming the interface and queue that failed.
    pub fn open(queues: &[QueueSpec], cfg: &XskConfig) -> Result<XskPort, XskError> {
        for (i, q) in queues.iter().enumerate() {
            if queues[..i]
                .iter()
                .any(|o| o.ifname == q.ifname && o.queue == q.queue)
            {
                return Err(XskError::Duplicate {
                    ifname: q.ifname.clone(),
                    queue: q.queue,
                });
            }
        }
        let ring = QueueSize::new(cfg.ring_size).map_err(|e| XskError::Config(e.to_string()))?;
        let frame_size = FrameSize::new(FRAME_SIZE).map_err(|e| XskError::Config(e.to_string()))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| XskError::Config(e.to_string()))?;
        let frames = cfg
            .frames_per_socket
            .checked_mul(queues.len().max(1) as u32)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| XskError::Config("frame count overflows or is zero".into()))?;
        let bytes = u64::from(frames.get()) * u64::from(FRAME_SIZE);
        let try_huge = cfg.hugepages
            && std::fs::read_to_string("/proc/meminfo")
                .map(|m| hugepages_fit(&m, bytes))
                .unwrap_or(false);
        let huge = if try_huge {
            match Umem::new(umem_cfg, frames, true) {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::info!(error = %e, bytes, "huge-page UMEM failed, using normal pages");
                    None
                }
            }
        } else {
            if cfg.hugepages {
                tracing::info!(
                    bytes,
                    "not enough free huge pages for the UMEM (HugePages_Free in /proc/meminfo), using normal pages"
                );
            }
            None
        };
        let hugepages = huge.is_some();
        let (umem, descs) = match huge {
            Some(u) => u,
            None => Umem::new(umem_cfg, frames, false).map_err(|source| XskError::Umem {
                frames: frames.get(),
                source,
            })?,
        };
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
            .build();

        let mut socks = Vec::with_capacity(queues.len());
        let max_port = queues
            .iter()
            .map(|q| q.port as usize + 1)
            .max()
            .unwrap_or(0);
        let mut tx_sock = vec![None; max_port];
        for q in queues {
            let iface: Interface = std::ffi::CString::new(q.ifname.as_str())
                .map(Interface::new)
                .map_err(|_| {
                    XskError::Config(format!("interface name {:?} has a NUL byte", q.ifname))
                })?;
            // SAFETY: INHIBIT_PROG_LOAD is set on every socket (the contract
            // for binding a shared UMEM), and each (interface, queue) pair is
            // bound once (checked above), so xsk-rs hands out fresh fill and
            // completion rings for it.
            let (tx, rx, fqcq) =
                unsafe { Socket::new(sock_cfg, &umem, &iface, q.queue) }.map_err(|source| {
                    XskError::Socket {
                        ifname: q.ifname.clone(),
                        queue: q.queue,
                        source,
                    }
                })?;
            let Some((fq, cq)) = fqcq else {
                return Err(XskError::Duplicate {
                    ifname: q.ifname.clone(),
                    queue: q.queue,
                });
            };
            let fd = rx.fd().as_raw_fd();
            if tx_sock[q.port as usize].is_none() {
                tx_sock[q.port as usize] = Some(socks.len());
            }
            socks.push(Sock {
                port: q.port,
                queue: q.queue,
                rx,
                tx,
                fq,
                cq,
                fd,
                pending: Vec::with_capacity(cfg.ring_size as usize),
                in_flight: 0,
            });
        }
        let pollfds = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut port = XskPort {
            umem,
            socks,
            tx_sock,
            free: descs,
            scratch: vec![FrameDesc::default(); cfg.ring_size as usize],
            next_rx: 0,
            pollfds,
            tx_dropped: 0,
            ring_size: cfg.ring_size,
            hugepages,
        };
        port.refill();
        Ok(port)
    }

    /// Whether the UMEM ended up backed by huge pages (asked for by
    /// [`XskConfig::hugepages`] and available), or by normal pages.
    pub fn hugepages(&self) -> bool {
        self.hugepages
    }

    /// The bound sockets: interface index, queue, fd (to register in the
    /// XDP program's XSKMAP).
    pub fn sockets(&self) -> impl Iterator<Item = (u8, u32, RawFd)> + '_ {
        self.socks.iter().map(|s| (s.port, s.queue, s.fd))
    }

    /// Gives free frames to every fill ring, as many as fit.
    fn refill(&mut self) {
        for s in &mut self.socks {
            if self.free.is_empty() {
                break;
            }
            let want = s.fq.nb_free(self.ring_size) as usize;
            let n = want.min(self.free.len());
            if n == 0 {
                continue;
            }
            let start = self.free.len() - n;
            // SAFETY: these descriptors come from the free list, so no ring
            // and no caller holds them; they belong to this UMEM. `nb_free`
            // said `n` slots are free, so produce() takes all of them.
            let done = unsafe { s.fq.produce(&self.free[start..]) };
            self.free.truncate(self.free.len() - done);
            if done > 0 && s.fq.needs_wakeup() {
                let _ = s.fq.wakeup(s.rx.fd_mut(), 0);
            }
        }
    }
}

impl Port for XskPort {
    type Frame = XskFrame;

    fn recv(&mut self, out: &mut Vec<RxFrame<XskFrame>>, max: usize) -> usize {
        let nsocks = self.socks.len();
        let mut total = 0;
        for k in 0..nsocks {
            if total >= max {
                break;
            }
            let i = (self.next_rx + k) % nsocks;
            let s = &mut self.socks[i];
            let room = (max - total).min(self.scratch.len());
            // SAFETY: the rx ring belongs to a socket of this UMEM; consume()
            // only writes descriptors into `scratch`.
            let n = unsafe { s.rx.consume(&mut self.scratch[..room]) };
            // The descriptors leave the ring here, once each: the only
            // place that makes an `XskFrame`.
            out.extend(self.scratch[..n].iter().map(|&d| RxFrame {
                frame: XskFrame(d),
                port: s.port,
            }));
            total += n;
        }
        self.next_rx = (self.next_rx + 1) % nsocks.max(1);
        total
    }

    #[inline]
    fn with_frame<R>(
        &mut self,
        frame: &mut XskFrame,
        f: impl FnOnce(&mut [u8], &mut usize) -> R,
    ) -> R {
        // SAFETY: an `XskFrame` is made only by recv() from a descriptor
        // that came out of an rx ring of this UMEM, and it is held by the
        // worker alone (move-only; ownership invariant in the module doc),
        // so no other reference to its bytes exists, in user space or the
        // kernel.
        let mut data = unsafe { self.umem.data_mut(&mut frame.0) };
        let mut len = data.contents().len();
        // Open the whole data segment to the closure, then set the length
        // it leaves (the cursor clamps it to the segment).
        let cap = data.cursor().buf_len();
        data.cursor().set_pos(cap);
        let r = f(data.contents_mut(), &mut len);
        data.cursor().set_pos(len);
        r
    }

    #[inline]
    fn send(&mut self, port: u8, frame: XskFrame) {
        match self.tx_sock.get(port as usize).copied().flatten() {
            Some(i) if self.socks[i].pending.len() < self.socks[i].pending.capacity() => {
                self.socks[i].pending.push(frame.0)
            }
            _ => {
                self.tx_dropped += 1;
                self.free.push(frame.0);
            }
        }
    }

    #[inline]
    fn release(&mut self, frame: XskFrame) {
        self.free.push(frame.0);
    }

    /// Per socket: moves the burst's pending frames to the tx ring (no
    /// syscall), then reaps the completion ring and, while frames are still
    /// in flight, kicks TX with `sendto()` up to 8 times (copy-mode TX runs
    /// inside `sendto()` and sends a small batch per call); then refills
    /// every fill ring, with one `poll()` per fill ring that asks for a
    /// wakeup (`XDP_USE_NEED_WAKEUP`). So a burst costs no syscall on a
    /// socket with nothing in flight, and at most 9 on one that has.
    fn flush(&mut self) {
        for s in &mut self.socks {
            if !s.pending.is_empty() {
                let room = s.tx.nb_free(s.pending.len() as u32) as usize;
                let n = room.min(s.pending.len());
                // SAFETY: pending frames were received from this UMEM and
                // handed to send(); nothing else holds them. `nb_free` said
                // `n` slots are free, so produce() takes all `n`.
                let done = unsafe { s.tx.produce(&s.pending[..n]) };
                s.in_flight += done as u32;
                for d in s.pending.drain(..).skip(done) {
                    self.tx_dropped += 1;
                    self.free.push(d);
                }
            }
            // Copy-mode TX runs inside sendto() and sends at most a small
            // batch per call, so kick until the ring is drained (bounded).
            let mut kicks = 0;
            loop {
                // SAFETY: completed descriptors belong to this UMEM; the
                // kernel is done with them, so they return to the free list.
                let c = unsafe { s.cq.consume(&mut self.scratch) };
                self.free.extend_from_slice(&self.scratch[..c]);
                s.in_flight = s.in_flight.saturating_sub(c as u32);
                if s.in_flight == 0 || kicks >= 8 {
                    break;
                }
                if s.tx.wakeup().is_err() {
                    break;
                }
                kicks += 1;
            }
        }
        self.refill();
    }

    fn wait(&mut self, timeout_ms: i32) {
        // SAFETY: `pollfds` is a live, correctly sized array of pollfd
        // structs whose fds stay open as long as `self`.
        unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                timeout_ms,
            );
        }
    }

    fn watch(&mut self, fd: std::os::fd::RawFd) {
        self.pollfds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }

    fn tx_dropped(&self) -> u64 {
        self.tx_dropped
    }
}

impl XskPort {
    /// Kernel-side statistics of each socket (drops for a full rx ring or an
    /// empty fill ring, invalid descriptors).
    pub fn kernel_stats(&self) -> Vec<(u8, u32, io::Result<xsk_rs::socket::XdpStatistics>)> {
        self.socks
            .iter()
            .map(|s| (s.port, s.queue, s.rx.fd().xdp_statistics()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meminfo(free: u64, rsvd: u64, size_kb: u64) -> String {
        format!(
            "MemTotal:       24000000 kB\nAnonHugePages:         0 kB\n\
             HugePages_Total:     {free}\nHugePages_Free:      {free}\n\
             HugePages_Rsvd:      {rsvd}\nHugePages_Surp:        0\n\
             Hugepagesize:       {size_kb} kB\nHugetlb:               0 kB\n"
        )
    }

    #[test]
    fn hugepages_fit_decides_from_meminfo() {
        const MB: u64 = 1 << 20;
        // None reserved (the default): fall back.
        assert!(!hugepages_fit(&meminfo(0, 0, 2048), 4 * MB));
        // Exactly enough 2 MiB pages, and one short.
        assert!(hugepages_fit(&meminfo(2, 0, 2048), 4 * MB));
        assert!(!hugepages_fit(&meminfo(1, 0, 2048), 4 * MB));
        // A partial page counts as a whole one.
        assert!(!hugepages_fit(&meminfo(2, 0, 2048), 4 * MB + 1));
        assert!(hugepages_fit(&meminfo(3, 0, 2048), 4 * MB + 1));
        // Pages reserved by another mapping are not available.
        assert!(!hugepages_fit(&meminfo(4, 3, 2048), 4 * MB));
        assert!(hugepages_fit(&meminfo(4, 2, 2048), 4 * MB));
        // 1 GiB pages.
        assert!(hugepages_fit(&meminfo(1, 0, 1 << 20), 8 * MB));
        // No hugetlb fields at all, empty text, zero size.
        assert!(!hugepages_fit("MemTotal: 1 kB\n", 4 * MB));
        assert!(!hugepages_fit("", 4 * MB));
        assert!(!hugepages_fit(&meminfo(8, 0, 2048), 0));
        // The default config's UMEM for two sockets needs 4 pages of 2 MiB.
        let cfg = XskConfig::default();
        assert!(cfg.hugepages);
        let bytes = u64::from(cfg.frames_per_socket) * 2 * u64::from(FRAME_SIZE);
        assert!(hugepages_fit(&meminfo(4, 0, 2048), bytes));
        assert!(!hugepages_fit(&meminfo(3, 0, 2048), bytes));
    }

    #[test]
    fn hugepages_fit_on_this_host_does_not_panic() {
        if let Ok(m) = std::fs::read_to_string("/proc/meminfo") {
            let _ = hugepages_fit(&m, 4 << 20);
        }
    }
}
