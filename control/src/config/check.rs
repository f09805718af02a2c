//! The health-check annotations of a Service (syntax in
//! [`crate::check::spec`]):
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     sluice.dev/health-check: "http path=/healthz status=200 interval=2s timeout=1s rise=2 fall=3"
//!     sluice.dev/health-check-action: remove   # default weight0
//! ```
//!
//! The action without a check is refused, so that a typo in the check's
//! annotation name does not leave a Service silently unchecked.

use std::collections::BTreeMap;

use super::compile::{Ctx, Loader};
use super::sched::{field, string as text};
use super::ConfigError;
use crate::check::{CheckAction, CheckSpec, ServiceCheck};

/// The check of every real server of the Service.
pub const HEALTH_CHECK_ANNOTATION: &str = "sluice.dev/health-check";
/// What a failed server gets: `weight0` (default) or `remove`.
pub const HEALTH_CHECK_ACTION_ANNOTATION: &str = "sluice.dev/health-check-action";

/// Reads and checks the health-check annotations of a Service.
pub(super) fn health_check(
    l: &Loader<'_>,
    ctx: &Ctx,
    ann: &BTreeMap<String, serde_norway::Value>,
) -> Result<Option<ServiceCheck>, ConfigError> {
    let action = match text(l, ctx, ann, HEALTH_CHECK_ACTION_ANNOTATION)? {
        None => None,
        Some(t) => Some(
            CheckAction::parse(t)
                .map_err(|e| l.err(ctx, field(HEALTH_CHECK_ACTION_ANNOTATION), e.to_string()))?,
        ),
    };
    let Some(t) = text(l, ctx, ann, HEALTH_CHECK_ANNOTATION)? else {
        return match action {
            None => Ok(None),
            Some(_) => Err(l.err(
                ctx,
                field(HEALTH_CHECK_ACTION_ANNOTATION),
                format!("given without {HEALTH_CHECK_ANNOTATION}"),
            )),
        };
    };
    let spec = CheckSpec::parse(t)
        .map_err(|e| l.err(ctx, field(HEALTH_CHECK_ANNOTATION), e.to_string()))?;
    Ok(Some(ServiceCheck {
        spec,
        action: action.unwrap_or_default(),
    }))
}
