//! `sluice stats`: the per-service and per-backend figures of the stats
//! route ([`crate::stats::Report`]) as an aligned table, or its JSON.

use std::path::Path;

use hyper::{Method, StatusCode};
use serde_json::Value;

use super::{call, refused, table, CliError, Output};

/// The table rows of a stats report: one per service port, then one per
/// backend under it.
pub fn rows(report: &Value) -> Vec<Vec<String>> {
    let head = [
        "SERVICE", "FRONTEND", "BACKEND", "WEIGHT", "CONNS", "INPKTS", "OUTPKTS", "INBYTES",
        "OUTBYTES", "ACTIVE",
    ];
    let mut out = vec![head.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0).to_string();
    let figures = |v: &Value| {
        [
            "conns",
            "inPackets",
            "outPackets",
            "inBytes",
            "outBytes",
            "activeFlows",
        ]
        .iter()
        .map(|k| n(v, k))
        .collect::<Vec<_>>()
    };
    for s in report["services"].as_array().into_iter().flatten() {
        let front = format!(
            "{}/{}:{}",
            s["protocol"].as_str().unwrap_or("?"),
            s["address"].as_str().unwrap_or("?"),
            n(s, "port")
        );
        let mut r = vec![
            s["name"].as_str().unwrap_or("").to_owned(),
            front,
            "-".into(),
            "-".into(),
        ];
        r.extend(figures(s));
        out.push(r);
        for b in s["backends"].as_array().into_iter().flatten() {
            let mut r = vec![
                String::new(),
                String::new(),
                format!("{}:{}", b["address"].as_str().unwrap_or("?"), n(b, "port")),
                n(b, "weight"),
            ];
            r.extend(figures(b));
            out.push(r);
        }
    }
    out
}

/// The table rows of the workers' part of a stats report: one per worker,
/// with its frames, the flows it created and, of those, the ones it
/// picked up mid-flow (a connection another host of a tier carried:
/// `flows_picked_up`), and the stray segments it reset.
pub fn worker_rows(report: &Value) -> Vec<Vec<String>> {
    let head = ["WORKER", "RX", "TX", "NEWFLOWS", "PICKEDUP", "RESETS"];
    let mut out = vec![head.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for w in report["workers"].as_array().into_iter().flatten() {
        let c = |k: &str| w["counters"][k].as_u64().unwrap_or(0).to_string();
        out.push(vec![
            w["worker"].as_u64().unwrap_or(0).to_string(),
            c("rx"),
            c("tx"),
            c("new_flows"),
            c("flows_picked_up"),
            c("resets"),
        ]);
    }
    out
}

/// Prints the running sluice's stats.
///
/// # Errors
/// [`CliError`] when the API cannot be reached or refuses.
pub fn stats(socket: &Path, output: Output) -> Result<(), CliError> {
    let (code, v) = call(
        socket,
        Method::GET,
        crate::api::STATS_PATH,
        "application/json",
        Vec::new(),
    )?;
    if code != StatusCode::OK {
        return Err(refused(&v, code));
    }
    match output {
        Output::Json | Output::Yaml => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
        }
        Output::Table | Output::Wide => {
            print!("{}", table::render(&rows(&v)));
            println!();
            print!("{}", table::render(&worker_rows(&v)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_per_service_and_per_backend() {
        let v = serde_json::json!({"services": [{"name": "default/web:http", "address": "198.18.100.10",
            "port": 80, "protocol": "TCP", "conns": 3, "inPackets": 10, "outPackets": 8,
            "inBytes": 700, "outBytes": 900, "activeFlows": 1,
            "backends": [{"address": "198.18.1.11", "port": 8080, "weight": 1, "conns": 3,
                "inPackets": 10, "outPackets": 8, "inBytes": 700, "outBytes": 900, "activeFlows": 1}]}]});
        let r = rows(&v);
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[1][..5],
            ["default/web:http", "TCP/198.18.100.10:80", "-", "-", "3"]
        );
        assert_eq!(r[2][2], "198.18.1.11:8080");
        assert_eq!(r[2][9], "1");
    }

    #[test]
    fn a_row_per_worker_with_its_picked_up_flows() {
        let v = serde_json::json!({"services": [], "workers": [
            {"worker": 0, "counters": {"rx": 9, "tx": 8, "new_flows": 5, "flows_picked_up": 2, "resets": 1}},
            {"worker": 1, "counters": {"rx": 1}}]});
        let r = worker_rows(&v);
        assert_eq!(r[0][4], "PICKEDUP");
        assert_eq!(r[1], ["0", "9", "8", "5", "2", "1"]);
        assert_eq!(r[2], ["1", "1", "0", "0", "0", "0"]);
    }
}
