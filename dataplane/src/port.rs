//! The I/O boundary of a worker.
//!
//! A [`Port`] is everything one worker sends and receives on: one or more
//! interfaces (indexed like `--iface`), each possibly with several queues,
//! behind one set of frames. The worker loop ([`crate::worker`]) is generic
//! over it, so the AF_XDP port ([`crate::xsk::XskPort`]) and the in-memory
//! [`MemPort`] used by tests and benches run the very same code.
//!
//! Frames are handles (`Copy`, like an AF_XDP descriptor); their bytes are
//! reached through [`Port::with_frame`], which hands a closure the frame's
//! bytes so that no borrow of the port outlives the call.

use std::collections::VecDeque;

/// One received frame: its handle and the index of the interface it came in
/// on.
#[derive(Clone, Copy, Debug)]
pub struct RxFrame<F> {
    /// Frame handle.
    pub frame: F,
    /// Ingress interface index.
    pub port: u8,
}

/// Burst I/O over a set of interfaces.
pub trait Port {
    /// A frame handle.
    type Frame: Copy;

    /// Appends up to `max` received frames to `out` (which the caller keeps
    /// allocated) and returns how many.
    fn recv(&mut self, out: &mut Vec<RxFrame<Self::Frame>>, max: usize) -> usize;

    /// Runs `f` over the buffer of `frame` (its whole capacity) and its
    /// current length; the length `f` leaves is the frame's new length
    /// (clamped to the capacity).
    fn with_frame<R>(
        &mut self,
        frame: &mut Self::Frame,
        f: impl FnOnce(&mut [u8], &mut usize) -> R,
    ) -> R;

    /// Queues `frame` for transmission on interface `port`. A frame that
    /// cannot be queued is released and counted by the port.
    fn send(&mut self, port: u8, frame: Self::Frame);

    /// Gives a frame back without sending it.
    fn release(&mut self, frame: Self::Frame);

    /// Ends a burst: kicks transmission, reclaims completed frames and
    /// refills the receive side. At most one syscall per socket.
    fn flush(&mut self);

    /// Blocks up to `timeout_ms` until something may be received (idle
    /// workers sleep instead of spinning; busy-poll mode never calls this).
    fn wait(&mut self, timeout_ms: i32);

    /// Frames the port failed to queue for transmission (ring full) so far.
    fn tx_dropped(&self) -> u64 {
        0
    }
}

/// Size of one in-memory frame buffer.
pub const MEM_FRAME_SIZE: usize = 2048;

/// An in-memory port: frames are injected by the test, and what the worker
/// sends is kept for inspection. All buffers are allocated up front.
#[derive(Debug)]
pub struct MemPort {
    bufs: Vec<[u8; MEM_FRAME_SIZE]>,
    lens: Vec<usize>,
    free: Vec<u32>,
    rx: VecDeque<RxFrame<u32>>,
    sent: Vec<(u8, u32)>,
    /// Keep sent frames for [`MemPort::sent`]; when false (benches) they are
    /// recycled at once.
    keep_sent: bool,
    nb_ports: u8,
    tx_dropped: u64,
}

impl MemPort {
    /// A port with `nb_ports` interfaces and `frames` buffers.
    pub fn new(nb_ports: u8, frames: usize) -> MemPort {
        MemPort {
            bufs: vec![[0u8; MEM_FRAME_SIZE]; frames],
            lens: vec![0; frames],
            free: (0..frames as u32).rev().collect(),
            rx: VecDeque::with_capacity(frames),
            sent: Vec::with_capacity(frames),
            keep_sent: true,
            nb_ports,
            tx_dropped: 0,
        }
    }

    /// Recycle sent frames at once instead of keeping them (for benches).
    pub fn discard_sent(mut self) -> MemPort {
        self.keep_sent = false;
        self
    }

    /// Queues `packet` as received on interface `port`. Returns false when
    /// no buffer is free or the packet is larger than a frame.
    pub fn inject(&mut self, port: u8, packet: &[u8]) -> bool {
        if packet.len() > MEM_FRAME_SIZE {
            return false;
        }
        let Some(f) = self.free.pop() else {
            return false;
        };
        self.bufs[f as usize][..packet.len()].copy_from_slice(packet);
        self.lens[f as usize] = packet.len();
        self.rx.push_back(RxFrame { frame: f, port });
        true
    }

    /// Frames sent so far: egress interface and bytes.
    pub fn sent(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.sent
            .iter()
            .map(|&(p, f)| (p, &self.bufs[f as usize][..self.lens[f as usize]]))
    }

    /// Forgets sent frames and frees their buffers.
    pub fn clear_sent(&mut self) {
        for (_, f) in self.sent.drain(..) {
            self.free.push(f);
        }
    }

    /// Number of free buffers (tests check that nothing leaks).
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }
}

impl Port for MemPort {
    type Frame = u32;

    fn recv(&mut self, out: &mut Vec<RxFrame<u32>>, max: usize) -> usize {
        let n = max.min(self.rx.len());
        out.extend(self.rx.drain(..n));
        n
    }

    fn with_frame<R>(&mut self, frame: &mut u32, f: impl FnOnce(&mut [u8], &mut usize) -> R) -> R {
        let i = *frame as usize;
        let mut len = self.lens[i];
        let r = f(&mut self.bufs[i][..], &mut len);
        self.lens[i] = len.min(MEM_FRAME_SIZE);
        r
    }

    fn send(&mut self, port: u8, frame: u32) {
        if port >= self.nb_ports {
            self.tx_dropped += 1;
            self.free.push(frame);
        } else if self.keep_sent {
            self.sent.push((port, frame));
        } else {
            self.free.push(frame);
        }
    }

    fn release(&mut self, frame: u32) {
        self.free.push(frame);
    }

    fn flush(&mut self) {}

    fn wait(&mut self, _timeout_ms: i32) {}

    fn tx_dropped(&self) -> u64 {
        self.tx_dropped
    }
}
