//! Session affinity (`sessionAffinity: ClientIP`, IPVS persistence): which
//! backend a client was last sent to, per service, with an idle timeout.
//!
//! A fixed array of 16-byte slots shared by all workers, 4-way set
//! associative, no lock and no allocation after construction. A slot holds a
//! 64-bit key tag (hash of client address and service identity, never 0) and
//! a value word `backend_hash:32 | last_seen:32`. Entries are refreshed on
//! every new flow that uses them (like the iptables `recent` match kube-proxy
//! uses, which is updated per new connection), and a new entry replaces an
//! empty, expired or else the stalest slot of its set.
//!
//! Affinity is a preference, not a correctness property: the two words of a
//! slot are written without a lock, so a reader racing a writer that is
//! replacing the slot may read the new value under the old key. The value
//! is only a hash of a backend that the caller looks up in the service's
//! current backends; a wrong or stale one is simply not found there, and
//! the flow is scheduled normally. The service identity is a hash of the
//! service port's name, so affinity is shared by a service's ClusterIP,
//! NodePort and LoadBalancer front ends (as kube-proxy's per-endpoint
//! `recent` lists are) and survives reloads.
//!
//! With a persistence netmask (`ipvsadm -M`, [`crate::service::ServiceSpec::affinity_prefix`])
//! the key is the client's address masked to its first N bits
//! ([`masked_client`]), so a whole client subnet shares one entry, as an
//! IPVS persistence template keyed by `caddr & netmask` does.
//!
//! For `ipvsadm -Lnc` (persistence templates) a second array, beside the
//! slots and never read on the packet path, keeps each slot's (masked)
//! client and service identity: [`AffinityTable::for_each`] walks the
//! slots and yields an entry only when the key tag recomputed from that
//! side record matches the slot's, so a record torn by a concurrent
//! writer is skipped rather than misreported. It costs one more cache
//! line written per new entry ([`AffinityTable::record`]), none per
//! lookup.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::Addr;

const WAYS: usize = 4;

#[derive(Debug, Default)]
struct Slot {
    key: AtomicU64,
    val: AtomicU64,
}

/// Who a slot belongs to, for listings only: the masked client's 16
/// bytes and the service identity.
#[derive(Debug, Default)]
struct Owner {
    client_hi: AtomicU64,
    client_lo: AtomicU64,
    service: AtomicU64,
}

/// The shared affinity table.
#[derive(Debug)]
pub struct AffinityTable {
    slots: Box<[Slot]>,
    /// One per slot, same index.
    owners: Box<[Owner]>,
    sets: usize,
}

/// One live entry, as [`AffinityTable::for_each`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityEntry {
    /// The client as keyed (masked by the persistence netmask).
    pub client: Addr,
    /// The service identity ([`crate::service::Service::affinity_id`]).
    pub service: u64,
    /// [`backend_hash`] of the backend it sticks to.
    pub backend: u32,
    /// When it was last used (the table's clock, seconds).
    pub last_seen: u32,
}

/// 64-bit FNV-1a.
#[inline]
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The hash a backend is remembered by.
#[inline]
pub fn backend_hash(addr: &Addr, port: u16) -> u32 {
    let mut b = [0u8; 18];
    b[..16].copy_from_slice(&addr.0);
    b[16..].copy_from_slice(&port.to_be_bytes());
    let h = fnv64(&b);
    (h ^ (h >> 32)) as u32
}

/// `client` with every bit after its first `prefix` cleared (`None`: the
/// whole address). An IPv4 address counts its bits from its own first
/// octet, not from the mapped form's, so it stays IPv4-mapped whatever the
/// prefix; a prefix longer than the family's address keeps it whole
/// ([`crate::service::ServiceTable::build`] refuses those).
#[inline]
pub fn masked_client(client: &Addr, prefix: Option<u8>) -> Addr {
    let Some(p) = prefix else {
        return *client;
    };
    // Bits of the 16-byte form to keep.
    let keep = if client.is_v4() {
        96 + usize::from(p.min(32))
    } else {
        usize::from(p.min(128))
    };
    let mut out = [0u8; 16];
    for (i, (o, c)) in out.iter_mut().zip(client.0).enumerate() {
        let bits = keep.saturating_sub(i * 8).min(8);
        // The high `bits` bits of the byte (0 → none, 8 → all).
        let mask = !(0xffu16 >> bits) as u8;
        *o = c & mask;
    }
    Addr(out)
}

#[inline]
fn key_tag(client: &Addr, service: u64) -> u64 {
    let mut b = [0u8; 24];
    b[..16].copy_from_slice(&client.0);
    b[16..].copy_from_slice(&service.to_le_bytes());
    fnv64(&b) | 1
}

impl AffinityTable {
    /// Bytes one entry costs (the slot, and its owner record for listings).
    pub const BYTES_PER_ENTRY: usize = std::mem::size_of::<Slot>() + std::mem::size_of::<Owner>();

    /// A table of at least `capacity` entries (rounded up to a power of two).
    pub fn new(capacity: usize) -> AffinityTable {
        let n = capacity.max(WAYS).next_power_of_two();
        AffinityTable {
            slots: (0..n).map(|_| Slot::default()).collect(),
            owners: (0..n).map(|_| Owner::default()).collect(),
            sets: n / WAYS,
        }
    }

    #[inline]
    fn set_start(&self, tag: u64) -> usize {
        (((tag >> 1) as usize) % self.sets) * WAYS
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn set(&self, tag: u64) -> &[Slot] {
        let s = self.set_start(tag);
        &self.slots[s..s + WAYS]
    }

    /// The backend hash remembered for `client` on `service` if it was used
    /// within `timeout` seconds before `now`; refreshes it.
    #[inline]
    pub fn lookup(&self, client: &Addr, service: u64, timeout: u32, now: u32) -> Option<u32> {
        let tag = key_tag(client, service);
        for slot in self.set(tag) {
            if slot.key.load(Ordering::Acquire) != tag {
                continue;
            }
            let v = slot.val.load(Ordering::Relaxed);
            let last = v as u32;
            if now.wrapping_sub(last) > timeout {
                return None;
            }
            let backend = (v >> 32) as u32;
            slot.val
                .store(u64::from(backend) << 32 | u64::from(now), Ordering::Relaxed);
            return Some(backend);
        }
        None
    }

    /// Remembers that `client` was sent to `backend` on `service` at `now`.
    pub fn record(&self, client: &Addr, service: u64, backend: u32, now: u32) {
        let tag = key_tag(client, service);
        let set = self.set(tag);
        let val = u64::from(backend) << 32 | u64::from(now);
        // Same key, else an empty slot, else the stalest.
        let mut victim = 0;
        let mut oldest_age = 0u32;
        for (i, slot) in set.iter().enumerate() {
            let k = slot.key.load(Ordering::Acquire);
            if k == tag || k == 0 {
                victim = i;
                break;
            }
            let age = now.wrapping_sub(slot.val.load(Ordering::Relaxed) as u32);
            if age >= oldest_age {
                oldest_age = age;
                victim = i;
            }
        }
        let slot = &set[victim];
        let owner = &self.owners[self.set_start(tag) + victim];
        let (hi, lo) = client.0.split_at(8);
        owner.client_hi.store(word(hi), Ordering::Relaxed);
        owner.client_lo.store(word(lo), Ordering::Relaxed);
        owner.service.store(service, Ordering::Relaxed);
        slot.val.store(val, Ordering::Relaxed);
        slot.key.store(tag, Ordering::Release);
    }

    /// Calls `f` with every entry used within `timeout(service)` seconds
    /// before `now` (None: that service keeps no affinity now, skipped).
    /// Read-only and lock-free, off the packet path: an entry being
    /// replaced while it is read is skipped (its owner record does not
    /// hash to its key tag) or reported as either its old or new self.
    pub fn for_each(
        &self,
        now: u32,
        timeout: impl Fn(u64) -> Option<u32>,
        mut f: impl FnMut(AffinityEntry),
    ) {
        for (slot, owner) in self.slots.iter().zip(self.owners.iter()) {
            let tag = slot.key.load(Ordering::Acquire);
            if tag == 0 {
                continue;
            }
            let mut c = [0u8; 16];
            c[..8].copy_from_slice(&owner.client_hi.load(Ordering::Relaxed).to_be_bytes());
            c[8..].copy_from_slice(&owner.client_lo.load(Ordering::Relaxed).to_be_bytes());
            let client = Addr(c);
            let service = owner.service.load(Ordering::Relaxed);
            let v = slot.val.load(Ordering::Relaxed);
            if key_tag(&client, service) != tag {
                continue;
            }
            let last_seen = v as u32;
            match timeout(service) {
                Some(t) if now.wrapping_sub(last_seen) <= t => f(AffinityEntry {
                    client,
                    service,
                    backend: (v >> 32) as u32,
                    last_seen,
                }),
                _ => {}
            }
        }
    }

    /// Forgets every entry (tests; a reload keeps affinity).
    pub fn clear(&self) {
        for s in self.slots.iter() {
            s.key.store(0, Ordering::Relaxed);
            s.val.store(0, Ordering::Relaxed);
        }
    }
}

/// Eight bytes as a big-endian word.
#[inline]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    u64::from_be_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8) -> Addr {
        Addr::from_v4([198, 18, 0, last])
    }

    #[test]
    fn remembers_until_idle_timeout() {
        let t = AffinityTable::new(64);
        assert_eq!(t.lookup(&a(1), 7, 10, 100), None);
        t.record(&a(1), 7, 42, 100);
        assert_eq!(t.lookup(&a(1), 7, 10, 105), Some(42));
        // The hit at 105 refreshed it: still there at 115, gone at 126.
        assert_eq!(t.lookup(&a(1), 7, 10, 115), Some(42));
        assert_eq!(t.lookup(&a(1), 7, 10, 126), None);
        // Other clients and other services are separate.
        t.record(&a(1), 7, 42, 200);
        assert_eq!(t.lookup(&a(2), 7, 10, 200), None);
        assert_eq!(t.lookup(&a(1), 8, 10, 200), None);
        // Re-recording replaces the backend.
        t.record(&a(1), 7, 43, 201);
        assert_eq!(t.lookup(&a(1), 7, 10, 201), Some(43));
    }

    #[test]
    fn a_full_set_evicts_the_stalest() {
        let t = AffinityTable::new(4); // one set of four
        for c in 0..4u8 {
            t.record(&a(c), 1, u32::from(c), 100 + u32::from(c));
        }
        t.record(&a(9), 1, 9, 200);
        assert_eq!(t.lookup(&a(0), 1, 1000, 200), None, "stalest evicted");
        for c in 1..4u8 {
            assert_eq!(t.lookup(&a(c), 1, 1000, 200), Some(u32::from(c)));
        }
        assert_eq!(t.lookup(&a(9), 1, 1000, 200), Some(9));
    }

    #[test]
    fn persistence_netmask_masks_the_client() {
        let c = Addr::from_v4([198, 18, 7, 201]);
        assert_eq!(masked_client(&c, None), c);
        assert_eq!(masked_client(&c, Some(32)), c);
        assert_eq!(masked_client(&c, Some(24)), Addr::from_v4([198, 18, 7, 0]));
        assert_eq!(masked_client(&c, Some(20)), Addr::from_v4([198, 18, 0, 0]));
        let zero = masked_client(&c, Some(0));
        assert_eq!(zero, Addr::from_v4([0, 0, 0, 0]));
        assert!(zero.is_v4(), "an IPv4 client stays IPv4 under /0");
        let v6 = |last: u8, fifth: u8| {
            Addr::from_v6([
                0x20, 0x01, 0x0d, 0xb8, 0, fifth, 0, 1, 0xaa, 0xbb, 0, 0, 0, 0, 0, last,
            ])
        };
        let m = masked_client(&v6(7, 3), Some(64));
        assert_eq!(m, masked_client(&v6(9, 3), Some(64)), "one /64");
        assert_ne!(m, masked_client(&v6(7, 4), Some(64)), "another /64");
        assert_eq!(
            m,
            Addr::from_v6([0x20, 0x01, 0x0d, 0xb8, 0, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(masked_client(&v6(7, 3), Some(128)), v6(7, 3));
        assert_eq!(masked_client(&v6(7, 3), Some(0)), Addr::UNSPECIFIED);
    }

    #[test]
    fn one_subnet_shares_one_entry() {
        let t = AffinityTable::new(64);
        let (x, y) = (
            Addr::from_v4([198, 18, 7, 1]),
            Addr::from_v4([198, 18, 7, 2]),
        );
        let other = Addr::from_v4([198, 18, 8, 1]);
        t.record(&masked_client(&x, Some(24)), 7, 42, 100);
        assert_eq!(t.lookup(&masked_client(&y, Some(24)), 7, 10, 101), Some(42));
        assert_eq!(t.lookup(&masked_client(&other, Some(24)), 7, 10, 101), None);
        assert_eq!(t.lookup(&y, 7, 10, 101), None, "unmasked: its own entry");
    }

    #[test]
    fn backend_hash_distinguishes_ports_and_addresses() {
        let x = backend_hash(&a(1), 80);
        assert_ne!(x, backend_hash(&a(1), 81));
        assert_ne!(x, backend_hash(&a(2), 80));
        assert_eq!(x, backend_hash(&a(1), 80));
    }

    fn listed(t: &AffinityTable, now: u32, timeout: u32) -> Vec<AffinityEntry> {
        let mut v = Vec::new();
        t.for_each(now, |s| (s != 99).then_some(timeout), |e| v.push(e));
        v.sort_by_key(|e| (e.service, e.client.0));
        v
    }

    #[test]
    fn listing_reports_live_entries_with_their_clients() {
        let t = AffinityTable::new(64);
        let v6 = Addr::from_v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        t.record(&a(1), 7, 42, 100);
        t.record(&v6, 8, 43, 103);
        t.record(&a(2), 99, 44, 103);
        let e = listed(&t, 105, 10);
        assert_eq!(
            e,
            vec![
                AffinityEntry {
                    client: a(1),
                    service: 7,
                    backend: 42,
                    last_seen: 100
                },
                AffinityEntry {
                    client: v6,
                    service: 8,
                    backend: 43,
                    last_seen: 103
                },
            ],
            "service 99 keeps no affinity: not listed"
        );
        // A lookup refreshes what the listing reports; idle ones go.
        assert_eq!(t.lookup(&a(1), 7, 10, 109), Some(42));
        let e = listed(&t, 114, 10);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].client, e[0].last_seen), (a(1), 109));
        assert!(listed(&t, 122, 10).is_empty());
    }

    #[test]
    fn a_torn_owner_record_is_not_listed() {
        let t = AffinityTable::new(4);
        t.record(&a(1), 7, 42, 100);
        // As if a writer had stored another owner but not yet its key.
        t.owners[t.set_start(key_tag(&a(1), 7))]
            .service
            .store(8, Ordering::Relaxed);
        assert!(listed(&t, 100, 10).is_empty());
    }

    #[test]
    fn concurrent_use_is_safe() {
        let t = std::sync::Arc::new(AffinityTable::new(256));
        let hs: Vec<_> = (0..4u8)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let c = a((i % 200) as u8);
                        t.record(&c, u64::from(w), i, i);
                        let _ = t.lookup(&c, u64::from(w), 5, i);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        t.clear();
        assert_eq!(t.lookup(&a(1), 0, 1000, 1), None);
    }
}
