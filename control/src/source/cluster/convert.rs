//! From the cluster's typed objects (k8s-openapi) to the store's form, the
//! object as Kubernetes JSON.
//!
//! The store keeps what the API and the file source write: an object's
//! JSON with `apiVersion` and `kind`. k8s-openapi serialises both, so the
//! conversion is its `Serialize`, minus the metadata the cluster's API
//! server owns (`uid`, `resourceVersion`, `generation`,
//! `creationTimestamp`, `managedFields`): the store sets its own (one
//! revision counter for every source), and keeping the cluster's would
//! turn every status-only change of the cluster into a write here.
//! The compile (`config::load_objects`) then checks the object as it checks
//! a file's; converting here checks only what the store's key needs.

use serde::Serialize;
use serde_json::Value;

use crate::store::{Key, Kind};

/// Why a cluster object cannot be converted. The object is refused (and
/// counted); the watch goes on.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The typed object did not serialise to JSON.
    #[error("{kind} {name}: cannot serialise: {source}")]
    Serialize {
        /// Its kind.
        kind: &'static str,
        /// `namespace/name` as far as known.
        name: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// The object lacks what the store keys it by.
    #[error("{kind} {name}: {reason}")]
    Key {
        /// Its kind.
        kind: &'static str,
        /// `namespace/name` as far as known.
        name: String,
        /// Why.
        reason: String,
    },
}

/// The metadata fields the cluster's API server sets, dropped.
const SERVER_FIELDS: [&str; 6] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
];

/// An object of `kind` as the store keeps it, with its key.
///
/// # Errors
/// [`ConvertError`] when it does not serialise or has no name.
pub fn to_store<T: Serialize>(kind: Kind, obj: &T) -> Result<(Key, Value), ConvertError> {
    let mut v = serde_json::to_value(obj).map_err(|source| ConvertError::Serialize {
        kind: kind.as_str(),
        name: String::new(),
        source,
    })?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in SERVER_FIELDS {
            meta.remove(f);
        }
    }
    if let Some(map) = v.as_object_mut() {
        // k8s-openapi writes both; set them anyway so the key is the kind
        // the watch asked for, whatever the server answered.
        map.insert(
            "apiVersion".into(),
            Value::String(kind.api_version().into()),
        );
        map.insert("kind".into(), Value::String(kind.as_str().into()));
    }
    let key = Key::of(&v).map_err(|e| ConvertError::Key {
        kind: kind.as_str(),
        name: name_of(&v),
        reason: e.to_string(),
    })?;
    Ok((key, v))
}

/// `namespace/name` of an object, for messages.
pub fn name_of(v: &Value) -> String {
    let meta = v.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    format!(
        "{}/{}",
        field("namespace").unwrap_or("default"),
        field("name").unwrap_or("(unnamed)")
    )
}

/// The Service an EndpointSlice belongs to: its
/// `kubernetes.io/service-name` label, in the slice's namespace.
pub fn slice_service(key: &Key, slice: &Value) -> Option<Key> {
    let name = slice
        .get("metadata")?
        .get("labels")?
        .get("kubernetes.io/service-name")?
        .as_str()?;
    Some(Key::new(Kind::Service, &key.namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    fn service() -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "prod", "uid": "0b1c", "resourceVersion": "812",
                         "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 3,
                         "managedFields": [{"manager": "kubectl"}],
                         "labels": {"app": "web"}},
            "spec": {"type": "LoadBalancer", "clusterIP": "198.18.100.10",
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.100.20"}]}}
        }))
        .unwrap()
    }

    #[test]
    fn a_service_keeps_spec_and_status_and_loses_server_metadata() {
        let (key, v) = to_store(Kind::Service, &service()).unwrap();
        assert_eq!(key, Key::new(Kind::Service, "prod", "web"));
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Service");
        let meta = v["metadata"].as_object().unwrap();
        for f in SERVER_FIELDS {
            assert!(!meta.contains_key(f), "{f} kept");
        }
        assert_eq!(v["metadata"]["labels"]["app"], "web");
        assert_eq!(v["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(v["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(v["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(
            v["status"]["loadBalancer"]["ingress"][0]["ip"],
            "198.18.100.20"
        );
    }

    #[test]
    fn a_slice_keeps_endpoints_with_node_names_and_conditions() {
        let s: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x1", "namespace": "prod", "resourceVersion": "9",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["198.18.1.11"], "nodeName": "node1",
                           "conditions": {"ready": false, "serving": true, "terminating": true}}]
        }))
        .unwrap();
        let (key, v) = to_store(Kind::EndpointSlice, &s).unwrap();
        assert_eq!(key, Key::new(Kind::EndpointSlice, "prod", "web-x1"));
        assert_eq!(v["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(v["endpoints"][0]["nodeName"], "node1");
        assert_eq!(v["endpoints"][0]["conditions"]["terminating"], true);
        assert!(v["metadata"].get("resourceVersion").is_none());
        assert_eq!(
            slice_service(&key, &v),
            Some(Key::new(Kind::Service, "prod", "web"))
        );
    }

    #[test]
    fn a_converted_service_and_slice_compile() {
        let (_, svc) = to_store(Kind::Service, &service()).unwrap();
        let slice = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x1", "namespace": "prod",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["198.18.1.11"], "nodeName": "node1", "conditions": {"ready": true}}]
        });
        let s: EndpointSlice = serde_json::from_value(slice).unwrap();
        let (_, slice) = to_store(Kind::EndpointSlice, &s).unwrap();
        let ctx = crate::config::CompileCtx {
            node_name: Some("node1".into()),
            ..Default::default()
        };
        let cfg = crate::config::load_objects([&svc, &slice], "cluster", &ctx).unwrap();
        assert!(!cfg.services.is_empty());
        assert_eq!(cfg.health_checks.len(), 1, "Local policy: a health check");
    }

    #[test]
    fn an_object_without_a_name_is_refused_naming_it() {
        let s = Service::default();
        let e = to_store(Kind::Service, &s).unwrap_err();
        assert!(e.to_string().contains("metadata.name"), "{e}");
    }
}
