//! Stable ids: the service slots of a [`super::ServiceTable`] and the
//! backend ids inside a [`super::Service`].
//!
//! A flow record names its service and backend by number (24 and 16 bits,
//! [`crate::flow_table::layout`]). A reload must not make those numbers
//! name something else while flows created under them may still be alive,
//! so a front end keeps its slot and a backend its id for as long as it
//! exists, and a number that falls free is handed out again only once it
//! is old enough: freed in a table version at or before the `reuse_upto`
//! version the control plane passes (it knows when the flows of a version
//! must be gone). Only when the whole number space is taken is the oldest
//! freed number reused early; the data path's checks of a flow's indices
//! against its own keys (`pipeline::count_traffic`, `tunnel_ends`) cover
//! that case.

use std::collections::VecDeque;

/// One number space: the numbers handed out and the freed ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdSpace {
    /// Freed numbers with the table version that freed them, oldest
    /// first (versions only grow).
    freed: VecDeque<(u32, u64)>,
    /// One past the highest number ever handed out.
    next: u32,
}

impl IdSpace {
    /// The space `0..n`, all in use (a table built from scratch).
    pub(crate) fn dense(n: u32) -> IdSpace {
        IdSpace {
            freed: VecDeque::new(),
            next: n,
        }
    }

    /// Gives `id` back in table version `version`.
    pub(crate) fn free(&mut self, id: u32, version: u64) {
        self.freed.push_back((id, version));
    }

    /// A number for a new member: the oldest freed one if it was freed at
    /// or before `reuse_upto`, else a fresh one below `limit`, else (the
    /// space is full) the oldest freed one anyway. None when all `limit`
    /// numbers are in use.
    pub(crate) fn take(&mut self, reuse_upto: u64, limit: u32) -> Option<u32> {
        if let Some(&(id, v)) = self.freed.front() {
            if v <= reuse_upto {
                self.freed.pop_front();
                return Some(id);
            }
        }
        if self.next < limit {
            self.next += 1;
            return Some(self.next - 1);
        }
        self.freed.pop_front().map(|(id, _)| id)
    }

    /// One past the highest number handed out: the length of a vector
    /// indexed by these numbers.
    pub(crate) fn end(&self) -> u32 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_numbers_wait_for_their_version() {
        let mut s = IdSpace::dense(3);
        s.free(1, 5);
        assert_eq!(s.take(4, 10), Some(3), "freed at 5, not reusable at 4");
        assert_eq!(s.take(5, 10), Some(1), "reusable from 5 on");
        assert_eq!(s.end(), 4);
    }

    #[test]
    fn a_full_space_reuses_the_oldest_freed_number_early() {
        let mut s = IdSpace::dense(2);
        s.free(1, 7);
        s.free(0, 8);
        assert_eq!(s.take(0, 2), Some(1));
        assert_eq!(s.take(0, 2), Some(0));
        assert_eq!(s.take(0, 2), None);
    }
}
