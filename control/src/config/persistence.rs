//! The persistence-netmask annotation (`ipvsadm -M`) of a Service with
//! `sessionAffinity: ClientIP`:
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     sluice.dev/persistence-netmask: "24"       # or 255.255.255.0 (IPv4)
//! ```
//!
//! Clients whose addresses agree in the first N bits share one affinity
//! entry. A prefix length applies to both families (at most 32 for an IPv4
//! front end: a dual-stack Service with a prefix over 32 is refused for its
//! IPv4 front ends by [`sluice_dataplane::service::ServiceTable::build`]); a
//! dotted mask is IPv4's only and must be contiguous, as ipvsadm's. Without
//! `sessionAffinity: ClientIP` there is nothing to mask and the annotation
//! is refused.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::compile::{Ctx, Loader};
use super::ConfigError;

/// The persistence netmask of a Service's ClientIP affinity.
pub const PERSISTENCE_NETMASK_ANNOTATION: &str = "sluice.dev/persistence-netmask";

/// The prefix length a netmask text gives: `N` (0..=128) or a contiguous
/// dotted IPv4 mask.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_netmask(text: &str) -> Result<u8, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u8>() {
        return if n <= 128 {
            Ok(n)
        } else {
            Err(format!("prefix length {n} is over 128"))
        };
    }
    let m: Ipv4Addr = t
        .parse()
        .map_err(|_| format!("{t:?} is neither a prefix length nor a dotted IPv4 mask"))?;
    let bits = u32::from(m);
    let len = bits.leading_ones();
    if bits.checked_shl(len).unwrap_or(0) != 0 {
        return Err(format!("{t} is not a contiguous netmask"));
    }
    Ok(len as u8)
}

/// Reads the annotation; `affinity` says whether the Service has ClientIP
/// affinity.
pub(super) fn netmask(
    l: &Loader<'_>,
    ctx: &Ctx,
    ann: &BTreeMap<String, serde_norway::Value>,
    affinity: bool,
) -> Result<Option<u8>, ConfigError> {
    let f = super::sched::field(PERSISTENCE_NETMASK_ANNOTATION);
    let text = match ann.get(PERSISTENCE_NETMASK_ANNOTATION) {
        None => return Ok(None),
        Some(serde_norway::Value::String(s)) => s.clone(),
        Some(serde_norway::Value::Number(n)) => n.to_string(),
        Some(_) => return Err(l.err(ctx, f, "must be a prefix length or a dotted mask")),
    };
    if !affinity {
        return Err(l.err(
            ctx,
            f,
            "needs spec.sessionAffinity: ClientIP (it masks the affinity's client address)",
        ));
    }
    parse_netmask(&text).map(Some).map_err(|e| l.err(ctx, f, e))
}

#[cfg(test)]
mod tests {
    use super::parse_netmask;

    #[test]
    fn lengths_and_masks() {
        assert_eq!(parse_netmask("24"), Ok(24));
        assert_eq!(parse_netmask(" 0 "), Ok(0));
        assert_eq!(parse_netmask("128"), Ok(128));
        assert_eq!(parse_netmask("255.255.255.0"), Ok(24));
        assert_eq!(parse_netmask("255.255.255.255"), Ok(32));
        assert_eq!(parse_netmask("0.0.0.0"), Ok(0));
        assert_eq!(parse_netmask("255.255.128.0"), Ok(17));
        assert!(parse_netmask("129").unwrap_err().contains("over 128"));
        assert!(parse_netmask("255.0.255.0")
            .unwrap_err()
            .contains("not a contiguous netmask"));
        assert!(parse_netmask("/24").unwrap_err().contains("neither"));
    }
}
