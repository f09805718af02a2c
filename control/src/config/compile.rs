//! Checking the typed objects and compiling them into [`ServiceSpec`]s.
//!
//! Values are checked as the API server's validation would (ranges,
//! required fields, name syntax, duplicates), so a file that loads here
//! would also be accepted by Kubernetes for the features in scope, and the
//! errors read like its own: object, field path, cause.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use sluice_dataplane::service::{BackendSpec, SchedKind, ServiceSpec, ServiceTable, VipKey};
use sluice_dataplane::types::{proto, Addr};

use super::k8s::{self, IntOrString};
use super::{Config, ConfigError, ObjectsSummary};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where an object came from, to build errors about it.
#[derive(Clone, Debug)]
struct Ctx {
    line: usize,
    kind: &'static str,
    /// `namespace/name`.
    object: String,
    /// `items[N].` inside a List, else empty.
    prefix: String,
}

/// A checked Service.
struct Svc {
    ctx: Ctx,
    ns: String,
    name: String,
    /// Empty when headless.
    ips: Vec<Addr>,
    ports: Vec<SvcPort>,
}

/// A checked Service port.
struct SvcPort {
    name: String,
    proto: u8,
    port: u16,
}

/// A set of endpoints sharing the same ports: an Endpoints subset or an
/// EndpointSlice.
struct EpGroup {
    /// Ready addresses.
    ready: Vec<Addr>,
    ports: Vec<EpPort>,
}

/// A named endpoint port (the resolved `targetPort` of the Service port
/// with the same name and protocol).
struct EpPort {
    name: String,
    proto: u8,
    port: u16,
}

/// A checked Endpoints or EndpointSlice object.
struct EpSource {
    ctx: Ctx,
    /// `namespace/name` of the object itself.
    key: (String, String),
    /// `namespace/name` of the Service it belongs to.
    service: (String, String),
    groups: Vec<EpGroup>,
}

/// Accumulates the objects of a config, then compiles them.
pub(super) struct Loader {
    origin: Arc<str>,
    services: Vec<Svc>,
    endpoints: Vec<EpSource>,
    slices: Vec<EpSource>,
    summary: ObjectsSummary,
}

impl Loader {
    pub(super) fn new(origin: Arc<str>) -> Loader {
        Loader {
            origin,
            services: Vec::new(),
            endpoints: Vec::new(),
            slices: Vec::new(),
            summary: ObjectsSummary::default(),
        }
    }

    fn err(&self, ctx: &Ctx, field: impl AsRef<str>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            line: ctx.line,
            kind: ctx.kind.to_owned(),
            object: ctx.object.clone(),
            field: format!("{}{}", ctx.prefix, field.as_ref()),
            reason: reason.into(),
        }
    }

    /// Checks one object (its kind was checked before) and keeps it.
    pub(super) fn add(
        &mut self,
        obj: k8s::Object,
        line: usize,
        prefix: &str,
    ) -> Result<(), ConfigError> {
        let (kind, api) = match obj.kind.as_deref() {
            Some("Service") => ("Service", "v1"),
            Some("Endpoints") => ("Endpoints", "v1"),
            Some("EndpointSlice") => ("EndpointSlice", "discovery.k8s.io/v1"),
            // The caller checked the kind on the untyped document already.
            other => {
                return Err(ConfigError::Invalid {
                    origin: self.origin.clone(),
                    line,
                    kind: other.unwrap_or("object").to_owned(),
                    object: String::new(),
                    field: format!("{prefix}kind"),
                    reason: "unsupported kind".to_owned(),
                })
            }
        };
        let meta = obj.metadata.as_ref();
        let ns = meta
            .and_then(|m| m.namespace.as_deref())
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default")
            .to_owned();
        let name = meta.and_then(|m| m.name.clone()).unwrap_or_default();
        let ctx = Ctx {
            line,
            kind,
            object: if name.is_empty() {
                format!("{ns}/(unnamed)")
            } else {
                format!("{ns}/{name}")
            },
            prefix: prefix.to_owned(),
        };
        match obj.api_version.as_deref() {
            Some(v) if v == api => {}
            None => return Err(self.err(&ctx, "apiVersion", format!("required ({api})"))),
            Some(v) => {
                return Err(self.err(
                    &ctx,
                    "apiVersion",
                    format!("must be {api:?} for {kind}, got {v:?}"),
                ))
            }
        }
        if name.is_empty() {
            return Err(self.err(&ctx, "metadata.name", "required"));
        }
        if !is_dns_label(&ns) {
            return Err(self.err(
                &ctx,
                "metadata.namespace",
                format!("must be a DNS label (lowercase letters, digits and '-'), got {ns:?}"),
            ));
        }
        match kind {
            "Service" => {
                if !is_dns_label(&name) {
                    return Err(self.err(
                        &ctx,
                        "metadata.name",
                        format!(
                            "must be a DNS label (lowercase letters, digits and '-'), got {name:?}"
                        ),
                    ));
                }
                let svc = self.service(obj, ctx, ns, name)?;
                self.summary.services += 1;
                if svc.ips.is_empty() {
                    self.summary.headless += 1;
                }
                self.services.push(svc);
            }
            "Endpoints" => {
                let ep = self.endpoints_object(obj, ctx, ns, name)?;
                self.summary.endpoints += 1;
                self.endpoints.push(ep);
            }
            _ => {
                if !is_dns_subdomain(&name) {
                    return Err(self.err(&ctx, "metadata.name", format!("must be a DNS subdomain (lowercase letters, digits, '-' and '.'), got {name:?}")));
                }
                let slice = self.slice(obj, ctx, ns, name)?;
                self.summary.endpoint_slices += 1;
                self.slices.push(slice);
            }
        }
        Ok(())
    }

    fn service(
        &self,
        obj: k8s::Object,
        ctx: Ctx,
        ns: String,
        name: String,
    ) -> Result<Svc, ConfigError> {
        let spec = obj.spec.unwrap_or_default();
        match spec.type_.as_deref() {
            None | Some("ClusterIP") => {}
            Some(t @ ("NodePort" | "LoadBalancer" | "ExternalName")) => {
                return Err(self.err(&ctx, "spec.type", format!("{t} is not supported yet")));
            }
            Some(t) => {
                return Err(self.err(
                    &ctx,
                    "spec.type",
                    format!("must be ClusterIP, NodePort, LoadBalancer or ExternalName, got {t:?}"),
                ));
            }
        }

        // Cluster IPs: `clusterIPs` is authoritative, `clusterIP` must be its
        // first entry when both are given (API validation does the same).
        let cluster_ip = spec.cluster_ip.filter(|s| !s.is_empty());
        let list = spec.cluster_ips.unwrap_or_default();
        if let (Some(single), Some(first)) = (&cluster_ip, list.first()) {
            if single != first {
                return Err(self.err(
                    &ctx,
                    "spec.clusterIPs[0]",
                    format!("must equal spec.clusterIP {single:?}, got {first:?}"),
                ));
            }
        }
        let (raw_ips, field): (Vec<String>, &str) = if list.is_empty() {
            (cluster_ip.into_iter().collect(), "spec.clusterIP")
        } else {
            (list, "spec.clusterIPs")
        };
        let at = |i: usize| {
            if field == "spec.clusterIP" {
                field.to_owned()
            } else {
                format!("{field}[{i}]")
            }
        };
        let headless = raw_ips.first().is_some_and(|ip| ip == "None");
        let mut ips = Vec::new();
        if headless {
            if raw_ips.len() > 1 {
                return Err(self.err(
                    &ctx,
                    at(1),
                    "a headless service (None) has no other cluster IP",
                ));
            }
        } else {
            if raw_ips.is_empty() {
                return Err(self.err(&ctx, "spec.clusterIP", "required: Sluice does not allocate cluster IPs (use None for a headless service)"));
            }
            if raw_ips.len() > 2 {
                return Err(self.err(
                    &ctx,
                    field,
                    format!(
                        "at most two cluster IPs (one per family), got {}",
                        raw_ips.len()
                    ),
                ));
            }
            for (i, raw) in raw_ips.iter().enumerate() {
                let ip = parse_ip(raw).map_err(|r| self.err(&ctx, at(i), r))?;
                if ips.first().is_some_and(|f: &Addr| f.is_v4() == ip.is_v4()) {
                    return Err(self.err(
                        &ctx,
                        at(i),
                        "a dual-stack service needs one IPv4 and one IPv6 cluster IP",
                    ));
                }
                ips.push(ip);
            }
        }

        let raw_ports = spec.ports.unwrap_or_default();
        if raw_ports.is_empty() && !headless {
            return Err(self.err(
                &ctx,
                "spec.ports",
                "required: a ClusterIP service needs at least one port",
            ));
        }
        let mut ports: Vec<SvcPort> = Vec::with_capacity(raw_ports.len());
        let multi = raw_ports.len() > 1;
        for (i, p) in raw_ports.into_iter().enumerate() {
            let f = |leaf: &str| format!("spec.ports[{i}].{leaf}");
            let pname = p.name.unwrap_or_default();
            if pname.is_empty() {
                if multi {
                    return Err(self.err(
                        &ctx,
                        f("name"),
                        "required when a service has more than one port",
                    ));
                }
            } else if !is_dns_label(&pname) {
                return Err(self.err(
                    &ctx,
                    f("name"),
                    format!(
                        "must be a DNS label (lowercase letters, digits and '-'), got {pname:?}"
                    ),
                ));
            }
            let proto =
                parse_proto(p.protocol.as_deref()).map_err(|r| self.err(&ctx, f("protocol"), r))?;
            let port = match p.port {
                None => return Err(self.err(&ctx, f("port"), "required")),
                Some(n) => port_number(n).map_err(|r| self.err(&ctx, f("port"), r))?,
            };
            match p.target_port {
                None => {}
                Some(IntOrString::Int(0)) => {}
                Some(IntOrString::Int(n)) => {
                    port_number(n).map_err(|r| self.err(&ctx, f("targetPort"), r))?;
                }
                Some(IntOrString::Str(s)) if !s.is_empty() && !is_iana_svc_name(&s) => {
                    return Err(self.err(&ctx, f("targetPort"), format!("must be a port number or a port name (at most 15 lowercase letters, digits and '-', with a letter), got {s:?}")));
                }
                Some(IntOrString::Str(_)) => {}
            }
            if let Some(j) = ports
                .iter()
                .position(|q| !pname.is_empty() && q.name == pname)
            {
                return Err(self.err(
                    &ctx,
                    f("name"),
                    format!("duplicate port name {pname:?} (also spec.ports[{j}])"),
                ));
            }
            if let Some(j) = ports
                .iter()
                .position(|q| q.port == port && q.proto == proto)
            {
                return Err(self.err(
                    &ctx,
                    f("port"),
                    format!(
                        "duplicate port {port}/{} (also spec.ports[{j}])",
                        proto_name(proto)
                    ),
                ));
            }
            ports.push(SvcPort {
                name: pname,
                proto,
                port,
            });
        }
        Ok(Svc {
            ctx,
            ns,
            name,
            ips,
            ports,
        })
    }

    fn endpoints_object(
        &self,
        obj: k8s::Object,
        ctx: Ctx,
        ns: String,
        name: String,
    ) -> Result<EpSource, ConfigError> {
        let mut groups = Vec::new();
        for (i, subset) in obj.subsets.unwrap_or_default().into_iter().enumerate() {
            let mut ready = Vec::new();
            for (j, a) in subset.addresses.unwrap_or_default().into_iter().enumerate() {
                let f = format!("subsets[{i}].addresses[{j}].ip");
                let ip = a.ip.ok_or_else(|| self.err(&ctx, &f, "required"))?;
                ready.push(parse_ip(&ip).map_err(|r| self.err(&ctx, &f, r))?);
            }
            for (j, a) in subset
                .not_ready_addresses
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                // Not used for new flows, but a typo here is still a typo.
                let f = format!("subsets[{i}].notReadyAddresses[{j}].ip");
                let ip = a.ip.ok_or_else(|| self.err(&ctx, &f, "required"))?;
                parse_ip(&ip).map_err(|r| self.err(&ctx, &f, r))?;
            }
            let ports = self.endpoint_ports(
                &ctx,
                subset.ports.unwrap_or_default(),
                &format!("subsets[{i}].ports"),
                true,
            )?;
            groups.push(EpGroup { ready, ports });
        }
        Ok(EpSource {
            ctx,
            key: (ns.clone(), name.clone()),
            service: (ns, name),
            groups,
        })
    }

    fn slice(
        &self,
        obj: k8s::Object,
        ctx: Ctx,
        ns: String,
        name: String,
    ) -> Result<EpSource, ConfigError> {
        let label = format!("metadata.labels[\"{SERVICE_NAME_LABEL}\"]");
        let service = obj
            .metadata
            .and_then(|m| m.labels)
            .and_then(|mut l| l.remove(SERVICE_NAME_LABEL))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                self.err(
                    &ctx,
                    &label,
                    "required: it names the Service this slice belongs to",
                )
            })?;
        let v4 = match obj.address_type.as_deref() {
            Some("IPv4") => true,
            Some("IPv6") => false,
            Some("FQDN") => {
                return Err(self.err(
                    &ctx,
                    "addressType",
                    "FQDN is not supported (Sluice forwards to IP addresses)",
                ))
            }
            Some(t) => {
                return Err(self.err(
                    &ctx,
                    "addressType",
                    format!("must be IPv4, IPv6 or FQDN, got {t:?}"),
                ))
            }
            None => return Err(self.err(&ctx, "addressType", "required (IPv4 or IPv6)")),
        };
        let mut ready = Vec::new();
        for (i, ep) in obj.endpoints.unwrap_or_default().into_iter().enumerate() {
            let addrs = ep.addresses.unwrap_or_default();
            if addrs.is_empty() {
                return Err(self.err(
                    &ctx,
                    format!("endpoints[{i}].addresses"),
                    "must hold at least one address",
                ));
            }
            let mut first = None;
            for (j, raw) in addrs.iter().enumerate() {
                let f = format!("endpoints[{i}].addresses[{j}]");
                let ip = parse_ip(raw).map_err(|r| self.err(&ctx, &f, r))?;
                if ip.is_v4() != v4 {
                    return Err(self.err(
                        &ctx,
                        &f,
                        format!(
                            "{raw:?} is not an {} address (the slice's addressType)",
                            if v4 { "IPv4" } else { "IPv6" }
                        ),
                    ));
                }
                first.get_or_insert(ip);
            }
            // `ready` absent means ready (its API doc: "nil should be
            // interpreted as true").
            let is_ready = ep.conditions.and_then(|c| c.ready).unwrap_or(true);
            if let (true, Some(ip)) = (is_ready, first) {
                ready.push(ip);
            }
        }
        let ports = self.endpoint_ports(&ctx, obj.ports.unwrap_or_default(), "ports", false)?;
        Ok(EpSource {
            ctx,
            key: (ns.clone(), name),
            service: (ns, service),
            groups: vec![EpGroup { ready, ports }],
        })
    }

    /// Endpoint ports; `port` is required in Endpoints, optional in a slice
    /// (where a port without a number is unrestricted, which kube-proxy, and
    /// Sluice, skip).
    fn endpoint_ports(
        &self,
        ctx: &Ctx,
        raw: Vec<k8s::EndpointPort>,
        field: &str,
        port_required: bool,
    ) -> Result<Vec<EpPort>, ConfigError> {
        let mut ports: Vec<EpPort> = Vec::with_capacity(raw.len());
        for (i, p) in raw.into_iter().enumerate() {
            let f = |leaf: &str| format!("{field}[{i}].{leaf}");
            let proto =
                parse_proto(p.protocol.as_deref()).map_err(|r| self.err(ctx, f("protocol"), r))?;
            let name = p.name.unwrap_or_default();
            let port = match p.port {
                None if port_required => return Err(self.err(ctx, f("port"), "required")),
                None => continue,
                Some(n) => port_number(n).map_err(|r| self.err(ctx, f("port"), r))?,
            };
            if let Some(j) = ports
                .iter()
                .position(|q| q.name == name && q.proto == proto)
            {
                return Err(self.err(
                    ctx,
                    f("name"),
                    format!(
                        "duplicate port {name:?}/{} (also {field}[{j}])",
                        proto_name(proto)
                    ),
                ));
            }
            ports.push(EpPort { name, proto, port });
        }
        Ok(ports)
    }

    /// Cross-checks the objects and compiles the services.
    pub(super) fn finish(self) -> Result<Config, ConfigError> {
        let mut by_name: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (i, s) in self.services.iter().enumerate() {
            match by_name.entry((&s.ns, &s.name)) {
                Entry::Vacant(v) => {
                    v.insert(i);
                }
                Entry::Occupied(o) => {
                    let first = &self.services[*o.get()];
                    return Err(self.err(
                        &s.ctx,
                        "metadata.name",
                        format!("duplicate Service (first at line {})", first.ctx.line),
                    ));
                }
            }
        }
        // Which endpoint source feeds which service.
        let mut from_endpoints: Vec<Option<&EpSource>> = vec![None; self.services.len()];
        let mut from_slices: Vec<Vec<&EpSource>> = vec![Vec::new(); self.services.len()];
        let mut seen: BTreeMap<(&str, &str), &Ctx> = BTreeMap::new();
        for ep in &self.endpoints {
            if let Some(first) = seen.insert((&ep.key.0, &ep.key.1), &ep.ctx) {
                return Err(self.err(
                    &ep.ctx,
                    "metadata.name",
                    format!("duplicate Endpoints (first at line {})", first.line),
                ));
            }
            let Some(&i) = by_name.get(&(ep.service.0.as_str(), ep.service.1.as_str())) else {
                return Err(self.err(&ep.ctx, "metadata.name", format!("no Service {}/{} in this config (Endpoints take the name and namespace of their Service)", ep.service.0, ep.service.1)));
            };
            from_endpoints[i] = Some(ep);
        }
        seen.clear();
        for sl in &self.slices {
            if let Some(first) = seen.insert((&sl.key.0, &sl.key.1), &sl.ctx) {
                return Err(self.err(
                    &sl.ctx,
                    "metadata.name",
                    format!("duplicate EndpointSlice (first at line {})", first.line),
                ));
            }
            let Some(&i) = by_name.get(&(sl.service.0.as_str(), sl.service.1.as_str())) else {
                return Err(self.err(
                    &sl.ctx,
                    format!("metadata.labels[\"{SERVICE_NAME_LABEL}\"]"),
                    format!(
                        "no Service {}/{} in this config",
                        sl.service.0, sl.service.1
                    ),
                ));
            };
            from_slices[i].push(sl);
        }

        let mut specs = Vec::new();
        for (i, svc) in self.services.iter().enumerate() {
            // As kube-proxy: slices, when there are any, win over Endpoints.
            let sources: Vec<&EpSource> = if from_slices[i].is_empty() {
                from_endpoints[i].into_iter().collect()
            } else {
                std::mem::take(&mut from_slices[i])
            };
            for sp in &svc.ports {
                for &vip in &svc.ips {
                    let mut backends = Vec::new();
                    for g in sources.iter().flat_map(|s| &s.groups) {
                        let Some(p) = g
                            .ports
                            .iter()
                            .find(|p| p.name == sp.name && p.proto == sp.proto)
                        else {
                            continue;
                        };
                        backends.extend(g.ready.iter().filter(|a| a.is_v4() == vip.is_v4()).map(
                            |&addr| BackendSpec {
                                addr,
                                port: p.port,
                                weight: 1,
                                ..Default::default()
                            },
                        ));
                    }
                    backends.sort_by_key(|b| (b.addr, b.port));
                    backends.dedup();
                    specs.push(ServiceSpec {
                        name: if sp.name.is_empty() {
                            format!("{}/{}:{}", svc.ns, svc.name, sp.port)
                        } else {
                            format!("{}/{}:{}", svc.ns, svc.name, sp.name)
                        },
                        vip: VipKey {
                            addr: vip,
                            port: sp.port,
                            proto: sp.proto,
                        },
                        backends,
                        sched: SchedKind::RoundRobin,
                        ..Default::default()
                    });
                }
            }
        }
        ServiceTable::build(0, specs.clone())?;
        Ok(Config {
            services: specs,
            objects: self.summary,
        })
    }
}

fn parse_ip(raw: &str) -> Result<Addr, String> {
    match raw.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => Err(format!(
            "IPv4-mapped IPv6 addresses are not supported, got {raw:?}; write the IPv4 address"
        )),
        Ok(ip) => Ok(Addr::from(ip)),
        Err(_) => Err(format!("not an IP address: {raw:?}")),
    }
}

fn parse_proto(raw: Option<&str>) -> Result<u8, String> {
    match raw {
        None | Some("TCP") => Ok(proto::TCP),
        Some("UDP") => Ok(proto::UDP),
        Some("SCTP") => Ok(proto::SCTP),
        Some(p) => Err(format!("must be TCP, UDP or SCTP, got {p:?}")),
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::UDP => "UDP",
        proto::SCTP => "SCTP",
        _ => "TCP",
    }
}

fn port_number(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("must be between 1 and 65535, got {n}")),
    }
}

/// RFC 1123 label: what Kubernetes requires of namespaces and port names.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 bytes.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// IANA service name (RFC 6335 § 5.1), what a named `targetPort` must be.
fn is_iana_svc_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}
