//! Schedulers: which backend a new flow goes to.
//!
//! One file per scheduler, as IPVS has one module per scheduler
//! (`net/netfilter/ipvs/ip_vs_*.c`), each pure and deterministic given the
//! service, its counts and its own cursor, behind the [`Scheduler`] trait.
//! Only new flows reach a scheduler; established flows are pinned by the
//! flow table. The backends of a [`ServiceSpec`](crate::service::ServiceSpec)
//! play the kernel's `svc->destinations` list, in their order (a config
//! lists them sorted; the kernel lists the newest first).
//!
//! | module | `-s` | picks |
//! | --- | --- | --- |
//! | [`rr`] | rr | the next usable backend after the last one chosen |
//! | [`wrr`] | wrr | the kernel's gcd / max-weight stepping |
//! | [`lc`] | lc | least `(active << 8) + inactive` |
//! | [`wlc`] | wlc | least overhead / weight |
//! | [`sed`] | sed | least `(active + 1) / weight` |
//! | [`nq`] | nq | an idle server at once, else `sed` |
//! | [`sh`] | sh | 256 buckets on the client address (`sh-port`, `sh-fallback`) |
//! | [`dh`] | dh | 256 buckets on the destination address |
//! | [`lblc`] | lblc | the destination's cached server unless overloaded, else `wlc` |
//! | [`lblcr`] | lblcr | the least loaded of the destination's server set |
//! | [`fo`] | fo | the highest weight |
//! | [`ovf`] | ovf | the highest weight whose active count is within its weight |
//! | [`maglev`] | mh | a 65537-slot Maglev table on the client address |
//!
//! # Usable servers, weight 0, thresholds
//!
//! As in IPVS, a backend with weight 0 (quiesced, or a terminating
//! endpoint) takes no new flow, and one over its upper connection threshold
//! is `OVERLOAD`ed until it falls under the lower one
//! ([`conns::ConnCounts::overloaded`]). Kubernetes adds one rule on top
//! (ProxyTerminatingEndpoints): when *no* backend has a weight, serving
//! but terminating ones take new flows, round-robin ([`pick`]).
//!
//! # Connection counts without a shared write per packet
//!
//! `lc`, `wlc`, `sed`, `nq`, `lblc`, `lblcr`, `ovf` and thresholds read
//! IPVS's per-server counts: *active* = established TCP connections,
//! *inactive* = every other live flow. Every worker must see every other
//! worker's connections, and a flow can change state on any worker (a
//! reply lands on another queue) or disappear with no packet at all (it
//! expires in the shared flow table, is early-dropped, or is flushed).
//! Two designs were weighed:
//!
//! * *per-worker count arrays summed at pick time*: each worker counts the
//!   flows it created and closed. Exact only if every end of a flow is an
//!   event some worker sees; expiry and eviction happen inside the flow
//!   table (on the housekeeping thread's sweep, or on whichever worker's
//!   insert reclaims the record), so the counts drift up for ever.
//! * *per-worker deltas plus a periodic exact recount* (chosen,
//!   [`conns`]): workers add to their own delta slot at the events they do
//!   see — a flow created (inactive + 1), a TCP flow entering or leaving
//!   ESTABLISHED (detected by comparing the state a lookup read with the
//!   state [`FlowTable::touch`](crate::flow_table::FlowTable::touch)
//!   returns) — and the housekeeping thread recounts every service's
//!   flows from the table after each expiry sweep (once a second), which
//!   also accounts for silent expiry. A pick reads one base and
//!   [`conns::SLOTS`] deltas per backend. Writes happen only at connection
//!   events, never per packet, and go to a line no other worker writes (up
//!   to `SLOTS` workers). Between recounts the counts are exact for the
//!   events seen; flows that expired since the last recount are still
//!   counted, as IPVS counts a connection until its timer fires.
//!
//! A pick over the counts is O(n) like the kernel's (it reads 5 words per
//! backend, in sequential arrays); a min-structure would need a shared
//! write per event and would still be stale between workers, so exactness
//! was kept over sub-linear picks (measured in `bench/benches/sched.rs`).

pub mod conns;
pub mod dh;
pub mod fo;
pub mod lblc;
pub mod lblcr;
pub mod lc;
pub mod maglev;
pub mod nq;
pub mod ovf;
pub mod rr;
pub mod sed;
pub mod sh;
pub mod wlc;
pub mod wrr;

use crate::service::{SchedKind, Service, ServiceSpec};
use crate::types::{Addr, FlowKey};

/// Picks a backend for a new flow.
pub trait Scheduler: Send + Sync {
    /// The index (into `service.spec.backends`) of the backend for the flow
    /// `key`, or `None` when no backend can take new flows.
    fn pick(&self, service: &Service, key: &FlowKey) -> Option<usize>;
}

/// A scheduler's prebuilt per-service state, built with the service table
/// (at compile/publish time, never per packet).
#[derive(Debug, Default)]
pub(crate) enum State {
    /// The scheduler keeps nothing beyond the counts.
    #[default]
    None,
    /// `wrr`'s cursor and current weight.
    Wrr(wrr::WrrState),
    /// `sh` / `dh`'s 256 buckets.
    Buckets(Box<[u16]>),
    /// `lblc`'s destination cache.
    Lblc(lblc::Cache),
    /// `lblcr`'s destination → server-set cache.
    Lblcr(lblcr::Cache),
    /// `mh`'s lookup table.
    Maglev(maglev::Table),
}

impl State {
    /// The state `spec`'s scheduler needs.
    pub(crate) fn build(spec: &ServiceSpec) -> State {
        match spec.sched {
            SchedKind::WeightedRoundRobin => State::Wrr(wrr::WrrState::new(&spec.backends)),
            SchedKind::SourceHash => {
                sh::buckets(&spec.backends).map_or(State::None, State::Buckets)
            }
            SchedKind::DestinationHash => {
                dh::buckets(&spec.backends).map_or(State::None, State::Buckets)
            }
            SchedKind::Lblc => State::Lblc(lblc::Cache::new()),
            SchedKind::Lblcr => State::Lblcr(lblcr::Cache::new()),
            SchedKind::Maglev => maglev::Table::build(&spec.backends, maglev::DEFAULT_SIZE)
                .map_or(State::None, State::Maglev),
            _ => State::None,
        }
    }
}

/// The scheduler implementing `kind`.
pub fn for_kind(kind: SchedKind) -> &'static dyn Scheduler {
    match kind {
        SchedKind::RoundRobin => &rr::RoundRobin,
        SchedKind::WeightedRoundRobin => &wrr::WeightedRoundRobin,
        SchedKind::LeastConn => &lc::LeastConn,
        SchedKind::WeightedLeastConn => &wlc::WeightedLeastConn,
        SchedKind::ShortestExpectedDelay => &sed::ShortestExpectedDelay,
        SchedKind::NeverQueue => &nq::NeverQueue,
        SchedKind::SourceHash => &sh::SourceHash,
        SchedKind::DestinationHash => &dh::DestinationHash,
        SchedKind::Lblc => &lblc::Lblc,
        SchedKind::Lblcr => &lblcr::Lblcr,
        SchedKind::WeightedFailover => &fo::WeightedFailover,
        SchedKind::WeightedOverflow => &ovf::WeightedOverflow,
        SchedKind::Maglev => &maglev::Maglev,
    }
}

/// Schedules a new flow on `service` with its configured scheduler; when
/// no backend has a weight, a serving-but-terminating one (round-robin).
#[inline]
pub fn pick(service: &Service, key: &FlowKey) -> Option<usize> {
    let s = service;
    let chosen = match s.spec.sched {
        SchedKind::RoundRobin => rr::RoundRobin.pick(s, key),
        SchedKind::WeightedRoundRobin => wrr::WeightedRoundRobin.pick(s, key),
        SchedKind::LeastConn => lc::LeastConn.pick(s, key),
        SchedKind::WeightedLeastConn => wlc::WeightedLeastConn.pick(s, key),
        SchedKind::ShortestExpectedDelay => sed::ShortestExpectedDelay.pick(s, key),
        SchedKind::NeverQueue => nq::NeverQueue.pick(s, key),
        SchedKind::SourceHash => sh::SourceHash.pick(s, key),
        SchedKind::DestinationHash => dh::DestinationHash.pick(s, key),
        SchedKind::Lblc => lblc::Lblc.pick(s, key),
        SchedKind::Lblcr => lblcr::Lblcr.pick(s, key),
        SchedKind::WeightedFailover => fo::WeightedFailover.pick(s, key),
        SchedKind::WeightedOverflow => ovf::WeightedOverflow.pick(s, key),
        SchedKind::Maglev => maglev::Maglev.pick(s, key),
    };
    chosen.or_else(|| terminating(s))
}

/// Kubernetes ProxyTerminatingEndpoints: with no backend of non-zero
/// weight, serving-but-terminating ones take new flows, round-robin.
#[cold]
fn terminating(s: &Service) -> Option<usize> {
    let backends = &s.spec.backends;
    if backends.is_empty() || backends.iter().any(|b| b.weight > 0) {
        return None;
    }
    let start = s.rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
    let n = backends.len();
    (0..n)
        .map(|i| (start + i) % n)
        .find(|&i| backends[i].terminating)
}

/// Whether backend `i` is `OVERLOAD`ed (over its upper threshold, not yet
/// under its lower one).
#[inline]
pub(crate) fn overloaded(s: &Service, i: usize) -> bool {
    let b = &s.spec.backends[i];
    b.upper != 0 && s.conns.overloaded(i, b.upper, b.lower)
}

/// Whether backend `i` may take a new flow: weight > 0 and not
/// `OVERLOAD`ed (the test every kernel scheduler makes).
#[inline]
pub(crate) fn usable(s: &Service, i: usize) -> bool {
    s.spec.backends[i].weight > 0 && !overloaded(s, i)
}

/// IPVS's address fold: the IPv4 address, or the XOR of an IPv6
/// address's four 32-bit words, in host order (`ntohl(addr_fold)`).
#[inline]
pub(crate) fn addr_fold(a: &Addr) -> u32 {
    let w = |i: usize| u32::from_be_bytes([a.0[i], a.0[i + 1], a.0[i + 2], a.0[i + 3]]);
    if a.is_v4() {
        w(12)
    } else {
        w(0) ^ w(4) ^ w(8) ^ w(12)
    }
}

/// The kernel's `hash_32` (`include/linux/hash.h`): the top `bits` of
/// `val * GOLDEN_RATIO_32`.
#[inline]
pub(crate) fn hash_32(val: u32, bits: u32) -> u32 {
    val.wrapping_mul(0x61C8_8647) >> (32 - bits)
}

/// IPVS's s64 comparison of `loh / lw` against `doh / dw`: whether `d`
/// (overhead `doh`, weight `dw`) is strictly less loaded than the current
/// least (`loh`, `lw`).
#[inline]
pub(crate) fn less_loaded(loh: u64, lw: u16, doh: u64, dw: u16) -> bool {
    u128::from(loh) * u128::from(dw) > u128::from(doh) * u128::from(lw)
}

/// The weighted-least-connections choice with overhead `oh` (the loop of
/// `ip_vs_wlc_schedule`, also `__ip_vs_lblc_schedule` and
/// `ip_vs_sed_schedule`): the first usable backend, then any later one that
/// is not `OVERLOAD`ed and [`less_loaded`]. A later backend of weight 0
/// never wins (its product is 0).
#[inline]
pub(crate) fn least_weighted(s: &Service, oh: impl Fn(usize) -> u64) -> Option<usize> {
    let backends = &s.spec.backends;
    let first = (0..backends.len()).find(|&i| usable(s, i))?;
    let (mut least, mut loh) = (first, oh(first));
    for d in first + 1..backends.len() {
        if overloaded(s, d) {
            continue;
        }
        let doh = oh(d);
        if less_loaded(loh, backends[least].weight, doh, backends[d].weight) {
            least = d;
            loh = doh;
        }
    }
    Some(least)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A service table for scheduler tests, with counts set by hand.

    use crate::service::{BackendSpec, SchedFlags, SchedKind, ServiceSpec, ServiceTable, VipKey};
    use crate::types::{proto, Addr, FlowKey};

    /// One service of `kind` with backends 198.18.1.10+i of `weights`.
    pub fn table(kind: SchedKind, weights: &[u16]) -> ServiceTable {
        table_with(kind, SchedFlags::default(), weights, |_, _| {})
    }

    /// [`table`] with flags and a hook to edit each backend.
    pub fn table_with(
        kind: SchedKind,
        flags: SchedFlags,
        weights: &[u16],
        edit: impl Fn(usize, &mut BackendSpec),
    ) -> ServiceTable {
        let spec = ServiceSpec {
            name: "t".into(),
            vip: VipKey {
                addr: Addr::from_v4([198, 18, 100, 1]),
                port: 80,
                proto: proto::TCP,
            },
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let mut b = BackendSpec {
                        addr: Addr::from_v4([198, 18, 1, 10 + i as u8]),
                        port: 80,
                        weight: w,
                        ..Default::default()
                    };
                    edit(i, &mut b);
                    b
                })
                .collect(),
            sched: kind,
            sched_flags: flags,
            ..Default::default()
        };
        ServiceTable::build(1, vec![spec]).unwrap()
    }

    /// Sets backend `b`'s counts to exactly (`active`, `inactive`).
    pub fn set_counts(t: &ServiceTable, b: usize, active: u32, inactive: u32) {
        super::conns::test_settle(&t.get(0).unwrap().conns, b, active, inactive);
    }

    /// A flow key from client 198.18.0.x:port.
    pub fn client(x: u8, port: u16) -> FlowKey {
        FlowKey {
            src: Addr::from_v4([198, 18, 0, x]),
            dst: Addr::from_v4([198, 18, 100, 1]),
            sport: port,
            dport: 80,
            proto: proto::TCP,
        }
    }

    /// `n` picks with `key`, as backend indices (None as usize::MAX).
    pub fn picks(t: &ServiceTable, key: &FlowKey, n: usize) -> Vec<usize> {
        let s = t.get(0).unwrap();
        (0..n)
            .map(|_| super::pick(s, key).unwrap_or(usize::MAX))
            .collect()
    }
}
