//! The running state behind `ipvsadm -Lnc`, `--set`, `-L --timeout` and
//! `-Z`, read from (and, for timeouts, written to) the data path's shared
//! tables off the packet path:
//!
//! * `GET /apis/sluice.dev/v1/ipvs/connections?limit=N`: the live flows
//!   of the flow table (a snapshot walk: each entry consistent, the set
//!   not), then the persistence templates ([`templates`]: the live entries
//!   of the affinity table), at most `limit` in all (default
//!   [`DEFAULT_LIMIT`]), with `truncated` saying whether more were left out
//!   and `total` how many were seen.
//! * `GET|PUT /apis/sluice.dev/v1/ipvs/timeouts`: `{tcp, tcpfin, udp}` in
//!   seconds, IPVS's three `--set` values (ESTABLISHED, FIN_WAIT, UDP); a
//!   0 leaves that one unchanged. They apply at once to held flows too.
//! * `POST /apis/sluice.dev/v1/ipvs/zero`: `{}` or `{protocol, addr,
//!   port}`: zeroes the ipvsadm view's counters by recording a baseline
//!   ([`crate::stats::Stats::zero`]); `sluice stats` and /metrics are
//!   monotonic and unaffected.

use std::net::IpAddr;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;

use sluice_dataplane::affinity::{AffinityEntry, AffinityTable};
use sluice_dataplane::flow_table::{FlowEntry, FlowState, Timeouts};
use sluice_dataplane::pipeline::{is_dr_flow, Snapshot};
use sluice_dataplane::service::{Service, VipKey};
use sluice_dataplane::types::Addr;

use super::status::Status;
use super::AppState;
use crate::stats::Stats;

/// Entries listed when the request names no limit.
pub const DEFAULT_LIMIT: usize = 100_000;
/// The most entries one request lists.
pub const MAX_LIMIT: usize = 10_000_000;
/// The longest timeout `--set` takes (ipvsadm's own limit, 31 days).
pub const MAX_TIMEOUT: u32 = 2_678_400;

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
}

/// One connection entry as `ipvsadm -Lnc` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsConn {
    /// IP protocol number.
    pub protocol: u8,
    /// Seconds until it expires if idle.
    pub expires: u32,
    /// IPVS's state name (`ESTABLISHED`, `SYN_RECV`, `UDP`, ...).
    pub state: String,
    /// The client.
    pub client: End,
    /// The virtual service it came to.
    pub virt: End,
    /// The real server it goes to.
    pub dest: End,
    /// A persistence template (state `NONE`, client port 0), not a flow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
}

/// The connections answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsConnList {
    /// The entries, at most the limit.
    pub items: Vec<IpvsConn>,
    /// Live entries seen in the walk.
    pub total: usize,
    /// Whether entries were left out for the limit.
    pub truncated: bool,
}

/// `ipvsadm --set` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsTimeouts {
    /// ESTABLISHED TCP.
    pub tcp: u32,
    /// FIN_WAIT (Sluice: every closing TCP state).
    pub tcpfin: u32,
    /// UDP.
    pub udp: u32,
}

/// A `-Z` request: one front end, or every one when empty.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ZeroBody {
    /// Protocol number.
    pub protocol: Option<u8>,
    /// Address.
    pub addr: Option<IpAddr>,
    /// Port.
    pub port: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct ConnQuery {
    limit: Option<usize>,
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/apis/sluice.dev/v1/ipvs/connections", get(connections))
        .route(
            "/apis/sluice.dev/v1/ipvs/timeouts",
            get(get_timeouts).put(put_timeouts),
        )
        .route("/apis/sluice.dev/v1/ipvs/zero", post(zero))
}

/// The name IPVS gives the state. The flow table's view is the LB's, as
/// IPVS's is: after the client's SYN IPVS is in SYN_RECV (it received a
/// SYN), and stays there through the server's SYN+ACK, so both of the
/// table's handshake states are SYN_RECV (`tcp_states` in ip_vs_proto_tcp.c).
pub fn state_name(s: FlowState) -> &'static str {
    match s {
        FlowState::SynSent | FlowState::SynRecv => "SYN_RECV",
        other => other.as_str(),
    }
}

/// One flow as IPVS lists it: client, virtual service, real server. A NAT
/// or FULLNAT flow names its real server in its reply key; a direct-routing
/// or tunnel flow (client ↔ VIP both ways) by its backend's stable id in
/// the service in service now (an id no backend holds any more: listed
/// with the VIP as destination).
pub fn conn_of(snap: &Snapshot, e: &FlowEntry, state: FlowState, expires: u32) -> IpvsConn {
    let end = |a: Addr, port: u16| End {
        addr: a.to_ip(),
        port,
    };
    let vip = VipKey {
        addr: e.original.dst,
        port: e.original.dport,
        proto: e.original.proto,
    };
    let dest = if is_dr_flow(e) {
        snap.services
            .lookup(&vip)
            .and_then(|(_, s)| {
                let pos = s.backend_position(e.backend)?;
                s.spec.backends.get(pos)
            })
            .map(|b| end(b.addr, b.port))
            .unwrap_or_else(|| end(vip.addr, vip.port))
    } else {
        end(e.reply.src, e.reply.sport)
    };
    IpvsConn {
        protocol: e.original.proto,
        expires,
        state: state_name(state).to_owned(),
        client: end(e.original.src, e.original.sport),
        virt: end(vip.addr, vip.port),
        dest,
        template: false,
    }
}

/// The kernel's persistent FTP port: its templates carry no ports.
const FTP_PORT: u16 = 21;

/// The template IPVS would hold for affinity entry `e` of front end `s`
/// and its backend `i`, `now` on the affinity table's clock, for a
/// service kept `timeout` seconds. `ip_vs_sched_persist` (ip_vs_core.c)
/// keys a template `<protocol, caddr & netmask, 0, vaddr, vport, daddr,
/// dport>` (an FTP service: vport and dport 0); its state is NONE
/// (`ip_vs_ctpl_state_name_table`) and its timer the persistence timeout,
/// re-armed by each new connection it sends.
fn template_of(s: &Service, i: usize, e: &AffinityEntry, timeout: u32, now: u32) -> IpvsConn {
    let vip = &s.spec.vip;
    let b = &s.spec.backends[i];
    let ftp = vip.port == FTP_PORT;
    let port = |p: u16| if ftp { 0 } else { p };
    IpvsConn {
        protocol: vip.proto,
        expires: timeout.saturating_sub(now.wrapping_sub(e.last_seen)),
        state: "NONE".to_owned(),
        client: End {
            addr: e.client.to_ip(),
            port: 0,
        },
        virt: End {
            addr: vip.addr.to_ip(),
            port: port(vip.port),
        },
        dest: End {
            addr: b.addr.to_ip(),
            port: port(b.port),
        },
        template: true,
    }
}

/// Every persistence template: each live affinity entry once per front
/// end of its service (Sluice's entry is shared by a Service port's front
/// ends, where IPVS would keep one template per virtual service), for the
/// backends still in the service. `f` gets the front end and the row.
pub fn templates(
    snap: &Snapshot,
    affinity: &AffinityTable,
    now: u32,
    mut f: impl FnMut(&Service, IpvsConn),
) {
    let mut by_id: HashMap<u64, Vec<&Service>> = HashMap::new();
    for s in snap.services.services() {
        if s.spec.affinity_timeout.is_some() {
            by_id.entry(s.affinity_id).or_default().push(s);
        }
    }
    if by_id.is_empty() {
        return;
    }
    let timeout = |id: u64| by_id.get(&id)?.first()?.spec.affinity_timeout;
    let mut found = Vec::new();
    affinity.for_each(now, timeout, |e| found.push(e));
    for e in found {
        for s in by_id.get(&e.service).into_iter().flatten() {
            let Some(i) = s.backend_hashes.iter().position(|h| *h == e.backend) else {
                continue;
            };
            let t = s.spec.affinity_timeout.unwrap_or(0);
            f(s, template_of(s, i, &e, t, now));
        }
    }
}

/// Templates per front end and real server: `-L --persistent-conn`'s
/// PersistConn (the kernel counts a template in its server's
/// `persistconns`, not in ActiveConn or InActConn: `ip_vs_bind_dest`).
pub fn template_counts(stats: &Stats) -> HashMap<(VipKey, IpAddr, u16), u32> {
    let shared = stats.shared();
    let snap = shared.snapshot.load_full();
    let mut out = HashMap::new();
    templates(&snap, &shared.affinity, shared.now(), |s, c| {
        let b = &c.dest;
        *out.entry((s.spec.vip, b.addr, b.port)).or_insert(0) += 1;
    });
    out
}

/// Live flows per front end and the address the reply goes to: for a
/// FULLNAT flow, the local address it was translated to (`-G`'s CONNS).
pub fn reply_addr_counts(stats: &Stats) -> HashMap<(VipKey, IpAddr), u32> {
    let mut out = HashMap::new();
    stats.shared().flows.for_each(|e, _, _| {
        if is_dr_flow(e) {
            return;
        }
        let vip = VipKey {
            addr: e.original.dst,
            port: e.original.dport,
            proto: e.original.proto,
        };
        *out.entry((vip, e.reply.dst.to_ip())).or_insert(0) += 1;
    });
    out
}

/// Walks the flow table: at most `limit` entries.
pub fn list(stats: &Stats, limit: usize) -> IpvsConnList {
    let shared = stats.shared();
    let snap = shared.snapshot.load_full();
    let mut out = IpvsConnList::default();
    shared.flows.for_each(|e, st, left| {
        out.total += 1;
        if out.items.len() < limit {
            out.items.push(conn_of(&snap, e, st, left));
        } else {
            out.truncated = true;
        }
    });
    templates(&snap, &shared.affinity, shared.now(), |_, c| {
        out.total += 1;
        if out.items.len() < limit {
            out.items.push(c);
        } else {
            out.truncated = true;
        }
    });
    out
}

/// `--set tcp tcpfin udp` on top of `t` (0 keeps a value).
pub fn apply_set(t: Timeouts, s: IpvsTimeouts) -> Timeouts {
    let pick = |new: u32, old: u32| if new == 0 { old } else { new };
    Timeouts {
        tcp_established: pick(s.tcp, t.tcp_established),
        tcp_fin_wait: pick(s.tcpfin, t.tcp_fin_wait),
        udp: pick(s.udp, t.udp),
        ..t
    }
}

fn view_of(t: Timeouts) -> IpvsTimeouts {
    IpvsTimeouts {
        tcp: t.tcp_established,
        tcpfin: t.tcp_fin_wait,
        udp: t.udp,
    }
}

fn no_data_path() -> Response {
    Status::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "no data path to report on".into(),
    )
    .into_response()
}

/// The traffic totals, if a data path runs.
fn stats_of(s: &AppState) -> Option<Stats> {
    let mut r = s.rec.lock().unwrap_or_else(|p| p.into_inner());
    r.publisher().stats().cloned()
}

async fn connections(State(s): State<AppState>, Query(q): Query<ConnQuery>) -> Response {
    let Some(stats) = stats_of(&s) else {
        return no_data_path();
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    match tokio::task::spawn_blocking(move || list(&stats, limit)).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => Status::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
        .into_response(),
    }
}

async fn get_timeouts(State(s): State<AppState>) -> Response {
    match stats_of(&s) {
        Some(st) => Json(view_of(st.shared().flows.timeouts())).into_response(),
        None => no_data_path(),
    }
}

async fn put_timeouts(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let t: IpvsTimeouts = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => return Status::bad_request(format!("not timeouts: {e}")).into_response(),
    };
    if let Some((name, v)) = [("tcp", t.tcp), ("tcpfin", t.tcpfin), ("udp", t.udp)]
        .into_iter()
        .find(|(_, v)| *v > MAX_TIMEOUT)
    {
        return Status::bad_request(format!(
            "timeout {name} = {v} s is over the largest, {MAX_TIMEOUT} s"
        ))
        .into_response();
    }
    let Some(st) = stats_of(&s) else {
        return no_data_path();
    };
    let flows = &st.shared().flows;
    flows.set_timeouts(apply_set(flows.timeouts(), t));
    Json(view_of(flows.timeouts())).into_response()
}

async fn zero(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let z: ZeroBody = if body.is_empty() {
        ZeroBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(z) => z,
            Err(e) => {
                return Status::bad_request(format!("not a zero request: {e}")).into_response()
            }
        }
    };
    let vip = match (z.protocol, z.addr, z.port) {
        (None, None, None) => None,
        (Some(proto), Some(addr), Some(port)) => Some(VipKey {
            addr: addr.into(),
            port,
            proto,
        }),
        _ => {
            return Status::bad_request("a service needs protocol, addr and port".into())
                .into_response()
        }
    };
    let Some(st) = stats_of(&s) else {
        return no_data_path();
    };
    match tokio::task::spawn_blocking(move || st.zero(vip)).await {
        Ok(true) => {
            Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})).into_response()
        }
        Ok(false) => {
            Status::new(StatusCode::NOT_FOUND, "NotFound", "No such service".into()).into_response()
        }
        Err(e) => Status::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataplane::types::{proto, FlowKey, L2Hop};

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        FlowKey {
            src: Addr::from_v4(src),
            dst: Addr::from_v4(dst),
            sport,
            dport,
            proto: proto::TCP,
        }
    }

    #[test]
    fn a_nat_flow_names_its_real_server_from_the_reply_key() {
        let e = FlowEntry {
            original: key([198, 18, 0, 2], 40000, [198, 18, 100, 20], 80),
            reply: key([198, 18, 1, 11], 8080, [198, 18, 0, 2], 40000),
            orig_hop: L2Hop::default(),
            reply_hop: L2Hop::default(),
            service: 0,
            backend: 0,
        };
        let c = conn_of(&Snapshot::default(), &e, FlowState::SynSent, 59);
        assert_eq!(c.state, "SYN_RECV");
        assert_eq!(c.client.addr.to_string(), "198.18.0.2");
        assert_eq!((c.virt.port, c.dest.port), (80, 8080));
        assert_eq!(c.dest.addr.to_string(), "198.18.1.11");
    }

    #[test]
    fn templates_follow_the_affinity_table() {
        use sluice_dataplane::affinity::masked_client;
        use sluice_dataplane::service::{BackendSpec, ServiceSpec, ServiceTable};
        let spec = |port: u16, timeout: Option<u32>| ServiceSpec {
            name: format!("VirtualService ipvs/p{port}"),
            vip: VipKey {
                addr: Addr::from_v4([198, 18, 100, 20]),
                port,
                proto: proto::TCP,
            },
            backends: vec![
                BackendSpec {
                    addr: Addr::from_v4([198, 18, 1, 11]),
                    port: 8080,
                    weight: 1,
                    ..Default::default()
                },
                BackendSpec {
                    addr: Addr::from_v4([198, 18, 1, 12]),
                    port: 8080,
                    weight: 1,
                    ..Default::default()
                },
            ],
            affinity_timeout: timeout,
            affinity_prefix: Some(24),
            ..Default::default()
        };
        let table = ServiceTable::build(
            1,
            vec![spec(80, Some(300)), spec(21, Some(60)), spec(81, None)],
        )
        .unwrap();
        let snap = Snapshot {
            services: table,
            ..Snapshot::default()
        };
        let aff = AffinityTable::new(64);
        let client = masked_client(&Addr::from_v4([198, 18, 0, 2]), Some(24));
        for s in snap.services.services() {
            aff.record(&client, s.affinity_id, s.backend_hashes[1], 100);
        }
        let mut rows = Vec::new();
        templates(&snap, &aff, 110, |_, c| rows.push(c));
        rows.sort_by_key(|c| c.virt.port);
        let text: Vec<String> = rows
            .iter()
            .map(|c| {
                format!(
                    "{} {} {}:{} {}:{} {}:{} {}",
                    c.protocol,
                    c.state,
                    c.client.addr,
                    c.client.port,
                    c.virt.addr,
                    c.virt.port,
                    c.dest.addr,
                    c.dest.port,
                    c.expires
                )
            })
            .collect();
        // The masked client, port 0; FTP's template has no ports; the
        // service without persistence has none.
        assert_eq!(
            text,
            [
                "6 NONE 198.18.0.0:0 198.18.100.20:0 198.18.1.12:0 50",
                "6 NONE 198.18.0.0:0 198.18.100.20:80 198.18.1.12:8080 290",
            ]
        );
        assert!(rows.iter().all(|c| c.template));
        // Expired (idle past the timeout): gone.
        let mut n = 0;
        templates(&snap, &aff, 401, |_, _| n += 1);
        assert_eq!(n, 0);
    }

    #[test]
    fn set_keeps_what_is_zero() {
        let t = apply_set(
            Timeouts::default(),
            IpvsTimeouts {
                tcp: 0,
                tcpfin: 30,
                udp: 0,
            },
        );
        assert_eq!(
            view_of(t),
            IpvsTimeouts {
                tcp: 900,
                tcpfin: 30,
                udp: 300
            }
        );
        assert_eq!(t.tcp_syn_recv, Timeouts::default().tcp_syn_recv);
    }
}
