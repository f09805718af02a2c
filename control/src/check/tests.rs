//! The registry and the overlay, over configs loaded from YAML with the
//! annotations (`config/check.rs`, `config/persistence.rs`).

use std::collections::HashSet;

use super::*;
use crate::config::{self, ConfigError};

fn yaml(annotations: &str, affinity: bool) -> String {
    let aff = if affinity {
        "  sessionAffinity: ClientIP\n"
    } else {
        ""
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations:
{annotations}
spec:
  clusterIP: 198.18.100.10
{aff}  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Endpoints
metadata:
  name: web
  namespace: default
subsets:
- addresses:
  - ip: 198.18.1.11
  - ip: 198.18.1.12
  ports:
  - name: http
    port: 8080
"#
    )
}

fn load(annotations: &str) -> Result<Config, ConfigError> {
    config::load_str(&yaml(annotations, false), "t.yaml")
}

fn bad(annotations: &str, affinity: bool) -> String {
    match config::load_str(&yaml(annotations, affinity), "t.yaml") {
        Ok(_) => panic!("{annotations} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn annotations_give_a_check_per_service_port() {
    let cfg = load(
        "    sluice.dev/health-check: \"http path=/healthz status=200 interval=2s timeout=1s rise=2 fall=3\"\n    sluice.dev/health-check-action: remove",
    )
    .unwrap();
    let c = &cfg.checks["default/web:http"];
    assert_eq!(c.action, CheckAction::Remove);
    assert_eq!(
        c.spec.probe,
        Probe::Http {
            path: "/healthz".into(),
            status: 200
        }
    );
    assert_eq!(cfg.checks.len(), 1);
    let plain = load("    other: x").unwrap();
    assert!(plain.checks.is_empty());
    let default_action = load("    sluice.dev/health-check: tcp").unwrap();
    assert_eq!(
        default_action.checks["default/web:http"].action,
        CheckAction::Weight0
    );
}

#[test]
fn bad_annotations_name_the_field() {
    let e = bad("    sluice.dev/health-check: \"http status=abc\"", false);
    assert!(
        e.contains("metadata.annotations[\"sluice.dev/health-check\"]")
            && e.contains("status=\"abc\""),
        "{e}"
    );
    let e = bad(
        "    sluice.dev/health-check: \"tcp\"\n    sluice.dev/health-check-action: drain",
        false,
    );
    assert!(
        e.contains("sluice.dev/health-check-action") && e.contains("weight0 or remove"),
        "{e}"
    );
    let e = bad("    sluice.dev/health-check-action: remove", false);
    assert!(e.contains("given without sluice.dev/health-check"), "{e}");
    let e = bad("    sluice.dev/health-check: 5", false);
    assert!(e.contains("must be a string"), "{e}");
}

#[test]
fn persistence_netmask_annotation() {
    let cfg = config::load_str(
        &yaml(
            "    sluice.dev/persistence-netmask: \"255.255.255.0\"",
            true,
        ),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(cfg.services[0].affinity_prefix, Some(24));
    let cfg = config::load_str(&yaml("    other: x", true), "t.yaml").unwrap();
    assert_eq!(cfg.services[0].affinity_prefix, None);
    let e = bad("    sluice.dev/persistence-netmask: \"24\"", false);
    assert!(
        e.contains("sluice.dev/persistence-netmask") && e.contains("needs spec.sessionAffinity"),
        "{e}"
    );
    let e = bad("    sluice.dev/persistence-netmask: \"255.0.255.0\"", true);
    assert!(e.contains("not a contiguous netmask"), "{e}");
    // Over 32 for an IPv4 front end: refused by the table build.
    let e = bad("    sluice.dev/persistence-netmask: \"64\"", true);
    assert!(e.contains("/64 is longer than 32 bits"), "{e}");
}

fn target(cfg: &Config, last: u8) -> Target {
    let s = &cfg.services[0];
    let b = s
        .backends
        .iter()
        .find(|b| b.addr.to_ip().to_string() == format!("198.18.1.{last}"))
        .unwrap();
    Target::of(b, &cfg.checks[&s.name].spec)
}

fn fail(checks: &Checks, t: &Target, n: u32) -> Vec<Transition> {
    (0..n)
        .filter_map(|_| checks.record(t, Err(ProbeError::Refused)))
        .collect()
}

#[test]
fn weight0_overlay_keeps_the_server_with_weight_zero() {
    let cfg = load("    sluice.dev/health-check: \"tcp fall=2 rise=1\"").unwrap();
    let checks = Checks::default();
    checks.set_targets(&cfg);
    assert_eq!(checks.status().len(), 2);
    assert!(matches!(
        Checks::overlay(&cfg, &checks.down()),
        Cow::Borrowed(_)
    ));
    let t = target(&cfg, 11);
    assert_eq!(fail(&checks, &t, 2), vec![Transition::Down]);
    let down = checks.down();
    assert_eq!(down, HashSet::from([t.clone()]));
    let o = Checks::overlay(&cfg, &down);
    let w: Vec<(String, u16)> = o.services[0]
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.weight))
        .collect();
    assert_eq!(
        w,
        vec![("198.18.1.11".into(), 0), ("198.18.1.12".into(), 1)]
    );
    // The configured state is left as written.
    assert!(cfg.services[0].backends.iter().all(|b| b.weight == 1));
    let st = checks.status();
    assert_eq!((st[0].state, st[1].state), ("down", "up"));
    assert_eq!(st[0].last_error.as_deref(), Some("ICMP port unreachable"));
    assert_eq!(checks.record(&t, Ok(())), Some(Transition::Up));
    assert!(checks.down().is_empty());
}

#[test]
fn remove_overlay_leaves_the_server_out() {
    let cfg = load(
        "    sluice.dev/health-check: \"tcp fall=1\"\n    sluice.dev/health-check-action: remove",
    )
    .unwrap();
    let checks = Checks::default();
    checks.set_targets(&cfg);
    let t = target(&cfg, 12);
    fail(&checks, &t, 1);
    let o = Checks::overlay(&cfg, &checks.down());
    let left: Vec<String> = o.services[0]
        .backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    assert_eq!(left, vec!["198.18.1.11".to_string()]);
}

#[test]
fn targets_follow_the_config_and_keep_their_state() {
    let cfg = load("    sluice.dev/health-check: \"tcp fall=1\"").unwrap();
    let checks = Checks::default();
    checks.set_targets(&cfg);
    let t11 = target(&cfg, 11);
    let t12 = target(&cfg, 12);
    fail(&checks, &t11, 1);
    // A recompile of the same config (any change elsewhere) keeps the state.
    checks.set_targets(&cfg);
    assert_eq!(checks.down(), HashSet::from([t11.clone()]));
    // A server that leaves the config leaves the checker.
    let mut fewer = cfg.clone();
    fewer.services[0]
        .backends
        .retain(|b| b.addr.to_string() == "198.18.1.12");
    checks.set_targets(&fewer);
    assert!(checks.down().is_empty());
    assert_eq!(checks.status().len(), 1);
    assert_eq!(
        checks.record(&t11, Err(ProbeError::Refused)),
        None,
        "forgotten"
    );
    // Back in the config: it starts up again.
    checks.set_targets(&cfg);
    assert!(checks.down().is_empty());
    assert_eq!(checks.status().len(), 2);
    // No check: no targets.
    checks.set_targets(&load("    other: x").unwrap());
    assert!(checks.status().is_empty());
    let _ = t12;
}

#[test]
fn due_targets_start_once_within_the_limit() {
    let cfg = load("    sluice.dev/health-check: \"tcp interval=1s timeout=1s\"").unwrap();
    let checks = Checks::default();
    checks.set_targets(&cfg);
    let now = Instant::now();
    assert_eq!(checks.start_due(now, 1).len(), 1, "the limit holds");
    assert_eq!(checks.start_due(now, 10).len(), 1, "the other one");
    assert!(checks.start_due(now, 10).is_empty(), "both in flight");
    for t in [target(&cfg, 11), target(&cfg, 12)] {
        checks.record(&t, Ok(()));
    }
    assert!(checks.start_due(now, 10).is_empty(), "not due yet");
    assert_eq!(
        checks
            .start_due(now + std::time::Duration::from_secs(1), 10)
            .len(),
        2
    );
}

#[test]
fn a_check_applies_to_the_ports_of_its_protocol_or_to_all_with_port() {
    use sluice_dataplane::types::proto::{TCP, UDP};
    let c = |t: &str| ServiceCheck {
        spec: CheckSpec::parse(t).unwrap(),
        action: CheckAction::Weight0,
    };
    assert!(c("tcp").applies_to(TCP) && !c("tcp").applies_to(UDP));
    assert!(c("http").applies_to(TCP) && !c("http").applies_to(UDP));
    assert!(c("udp send=x").applies_to(UDP) && !c("udp send=x").applies_to(TCP));
    assert!(c("http port=8080").applies_to(UDP));
    assert!(c("udp send=x port=53").applies_to(TCP));
}

#[test]
fn the_index_finds_a_server_by_its_probed_port() {
    let cfg = load("    sluice.dev/health-check: \"tcp port=9000 rise=1 fall=1\"").unwrap();
    let checks = Checks::default();
    checks.set_targets(&cfg);
    let s = &cfg.services[0];
    let b11 = s
        .backends
        .iter()
        .find(|b| b.addr.to_ip().to_string() == "198.18.1.11");
    let b11 = b11.unwrap();
    let t = Target::of(b11, &cfg.checks[&s.name].spec);
    assert_eq!(t.addr.port(), 9000);
    checks.record(&t, Err(ProbeError::Refused));
    let idx = checks.index();
    for b in &s.backends {
        let want = b.addr == b11.addr;
        assert_eq!(idx.is_up(&s.name, b), Some(!want), "{:?}", b.addr);
    }
    assert_eq!(idx.is_up("default/other:http", b11), None);
}
