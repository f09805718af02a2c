//! The running state behind `ipvsadm -Lnc`, `--set`, `-L --timeout` and
//! `-Z`, read from (and, for timeouts, written to) the data path's shared
//! tables off the packet path:
//!
//! * `GET /apis/sluice.dev/v1/ipvs/connections?limit=N`: the live flows
//!   of the flow table (a snapshot walk: each entry consistent, the set
//!   not), at most `limit` (default [`DEFAULT_LIMIT`]), with `truncated`
//!   saying whether more were left out and `total` how many were seen.
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
use sluice_dataplane::flow_table::{FlowEntry, FlowState, Timeouts};
use sluice_dataplane::pipeline::{is_dr_flow, Snapshot};
use sluice_dataplane::service::VipKey;
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
    }
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
