//! The one error type of the config loader.
//!
//! The parse and check errors name where the problem is (file and line),
//! and the semantic ones also name the Kubernetes object (`kind namespace/name`) and
//! the field path inside it (`spec.ports[1].port`), so that a user can go
//! straight to the line to fix. Rendered like:
//!
//! ```text
//! lb.yaml:12: Service default/web: spec.ports[0].port: must be between 1 and 65535, got 0
//! ```
//!
//! `origin` is an `Arc<str>` rather than a `String` only to keep the error
//! small (clippy's `result_large_err`): every error of one load shares it.

use std::path::PathBuf;
use std::sync::Arc;

use sluice_dataplane::service::TableError;

/// Why a config could not be loaded. Nothing is applied when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The text is not valid YAML, or a field has the wrong YAML type (a
    /// string where a number is expected, a list where a mapping is, …).
    #[error("{origin}:{line}:{column}: {message}")]
    Yaml {
        /// Where the text came from (a file path, or a label given by the caller).
        origin: Arc<str>,
        /// 1-based line in the whole input.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, with the object and field path when known
        /// (`Service default/web: spec.ports[0].port: invalid type: …`).
        message: String,
    },

    /// A well-formed object says something Sluice refuses: a value out of
    /// range, a missing required field, an unsupported kind or type, a
    /// duplicate, an Endpoints object whose Service is not in the config, a
    /// node port claimed twice (the reason names the other claimant).
    #[error("{}{kind} {object}: {field}: {reason}", location(origin, *line))]
    Invalid {
        /// Where the text came from.
        origin: Arc<str>,
        /// 1-based line where the YAML document holding the object starts
        /// (0 for an object that came from no file: the API's).
        line: usize,
        /// The object's `kind` (`Service`, `EndpointSlice`, …).
        kind: String,
        /// The object as `namespace/name`.
        object: String,
        /// Path of the offending field inside the object, e.g.
        /// `spec.ports[1].port` (prefixed by `items[N].` inside a `List`).
        field: String,
        /// What is wrong and, where useful, the value found.
        reason: String,
    },

    /// The [`super::CompileCtx`] the config was compiled for is unusable (an
    /// empty node-port range). A caller's mistake, not the file's.
    #[error("compile context: {0}")]
    Context(String),

    /// The compiled services conflict with each other (two services claim
    /// the same cluster IP, port and protocol). The message names both
    /// services; `From` lets callers that build tables themselves (reload)
    /// report the same error.
    #[error("{0}")]
    Table(#[from] TableError),

    /// A FULLNAT local address (`sluice.dev/local-addresses`) that no
    /// interface of the host has: the kernel would not answer ARP for it,
    /// so the backends' replies to it would never arrive.
    #[error("service {service}: local address {addr} is not an address of this host (replies to it would never reach it); add it to an interface first")]
    LocalAddrNotOwn {
        /// The service (`namespace/name:port`).
        service: String,
        /// The address.
        addr: std::net::IpAddr,
    },

    /// A keepalived.conf that Sluice refuses (syntax, an unsupported or
    /// unknown keyword, a bad value), with its file and line.
    #[error("{0}")]
    Keepalived(#[from] super::keepalived::KeepalivedError),

    /// The host's addresses could not be listed to check local addresses.
    #[error("listing the host's addresses to check FULLNAT local addresses: {0}")]
    HostAddrs(String),
}

/// `origin:line: `, or nothing for an object that has no line.
fn location(origin: &str, line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!("{origin}:{line}: ")
    }
}
