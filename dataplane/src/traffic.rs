//! Per-backend traffic counters, as `ipvsadm --stats` shows them: new
//! connections, packets and bytes in (client → backend) and out (replies).
//! A service port's figures are the sum of its backends' (which is what
//! IPVS's per-service counters are, too: it counts at the destination).
//!
//! **No shared writes on the packet path.** Each [`Traffic`] holds one
//! array of counters per worker *slot*, each array padded to whole cache
//! lines. A worker the daemon bound to its own slot ([`bind_worker`]) is
//! that slot's only writer and updates it with a relaxed load and store
//! (no locked instruction, no line shared with another core); every other
//! thread (tests, benches, workers beyond the slot count) writes one extra,
//! shared slot with atomic adds, so no slot ever has a plain writer and an
//! atomic one at once.
//! Readers sum the slots ([`Traffic::backend`]).
//!
//! **Across table swaps** the counters live in the table's [`Service`]s,
//! so a new table starts at zero: the control plane keeps the retired
//! table until every worker has loaded the new one, then folds its sums
//! into totals keyed by front end and (backend address, port, protocol)
//! (`control/src/stats.rs`), which is what survives a rebuild.
//!
//! [`Service`]: crate::service::Service

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counters per backend: new flows, in packets, in bytes, out packets,
/// out bytes.
pub const FIELDS: usize = 5;
/// Index of the new-flow counter.
pub const CONNS: usize = 0;
/// Index of the first "in" counter (packets; bytes follow).
pub const IN: usize = 1;
/// Index of the first "out" counter (packets; bytes follow).
pub const OUT: usize = 3;

/// Counters per cache line.
const PER_LINE: usize = 8;

/// Slots of tables built from now on (the daemon sets its worker count).
static SLOTS: AtomicUsize = AtomicUsize::new(2);

thread_local! {
    /// This thread's slot and whether it is the slot's only writer.
    static SLOT: Cell<(usize, bool)> = const { Cell::new((usize::MAX, false)) };
}

/// Sets the slot count of tables built from now on (the daemon's worker
/// count; at least 1, at most 64).
pub fn set_slots(n: usize) {
    SLOTS.store(n.clamp(1, 64), Ordering::Relaxed);
}

/// Binds the calling thread to slot `w` as its only writer: the daemon
/// calls it in worker `w`'s thread, with `w` below [`set_slots`]'s count.
pub fn bind_worker(w: usize) {
    SLOT.with(|s| s.set((w, true)));
}

#[inline]
fn my_slot() -> (usize, bool) {
    SLOT.with(|s| s.get())
}

#[repr(align(64))]
#[derive(Debug, Default)]
struct Line([AtomicU64; PER_LINE]);

/// One service port's per-backend counters.
#[derive(Debug, Default)]
pub struct Traffic {
    n: usize,
    slots: usize,
    /// Lines per slot.
    stride: usize,
    lines: Box<[Line]>,
}

impl Traffic {
    /// Counters for `n` backends.
    pub fn new(n: usize) -> Traffic {
        let slots = SLOTS.load(Ordering::Relaxed);
        let stride = (n * FIELDS).div_ceil(PER_LINE);
        Traffic {
            n,
            slots,
            stride,
            // One more slot: the shared one.
            lines: (0..(slots + 1) * stride).map(|_| Line::default()).collect(),
        }
    }

    #[inline]
    fn cell(&self, slot: usize, b: usize, f: usize) -> Option<&AtomicU64> {
        let i = b * FIELDS + f;
        self.lines
            .get(slot * self.stride + i / PER_LINE)
            .map(|l| &l.0[i % PER_LINE])
    }

    #[inline]
    fn add(&self, b: usize, f: usize, v: u64) {
        if b >= self.n {
            return;
        }
        let (slot, own) = my_slot();
        let exclusive = own && slot < self.slots;
        let slot = if exclusive { slot } else { self.slots };
        let Some(c) = self.cell(slot, b, f) else {
            return;
        };
        if exclusive {
            c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
        } else {
            c.fetch_add(v, Ordering::Relaxed);
        }
    }

    /// A new flow to backend `b`, with its first packet of `bytes`.
    #[inline]
    pub fn on_new(&self, b: usize, bytes: usize) {
        self.add(b, CONNS, 1);
        self.on_packet(b, true, bytes);
    }

    /// A packet of a flow of backend `b`: `inbound` from the client.
    #[inline]
    pub fn on_packet(&self, b: usize, inbound: bool, bytes: usize) {
        let f = if inbound { IN } else { OUT };
        self.add(b, f, 1);
        self.add(b, f + 1, bytes as u64);
    }

    /// `packets` packets of `bytes` bytes in all of a flow of backend `b`
    /// (the ones the XDP fast path forwarded, credited by its sweep).
    #[inline]
    pub fn on_packets(&self, b: usize, inbound: bool, packets: u64, bytes: u64) {
        let f = if inbound { IN } else { OUT };
        self.add(b, f, packets);
        self.add(b, f + 1, bytes);
    }

    /// Backend `b`'s counters summed over the slots: new flows, in
    /// packets, in bytes, out packets, out bytes.
    pub fn backend(&self, b: usize) -> [u64; FIELDS] {
        let mut out = [0u64; FIELDS];
        if b >= self.n {
            return out;
        }
        for s in 0..=self.slots {
            for (f, o) in out.iter_mut().enumerate() {
                if let Some(c) = self.cell(s, b, f) {
                    *o = o.wrapping_add(c.load(Ordering::Relaxed));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_sum_and_slots_do_not_share_lines() {
        let t = std::sync::Arc::new(Traffic::new(3));
        assert_eq!(t.lines.len() % (t.slots + 1), 0);
        std::thread::scope(|s| {
            for w in 0..4 {
                let t = t.clone();
                s.spawn(move || {
                    if w < 2 {
                        bind_worker(w);
                    }
                    for _ in 0..1000 {
                        t.on_new(1, 60);
                        t.on_packet(1, false, 100);
                    }
                });
            }
        });
        assert_eq!(t.backend(1), [4000, 4000, 240_000, 4000, 400_000]);
        assert_eq!(t.backend(0), [0; FIELDS]);
        assert_eq!(t.backend(7), [0; FIELDS], "out of range reads zero");
        t.on_new(9, 1);
        assert_eq!(t.backend(2), [0; FIELDS], "out of range writes nothing");
    }
}
