//! Checking the typed objects into the loader's own types.
//!
//! Values are checked as the API server's validation would (ranges,
//! required fields, name syntax, duplicates, which fields a Service type
//! allows), so a file that loads here would also be accepted by Kubernetes,
//! and the errors read like its own: object, field path, cause. Turning the
//! checked objects into services, DNS records and health checks is
//! `emit.rs`'s job.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use sluice_dataplane::service::ForwardMethod;
use sluice_dataplane::types::{proto, Addr, Cidr};

use super::k8s::{self, IntOrString};
use super::{CompileCtx, ConfigError, ObjectsSummary};

/// The label that ties an EndpointSlice to its Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The annotation kube-proxy reads for source ranges when
/// `spec.loadBalancerSourceRanges` is empty (comma-separated CIDRs).
const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// The annotation that picks a Service's forwarding method: `nat` (the
/// default, kube-proxy's DNAT), `dr` (direct routing, IPVS `-g`),
/// `fullnat` (DPVS's FULLNAT) or `ipip` (IP-in-IP tunnelling, IPVS `-i`).
pub const FORWARDING_METHOD_ANNOTATION: &str = "sluice.dev/forwarding-method";

/// The annotation that gives a FULLNAT Service its local addresses
/// (DPVS's `--add-laddr`): comma-separated addresses of the host's own,
/// either family; each front end uses those of its own family.
pub const LOCAL_ADDRESSES_ANNOTATION: &str = "sluice.dev/local-addresses";

/// The methods [`FORWARDING_METHOD_ANNOTATION`] accepts, for messages.
const METHODS: &str = "\"nat\", \"dr\", \"fullnat\" or \"ipip\"";

/// Where an object came from, to build errors about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Ctx {
    pub line: usize,
    pub kind: &'static str,
    /// `namespace/name`.
    pub object: String,
    /// `items[N].` inside a List, else empty.
    pub prefix: String,
}

/// `spec.type`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum SvcType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Policy {
    Cluster,
    Local,
}

/// A checked Service.
pub(super) struct Svc {
    pub ctx: Ctx,
    pub ns: String,
    pub name: String,
    pub ty: SvcType,
    /// `clusterIP: None`.
    pub headless: bool,
    /// Cluster IPs, in `clusterIPs` order; empty when headless or
    /// ExternalName.
    pub ips: Vec<Addr>,
    pub ports: Vec<SvcPort>,
    /// ExternalName's target, without a trailing dot.
    pub external_name: String,
    /// Empty: no selector (endpoints are managed by someone else).
    pub selector: BTreeMap<String, String>,
    pub external_ips: Vec<Addr>,
    /// `status.loadBalancer.ingress[].ip` then `spec.loadBalancerIP`
    /// (LoadBalancer only), deduplicated.
    pub lb_ips: Vec<Addr>,
    /// Allowed client prefixes, each with its family (true: IPv4).
    pub source_ranges: Vec<(bool, Cidr)>,
    pub external_policy: Policy,
    pub internal_policy: Policy,
    pub affinity: Option<u32>,
    /// Whether ports without a `nodePort` get one allocated.
    pub allocate_node_ports: bool,
    /// An explicit `healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// LoadBalancer with `externalTrafficPolicy: Local`.
    pub needs_health_check: bool,
    pub publish_not_ready: bool,
    /// From [`FORWARDING_METHOD_ANNOTATION`].
    pub forward: ForwardMethod,
    /// From [`LOCAL_ADDRESSES_ANNOTATION`] (both families).
    pub local_addrs: Vec<Addr>,
    /// From the scheduling annotations (`sched.rs`).
    pub sched: super::sched::Scheduling,
    /// From the health-check annotations (`check.rs`).
    pub check: Option<crate::check::ServiceCheck>,
    /// From the persistence-netmask annotation (`persistence.rs`).
    pub affinity_prefix: Option<u8>,
}

/// A checked Service port.
pub(super) struct SvcPort {
    pub name: String,
    pub proto: u8,
    pub port: u16,
    pub target: Target,
    /// An explicit `nodePort`.
    pub node_port: Option<u16>,
}

/// A resolved-or-named `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Port(u16),
    Name(String),
}

/// One endpoint address with its conditions (EndpointSlice semantics).
#[derive(Clone, Debug)]
pub(super) struct Ep {
    pub addr: Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

/// A set of endpoints sharing the same ports: an Endpoints subset, an
/// EndpointSlice, or one Pod.
pub(super) struct EpGroup {
    pub eps: Vec<Ep>,
    pub ports: Vec<EpPort>,
}

/// A named endpoint port (the resolved `targetPort` of the Service port
/// with the same name and protocol), or a named container port.
#[derive(Clone, Debug)]
pub(super) struct EpPort {
    pub name: String,
    pub proto: u8,
    pub port: u16,
}

/// A checked Endpoints or EndpointSlice object.
pub(super) struct EpSource {
    pub ctx: Ctx,
    /// `namespace/name` of the object itself.
    pub key: (String, String),
    /// `namespace/name` of the Service it belongs to.
    pub service: (String, String),
    pub groups: Vec<EpGroup>,
}

/// A checked Pod.
pub(super) struct PodObj {
    pub ctx: Ctx,
    pub ns: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub node: Option<String>,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<Addr>,
    /// The `Ready` condition is `"True"`.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// Phase `Succeeded` or `Failed`: never an endpoint.
    pub terminal: bool,
    /// Container ports (named or not).
    pub ports: Vec<EpPort>,
}

/// Accumulates the objects of a config, then compiles them (`emit.rs`).
pub(super) struct Loader<'c> {
    pub origin: Arc<str>,
    pub cc: &'c CompileCtx,
    pub services: Vec<Svc>,
    pub endpoints: Vec<EpSource>,
    pub slices: Vec<EpSource>,
    pub pods: Vec<PodObj>,
    pub summary: ObjectsSummary,
}

impl<'c> Loader<'c> {
    pub(super) fn new(origin: Arc<str>, cc: &'c CompileCtx) -> Loader<'c> {
        Loader {
            origin,
            cc,
            services: Vec::new(),
            endpoints: Vec::new(),
            slices: Vec::new(),
            pods: Vec::new(),
            summary: ObjectsSummary::default(),
        }
    }

    pub(super) fn err(
        &self,
        ctx: &Ctx,
        field: impl AsRef<str>,
        reason: impl Into<String>,
    ) -> ConfigError {
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
            Some("Pod") => ("Pod", "v1"),
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
                if svc.headless {
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
                if kind == "Pod" {
                    let pod = self.pod(obj, ctx, ns, name)?;
                    self.summary.pods += 1;
                    self.pods.push(pod);
                } else {
                    let slice = self.slice(obj, ctx, ns, name)?;
                    self.summary.endpoint_slices += 1;
                    self.slices.push(slice);
                }
            }
        }
        Ok(())
    }

    /// Checks a Service as the API server's `ValidateService` would, for the
    /// fields Sluice reads.
    fn service(
        &self,
        obj: k8s::Object,
        ctx: Ctx,
        ns: String,
        name: String,
    ) -> Result<Svc, ConfigError> {
        let annotations = obj.metadata.and_then(|m| m.annotations).unwrap_or_default();
        let spec = obj.spec.unwrap_or_default();
        let status = obj.status.unwrap_or_default();
        let ty = match spec.type_.as_deref() {
            None | Some("ClusterIP") => SvcType::ClusterIp,
            Some("NodePort") => SvcType::NodePort,
            Some("LoadBalancer") => SvcType::LoadBalancer,
            Some("ExternalName") => SvcType::ExternalName,
            Some(t) => {
                return Err(self.err(
                    &ctx,
                    "spec.type",
                    format!("must be ClusterIP, NodePort, LoadBalancer or ExternalName, got {t:?}"),
                ));
            }
        };
        let type_name = match ty {
            SvcType::ClusterIp => "ClusterIP",
            SvcType::NodePort => "NodePort",
            SvcType::LoadBalancer => "LoadBalancer",
            SvcType::ExternalName => "ExternalName",
        };

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
        let mut external_name = String::new();
        let headless = raw_ips.first().is_some_and(|ip| ip == "None");
        let mut ips = Vec::new();
        if ty == SvcType::ExternalName {
            if !raw_ips.is_empty() {
                return Err(self.err(&ctx, field, "may not be set for ExternalName services"));
            }
            let raw = spec.external_name.unwrap_or_default();
            if raw.is_empty() {
                return Err(self.err(
                    &ctx,
                    "spec.externalName",
                    "required for ExternalName services",
                ));
            }
            // As the API server: a trailing dot (an absolute name) is allowed.
            let clean = raw.strip_suffix('.').unwrap_or(&raw);
            if !is_dns_subdomain(clean) {
                return Err(self.err(
                    &ctx,
                    "spec.externalName",
                    format!(
                        "must be a DNS name (lowercase letters, digits, '-' and '.'), got {raw:?}"
                    ),
                ));
            }
            external_name = clean.to_owned();
            for (f, set) in [
                ("spec.ipFamilies", spec.ip_families.is_some()),
                ("spec.ipFamilyPolicy", spec.ip_family_policy.is_some()),
            ] {
                if set {
                    return Err(self.err(&ctx, f, "may not be set for ExternalName services"));
                }
            }
        } else if headless {
            if raw_ips.len() > 1 {
                return Err(self.err(
                    &ctx,
                    at(1),
                    "a headless service (None) has no other cluster IP",
                ));
            }
            if matches!(ty, SvcType::NodePort | SvcType::LoadBalancer) {
                return Err(self.err(
                    &ctx,
                    at(0),
                    format!("may not be None for {type_name} services"),
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
        if ty != SvcType::ExternalName {
            self.ip_families(
                &ctx,
                spec.ip_families.as_deref(),
                spec.ip_family_policy.as_deref(),
                &ips,
                headless,
                field,
            )?;
        }

        // Ports.
        let raw_ports = spec.ports.unwrap_or_default();
        if raw_ports.is_empty() && !headless && ty != SvcType::ExternalName {
            return Err(self.err(
                &ctx,
                "spec.ports",
                format!("required: a {type_name} service needs at least one port"),
            ));
        }
        let node_ports_allowed = matches!(ty, SvcType::NodePort | SvcType::LoadBalancer);
        let (lo, hi) = self.cc.nodeport_range;
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
            let target = match p.target_port {
                None | Some(IntOrString::Int(0)) => Target::Port(port),
                Some(IntOrString::Int(n)) => {
                    Target::Port(port_number(n).map_err(|r| self.err(&ctx, f("targetPort"), r))?)
                }
                Some(IntOrString::Str(s)) if s.is_empty() => Target::Port(port),
                Some(IntOrString::Str(s)) if !is_iana_svc_name(&s) => {
                    return Err(self.err(&ctx, f("targetPort"), format!("must be a port number or a port name (at most 15 lowercase letters, digits and '-', with a letter), got {s:?}")));
                }
                Some(IntOrString::Str(s)) => Target::Name(s),
            };
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(_) if !node_ports_allowed => {
                    return Err(self.err(
                        &ctx,
                        f("nodePort"),
                        format!("may not be used when type is {type_name}"),
                    ))
                }
                Some(n) => match u16::try_from(n) {
                    Ok(np) if (lo..=hi).contains(&np) => Some(np),
                    _ => {
                        return Err(self.err(
                            &ctx,
                            f("nodePort"),
                            format!("must be in the node-port range {lo}-{hi}, got {n}"),
                        ))
                    }
                },
            };
            // A port that clashes with an earlier one: the error names both.
            let clash = |leaf: &str, what: String, same: &dyn Fn(&SvcPort) -> bool| match ports
                .iter()
                .position(same)
            {
                Some(j) => Err(self.err(
                    &ctx,
                    f(leaf),
                    format!("duplicate {what} (also spec.ports[{j}])"),
                )),
                None => Ok(()),
            };
            clash("name", format!("port name {pname:?}"), &|q| {
                !pname.is_empty() && q.name == pname
            })?;
            clash("port", format!("port {port}/{}", proto_name(proto)), &|q| {
                q.port == port && q.proto == proto
            })?;
            if let Some(np) = node_port {
                clash(
                    "nodePort",
                    format!("nodePort {np}/{}", proto_name(proto)),
                    &|q| q.node_port == Some(np) && q.proto == proto,
                )?;
            }
            ports.push(SvcPort {
                name: pname,
                proto,
                port,
                target,
                node_port,
            });
        }

        // externalIPs.
        let mut external_ips = Vec::new();
        for (i, raw) in spec.external_ips.unwrap_or_default().iter().enumerate() {
            let ip =
                parse_ip(raw).map_err(|r| self.err(&ctx, format!("spec.externalIPs[{i}]"), r))?;
            if !external_ips.contains(&ip) {
                external_ips.push(ip);
            }
        }

        // Load balancer addresses and source ranges.
        let is_lb = ty == SvcType::LoadBalancer;
        let mut lb_ips = Vec::new();
        if is_lb {
            let ingress = status
                .load_balancer
                .and_then(|l| l.ingress)
                .unwrap_or_default();
            for (i, ing) in ingress.into_iter().enumerate() {
                let f = |leaf: &str| format!("status.loadBalancer.ingress[{i}].{leaf}");
                match ing.ip_mode.as_deref() {
                    None | Some("VIP") => {}
                    // KEP-1860: the load balancer proxies to the nodes
                    // itself; kube-proxy does not capture this address.
                    Some("Proxy") => continue,
                    Some(m) => {
                        return Err(self.err(
                            &ctx,
                            f("ipMode"),
                            format!("must be VIP or Proxy, got {m:?}"),
                        ))
                    }
                }
                let Some(raw) = ing.ip.filter(|s| !s.is_empty()) else {
                    continue; // hostname only
                };
                let ip = parse_ip(&raw).map_err(|r| self.err(&ctx, f("ip"), r))?;
                if !lb_ips.contains(&ip) {
                    lb_ips.push(ip);
                }
            }
        }
        if let Some(raw) = spec.load_balancer_ip.filter(|s| !s.is_empty()) {
            let ip = parse_ip(&raw).map_err(|r| self.err(&ctx, "spec.loadBalancerIP", r))?;
            if is_lb && !lb_ips.contains(&ip) {
                lb_ips.push(ip);
            }
        }
        let mut source_ranges = Vec::new();
        let spec_ranges = spec.load_balancer_source_ranges.unwrap_or_default();
        if !spec_ranges.is_empty() {
            if !is_lb {
                return Err(self.err(
                    &ctx,
                    "spec.loadBalancerSourceRanges",
                    "may only be used when type is LoadBalancer",
                ));
            }
            for (i, raw) in spec_ranges.iter().enumerate() {
                let c = parse_cidr(raw).map_err(|r| {
                    self.err(&ctx, format!("spec.loadBalancerSourceRanges[{i}]"), r)
                })?;
                source_ranges.push(c);
            }
        } else if let Some(v) = annotations.get(SOURCE_RANGES_ANNOTATION) {
            let f = format!("metadata.annotations[\"{SOURCE_RANGES_ANNOTATION}\"]");
            let serde_norway::Value::String(list) = v else {
                return Err(self.err(&ctx, &f, "must be a string of comma-separated CIDRs"));
            };
            if is_lb {
                for raw in list.split(',').filter(|s| !s.trim().is_empty()) {
                    source_ranges.push(parse_cidr(raw).map_err(|r| self.err(&ctx, &f, r))?);
                }
            }
        }

        // Traffic policies.
        let policy = |raw: Option<String>, f: &str| match raw.as_deref() {
            None | Some("") | Some("Cluster") => Ok(Policy::Cluster),
            Some("Local") => Ok(Policy::Local),
            Some(p) => Err(self.err(&ctx, f, format!("must be Cluster or Local, got {p:?}"))),
        };
        let external_policy = policy(spec.external_traffic_policy, "spec.externalTrafficPolicy")?;
        let internal_policy = policy(spec.internal_traffic_policy, "spec.internalTrafficPolicy")?;

        // healthCheckNodePort: only `type: LoadBalancer` with
        // `externalTrafficPolicy: Local` has one (apiservice.NeedsHealthCheck).
        let needs_health_check = is_lb && external_policy == Policy::Local;
        let health_check_node_port =
            match spec.health_check_node_port {
                None | Some(0) => None,
                Some(_) if !needs_health_check => return Err(self.err(
                    &ctx,
                    "spec.healthCheckNodePort",
                    "may only be set when type is LoadBalancer and externalTrafficPolicy is Local",
                )),
                Some(n) => match u16::try_from(n) {
                    Ok(p) if (lo..=hi).contains(&p) => Some(p),
                    _ => {
                        return Err(self.err(
                            &ctx,
                            "spec.healthCheckNodePort",
                            format!("must be in the node-port range {lo}-{hi}, got {n}"),
                        ))
                    }
                },
            };

        // Session affinity.
        let timeout = spec
            .session_affinity_config
            .and_then(|c| c.client_ip)
            .map(|c| c.timeout_seconds);
        let affinity = match spec.session_affinity.as_deref() {
            None | Some("") | Some("None") => {
                if timeout.is_some() {
                    return Err(self.err(
                        &ctx,
                        "spec.sessionAffinityConfig",
                        "must not be set when sessionAffinity is None",
                    ));
                }
                None
            }
            Some("ClientIP") => match timeout.flatten() {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Some(t),
                    _ => {
                        return Err(self.err(
                            &ctx,
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("must be between 1 and {MAX_AFFINITY_TIMEOUT}, got {t}"),
                        ))
                    }
                },
            },
            Some(a) => {
                return Err(self.err(
                    &ctx,
                    "spec.sessionAffinity",
                    format!("must be None or ClientIP, got {a:?}"),
                ))
            }
        };

        let allocate_node_ports = match ty {
            SvcType::NodePort => true,
            SvcType::LoadBalancer => spec.allocate_load_balancer_node_ports.unwrap_or(true),
            _ => false,
        };
        let forward = self.forwarding_method(
            &ctx,
            &annotations,
            ty,
            type_name,
            headless,
            &ports,
            allocate_node_ports,
        )?;

        let local_addrs = self.local_addresses(&ctx, &annotations, forward)?;
        let sched = super::sched::scheduling(self, &ctx, &annotations, self.cc.scheduler)?;
        let check = super::check::health_check(self, &ctx, &annotations)?;
        let affinity_prefix =
            super::persistence::netmask(self, &ctx, &annotations, affinity.is_some())?;

        let selector = if ty == SvcType::ExternalName {
            BTreeMap::new()
        } else {
            spec.selector.unwrap_or_default()
        };
        Ok(Svc {
            ctx,
            ns,
            name,
            ty,
            headless,
            ips,
            ports,
            external_name,
            selector,
            external_ips,
            lb_ips,
            source_ranges,
            external_policy,
            internal_policy,
            affinity,
            allocate_node_ports,
            health_check_node_port,
            needs_health_check,
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
            forward,
            local_addrs,
            sched,
            check,
            affinity_prefix,
        })
    }

    /// The [`LOCAL_ADDRESSES_ANNOTATION`]: addresses, comma-separated,
    /// without duplicates, on a `fullnat` Service only. Whether the host
    /// owns them is checked when the config is applied
    /// (`reconcile::compile`), where the host's addresses are known.
    fn local_addresses(
        &self,
        ctx: &Ctx,
        annotations: &BTreeMap<String, serde_norway::Value>,
        method: ForwardMethod,
    ) -> Result<Vec<Addr>, ConfigError> {
        let f = format!("metadata.annotations[\"{LOCAL_ADDRESSES_ANNOTATION}\"]");
        let text = match annotations.get(LOCAL_ADDRESSES_ANNOTATION) {
            None => return Ok(Vec::new()),
            Some(serde_norway::Value::String(v)) => v,
            Some(_) => {
                return Err(self.err(ctx, &f, "must be a string of comma-separated addresses"))
            }
        };
        if method != ForwardMethod::FullNat {
            return Err(self.err(
                ctx,
                &f,
                format!(
                    "local addresses need forwarding method fullnat ({FORWARDING_METHOD_ANNOTATION}: fullnat), not {}",
                    method.as_str()
                ),
            ));
        }
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ip: std::net::IpAddr = part
                .parse()
                .map_err(|_| self.err(ctx, &f, format!("{part:?} is not an IP address")))?;
            let a = Addr::from(ip);
            if out.contains(&a) {
                return Err(self.err(ctx, &f, format!("{part} is listed twice")));
            }
            out.push(a);
        }
        if out.is_empty() {
            return Err(self.err(ctx, &f, "lists no address"));
        }
        Ok(out)
    }

    /// The [`FORWARDING_METHOD_ANNOTATION`], checked against what direct
    /// routing can do. DR leaves the packet as the client sent it, so:
    /// * every front end must answer on the port the backends listen on:
    ///   a numeric `targetPort` must equal `port` (a named one is checked
    ///   per endpoint when the services are emitted), and there may be no
    ///   node port (`type: NodePort`, an explicit `nodePort`, or a
    ///   LoadBalancer that allocates them: it must say
    ///   `allocateLoadBalancerNodePorts: false`);
    /// * there must be a cluster IP to forward to (not headless, not
    ///   ExternalName).
    ///
    /// The client is never masqueraded in DR: the backend answers it
    /// directly, so there is no reply to translate. `externalTrafficPolicy`
    /// keeps its endpoint choice (Cluster: all, Local: this node's only,
    /// none → drop), but Cluster no longer implies SNAT, and
    /// `--cluster-cidr` / `--masquerade-all` do not apply.
    #[allow(clippy::too_many_arguments)]
    fn forwarding_method(
        &self,
        ctx: &Ctx,
        annotations: &BTreeMap<String, serde_norway::Value>,
        ty: SvcType,
        type_name: &str,
        headless: bool,
        ports: &[SvcPort],
        allocate_node_ports: bool,
    ) -> Result<ForwardMethod, ConfigError> {
        let f = format!("metadata.annotations[\"{FORWARDING_METHOD_ANNOTATION}\"]");
        let method = match annotations.get(FORWARDING_METHOD_ANNOTATION) {
            None => return Ok(ForwardMethod::Nat),
            Some(serde_norway::Value::String(v)) => match v.trim() {
                "nat" => ForwardMethod::Nat,
                "dr" => ForwardMethod::Dr,
                "fullnat" => ForwardMethod::FullNat,
                "ipip" => ForwardMethod::Tunnel,
                other => {
                    return Err(self.err(ctx, &f, format!("must be {METHODS}, got {other:?}")))
                }
            },
            Some(_) => return Err(self.err(ctx, &f, format!("must be a string: {METHODS}"))),
        };
        // FULLNAT rewrites ports as NAT does: nothing more to check. IPIP
        // sends the packet unchanged, as DR: the same rules.
        let (m, how) = match method {
            ForwardMethod::Dr => ("dr", "direct routing"),
            ForwardMethod::Tunnel => ("ipip", "ipip tunnelling"),
            _ => return Ok(method),
        };
        if ty == SvcType::ExternalName || headless {
            return Err(self.err(
                ctx,
                &f,
                format!("{m} needs a cluster IP to forward: headless and ExternalName services forward nothing"),
            ));
        }
        if ty == SvcType::NodePort {
            return Err(self.err(
                ctx,
                "spec.type",
                format!("{type_name} cannot use forwarding method {m}: a node port differs from the port the backends listen on, and {how} cannot remap ports (use ClusterIP, externalIPs or LoadBalancer)"),
            ));
        }
        for (i, sp) in ports.iter().enumerate() {
            if let Target::Port(t) = sp.target {
                if t != sp.port {
                    return Err(self.err(
                        ctx,
                        format!("spec.ports[{i}].targetPort"),
                        format!("must equal port {} with forwarding method {m} ({how} cannot remap ports), got {t}", sp.port),
                    ));
                }
            }
            if sp.node_port.is_some() {
                return Err(self.err(
                    ctx,
                    format!("spec.ports[{i}].nodePort"),
                    format!("may not be set with forwarding method {m}: {how} cannot remap ports"),
                ));
            }
        }
        if allocate_node_ports {
            return Err(self.err(
                ctx,
                "spec.allocateLoadBalancerNodePorts",
                format!("must be false with forwarding method {m}: node ports would differ from the port the backends listen on, and {how} cannot remap ports"),
            ));
        }
        Ok(method)
    }

    /// `spec.ipFamilies` and `spec.ipFamilyPolicy` against the cluster IPs
    /// (the API server's dual-stack validation, minus allocation: Sluice
    /// never adds a cluster IP, so `RequireDualStack` needs both given).
    fn ip_families(
        &self,
        ctx: &Ctx,
        families: Option<&[String]>,
        policy: Option<&str>,
        ips: &[Addr],
        headless: bool,
        ips_field: &str,
    ) -> Result<(), ConfigError> {
        let families = families.unwrap_or_default();
        let mut fams: Vec<bool> = Vec::with_capacity(families.len());
        for (i, f) in families.iter().enumerate() {
            let field = format!("spec.ipFamilies[{i}]");
            let v4 = match f.as_str() {
                "IPv4" => true,
                "IPv6" => false,
                other => {
                    return Err(self.err(
                        ctx,
                        field,
                        format!("must be IPv4 or IPv6, got {other:?}"),
                    ))
                }
            };
            if fams.contains(&v4) {
                return Err(self.err(ctx, field, format!("duplicate family {f}")));
            }
            fams.push(v4);
        }
        // Absent policy: what the API server defaults it to.
        let dual_given = ips.len() == 2 || fams.len() == 2;
        let policy = match policy {
            None | Some("") if dual_given => "RequireDualStack",
            None | Some("") => "SingleStack",
            Some(p @ ("SingleStack" | "PreferDualStack" | "RequireDualStack")) => p,
            Some(p) => {
                return Err(self.err(
                    ctx,
                    "spec.ipFamilyPolicy",
                    format!("must be SingleStack, PreferDualStack or RequireDualStack, got {p:?}"),
                ))
            }
        };
        if policy == "SingleStack" {
            if fams.len() > 1 {
                return Err(self.err(
                    ctx,
                    "spec.ipFamilies",
                    "may hold one family when ipFamilyPolicy is SingleStack",
                ));
            }
            if ips.len() > 1 {
                return Err(self.err(
                    ctx,
                    "spec.clusterIPs",
                    "may hold one address when ipFamilyPolicy is SingleStack",
                ));
            }
        }
        if policy == "RequireDualStack" && !headless && ips.len() < 2 {
            return Err(self.err(
                ctx,
                ips_field,
                "RequireDualStack needs an IPv4 and an IPv6 cluster IP (Sluice does not allocate cluster IPs)",
            ));
        }
        for (i, (&v4, ip)) in fams.iter().zip(ips).enumerate() {
            if v4 != ip.is_v4() {
                return Err(self.err(
                    ctx,
                    format!("spec.ipFamilies[{i}]"),
                    format!(
                        "must be {} to match cluster IP {ip} (families are in clusterIPs order)",
                        if ip.is_v4() { "IPv4" } else { "IPv6" }
                    ),
                ));
            }
        }
        Ok(())
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
            let mut eps = Vec::new();
            for (j, a) in subset.addresses.unwrap_or_default().into_iter().enumerate() {
                let f = format!("subsets[{i}].addresses[{j}].ip");
                let ip = a.ip.ok_or_else(|| self.err(&ctx, &f, "required"))?;
                eps.push(Ep {
                    addr: parse_ip(&ip).map_err(|r| self.err(&ctx, &f, r))?,
                    ready: true,
                    serving: true,
                    terminating: false,
                    node: a.node_name.filter(|n| !n.is_empty()),
                });
            }
            for (j, a) in subset
                .not_ready_addresses
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                // Never used (Endpoints has no serving/terminating), but a
                // typo here is still a typo.
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
            groups.push(EpGroup { eps, ports });
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
        let mut eps = Vec::new();
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
            // The API's defaults: `ready` nil means ready; `serving` nil
            // defers to `ready`; `terminating` nil means not terminating.
            let c = ep.conditions.unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            if let Some(addr) = first {
                eps.push(Ep {
                    addr,
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                    node: ep.node_name.filter(|n| !n.is_empty()),
                });
            }
        }
        let ports = self.endpoint_ports(&ctx, obj.ports.unwrap_or_default(), "ports", false)?;
        Ok(EpSource {
            ctx,
            key: (ns.clone(), name),
            service: (ns, service),
            groups: vec![EpGroup { eps, ports }],
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

    /// Checks a Pod: what the endpoints controller reads of it.
    fn pod(
        &self,
        obj: k8s::Object,
        ctx: Ctx,
        ns: String,
        name: String,
    ) -> Result<PodObj, ConfigError> {
        let meta = obj.metadata.unwrap_or_default();
        let spec = obj.spec.unwrap_or_default();
        let status = obj.status.unwrap_or_default();
        let mut ports = Vec::new();
        for (i, c) in spec.containers.unwrap_or_default().into_iter().enumerate() {
            for (j, p) in c.ports.unwrap_or_default().into_iter().enumerate() {
                let f = |leaf: &str| format!("spec.containers[{i}].ports[{j}].{leaf}");
                let proto = parse_proto(p.protocol.as_deref())
                    .map_err(|r| self.err(&ctx, f("protocol"), r))?;
                let port = match p.container_port {
                    None => return Err(self.err(&ctx, f("containerPort"), "required")),
                    Some(n) => port_number(n).map_err(|r| self.err(&ctx, f("containerPort"), r))?,
                };
                let pname = p.name.unwrap_or_default();
                if !pname.is_empty() && !is_iana_svc_name(&pname) {
                    return Err(self.err(&ctx, f("name"), format!("must be at most 15 lowercase letters, digits and '-', with a letter, got {pname:?}")));
                }
                ports.push(EpPort {
                    name: pname,
                    proto,
                    port,
                });
            }
        }
        // `podIPs[0]` is `podIP`; the list holds at most one per family.
        let pod_ip = status.pod_ip.filter(|s| !s.is_empty());
        let list: Vec<String> = status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.ip)
            .collect();
        if let (Some(single), Some(first)) = (&pod_ip, list.first()) {
            if single != first {
                return Err(self.err(
                    &ctx,
                    "status.podIPs[0].ip",
                    format!("must equal status.podIP {single:?}, got {first:?}"),
                ));
            }
        }
        let (raw_ips, field) = if list.is_empty() {
            (pod_ip.into_iter().collect(), "status.podIP")
        } else {
            (list, "status.podIPs")
        };
        let mut ips: Vec<Addr> = Vec::new();
        for (i, raw) in raw_ips.iter().enumerate() {
            let f = if field == "status.podIP" {
                field.to_owned()
            } else {
                format!("{field}[{i}].ip")
            };
            let ip = parse_ip(raw).map_err(|r| self.err(&ctx, &f, r))?;
            if ips.iter().any(|a| a.is_v4() == ip.is_v4()) {
                return Err(self.err(&ctx, f, "at most one address per family"));
            }
            ips.push(ip);
        }
        let ready =
            status.conditions.unwrap_or_default().iter().any(|c| {
                c.type_.as_deref() == Some("Ready") && c.status.as_deref() == Some("True")
            });
        Ok(PodObj {
            ctx,
            ns,
            name,
            labels: meta.labels.unwrap_or_default(),
            node: spec.node_name.filter(|n| !n.is_empty()),
            ips,
            ready,
            terminating: meta.deletion_timestamp.is_some(),
            terminal: matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")),
            ports,
        })
    }
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` default (3 hours).
pub(super) const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// Its maximum (one day), as the API server validates.
const MAX_AFFINITY_TIMEOUT: u32 = 86400;

pub(super) fn parse_ip(raw: &str) -> Result<Addr, String> {
    match raw.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => Err(format!(
            "IPv4-mapped IPv6 addresses are not supported, got {raw:?}; write the IPv4 address"
        )),
        Ok(ip) => Ok(Addr::from(ip)),
        Err(_) => Err(format!("not an IP address: {raw:?}")),
    }
}

/// A CIDR as the API server accepts it (surrounding blanks trimmed), with
/// its family (true: IPv4).
fn parse_cidr(raw: &str) -> Result<(bool, Cidr), String> {
    let raw = raw.trim();
    let c = raw
        .parse::<Cidr>()
        .map_err(|e| format!("not a CIDR: {e}"))?;
    let v4 = raw
        .split('/')
        .next()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|a| a.is_ipv4());
    Ok((v4, c))
}

fn parse_proto(raw: Option<&str>) -> Result<u8, String> {
    match raw {
        None | Some("TCP") => Ok(proto::TCP),
        Some("UDP") => Ok(proto::UDP),
        Some("SCTP") => Ok(proto::SCTP),
        Some(p) => Err(format!("must be TCP, UDP or SCTP, got {p:?}")),
    }
}

pub(super) fn proto_name(p: u8) -> &'static str {
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
pub(super) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 bytes.
pub(super) fn is_dns_subdomain(s: &str) -> bool {
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
