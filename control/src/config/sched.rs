//! The scheduling annotations of a Service: which scheduler, its flags,
//! and (until the `VirtualService` object of the IPVS issue lands, since a
//! Kubernetes endpoint has no weight) per-endpoint weights and connection
//! thresholds:
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     sluice.dev/scheduler: wrr                      # ipvsadm -s names
//!     sluice.dev/scheduler-flags: mh-fallback,mh-port # ipvsadm -b names
//!     sluice.dev/weights: "198.18.1.1=1,198.18.1.2=2" # ipvsadm -w, 0..65535
//!     sluice.dev/thresholds: "198.18.1.1=100:50"      # -x upper[:lower -y]
//! ```
//!
//! Without `sluice.dev/scheduler` a Service gets the run-wide default
//! (`--scheduler`, like kube-proxy's `--ipvs-scheduler`). Weights and
//! thresholds apply to every ready endpoint with that address, on every
//! port; unlisted endpoints keep weight 1 and no threshold, terminating
//! ones keep weight 0.

use std::collections::BTreeMap;

use sluice_dataplane::service::{BackendSpec, SchedFlags, SchedKind};
use sluice_dataplane::types::Addr;

use super::compile::{Ctx, Loader};
use super::ConfigError;

/// The scheduler annotation (`ipvsadm -s` names, `mh` for Maglev).
pub const SCHEDULER_ANNOTATION: &str = "sluice.dev/scheduler";
/// The scheduler-flags annotation (`ipvsadm -b` names, comma-separated).
pub const SCHEDULER_FLAGS_ANNOTATION: &str = "sluice.dev/scheduler-flags";
/// Per-endpoint weights, `ADDR=WEIGHT,…` (interim, see the module doc).
pub const WEIGHTS_ANNOTATION: &str = "sluice.dev/weights";
/// Per-endpoint thresholds, `ADDR=UPPER[:LOWER],…` (interim).
pub const THRESHOLDS_ANNOTATION: &str = "sluice.dev/thresholds";

/// A Service's scheduling, from its annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Scheduling {
    pub kind: SchedKind,
    pub flags: SchedFlags,
    /// Weight per endpoint address.
    pub weights: BTreeMap<Addr, u16>,
    /// (upper, lower) per endpoint address.
    pub thresholds: BTreeMap<Addr, (u32, u32)>,
}

impl Scheduling {
    /// Sets the weights and thresholds of `b`, an endpoint of the
    /// Service: a listed address gets its weight unless it is terminating
    /// (weight 0 stays: it takes no new flows).
    pub fn apply(&self, b: &mut BackendSpec) {
        if let Some(&w) = self.weights.get(&b.addr) {
            if !b.terminating {
                b.weight = w;
            }
        }
        if let Some(&(u, l)) = self.thresholds.get(&b.addr) {
            b.upper = u;
            b.lower = l;
        }
    }
}

/// The field path of annotation `a`, as errors name it.
pub(super) fn field(a: &str) -> String {
    format!("metadata.annotations[\"{a}\"]")
}

/// The string value of annotation `a` (trimmed), if present.
pub(super) fn string<'a>(
    l: &Loader<'_>,
    ctx: &Ctx,
    ann: &'a BTreeMap<String, serde_norway::Value>,
    a: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match ann.get(a) {
        None => Ok(None),
        Some(serde_norway::Value::String(s)) => Ok(Some(s.trim())),
        Some(_) => Err(l.err(ctx, field(a), "must be a string")),
    }
}

/// `ADDR=VALUE` items of a comma-separated list, each parsed by `value`.
fn items<T>(
    l: &Loader<'_>,
    ctx: &Ctx,
    a: &str,
    text: &str,
    value: impl Fn(&str) -> Result<T, String>,
) -> Result<BTreeMap<Addr, T>, ConfigError> {
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |why: String| l.err(ctx, field(a), format!("{item:?}: {why}"));
        let (addr, v) = item
            .split_once('=')
            .ok_or_else(|| bad("must be ADDRESS=VALUE".into()))?;
        let ip: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| bad(format!("{:?} is not an IP address", addr.trim())))?;
        let v = value(v.trim()).map_err(bad)?;
        if out.insert(Addr::from(ip), v).is_some() {
            return Err(bad(format!("{ip} is listed twice")));
        }
    }
    Ok(out)
}

/// Reads and checks the scheduling annotations of a Service (`default`:
/// the run-wide `--scheduler`).
pub(super) fn scheduling(
    l: &Loader<'_>,
    ctx: &Ctx,
    ann: &BTreeMap<String, serde_norway::Value>,
    default: SchedKind,
) -> Result<Scheduling, ConfigError> {
    let kind = match string(l, ctx, ann, SCHEDULER_ANNOTATION)? {
        None => default,
        Some(name) => SchedKind::from_name(name).ok_or_else(|| {
            let all: Vec<&str> = SchedKind::ALL.iter().map(|k| k.as_str()).collect();
            l.err(
                ctx,
                field(SCHEDULER_ANNOTATION),
                format!("unknown scheduler {name:?}: one of {}", all.join(", ")),
            )
        })?,
    };
    let mut flags = SchedFlags::default();
    if let Some(text) = string(l, ctx, ann, SCHEDULER_FLAGS_ANNOTATION)? {
        for f in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (prefix, name) = f.split_once('-').unwrap_or(("", f));
            match (kind.flag_prefix(), name) {
                (Some(p), "fallback") if p == prefix => flags.fallback = true,
                (Some(p), "port") if p == prefix => flags.port = true,
                (Some(p), _) => {
                    return Err(l.err(
                        ctx,
                        field(SCHEDULER_FLAGS_ANNOTATION),
                        format!(
                            "unknown flag {f:?} for scheduler {kind}: {p}-fallback or {p}-port"
                        ),
                    ))
                }
                (None, _) => {
                    return Err(l.err(
                        ctx,
                        field(SCHEDULER_FLAGS_ANNOTATION),
                        format!("scheduler {kind} takes no flags, got {f:?} (sh and mh do)"),
                    ))
                }
            }
        }
    }
    let weights = match string(l, ctx, ann, WEIGHTS_ANNOTATION)? {
        None => BTreeMap::new(),
        Some(t) => items(l, ctx, WEIGHTS_ANNOTATION, t, |v| {
            v.parse::<u16>()
                .map_err(|_| format!("weight must be 0..65535, got {v:?}"))
        })?,
    };
    let thresholds = match string(l, ctx, ann, THRESHOLDS_ANNOTATION)? {
        None => BTreeMap::new(),
        Some(t) => items(l, ctx, THRESHOLDS_ANNOTATION, t, |v| {
            let (u, lo) = v.split_once(':').unwrap_or((v, "0"));
            let num = |s: &str| {
                s.trim().parse::<u32>().map_err(|_| {
                    format!("thresholds must be UPPER[:LOWER] connection counts, got {v:?}")
                })
            };
            let (u, lo) = (num(u)?, num(lo)?);
            if u == 0 || lo > u {
                return Err(format!(
                    "upper must be > 0 and lower at most upper, got {u}:{lo}"
                ));
            }
            Ok((u, lo))
        })?,
    };
    Ok(Scheduling {
        kind,
        flags,
        weights,
        thresholds,
    })
}

#[cfg(test)]
mod tests {
    use sluice_dataplane::service::SchedKind;

    use super::super::{load_str_with, CompileCtx, ConfigError};

    /// A Service `web` (198.18.100.10:80) with `annotations`, and three
    /// endpoints 198.18.1.1-3 (the third terminating).
    fn config(annotations: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, annotations: {{{annotations}}}}}\n\
             spec: {{clusterIP: 198.18.100.10, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-1, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\n\
             endpoints:\n- {{addresses: [198.18.1.1]}}\n- {{addresses: [198.18.1.2]}}\n\
             - {{addresses: [198.18.1.3], conditions: {{ready: false, serving: true, terminating: true}}}}\n\
             ports: [{{port: 8080}}]\n"
        )
    }

    fn load(annotations: &str, ctx: &CompileCtx) -> Result<super::super::Config, ConfigError> {
        load_str_with(&config(annotations), "t.yaml", ctx)
    }

    #[test]
    fn scheduler_flags_weights_thresholds() {
        let cfg = load(
            "sluice.dev/scheduler: mh, sluice.dev/scheduler-flags: 'mh-fallback, mh-port', \
             sluice.dev/weights: '198.18.1.1=1,198.18.1.2=3,198.18.1.3=9', \
             sluice.dev/thresholds: '198.18.1.2=100:40,198.18.1.1=8'",
            &CompileCtx::default(),
        )
        .unwrap();
        let s = &cfg.services[0];
        assert_eq!(s.sched, SchedKind::Maglev);
        assert!(s.sched_flags.fallback && s.sched_flags.port);
        let w: Vec<(u16, u32, u32)> = s
            .backends
            .iter()
            .map(|b| (b.weight, b.upper, b.lower))
            .collect();
        // The terminating endpoint keeps weight 0 whatever the annotation.
        assert_eq!(w, [(1, 8, 0), (3, 100, 40), (0, 0, 0)]);
    }

    #[test]
    fn run_wide_default() {
        let ctx = CompileCtx {
            scheduler: SchedKind::WeightedLeastConn,
            ..Default::default()
        };
        assert_eq!(
            load("", &ctx).unwrap().services[0].sched,
            SchedKind::WeightedLeastConn
        );
        assert_eq!(
            load("sluice.dev/scheduler: sh", &ctx).unwrap().services[0].sched,
            SchedKind::SourceHash
        );
        assert_eq!(
            load("", &CompileCtx::default()).unwrap().services[0].sched,
            SchedKind::RoundRobin
        );
    }

    #[track_caller]
    fn refused(annotations: &str, want: &str) {
        match load(annotations, &CompileCtx::default()) {
            Err(e @ ConfigError::Invalid { .. }) => {
                assert!(e.to_string().contains(want), "{e}");
            }
            other => panic!("expected an error with {want:?}, got {other:?}"),
        }
    }

    #[test]
    fn bad_annotations_are_refused_with_the_field() {
        refused(
            "sluice.dev/scheduler: fastest",
            "metadata.annotations[\"sluice.dev/scheduler\"]: unknown scheduler \"fastest\": one of rr, wrr",
        );
        refused(
            "sluice.dev/scheduler: wrr, sluice.dev/scheduler-flags: sh-port",
            "scheduler wrr takes no flags, got \"sh-port\"",
        );
        refused(
            "sluice.dev/scheduler: sh, sluice.dev/scheduler-flags: mh-port",
            "unknown flag \"mh-port\" for scheduler sh: sh-fallback or sh-port",
        );
        refused(
            "sluice.dev/weights: '198.18.1.1=70000'",
            "weight must be 0..65535, got \"70000\"",
        );
        refused(
            "sluice.dev/weights: 'web1=2'",
            "\"web1\" is not an IP address",
        );
        refused("sluice.dev/weights: '198.18.1.1'", "must be ADDRESS=VALUE");
        refused(
            "sluice.dev/weights: '198.18.1.1=1,198.18.1.1=2'",
            "198.18.1.1 is listed twice",
        );
        refused(
            "sluice.dev/thresholds: '198.18.1.1=5:9'",
            "lower at most upper, got 5:9",
        );
        refused("sluice.dev/thresholds: '198.18.1.1=0'", "upper must be > 0");
        refused("sluice.dev/scheduler: 3", "must be a string");
    }
}
