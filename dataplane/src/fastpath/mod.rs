//! The XDP fast path for established flows (`--fast-path xdp`, issue 13).
//!
//! The AF_XDP workers keep doing everything: parsing, scheduling,
//! connection tracking, TCP state changes, ICMP errors, rejects. Once a
//! worker has forwarded `--fast-path-after` packets of one direction of an
//! established flow ([`publish`]: short connections never get there, and
//! their close then costs no map operation), it publishes the rewrite of
//! that direction ([`plan`]) into the BPF hash map `fast_flows` of the
//! interface the packet came in on; the steering program
//! (`bpf/fastpath.h`) then rewrites that direction's later packets itself and
//! `XDP_REDIRECT`s them to the egress interface, without a copy into user
//! space: what hardware flow offload does for DPDK and OVS, with XDP as the
//! hardware.
//!
//! The user-space flow table stays the truth. Only packets that need no
//! judgement take the fast path (TCP without SYN, FIN or RST, UDP; TTL above
//! 1; within the egress MTU; untagged, unfragmented, IPv6 without extension
//! headers; well-formed as the parser wants them, or a worker drops and
//! counts them): every FIN and RST still reaches a worker, which updates the
//! flow's state and withdraws its entries. A sweep ([`sync::Sweeper`], a
//! thread of its own, also run by the readers of the counters before they
//! read) reads every entry's last-seen time and counters, refreshes the flow
//! record (so timeouts and listings stay right), credits the packets to the
//! backend's traffic counters and to the rx/tx of the worker that published
//! the entry, and removes the entries of flows that closed, aged out, lost
//! their backend or whose next hop moved. Entries leave the map with their
//! last counts (lookup-and-delete), so no forwarded packet goes uncounted.
//!
//! Files: [`entry`] (map layouts, encode/decode), [`rewrite`] (what to
//! publish for a flow, and a Rust mirror of the XDP rewrite that the tests
//! hold against the pipeline), [`map`] (the safe wrapper over the BPF map),
//! [`publish`] (the worker side), [`sync`] (the sweep).

pub mod entry;
pub mod map;
pub mod publish;
pub mod rewrite;
pub mod sync;

pub use entry::{FastKey, FastValue};
pub use map::{FastMap, FastStats};
pub use publish::Publisher;
pub use rewrite::plan;

/// Whether the fast path is used (`--fast-path`; default `xdp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Every packet goes through the AF_XDP workers.
    Off,
    /// Established flows are forwarded by the XDP program.
    #[default]
    Xdp,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "off" => Ok(Mode::Off),
            "xdp" => Ok(Mode::Xdp),
            _ => Err(format!("unknown fast path {s:?} (expected off or xdp)")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::Xdp => "xdp",
        })
    }
}
