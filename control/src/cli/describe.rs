//! `sluice describe svc NAME`: one Service as `kubectl describe` shows it
//! (its spec as `Key: value` lines), then what Sluice made of it: the front
//! ends the workers serve and their endpoints with weight, state, health
//! and counters, as aligned tables. The daemon joins the parts in one
//! answer ([`crate::api::describe`]); this module only lays it out.

use std::fmt::Write as _;
use std::path::Path;

use hyper::{Method, StatusCode};
use serde_json::Value;

use super::{call, refused, table, CliError, Output};
use crate::store::Kind;

/// What `describe` shows.
pub struct DescribeArgs<'a> {
    /// Kind as the user names it (only services for now).
    pub kind: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Format.
    pub output: Output,
}

/// `sluice describe svc NAME`.
///
/// # Errors
/// [`CliError::Kind`] for a kind other than services, the server's
/// NotFound message (naming the Service) for an unknown name.
pub fn describe(socket: &Path, a: &DescribeArgs<'_>) -> Result<(), CliError> {
    match Kind::from_user(a.kind) {
        Some(Kind::Service) => {}
        _ => {
            return Err(CliError::Refused(format!(
                "describe: unknown kind {:?} (describe knows services/svc)",
                a.kind
            )))
        }
    }
    let p = crate::api::describe::path(a.namespace, a.name);
    let (code, v) = call(socket, Method::GET, &p, "application/json", Vec::new())?;
    if code != StatusCode::OK {
        let e = refused(&v, code);
        return Err(match code {
            StatusCode::NOT_FOUND => {
                CliError::Refused(format!("{e} in namespace {:?}", a.namespace))
            }
            _ => e,
        });
    }
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Output::Yaml => print!("{}", serde_norway::to_string(&v).unwrap_or_default()),
        Output::Table | Output::Wide => print!("{}", render(&v)),
    }
    Ok(())
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// `k=v,k=v` of a string map.
fn pairs(v: Option<&Value>) -> String {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn strings(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().or_else(|| x.get("ip").and_then(Value::as_str)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The `Key: value` lines of the Service's spec, as kubectl prints them.
fn spec_lines(svc: &Value) -> Vec<(String, String)> {
    let spec = &svc["spec"];
    let mut out: Vec<(String, String)> = vec![
        ("Name".into(), str_at(svc, "/metadata/name").into()),
        (
            "Namespace".into(),
            str_at(svc, "/metadata/namespace").into(),
        ),
        (
            "Labels".into(),
            or_none(pairs(svc.pointer("/metadata/labels"))),
        ),
        (
            "Type".into(),
            spec["type"].as_str().unwrap_or("ClusterIP").into(),
        ),
        ("Selector".into(), or_none(pairs(spec.get("selector")))),
        ("IP".into(), or_none(str_at(spec, "/clusterIP").into())),
        (
            "External IPs".into(),
            or_none(strings(spec.get("externalIPs"))),
        ),
    ];
    let mut ingress = strings(svc.pointer("/status/loadBalancer/ingress"));
    if ingress.is_empty() {
        ingress = str_at(spec, "/loadBalancerIP").into();
    }
    if !ingress.is_empty() {
        out.push(("LoadBalancer Ingress".into(), ingress));
    }
    for p in spec["ports"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("<unset>");
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        let port = p["port"].to_string();
        out.push(("Port".into(), format!("{name}  {port}/{proto}")));
        let target = match &p["targetPort"] {
            Value::Null => port.clone(),
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        out.push(("TargetPort".into(), format!("{target}/{proto}")));
        if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
            out.push(("NodePort".into(), format!("{name}  {np}/{proto}")));
        }
    }
    out.push((
        "Session Affinity".into(),
        spec["sessionAffinity"].as_str().unwrap_or("None").into(),
    ));
    if let Some(p) = spec["externalTrafficPolicy"].as_str() {
        out.push(("External Traffic Policy".into(), p.into()));
    }
    if let Some(p) = spec["internalTrafficPolicy"].as_str() {
        out.push(("Internal Traffic Policy".into(), p.into()));
    }
    out
}

fn n(v: &Value, k: &str) -> String {
    v[k].as_u64()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

const FIGURES: [(&str, &str); 6] = [
    ("CONNS", "conns"),
    ("INPKTS", "inPackets"),
    ("OUTPKTS", "outPackets"),
    ("INBYTES", "inBytes"),
    ("OUTBYTES", "outBytes"),
    ("ACTIVE", "activeFlows"),
];

fn frontend_name(f: &Value) -> String {
    let a = f["address"].as_str().unwrap_or("?");
    let a = if a.contains(':') {
        format!("[{a}]")
    } else {
        a.to_owned()
    };
    format!(
        "{a}:{}/{}",
        n(f, "port"),
        f["protocol"].as_str().unwrap_or("?")
    )
}

/// The front-end table: one row per VIP:port/proto.
pub fn frontend_rows(d: &Value) -> Vec<Vec<String>> {
    let mut head: Vec<String> = [
        "FRONTEND",
        "SERVICE-PORT",
        "KIND",
        "SCHEDULER",
        "METHOD",
        "MASQUERADE",
        "NO-ENDPOINT",
        "AFFINITY",
    ]
    .map(str::to_owned)
    .to_vec();
    head.extend(FIGURES.iter().map(|(h, _)| (*h).to_owned()));
    let mut out = vec![head];
    for f in d["frontends"].as_array().into_iter().flatten() {
        let port = f["servicePort"].as_str().unwrap_or("");
        let port = port.rsplit_once(':').map_or(port, |(_, p)| p);
        let s = |k: &str| f[k].as_str().unwrap_or("-").to_owned();
        let mut r = vec![
            frontend_name(f),
            port.to_owned(),
            s("kind"),
            s("scheduler"),
            s("method"),
            s("masquerade"),
            s("whenEmpty"),
            f["affinityTimeout"]
                .as_u64()
                .map_or("-".into(), |t| format!("{t}s")),
        ];
        r.extend(FIGURES.iter().map(|(_, k)| n(f, k)));
        out.push(r);
    }
    out
}

/// The endpoint table: one row per backend of each front end.
pub fn endpoint_rows(d: &Value) -> Vec<Vec<String>> {
    let mut head: Vec<String> = ["FRONTEND", "ENDPOINT", "WEIGHT", "STATE", "HEALTH", "LOCAL"]
        .map(str::to_owned)
        .to_vec();
    head.extend(FIGURES.iter().map(|(h, _)| (*h).to_owned()));
    let mut out = vec![head];
    for f in d["frontends"].as_array().into_iter().flatten() {
        let front = frontend_name(f);
        for b in f["backends"].as_array().into_iter().flatten() {
            let a = b["address"].as_str().unwrap_or("?");
            let ep = if a.contains(':') {
                format!("[{a}]:{}", n(b, "port"))
            } else {
                format!("{a}:{}", n(b, "port"))
            };
            let mut r = vec![
                front.clone(),
                ep,
                n(b, "weight"),
                b["state"].as_str().unwrap_or("?").to_owned(),
                b["health"].as_str().unwrap_or("-").to_owned(),
                if b["local"].as_bool() == Some(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
            ];
            r.extend(FIGURES.iter().map(|(_, k)| n(b, k)));
            out.push(r);
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// The whole description for people.
pub fn render(d: &Value) -> String {
    let mut out = String::new();
    let lines = spec_lines(&d["service"]);
    let w = lines.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    for (k, v) in &lines {
        let _ = writeln!(out, "{:<w$}  {v}", format!("{k}:"));
    }
    let fronts = d["frontends"].as_array().map_or(0, Vec::len);
    out.push('\n');
    if fronts == 0 {
        out.push_str("Front ends:  <none> (headless, ExternalName, or not compiled)\n");
        return out;
    }
    out.push_str("Front ends:\n");
    out.push_str(&indent(&table::render(&frontend_rows(d))));
    out.push('\n');
    let eps = endpoint_rows(d);
    if eps.len() == 1 {
        out.push_str("Endpoints:  <none>\n");
    } else {
        out.push_str("Endpoints:\n");
        out.push_str(&indent(&table::render(&eps)));
    }
    for f in d["frontends"].as_array().into_iter().flatten() {
        for b in f["backends"].as_array().into_iter().flatten() {
            if let Some(e) = b["healthError"].as_str() {
                let _ = writeln!(
                    out,
                    "  {}: last probe failed: {e}",
                    b["address"].as_str().unwrap_or("?")
                );
            }
        }
    }
    if d["counters"].as_bool() == Some(false) {
        out.push_str("Counters:  <none> (no data path running)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn description() -> Value {
        json!({
            "counters": true,
            "service": {"metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
                "spec": {"type": "NodePort", "clusterIP": "198.18.100.10", "selector": {"app": "web"},
                    "externalTrafficPolicy": "Cluster",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080}]}},
            "frontends": [
                {"servicePort": "default/web:http", "address": "198.18.100.10", "port": 80, "protocol": "TCP",
                 "kind": "ClusterIP", "scheduler": "rr", "method": "nat", "masquerade": "off-cluster",
                 "whenEmpty": "reject", "conns": 7, "inPackets": 70, "outPackets": 60, "inBytes": 7000,
                 "outBytes": 9000, "activeFlows": 1,
                 "backends": [
                    {"address": "198.18.1.11", "port": 8080, "weight": 3, "state": "ready", "local": true,
                     "health": "up", "conns": 5, "inPackets": 50, "outPackets": 40, "inBytes": 5000, "outBytes": 6000, "activeFlows": 1},
                    {"address": "198.18.1.12", "port": 8080, "weight": 0, "state": "terminating", "local": false,
                     "health": "down", "healthError": "connection refused", "conns": 2, "inPackets": 20,
                     "outPackets": 20, "inBytes": 2000, "outBytes": 3000, "activeFlows": 0}]},
                {"servicePort": "default/web:http", "address": "198.18.0.2", "port": 30080, "protocol": "TCP",
                 "kind": "NodePort", "scheduler": "rr", "method": "nat", "masquerade": "always",
                 "whenEmpty": "reject", "affinityTimeout": 10800, "backends": []}]
        })
    }

    #[test]
    fn spec_lines_are_aligned_like_kubectl() {
        let out = render(&description());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Name:                     web");
        assert!(
            out.contains("\nType:                     NodePort\n"),
            "{out}"
        );
        assert!(
            out.contains("\nSelector:                 app=web\n"),
            "{out}"
        );
        assert!(
            out.contains("\nPort:                     http  80/TCP\n"),
            "{out}"
        );
        assert!(
            out.contains("\nTargetPort:               8080/TCP\n"),
            "{out}"
        );
        assert!(
            out.contains("\nNodePort:                 http  30080/TCP\n"),
            "{out}"
        );
        assert!(
            out.contains("\nExternal Traffic Policy:  Cluster\n"),
            "{out}"
        );
    }

    #[test]
    fn a_row_per_frontend_with_scheduler_method_policy_and_counters() {
        let r = frontend_rows(&description());
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[1],
            [
                "198.18.100.10:80/TCP",
                "http",
                "ClusterIP",
                "rr",
                "nat",
                "off-cluster",
                "reject",
                "-",
                "7",
                "70",
                "60",
                "7000",
                "9000",
                "1"
            ]
        );
        assert_eq!(r[2][0], "198.18.0.2:30080/TCP");
        assert_eq!(r[2][5], "always");
        assert_eq!(r[2][7], "10800s");
        // No counters for that front end: a dash, not a made-up zero.
        assert_eq!(r[2][8], "-");
    }

    #[test]
    fn a_row_per_endpoint_with_weight_state_health_and_local() {
        let r = endpoint_rows(&description());
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[1][..8],
            [
                "198.18.100.10:80/TCP",
                "198.18.1.11:8080",
                "3",
                "ready",
                "up",
                "yes",
                "5",
                "50"
            ]
        );
        assert_eq!(r[2][2..6], ["0", "terminating", "down", "no"]);
        let out = render(&description());
        assert!(
            out.contains("198.18.1.12: last probe failed: connection refused"),
            "{out}"
        );
    }

    #[test]
    fn tables_are_aligned_columns() {
        let out = render(&description());
        let head = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("ENDPOINT"))
            .expect("endpoint header");
        let row = out
            .lines()
            .find(|l| l.contains("198.18.1.11:8080"))
            .expect("endpoint row");
        assert_eq!(head.find("WEIGHT"), row.find("3   "), "{out}");
    }
}
