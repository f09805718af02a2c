//! Sluice's control plane: the service model and its config file, the
//! compiler into the dataplane's immutable tables, kernel lookups
//! (netlink) and the `sluice run` driver.

pub mod config;
pub mod dns;
pub mod health;
pub mod model;
pub mod netlink;
pub mod run;
pub mod store;
