//! The worker side of the fast path: after the pipeline forwarded a
//! frame, publish its flow direction's rewrite once the direction has shown
//! it is worth it, or withdraw the flow's entries when the frame closes it.
//!
//! # When a direction is published
//!
//! Publishing costs the worker a map insert (a syscall), and the flow's
//! close one lookup-and-delete per key and interface; the XDP program saves
//! the worker a few microseconds per packet it carries instead. A short
//! connection (a handshake, a request, a close) pays the first and gets
//! little of the second, so a direction is published only once this worker
//! has forwarded [`Publisher::new`]'s `after` packets of it that the XDP
//! program could have carried (`--fast-path-after`, default
//! [`DEFAULT_AFTER`]): the ski-rental rule, renting (the worker's
//! per-packet cost) until the rent paid equals the price of buying (a
//! publish and its withdrawal), which never costs more than twice what the
//! best choice made knowing the flow's length would. The packets are
//! counted per worker, in a small direct-mapped table of key fingerprints
//! ([`Counts`]): no shared write per packet; two keys that collide share a
//! count (one of them is published early, or counted anew: harmless).
//!
//! A published flow is marked in its flow record
//! ([`FlowTable::mark_fast_path`](crate::flow_table::FlowTable::mark_fast_path),
//! one CAS per flow, before the map insert), so that the worker that sees
//! its FIN or RST knows there is something to withdraw: a flow never
//! published closes without a single map operation. The mark stays when
//! the sweep withdraws the flow's entries (a moved next hop, a removed
//! endpoint): its close then asks the maps for nothing they hold, which
//! is only wasted, never wrong.
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

use crate::flow_table::{Direction, FlowState, Hit};
use crate::pipeline::{Ctx, Verdict};
use crate::types::{proto, FlowKey};
use crate::wire::{tcp_flags, Parsed};

use super::entry::{FastKey, FastValue};
use super::map::FastMap;
use super::rewrite::plan;
use super::sync::{Withdrawals, Withdrawn};

/// Seconds during which a published key is not published again.
pub const REPUBLISH_AFTER_S: u32 = 2;
/// Packets of a flow direction a worker forwards before it publishes the
/// direction (`--fast-path-after`): chosen by measurement, see the README's
/// performance section.
pub const DEFAULT_AFTER: u32 = 4;
/// Slots of a worker's packet-count table ([`Counts`]): 128 KiB.
const COUNT_SLOTS: usize = 1 << 14;
/// Keys remembered at most (then forgotten all at once).
const MAX_RECENT: usize = 65536;

/// What a worker's publisher did (summed into the worker's counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Entries inserted.
    pub published: u64,
    /// Entries withdrawn on FIN or RST.
    pub withdrawn: u64,
    /// FINs and RSTs of flows never published (or no longer in the flow
    /// table), whose withdrawal cost no map operation.
    pub closes_unpublished: u64,
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
    /// Packets forwarded per direction, until publication.
    counts: Counts,
    /// Packets of a direction before it is published (at least 1).
    after: u32,
    /// Counters since the last [`Publisher::take_stats`].
    stats: PublishStats,
}

impl Publisher {
    /// The publisher of worker `worker` over `maps[port]` (the map of the
    /// interface of port `port`), sending to `ifindex[port]`; withdrawn
    /// entries' counts go to the sweep through `withdrawals`. A flow
    /// direction is published on the `after`-th packet of it this worker
    /// forwards (0 counts as 1: the first).
    pub fn new(
        maps: Vec<FastMap>,
        ifindex: Vec<u32>,
        worker: u8,
        withdrawals: Withdrawals,
        after: u32,
    ) -> Publisher {
        Publisher {
            maps,
            ifindex,
            worker,
            withdrawals,
            recent: HashMap::new(),
            counts: Counts::new(),
            after: after.max(1),
            stats: PublishStats::default(),
        }
    }

    /// Counters since the last call.
    pub fn take_stats(&mut self) -> PublishStats {
        std::mem::take(&mut self.stats)
    }

    /// After the pipeline's verdict `v` for frame `p` received on
    /// `ingress`: publishes or withdraws ([`Publisher::decide`]).
    pub fn after(&mut self, ctx: &Ctx<'_>, p: &Parsed, ingress: u8, v: Verdict) {
        match self.decide(ctx, p, v) {
            Decision::Nothing => {}
            Decision::Withdraw(hit) => self.withdraw_flow(&hit),
            Decision::Publish(hit, val) => self.publish(ctx, &p.key, ingress, &hit, &val),
        }
    }

    /// What to do after the pipeline's verdict `v` for frame `p`, without
    /// a map operation (this worker's counts and memory of what it
    /// published aside): withdraw on a FIN or RST of a published flow,
    /// publish a direction on its `after`-th forwarded packet that the XDP
    /// program could carry (TCP without SYN, FIN or RST, or UDP; untagged,
    /// unfragmented, IPv6 without extension headers) once the flow is
    /// established and the rewrite can be published, else nothing.
    pub fn decide(&mut self, ctx: &Ctx<'_>, p: &Parsed, v: Verdict) -> Decision {
        let key = p.key;
        if !matches!(key.proto, proto::TCP | proto::UDP) || p.vlan.is_some() {
            return Decision::Nothing;
        }
        if key.proto == proto::TCP && p.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            self.counts.forget(&key);
            // Nothing to withdraw for a flow never published, nor for one
            // no longer in the flow table: its entries, if any, are the
            // sweep's (it takes every entry whose flow is gone).
            return match ctx.flows.lookup(&key, ctx.now) {
                Some(h) if h.fast_path => Decision::Withdraw(h),
                _ => {
                    self.stats.closes_unpublished += 1;
                    Decision::Nothing
                }
            };
        }
        if !matches!(v, Verdict::Tx(_)) || p.fragment.is_some() {
            return Decision::Nothing;
        }
        if key.proto == proto::TCP && p.tcp_flags & tcp_flags::SYN != 0 {
            return Decision::Nothing;
        }
        // The XDP program matches IPv6 only without extension headers.
        if p.ip_version == 6 && p.l4_offset != p.l3_offset + 40 {
            return Decision::Nothing;
        }
        if !self.counts.reached(&key, self.after) {
            return Decision::Nothing;
        }
        if let Some(&t) = self.recent.get(&key) {
            if ctx.now.wrapping_sub(t) < REPUBLISH_AFTER_S {
                return Decision::Nothing;
            }
        }
        let Some(hit) = ctx.flows.lookup(&key, ctx.now) else {
            return Decision::Nothing;
        };
        if key.proto == proto::TCP && hit.state != FlowState::Established {
            return Decision::Nothing;
        }
        let Some(mut val) = plan(ctx.snap, &hit.entry, hit.dir, &self.ifindex) else {
            return Decision::Nothing;
        };
        val.worker = self.worker;
        Decision::Publish(hit, val)
    }

    /// Marks the flow of `hit` as published and inserts `val` under `key`
    /// into the map of `ingress`.
    fn publish(&mut self, ctx: &Ctx<'_>, key: &FlowKey, ingress: u8, hit: &Hit, val: &FastValue) {
        let Some(map) = self.maps.get_mut(usize::from(ingress)) else {
            return;
        };
        // Marked before the insert (see `FlowTable::mark_fast_path`); a
        // refusal means a FIN or RST landed since the lookup.
        if !ctx.flows.mark_fast_path(hit.id, ctx.now) {
            return;
        }
        match map.publish(&FastKey(*key), val) {
            Ok(true) => self.stats.published += 1,
            Ok(false) => {}
            Err(_) => self.stats.errors += 1,
        }
        if self.recent.len() >= MAX_RECENT {
            self.recent.clear();
        }
        self.recent.insert(*key, ctx.now);
    }

    /// Withdraws both directions of the published flow of `hit` from every
    /// map (a FIN or RST: the flow's state changes, which only the workers
    /// follow).
    fn withdraw_flow(&mut self, hit: &Hit) {
        let keys = [
            (hit.entry.original, Direction::Original),
            (hit.entry.reply, Direction::Reply),
        ];
        for (k, dir) in keys {
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
                            flow: Some((hit.entry.service, hit.entry.backend, dir)),
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

/// What [`Publisher::decide`] chose.
#[derive(Clone, Copy, Debug)]
pub enum Decision {
    /// No map operation.
    Nothing,
    /// Withdraw both directions of this published flow (FIN or RST).
    Withdraw(Hit),
    /// Publish this value for the frame's key (its direction of the flow).
    Publish(Hit, FastValue),
}

/// A worker's packet counts per flow direction until publication: a
/// direct-mapped table of `(fingerprint, count)` slots indexed by a hash
/// of the key. A key whose slot holds another fingerprint takes the slot
/// over (its count starts again); so the table is bounded and allocation
/// free, and costs one load and one store of a worker-local line per
/// packet.
#[derive(Debug)]
pub struct Counts {
    slots: Box<[u64]>,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts::new()
    }
}

impl Counts {
    /// Bits of a slot that hold the count (the rest: the fingerprint).
    const COUNT_BITS: u32 = 16;

    /// An empty table of [`COUNT_SLOTS`] slots.
    pub fn new() -> Counts {
        Counts {
            slots: vec![0; COUNT_SLOTS].into_boxed_slice(),
        }
    }

    /// Counts one packet of `key`; true once `after` were counted (this
    /// one included) since the key took its slot. The count saturates at
    /// `after`, so later packets (those the XDP program leaves to the
    /// workers) keep answering true.
    #[inline]
    pub fn reached(&mut self, key: &FlowKey, after: u32) -> bool {
        if after <= 1 {
            return true;
        }
        let h = fingerprint(key);
        let i = (h as usize) & (COUNT_SLOTS - 1);
        let tag = h & !((1 << Self::COUNT_BITS) - 1);
        let slot = &mut self.slots[i];
        let n = if *slot & !((1 << Self::COUNT_BITS) - 1) == tag {
            (*slot & ((1 << Self::COUNT_BITS) - 1)) + 1
        } else {
            1
        };
        let cap = u64::from(after.min((1 << Self::COUNT_BITS) - 1));
        let n = n.min(cap);
        *slot = tag | n;
        n >= cap
    }

    /// Forgets `key`'s count (its flow closes).
    #[inline]
    pub fn forget(&mut self, key: &FlowKey) {
        let h = fingerprint(key);
        let i = (h as usize) & (COUNT_SLOTS - 1);
        let tag = h & !((1 << Self::COUNT_BITS) - 1);
        if self.slots[i] & !((1 << Self::COUNT_BITS) - 1) == tag {
            self.slots[i] = 0;
        }
    }
}

/// A 64-bit hash of a key (multiply-fold over its words; the top bits are
/// set so that a fingerprint is never the empty slot's 0).
#[inline]
fn fingerprint(k: &FlowKey) -> u64 {
    const M: u64 = 0x9E37_79B9_7F4A_7C15;
    let fold = |a: u64, b: u64| {
        let p = u128::from(a ^ M) * u128::from(b ^ 0xD6E8_FEB8_6659_FD93);
        (p as u64) ^ ((p >> 64) as u64)
    };
    let w = |a: &[u8; 16], i: usize| {
        u64::from_ne_bytes([
            a[i],
            a[i + 1],
            a[i + 2],
            a[i + 3],
            a[i + 4],
            a[i + 5],
            a[i + 6],
            a[i + 7],
        ])
    };
    let ports = u64::from(k.sport) | (u64::from(k.dport) << 16) | (u64::from(k.proto) << 32);
    let h = fold(w(&k.src.0, 0), w(&k.src.0, 8));
    let h = fold(h ^ w(&k.dst.0, 0), w(&k.dst.0, 8));
    let h = fold(h, ports);
    h | (1 << 63)
}

#[cfg(test)]
mod tests;
