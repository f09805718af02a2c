//! The config file: Kubernetes objects in, [`ServiceSpec`]s, DNS records
//! and health checks out.
//!
//! Sluice reads the objects kube-proxy watches, in their real shape, so the
//! output of `kubectl get svc,endpointslices,pods -A -o yaml` (a `kind:
//! List`) or a hand-written multi-document file (`---`) loads as it is:
//!
//! * `Service` (v1) of every type: `ClusterIP`, `NodePort`, `LoadBalancer`
//!   (with `status.loadBalancer.ingress`, `loadBalancerIP`,
//!   `loadBalancerSourceRanges`, `allocateLoadBalancerNodePorts`,
//!   `healthCheckNodePort`), `ExternalName`, headless (`clusterIP: None`),
//!   `externalIPs`, `externalTrafficPolicy` / `internalTrafficPolicy`,
//!   `sessionAffinity`, dual stack (`clusterIPs`, `ipFamilies`,
//!   `ipFamilyPolicy`). What each compiles to is documented in `emit.rs`.
//! * `EndpointSlice` (discovery.k8s.io/v1), tied to its Service by the
//!   `kubernetes.io/service-name` label. As in kube-proxy, when a Service has
//!   slices they win over its `Endpoints`, and several slices merge.
//! * `Endpoints` (v1), same name and namespace as its Service.
//! * `Pod` (v1): a Service with a selector and neither Endpoints nor
//!   EndpointSlices gets the endpoints the endpoints controller would write
//!   from the matching Pods.
//! * `VirtualService` (sluice.dev/v1): an IPVS virtual service with its real
//!   servers (`virtual_service.rs`), compiled beside the Services; a front
//!   end claimed by both is refused, naming both.
//!
//! Unknown fields (`metadata.uid`, `managedFields`, …) are ignored; wrong
//! YAML types, out-of-range values, unsupported kinds, duplicates and
//! Endpoints without a Service are errors ([`ConfigError`]), each naming
//! the line, object and field.
//!
//! What depends on the host (its node name, the addresses NodePorts answer
//! on, the external IPs it owns, the node-port range) comes in a
//! [`CompileCtx`]; [`load_file`] and [`load_str`] use its default (no node
//! name, no node addresses, 30000-32767).
//!
//! # Why compile like kube-proxy
//!
//! Each Service port is its own virtual service, once per front-end address
//! (cluster IP, node address, external IP, load-balancer IP). A named
//! `targetPort` is resolved the way the endpoints controller does: in
//! Endpoints/EndpointSlices it has already written, for every endpoint
//! group, the number the name resolves to on those Pods, under the Service
//! port's name; from Pods, Sluice looks the name up in each Pod's container
//! ports. So the backends of service port `http`/TCP are the usable endpoint
//! addresses of the front end's family paired with the endpoint port named
//! `http`/TCP of their group; two groups may use different numbers for the
//! same name. Of an EndpointSlice endpoint's `addresses` only the first is
//! used (the API says they are fungible; kube-proxy does the same).
//! Backends are sorted and deduplicated so the same objects always give the
//! same table.
//!
//! # Line numbers
//!
//! The loader splits the input into documents itself (on `---` / `...`
//! markers at column 0, which YAML forbids anywhere else), parses each on
//! its own, and shifts serde_norway's locations by the document's first line.
//! Type errors thus point at the exact line and column; semantic errors
//! point at the line where the object's document starts.

mod check;
mod compile;
mod emit;
mod error;
mod k8s;
pub mod keepalived;
mod nodeport;
mod persistence;
#[cfg(test)]
mod policy_tests;
mod sched;
#[cfg(test)]
mod semantics_tests;
#[cfg(test)]
mod tests;
pub mod unit;
pub mod virtual_service;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde_norway::Value;
use sluice_dataplane::service::{SchedKind, ServiceSpec};

use crate::model::{DnsService, HealthCheck};

pub use check::{HEALTH_CHECK_ACTION_ANNOTATION, HEALTH_CHECK_ANNOTATION};
pub use error::ConfigError;
pub use persistence::{parse_netmask, PERSISTENCE_NETMASK_ANNOTATION};
pub use sched::{
    SCHEDULER_ANNOTATION, SCHEDULER_FLAGS_ANNOTATION, THRESHOLDS_ANNOTATION, WEIGHTS_ANNOTATION,
};

/// What the compiled config depends on besides the objects: the host it is
/// compiled for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileCtx {
    /// This node's name (kube-proxy's `--hostname-override`): endpoints
    /// whose `nodeName` equals it are local. `None`: no endpoint is local.
    pub node_name: Option<String>,
    /// The addresses NodePorts answer on (kube-proxy's
    /// `--nodeport-addresses`, resolved to addresses).
    pub node_addrs: Vec<IpAddr>,
    /// The addresses this host owns; only `externalIPs` among them are
    /// served here.
    pub local_addrs: Vec<IpAddr>,
    /// The node-port range, inclusive (the API server's
    /// `--service-node-port-range`).
    pub nodeport_range: (u16, u16),
    /// The scheduler of Services without a `sluice.dev/scheduler`
    /// annotation (`--scheduler`, like kube-proxy's `--ipvs-scheduler`).
    pub scheduler: SchedKind,
}

impl Default for CompileCtx {
    /// No node name, no node or local address, ports 30000-32767, rr.
    fn default() -> CompileCtx {
        CompileCtx {
            node_name: None,
            node_addrs: Vec::new(),
            local_addrs: Vec::new(),
            nodeport_range: (30000, 32767),
            scheduler: SchedKind::RoundRobin,
        }
    }
}

/// A loaded and checked config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The virtual services: per Service, per port, its cluster IPs, then
    /// its node ports, external IPs and load-balancer IPs; in file order.
    pub services: Vec<ServiceSpec>,
    /// One record set per Service (headless and ExternalName included), in
    /// file order.
    pub dns: Vec<Arc<DnsService>>,
    /// The `healthCheckNodePort`s to serve (LoadBalancer services with
    /// `externalTrafficPolicy: Local`), in file order.
    pub health_checks: Vec<HealthCheck>,
    /// The real-server health checks (`sluice.dev/health-check`), by
    /// service-port name ([`ServiceSpec::name`]).
    pub checks: std::collections::BTreeMap<String, crate::check::ServiceCheck>,
    /// What the file held, for logs.
    pub objects: ObjectsSummary,
    /// Endpoints and EndpointSlices whose Service is absent: accepted, as
    /// Kubernetes accepts them, and forwarding nothing until it comes.
    pub waiting: Vec<Waiting>,
}

/// An endpoint source (Endpoints or EndpointSlice) whose Service is absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// `Endpoints` or `EndpointSlice`.
    pub kind: &'static str,
    /// Its `namespace/name`.
    pub object: String,
    /// The `namespace/name` of the Service it names.
    pub service: String,
    /// Its line in the file (0 when it came from the store).
    pub line: usize,
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} waits for Service {}",
            self.kind, self.object, self.service
        )?;
        if self.line > 0 {
            write!(f, " (line {})", self.line)?;
        }
        Ok(())
    }
}

/// Counts of the objects a config held (for a log line on load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectsSummary {
    /// Service objects, headless ones included.
    pub services: usize,
    /// Of those, headless ones (`clusterIP: None`), which forward nothing.
    pub headless: usize,
    /// Endpoints objects.
    pub endpoints: usize,
    /// EndpointSlice objects.
    pub endpoint_slices: usize,
    /// Pod objects.
    pub pods: usize,
    /// Of the Endpoints and EndpointSlices, those whose Service is absent.
    pub waiting: usize,
}

impl fmt::Display for ObjectsSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} services ({} headless), {} endpoints, {} endpointslices, {} pods",
            self.services, self.headless, self.endpoints, self.endpoint_slices, self.pods
        )?;
        if self.waiting > 0 {
            write!(f, " ({} waiting for their Service)", self.waiting)?;
        }
        Ok(())
    }
}

/// Loads a config file for the default [`CompileCtx`].
///
/// # Errors
/// As [`load_file_with`].
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    load_file_with(path, &CompileCtx::default())
}

/// Loads a config file for a host: a keepalived.conf when its syntax says
/// so ([`keepalived::is_keepalived`]), YAML otherwise.
///
/// # Errors
/// [`ConfigError::Io`] when the file cannot be read,
/// [`ConfigError::Keepalived`] for a keepalived.conf Sluice refuses,
/// otherwise as [`load_str_with`] with the path as origin.
pub fn load_file_with(path: &Path, ctx: &CompileCtx) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    if keepalived::is_keepalived(&text) {
        let parsed = keepalived::parse(path, &text)?;
        return load_objects(
            parsed.objects.iter().map(|(_, o)| o),
            &path.display().to_string(),
            ctx,
        );
    }
    load_str_with(&text, &path.display().to_string(), ctx)
}

/// Loads a config from text for the default [`CompileCtx`]; `origin` names
/// it in errors (a path, `-`, …).
///
/// # Errors
/// As [`load_str_with`].
pub fn load_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    load_str_with(text, origin, &CompileCtx::default())
}

/// Loads a config from text for a host; `origin` names it in errors.
///
/// # Errors
/// [`ConfigError::Yaml`] for YAML syntax or type errors,
/// [`ConfigError::Invalid`] for objects Sluice refuses (node-port
/// conflicts included), [`ConfigError::Context`] for a bad [`CompileCtx`],
/// [`ConfigError::Table`] when compiled services claim the same front end.
/// Never panics, whatever the input.
pub fn load_str_with(text: &str, origin: &str, ctx: &CompileCtx) -> Result<Config, ConfigError> {
    let (lo, hi) = ctx.nodeport_range;
    if lo == 0 || lo > hi {
        return Err(ConfigError::Context(format!(
            "node-port range {lo}-{hi} is empty or starts at 0"
        )));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let origin: Arc<str> = Arc::from(origin);
    let mut loader = compile::Loader::new(origin.clone(), ctx);
    let mut virtuals = Vec::new();
    for doc in split_documents(text) {
        load_document(&mut loader, &mut virtuals, &origin, &doc)?;
    }
    with_virtuals(loader.finish()?, virtuals, &origin)
}

/// A checked `VirtualService` with the line its document starts on.
struct Virtual {
    def: virtual_service::VsDef,
    line: usize,
    prefix: String,
}

fn vs_error(
    origin: &Arc<str>,
    line: usize,
    object: String,
    prefix: &str,
    e: virtual_service::FieldError,
) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.clone(),
        line,
        kind: virtual_service::KIND.to_owned(),
        object,
        field: format!("{prefix}{}", e.field),
        reason: e.reason,
    }
}

/// Checks a `VirtualService` and keeps it for [`with_virtuals`].
fn add_virtual(
    out: &mut Vec<Virtual>,
    origin: &Arc<str>,
    vs: &virtual_service::VirtualService,
    line: usize,
    prefix: &str,
) -> Result<(), ConfigError> {
    let def = virtual_service::check(vs)
        .map_err(|e| vs_error(origin, line, virtual_service::object_name(vs), prefix, e))?;
    out.push(Virtual {
        def,
        line,
        prefix: prefix.to_owned(),
    });
    Ok(())
}

/// Adds the compiled `VirtualService`s to a config: each name once, and no
/// front end claimed twice (by two of them, or by one and a Service: the
/// table error names both).
fn with_virtuals(
    mut cfg: Config,
    virtuals: Vec<Virtual>,
    origin: &Arc<str>,
) -> Result<Config, ConfigError> {
    if virtuals.is_empty() {
        return Ok(cfg);
    }
    let mut seen = std::collections::BTreeMap::new();
    for v in &virtuals {
        let object = format!("{}/{}", v.def.ns, v.def.name);
        if let Some(first) = seen.insert(object.clone(), v.line) {
            return Err(vs_error(
                origin,
                v.line,
                object,
                &v.prefix,
                virtual_service::FieldError {
                    field: "metadata.name".into(),
                    reason: format!("duplicate VirtualService (first at line {first})"),
                },
            ));
        }
        let spec = v
            .def
            .compile()
            .map_err(|e| vs_error(origin, v.line, object, &v.prefix, e))?;
        if let Some(c) = &v.def.check {
            cfg.checks.insert(spec.name.clone(), c.clone());
        }
        cfg.services.push(spec);
    }
    sluice_dataplane::service::ServiceTable::check_specs(&cfg.services)?;
    Ok(cfg)
}

/// Compiles objects already parsed (the store's, as Kubernetes JSON) for a
/// host: the same checks and output as [`load_str_with`], without YAML.
/// Errors name the object and field (origin `origin`, no line).
///
/// # Errors
/// As [`load_str_with`]; a field of the wrong JSON type is
/// [`ConfigError::Invalid`] naming its path.
pub fn load_objects<'a>(
    objects: impl IntoIterator<Item = &'a serde_json::Value>,
    origin: &str,
    ctx: &CompileCtx,
) -> Result<Config, ConfigError> {
    let (lo, hi) = ctx.nodeport_range;
    if lo == 0 || lo > hi {
        return Err(ConfigError::Context(format!(
            "node-port range {lo}-{hi} is empty or starts at 0"
        )));
    }
    let origin: Arc<str> = Arc::from(origin);
    let mut loader = compile::Loader::new(origin.clone(), ctx);
    let mut virtuals = Vec::new();
    for obj in objects {
        if describe_json(obj).kind == virtual_service::KIND {
            add_virtual_json(&mut virtuals, &origin, obj)?;
        } else {
            add_json(&mut loader, obj, &origin)?;
        }
    }
    with_virtuals(loader.finish()?, virtuals, &origin)
}

/// Checks a `VirtualService` given as JSON and keeps it for [`with_virtuals`].
fn add_virtual_json(
    virtuals: &mut Vec<Virtual>,
    origin: &Arc<str>,
    obj: &serde_json::Value,
) -> Result<(), ConfigError> {
    let what = describe_json(obj);
    let vs: virtual_service::VirtualService =
        serde_path_to_error::deserialize(obj).map_err(|e| ConfigError::Invalid {
            origin: origin.clone(),
            line: 0,
            kind: what.kind.clone(),
            object: what.object.clone(),
            field: e.path().to_string(),
            reason: e.inner().to_string(),
        })?;
    add_virtual(virtuals, origin, &vs, 0, "")
}

/// Reads a Kubernetes object given as JSON into the loader (which checks it).
fn add_json(
    loader: &mut compile::Loader<'_>,
    obj: &serde_json::Value,
    origin: &Arc<str>,
) -> Result<(), ConfigError> {
    let object: k8s::Object = serde_path_to_error::deserialize(obj).map_err(|e| {
        let what = describe_json(obj);
        ConfigError::Invalid {
            origin: origin.clone(),
            line: 0,
            kind: what.kind,
            object: what.object,
            field: e.path().to_string(),
            reason: e.inner().to_string(),
        }
    })?;
    loader.add(object, 0, "")
}

fn describe_json(v: &serde_json::Value) -> Described {
    let s = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    let kind = s(v.get("kind")).unwrap_or_else(|| "object".into());
    let meta = v.get("metadata");
    let ns = s(meta.and_then(|m| m.get("namespace")))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let name = s(meta.and_then(|m| m.get("name"))).unwrap_or_else(|| "(unnamed)".into());
    Described {
        kind,
        object: format!("{ns}/{name}"),
    }
}

/// Parses a YAML stream (documents and `kind: List`s) into its objects as
/// JSON, each with the line its document starts on; nothing is checked
/// but the YAML itself (errors carry `origin:line:column`).
///
/// # Errors
/// [`ConfigError::Yaml`] for YAML that does not parse or cannot be JSON
/// (a non-string key, a tagged value).
pub fn parse_objects(
    text: &str,
    origin: &str,
) -> Result<Vec<(usize, serde_json::Value)>, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let origin: Arc<str> = Arc::from(origin);
    let mut out = Vec::new();
    for doc in split_documents(text) {
        let value: serde_json::Value =
            serde_norway::from_str(doc.text).map_err(|e| yaml_error(&origin, &doc, &e, ""))?;
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::Object(mut m)
                if m.get("kind").and_then(|k| k.as_str()) == Some("List") =>
            {
                if let Some(serde_json::Value::Array(items)) = m.remove("items") {
                    out.extend(items.into_iter().map(|i| (doc.line, i)));
                }
            }
            v => out.push((doc.line, v)),
        }
    }
    Ok(out)
}

/// One YAML document of the input.
#[derive(Debug, PartialEq, Eq)]
struct Document<'a> {
    /// 1-based line of the document's `---` (or first content line).
    line: usize,
    /// 1-based line where `text` starts (before `line` when directives precede
    /// the `---`).
    text_line: usize,
    /// The document's text, markers included.
    text: &'a str,
}

/// Whether `line` is the marker `marker` (`---` or `...`): at column 0 and
/// followed by a blank or the end of the line (YAML 1.2 § 9.1.2).
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Splits a YAML stream into documents, dropping those with no content (only
/// blanks and comments).
fn split_documents(text: &str) -> Vec<Document<'_>> {
    struct Open {
        start: usize,
        text_line: usize,
        line: usize,
        content: bool,
        marker: bool,
        directive: bool,
    }
    let fresh = |start, line| Open {
        start,
        text_line: line,
        line,
        content: false,
        marker: false,
        directive: false,
    };
    let mut docs = Vec::new();
    let mut open = fresh(0, 1);
    fn close<'t>(text: &'t str, open: &Open, end: usize, docs: &mut Vec<Document<'t>>) {
        if open.content {
            docs.push(Document {
                line: open.line,
                text_line: open.text_line,
                text: &text[open.start..end],
            });
        }
    }
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let lineno = i + 1;
        if is_marker(raw, "---") {
            if open.content || open.marker {
                close(text, &open, offset, &mut docs);
                open = fresh(offset, lineno);
            } else if !open.directive {
                // Only blanks and comments so far: start the text here.
                open = fresh(offset, lineno);
            }
            open.line = lineno;
            open.marker = true;
            // Content on the marker line itself (`--- {a: 1}`, `--- |`).
            let rest = raw[3..].trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                open.content = true;
            }
        } else if is_marker(raw, "...") {
            close(text, &open, offset + raw.len(), &mut docs);
            open = fresh(offset + raw.len(), lineno + 1);
        } else {
            let t = raw.trim();
            let blank = t.is_empty() || t.starts_with('#');
            if !blank && raw.starts_with('%') && !open.marker && !open.content {
                open.directive = true;
            } else if !blank {
                if !open.content && !open.marker && !open.directive {
                    // A bare document (no `---`): it starts here.
                    open = fresh(offset, lineno);
                }
                open.content = true;
            }
        }
        offset += raw.len();
    }
    close(text, &open, text.len(), &mut docs);
    docs
}

/// The kinds this loader understands.
const KINDS: [&str; 6] = [
    "Service",
    "Endpoints",
    "EndpointSlice",
    "Pod",
    virtual_service::KIND,
    "List",
];

/// Parses and checks one document, handing its objects to the loader.
fn load_document(
    loader: &mut compile::Loader<'_>,
    virtuals: &mut Vec<Virtual>,
    origin: &Arc<str>,
    doc: &Document<'_>,
) -> Result<(), ConfigError> {
    // Pass 1, untyped: find out what the document is, so an unsupported kind
    // is reported as such instead of as a type error in a field we would
    // have read with the wrong shape.
    let value: Value =
        serde_norway::from_str(doc.text).map_err(|e| yaml_error(origin, doc, &e, ""))?;
    if value.is_null() {
        return Ok(());
    }
    let top = describe(&value);
    check_kind(origin, doc.line, &value, "", &top)?;
    if top.kind == virtual_service::KIND {
        let vs: virtual_service::VirtualService = serde_norway::from_str(doc.text)
            .map_err(|e| yaml_error(origin, doc, &e, &format!("{} {}: ", top.kind, top.object)))?;
        return add_virtual(virtuals, origin, &vs, doc.line, "");
    }
    let mut items = Vec::new();
    if top.kind == "List" {
        if let Some(Value::Sequence(seq)) = value.get("items") {
            for (i, item) in seq.iter().enumerate() {
                let what = describe(item);
                let prefix = format!("items[{i}].");
                check_kind(origin, doc.line, item, &prefix, &what)?;
                if what.kind == "List" {
                    return Err(invalid(
                        origin,
                        doc.line,
                        &what,
                        &prefix,
                        "kind",
                        "a List inside a List is not supported".into(),
                    ));
                }
                items.push(what);
            }
        }
        if items.iter().any(|i| i.kind == virtual_service::KIND) {
            return load_mixed_list(loader, virtuals, origin, doc, &value, &items);
        }
    }

    // Pass 2, typed: serde_norway reports wrong types with their location.
    let object: k8s::Object = serde_norway::from_str(doc.text).map_err(|e| {
        // Name the object the error is in: the document's, or the List item's.
        let context = item_index(&e.to_string())
            .and_then(|i| items.get(i))
            .unwrap_or(&top);
        let context = if context.kind == "List" {
            String::new()
        } else {
            format!("{} {}: ", context.kind, context.object)
        };
        yaml_error(origin, doc, &e, &context)
    })?;
    if top.kind == "List" {
        for (i, item) in object.items.unwrap_or_default().into_iter().enumerate() {
            loader.add(item, doc.line, &format!("items[{i}]."))?;
        }
        Ok(())
    } else {
        loader.add(object, doc.line, "")
    }
}

/// A `List` holding `VirtualService`s: each item is read on its own, from
/// the parsed value (errors name the item and the document's line).
fn load_mixed_list(
    loader: &mut compile::Loader<'_>,
    virtuals: &mut Vec<Virtual>,
    origin: &Arc<str>,
    doc: &Document<'_>,
    value: &Value,
    items: &[Described],
) -> Result<(), ConfigError> {
    let Some(Value::Sequence(seq)) = value.get("items") else {
        return Ok(());
    };
    for (i, (item, what)) in seq.iter().zip(items).enumerate() {
        let prefix = format!("items[{i}].");
        let bad = |e: serde_norway::Error| ConfigError::Invalid {
            origin: origin.clone(),
            line: doc.line,
            kind: what.kind.clone(),
            object: what.object.clone(),
            field: prefix.trim_end_matches('.').to_owned(),
            reason: e.to_string(),
        };
        if what.kind == virtual_service::KIND {
            let vs: virtual_service::VirtualService =
                serde_norway::from_value(item.clone()).map_err(bad)?;
            add_virtual(virtuals, origin, &vs, doc.line, &prefix)?;
        } else {
            let obj: k8s::Object = serde_norway::from_value(item.clone()).map_err(bad)?;
            loader.add(obj, doc.line, &prefix)?;
        }
    }
    Ok(())
}

/// Kind and `namespace/name` of an untyped object, for error messages.
struct Described {
    kind: String,
    object: String,
}

fn describe(v: &Value) -> Described {
    let kind = match v.get("kind") {
        Some(Value::String(k)) => k.clone(),
        _ => "object".to_owned(),
    };
    let meta = v.get("metadata");
    let ns = match meta.and_then(|m| m.get("namespace")) {
        Some(Value::String(ns)) if !ns.is_empty() => ns.as_str(),
        _ => "default",
    };
    let object = match meta.and_then(|m| m.get("name")) {
        Some(Value::String(n)) => format!("{ns}/{n}"),
        _ => format!("{ns}/(unnamed)"),
    };
    Described { kind, object }
}

fn check_kind(
    origin: &Arc<str>,
    line: usize,
    v: &Value,
    prefix: &str,
    what: &Described,
) -> Result<(), ConfigError> {
    let reason = match v {
        Value::Mapping(_) => match v.get("kind") {
            Some(Value::String(k)) if KINDS.contains(&k.as_str()) => return Ok(()),
            Some(Value::String(k)) => format!(
                "unsupported kind {k:?} (Sluice reads Service, Endpoints, EndpointSlice, Pod, VirtualService and List)"
            ),
            Some(Value::Null) | None => {
                "required (Service, Endpoints, EndpointSlice, Pod, VirtualService or List)".to_owned()
            }
            Some(_) => "must be a string".to_owned(),
        },
        _ => format!(
            "a document must be a Kubernetes object (a mapping with apiVersion and kind), got {}",
            value_type(v)
        ),
    };
    Err(invalid(origin, line, what, prefix, "kind", reason))
}

fn value_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn invalid(
    origin: &Arc<str>,
    line: usize,
    what: &Described,
    prefix: &str,
    field: &str,
    reason: String,
) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.clone(),
        line,
        kind: what.kind.clone(),
        object: what.object.clone(),
        field: format!("{prefix}{field}"),
        reason,
    }
}

/// The N of a serde_norway message starting with the path `items[N]`.
fn item_index(message: &str) -> Option<usize> {
    let rest = message.strip_prefix("items[")?;
    let end = rest.find(']')?;
    rest[..end].parse().ok()
}

/// A serde_norway error on a document, with its location moved to the whole
/// input and the location suffix dropped from the message.
fn yaml_error(
    origin: &Arc<str>,
    doc: &Document<'_>,
    e: &serde_norway::Error,
    context: &str,
) -> ConfigError {
    let shift = doc.text_line - 1;
    let (line, column) = match e.location() {
        Some(l) => (l.line() + shift, l.column()),
        None => (doc.line, 1),
    };
    ConfigError::Yaml {
        origin: origin.clone(),
        line,
        column,
        message: format!("{context}{}", relocate_message(&e.to_string(), shift)),
    }
}

/// Drops the first ` at line L column C` (the error's own location, reported
/// separately) and shifts the line of any other (libyaml's context mark).
fn relocate_message(msg: &str, shift: usize) -> String {
    const AT: &str = " at line ";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    let mut first = true;
    while let Some(i) = rest.find(AT) {
        out.push_str(&rest[..i]);
        let after = &rest[i + AT.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(n) = after[..digits].parse::<usize>() else {
            out.push_str(AT);
            rest = after;
            continue;
        };
        let tail = &after[digits..];
        let col = tail
            .strip_prefix(" column ")
            .map(|t| t.bytes().take_while(u8::is_ascii_digit).count() + " column ".len())
            .unwrap_or(0);
        if !first {
            out.push_str(AT);
            out.push_str(&(n + shift).to_string());
            out.push_str(&tail[..col]);
        }
        first = false;
        rest = &tail[col..];
    }
    out.push_str(rest);
    out
}
