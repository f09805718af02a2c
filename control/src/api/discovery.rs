//! `/version` and the discovery documents kubectl reads to map `svc` to
//! `/api/v1/namespaces/NS/services` (legacy discovery: kubectl falls back
//! to it when the answer to its aggregated-discovery `Accept` is plain
//! JSON).

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;
use crate::store::Kind;

/// The Kubernetes minor version the API follows.
pub const KUBE_MINOR: &str = "32";

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(api))
        .route("/api/v1", get(core_v1))
        .route("/apis", get(apis))
        .route("/apis/discovery.k8s.io", get(discovery_group))
        .route("/apis/discovery.k8s.io/v1", get(discovery_v1))
        .route("/apis/sluice.dev", get(sluice_group))
        .route("/apis/sluice.dev/v1", get(sluice_v1))
        .route("/openapi/v3/apis/sluice.dev/v1", get(openapi_sluice))
        .route("/openapi/v3", get(openapi_root))
        .route("/openapi/v3/api/v1", get(openapi_core))
        .route(
            "/openapi/v3/apis/discovery.k8s.io/v1",
            get(openapi_discovery),
        )
}

/// The OpenAPI v3 index. Sluice publishes no schemas; its group-version
/// documents only declare, per kind, the PATCH operation with the
/// `fieldValidation` query parameter: that is what kubectl's
/// `QueryParamVerifierV3` (cli-runtime `query_param_verifier_v3.go`) reads
/// to decide that the server validates, so that `kubectl create/replace
/// -f` sends the object instead of failing to download a schema.
async fn openapi_root() -> Json<Value> {
    Json(json!({"paths": {
        "api/v1": {"serverRelativeURL": "/openapi/v3/api/v1"},
        "apis/discovery.k8s.io/v1": {"serverRelativeURL": "/openapi/v3/apis/discovery.k8s.io/v1"},
        "apis/sluice.dev/v1": {"serverRelativeURL": "/openapi/v3/apis/sluice.dev/v1"},
    }}))
}

fn openapi_doc(prefix: &str, kinds: &[Kind]) -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for k in kinds {
        paths.insert(
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", k.plural()),
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": k.group(), "version": "v1", "kind": k.as_str()},
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    Json(json!({
        "openapi": "3.0.0",
        "info": {"title": "Sluice", "version": format!("v1.{KUBE_MINOR}")},
        "paths": paths,
    }))
}

async fn openapi_core() -> Json<Value> {
    openapi_doc("/api/v1", &[Kind::Service, Kind::Endpoints, Kind::Pod])
}

async fn openapi_discovery() -> Json<Value> {
    openapi_doc("/apis/discovery.k8s.io/v1", &[Kind::EndpointSlice])
}

async fn openapi_sluice() -> Json<Value> {
    openapi_doc("/apis/sluice.dev/v1", &[Kind::VirtualService])
}

async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0-sluice-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
}

async fn api() -> Json<Value> {
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }))
}

fn group(name: &str) -> Value {
    json!({
        "name": name,
        "versions": [{"groupVersion": format!("{name}/v1"), "version": "v1"}],
        "preferredVersion": {"groupVersion": format!("{name}/v1"), "version": "v1"},
    })
}

async fn apis() -> Json<Value> {
    Json(
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            group("discovery.k8s.io"),
            group("sluice.dev"),
        ]}),
    )
}

fn api_group(name: &str) -> Json<Value> {
    let mut g = group(name);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Json(g)
}

async fn discovery_group() -> Json<Value> {
    api_group("discovery.k8s.io")
}

async fn sluice_group() -> Json<Value> {
    api_group("sluice.dev")
}

fn resource(k: Kind) -> Value {
    json!({
        "name": k.plural(),
        "singularName": k.singular(),
        "namespaced": true,
        "kind": k.as_str(),
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        "shortNames": k.short_names(),
    })
}

fn resource_list(group_version: &str, kinds: &[Kind]) -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": kinds.iter().map(|k| resource(*k)).collect::<Vec<_>>(),
    }))
}

async fn core_v1() -> Json<Value> {
    resource_list("v1", &[Kind::Service, Kind::Endpoints, Kind::Pod])
}

async fn discovery_v1() -> Json<Value> {
    resource_list("discovery.k8s.io/v1", &[Kind::EndpointSlice])
}

async fn sluice_v1() -> Json<Value> {
    resource_list("sluice.dev/v1", &[Kind::VirtualService])
}
