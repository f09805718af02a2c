//! The I/O boundary of a worker.
//!
//! A [`Port`] is everything one worker sends and receives on: one or more
//! interfaces (indexed like `--iface`), each possibly with several queues,
//! behind one set of frames. The worker loop ([`crate::worker`]) is generic
//! over it, so the AF_XDP port ([`crate::xsk::XskPort`]) and the in-memory
//! [`MemPort`] used by tests and benches run the very same code.
//!
//! Frames are move-only handles (s2n-quic-xdp's model): [`Port::recv`]
//! hands out owned frames, and [`Port::send`] and [`Port::release`] consume
//! them, so safe code cannot send one buffer twice, or send it and give it
//! back too: the frame is moved by the first call. Neither port's frame
//! type is `Copy` or `Clone`, and only the port makes them. Their bytes are
//! reached through [`Port::with_frame`], which hands a closure the frame's
//! bytes so that no borrow of the port outlives the call.
//!
//! A double send does not compile:
//!
//! ```compile_fail,E0382
//! use sluice_dataplane::port::{MemPort, Port};
//!
//! let mut port = MemPort::new(2, 4);
//! port.inject(0, &[0u8; 64]);
//! let mut rx = Vec::new();
//! port.recv(&mut rx, 1);
//! let f = rx.pop().unwrap().frame;
//! port.send(1, f);
//! port.send(1, f); // error[E0382]: use of moved value: `f`
//! ```
//!
//! Nor does sending a frame and also giving it back, or copying a handle:
//!
//! ```compile_fail,E0382
//! use sluice_dataplane::port::{MemPort, Port};
//!
//! let mut port = MemPort::new(2, 4);
//! port.inject(0, &[0u8; 64]);
//! let mut rx = Vec::new();
//! port.recv(&mut rx, 1);
//! let f = rx.pop().unwrap().frame;
//! port.send(1, f);
//! port.release(f); // error[E0382]: use of moved value: `f`
//! ```
//!
//! ```compile_fail,E0599
//! use sluice_dataplane::port::{MemPort, Port};
//!
//! let mut port = MemPort::new(2, 4);
//! port.inject(0, &[0u8; 64]);
//! let mut rx = Vec::new();
//! port.recv(&mut rx, 1);
//! let f = rx.pop().unwrap().frame;
//! let g = f.clone(); // error[E0599]: no method named `clone`
//! port.send(1, f);
//! port.send(1, g);
//! ```
//!
//! The same sequence with one send compiles and runs:
//!
//! ```
//! use sluice_dataplane::port::{MemPort, Port};
//!
//! let mut port = MemPort::new(2, 4);
//! port.inject(0, &[0u8; 64]);
//! let mut rx = Vec::new();
//! port.recv(&mut rx, 1);
//! let f = rx.pop().unwrap().frame;
//! port.send(1, f);
//! assert_eq!(port.sent().count(), 1);
//! ```

use std::collections::VecDeque;

/// One received frame: its handle and the index of the interface it came in
/// on.
#[derive(Debug)]
pub struct RxFrame<F> {
    /// Frame handle (owned: send or release it exactly once).
    pub frame: F,
    /// Ingress interface index.
    pub port: u8,
}

/// Burst I/O over a set of interfaces.
pub trait Port {
    /// An owned frame handle: move-only (neither `Copy` nor `Clone`), made
    /// by the port alone, given back by [`Port::send`] or
    /// [`Port::release`]. A handle that is dropped instead leaks its buffer
    /// until the port is dropped.
    type Frame;

    /// Appends up to `max` received frames to `out` (which the caller keeps
    /// allocated) and returns how many. The caller owns them.
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
    /// refills the receive side. Each port documents the syscalls it makes
    /// here ([`crate::xsk::XskPort`]: a few `sendto()` per socket with
    /// frames in flight, and a `poll()` per fill ring that asks for a
    /// wakeup; [`MemPort`]: none).
    fn flush(&mut self);

    /// Blocks up to `timeout_ms` until something may be received (idle
    /// workers sleep instead of spinning; busy-poll mode never calls this).
    fn wait(&mut self, timeout_ms: i32);

    /// Also ends [`Port::wait`] when `fd` becomes readable (the workers'
    /// doorbell: [`crate::doorbell`]). The fd must outlive the port's use
    /// of it. Ports that never sleep ignore it.
    fn watch(&mut self, _fd: std::os::fd::RawFd) {}

    /// Frames the port failed to queue for transmission (ring full) so far.
    fn tx_dropped(&self) -> u64 {
        0
    }
}

/// Size of one in-memory frame buffer.
pub const MEM_FRAME_SIZE: usize = 2048;

/// A frame of a [`MemPort`]: the index of its buffer, owned (no `Copy`, no
/// `Clone`, made only by [`MemPort::inject`]).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a frame must be sent or released, or its buffer leaks"]
pub struct MemFrame(u32);

/// An in-memory port: frames are injected by the test, and what the worker
/// sends is kept for inspection. All buffers are allocated up front.
#[derive(Debug)]
pub struct MemPort {
    bufs: Vec<[u8; MEM_FRAME_SIZE]>,
    lens: Vec<usize>,
    free: Vec<u32>,
    rx: VecDeque<RxFrame<MemFrame>>,
    sent: Vec<(u8, MemFrame)>,
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
        self.rx.push_back(RxFrame {
            frame: MemFrame(f),
            port,
        });
        true
    }

    /// Frames sent so far: egress interface and bytes.
    pub fn sent(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.sent
            .iter()
            .map(|(p, f)| (*p, &self.bufs[f.0 as usize][..self.lens[f.0 as usize]]))
    }

    /// Forgets sent frames and frees their buffers.
    pub fn clear_sent(&mut self) {
        for (_, f) in self.sent.drain(..) {
            self.free.push(f.0);
        }
    }

    /// Number of free buffers (tests check that nothing leaks).
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }
}

impl Port for MemPort {
    type Frame = MemFrame;

    #[inline]
    fn recv(&mut self, out: &mut Vec<RxFrame<MemFrame>>, max: usize) -> usize {
        let n = max.min(self.rx.len());
        out.extend(self.rx.drain(..n));
        n
    }

    #[inline]
    fn with_frame<R>(
        &mut self,
        frame: &mut MemFrame,
        f: impl FnOnce(&mut [u8], &mut usize) -> R,
    ) -> R {
        let i = frame.0 as usize;
        let mut len = self.lens[i];
        let r = f(&mut self.bufs[i][..], &mut len);
        self.lens[i] = len.min(MEM_FRAME_SIZE);
        r
    }

    #[inline]
    fn send(&mut self, port: u8, frame: MemFrame) {
        if port >= self.nb_ports {
            self.tx_dropped += 1;
            self.free.push(frame.0);
        } else if self.keep_sent {
            self.sent.push((port, frame));
        } else {
            self.free.push(frame.0);
        }
    }

    #[inline]
    fn release(&mut self, frame: MemFrame) {
        self.free.push(frame.0);
    }

    fn flush(&mut self) {}

    fn wait(&mut self, _timeout_ms: i32) {}

    fn tx_dropped(&self) -> u64 {
        self.tx_dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_goes_back_to_the_pool_once() {
        let mut port = MemPort::new(2, 4);
        for i in 0..3u8 {
            assert!(port.inject(0, &[i; 60]));
        }
        assert_eq!(port.free_frames(), 1);
        let mut rx = Vec::new();
        assert_eq!(port.recv(&mut rx, 8), 3);
        let mut it = rx.into_iter();
        let a = it.next().unwrap();
        let b = it.next().unwrap();
        let c = it.next().unwrap();
        port.send(1, a.frame);
        port.release(b.frame);
        // Interface 5 does not exist: counted and freed.
        port.send(5, c.frame);
        assert_eq!(port.tx_dropped(), 1);
        assert_eq!(
            port.sent().map(|(p, d)| (p, d[0])).collect::<Vec<_>>(),
            [(1, 0)]
        );
        assert_eq!(port.free_frames(), 3);
        port.clear_sent();
        assert_eq!(port.free_frames(), 4);
    }
}
