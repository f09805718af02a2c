//! Serde shapes of the Kubernetes objects Sluice reads, in their real
//! (`kubectl get -o yaml`) form.
//!
//! Only the fields Sluice uses (or wants type-checked) are declared; every
//! other field (`metadata.uid`, `managedFields`, …) is skipped by serde, so
//! real dumps load. Lists and optional scalars are `Option` because the API
//! server writes `null` for empty ones (`endpoints: null` on an empty
//! EndpointSlice). Values are checked later, in `compile`, where the error
//! can name the object and the field; here only YAML types are checked,
//! with serde_norway's precise location.
//!
//! One [`Object`] struct covers every supported kind. Their top-level field
//! names do not collide except `spec` and `status`, which Service and Pod
//! share: [`Spec`] and [`Status`] hold the fields of both, whose names do
//! not collide either (a Service's `spec.ports` against a Pod's
//! `spec.containers`, a Service's `status.loadBalancer` against a Pod's
//! `status.podIP`; `status.conditions` has `type` and `status` strings in
//! both). The kind is checked before this shape is used.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Any supported top-level object (Service, Endpoints, EndpointSlice, Pod,
/// List).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Object {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<ObjectMeta>,
    /// Service or Pod.
    pub spec: Option<Spec>,
    /// Service or Pod.
    pub status: Option<Status>,
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
    /// Any YAML value: only one annotation is read, and checked there.
    pub annotations: Option<BTreeMap<String, serde_norway::Value>>,
    /// A Pod being deleted (its value, a timestamp, does not matter).
    pub deletion_timestamp: Option<serde_norway::Value>,
}

/// `spec` of a Service or of a Pod.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Spec {
    // Service.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<String>>,
    pub ip_families: Option<Vec<String>>,
    pub ip_family_policy: Option<String>,
    pub ports: Option<Vec<ServicePort>>,
    pub selector: Option<BTreeMap<String, String>>,
    pub external_name: Option<String>,
    #[serde(rename = "externalIPs")]
    pub external_ips: Option<Vec<String>>,
    #[serde(rename = "loadBalancerIP")]
    pub load_balancer_ip: Option<String>,
    pub load_balancer_source_ranges: Option<Vec<String>>,
    pub allocate_load_balancer_node_ports: Option<bool>,
    pub external_traffic_policy: Option<String>,
    pub internal_traffic_policy: Option<String>,
    pub health_check_node_port: Option<i64>,
    pub session_affinity: Option<String>,
    pub session_affinity_config: Option<SessionAffinityConfig>,
    pub publish_not_ready_addresses: Option<bool>,
    // Pod.
    pub node_name: Option<String>,
    pub containers: Option<Vec<Container>>,
}

/// `status` of a Service or of a Pod.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Status {
    // Service.
    pub load_balancer: Option<LoadBalancerStatus>,
    // Pod.
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIp>>,
    pub phase: Option<String>,
    // Both (a Pod's `Ready` condition is what the endpoints controller reads).
    pub conditions: Option<Vec<Condition>>,
}

/// A Service's `status.loadBalancer`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct LoadBalancerStatus {
    pub ingress: Option<Vec<LoadBalancerIngress>>,
}

/// One entry of `status.loadBalancer.ingress`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct LoadBalancerIngress {
    pub ip: Option<String>,
    /// Parsed so a wrong type is an error; a hostname-only ingress has no
    /// address to answer on.
    #[allow(dead_code)]
    pub hostname: Option<String>,
    /// `VIP` (default) or `Proxy` (the load balancer proxies; the node must
    /// not capture the address).
    pub ip_mode: Option<String>,
}

/// `spec.sessionAffinityConfig`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

/// `spec.sessionAffinityConfig.clientIP`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClientIpConfig {
    pub timeout_seconds: Option<i64>,
}

/// A Pod condition, or a Service condition (same `type`/`status` fields).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Condition {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub status: Option<String>,
}

/// One entry of a Pod's `status.podIPs`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct PodIp {
    pub ip: Option<String>,
}

/// One entry of a Pod's `spec.containers`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Container {
    pub ports: Option<Vec<ContainerPort>>,
}

/// One entry of a container's `ports`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ContainerPort {
    pub name: Option<String>,
    pub container_port: Option<i64>,
    pub protocol: Option<String>,
}

/// One entry of a Service's `spec.ports`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ServicePort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i64>,
    pub target_port: Option<IntOrString>,
    pub node_port: Option<i64>,
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
    pub node_name: Option<String>,
}

/// An EndpointSlice endpoint's `conditions`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
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
        // the value and lose serde_norway's location on errors.
        d.deserialize_any(V)
    }
}
