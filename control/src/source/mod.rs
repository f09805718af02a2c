//! The sources that write the desired-state store: the config file (at
//! start and on SIGHUP) and the API (`crate::api`). Each write records its
//! owner (a field manager), so a source deletes only what it wrote.

pub mod file;
