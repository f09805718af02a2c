//! keepalived.conf's LVS part, read unchanged with `--config`: each
//! `virtual_server` block becomes a `VirtualService` object (as the JSON
//! the store takes), so that compile, `ipvsadm -Ln`, the API listing and
//! the health checks are the YAML path's own.
//!
//! A file is taken for keepalived.conf by its syntax ([`is_keepalived`]):
//! its first word that is not a comment is one of keepalived's top-level
//! keywords ([`TOP_KEYWORDS`]); anything else stays YAML.
//!
//! What each keyword becomes (the README has the full table):
//!
//! * `virtual_server IP PORT` → `spec.address`/`spec.port`, named like
//!   `ipvsadm` names its objects (`ipvs/tcp-198-18-0-100-80`), so that
//!   `sluice ipvsadm` edits and lists them as its own.
//! * `protocol`, `lb_algo`/`lvs_sched`, `lb_kind`/`lvs_method` (NAT →
//!   masq, DR → route, TUN → tunnel; keepalived's default NAT),
//!   `persistence_timeout`, `persistence_granularity`, the scheduler flags
//!   (`sh-port`, `mh-fallback`, …) → the same fields as ipvsadm's options.
//! * `real_server IP PORT` with `weight` (default 1), `uthreshold`,
//!   `lthreshold`, a per-server `lb_kind`.
//! * `TCP_CHECK` and `HTTP_GET` (`url { path status_code }`) →
//!   `spec.healthCheck`, with keepalived's timing: `delay_loop` (default
//!   60 s) is the interval, `connect_timeout` (default 5 s, at most the
//!   interval) the timeout, and since keepalived takes a server out after
//!   `retry` (default 1) retries of a failed check and back at its first
//!   success, fall is `retry + 1` and rise 1. A failed server is removed
//!   (keepalived's default) or, with `inhibit_on_failure`, given weight 0.
//!
//! What Sluice cannot do and that would change forwarding or checking
//! (`MISC_CHECK`, `SSL_GET`, `sorry_server`, `virtual_server_group`,
//! `fwmark`, `digest`, a `quorum` above 1, …) is refused with
//! `file:line: KEYWORD is not supported by Sluice (why)`. What is not
//! Sluice's job and changes no forwarding (`global_defs`, `vrrp_*` blocks,
//! `notify_*` scripts, `ha_suspend`) is ignored with one notice each,
//! which the file source logs.
//!
//! One check per service: Sluice checks every real server of a service
//! alike, so the real servers of one `virtual_server` must carry the same
//! checker (or none); a server that differs is refused, naming its line.

mod syntax;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_dataplane::service::SchedKind;

use super::virtual_service::{self, Front, VirtualService};
use crate::check::spec::{CheckAction, CheckSpec, Probe, MAX_COUNT, MAX_INTERVAL, MIN_INTERVAL};
use syntax::Node;
pub use syntax::{Loc, MAX_BLOCK_DEPTH, MAX_INCLUDE_DEPTH};

/// The keywords a keepalived.conf may start with (after comments).
pub const TOP_KEYWORDS: &[&str] = &[
    "global_defs",
    "include",
    "virtual_server",
    "virtual_server_group",
    "vrrp_instance",
    "vrrp_sync_group",
    "vrrp_script",
    "vrrp_track_process",
    "static_ipaddress",
    "static_routes",
    "static_rules",
    "linkbeat_interfaces",
    "bfd_instance",
    "track_file",
    "garp_group",
    "net_namespace",
];

/// The namespace of the objects (ipvsadm's, so that `sluice ipvsadm`
/// sees them as its own).
pub const NAMESPACE: &str = "ipvs";
/// The annotation that names the `virtual_server` an object came from.
pub const SOURCE_ANNOTATION: &str = "sluice.dev/keepalived-source";
/// keepalived's `delay_loop` when none is given.
pub const DEFAULT_DELAY_LOOP: Duration = Duration::from_secs(60);
/// keepalived's `connect_timeout` when none is given.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// keepalived's `retry` when none is given (TCP_CHECK and HTTP_GET).
pub const DEFAULT_RETRY: u32 = 1;
/// The status HTTP_GET expects without `status_code`.
pub const DEFAULT_STATUS: u16 = 200;

/// Why a keepalived.conf cannot be loaded. Nothing is applied when this is
/// returned.
#[derive(Debug, thiserror::Error)]
pub enum KeepalivedError {
    /// A file (the config or an included one) could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The block syntax is broken (an unclosed block, a stray brace, an
    /// unterminated string, a bad include).
    #[error("{file}:{line}:{column}: {reason}")]
    Syntax {
        /// The file.
        file: Arc<str>,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// A keyword keepalived has and Sluice refuses, since ignoring it
    /// would change what is forwarded or checked.
    #[error("{file}:{line}: {keyword} is not supported by Sluice ({why})")]
    Unsupported {
        /// The file.
        file: Arc<str>,
        /// 1-based line.
        line: usize,
        /// The keyword.
        keyword: String,
        /// Why, and what to use instead.
        why: String,
    },
    /// A keyword that is not keepalived's (or not in this block).
    #[error("{file}:{line}: unknown keyword {keyword:?} in {within}")]
    Unknown {
        /// The file.
        file: Arc<str>,
        /// 1-based line.
        line: usize,
        /// The keyword.
        keyword: String,
        /// The block it is in (`virtual_server`, `the top level`, …).
        within: String,
    },
    /// A keyword with a bad or missing value, or a block that contradicts
    /// another.
    #[error("{file}:{line}: {keyword}: {reason}")]
    Invalid {
        /// The file.
        file: Arc<str>,
        /// 1-based line.
        line: usize,
        /// The keyword.
        keyword: String,
        /// What is wrong, with the value found.
        reason: String,
    },
}

/// What a keepalived.conf holds for Sluice.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    /// One `VirtualService` per `virtual_server`, in file order, each with
    /// where its block starts.
    pub objects: Vec<(Loc, Value)>,
    /// One line per block or keyword read and ignored
    /// (`keepalived.conf:3: vrrp_instance VI_1 ignored: …`).
    pub notices: Vec<String>,
}

/// Whether a text is keepalived.conf: its first word outside comments is
/// one of [`TOP_KEYWORDS`]. (YAML cannot start so: a bare word there
/// would be a scalar document, which no Sluice config is.)
pub fn is_keepalived(text: &str) -> bool {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    syntax::first_word(text).is_some_and(|w| TOP_KEYWORDS.contains(&w.as_str()))
}

/// Reads a keepalived.conf from disk (with its includes).
///
/// # Errors
/// As [`parse`], and [`KeepalivedError::Io`].
pub fn parse_file(path: &Path) -> Result<Parsed, KeepalivedError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeepalivedError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses keepalived.conf text read from `path` (includes are relative to
/// its directory) into `VirtualService` objects, each already checked and
/// compiled, so that errors keep their line.
///
/// # Errors
/// The first [`KeepalivedError`], with its file and line. Never panics.
pub fn parse(path: &Path, text: &str) -> Result<Parsed, KeepalivedError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let nodes = syntax::parse_file(path, text, 0)?;
    let mut out = Parsed::default();
    let mut fronts: Vec<(Front, Loc)> = Vec::new();
    for n in &nodes {
        let Some(vs) = top(n, &mut out.notices)? else {
            continue;
        };
        let obj = vs.object(&mut out.notices)?;
        let front = checked(&vs.loc, &obj)?;
        if let Some((_, first)) = fronts.iter().find(|(f, _)| *f == front) {
            return Err(invalid(
                &vs.loc,
                "virtual_server",
                format!(
                    "{} {} is defined twice (first at {}:{})",
                    vs.addr, vs.port, first.file, first.line
                ),
            ));
        }
        fronts.push((front, vs.loc.clone()));
        out.objects.push((vs.loc.clone(), obj));
    }
    Ok(out)
}

/// The object, checked and compiled as the store will: an error is
/// reported at its `virtual_server`'s line.
fn checked(loc: &Loc, obj: &Value) -> Result<Front, KeepalivedError> {
    let vs: VirtualService = serde_json::from_value(obj.clone())
        .map_err(|e| invalid(loc, "virtual_server", e.to_string()))?;
    let def = virtual_service::check(&vs)
        .map_err(|e| invalid(loc, "virtual_server", format!("{}: {}", e.field, e.reason)))?;
    def.compile()
        .map_err(|e| invalid(loc, "virtual_server", format!("{}: {}", e.field, e.reason)))?;
    Ok(def.front)
}

fn invalid(loc: &Loc, keyword: &str, reason: impl Into<String>) -> KeepalivedError {
    KeepalivedError::Invalid {
        file: loc.file.clone(),
        line: loc.line,
        keyword: keyword.to_owned(),
        reason: reason.into(),
    }
}

fn unsupported(n: &Node, why: &str) -> KeepalivedError {
    KeepalivedError::Unsupported {
        file: n.loc.file.clone(),
        line: n.loc.line,
        keyword: n.key.clone(),
        why: why.to_owned(),
    }
}

fn unknown(n: &Node, within: &str) -> KeepalivedError {
    KeepalivedError::Unknown {
        file: n.loc.file.clone(),
        line: n.loc.line,
        keyword: n.key.clone(),
        within: within.to_owned(),
    }
}

fn notice(out: &mut Vec<String>, n: &Node, why: &str) {
    let what = std::iter::once(n.key.as_str())
        .chain(n.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    out.push(format!(
        "{}:{}: {what} ignored: {why}",
        n.loc.file, n.loc.line
    ));
}

const VRRP: &str =
    "VRRP is not Sluice's job; keep keepalived (or a routing daemon) for the VIP's failover";

/// A top-level statement: a `virtual_server` to build, or ignored (with a
/// notice), or refused.
fn top(n: &Node, notices: &mut Vec<String>) -> Result<Option<VsBuild>, KeepalivedError> {
    let why = match n.key.as_str() {
        "virtual_server" => return VsBuild::read(n, notices).map(Some),
        "global_defs" => "global settings (router_id, notification e-mail, …) are keepalived's own",
        "vrrp_instance" | "vrrp_sync_group" | "vrrp_script" | "vrrp_track_process"
        | "garp_group" => VRRP,
        "static_ipaddress" | "static_routes" | "static_rules" => {
            "the host's addresses and routes are configured outside Sluice"
        }
        "linkbeat_interfaces" | "track_file" | "bfd_instance" => "only keepalived's VRRP uses it",
        "net_namespace" => "Sluice runs in the namespace it is started in",
        "virtual_server_group" => return Err(unsupported(
            n,
            "Sluice has no virtual server groups; write one virtual_server per address and port",
        )),
        k if k.starts_with('@') => {
            return Err(unsupported(
                n,
                "conditional configuration lines (@config-id) are keepalived's own",
            ))
        }
        k if k.starts_with('$') => {
            return Err(unsupported(
                n,
                "configuration variables ($NAME=…) are keepalived's own",
            ))
        }
        _ => return Err(unknown(n, "the top level")),
    };
    notice(notices, n, why);
    Ok(None)
}

/// The one argument of a keyword.
fn arg(n: &Node) -> Result<&str, KeepalivedError> {
    match n.args.as_slice() {
        [a] => Ok(a),
        [] => Err(invalid(&n.loc, &n.key, "needs a value")),
        _ => Err(invalid(
            &n.loc,
            &n.key,
            format!("takes one value, got {}", n.args.join(" ")),
        )),
    }
}

fn int(n: &Node, lo: i64, hi: i64) -> Result<i64, KeepalivedError> {
    let a = arg(n)?;
    a.parse::<i64>()
        .ok()
        .filter(|v| (lo..=hi).contains(v))
        .ok_or_else(|| {
            invalid(
                &n.loc,
                &n.key,
                format!("must be an integer {lo}..{hi}, got {a:?}"),
            )
        })
}

/// keepalived's `<TIMER>`: seconds, fractions allowed; here within the
/// range of a Sluice check (100 ms .. 1 h).
fn timer(n: &Node) -> Result<Duration, KeepalivedError> {
    let a = arg(n)?;
    let bad = || {
        invalid(
            &n.loc,
            &n.key,
            format!(
                "must be seconds between {} and {} (fractions allowed), got {a:?}",
                MIN_INTERVAL.as_secs_f64(),
                MAX_INTERVAL.as_secs()
            ),
        )
    };
    let v: f64 = a.parse().map_err(|_| bad())?;
    if !v.is_finite() || v < MIN_INTERVAL.as_secs_f64() || v > MAX_INTERVAL.as_secs_f64() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v))
}

/// keepalived's `<BOOL>`: omitted is on.
fn boolean(n: &Node) -> Result<bool, KeepalivedError> {
    match n.args.as_slice() {
        [] => Ok(true),
        [a] => match a.to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" => Ok(true),
            "off" | "false" | "no" => Ok(false),
            _ => Err(invalid(
                &n.loc,
                &n.key,
                format!("must be on|off|true|false|yes|no, got {a:?}"),
            )),
        },
        _ => Err(invalid(&n.loc, &n.key, "takes at most one value")),
    }
}

fn block(n: &Node) -> Result<&[Node], KeepalivedError> {
    n.block
        .as_deref()
        .ok_or_else(|| invalid(&n.loc, &n.key, "needs a { … } block"))
}

fn no_block(n: &Node) -> Result<(), KeepalivedError> {
    match n.block {
        Some(_) => Err(invalid(&n.loc, &n.key, "takes no { … } block")),
        None => Ok(()),
    }
}

fn method(n: &Node) -> Result<&'static str, KeepalivedError> {
    let a = arg(n)?;
    match a.to_ascii_uppercase().as_str() {
        "NAT" => Ok("masq"),
        "DR" => Ok("route"),
        "TUN" => Ok("tunnel"),
        _ => Err(invalid(
            &n.loc,
            &n.key,
            format!("must be NAT, DR or TUN, got {a:?}"),
        )),
    }
}

fn ip(n: &Node, a: &str) -> Result<IpAddr, KeepalivedError> {
    a.parse()
        .map_err(|_| invalid(&n.loc, &n.key, format!("{a:?} is not an IP address")))
}

fn port(n: &Node, a: &str) -> Result<u16, KeepalivedError> {
    a.parse()
        .map_err(|_| invalid(&n.loc, &n.key, format!("port must be 0..65535, got {a:?}")))
}

/// A `virtual_server` as read.
#[derive(Debug, Default)]
struct VsBuild {
    loc: Loc,
    addr: String,
    port: u16,
    protocol: Option<String>,
    sched: Option<String>,
    flags: Vec<String>,
    method: Option<&'static str>,
    persistence: Option<i64>,
    granularity: Option<(Loc, String)>,
    delay_loop: Option<Duration>,
    inhibit: bool,
    real_servers: Vec<RsBuild>,
}

impl Default for Loc {
    fn default() -> Loc {
        Loc {
            file: Arc::from(""),
            line: 0,
            column: 0,
        }
    }
}

impl VsBuild {
    fn read(n: &Node, notices: &mut Vec<String>) -> Result<VsBuild, KeepalivedError> {
        let (addr, port) = match n.args.as_slice() {
            [kw, _] if kw == "fwmark" => {
                return Err(unsupported(
                    n,
                    "no netfilter mark exists before XDP; write one virtual_server per address and port",
                ))
            }
            [kw, _] if kw == "group" => {
                return Err(unsupported(
                    n,
                    "Sluice has no virtual server groups; write one virtual_server per address and port",
                ))
            }
            [a, p] => (ip(n, a)?, port(n, p)?),
            _ => {
                return Err(invalid(
                    &n.loc,
                    &n.key,
                    "takes an address and a port: virtual_server IP PORT { … }",
                ))
            }
        };
        let mut vs = VsBuild {
            loc: n.loc.clone(),
            addr: addr.to_string(),
            port,
            ..VsBuild::default()
        };
        for c in block(n)? {
            vs.keyword(c, notices)?;
        }
        Ok(vs)
    }

    fn keyword(&mut self, c: &Node, notices: &mut Vec<String>) -> Result<(), KeepalivedError> {
        if c.key != "real_server" {
            no_block(c)?;
        }
        match c.key.as_str() {
            "real_server" => self.real_servers.push(RsBuild::read(c, notices)?),
            "delay_loop" => self.delay_loop = Some(timer(c)?),
            "lb_algo" | "lvs_sched" => {
                let a = arg(c)?.to_ascii_lowercase();
                if SchedKind::from_name(&a).is_none() {
                    let all: Vec<&str> = SchedKind::ALL.iter().map(|k| k.as_str()).collect();
                    return Err(invalid(
                        &c.loc,
                        &c.key,
                        format!("unknown scheduler {a:?} (one of {})", all.join(", ")),
                    ));
                }
                self.sched = Some(a);
            }
            "lb_kind" | "lvs_method" => self.method = Some(method(c)?),
            "protocol" => {
                let a = arg(c)?.to_ascii_uppercase();
                if !matches!(a.as_str(), "TCP" | "UDP" | "SCTP") {
                    return Err(invalid(
                        &c.loc,
                        &c.key,
                        format!("must be TCP, UDP or SCTP, got {a:?}"),
                    ));
                }
                self.protocol = Some(a);
            }
            "persistence_timeout" => {
                self.persistence = Some(match c.args.is_empty() {
                    true => i64::from(virtual_service::DEFAULT_TIMEOUT),
                    false => int(c, 0, virtual_service::MAX_TIMEOUT)?,
                })
            }
            "persistence_granularity" => {
                self.granularity = Some((c.loc.clone(), arg(c)?.to_owned()))
            }
            "inhibit_on_failure" => self.inhibit = boolean(c)?,
            "sh-port" | "sh-fallback" | "mh-port" | "mh-fallback" | "flag-1" | "flag-2"
            | "flag-3" => self.flags.push(c.key.clone()),
            "quorum" => {
                if int(c, 1, i64::from(u32::MAX))? != 1 {
                    return Err(unsupported(
                        c,
                        "a quorum above 1 takes the service down below it; Sluice serves whatever real servers are up",
                    ));
                }
            }
            "ha_suspend" => notice(
                notices,
                c,
                "it suspends checks while this host is a VRRP backup; Sluice has no VRRP",
            ),
            "omega" | "hysteresis" | "quorum_up" | "quorum_down" => notice(
                notices,
                c,
                "quorum scripts are keepalived's own (the quorum is 1)",
            ),
            "smtp_alert" => notice(notices, c, "Sluice sends no e-mail; it logs state changes"),
            "ip_family" => notice(notices, c, "the family is the address's"),
            "sorry_server" | "sorry_server_inhibit" | "sorry_server_lvs_method" => {
                return Err(unsupported(
                    c,
                    "Sluice has no sorry server: a service with no real server up rejects new connections at once",
                ))
            }
            "alpha" => {
                return Err(unsupported(
                    c,
                    "Sluice starts every real server up and takes it out after its failed checks",
                ))
            }
            "virtualhost" => {
                return Err(unsupported(
                    c,
                    "Sluice's HTTP_GET sends no Host header of choice",
                ))
            }
            "ops" => {
                return Err(unsupported(
                    c,
                    "one-packet scheduling is not in Sluice's data path",
                ))
            }
            "persistence_engine" => {
                return Err(unsupported(
                    c,
                    "IPVS persistence engines (SIP) are not in Sluice",
                ))
            }
            "hashed" => {
                return Err(unsupported(
                    c,
                    "the hashed flag is not in Sluice's schedulers",
                ))
            }
            _ => return Err(unknown(c, "virtual_server")),
        }
        Ok(())
    }

    /// The `VirtualService` object (store JSON).
    fn object(&self, notices: &mut Vec<String>) -> Result<Value, KeepalivedError> {
        let proto = self.protocol.as_deref().unwrap_or("TCP");
        let name = format!(
            "{}-{}-{}",
            proto.to_ascii_lowercase(),
            self.addr.replace(['.', ':'], "-"),
            self.port
        );
        let mut spec = json!({"protocol": proto, "address": self.addr, "port": self.port});
        if let Some(s) = &self.sched {
            spec["scheduler"] = json!(s);
        }
        if !self.flags.is_empty() {
            spec["schedulerFlags"] = json!(self.flags);
        }
        match (self.persistence, &self.granularity) {
            (Some(t), g) if t > 0 => {
                spec["persistence"] = json!({"timeout": t});
                if let Some((_, g)) = g {
                    spec["persistence"]["netmask"] = json!(g);
                }
            }
            (_, Some((loc, _))) => notices.push(format!(
                "{}:{}: persistence_granularity ignored: the virtual_server has no persistence_timeout",
                loc.file, loc.line
            )),
            _ => {}
        }
        let mut servers = Vec::new();
        let mut check: Option<(&RsBuild, Option<(CheckSpec, CheckAction)>)> = None;
        for rs in &self.real_servers {
            let method = rs.method.or(self.method).unwrap_or("masq");
            let mut r = json!({"address": rs.addr, "port": rs.port.unwrap_or(self.port),
                "method": method, "weight": rs.weight});
            if let Some(u) = rs.upper {
                r["upperThreshold"] = json!(u);
            }
            if let Some(l) = rs.lower {
                r["lowerThreshold"] = json!(l);
            }
            servers.push(r);
            let this = rs.check(self, notices)?;
            match &check {
                None => check = Some((rs, this)),
                Some((first, c)) if *c != this => {
                    return Err(invalid(
                        &rs.loc,
                        "real_server",
                        format!(
                            "its health check differs from that of the real server at line {}; Sluice checks every real server of a virtual_server alike (same checker, options and inhibit_on_failure)",
                            first.loc.line
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        spec["realServers"] = json!(servers);
        if let Some((_, Some((c, action)))) = check {
            spec["healthCheck"] = serde_json::to_value(c).unwrap_or_default();
            spec["healthCheckAction"] = serde_json::to_value(action).unwrap_or_default();
        }
        Ok(json!({
            "apiVersion": virtual_service::API_VERSION,
            "kind": virtual_service::KIND,
            "metadata": {"name": name, "namespace": NAMESPACE,
                "annotations": {SOURCE_ANNOTATION: format!("{}:{}", self.loc.file, self.loc.line)}},
            "spec": spec,
        }))
    }
}

/// A `real_server` as read.
#[derive(Debug, Default)]
struct RsBuild {
    loc: Loc,
    addr: String,
    port: Option<u16>,
    weight: i64,
    method: Option<&'static str>,
    upper: Option<i64>,
    lower: Option<i64>,
    inhibit: Option<bool>,
    delay_loop: Option<Duration>,
    checker: Option<Checker>,
}

/// A `TCP_CHECK` or `HTTP_GET` as read.
#[derive(Debug, Clone)]
struct Checker {
    loc: Loc,
    key: String,
    probe: Probe,
    port: Option<u16>,
    timeout: Option<Duration>,
    retry: Option<u32>,
    delay_loop: Option<Duration>,
}

impl RsBuild {
    fn read(n: &Node, notices: &mut Vec<String>) -> Result<RsBuild, KeepalivedError> {
        let (addr, p) = match n.args.as_slice() {
            [a] => (ip(n, a)?, None),
            [a, p] => (ip(n, a)?, Some(port(n, p)?)),
            _ => {
                return Err(invalid(
                    &n.loc,
                    &n.key,
                    "takes an address and a port: real_server IP PORT { … }",
                ))
            }
        };
        let mut rs = RsBuild {
            loc: n.loc.clone(),
            addr: addr.to_string(),
            port: p,
            weight: 1,
            ..RsBuild::default()
        };
        for c in n.block.as_deref().unwrap_or_default() {
            rs.keyword(c, notices)?;
        }
        Ok(rs)
    }

    fn keyword(&mut self, c: &Node, notices: &mut Vec<String>) -> Result<(), KeepalivedError> {
        let is_checker = c.key.ends_with("_CHECK") || c.key.ends_with("_GET");
        if !is_checker {
            no_block(c)?;
        }
        match c.key.as_str() {
            "weight" => self.weight = int(c, 0, 65535)?,
            "inhibit_on_failure" => self.inhibit = Some(boolean(c)?),
            "lb_kind" | "lvs_method" => self.method = Some(method(c)?),
            "uthreshold" => self.upper = Some(int(c, 0, i64::from(i32::MAX))?),
            "lthreshold" => self.lower = Some(int(c, 0, i64::from(i32::MAX))?),
            "delay_loop" => self.delay_loop = Some(timer(c)?),
            "notify_up" | "notify_down" => notice(
                notices,
                c,
                "Sluice runs no scripts; it logs each state change and shows it in the API",
            ),
            "smtp_alert" => notice(notices, c, "Sluice sends no e-mail; it logs state changes"),
            "TCP_CHECK" | "HTTP_GET" => {
                if let Some(first) = &self.checker {
                    return Err(unsupported(
                        c,
                        &format!(
                            "a second checker on one real server (the first is {} at line {}); Sluice runs one check per server",
                            first.key, first.loc.line
                        ),
                    ));
                }
                self.checker = Some(Checker::read(c, notices)?);
            }
            "MISC_CHECK" => {
                return Err(unsupported(
                    c,
                    "it runs a script; use TCP_CHECK or HTTP_GET",
                ))
            }
            "SSL_GET" => {
                return Err(unsupported(
                    c,
                    "Sluice's checks speak no TLS; use TCP_CHECK, or HTTP_GET on a plain port",
                ))
            }
            "SMTP_CHECK" | "DNS_CHECK" | "PING_CHECK" | "FILE_CHECK" | "BFD_CHECK"
            | "UDP_CHECK" => {
                return Err(unsupported(
                    c,
                    "Sluice's checks are TCP_CHECK and HTTP_GET here",
                ))
            }
            "alpha" => {
                return Err(unsupported(
                    c,
                    "Sluice starts every real server up and takes it out after its failed checks",
                ))
            }
            _ => return Err(unknown(c, "real_server")),
        }
        Ok(())
    }

    /// This server's check and action, with keepalived's defaults
    /// resolved (checker, then real_server, then virtual_server values).
    fn check(
        &self,
        vs: &VsBuild,
        notices: &mut Vec<String>,
    ) -> Result<Option<(CheckSpec, CheckAction)>, KeepalivedError> {
        let Some(c) = &self.checker else {
            return Ok(None);
        };
        if vs.protocol.as_deref().is_some_and(|p| p != "TCP") && c.port.is_none() {
            return Err(invalid(
                &c.loc,
                &c.key,
                "on a UDP or SCTP virtual_server it needs connect_port (the TCP port to probe)",
            ));
        }
        let interval = c
            .delay_loop
            .or(self.delay_loop)
            .or(vs.delay_loop)
            .unwrap_or(DEFAULT_DELAY_LOOP);
        let mut timeout = c.timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if timeout > interval {
            notices.push(format!(
                "{}:{}: {}: connect_timeout {:?} cut to the delay_loop {:?} (Sluice runs one probe per server at a time)",
                c.loc.file, c.loc.line, c.key, timeout, interval
            ));
            timeout = interval;
        }
        let spec = CheckSpec {
            probe: c.probe.clone(),
            port: c.port,
            interval,
            timeout,
            rise: 1,
            fall: c.retry.unwrap_or(DEFAULT_RETRY) + 1,
        };
        spec.validate()
            .map_err(|e| invalid(&c.loc, &c.key, e.to_string()))?;
        let inhibit = self.inhibit.unwrap_or(vs.inhibit);
        let action = if inhibit {
            CheckAction::Weight0
        } else {
            CheckAction::Remove
        };
        Ok(Some((spec, action)))
    }
}

impl Checker {
    fn read(n: &Node, notices: &mut Vec<String>) -> Result<Checker, KeepalivedError> {
        let http = n.key == "HTTP_GET";
        let mut c = Checker {
            loc: n.loc.clone(),
            key: n.key.clone(),
            probe: Probe::Tcp,
            port: None,
            timeout: None,
            retry: None,
            delay_loop: None,
        };
        let mut url: Option<(Loc, String, u16)> = None;
        for k in block(n)? {
            if k.key != "url" {
                no_block(k)?;
            }
            match k.key.as_str() {
                "connect_port" => {
                    c.port = Some(int(k, 1, 65535)? as u16);
                }
                "connect_timeout" => c.timeout = Some(timer(k)?),
                "retry" | "nb_get_retry" => {
                    c.retry = Some(int(k, 0, i64::from(MAX_COUNT) - 1)? as u32)
                }
                "delay_before_retry" => {
                    timer(k)?;
                    notice(
                        notices,
                        k,
                        "Sluice probes again after delay_loop, so a server leaves after (retry + 1) × delay_loop",
                    );
                }
                "delay_loop" => c.delay_loop = Some(timer(k)?),
                "warmup" => {
                    timer(k)?;
                    notice(notices, k, "Sluice starts probing at once");
                }
                "log_all_failures" => notice(notices, k, "Sluice logs state changes"),
                "http_protocol" if http => notice(notices, k, "Sluice's HTTP_GET sends HTTP/1.0"),
                "url" if http => {
                    if let Some((first, _, _)) = &url {
                        return Err(unsupported(
                            k,
                            &format!(
                                "a second url (the first is at line {}); Sluice's HTTP_GET checks one path",
                                first.line
                            ),
                        ));
                    }
                    url = Some(Self::url(k)?);
                }
                "virtualhost" if http => {
                    return Err(unsupported(
                        k,
                        "Sluice's HTTP_GET sends no Host header of choice",
                    ))
                }
                "connect_ip" | "bindto" | "bind_port" | "bind_if" | "fwmark" | "source_ip" => {
                    return Err(unsupported(
                        k,
                        "Sluice probes the real server's own address from the host's own source",
                    ))
                }
                "alpha" => return Err(unsupported(
                    k,
                    "Sluice starts every real server up and takes it out after its failed checks",
                )),
                _ => return Err(unknown(k, &n.key)),
            }
        }
        if http {
            let (_, path, status) =
                url.ok_or_else(|| invalid(&n.loc, &n.key, "needs a url { path … } block"))?;
            c.probe = Probe::Http { path, status };
        }
        Ok(c)
    }

    fn url(n: &Node) -> Result<(Loc, String, u16), KeepalivedError> {
        let mut path = None;
        let mut status = DEFAULT_STATUS;
        for k in block(n)? {
            no_block(k)?;
            match k.key.as_str() {
                "path" => path = Some(arg(k)?.to_owned()),
                "status_code" => {
                    let a = arg(k)?;
                    status =
                        a.parse()
                            .ok()
                            .filter(|s| (100..=599).contains(s))
                            .ok_or_else(|| {
                                unsupported(
                            k,
                            &format!("{a:?}: Sluice's HTTP_GET expects one status code, 100..599"),
                        )
                            })?;
                }
                "digest" => {
                    return Err(unsupported(
                        k,
                        "Sluice's HTTP_GET checks the status code, not a digest of the body",
                    ))
                }
                "regex" | "regex_no_match" | "regex_options" | "regex_stack"
                | "regex_min_offset" | "regex_max_offset" => {
                    return Err(unsupported(
                        k,
                        "Sluice's HTTP_GET checks the status code, not the body",
                    ))
                }
                "virtualhost" => {
                    return Err(unsupported(
                        k,
                        "Sluice's HTTP_GET sends no Host header of choice",
                    ))
                }
                _ => return Err(unknown(k, "url")),
            }
        }
        let path = path.ok_or_else(|| invalid(&n.loc, "url", "needs a path"))?;
        Ok((n.loc.clone(), path, status))
    }
}
