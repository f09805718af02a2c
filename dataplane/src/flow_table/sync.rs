//! The atomics of the flow table's stores: std's, or loom's when the crate's
//! tests are built with `RUSTFLAGS="--cfg loom"`, so that the loom models
//! (`loom_tests.rs`) check the real store code, not a copy of it.
//!
//! `all(test, loom)` rather than `loom` alone: loom is a dev-dependency, so
//! only the crate's own test build has it (the same convention as `bytes`).

#[cfg(all(test, loom))]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(all(test, loom)))]
pub use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// A busy-wait hint; under loom a yield, so that a spinning thread lets the
/// model schedule the thread it waits for.
#[inline]
pub fn spin_loop() {
    #[cfg(all(test, loom))]
    loom::thread::yield_now();
    #[cfg(not(all(test, loom)))]
    std::hint::spin_loop();
}
