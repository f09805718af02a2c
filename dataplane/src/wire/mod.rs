//! Zero-copy views of the headers Sluice reads and rewrites, and the parser
//! that turns a frame into a flow key.
//!
//! One file per protocol, in the style of smoltcp's `wire` module: a
//! `Packet<T: AsRef<[u8]>>` (or `Frame` for Ethernet) wraps a byte buffer, a
//! private `field` module names the byte ranges, `new_checked` validates the
//! lengths once, getters need `AsRef<[u8]>` and setters `AsMut<[u8]>`. Views
//! own nothing and allocate nothing, so they work directly on UMEM frames.
//!
//! Each module states its no-panic contract: a view built with `new_checked`
//! never panics. [`parse()`] builds only checked views, so it never panics on any
//! input; the `checksum` helpers never panic at all.

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod icmp_error;
pub mod ipv4;
pub mod ipv6;
pub mod parse;
pub mod reply;
pub mod sctp;
pub mod tcp;
pub mod udp;

pub use icmp_error::{parse_icmp_error, translate_icmp_error, IcmpError};
pub use parse::{parse, ParseError, Parsed};
pub use reply::{icmp_port_unreachable, tcp_rst, tcp_rst_same_direction};
pub use tcp::tcp_flags;
