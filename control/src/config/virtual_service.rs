//! The `VirtualService` object (`apiVersion: sluice.dev/v1`): one IPVS
//! virtual service, as `ipvsadm -A` and `-a` describe it, in a Kubernetes
//! object's clothes so that the store, the API, kubectl and the config file
//! treat it like a Service.
//!
//! ```yaml
//! apiVersion: sluice.dev/v1
//! kind: VirtualService
//! metadata: {name: web, namespace: default}
//! spec:
//!   protocol: TCP            # TCP | UDP | SCTP (default TCP)
//!   address: 198.18.0.100    # IPv4 or IPv6
//!   port: 80                 # 0 = every port of the address (needs persistence)
//!   # or fwmark: 7 (with ipFamily: IPv6 for `-f 7 -6`) instead of address/port
//!   scheduler: wlc           # ipvsadm -s names; default wlc, as ipvsadm
//!   schedulerFlags: [sh-port]                              # -b
//!   persistence: {timeout: 300, netmask: 255.255.255.0}   # -p, -M (IPv6: a prefix length)
//!   realServers:
//!   - {address: 198.18.1.11, port: 8080, method: masq, weight: 1, upperThreshold: 0, lowerThreshold: 0}
//!   # FULLNAT only (DPVS's --add-laddr): the host's own addresses that
//!   # clients are translated to, of the service's family
//!   localAddresses: [198.18.1.5, 198.18.1.6]
//!   # every real server probed alike (keepalived's TCP_CHECK / HTTP_GET):
//!   healthCheck: {type: http, path: /healthz, status: 200, interval: 2s, timeout: 1s, rise: 2, fall: 3}
//!   healthCheckAction: remove   # or weight0 (default)
//! ```
//!
//! Why its own shape rather than annotations on a Service: an IPVS real
//! server has a weight, thresholds and a forwarding method of its own, and
//! an IPVS service has no selector, no cluster IP and no node ports.
//!
//! Checking ([`check`]) accepts everything ipvsadm can express (so that a
//! file written for a later Sluice still validates field by field);
//! compiling ([`VsDef::compile`]) refuses, with a clear error, what the data
//! path cannot serve yet: firewall-mark and port-0 services, and real
//! servers of one service with different methods (a service's forwarding
//! method is one per [`ServiceSpec`]).
//!
//! Local addresses (`localAddresses`, DPVS's `--add-laddr`) are FULLNAT's:
//! a service that has them serves FULLNAT (its real servers must be
//! `fullnat`, or it has none yet), and each must be one of the host's own,
//! which is checked when the config is applied (`reconcile::compile`),
//! where the host's addresses are known.
//!
//! Methods: `masq` is IPVS NAT, which keeps the client's address (no
//! masquerading: the real server must route its replies through Sluice);
//! `route` is direct routing.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sluice_dataplane::service::{
    BackendSpec, ForwardMethod, MasqMode, SchedFlags, SchedKind, ServiceSpec, VipKey, VipKind,
    WhenEmpty,
};
use sluice_dataplane::types::{proto, Addr};

use super::compile::{is_dns_label, is_dns_subdomain, parse_ip};
use crate::check::spec::{CheckAction, CheckSpec};
use crate::check::ServiceCheck;

/// The kind name.
pub const KIND: &str = "VirtualService";
/// The `apiVersion`.
pub const API_VERSION: &str = "sluice.dev/v1";
/// The longest persistence timeout ipvsadm accepts (31 days).
pub const MAX_TIMEOUT: i64 = 86400 * 31;
/// The persistence timeout of `-p` without a value (the kernel's
/// `IPVS_SVC_PERSISTENT_TIMEOUT`).
pub const DEFAULT_TIMEOUT: u32 = 360;
/// The scheduler when none is named (ipvsadm's `DEF_SCHED`).
pub const DEFAULT_SCHEDULER: SchedKind = SchedKind::WeightedLeastConn;

/// The object as written.
#[derive(Deserialize, Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualService {
    /// `sluice.dev/v1`.
    pub api_version: Option<String>,
    /// `VirtualService`.
    pub kind: Option<String>,
    /// Name and namespace (other metadata is kept by the store, not here).
    pub metadata: Option<Meta>,
    /// The service.
    pub spec: Option<VsSpec>,
}

/// The part of `metadata` read here.
#[derive(Deserialize, Serialize, Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// `metadata.name`.
    pub name: Option<String>,
    /// `metadata.namespace` (default `default`).
    pub namespace: Option<String>,
}

/// `spec`.
#[derive(Deserialize, Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsSpec {
    /// `TCP`, `UDP` or `SCTP` (default TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The virtual address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The virtual port (0: every port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// A firewall mark (`-f`) instead of address and port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<i64>,
    /// The family of a firewall-mark service (`IPv4`, `IPv6`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<String>,
    /// What a firewall mark stands for (no netfilter mark exists before
    /// XDP): the front ends it groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marks: Option<Vec<MarkSpec>>,
    /// `ipvsadm -s` name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// `ipvsadm -b` names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler_flags: Option<Vec<String>>,
    /// `-p` / `-M`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence: Option<PersistenceSpec>,
    /// The real servers (`-a`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_servers: Option<Vec<RealServerSpec>>,
    /// FULLNAT local addresses (DPVS's `--add-laddr -z`), of the service's
    /// family, each one of the host's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_addresses: Option<Vec<String>>,
    /// A health check of every real server (keepalived's `TCP_CHECK` /
    /// `HTTP_GET`), in [`CheckSpec`]'s shape:
    /// `{type: tcp, port: 80, interval: 6s, timeout: 3s, rise: 1, fall: 2}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<CheckSpec>,
    /// What a server its check finds down gets: `weight0` (default) or
    /// `remove` (keepalived's default; `inhibit_on_failure` is `weight0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_action: Option<CheckAction>,
}

/// One front end a firewall mark groups.
#[derive(Deserialize, Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MarkSpec {
    /// Protocol (default TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Address.
    pub address: Option<String>,
    /// Port.
    pub port: Option<i64>,
}

/// `-p timeout` and `-M netmask`.
#[derive(Deserialize, Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistenceSpec {
    /// Seconds (1..2678400; default 360).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// IPv4: a dotted mask; IPv6: a prefix length (1..128). Default: the
    /// whole address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netmask: Option<Netmask>,
}

/// A netmask as written: `255.255.255.0` or `64`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum Netmask {
    /// A prefix length.
    Prefix(i64),
    /// A dotted mask (or a prefix length as a string).
    Text(String),
}

/// One real server.
#[derive(Deserialize, Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RealServerSpec {
    /// Its address.
    pub address: Option<String>,
    /// Its port (default: the service's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// `masq` (`-m`), `route` (`-g`, the default, as ipvsadm), `tunnel`
    /// (`-i`), `fullnat`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// 0..65535, default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// `-x`, 0 = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_threshold: Option<i64>,
    /// `-y`, 0 = 3/4 of the upper one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_threshold: Option<i64>,
}

/// A real server's forwarding method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// IPVS NAT (`-m`, shown `Masq`).
    Masq,
    /// Direct routing (`-g`, shown `Route`).
    Route,
    /// IPIP (`-i`, shown `Tunnel`): [`ForwardMethod::Tunnel`].
    Tunnel,
    /// FULLNAT (DPVS's `FullNat`): [`ForwardMethod::FullNat`].
    FullNat,
}

impl Method {
    /// The name in the object.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Masq => "masq",
            Method::Route => "route",
            Method::Tunnel => "tunnel",
            Method::FullNat => "fullnat",
        }
    }

    /// The method a name stands for.
    pub fn from_name(s: &str) -> Option<Method> {
        [Method::Masq, Method::Route, Method::Tunnel, Method::FullNat]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// The front end of a virtual service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Front {
    /// Protocol, address, port.
    Addr {
        /// IP protocol number.
        proto: u8,
        /// Address.
        addr: IpAddr,
        /// Port (0: every port).
        port: u16,
    },
    /// A firewall mark and its family.
    Fwmark {
        /// The mark.
        mark: u32,
        /// IPv6 (`-6`).
        v6: bool,
    },
}

/// A checked real server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RsDef {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// Forwarding method.
    pub method: Method,
    /// Weight.
    pub weight: u16,
    /// Upper threshold.
    pub upper: u32,
    /// Lower threshold.
    pub lower: u32,
}

/// A checked VirtualService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsDef {
    /// Namespace.
    pub ns: String,
    /// Name.
    pub name: String,
    /// Front end.
    pub front: Front,
    /// Scheduler.
    pub sched: SchedKind,
    /// Scheduler flags.
    pub flags: SchedFlags,
    /// Persistence: timeout and prefix length (None: whole address).
    pub persistence: Option<(u32, Option<u8>)>,
    /// Real servers, in the object's order.
    pub real_servers: Vec<RsDef>,
    /// FULLNAT local addresses, in the object's order.
    pub local_addrs: Vec<IpAddr>,
    /// The health check of its real servers, if any.
    pub check: Option<ServiceCheck>,
}

/// A field error: the field path and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path inside the object (`spec.realServers[1].weight`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn ferr(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `namespace/name` of an object, for messages (before it is checked).
pub fn object_name(vs: &VirtualService) -> String {
    let m = vs.metadata.as_ref();
    let ns = m
        .and_then(|m| m.namespace.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let name = m
        .and_then(|m| m.name.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or("(unnamed)");
    format!("{ns}/{name}")
}

/// Checks an object field by field.
///
/// # Errors
/// The first [`FieldError`], naming the field.
pub fn check(vs: &VirtualService) -> Result<VsDef, FieldError> {
    match vs.api_version.as_deref() {
        Some(API_VERSION) => {}
        None => return Err(ferr("apiVersion", format!("required ({API_VERSION})"))),
        Some(v) => {
            return Err(ferr(
                "apiVersion",
                format!("must be {API_VERSION:?} for {KIND}, got {v:?}"),
            ))
        }
    }
    let meta = vs.metadata.clone().unwrap_or_default();
    let ns = meta
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let name = meta.name.unwrap_or_default();
    if name.is_empty() {
        return Err(ferr("metadata.name", "required"));
    }
    if !is_dns_subdomain(&name) {
        return Err(ferr(
            "metadata.name",
            format!(
                "must be a DNS subdomain (lowercase letters, digits, '-' and '.'), got {name:?}"
            ),
        ));
    }
    if !is_dns_label(&ns) {
        return Err(ferr(
            "metadata.namespace",
            format!("must be a DNS label (lowercase letters, digits and '-'), got {ns:?}"),
        ));
    }
    let spec = vs.spec.as_ref().ok_or_else(|| ferr("spec", "required"))?;
    let front = front(spec)?;
    let v6 = match &front {
        Front::Addr { addr, .. } => addr.is_ipv6(),
        Front::Fwmark { v6, .. } => *v6,
    };
    let sched = match spec.scheduler.as_deref() {
        None => DEFAULT_SCHEDULER,
        Some(s) => SchedKind::from_name(s).ok_or_else(|| {
            let all: Vec<&str> = SchedKind::ALL.iter().map(|k| k.as_str()).collect();
            ferr(
                "spec.scheduler",
                format!("unknown scheduler {s:?} (one of {})", all.join(", ")),
            )
        })?,
    };
    let flags = sched_flags(sched, spec.scheduler_flags.as_deref().unwrap_or_default())?;
    let persistence = match &spec.persistence {
        None => None,
        Some(p) => Some(persistence(p, v6)?),
    };
    if let Front::Addr { port: 0, .. } = front {
        if persistence.is_none() {
            return Err(ferr(
                "spec.port",
                "0 (every port) needs persistence, as ipvsadm's \"Zero port specified for non-persistent service\"",
            ));
        }
    }
    let mut real_servers = Vec::new();
    for (i, rs) in spec.real_servers.iter().flatten().enumerate() {
        let rs = real_server(rs, &front, &format!("spec.realServers[{i}]"))?;
        if let Some(j) = real_servers
            .iter()
            .position(|o: &RsDef| o.addr == rs.addr && o.port == rs.port)
        {
            return Err(ferr(
                format!("spec.realServers[{i}]"),
                format!(
                    "{} is listed twice (first at realServers[{j}])",
                    rs_text(&rs)
                ),
            ));
        }
        real_servers.push(rs);
    }
    let local_addrs = local_addresses(spec, v6, &real_servers)?;
    Ok(VsDef {
        ns,
        name,
        front,
        sched,
        flags,
        persistence,
        real_servers,
        local_addrs,
        check: health_check(spec)?,
    })
}

/// The checked `localAddresses`: addresses of the service's family, each
/// once, on a service whose real servers (if any yet) are all `fullnat`.
fn local_addresses(spec: &VsSpec, v6: bool, rs: &[RsDef]) -> Result<Vec<IpAddr>, FieldError> {
    let mut out: Vec<IpAddr> = Vec::new();
    for (i, a) in spec.local_addresses.iter().flatten().enumerate() {
        let f = format!("spec.localAddresses[{i}]");
        let addr = parse_ip(a).map_err(|r| ferr(&f, r))?.to_ip();
        if addr.is_ipv6() != v6 {
            return Err(ferr(
                f,
                format!("{addr} is not of the service's address family"),
            ));
        }
        if let Some(j) = out.iter().position(|o| *o == addr) {
            return Err(ferr(
                f,
                format!("{addr} is listed twice (first at localAddresses[{j}])"),
            ));
        }
        out.push(addr);
    }
    if let (Some(_), Some((i, r))) = (
        out.first(),
        rs.iter()
            .enumerate()
            .find(|(_, r)| r.method != Method::FullNat),
    ) {
        return Err(ferr(
            format!("spec.realServers[{i}].method"),
            format!(
                "{} is {}, but the service has local addresses, which are FULLNAT's (use fullnat, or remove spec.localAddresses)",
                rs_text(r),
                r.method.as_str()
            ),
        ));
    }
    Ok(out)
}

/// The checked `healthCheck` and its action (the action alone is refused,
/// as for a Service's annotations, so that a typo cannot leave a service
/// silently unchecked).
fn health_check(spec: &VsSpec) -> Result<Option<ServiceCheck>, FieldError> {
    match (&spec.health_check, spec.health_check_action) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ferr(
            "spec.healthCheckAction",
            "given without spec.healthCheck",
        )),
        (Some(c), action) => {
            c.validate()
                .map_err(|e| ferr("spec.healthCheck", e.to_string()))?;
            Ok(Some(ServiceCheck {
                spec: c.clone(),
                action: action.unwrap_or_default(),
            }))
        }
    }
}

fn rs_text(rs: &RsDef) -> String {
    match rs.addr {
        IpAddr::V4(a) => format!("{a}:{}", rs.port),
        IpAddr::V6(a) => format!("[{a}]:{}", rs.port),
    }
}

/// A protocol name (default TCP).
pub fn parse_protocol(raw: Option<&str>) -> Result<u8, String> {
    match raw {
        None | Some("TCP") => Ok(proto::TCP),
        Some("UDP") => Ok(proto::UDP),
        Some("SCTP") => Ok(proto::SCTP),
        Some(p) => Err(format!("must be TCP, UDP or SCTP, got {p:?}")),
    }
}

fn front(spec: &VsSpec) -> Result<Front, FieldError> {
    match (spec.fwmark, &spec.address) {
        (Some(_), Some(_)) => Err(ferr(
            "spec.fwmark",
            "a service has either fwmark or address and port, not both",
        )),
        (Some(m), None) => {
            let mark = u32::try_from(m)
                .ok()
                .filter(|m| *m > 0)
                .ok_or_else(|| ferr("spec.fwmark", format!("must be 1..4294967295, got {m}")))?;
            let v6 = match spec.ip_family.as_deref() {
                None | Some("IPv4") => false,
                Some("IPv6") => true,
                Some(f) => {
                    return Err(ferr(
                        "spec.ipFamily",
                        format!("must be IPv4 or IPv6, got {f:?}"),
                    ))
                }
            };
            for (i, m) in spec.marks.iter().flatten().enumerate() {
                let f = |s: &str| format!("spec.marks[{i}].{s}");
                parse_protocol(m.protocol.as_deref()).map_err(|r| ferr(f("protocol"), r))?;
                let a = m
                    .address
                    .as_deref()
                    .ok_or_else(|| ferr(f("address"), "required"))?;
                let a = parse_ip(a).map_err(|r| ferr(f("address"), r))?;
                if a.is_v4() == v6 {
                    return Err(ferr(f("address"), "not of the mark's ipFamily"));
                }
                let p = m.port.unwrap_or(0);
                u16::try_from(p)
                    .map_err(|_| ferr(f("port"), format!("must be 0..65535, got {p}")))?;
            }
            Ok(Front::Fwmark { mark, v6 })
        }
        (None, None) => Err(ferr("spec.address", "required (or spec.fwmark)")),
        (None, Some(a)) => {
            if spec.ip_family.is_some() || spec.marks.is_some() {
                return Err(ferr(
                    "spec.marks",
                    "ipFamily and marks belong to fwmark services",
                ));
            }
            let proto =
                parse_protocol(spec.protocol.as_deref()).map_err(|r| ferr("spec.protocol", r))?;
            let addr = parse_ip(a).map_err(|r| ferr("spec.address", r))?.to_ip();
            let port = spec.port.ok_or_else(|| ferr("spec.port", "required"))?;
            let port = u16::try_from(port)
                .map_err(|_| ferr("spec.port", format!("must be 0..65535, got {port}")))?;
            Ok(Front::Addr { proto, addr, port })
        }
    }
}

/// Scheduler flags as ipvsadm's `parse_sched_flags`: `flag-1`/`flag-2`
/// for any scheduler, `sh-*` only with sh, `mh-*` only with mh. `flag-3`
/// means nothing to any scheduler Sluice has, and is refused.
pub fn sched_flags(sched: SchedKind, names: &[String]) -> Result<SchedFlags, FieldError> {
    let mut flags = SchedFlags::default();
    for (i, n) in names.iter().enumerate() {
        let field = format!("spec.schedulerFlags[{i}]");
        let (prefix, bit) = match n.split_once('-') {
            Some(("flag", "1")) => (None, 1),
            Some(("flag", "2")) => (None, 2),
            Some((p @ ("sh" | "mh"), "fallback")) => (Some(p), 1),
            Some((p @ ("sh" | "mh"), "port")) => (Some(p), 2),
            Some(("flag", "3")) => {
                return Err(ferr(
                    field,
                    "flag-3 is not supported (no scheduler uses it)",
                ))
            }
            _ => return Err(ferr(field, format!("invalid scheduler flag {n:?}"))),
        };
        if prefix.is_some() && prefix != sched.flag_prefix() {
            return Err(ferr(
                field,
                format!("incompatible scheduler flag {n:?} for scheduler {sched}"),
            ));
        }
        if bit == 1 {
            flags.fallback = true;
        } else {
            flags.port = true;
        }
    }
    Ok(flags)
}

fn persistence(p: &PersistenceSpec, v6: bool) -> Result<(u32, Option<u8>), FieldError> {
    let t = p.timeout.unwrap_or(i64::from(DEFAULT_TIMEOUT));
    if !(1..=MAX_TIMEOUT).contains(&t) {
        return Err(ferr(
            "spec.persistence.timeout",
            format!("must be 1..{MAX_TIMEOUT} seconds, got {t}"),
        ));
    }
    let prefix = match &p.netmask {
        None => None,
        Some(m) => netmask_prefix(m, v6).map_err(|r| ferr("spec.persistence.netmask", r))?,
    };
    Ok((t as u32, prefix))
}

/// The prefix length of a netmask (None for the whole address).
///
/// # Errors
/// Why the mask is refused.
pub fn netmask_prefix(m: &Netmask, v6: bool) -> Result<Option<u8>, String> {
    let full = if v6 { 128 } else { 32 };
    let prefix = match m {
        Netmask::Prefix(n) => *n,
        Netmask::Text(s) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) if !v6 => {
                let a: std::net::Ipv4Addr = s
                    .parse()
                    .map_err(|_| format!("{s:?} is not a dotted IPv4 netmask"))?;
                let bits = u32::from(a);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(format!(
                        "{s} is not a contiguous mask (Sluice persists by prefix)"
                    ));
                }
                i64::from(bits.leading_ones())
            }
            Err(_) => return Err(format!("{s:?} is not a prefix length")),
        },
    };
    if !(1..=full).contains(&prefix) {
        return Err(format!("prefix length must be 1..{full}, got {prefix}"));
    }
    Ok((prefix != full).then_some(prefix as u8))
}

fn real_server(rs: &RealServerSpec, front: &Front, at: &str) -> Result<RsDef, FieldError> {
    let f = |s: &str| format!("{at}.{s}");
    let a = rs
        .address
        .as_deref()
        .ok_or_else(|| ferr(f("address"), "required"))?;
    let addr = parse_ip(a).map_err(|r| ferr(f("address"), r))?.to_ip();
    let method = match rs.method.as_deref() {
        None => Method::Route,
        Some(m) => Method::from_name(m).ok_or_else(|| {
            ferr(
                f("method"),
                format!("must be masq, route, tunnel or fullnat, got {m:?}"),
            )
        })?,
    };
    let (vport, v6) = match front {
        Front::Addr { addr, port, .. } => (*port, addr.is_ipv6()),
        Front::Fwmark { v6, .. } => (0, *v6),
    };
    if addr.is_ipv6() != v6 && method != Method::Tunnel {
        return Err(ferr(
            f("address"),
            "of another address family than the service: only tunnelling servers may be",
        ));
    }
    let port = rs.port.unwrap_or(i64::from(vport));
    let port = u16::try_from(port)
        .map_err(|_| ferr(f("port"), format!("must be 0..65535, got {port}")))?;
    let weight = rs.weight.unwrap_or(1);
    let weight = u16::try_from(weight)
        .map_err(|_| ferr(f("weight"), format!("must be 0..65535, got {weight}")))?;
    let thr = |v: Option<i64>, name: &str| {
        let v = v.unwrap_or(0);
        u32::try_from(v)
            .ok()
            .filter(|v| *v <= i32::MAX as u32)
            .ok_or_else(|| ferr(f(name), format!("must be 0..{}, got {v}", i32::MAX)))
    };
    let upper = thr(rs.upper_threshold, "upperThreshold")?;
    let lower = thr(rs.lower_threshold, "lowerThreshold")?;
    if lower > upper {
        return Err(ferr(
            f("lowerThreshold"),
            format!("{lower} is above the upper threshold {upper} (the kernel's ERANGE)"),
        ));
    }
    Ok(RsDef {
        addr,
        port,
        method,
        weight,
        upper,
        lower,
    })
}

impl VsDef {
    /// The name its [`ServiceSpec`] carries (and errors name it by):
    /// `VirtualService ns/name`.
    pub fn spec_name(&self) -> String {
        format!("{KIND} {}/{}", self.ns, self.name)
    }

    /// Compiles into the service the data path serves.
    ///
    /// # Errors
    /// A [`FieldError`] for what the data path cannot serve yet.
    pub fn compile(&self) -> Result<ServiceSpec, FieldError> {
        let (proto, addr, port) = match self.front {
            Front::Fwmark { .. } => {
                return Err(ferr(
                    "spec.fwmark",
                    "firewall-mark services are not supported yet",
                ))
            }
            Front::Addr { port: 0, .. } => {
                return Err(ferr(
                    "spec.port",
                    "port 0 (every port of the address) is not supported yet",
                ))
            }
            Front::Addr { proto, addr, port } => (proto, addr, port),
        };
        let mut methods = self.real_servers.iter().map(|r| r.method);
        // A service with local addresses and no real server yet is FULLNAT.
        let method = methods.next().unwrap_or(if self.local_addrs.is_empty() {
            Method::Masq
        } else {
            Method::FullNat
        });
        for (i, rs) in self.real_servers.iter().enumerate() {
            if rs.method != method {
                return Err(ferr(
                    format!("spec.realServers[{i}].method"),
                    format!(
                        "real servers of one service with different methods ({} and {}) are not supported yet",
                        method.as_str(),
                        rs.method.as_str()
                    ),
                ));
            }
        }
        let forward = match method {
            Method::Masq => ForwardMethod::Nat,
            Method::Route => ForwardMethod::Dr,
            Method::Tunnel => ForwardMethod::Tunnel,
            Method::FullNat => ForwardMethod::FullNat,
        };
        Ok(ServiceSpec {
            name: self.spec_name(),
            vip: VipKey {
                addr: Addr::from(addr),
                port,
                proto,
            },
            backends: self
                .real_servers
                .iter()
                .map(|r| BackendSpec {
                    addr: Addr::from(r.addr),
                    port: r.port,
                    weight: r.weight,
                    upper: r.upper,
                    lower: r.lower,
                    ..Default::default()
                })
                .collect(),
            sched: self.sched,
            sched_flags: self.flags,
            kind: VipKind::ExternalIp,
            // IPVS NAT keeps the client's address.
            masq: MasqMode::Never,
            affinity_timeout: self.persistence.map(|p| p.0),
            affinity_prefix: self.persistence.and_then(|p| p.1),
            source_ranges: Vec::new(),
            when_empty: WhenEmpty::Reject,
            // IPVS has no traffic policies.
            short_circuit: None,
            forward,
            // FULLNAT sources: the object's local addresses, else the
            // run-wide --snat-address set.
            local_addrs: self.local_addrs.iter().map(|&a| Addr::from(a)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(yaml: &str) -> VirtualService {
        serde_norway::from_str(yaml).unwrap()
    }

    const BASE: &str =
        "apiVersion: sluice.dev/v1\nkind: VirtualService\nmetadata: {name: web, namespace: ipvs}\n";

    fn def(spec: &str) -> Result<VsDef, FieldError> {
        check(&vs(&format!("{BASE}spec: {spec}\n")))
    }

    #[test]
    fn compiles_masq_service_with_persistence() {
        let d = def("{protocol: TCP, address: 198.18.0.100, port: 80, scheduler: wrr, persistence: {timeout: 300, netmask: 255.255.255.0}, realServers: [{address: 198.18.1.11, port: 8080, method: masq, weight: 2, upperThreshold: 10, lowerThreshold: 5}]}").unwrap();
        let s = d.compile().unwrap();
        assert_eq!(s.name, "VirtualService ipvs/web");
        assert_eq!(s.sched, SchedKind::WeightedRoundRobin);
        assert_eq!(s.forward, ForwardMethod::Nat);
        assert_eq!(s.masq, MasqMode::Never);
        assert_eq!(s.affinity_timeout, Some(300));
        assert_eq!(s.affinity_prefix, Some(24));
        let b = s.backends[0];
        assert_eq!((b.port, b.weight, b.upper, b.lower), (8080, 2, 10, 5));
    }

    #[test]
    fn defaults_are_ipvsadms() {
        let d = def("{address: 198.18.0.100, port: 80, persistence: {}, realServers: [{address: 198.18.1.11}]}").unwrap();
        assert_eq!(d.sched, SchedKind::WeightedLeastConn);
        assert_eq!(d.persistence, Some((360, None)));
        let rs = &d.real_servers[0];
        assert_eq!((rs.port, rs.method, rs.weight), (80, Method::Route, 1));
        assert_eq!(d.compile().unwrap().forward, ForwardMethod::Dr);
    }

    #[test]
    fn ipv6_netmask_is_a_prefix() {
        let d = def("{address: '2001:db8::1', port: 443, persistence: {timeout: 60, netmask: 64}}")
            .unwrap();
        assert_eq!(d.persistence, Some((60, Some(64))));
        let d = def("{address: '2001:db8::1', port: 443, persistence: {netmask: 128}}").unwrap();
        assert_eq!(d.persistence, Some((360, None)));
    }

    #[test]
    fn field_errors_name_the_field() {
        let cases = [
            ("{port: 80}", "spec.address", "required"),
            ("{address: 198.18.0.1, port: 70000}", "spec.port", "0..65535"),
            ("{address: 198.18.0.1, port: 80, protocol: ICMP}", "spec.protocol", "TCP, UDP or SCTP"),
            ("{address: 198.18.0.1, port: 80, scheduler: xyz}", "spec.scheduler", "unknown scheduler"),
            ("{address: 198.18.0.1, port: 80, scheduler: rr, schedulerFlags: [sh-port]}", "spec.schedulerFlags[0]", "incompatible"),
            ("{address: 198.18.0.1, port: 80, schedulerFlags: [bogus]}", "spec.schedulerFlags[0]", "invalid scheduler flag"),
            ("{address: 198.18.0.1, port: 0}", "spec.port", "needs persistence"),
            ("{address: 198.18.0.1, port: 80, persistence: {timeout: 0}}", "spec.persistence.timeout", "1..2678400"),
            ("{address: 198.18.0.1, port: 80, persistence: {netmask: 255.0.255.0}}", "spec.persistence.netmask", "contiguous"),
            ("{address: 198.18.0.1, port: 80, realServers: [{address: 198.18.1.1, weight: 65536}]}", "spec.realServers[0].weight", "0..65535"),
            ("{address: 198.18.0.1, port: 80, realServers: [{address: 198.18.1.1, upperThreshold: 5, lowerThreshold: 9}]}", "spec.realServers[0].lowerThreshold", "above"),
            ("{address: 198.18.0.1, port: 80, realServers: [{address: 198.18.1.1, method: nat}]}", "spec.realServers[0].method", "masq, route"),
            ("{address: 198.18.0.1, port: 80, realServers: [{address: '2001:db8::1'}]}", "spec.realServers[0].address", "family"),
            ("{address: 198.18.0.1, port: 80, realServers: [{address: 198.18.1.1}, {address: 198.18.1.1, port: 80}]}", "spec.realServers[1]", "twice"),
            ("{fwmark: 0}", "spec.fwmark", "1..4294967295"),
        ];
        for (spec, field, why) in cases {
            let e = def(spec).expect_err(spec);
            assert_eq!(e.field, field, "{spec}: {e:?}");
            assert!(e.reason.contains(why), "{spec}: {e:?}");
        }
        let e = check(&vs(
            "apiVersion: v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {}\n",
        ))
        .unwrap_err();
        assert_eq!(e.field, "apiVersion");
    }

    #[test]
    fn tunnel_and_fullnat_compile_to_their_methods() {
        for (m, want) in [
            ("tunnel", ForwardMethod::Tunnel),
            ("fullnat", ForwardMethod::FullNat),
        ] {
            let spec = format!(
                "{{address: 198.18.0.1, port: 80, realServers: [{{address: 198.18.1.1, method: {m}}}]}}"
            );
            let s = def(&spec).expect(&spec).compile().expect(&spec);
            assert_eq!(s.forward, want, "{spec}");
        }
    }

    #[test]
    fn local_addresses_are_fullnats_sources() {
        let d = def("{address: 198.18.0.1, port: 80, localAddresses: [198.18.1.5, 198.18.1.6], realServers: [{address: 198.18.1.1, method: fullnat}]}").unwrap();
        let s = d.compile().unwrap();
        assert_eq!(s.forward, ForwardMethod::FullNat);
        assert_eq!(
            s.local_addrs,
            vec![
                Addr::from_v4([198, 18, 1, 5]),
                Addr::from_v4([198, 18, 1, 6])
            ]
        );
        // No real server yet: FULLNAT already, so the table accepts it.
        let d =
            def("{address: '2001:db8::1', port: 80, localAddresses: ['2001:db8:1::5']}").unwrap();
        let s = d.compile().unwrap();
        assert_eq!(s.forward, ForwardMethod::FullNat);
        sluice_dataplane::service::ServiceTable::build(1, vec![s]).unwrap();
        // Without them: no local addresses in the spec.
        let d = def("{address: 198.18.0.1, port: 80, realServers: [{address: 198.18.1.1, method: fullnat}]}").unwrap();
        assert!(d.compile().unwrap().local_addrs.is_empty());
    }

    #[test]
    fn bad_local_addresses_name_the_field() {
        let cases = [
            ("{address: 198.18.0.1, port: 80, localAddresses: [bogus]}", "spec.localAddresses[0]", "bogus"),
            ("{address: 198.18.0.1, port: 80, localAddresses: [198.18.1.5, '2001:db8::5']}", "spec.localAddresses[1]", "address family"),
            ("{address: 198.18.0.1, port: 80, localAddresses: [198.18.1.5, 198.18.1.5]}", "spec.localAddresses[1]", "twice"),
            ("{address: 198.18.0.1, port: 80, localAddresses: [198.18.1.5], realServers: [{address: 198.18.1.1, method: masq}]}", "spec.realServers[0].method", "FULLNAT"),
        ];
        for (spec, field, why) in cases {
            let e = def(spec).expect_err(spec);
            assert_eq!(e.field, field, "{spec}: {e:?}");
            assert!(e.reason.contains(why), "{spec}: {e:?}");
        }
    }

    #[test]
    fn unsupported_yet_is_refused_at_compile() {
        let cases = [
            ("{address: 198.18.0.1, port: 80, realServers: [{address: 198.18.1.1, method: masq}, {address: 198.18.1.2, method: route}]}", "different methods"),
            ("{fwmark: 7, persistence: {}}", "firewall-mark services are not supported yet"),
            ("{address: 198.18.0.1, port: 0, persistence: {}}", "port 0"),
        ];
        for (spec, why) in cases {
            let d = def(spec).expect(spec);
            let e = d.compile().expect_err(spec);
            assert!(e.reason.contains(why), "{spec}: {e:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<VirtualService, _> = serde_norway::from_str(&format!(
            "{BASE}spec: {{address: 198.18.0.1, port: 80, sheduler: rr}}\n"
        ));
        assert!(r.unwrap_err().to_string().contains("sheduler"));
    }
}

#[cfg(test)]
mod file_tests {
    use crate::config::{load_str, ConfigError};

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 198.18.0.100\n  ports: [{port: 80}]\n";

    #[test]
    fn the_example_loads() {
        let cfg = load_str(include_str!("../../../examples/ipvs.yaml"), "ipvs.yaml").unwrap();
        assert_eq!(cfg.services.len(), 2);
        assert_eq!(cfg.services[1].affinity_prefix, Some(24));
        assert_eq!(cfg.services[1].backends[0].upper, 100);
    }

    #[test]
    fn errors_carry_the_line_and_field() {
        let text = format!("{SVC}---\napiVersion: sluice.dev/v1\nkind: VirtualService\nmetadata: {{name: a}}\nspec: {{address: 198.18.0.7, port: 80, realServers: [{{address: 198.18.1.1, weight: -1}}]}}\n");
        let e = load_str(&text, "f.yaml").unwrap_err().to_string();
        assert_eq!(e, "f.yaml:7: VirtualService default/a: spec.realServers[0].weight: must be 0..65535, got -1");
        let text = "apiVersion: sluice.dev/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  address: 198.18.0.7\n  port: [80]\n";
        let e = load_str(text, "f.yaml").unwrap_err();
        assert!(matches!(e, ConfigError::Yaml { line: 6, .. }), "{e}");
    }

    #[test]
    fn a_front_end_claimed_twice_names_both() {
        let vs = "apiVersion: sluice.dev/v1\nkind: VirtualService\nmetadata: {name: dup, namespace: ipvs}\nspec: {address: 198.18.0.100, port: 80}\n";
        let e = load_str(&format!("{SVC}---\n{vs}"), "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("default/web:80") && e.contains("VirtualService ipvs/dup"),
            "{e}"
        );
        let other = vs.replace("name: dup", "name: dup2");
        let e = load_str(&format!("{vs}---\n{other}"), "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("VirtualService ipvs/dup and VirtualService ipvs/dup2"),
            "{e}"
        );
        let e = load_str(&format!("{vs}---\n{vs}"), "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("duplicate VirtualService (first at line 1)"),
            "{e}"
        );
    }

    #[test]
    fn a_real_server_in_two_services_is_fine_and_lists_mix() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: sluice.dev/v1\n  kind: VirtualService\n  metadata: {name: a}\n  spec: {address: 198.18.0.1, port: 80, realServers: [{address: 198.18.1.1, method: masq}]}\n- apiVersion: sluice.dev/v1\n  kind: VirtualService\n  metadata: {name: b}\n  spec: {address: 198.18.0.2, port: 80, realServers: [{address: 198.18.1.1, method: masq}]}\n";
        assert_eq!(load_str(text, "f").unwrap().services.len(), 2);
        let bad = text.replace(
            "port: 80, realServers: [{address: 198.18.1.1, method: masq}]}\n- ",
            "port: 99999}\n- ",
        );
        let e = load_str(&bad, "f").unwrap_err().to_string();
        assert!(e.contains("items[0].spec.port"), "{e}");
    }
}
