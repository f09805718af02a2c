//! The service table's slots: a copy-on-write array kept in chunks.
//!
//! Why chunks: every change builds a new table from the one in service
//! and the old one is dropped once the workers moved on. With one flat
//! vector of `Arc<Service>`, both cost one reference-count write per
//! service — at 100k services, a third of a change's time. Chunks of
//! [`CHUNK`] slots behind their own `Arc` make the copy one pointer per
//! chunk, and a write copies only the chunk it lands in
//! ([`Arc::make_mut`]). A lookup pays one more load (the chunk pointer,
//! a small array that stays in cache).

use std::sync::Arc;

use super::Service;

/// log2 of the slots per chunk.
const CHUNK_BITS: usize = 10;
/// Slots per chunk.
pub(crate) const CHUNK: usize = 1 << CHUNK_BITS;

type Chunk = [Option<Arc<Service>>; CHUNK];

fn empty_chunk() -> Arc<Chunk> {
    Arc::new(std::array::from_fn(|_| None))
}

/// A vector of optional services, cheap to clone and to change a little.
#[derive(Clone, Default)]
pub(crate) struct Slots {
    chunks: Vec<Arc<Chunk>>,
    len: usize,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl Slots {
    /// Slots held (used or free).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The service in slot `i`, if any.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&Arc<Service>> {
        if i >= self.len {
            return None;
        }
        self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)].as_ref()
    }

    /// Puts `v` in slot `i` (which must be below [`Slots::len`]); copies
    /// the slot's chunk first if another table shares it. Setting a free
    /// slot free again copies nothing.
    pub(crate) fn set(&mut self, i: usize, v: Option<Arc<Service>>) {
        assert!(i < self.len, "slot {i} beyond {}", self.len);
        if v.is_none() && self.get(i).is_none() {
            return;
        }
        Arc::make_mut(&mut self.chunks[i >> CHUNK_BITS])[i & (CHUNK - 1)] = v;
    }

    /// Frees slot `i`; returns what it held.
    pub(crate) fn take(&mut self, i: usize) -> Option<Arc<Service>> {
        let s = self.get(i)?.clone();
        self.set(i, None);
        Some(s)
    }

    /// Grows to `n` slots (new ones free) or shrinks to `n` (dropping the
    /// services beyond).
    pub(crate) fn resize(&mut self, n: usize) {
        for i in n..self.len {
            self.set(i, None);
        }
        let chunks = n.div_ceil(CHUNK);
        self.chunks.truncate(chunks);
        while self.chunks.len() < chunks {
            self.chunks.push(empty_chunk());
        }
        self.len = n;
    }

    /// Every slot in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Option<&Arc<Service>>> + '_ {
        (0..self.len).map(move |i| self.get(i))
    }

    /// Whether chunk `c` of `self` and of `other` are one and the same.
    fn shares_chunk(&self, other: &Slots, c: usize) -> bool {
        match (self.chunks.get(c), other.chunks.get(c)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The slots of `self` whose service `next` does not hold in the same
    /// slot (the same `Arc`), the others free: chunks both share are
    /// skipped whole.
    pub(crate) fn unshared_with(&self, next: &Slots) -> Slots {
        let mut out = Slots::default();
        out.resize(self.len);
        for c in 0..self.chunks.len() {
            if self.shares_chunk(next, c) {
                continue;
            }
            for i in c * CHUNK..((c + 1) * CHUNK).min(self.len) {
                let Some(s) = self.get(i) else { continue };
                match next.get(i) {
                    Some(n) if Arc::ptr_eq(s, n) => {}
                    _ => out.set(i, Some(Arc::clone(s))),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceSpec;

    fn svc(i: u16) -> Arc<Service> {
        let spec = ServiceSpec {
            name: format!("s{i}"),
            ..ServiceSpec::default()
        };
        Arc::new(Service::new(spec, None, 1, 0).0)
    }

    /// A clone shares every chunk; a write copies only its own, and the
    /// original is unchanged.
    #[test]
    fn a_write_copies_one_chunk_and_leaves_the_original() {
        let mut a = Slots::default();
        a.resize(3 * CHUNK + 5);
        let s1 = svc(1);
        a.set(CHUNK + 7, Some(s1.clone()));
        let mut b = a.clone();
        assert!((0..a.chunks.len()).all(|c| a.shares_chunk(&b, c)));
        let s2 = svc(2);
        b.set(2 * CHUNK, Some(s2.clone()));
        assert!(a.shares_chunk(&b, 1) && !a.shares_chunk(&b, 2));
        assert!(a.get(2 * CHUNK).is_none(), "the original is unchanged");
        assert!(Arc::ptr_eq(b.get(2 * CHUNK).unwrap(), &s2));
        assert!(Arc::ptr_eq(b.get(CHUNK + 7).unwrap(), &s1));
        assert!(b.get(3 * CHUNK + 5).is_none(), "beyond the end");
        // Unshared: only what b lacks in the same slot.
        let u = a.unshared_with(&b);
        assert_eq!(u.iter().flatten().count(), 0, "b holds all of a");
        let gone = b.take(CHUNK + 7).unwrap();
        assert!(Arc::ptr_eq(&gone, &s1));
        let u = a.unshared_with(&b);
        assert_eq!(u.iter().flatten().count(), 1);
        assert!(Arc::ptr_eq(u.get(CHUNK + 7).unwrap(), &s1));
    }

    /// Shrinking drops the services beyond and growing adds free slots.
    #[test]
    fn resize_shrinks_and_grows() {
        let mut a = Slots::default();
        a.resize(CHUNK + 2);
        let s = svc(1);
        a.set(CHUNK + 1, Some(s.clone()));
        assert_eq!(Arc::strong_count(&s), 2);
        a.resize(CHUNK);
        assert_eq!(Arc::strong_count(&s), 1, "dropped with its slot");
        assert_eq!(a.chunks.len(), 1);
        a.resize(CHUNK + 2);
        assert!(a.get(CHUNK + 1).is_none(), "a grown slot is free");
        assert_eq!(a.iter().count(), CHUNK + 2);
    }
}
