//! The worker side of the fast path: after the pipeline forwarded a
//! frame, publish its flow direction's rewrite, or withdraw the flow's
//! entries when the frame closes it.
//!
//! One map update per flow direction (a syscall, not per packet): once the
//! entry is in, that direction's packets stop reaching the worker. Packets
//! the XDP program leaves to the workers anyway (TTL 1, too big, an IPv6
//! UDP datagram without checksum) would ask for the same entry again, so
//! the worker remembers what it published in the last
//! [`REPUBLISH_AFTER_S`] seconds and does not ask twice.
//!
//! A withdrawal takes the entry out with its last counts (one
//! lookup-and-delete, no more syscalls than a delete) and hands them to the
//! sweep through a bounded lock-free queue ([`super::sync::Withdrawals`]),
//! so that the packets the XDP program forwarded since the last sweep are
//! still counted, per backend and in the workers' rx/tx.

use hashbrown::HashMap;

use crate::flow_table::{Direction, FlowState};
use crate::pipeline::{Ctx, Verdict};
use crate::types::{proto, FlowKey};
use crate::wire::{tcp_flags, Parsed};

use super::entry::FastKey;
use super::map::FastMap;
use super::rewrite::plan;
use super::sync::{Withdrawals, Withdrawn};

/// Seconds during which a published key is not published again.
pub const REPUBLISH_AFTER_S: u32 = 2;
/// Keys remembered at most (then forgotten all at once).
const MAX_RECENT: usize = 65536;

/// What a worker's publisher did (summed into the worker's counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Entries inserted.
    pub published: u64,
    /// Entries withdrawn on FIN or RST.
    pub withdrawn: u64,
    /// Map operations that failed (full map, ...): the flow stays on the
    /// slow path. Also withdrawn entries whose counts found the sweep's
    /// queue full (their packets since the last sweep go uncounted).
    pub errors: u64,
}

/// One worker's publisher: the maps of the interfaces, by port index, and
/// the interface index of each port (0: the fast path may not send there,
/// [`crate::fastpath`] module doc).
#[derive(Debug)]
pub struct Publisher {
    maps: Vec<FastMap>,
    ifindex: Vec<u32>,
    worker: u8,
    withdrawals: Withdrawals,
    recent: HashMap<FlowKey, u32>,
    /// Counters since the last [`Publisher::take_stats`].
    stats: PublishStats,
}

impl Publisher {
    /// The publisher of worker `worker` over `maps[port]` (the map of the
    /// interface of port `port`), sending to `ifindex[port]`; withdrawn
    /// entries' counts go to the sweep through `withdrawals`.
    pub fn new(
        maps: Vec<FastMap>,
        ifindex: Vec<u32>,
        worker: u8,
        withdrawals: Withdrawals,
    ) -> Publisher {
        Publisher {
            maps,
            ifindex,
            worker,
            withdrawals,
            recent: HashMap::new(),
            stats: PublishStats::default(),
        }
    }

    /// Counters since the last call.
    pub fn take_stats(&mut self) -> PublishStats {
        std::mem::take(&mut self.stats)
    }

    /// After the pipeline's verdict `v` for frame `p` received on
    /// `ingress`: publishes or withdraws.
    pub fn after(&mut self, ctx: &Ctx<'_>, p: &Parsed, ingress: u8, v: Verdict) {
        let key = p.key;
        if !matches!(key.proto, proto::TCP | proto::UDP) || p.vlan.is_some() {
            return;
        }
        if key.proto == proto::TCP && p.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            self.withdraw_flow(ctx, &key);
            return;
        }
        if !matches!(v, Verdict::Tx(_)) || p.fragment.is_some() {
            return;
        }
        if key.proto == proto::TCP && p.tcp_flags & tcp_flags::SYN != 0 {
            return;
        }
        // The XDP program matches IPv6 only without extension headers.
        if p.ip_version == 6 && p.l4_offset != p.l3_offset + 40 {
            return;
        }
        if let Some(&t) = self.recent.get(&key) {
            if ctx.now.wrapping_sub(t) < REPUBLISH_AFTER_S {
                return;
            }
        }
        let Some(hit) = ctx.flows.lookup(&key, ctx.now) else {
            return;
        };
        if key.proto == proto::TCP && hit.state != FlowState::Established {
            return;
        }
        let Some(mut val) = plan(ctx.snap, &hit.entry, hit.dir, &self.ifindex) else {
            return;
        };
        val.worker = self.worker;
        let Some(map) = self.maps.get_mut(usize::from(ingress)) else {
            return;
        };
        match map.publish(&FastKey(key), &val) {
            Ok(true) => self.stats.published += 1,
            Ok(false) => {}
            Err(_) => self.stats.errors += 1,
        }
        if self.recent.len() >= MAX_RECENT {
            self.recent.clear();
        }
        self.recent.insert(key, ctx.now);
    }

    /// Withdraws both directions of the flow of `key` from every map (a
    /// FIN or RST: the flow's state changes, which only the workers follow).
    fn withdraw_flow(&mut self, ctx: &Ctx<'_>, key: &FlowKey) {
        let hit = ctx.flows.lookup(key, ctx.now);
        let keys = match &hit {
            Some(h) => [
                (h.entry.original, Direction::Original),
                (h.entry.reply, Direction::Reply),
            ],
            None => [(*key, Direction::Original), (*key, Direction::Original)],
        };
        for (i, (k, dir)) in keys.into_iter().enumerate() {
            if i == 1 && hit.is_none() {
                break;
            }
            // Asked even when this worker never published it: another
            // worker may have.
            self.recent.remove(&k);
            for (m, map) in self.maps.iter_mut().enumerate() {
                match map.take(&FastKey(k)) {
                    Ok(Some(value)) => {
                        self.stats.withdrawn += 1;
                        let w = Withdrawn {
                            map: m,
                            key: FastKey(k),
                            value,
                            flow: hit
                                .as_ref()
                                .map(|h| (h.entry.service, h.entry.backend, dir)),
                        };
                        if self.withdrawals.push(w).is_err() {
                            self.stats.errors += 1;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => self.stats.errors += 1,
                }
            }
        }
    }
}
