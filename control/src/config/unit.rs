//! One Service compiled alone, for the reconciler's incremental compile
//! (`reconcile/incremental.rs`).
//!
//! The whole compile ([`super::load_objects`]) is, per Service in key
//! order, "check the Service, gather its endpoint sources, emit its virtual
//! services, DNS record and health check", plus three things that look
//! across Services: the node-port table ([`assign_node_ports`]), front ends
//! claimed twice, and endpoint sources whose Service is missing. This module
//! exposes the per-Service step (the same code the whole compile runs,
//! `emit.rs`'s `emit_unit`) and the node-port table, so that the caller can
//! recompile only the Services a change touches and keep the cross-Service
//! checks itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use sluice_dataplane::service::{ServiceSpec, ServiceTable};

use super::compile::Loader;
use super::{add_json, virtual_service, CompileCtx, ConfigError};
use crate::check::ServiceCheck;
use crate::model::{DnsService, HealthCheck};

pub use super::nodeport::{assign_node_ports, Assigned, NodePortReq};

/// What one Service compiles to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUnit {
    /// Its virtual services, in the whole compile's order.
    pub specs: Vec<ServiceSpec>,
    /// Its DNS record set.
    pub dns: Arc<DnsService>,
    /// Its `healthCheckNodePort` server, if it has one.
    pub health_check: Option<HealthCheck>,
    /// Its real-server checks, by service-port name.
    pub checks: Vec<(String, ServiceCheck)>,
    /// `clusterIP: None`.
    pub headless: bool,
}

/// A Service checked on its own, to be compiled with its endpoint sources
/// once its node ports are known.
pub struct CheckedService<'c> {
    loader: Loader<'c>,
}

impl<'c> CheckedService<'c> {
    /// Checks the Service `obj` (its kind must be `Service`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] as the whole compile would for it.
    pub fn check(
        obj: &Value,
        origin: &str,
        ctx: &'c CompileCtx,
    ) -> Result<CheckedService<'c>, ConfigError> {
        let origin: Arc<str> = Arc::from(origin);
        let mut loader = Loader::new(origin.clone(), ctx);
        add_json(&mut loader, obj, &origin)?;
        if loader.services.len() != 1 {
            let what = super::describe_json(obj);
            return Err(ConfigError::Invalid {
                origin: loader.origin.clone(),
                line: 0,
                kind: what.kind,
                object: what.object,
                field: "kind".into(),
                reason: "must be Service".into(),
            });
        }
        Ok(CheckedService { loader })
    }

    /// What it asks of the node-port table.
    pub fn node_ports(&self) -> NodePortReq {
        NodePortReq::of(&self.loader.services[0])
    }

    /// Its selector (empty: none).
    pub fn selector(&self) -> &BTreeMap<String, String> {
        &self.loader.services[0].selector
    }

    /// Compiles it with its Endpoints (same name), its EndpointSlices (each
    /// labelled with its name) and the Pods of its namespace (only read
    /// when it has a selector and neither Endpoints nor slices), with the
    /// node ports `assigned` ([`assign_node_ports`]). The specs are checked
    /// as the table would check them, a front end claimed twice within the
    /// Service included.
    ///
    /// # Errors
    /// [`ConfigError`] for an endpoint source that does not check or is not
    /// this Service's, a spec the table refuses, or what `emit.rs` refuses
    /// (direct routing with a remapped port).
    pub fn compile<'v>(
        mut self,
        endpoints: Option<&Value>,
        slices: impl IntoIterator<Item = &'v Value>,
        pods: impl IntoIterator<Item = &'v Value>,
        assigned: &Assigned,
    ) -> Result<ServiceUnit, ConfigError> {
        let origin = self.loader.origin.clone();
        if let Some(e) = endpoints {
            add_json(&mut self.loader, e, &origin)?;
        }
        for s in slices {
            add_json(&mut self.loader, s, &origin)?;
        }
        if !self.loader.services[0].selector.is_empty()
            && self.loader.endpoints.is_empty()
            && self.loader.slices.is_empty()
        {
            for p in pods {
                add_json(&mut self.loader, p, &origin)?;
            }
        }
        let loader = &self.loader;
        let sources = loader.endpoint_sources()?;
        if let Some(w) = sources.waiting.first() {
            return Err(ConfigError::Context(format!(
                "{} {} is not Service {}'s",
                w.kind, w.object, loader.services[0].ctx.object
            )));
        }
        let unit = loader.emit_unit(
            &loader.services[0],
            sources.from_endpoints[0],
            &sources.from_slices[0],
            assigned,
        )?;
        ServiceTable::check_specs(&unit.specs)?;
        Ok(unit)
    }
}

/// Checks one object on its own (a Pod no Service selects is still
/// checked), as the whole compile would.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the object and field.
pub fn check_object(obj: &Value, origin: &str, ctx: &CompileCtx) -> Result<(), ConfigError> {
    let origin: Arc<str> = Arc::from(origin);
    if super::describe_json(obj).kind == virtual_service::KIND {
        return compile_virtual(obj, &origin).map(|_| ());
    }
    let mut loader = Loader::new(origin.clone(), ctx);
    add_json(&mut loader, obj, &origin)
}

/// Compiles one `VirtualService` object: its spec and its real-server
/// check.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the field.
pub fn compile_virtual(
    obj: &Value,
    origin: &Arc<str>,
) -> Result<(ServiceSpec, Option<ServiceCheck>), ConfigError> {
    let mut out = Vec::new();
    super::add_virtual_json(&mut out, origin, obj)?;
    let v = out
        .pop()
        .ok_or_else(|| ConfigError::Context("no VirtualService".into()))?;
    let object = format!("{}/{}", v.def.ns, v.def.name);
    let spec = v
        .def
        .compile()
        .map_err(|e| super::vs_error(origin, v.line, object, &v.prefix, e))?;
    spec.check()?;
    Ok((spec, v.def.check))
}

/// The Service an EndpointSlice names (`kubernetes.io/service-name`), if
/// any.
pub fn slice_service(obj: &Value) -> Option<&str> {
    obj.get("metadata")?
        .get("labels")?
        .get(super::compile::SERVICE_NAME_LABEL)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// An object's labels (those with string values).
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}
