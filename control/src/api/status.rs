//! Errors as Kubernetes `Status` objects (`apimachinery/pkg/api/errors`):
//! kubectl prints their `message` and branches on `reason` and `code`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::config::ConfigError;
use crate::reconcile::ApplyError;
use crate::store::{Key, StoreError};

/// A failure, as the API server writes it.
#[derive(Debug)]
pub struct Status {
    /// HTTP status.
    pub code: StatusCode,
    /// `reason` (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// `message`.
    pub message: String,
    /// `details`, when there are any.
    pub details: Option<Value>,
}

impl Status {
    /// A status without details.
    pub fn new(code: StatusCode, reason: &'static str, message: String) -> Status {
        Status {
            code,
            reason,
            message,
            details: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: String) -> Status {
        Status::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 404 NotFound for a path that names no resource.
    pub fn no_route(path: &str) -> Status {
        Status::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 422 Invalid naming one field.
    pub fn invalid(kind: &str, name: &str, field: &str, reason: &str) -> Status {
        Status {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!("{kind} {name:?} is invalid: {field}: Invalid value: {reason}"),
            details: Some(json!({
                "name": name,
                "kind": kind.to_ascii_lowercase(),
                "causes": [{"reason": "FieldValueInvalid", "message": format!("Invalid value: {reason}"), "field": field}],
            })),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl IntoResponse for Status {
    fn into_response(self) -> Response {
        (self.code, Json(self.body())).into_response()
    }
}

fn details(key: &Key) -> Value {
    json!({"name": key.name, "kind": key.kind.plural(), "group": key.kind.group()})
}

/// The status for a refused write or watch; `key` names the object written
/// (for errors that do not carry one).
pub fn from_store(e: StoreError<ApplyError>, key: Option<&Key>) -> Status {
    let name = key.map(|k| k.name.as_str()).unwrap_or("");
    let kind = key.map(|k| k.kind.as_str()).unwrap_or("object");
    match e {
        StoreError::BadObject { field, reason } => Status::invalid(kind, name, &field, &reason),
        StoreError::AlreadyExists(k) => Status {
            code: StatusCode::CONFLICT,
            reason: "AlreadyExists",
            message: format!("{} {:?} already exists", k.kind.plural(), k.name),
            details: Some(details(&k)),
        },
        StoreError::NotFound(k) => not_found(&k),
        StoreError::Conflict {
            key,
            given,
            current,
        } => Status {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again (resourceVersion {given}, now {current})",
                key.kind.plural(),
                key.name
            ),
            details: Some(details(&key)),
        },
        StoreError::Invalid(ApplyError::Config(ConfigError::Invalid {
            kind,
            object,
            field,
            reason,
            ..
        })) => {
            let name = object.rsplit('/').next().unwrap_or(&object).to_owned();
            Status::invalid(&kind, &name, &field, &reason)
        }
        StoreError::Invalid(ApplyError::Config(ConfigError::Table(t))) => {
            Status::invalid(kind, name, "spec", &t.to_string())
        }
        StoreError::Invalid(ApplyError::Config(other)) => {
            Status::invalid(kind, name, "", &other.to_string())
        }
        StoreError::Invalid(ApplyError::Steer(s)) => Status::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("the steering maps refused the change: {s}"),
        ),
        StoreError::Gone { .. } => gone(&e.to_string()),
    }
}

/// 404 for an object.
pub fn not_found(k: &Key) -> Status {
    Status {
        code: StatusCode::NOT_FOUND,
        reason: "NotFound",
        message: format!("{} {:?} not found", k.kind.plural(), k.name),
        details: Some(details(k)),
    }
}

/// 410 Expired (a watch from a compacted resource version).
pub fn gone(message: &str) -> Status {
    Status::new(StatusCode::GONE, "Expired", message.to_owned())
}
