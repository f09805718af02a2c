//! kubectl-style aligned tables for people.

use std::time::SystemTime;

use serde_json::Value;

use crate::store::Kind;

/// Columns separated by three spaces, each as wide as its widest cell.
pub fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `5s`, `3m`, `2h`, `4d` since the object's `creationTimestamp`.
pub fn age(obj: &Value, now: SystemTime) -> String {
    let Some(t) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339(t).ok())
    else {
        return "<unknown>".into();
    };
    let s = now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// The header and one row per object of `kind`; `wide` adds columns.
pub fn rows(kind: Kind, items: &[Value], wide: bool, namespaces: bool) -> Vec<Vec<String>> {
    let now = SystemTime::now();
    let mut header: Vec<&str> = match kind {
        Kind::Service => vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ],
        Kind::EndpointSlice => vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        Kind::Endpoints => vec!["NAME", "ENDPOINTS", "AGE"],
        Kind::Pod => vec!["NAME", "IP", "NODE", "AGE"],
        Kind::VirtualService => vec![
            "NAME",
            "PROTOCOL",
            "ADDRESS",
            "SCHEDULER",
            "REAL-SERVERS",
            "AGE",
        ],
    };
    if wide && kind == Kind::Service {
        header.push("SELECTOR");
    }
    if namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut out = vec![header.into_iter().map(str::to_owned).collect::<Vec<_>>()];
    for o in items {
        let mut r = vec![str_at(o, "/metadata/name").to_owned()];
        match kind {
            Kind::Service => {
                let ports = o
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let mut s = p["port"].to_string();
                        if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                            s.push_str(&format!(":{np}"));
                        }
                        format!("{s}/{}", p["protocol"].as_str().unwrap_or("TCP"))
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let ext = o
                    .pointer("/spec/externalIPs")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let ty = str_at(o, "/spec/type");
                r.push(if ty.is_empty() { "ClusterIP" } else { ty }.to_owned());
                r.push(none_if_empty(str_at(o, "/spec/clusterIP").to_owned()));
                r.push(none_if_empty(ext));
                r.push(none_if_empty(ports));
                r.push(age(o, now));
                if wide {
                    let sel = o
                        .pointer("/spec/selector")
                        .and_then(Value::as_object)
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    r.push(none_if_empty(sel));
                }
            }
            Kind::EndpointSlice => {
                let ports = o
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| p["port"].to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let eps = o
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.pointer("/addresses/0").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(",");
                r.push(str_at(o, "/addressType").to_owned());
                r.push(none_if_empty(ports));
                r.push(none_if_empty(eps));
                r.push(age(o, now));
            }
            Kind::Endpoints => {
                let eps = o
                    .get("subsets")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .flat_map(|s| {
                        let port = s.pointer("/ports/0/port").map(|p| p.to_string());
                        s.get("addresses")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(move |a| {
                                let ip = a.get("ip")?.as_str()?;
                                Some(match &port {
                                    Some(p) => format!("{ip}:{p}"),
                                    None => ip.to_owned(),
                                })
                            })
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                r.push(none_if_empty(eps));
                r.push(age(o, now));
            }
            Kind::Pod => {
                r.push(none_if_empty(str_at(o, "/status/podIP").to_owned()));
                r.push(none_if_empty(str_at(o, "/spec/nodeName").to_owned()));
                r.push(age(o, now));
            }
            Kind::VirtualService => virtual_service_row(o, &mut r, now),
        }
        if namespaces {
            r.insert(0, str_at(o, "/metadata/namespace").to_owned());
        }
        out.push(r);
    }
    out
}

/// PROTOCOL, ADDRESS (`addr:port` or `fwmark N`), SCHEDULER, REAL-SERVERS, AGE.
fn virtual_service_row(o: &Value, r: &mut Vec<String>, now: SystemTime) {
    let spec = o.get("spec").unwrap_or(&Value::Null);
    let addr = match (spec.get("fwmark"), str_at(o, "/spec/address")) {
        (Some(m), _) => format!("fwmark {m}"),
        (None, a) if a.contains(':') => format!("[{a}]:{}", spec["port"]),
        (None, a) => format!("{a}:{}", spec["port"]),
    };
    let proto = str_at(o, "/spec/protocol");
    r.push(if proto.is_empty() { "TCP" } else { proto }.to_owned());
    r.push(addr);
    let sched = str_at(o, "/spec/scheduler");
    r.push(if sched.is_empty() { "wlc" } else { sched }.to_owned());
    let servers = spec
        .get("realServers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|rs| rs.get("address")?.as_str())
        .collect::<Vec<_>>()
        .join(",");
    r.push(none_if_empty(servers));
    r.push(age(o, now));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = render(&[
            vec!["NAME".into(), "TYPE".into(), "AGE".into()],
            vec!["web-frontend".into(), "ClusterIP".into(), "5s".into()],
        ]);
        assert_eq!(
            t,
            "NAME           TYPE        AGE\nweb-frontend   ClusterIP   5s\n"
        );
    }

    #[test]
    fn ages() {
        let obj = |t: &str| serde_json::json!({"metadata": {"creationTimestamp": t}});
        let now = humantime::parse_rfc3339("2026-01-02T00:00:00Z").unwrap();
        assert_eq!(age(&obj("2026-01-01T23:59:55Z"), now), "5s");
        assert_eq!(age(&obj("2026-01-01T23:50:00Z"), now), "10m");
        assert_eq!(age(&obj("2026-01-01T00:00:00Z"), now), "24h");
        assert_eq!(age(&obj("2025-12-20T00:00:00Z"), now), "13d");
        assert_eq!(age(&serde_json::json!({}), now), "<unknown>");
    }
}
