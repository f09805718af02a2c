//! The atomics of the flow table's stores: std's, or loom's when the crate's
//! tests are built with the `loom` feature (`cargo test --release -p
//! sluice-dataplane --features loom --lib loom`), so that the loom models
//! (`loom_tests.rs`) check the real store code, not a copy of it.
//!
//! `all(test, feature = "loom")` rather than the feature alone: only the
//! crate's own test build swaps its atomics, so a build that merely
//! unifies the feature in keeps std's. A feature rather than `--cfg loom`
//! in RUSTFLAGS: that flag changes every crate's hash and so rebuilt every
//! dependency (about 12 minutes of CI); the feature rebuilds this crate
//! alone.

#[cfg(all(test, feature = "loom"))]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(all(test, feature = "loom")))]
pub use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// A busy-wait hint; under loom a yield, so that a spinning thread lets the
/// model schedule the thread it waits for.
#[inline]
pub fn spin_loop() {
    #[cfg(all(test, feature = "loom"))]
    loom::thread::yield_now();
    #[cfg(not(all(test, feature = "loom")))]
    std::hint::spin_loop();
}
