//! Sluice's packet path.
//!
//! Everything here except [`xsk`] and [`steer`] is pure: packet views and
//! rewrites over byte slices ([`wire`], [`forward`]), the connection-tracking
//! [`flow_table`], the schedulers ([`sched`]), the compiled [`service`] table
//! and the sans-I/O [`pipeline`] that ties them together. The [`worker`] loop
//! drives the pipeline over a [`port::Port`]: the AF_XDP port ([`xsk`]) in
//! production, the in-memory port ([`port::MemPort`]) in tests and benches.
#![deny(missing_docs)]

pub mod affinity;
pub mod doorbell;
pub mod fastpath;
pub mod flow_table;
pub mod forward;
pub mod frag;
pub mod host_sock;
pub mod pipeline;
pub mod port;
pub mod prefetch;
pub mod restore;
pub mod sched;
pub mod service;
pub mod shm;
pub mod snat;
pub mod steer;
pub mod thp;
pub mod token_bucket;
pub mod traffic;
pub mod types;
#[cfg(test)]
mod udp_fixture;
pub mod wire;
pub mod worker;
pub mod xsk;
