//! The sources that write the desired-state store: the config file (at
//! start and on SIGHUP), the API (`crate::api`) and the cluster watch. Each write records its
//! owner (a field manager), so a source deletes only what it wrote.

pub mod cluster;
pub mod file;
