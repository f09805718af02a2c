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
//! - [`fullnat`]: FULLNAT (DPVS `--fullnat`): NAT of both addresses with
//!   the client always translated to one of the service's local addresses
//!   and a port of the worker's share.
//!
//! - [`ipip`]: IP-in-IP tunnelling (IPVS `-i`): the packet goes out
//!   unchanged inside an outer IPv4/IPv6 header to the real server.
//!
//! - [`ttl`]: what every method also does, as a router: a packet with a
//!   TTL / hop limit of 0 or 1 is answered with ICMP time exceeded, the
//!   rest leave with one less.
//!
//! DPVS's TOA (the client's address in a TCP option) is not done.

pub mod dr;
pub mod fullnat;
pub mod ipip;
pub mod nat;
pub mod ttl;
