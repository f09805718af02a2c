//! What the service table in service names, counted: its front ends, the
//! endpoints flows may go to, the endpoints whose replies are steered,
//! the backend addresses that need next hops and the sources that need
//! SNAT steering.
//!
//! Why counted: one endpoint (address, port) or one address is named by
//! many services. With a count per key, a change of a few services says
//! which keys appeared or vanished from the whole table — the only ones
//! that touch the steering maps, the next hops or the flows to flush —
//! in time proportional to the services changed, not to the table
//! ([`Change::of`], [`Change::crossed`]). A whole compile counts the
//! whole table instead ([`Tally::of`]).

use std::hash::Hash;

use hashbrown::HashMap;
use sluice_dataplane::service::{ForwardMethod, ServiceSpec, ServiceTable, VipKey};
use sluice_dataplane::types::Addr;

/// An endpoint as flows and the steering program name it: (address, port,
/// protocol).
pub type Endpoint = (Addr, u16, u8);

/// A multiset: how many specs name each key (never a zero count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted<K: Hash + Eq>(HashMap<K, u32>);

impl<K: Hash + Eq> Default for Counted<K> {
    fn default() -> Self {
        Counted(HashMap::new())
    }
}

impl<K: Hash + Eq + Copy> Counted<K> {
    /// Whether some spec names `k`.
    pub fn contains(&self, k: &K) -> bool {
        self.0.contains_key(k)
    }

    /// The keys named, in no order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.keys()
    }

    /// Keys named.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn count(&self, k: &K) -> i64 {
        self.0.get(k).map_or(0, |&n| i64::from(n))
    }

    fn add(&mut self, k: K) {
        *self.0.entry(k).or_insert(0) += 1;
    }

    /// Applies net changes. A count that would go below zero is a change
    /// computed against another tally: it is clamped (and the key dropped)
    /// rather than wrapped.
    fn apply(&mut self, net: &HashMap<K, i64>) {
        for (k, d) in net {
            let n = self.count(k) + d;
            match u32::try_from(n) {
                Ok(0) | Err(_) => {
                    self.0.remove(k);
                }
                Ok(n) => {
                    self.0.insert(*k, n);
                }
            }
        }
    }

    /// The keys `net` makes appear (count 0 → more) and vanish (→ 0).
    fn crossed(&self, net: &HashMap<K, i64>) -> Moves<K> {
        let mut m = Moves::default();
        for (k, d) in net {
            let before = self.count(k);
            let after = before + d;
            if before <= 0 && after > 0 {
                m.up.push(*k);
            } else if before > 0 && after <= 0 {
                m.down.push(*k);
            }
        }
        m
    }
}

/// The keys of one set that appeared and vanished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moves<K> {
    /// Now named, not before.
    pub up: Vec<K>,
    /// Named before, not now.
    pub down: Vec<K>,
}

impl<K> Default for Moves<K> {
    fn default() -> Self {
        Moves {
            up: Vec::new(),
            down: Vec::new(),
        }
    }
}

impl<K> Moves<K> {
    /// Whether no key moved.
    pub fn is_empty(&self) -> bool {
        self.up.is_empty() && self.down.is_empty()
    }
}

/// The counted sets of one service table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Front ends (each named once: the table refuses duplicates).
    pub vips: Counted<VipKey>,
    /// Every endpoint a flow may be forwarded to.
    pub live: Counted<Endpoint>,
    /// The endpoints of direct-routing and tunnel services (their flows are
    /// named by next hop, not address).
    pub dr: Counted<Endpoint>,
    /// The endpoints of NAT and FULLNAT services: their replies come back
    /// and are steered.
    pub steered: Counted<Endpoint>,
    /// Every backend address: each needs a next hop.
    pub addrs: Counted<Addr>,
    /// The addresses of NAT and FULLNAT backends: their next hops' SNAT
    /// sources are steered.
    pub nat_addrs: Counted<Addr>,
    /// FULLNAT local addresses (steered as SNAT sources).
    pub local_addrs: Counted<Addr>,
}

impl Tally {
    /// Counts every service of `table`.
    pub fn of(table: &ServiceTable) -> Tally {
        let mut t = Tally::default();
        for s in table.services() {
            t.count_spec(&s.spec);
        }
        t
    }

    fn count_spec(&mut self, spec: &ServiceSpec) {
        self.vips.add(spec.vip);
        let steered = steers_replies(spec.forward);
        for b in &spec.backends {
            let e = (b.addr, b.port, spec.vip.proto);
            self.live.add(e);
            self.addrs.add(b.addr);
            if steered {
                self.steered.add(e);
                self.nat_addrs.add(b.addr);
            } else {
                self.dr.add(e);
            }
        }
        for a in &spec.local_addrs {
            self.local_addrs.add(*a);
        }
    }

    /// Makes `change` (computed against `self`) part of the tally.
    pub fn commit(&mut self, change: &Change) {
        self.vips.apply(&change.vips);
        self.live.apply(&change.live);
        self.dr.apply(&change.dr);
        self.steered.apply(&change.steered);
        self.addrs.apply(&change.addrs);
        self.nat_addrs.apply(&change.nat_addrs);
        self.local_addrs.apply(&change.local_addrs);
    }
}

/// Whether a forwarding method's replies come back through the LB (NAT,
/// FULLNAT) rather than from the backend to the client (DR, tunnel).
pub fn steers_replies(f: ForwardMethod) -> bool {
    matches!(f, ForwardMethod::Nat | ForwardMethod::FullNat)
}

/// Net count changes per key, from replacing some services' specs.
#[derive(Clone, Debug, Default)]
pub struct Change {
    vips: HashMap<VipKey, i64>,
    live: HashMap<Endpoint, i64>,
    dr: HashMap<Endpoint, i64>,
    steered: HashMap<Endpoint, i64>,
    addrs: HashMap<Addr, i64>,
    nat_addrs: HashMap<Addr, i64>,
    local_addrs: HashMap<Addr, i64>,
}

fn bump<K: Hash + Eq>(m: &mut HashMap<K, i64>, k: K, d: i64) {
    let n = m.entry(k).or_insert(0);
    *n += d;
}

impl Change {
    /// What replacing the front ends `vips` of `old` with those of `new`
    /// changes (a front end absent from one side counts as nothing there).
    pub fn of<'v>(
        old: &ServiceTable,
        new: &ServiceTable,
        vips: impl IntoIterator<Item = &'v VipKey>,
    ) -> Change {
        let mut c = Change::default();
        let mut seen = hashbrown::HashSet::new();
        for v in vips {
            if !seen.insert(*v) {
                continue;
            }
            if let Some((_, s)) = old.lookup(v) {
                c.spec(&s.spec, -1);
            }
            if let Some((_, s)) = new.lookup(v) {
                c.spec(&s.spec, 1);
            }
        }
        c
    }

    fn spec(&mut self, spec: &ServiceSpec, d: i64) {
        bump(&mut self.vips, spec.vip, d);
        let steered = steers_replies(spec.forward);
        for b in &spec.backends {
            let e = (b.addr, b.port, spec.vip.proto);
            bump(&mut self.live, e, d);
            bump(&mut self.addrs, b.addr, d);
            if steered {
                bump(&mut self.steered, e, d);
                bump(&mut self.nat_addrs, b.addr, d);
            } else {
                bump(&mut self.dr, e, d);
            }
        }
        for a in &spec.local_addrs {
            bump(&mut self.local_addrs, *a, d);
        }
    }

    /// The keys that appear in or vanish from `tally` when this change is
    /// committed to it.
    pub fn crossed(&self, tally: &Tally) -> Crossed {
        Crossed {
            vips: tally.vips.crossed(&self.vips),
            live: tally.live.crossed(&self.live),
            dr: tally.dr.crossed(&self.dr),
            steered: tally.steered.crossed(&self.steered),
            addrs: tally.addrs.crossed(&self.addrs),
            nat_addrs: tally.nat_addrs.crossed(&self.nat_addrs),
            local_addrs: tally.local_addrs.crossed(&self.local_addrs),
        }
    }
}

/// Whether `k` is named once `net` is applied to `before`.
fn named_after<K: Hash + Eq + Copy>(before: &Counted<K>, net: &HashMap<K, i64>, k: &K) -> bool {
    before.count(k) + net.get(k).copied().unwrap_or(0) > 0
}

/// The keys named once `net` is applied to `before` (a walk of `before`:
/// for rebuilding a whole set, not for every change).
fn keys_after<'a, K: Hash + Eq + Copy>(
    before: &'a Counted<K>,
    net: &'a HashMap<K, i64>,
) -> impl Iterator<Item = &'a K> + 'a {
    let kept = before
        .0
        .iter()
        .filter(move |(k, n)| i64::from(**n) + net.get(*k).copied().unwrap_or(0) > 0)
        .map(|(k, _)| k);
    let new = net
        .iter()
        .filter(move |(k, d)| !before.contains(k) && **d > 0)
        .map(|(k, _)| k);
    kept.chain(new)
}

impl Change {
    /// Whether some backend is at `a` once committed to `tally`.
    pub fn addr_named_after(&self, tally: &Tally, a: &Addr) -> bool {
        named_after(&tally.addrs, &self.addrs, a)
    }

    /// Whether `e`'s replies are steered once committed to `tally`.
    pub fn steered_after(&self, tally: &Tally, e: &Endpoint) -> bool {
        named_after(&tally.steered, &self.steered, e)
    }

    /// The front ends once committed to `tally`.
    pub fn vips_after<'a>(&'a self, tally: &'a Tally) -> impl Iterator<Item = &'a VipKey> + 'a {
        keys_after(&tally.vips, &self.vips)
    }

    /// The steered endpoints once committed to `tally`.
    pub fn steered_keys_after<'a>(
        &'a self,
        tally: &'a Tally,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        keys_after(&tally.steered, &self.steered)
    }

    /// The NAT backend addresses once committed to `tally`.
    pub fn nat_addrs_after<'a>(&'a self, tally: &'a Tally) -> impl Iterator<Item = &'a Addr> + 'a {
        keys_after(&tally.nat_addrs, &self.nat_addrs)
    }

    /// The FULLNAT local addresses once committed to `tally`.
    pub fn local_addrs_after<'a>(
        &'a self,
        tally: &'a Tally,
    ) -> impl Iterator<Item = &'a Addr> + 'a {
        keys_after(&tally.local_addrs, &self.local_addrs)
    }
}

/// Per set, the keys a [`Change`] makes appear and vanish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Crossed {
    /// Front ends.
    pub vips: Moves<VipKey>,
    /// [`Tally::live`].
    pub live: Moves<Endpoint>,
    /// [`Tally::dr`].
    pub dr: Moves<Endpoint>,
    /// [`Tally::steered`].
    pub steered: Moves<Endpoint>,
    /// [`Tally::addrs`].
    pub addrs: Moves<Addr>,
    /// [`Tally::nat_addrs`].
    pub nat_addrs: Moves<Addr>,
    /// [`Tally::local_addrs`].
    pub local_addrs: Moves<Addr>,
}

impl Crossed {
    /// Whether some endpoint flows may go to is gone (its UDP/SCTP flows
    /// are flushed then).
    pub fn left(&self) -> bool {
        !self.live.down.is_empty() || !self.dr.down.is_empty()
    }
}

#[cfg(test)]
#[path = "tally_tests.rs"]
mod tests;
