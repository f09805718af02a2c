//! Serde shapes of the Kubernetes objects Sluice reads, in their real
//! (`kubectl get -o yaml`) form.
//!
//! Only the fields Sluice uses (or wants type-checked) are declared; every
//! other field (`metadata.uid`, `managedFields`, `status`, …) is skipped by
//! serde, so real dumps load. Lists and optional scalars are `Option`
//! because the API server writes `null` for empty ones (`endpoints: null` on
//! an empty EndpointSlice). Values are checked later, in `compile`, where
//! the error can name the object and the field; here only YAML types are
//! checked, with serde_yaml's precise location.
//!
//! One [`Object`] struct covers every supported kind: their top-level field
//! names do not collide (`spec` is a Service's, `subsets` an Endpoints',
//! `addressType`/`endpoints`/`ports` an EndpointSlice's, `items` a List's),
//! and the kind is checked before this shape is used, so a field of another
//! kind never gets type-checked against the wrong shape.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Any supported top-level object (Service, Endpoints, EndpointSlice, List).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Object {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<ObjectMeta>,
    /// Service.
    pub spec: Option<ServiceSpec>,
    /// Endpoints.
    pub subsets: Option<Vec<EndpointSubset>>,
    /// EndpointSlice.
    pub address_type: Option<String>,
    /// EndpointSlice.
    pub endpoints: Option<Vec<Endpoint>>,
    /// EndpointSlice.
    pub ports: Option<Vec<EndpointPort>>,
    /// List.
    pub items: Option<Vec<Object>>,
}

/// `metadata`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// Service `spec`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<String>>,
    pub ports: Option<Vec<ServicePort>>,
    /// Parsed so a wrong type is an error; Pods are out of scope, so a
    /// selector does not change where endpoints come from.
    #[allow(dead_code)]
    pub selector: Option<BTreeMap<String, String>>,
}

/// One entry of a Service's `spec.ports`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ServicePort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i64>,
    pub target_port: Option<IntOrString>,
}

/// One entry of an Endpoints' `subsets`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct EndpointSubset {
    pub addresses: Option<Vec<EndpointAddress>>,
    pub not_ready_addresses: Option<Vec<EndpointAddress>>,
    pub ports: Option<Vec<EndpointPort>>,
}

/// An Endpoints address.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct EndpointAddress {
    pub ip: Option<String>,
    /// Parsed so a wrong type is an error; not used yet
    /// (externalTrafficPolicy: Local is out of scope).
    #[allow(dead_code)]
    pub node_name: Option<String>,
}

/// A port of an Endpoints subset or of an EndpointSlice (same shape).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct EndpointPort {
    pub name: Option<String>,
    pub port: Option<i64>,
    pub protocol: Option<String>,
}

/// One entry of an EndpointSlice's `endpoints`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Endpoint {
    pub addresses: Option<Vec<String>>,
    pub conditions: Option<EndpointConditions>,
    /// Parsed so a wrong type is an error; not used yet.
    #[allow(dead_code)]
    pub node_name: Option<String>,
}

/// An EndpointSlice endpoint's `conditions`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct EndpointConditions {
    pub ready: Option<bool>,
    /// Parsed so a wrong type is an error; only `ready` selects backends
    /// in this scope (a terminating endpoint is not ready).
    #[allow(dead_code)]
    pub serving: Option<bool>,
    /// As `serving`.
    #[allow(dead_code)]
    pub terminating: Option<bool>,
}

/// Kubernetes' `IntOrString` (`targetPort: 8080` or `targetPort: http`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IntOrString {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_owned()))
            }
        }
        // Not `deserialize_any` on a derived untagged enum: that would buffer
        // the value and lose serde_yaml's location on errors.
        d.deserialize_any(V)
    }
}
