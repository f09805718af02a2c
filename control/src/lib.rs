//! Sluice's control plane: the service model and its config file, the
//! compiler into the dataplane's immutable tables, the desired-state store
//! and its reconciler, its sources (file, API), kernel lookups (netlink),
//! the `sluice run` daemon and the CLI (`sluice apply/get/delete`).

pub mod api;
pub mod bgp;
pub mod caps;
pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod digest;
pub mod dns;
pub mod health;
pub mod host_traffic;
pub mod links;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod nexthop;
pub mod nodeport_addresses;
pub mod persist;
pub mod reconcile;
pub mod service_cidr;
pub mod snat;
pub mod source;
pub mod stats;
pub mod store;
pub mod xdp_features;
