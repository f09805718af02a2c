//! Forwarding methods: how a frame is rewritten once a backend is chosen.
//!
//! One file per method, each a set of pure functions over the frame bytes and
//! the [`crate::wire::Parsed`] offsets, so each can be tested byte for byte
//! and none allocates or panics:
//!
//! - [`nat`]: full NAT of the 5-tuple (both addresses and both ports) with
//!   RFC 1624 incremental checksum updates; the reply direction is the same
//!   rewrite with the reversed tuple.
//! - [`dr`]: direct routing (IPVS `-g`): only the Ethernet addresses change;
//!   the real server owns the VIP and answers the client directly.
//!
//! FULLNAT with TCP option carrying the client address, and IP-in-IP
//! encapsulation (`ipip.rs`) are planned as sibling modules behind the same
//! shape.

pub mod dr;
pub mod nat;
