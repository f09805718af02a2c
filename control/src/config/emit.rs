//! From checked objects to virtual services, DNS records and health checks,
//! following kube-proxy (`pkg/proxy/iptables/proxier.go`,
//! `pkg/proxy/topology.go`, `pkg/proxy/endpointslicecache.go`) and the
//! endpoints controller (`pkg/controller/endpointslice`).
//!
//! # Front ends
//!
//! Per Service, per port, in this order:
//! * `ClusterIp`: every cluster IP, on the service port.
//! * `NodePort` (types NodePort and LoadBalancer): every address of
//!   [`CompileCtx::node_addrs`] of a family the Service has, on the
//!   `nodePort` (given, or allocated: see `nodeport.rs`). A LoadBalancer
//!   with `allocateLoadBalancerNodePorts: false` gets no allocated node
//!   ports, but a `nodePort` written explicitly still answers (kube-proxy
//!   programs any non-zero `nodePort`).
//! * `ExternalIp`: the `externalIPs` this host owns
//!   ([`CompileCtx::local_addrs`]), on the service port. One it does not
//!   own gets a front end only with `externalTrafficPolicy: Local` and no
//!   local endpoint, and that front end has no backend: a packet that
//!   reaches this host anyway is dropped and counted (rejected when the
//!   port has no endpoint anywhere), as kube-proxy's "has no local
//!   endpoints" rule does on every node; pods are not short-circuited
//!   there (Sluice serves no address it does not own).
//! * `LoadBalancer`: `status.loadBalancer.ingress[].ip` (except those with
//!   `ipMode: Proxy`) and `spec.loadBalancerIP`, on the service port, with
//!   `loadBalancerSourceRanges` (or, when empty, the
//!   `service.beta.kubernetes.io/load-balancer-source-ranges` annotation)
//!   of the address's family as allowed sources. As kube-proxy, which
//!   filters the ranges per family, a family left without ranges is open.
//!
//! Addresses of a family the Service has no cluster IP of are skipped, as
//! each of kube-proxy's per-family proxiers does.
//!
//! # Backends and policies
//!
//! An endpoint is *ready* (weight 1, or its `sluice.dev/weights` entry),
//! or *serving and terminating* (weight
//! 0, `terminating`: used only when the list has no ready endpoint,
//! ProxyTerminatingEndpoints), or left out; `sluice.dev/thresholds` sets
//! its connection thresholds (`sched.rs`). It is `local` when its
//! `nodeName` is [`CompileCtx::node_name`]. Internal front ends follow
//! `internalTrafficPolicy`, external ones (NodePort, ExternalIp,
//! LoadBalancer) `externalTrafficPolicy`:
//!
//! | policy | backends | masq (external) | masq (ClusterIp) | when empty |
//! | --- | --- | --- | --- | --- |
//! | Cluster | all | Always | OffCluster | Reject |
//! | Local | local only | Never | OffCluster | Drop, or Reject if the service port has no usable endpoint anywhere |
//!
//! The last cell is kube-proxy's: its filter rule REJECTs a service port
//! "has no endpoints" and DROPs one that "has no local endpoints". Where
//! the iptables and IPVS modes differ, the iptables mode is followed (IPVS
//! mode has no REJECT for empty services and lets traffic time out).
//!
//! kube-proxy's short-circuit: an external front end with policy Local
//! names the ClusterIP front end of its family and port
//! ([`ServiceSpec::short_circuit`]); a client inside `--cluster-cidr` (a
//! pod) is scheduled there, over every endpoint, and not masqueraded
//! (kube-proxy's "pod traffic for ... external destinations" rule jumps to
//! the cluster-policy chain). With `internalTrafficPolicy: Local` as well,
//! that ClusterIP front end holds the local endpoints only, and so do the
//! pods' flows (kube-proxy would use every endpoint).
//!
//! A LoadBalancer front end whose source ranges hold an address of this
//! host also admits the Service's load-balancer IPs as sources
//! (kube-proxy's `allowFromNode`, see `lb_source_ranges`).
//!
//! A Service annotated `sluice.dev/forwarding-method: dr` (direct routing)
//! keeps the backends and "when empty" columns but never masquerades: its
//! backends answer clients directly, so no reply needs translating back
//! (the checks on ports and node ports are in `compile.rs`).
//!
//! # Endpoint sources
//!
//! EndpointSlices when the Service has any, else its Endpoints, else (when
//! it has a selector) the Pods of its namespace whose labels include the
//! selector, as the EndpointSlice controller would compute them: Pods in
//! phase Succeeded/Failed or without an IP are skipped; `serving` = the
//! Ready condition, `terminating` = a deletion timestamp, `ready` =
//! `publishNotReadyAddresses` or (serving and not terminating); a numeric
//! `targetPort` applies to every Pod, a named one is looked up in each
//! Pod's container ports by name and protocol, and a Pod without it is no
//! endpoint of that port.
//!
//! # DNS and health checks
//!
//! Every Service yields one [`DnsService`]: `ClusterIp` (cluster IPs, named
//! ports with the service port), `Headless` (the ready endpoint addresses
//! of every family, named ports with the endpoint port; a name that maps to
//! several endpoint ports is listed once per number), `ExternalName`.
//! Unnamed ports get no SRV. A LoadBalancer with `externalTrafficPolicy:
//! Local` yields a [`HealthCheck`] on its `healthCheckNodePort` with the
//! number of distinct ready local endpoint addresses (kube-proxy's
//! `LocalReadyEndpoints`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sluice_dataplane::service::{
    BackendSpec, ForwardMethod, MasqMode, ServiceSpec, ServiceTable, VipKey, VipKind, WhenEmpty,
};
use sluice_dataplane::types::{proto, Addr, Cidr};

use super::compile::{
    Ep, EpGroup, EpPort, EpSource, Loader, Policy, Svc, SvcPort, SvcType, Target,
};
use super::nodeport::{assign_node_ports, Assigned, NodePortReq};
use super::unit::ServiceUnit;
#[cfg(doc)]
use super::CompileCtx;
use super::{Config, ConfigError, ObjectsSummary, Waiting};
use crate::model::{DnsService, HealthCheck, NamedPort, SrvProto};

/// The endpoint sources of a config by the Service they feed.
pub(super) struct EndpointSources<'a> {
    /// Per Service (by index), its Endpoints object.
    pub from_endpoints: Vec<Option<&'a EpSource>>,
    /// Per Service (by index), its EndpointSlices.
    pub from_slices: Vec<Vec<&'a EpSource>>,
    /// Sources whose Service the config lacks.
    pub waiting: Vec<Waiting>,
}

impl Waiting {
    fn endpoints(ep: &EpSource) -> Self {
        Self::of("Endpoints", ep)
    }

    fn slice(sl: &EpSource) -> Self {
        Self::of("EndpointSlice", sl)
    }

    fn of(kind: &'static str, src: &EpSource) -> Self {
        Waiting {
            kind,
            object: format!("{}/{}", src.key.0, src.key.1),
            service: format!("{}/{}", src.service.0, src.service.1),
            line: src.ctx.line,
        }
    }
}

impl Loader<'_> {
    /// Cross-checks the objects and compiles them.
    pub(super) fn finish(self) -> Result<Config, ConfigError> {
        let EndpointSources {
            from_endpoints,
            from_slices,
            waiting,
        } = self.endpoint_sources()?;
        let reqs: Vec<NodePortReq> = self.services.iter().map(NodePortReq::of).collect();
        let assigned = assign_node_ports(&self.origin, self.cc.nodeport_range, &reqs)?;

        let mut specs = Vec::new();
        let mut dns = Vec::with_capacity(self.services.len());
        let mut health_checks = Vec::new();
        let mut checks = BTreeMap::new();
        for (i, svc) in self.services.iter().enumerate() {
            let unit = self.emit_unit(svc, from_endpoints[i], &from_slices[i], &assigned[i])?;
            specs.extend(unit.specs);
            dns.push(unit.dns);
            health_checks.extend(unit.health_check);
            checks.extend(unit.checks);
        }
        ServiceTable::check_specs(&specs)?;
        Ok(Config {
            services: specs,
            dns,
            health_checks,
            checks,
            objects: ObjectsSummary {
                waiting: waiting.len(),
                ..self.summary
            },
            waiting,
        })
    }

    /// Which endpoint source feeds which service (by index in
    /// `self.services`), refusing duplicates; sources without their Service
    /// are set apart as waiting.
    pub(super) fn endpoint_sources(&self) -> Result<EndpointSources<'_>, ConfigError> {
        let mut by_name: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (i, s) in self.services.iter().enumerate() {
            if let Some(&first) = by_name.get(&(s.ns.as_str(), s.name.as_str())) {
                return Err(self.err(
                    &s.ctx,
                    "metadata.name",
                    format!(
                        "duplicate Service (first at line {})",
                        self.services[first].ctx.line
                    ),
                ));
            }
            by_name.insert((&s.ns, &s.name), i);
        }
        let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for p in &self.pods {
            if let Some(first) = seen.insert((&p.ns, &p.name), p.ctx.line) {
                return Err(self.err(
                    &p.ctx,
                    "metadata.name",
                    format!("duplicate Pod (first at line {first})"),
                ));
            }
        }
        let mut waiting = Vec::new();
        let mut from_endpoints: Vec<Option<&EpSource>> = vec![None; self.services.len()];
        let mut from_slices: Vec<Vec<&EpSource>> = vec![Vec::new(); self.services.len()];
        seen.clear();
        for ep in &self.endpoints {
            if let Some(first) = seen.insert((&ep.key.0, &ep.key.1), ep.ctx.line) {
                return Err(self.err(
                    &ep.ctx,
                    "metadata.name",
                    format!("duplicate Endpoints (first at line {first})"),
                ));
            }
            // As in Kubernetes, endpoints may exist before (or after) their
            // Service: they wait for it and forward nothing meanwhile.
            let Some(&i) = by_name.get(&(ep.service.0.as_str(), ep.service.1.as_str())) else {
                waiting.push(Waiting::endpoints(ep));
                continue;
            };
            from_endpoints[i] = Some(ep);
        }
        seen.clear();
        for sl in &self.slices {
            if let Some(first) = seen.insert((&sl.key.0, &sl.key.1), sl.ctx.line) {
                return Err(self.err(
                    &sl.ctx,
                    "metadata.name",
                    format!("duplicate EndpointSlice (first at line {first})"),
                ));
            }
            let Some(&i) = by_name.get(&(sl.service.0.as_str(), sl.service.1.as_str())) else {
                waiting.push(Waiting::slice(sl));
                continue;
            };
            from_slices[i].push(sl);
        }
        Ok(EndpointSources {
            from_endpoints,
            from_slices,
            waiting,
        })
    }

    /// Compiles one Service from its endpoint sources and node ports: its
    /// virtual services, DNS record, health check and real-server checks.
    /// What the whole compile concatenates, and what the reconciler's
    /// incremental compile recompiles alone (`reconcile/incremental.rs`).
    pub(super) fn emit_unit(
        &self,
        svc: &Svc,
        endpoints: Option<&EpSource>,
        slices: &[&EpSource],
        a: &Assigned,
    ) -> Result<ServiceUnit, ConfigError> {
        // As kube-proxy: slices, when there are any, win over Endpoints;
        // without either, the selector's Pods (the controller's view).
        let pod_groups;
        let groups: Vec<&EpGroup> = if !slices.is_empty() {
            slices.iter().flat_map(|s| &s.groups).collect()
        } else if let Some(ep) = endpoints {
            ep.groups.iter().collect()
        } else if !svc.selector.is_empty() {
            pod_groups = self.pod_groups(svc);
            pod_groups.iter().collect()
        } else {
            Vec::new()
        };
        let mut specs = Vec::new();
        self.emit_service(svc, &groups, a, &mut specs)?;
        let checks = match &svc.check {
            Some(c) => specs.iter().map(|s| (s.name.clone(), c.clone())).collect(),
            None => Vec::new(),
        };
        let dns = Arc::new(dns_record(svc, &groups));
        let mut health_check = None;
        if let (true, Some(port)) = (svc.needs_health_check, a.health_check) {
            let node = self.cc.node_name.as_deref();
            let mut local = BTreeSet::new();
            for sp in &svc.ports {
                for g in &groups {
                    if find_port(g, sp).is_some() {
                        local.extend(
                            g.eps
                                .iter()
                                .filter(|e| e.ready && is_local(e, node))
                                .map(|e| e.addr),
                        );
                    }
                }
            }
            health_check = Some(HealthCheck {
                port,
                service: format!("{}/{}", svc.ns, svc.name),
                local_endpoints: u32::try_from(local.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(ServiceUnit {
            specs,
            dns,
            health_check,
            checks,
            headless: svc.headless,
        })
    }

    /// The endpoint groups the endpoints controller would write for a
    /// Service with a selector: one group per matching Pod.
    fn pod_groups(&self, svc: &Svc) -> Vec<EpGroup> {
        let mut groups = Vec::new();
        for pod in &self.pods {
            let matches = pod.ns == svc.ns
                && svc
                    .selector
                    .iter()
                    .all(|(k, v)| pod.labels.get(k) == Some(v));
            if !matches || pod.terminal || pod.ips.is_empty() {
                continue;
            }
            let serving = pod.ready;
            let ready = svc.publish_not_ready || (serving && !pod.terminating);
            let ports = svc
                .ports
                .iter()
                .filter_map(|sp| {
                    let port = match &sp.target {
                        Target::Port(n) => *n,
                        Target::Name(want) => {
                            pod.ports
                                .iter()
                                .find(|c| &c.name == want && c.proto == sp.proto)?
                                .port
                        }
                    };
                    Some(EpPort {
                        name: sp.name.clone(),
                        proto: sp.proto,
                        port,
                    })
                })
                .collect();
            groups.push(EpGroup {
                eps: pod
                    .ips
                    .iter()
                    .map(|&addr| Ep {
                        addr,
                        ready,
                        serving,
                        terminating: pod.terminating,
                        node: pod.node.clone(),
                    })
                    .collect(),
                ports,
            });
        }
        groups
    }

    /// The virtual services of one Service.
    ///
    /// # Errors
    /// A direct-routing service port whose endpoints listen on another port
    /// (a named `targetPort`, or an Endpoints/EndpointSlice port that
    /// differs from the service port): DR cannot remap ports.
    fn emit_service(
        &self,
        svc: &Svc,
        groups: &[&EpGroup],
        assigned: &Assigned,
        specs: &mut Vec<ServiceSpec>,
    ) -> Result<(), ConfigError> {
        let node = self.cc.node_name.as_deref();
        let has_v4 = svc.ips.iter().any(Addr::is_v4);
        let has_v6 = svc.ips.iter().any(|a| !a.is_v4());
        let family_ok = |a: &Addr| if a.is_v4() { has_v4 } else { has_v6 };
        let node_addrs = dedup(self.cc.node_addrs.iter().map(|&ip| Addr::from(ip)));
        let local_addrs: Vec<Addr> = self
            .cc
            .local_addrs
            .iter()
            .map(|&ip| Addr::from(ip))
            .collect();
        for (j, sp) in svc.ports.iter().enumerate() {
            let name = if sp.name.is_empty() {
                format!("{}/{}:{}", svc.ns, svc.name, sp.port)
            } else {
                format!("{}/{}:{}", svc.ns, svc.name, sp.name)
            };
            let mut all_v4 = backends(groups, sp, true, node);
            let mut all_v6 = backends(groups, sp, false, node);
            for b in all_v4.iter_mut().chain(all_v6.iter_mut()) {
                svc.sched.apply(b);
            }
            if matches!(svc.forward, ForwardMethod::Dr | ForwardMethod::Tunnel) {
                if let Some(b) = all_v4.iter().chain(&all_v6).find(|b| b.port != sp.port) {
                    return Err(self.err(
                        &svc.ctx,
                        format!("spec.ports[{j}].targetPort"),
                        format!(
                            "forwarding method {} cannot remap ports: endpoint {} listens on {} for this port, the service port is {}",
                            svc.forward.as_str(), b.addr, b.port, sp.port
                        ),
                    ));
                }
            }
            let mk = |addr: Addr, port: u16, kind: VipKind| {
                let all = if addr.is_v4() { &all_v4 } else { &all_v6 };
                let (policy, masq_cluster) = if kind == VipKind::ClusterIp {
                    (svc.internal_policy, MasqMode::OffCluster)
                } else {
                    (svc.external_policy, MasqMode::Always)
                };
                let (backends, mut masq, when_empty) = match policy {
                    Policy::Cluster => (all.clone(), masq_cluster, WhenEmpty::Reject),
                    Policy::Local => (
                        all.iter().filter(|b| b.local).copied().collect(),
                        if kind == VipKind::ClusterIp {
                            MasqMode::OffCluster
                        } else {
                            MasqMode::Never
                        },
                        if all.is_empty() {
                            WhenEmpty::Reject
                        } else {
                            WhenEmpty::Drop
                        },
                    ),
                };
                if matches!(svc.forward, ForwardMethod::Dr | ForwardMethod::Tunnel) {
                    // The backend answers the client directly: nothing to
                    // translate back, so never SNAT (compile.rs).
                    masq = MasqMode::Never;
                }
                ServiceSpec {
                    name: name.clone(),
                    vip: VipKey {
                        addr,
                        port,
                        proto: sp.proto,
                    },
                    backends,
                    sched: svc.sched.kind,
                    sched_flags: svc.sched.flags,
                    kind,
                    masq,
                    affinity_timeout: svc.affinity,
                    affinity_prefix: svc.affinity_prefix,
                    source_ranges: if kind == VipKind::LoadBalancer {
                        lb_source_ranges(svc, addr.is_v4(), &local_addrs)
                    } else {
                        Vec::new()
                    },
                    short_circuit: if kind != VipKind::ClusterIp && policy == Policy::Local {
                        svc.ips
                            .iter()
                            .find(|ip| ip.is_v4() == addr.is_v4())
                            .map(|&ip| VipKey {
                                addr: ip,
                                port: sp.port,
                                proto: sp.proto,
                            })
                    } else {
                        None
                    },
                    when_empty,
                    forward: svc.forward,
                    // Each front end takes the local addresses of its own
                    // family (a dual-stack Service lists both).
                    local_addrs: svc
                        .local_addrs
                        .iter()
                        .filter(|a| a.is_v4() == addr.is_v4())
                        .copied()
                        .collect(),
                }
            };
            for &ip in &svc.ips {
                specs.push(mk(ip, sp.port, VipKind::ClusterIp));
            }
            if let Some(np) = assigned.node_ports[j] {
                for a in node_addrs.iter().filter(|a| family_ok(a)) {
                    specs.push(mk(*a, np, VipKind::NodePort));
                }
            }
            for a in svc.external_ips.iter().filter(|a| family_ok(a)) {
                let spec = mk(*a, sp.port, VipKind::ExternalIp);
                if local_addrs.contains(a) {
                    specs.push(spec);
                } else if svc.external_policy == Policy::Local && spec.backends.is_empty() {
                    // Not ours, but kube-proxy drops it wherever it
                    // arrives: a front end that only drops (or rejects).
                    specs.push(ServiceSpec {
                        short_circuit: None,
                        ..spec
                    });
                }
            }
            for a in svc.lb_ips.iter().filter(|a| family_ok(a)) {
                specs.push(mk(*a, sp.port, VipKind::LoadBalancer));
            }
        }
        Ok(())
    }
}

/// The allowed sources of a LoadBalancer front end of one family: the
/// `loadBalancerSourceRanges` of that family and, when one of them holds an
/// address of this host, the Service's load-balancer IPs of that family as
/// hosts. That is kube-proxy's `allowFromNode`: a VIP-like cloud load
/// balancer whose IP is also routed to the node loops a node's request back
/// with the LB IP as its source, and ranges that admit the node must admit
/// that packet too.
fn lb_source_ranges(svc: &Svc, v4: bool, host_addrs: &[Addr]) -> Vec<Cidr> {
    let mut out: Vec<Cidr> = svc
        .source_ranges
        .iter()
        .filter(|(f, _)| *f == v4)
        .map(|(_, c)| *c)
        .collect();
    if out.iter().any(|c| host_addrs.iter().any(|a| c.contains(a))) {
        let host = if v4 { 32 } else { 128 };
        for ip in svc.lb_ips.iter().filter(|a| a.is_v4() == v4) {
            if let Some(c) = Cidr::new(*ip, host) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

fn dedup(addrs: impl Iterator<Item = Addr>) -> Vec<Addr> {
    let mut out: Vec<Addr> = Vec::new();
    for a in addrs {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

fn is_local(ep: &Ep, node: Option<&str>) -> bool {
    node.is_some() && ep.node.as_deref() == node
}

/// The endpoint port of a group for a service port (same name and
/// protocol).
fn find_port<'g>(g: &'g EpGroup, sp: &SvcPort) -> Option<&'g EpPort> {
    g.ports
        .iter()
        .find(|p| p.name == sp.name && p.proto == sp.proto)
}

/// Every usable endpoint of one family for a service port: ready ones with
/// weight 1, serving-and-terminating ones with weight 0; sorted, one per
/// address and port (a ready copy wins over a terminating one).
fn backends(groups: &[&EpGroup], sp: &SvcPort, v4: bool, node: Option<&str>) -> Vec<BackendSpec> {
    let mut out = Vec::new();
    for g in groups {
        let Some(p) = find_port(g, sp) else {
            continue;
        };
        for e in g.eps.iter().filter(|e| e.addr.is_v4() == v4) {
            let terminating = if e.ready {
                false
            } else if e.serving && e.terminating {
                true
            } else {
                continue;
            };
            out.push(BackendSpec {
                addr: e.addr,
                port: p.port,
                weight: u16::from(!terminating),
                terminating,
                local: is_local(e, node),
                ..Default::default()
            });
        }
    }
    out.sort_by_key(|b| (b.addr, b.port, b.terminating, !b.local));
    out.dedup_by(|b, a| a.addr == b.addr && a.port == b.port);
    out
}

fn srv_proto(p: u8) -> SrvProto {
    match p {
        proto::UDP => SrvProto::Udp,
        proto::SCTP => SrvProto::Sctp,
        _ => SrvProto::Tcp,
    }
}

/// The DNS view of a Service.
fn dns_record(svc: &Svc, groups: &[&EpGroup]) -> DnsService {
    let (namespace, name) = (svc.ns.clone(), svc.name.clone());
    if svc.ty == SvcType::ExternalName {
        return DnsService::ExternalName {
            namespace,
            name,
            target: svc.external_name.clone(),
        };
    }
    let named = || svc.ports.iter().filter(|sp| !sp.name.is_empty());
    if svc.headless {
        let ips: BTreeSet<Addr> = groups
            .iter()
            .flat_map(|g| &g.eps)
            .filter(|e| e.ready)
            .map(|e| e.addr)
            .collect();
        let mut ports = BTreeSet::new();
        for sp in named() {
            for g in groups {
                if let Some(p) = find_port(g, sp) {
                    if g.eps.iter().any(|e| e.ready) {
                        ports.insert((sp.name.clone(), sp.proto, p.port));
                    }
                }
            }
        }
        // Service-port order, then endpoint port number.
        let order = |n: &str| svc.ports.iter().position(|sp| sp.name == n);
        let mut ports: Vec<_> = ports.into_iter().collect();
        ports.sort_by_key(|(n, _, port)| (order(n), *port));
        return DnsService::Headless {
            namespace,
            name,
            ips: ips.iter().map(Addr::to_ip).collect(),
            ports: ports
                .into_iter()
                .map(|(name, p, port)| NamedPort {
                    name,
                    proto: srv_proto(p),
                    port,
                })
                .collect(),
        };
    }
    DnsService::ClusterIp {
        namespace,
        name,
        ips: svc.ips.iter().map(Addr::to_ip).collect(),
        ports: named()
            .map(|sp| NamedPort {
                name: sp.name.clone(),
                proto: srv_proto(sp.proto),
                port: sp.port,
            })
            .collect(),
    }
}
