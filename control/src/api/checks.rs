//! `GET /apis/sluice.dev/v1/healthchecks`: the state of every real-server
//! health check (`check/`), as a list in Kubernetes' shape:
//!
//! ```json
//! {"apiVersion": "sluice.dev/v1", "kind": "HealthCheckList",
//!  "items": [{"address": "198.18.1.11", "port": 8080, "check": "http",
//!             "state": "down", "action": "weight0", "since": "…",
//!             "services": ["default/web:http"], "probes": 12, "failures": 3,
//!             "lastError": "HTTP status 503, expected 200"}]}
//! ```

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;

/// The route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/apis/sluice.dev/v1/healthchecks", get(list))
}

async fn list(State(s): State<AppState>) -> Json<Value> {
    // The registry is cloned under the reconciler's lock and read after.
    let checks = {
        let rec = s.rec.lock().unwrap_or_else(|p| p.into_inner());
        rec.publisher_ref().checks().clone()
    };
    Json(json!({
        "apiVersion": "sluice.dev/v1",
        "kind": "HealthCheckList",
        "metadata": {},
        "items": checks.status(),
    }))
}
