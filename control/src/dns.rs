//! Authoritative DNS for the cluster domain, after the Kubernetes DNS-based
//! service discovery specification (`<svc>.<ns>.svc.<domain>`).
//!
//! A [`DnsZone`] is built from the [`DnsService`]s the config compiler
//! produces, off the serving threads, and is immutable. [`answer`] turns
//! query bytes into response bytes and is pure, so it can be tested and
//! fuzzed without sockets. [`DnsServer`] serves a zone over UDP and TCP on
//! one address (one thread each, plus one short-lived thread per TCP
//! connection) and swaps zones atomically with [`DnsServer::update`].
//!
//! Record rules (TTL [`DEFAULT_TTL`] unless [`DnsZone::with_ttl`] says
//! otherwise; names are matched case-insensitively):
//!
//! | name | records |
//! | --- | --- |
//! | `<svc>.<ns>.svc.<domain>` (ClusterIP) | A/AAAA → the cluster IPs |
//! | `<svc>.<ns>.svc.<domain>` (headless) | A/AAAA → every ready endpoint |
//! | `<a-b-c-d>.<svc>.<ns>.svc.<domain>` (headless) | A/AAAA → that endpoint (IPv6: `fd00--1`) |
//! | `<svc>.<ns>.svc.<domain>` (ExternalName) | CNAME → the target, for every type; an in-zone target is followed |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<domain>` (ClusterIP) | SRV 0 100 port `<svc>.<ns>.svc.<domain>.`, A/AAAA in additional |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<domain>` (headless) | SRV 0 100 port `<a-b-c-d>.<svc>.<ns>.svc.<domain>.` per endpoint, A/AAAA in additional |
//! | `<domain>` | SOA |
//! | `dns-version.<domain>` | TXT `"1.1.0"` |
//!
//! A name that exists but has no record of the asked type gets NOERROR with
//! an empty answer and the SOA in authority (NODATA); so do the empty
//! non-terminals (`<ns>.svc.<domain>`, `svc.<domain>`, `_<proto>.…`). An
//! unknown name inside the domain gets NXDOMAIN with the SOA in authority;
//! a name outside it REFUSED. Opcodes other than QUERY get NOTIMP, zone
//! transfers REFUSED. An EDNS OPT in the query is answered with one (our
//! payload size [`EDNS_PAYLOAD`], no options; version > 0 → BADVERS). UDP
//! responses larger than 512 bytes (or the client's EDNS payload size, at
//! most [`EDNS_PAYLOAD`]) first lose their additional section, then are
//! sent with TC and no records, so the client retries over TCP.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Label, Name, RData, Record, RecordType};

use crate::model::DnsService;

/// The cluster domain when none is configured.
pub const DEFAULT_DOMAIN: &str = "cluster.local";
/// The TTL of every record (and the SOA minimum) when none is configured.
pub const DEFAULT_TTL: u32 = 5;
/// The UDP payload size advertised in EDNS responses and the most a UDP
/// response may carry (the DNS flag day 2020 value, which avoids IP
/// fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;
/// The UDP response limit without EDNS (RFC 1035).
const PLAIN_UDP_LIMIT: usize = 512;
/// How many in-zone CNAMEs an answer follows.
const MAX_CNAME_CHAIN: usize = 8;
/// The schema version the Kubernetes DNS specification asks for in
/// `dns-version.<domain>`.
const SCHEMA_VERSION: &str = "1.1.0";
/// How often serving threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// A TCP connection is closed after this long without a complete query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Writes of TCP responses give up after this long.
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many TCP connections are served at once; more are closed.
const MAX_TCP_CONNS: usize = 64;

/// Why a zone could not be built or a server not started.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The cluster domain is not a valid DNS name.
    #[error("invalid cluster domain {domain:?}: {reason}")]
    InvalidDomain {
        /// The domain as given.
        domain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A namespace, service name, port name or ExternalName target is not
    /// usable in a DNS name.
    #[error("service {namespace}/{name}: invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// The service's namespace.
        namespace: String,
        /// The service's name.
        name: String,
        /// Which part is invalid (`namespace`, `name`, `port name`, `target`).
        what: &'static str,
        /// The invalid value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two services have the same namespace and name.
    #[error("service {namespace}/{name} is given more than once")]
    Duplicate {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A socket could not be bound.
    #[error("cannot bind DNS {proto} socket on {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A bound socket could not be set up.
    #[error("cannot set up DNS socket on {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A serving thread could not be started.
    #[error("cannot start the DNS {what} thread: {source}")]
    Spawn {
        /// `udp` or `tcp`.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// The records at one name.
#[derive(Debug, Default, Clone)]
struct Node {
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
    cname: Option<Name>,
    srv: Vec<SRV>,
    txt: Option<TXT>,
}

impl Node {
    fn push_ip(&mut self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) if !self.a.contains(&v4) => {
                self.a.push(v4);
                true
            }
            IpAddr::V6(v6) if !self.aaaa.contains(&v6) => {
                self.aaaa.push(v6);
                true
            }
            _ => false,
        }
    }
}

/// The immutable contents of the cluster domain: every name the server
/// answers for and its records.
#[derive(Debug, Clone)]
pub struct DnsZone {
    origin: Name,
    ttl: u32,
    soa: SOA,
    /// Every existing name, including the apex and the empty non-terminals
    /// (as empty nodes). `Name`'s `Eq`/`Hash` ignore ASCII case.
    nodes: HashMap<Name, Node>,
    /// Records derived from services.
    records: usize,
}

impl DnsZone {
    /// The zone for `domain` (e.g. `cluster.local`, a trailing dot is
    /// allowed) holding `services`, with TTL [`DEFAULT_TTL`].
    pub fn new<S: Borrow<DnsService>>(domain: &str, services: &[S]) -> Result<DnsZone, DnsError> {
        DnsZone::with_ttl(domain, services, DEFAULT_TTL)
    }

    /// Like [`DnsZone::new`] with the TTL of every record (also the SOA
    /// minimum, i.e. the negative-caching TTL).
    pub fn with_ttl<S: Borrow<DnsService>>(
        domain: &str,
        services: &[S],
        ttl: u32,
    ) -> Result<DnsZone, DnsError> {
        let origin_labels = parse_domain(domain)?;
        let origin = name_of(origin_labels.iter().map(Vec::as_slice)).map_err(|reason| {
            DnsError::InvalidDomain {
                domain: domain.to_owned(),
                reason,
            }
        })?;
        let fixed = |l: &str| {
            name_of(std::iter::once(l.as_bytes()).chain(origin_labels.iter().map(Vec::as_slice)))
                .map_err(|reason| DnsError::InvalidDomain {
                    domain: domain.to_owned(),
                    reason,
                })
        };
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let soa = SOA::new(
            fixed("dns")?.prepend_label_lossy("ns"),
            fixed("hostmaster")?,
            serial,
            7200,
            1800,
            86400,
            ttl,
        );
        let mut zone = DnsZone {
            origin: origin.clone(),
            ttl,
            soa,
            nodes: HashMap::new(),
            records: 0,
        };
        zone.nodes.insert(origin.clone(), Node::default());
        zone.node(&fixed("dns-version")?).txt = Some(TXT::new(vec![SCHEMA_VERSION.to_owned()]));

        let mut seen = HashSet::new();
        for svc in services.iter().map(Borrow::borrow) {
            zone.add_service(svc, &origin_labels, &mut seen)?;
        }
        Ok(zone)
    }

    /// How many records the services contributed (A, AAAA, CNAME, SRV; not
    /// the SOA and the `dns-version` TXT every zone has).
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether no service contributed a record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The TTL of every record.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The cluster domain, lowercase, with a trailing dot.
    pub fn domain(&self) -> String {
        self.origin.to_string()
    }

    /// The node at `name`, created (with its empty non-terminal ancestors
    /// down to the apex) when missing.
    fn node(&mut self, name: &Name) -> &mut Node {
        let mut parent = name.base_name();
        while parent.num_labels() > self.origin.num_labels() {
            let up = parent.base_name();
            self.nodes.entry(parent).or_default();
            parent = up;
        }
        self.nodes.entry(name.clone()).or_default()
    }

    fn add_service(
        &mut self,
        svc: &DnsService,
        origin: &[Vec<u8>],
        seen: &mut HashSet<(String, String)>,
    ) -> Result<(), DnsError> {
        let (namespace, name) = match svc {
            DnsService::ClusterIp {
                namespace, name, ..
            }
            | DnsService::Headless {
                namespace, name, ..
            }
            | DnsService::ExternalName {
                namespace, name, ..
            } => (namespace.as_str(), name.as_str()),
        };
        let invalid = |what: &'static str, value: &str, reason: String| DnsError::InvalidName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            what,
            value: value.to_owned(),
            reason,
        };
        let ns_label = dns_label(namespace).map_err(|r| invalid("namespace", namespace, r))?;
        let name_label = dns_label(name).map_err(|r| invalid("name", name, r))?;
        if !seen.insert((ns_label.clone(), name_label.clone())) {
            return Err(DnsError::Duplicate {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        }
        // <svc>.<ns>.svc.<domain>
        let mut base: Vec<Vec<u8>> = vec![
            name_label.into_bytes(),
            ns_label.into_bytes(),
            b"svc".to_vec(),
        ];
        base.extend(origin.iter().cloned());
        let svc_name =
            name_of(base.iter().map(Vec::as_slice)).map_err(|r| invalid("name", name, r))?;
        let srv_name = |port: &crate::model::NamedPort| -> Result<Option<Name>, DnsError> {
            if port.name.is_empty() {
                return Ok(None);
            }
            let label = dns_label(&port.name).map_err(|r| invalid("port name", &port.name, r))?;
            let labels = [
                format!("_{label}").into_bytes(),
                format!("_{}", port.proto.as_str()).into_bytes(),
            ];
            name_of(labels.iter().chain(base.iter()).map(Vec::as_slice))
                .map(Some)
                .map_err(|r| invalid("port name", &port.name, r))
        };

        match svc {
            DnsService::ClusterIp { ips, ports, .. } => {
                let mut added = 0;
                let node = self.node(&svc_name);
                for ip in ips {
                    added += usize::from(node.push_ip(*ip));
                }
                for port in ports {
                    let Some(owner) = srv_name(port)? else {
                        continue;
                    };
                    let srv = SRV::new(0, 100, port.port, svc_name.clone());
                    let node = self.node(&owner);
                    if !node.srv.contains(&srv) {
                        node.srv.push(srv);
                        added += 1;
                    }
                }
                self.records += added;
            }
            DnsService::Headless { ips, ports, .. } => {
                let mut added = 0;
                self.node(&svc_name);
                let mut hosts = Vec::new();
                for ip in ips {
                    if !self.node(&svc_name).push_ip(*ip) {
                        continue;
                    }
                    added += 1;
                    let host = svc_name
                        .clone()
                        .prepend_label_lossy(&endpoint_hostname(*ip));
                    if self.node(&host).push_ip(*ip) {
                        added += 1;
                    }
                    hosts.push(host);
                }
                for port in ports {
                    let Some(owner) = srv_name(port)? else {
                        continue;
                    };
                    let node = self.node(&owner);
                    for host in &hosts {
                        let srv = SRV::new(0, 100, port.port, host.clone());
                        if !node.srv.contains(&srv) {
                            node.srv.push(srv);
                            added += 1;
                        }
                    }
                }
                self.records += added;
            }
            DnsService::ExternalName { target, .. } => {
                let t = target.trim().trim_end_matches('.');
                if t.is_empty() {
                    return Err(invalid("target", target, "empty".to_owned()));
                }
                let mut cname = Name::from_utf8(t)
                    .map_err(|e| invalid("target", target, e.to_string()))?
                    .to_lowercase();
                cname.set_fqdn(true);
                self.node(&svc_name).cname = Some(cname);
                self.records += 1;
            }
        }
        Ok(())
    }

    fn soa_record(&self) -> Record {
        Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(self.soa.clone()))
    }

    /// Fills `resp` for an in-zone `qname`.
    fn resolve(&self, qname: &Name, qtype: RecordType, resp: &mut Message) {
        let mut owner = qname.clone();
        for _ in 0..=MAX_CNAME_CHAIN {
            let Some(node) = self.nodes.get(&owner) else {
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.add_authority(self.soa_record());
                return;
            };
            if let Some(target) = &node.cname {
                resp.add_answer(Record::from_rdata(
                    owner.clone(),
                    self.ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
                if matches!(qtype, RecordType::CNAME | RecordType::ANY)
                    || !self.origin.zone_of(target)
                {
                    return;
                }
                owner = target.clone();
                continue;
            }
            if self.add_rrsets(&owner, node, qtype, resp) == 0 {
                // NODATA, also at the end of a CNAME chain (RFC 2308 2.2).
                resp.add_authority(self.soa_record());
            }
            return;
        }
    }

    /// Adds the records of `node` matching `qtype` (and the SRV targets'
    /// addresses as additional records). Returns how many answers it added.
    fn add_rrsets(
        &self,
        owner: &Name,
        node: &Node,
        qtype: RecordType,
        resp: &mut Message,
    ) -> usize {
        let any = qtype == RecordType::ANY;
        let before = resp.answers.len();
        let rec = |data: RData| Record::from_rdata(owner.clone(), self.ttl, data);
        if any || qtype == RecordType::A {
            for ip in &node.a {
                resp.add_answer(rec(RData::A(A(*ip))));
            }
        }
        if any || qtype == RecordType::AAAA {
            for ip in &node.aaaa {
                resp.add_answer(rec(RData::AAAA(AAAA(*ip))));
            }
        }
        if any || qtype == RecordType::TXT {
            if let Some(txt) = &node.txt {
                resp.add_answer(rec(RData::TXT(txt.clone())));
            }
        }
        if (any || qtype == RecordType::SOA) && *owner == self.origin {
            resp.add_answer(rec(RData::SOA(self.soa.clone())));
        }
        if any || qtype == RecordType::SRV {
            let mut glued: Vec<&Name> = Vec::new();
            for srv in &node.srv {
                resp.add_answer(rec(RData::SRV(srv.clone())));
                let target = &srv.target;
                if glued.contains(&target) {
                    continue;
                }
                glued.push(target);
                if let Some(t) = self.nodes.get(target) {
                    for ip in &t.a {
                        resp.add_additional(Record::from_rdata(
                            target.clone(),
                            self.ttl,
                            RData::A(A(*ip)),
                        ));
                    }
                    for ip in &t.aaaa {
                        resp.add_additional(Record::from_rdata(
                            target.clone(),
                            self.ttl,
                            RData::AAAA(AAAA(*ip)),
                        ));
                    }
                }
            }
        }
        resp.answers.len() - before
    }
}

/// The transport a query came over, which decides truncation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: responses are limited to 512 bytes, or the client's EDNS payload
    /// size (at most [`EDNS_PAYLOAD`]), and truncated (TC) beyond.
    Udp,
    /// TCP: responses up to 65535 bytes, never truncated.
    Tcp,
}

/// Answers `query` (a DNS message as received over UDP) from `zone`. Pure;
/// never panics. `None` when the input is shorter than a DNS header, or is
/// itself a response (QR set: answering those invites loops between
/// servers).
pub fn answer(zone: &DnsZone, query: &[u8]) -> Option<Vec<u8>> {
    answer_over(zone, query, Transport::Udp)
}

/// Like [`answer`], with the truncation rules of `transport`.
pub fn answer_over(zone: &DnsZone, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let flags = query[2];
    if flags & 0x80 != 0 {
        return None;
    }
    let opcode = (flags >> 3) & 0x0f;
    let rd = flags & 0x01 != 0;
    if opcode != 0 {
        return Some(raw_error(id, opcode, rd, ResponseCode::NotImp));
    }
    // hickory's decoder is not supposed to panic; this keeps a bug there
    // from taking a serving thread down.
    let req = match catch_unwind(AssertUnwindSafe(|| Message::from_vec(query))) {
        Ok(Ok(m)) => m,
        _ => return Some(raw_error(id, 0, rd, ResponseCode::FormErr)),
    };
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => match &req.edns {
            Some(e) => usize::from(e.max_payload().min(EDNS_PAYLOAD)).max(PLAIN_UDP_LIMIT),
            None => PLAIN_UDP_LIMIT,
        },
    };
    let resp = respond(zone, &req);
    Some(encode(resp, limit).unwrap_or_else(|| raw_error(id, 0, rd, ResponseCode::ServFail)))
}

/// A bare response header: no sections.
fn raw_error(id: u16, opcode: u8, rd: bool, rcode: ResponseCode) -> Vec<u8> {
    let mut b = vec![0u8; 12];
    b[..2].copy_from_slice(&id.to_be_bytes());
    b[2] = 0x80 | ((opcode & 0x0f) << 3) | u8::from(rd);
    b[3] = rcode.low() & 0x0f;
    b
}

fn respond(zone: &DnsZone, req: &Message) -> Message {
    let mut resp = Message::response(req.id, OpCode::Query);
    resp.metadata.recursion_desired = req.recursion_desired;
    resp.metadata.checking_disabled = req.checking_disabled;
    if let Some(edns) = &req.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(ours);
        if edns.version() > 0 {
            resp.metadata.response_code = ResponseCode::BADVERS;
            return resp;
        }
    }
    let [q] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp;
    };
    resp.add_query(q.clone());
    let qname = q.name();
    if !zone.origin.zone_of(qname) {
        resp.metadata.response_code = ResponseCode::Refused;
        return resp;
    }
    let qtype = q.query_type();
    if !matches!(q.query_class(), DNSClass::IN | DNSClass::ANY)
        || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
    {
        resp.metadata.response_code = ResponseCode::Refused;
        return resp;
    }
    if matches!(qtype, RecordType::OPT) {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp;
    }
    resp.metadata.authoritative = true;
    zone.resolve(qname, qtype, &mut resp);
    resp
}

/// Encodes `resp` within `limit` bytes: whole, else without the additional
/// section, else with TC and only the question (and OPT).
fn encode(mut resp: Message, limit: usize) -> Option<Vec<u8>> {
    let fits = |m: &Message| m.to_vec().ok().filter(|b| b.len() <= limit);
    if let Some(b) = fits(&resp) {
        return Some(b);
    }
    resp.additionals.clear();
    if let Some(b) = fits(&resp) {
        return Some(b);
    }
    resp.answers.clear();
    resp.authorities.clear();
    resp.metadata.truncation = true;
    fits(&resp)
}

/// Splits and validates the cluster domain into lowercase labels.
fn parse_domain(domain: &str) -> Result<Vec<Vec<u8>>, DnsError> {
    let invalid = |reason: String| DnsError::InvalidDomain {
        domain: domain.to_owned(),
        reason,
    };
    let d = domain.trim().trim_end_matches('.');
    if d.is_empty() {
        return Err(invalid("empty".to_owned()));
    }
    d.split('.')
        .map(|l| dns_label(l).map(String::into_bytes).map_err(&invalid))
        .collect()
}

/// Validates one RFC 1123 label (letters, digits, `-`; 1–63 bytes) and
/// lowercases it.
fn dns_label(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty label".to_owned());
    }
    if s.len() > 63 {
        return Err(format!("label longer than 63 bytes ({})", s.len()));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("only letters, digits and '-' are allowed".to_owned());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not start or end with '-'".to_owned());
    }
    Ok(s.to_ascii_lowercase())
}

/// A fully qualified name from raw labels.
fn name_of<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Result<Name, String> {
    let labels: Vec<Label> = labels
        .map(Label::from_raw_bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Name::from_labels(labels).map_err(|e| e.to_string())
}

/// The hostname CoreDNS gives an endpoint without one: its address with
/// `.` and `:` replaced by `-` (`10-0-0-1`, `fd00--1`).
fn endpoint_hostname(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

trait PrependLabel {
    fn prepend_label_lossy(self, label: &str) -> Name;
}

impl PrependLabel for Name {
    /// `label.self`; `label` is known to be a valid label shorter than 64
    /// bytes and `self` short enough, so failure only yields `self`.
    fn prepend_label_lossy(self, label: &str) -> Name {
        match name_of(std::iter::once(label.as_bytes())) {
            Ok(l) => l.append_name(&self).unwrap_or(self),
            Err(_) => self,
        }
    }
}

/// Serves a [`DnsZone`] over UDP and TCP on one address. Dropping it stops
/// and joins every thread.
pub struct DnsServer {
    zone: Arc<ArcSwap<DnsZone>>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `bind` (port 0: one ephemeral port for both)
    /// and starts serving `zone`.
    pub fn spawn(bind: SocketAddr, zone: DnsZone) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = bind_pair(bind)?;
        let addr = udp
            .local_addr()
            .map_err(|source| DnsError::Socket { addr: bind, source })?;
        let socket_err = |source| DnsError::Socket { addr, source };
        udp.set_read_timeout(Some(POLL)).map_err(socket_err)?;
        tcp.set_nonblocking(true).map_err(socket_err)?;

        let zone = Arc::new(ArcSwap::from_pointee(zone));
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = DnsServer {
            zone: zone.clone(),
            stop: stop.clone(),
            addr,
            threads: Vec::new(),
        };
        let (z, s) = (zone.clone(), stop.clone());
        let udp_thread = thread::Builder::new()
            .name("sluice-dns-udp".into())
            .spawn(move || serve_udp(udp, z, s))
            .map_err(|source| DnsError::Spawn {
                what: "udp",
                source,
            })?;
        server.threads.push(udp_thread);
        // On failure `server` drops here and stops the UDP thread.
        let tcp_thread = thread::Builder::new()
            .name("sluice-dns-tcp".into())
            .spawn(move || serve_tcp(tcp, zone, stop))
            .map_err(|source| DnsError::Spawn {
                what: "tcp",
                source,
            })?;
        server.threads.push(tcp_thread);
        tracing::info!(%addr, "DNS serving on UDP and TCP");
        Ok(server)
    }

    /// Replaces the zone; queries already being answered finish with the
    /// old one.
    pub fn update(&self, zone: DnsZone) {
        self.zone.store(Arc::new(zone));
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn bind_pair(bind: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let attempts = if bind.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(bind).map_err(|source| DnsError::Bind {
            proto: "udp",
            addr: bind,
            source,
        })?;
        let addr = udp
            .local_addr()
            .map_err(|source| DnsError::Socket { addr: bind, source })?;
        match TcpListener::bind(addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => last = Some((addr, source)),
        }
    }
    let (addr, source) = last.expect("at least one attempt");
    Err(DnsError::Bind {
        proto: "tcp",
        addr,
        source,
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn serve_udp(sock: UdpSocket, zone: Arc<ArcSwap<DnsZone>>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 65535];
    while !stop.load(Ordering::Acquire) {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let reply = answer_over(&zone.load(), &buf[..n], Transport::Udp);
                if let Some(reply) = reply {
                    if let Err(e) = sock.send_to(&reply, peer) {
                        tracing::debug!(%peer, error = %e, "DNS UDP send failed");
                    }
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                tracing::debug!(error = %e, "DNS UDP receive failed");
                thread::sleep(POLL);
            }
        }
    }
}

/// Waits until `fd` is readable or `timeout` passes.
fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is a valid, initialised pollfd that outlives the call,
    // and the count passed is 1; `fd` stays open for the call's duration.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0
}

fn serve_tcp(listener: TcpListener, zone: Arc<ArcSwap<DnsZone>>, stop: Arc<AtomicBool>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        if !wait_readable(&listener, POLL) {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                let (done, running): (Vec<_>, Vec<_>) =
                    conns.drain(..).partition(JoinHandle::is_finished);
                for h in done {
                    let _ = h.join();
                }
                conns = running;
                if conns.len() >= MAX_TCP_CONNS {
                    tracing::debug!(%peer, "DNS TCP connection limit reached, closing");
                    continue;
                }
                let (z, s) = (zone.clone(), stop.clone());
                match thread::Builder::new()
                    .name("sluice-dns-conn".into())
                    .spawn(move || serve_tcp_conn(stream, &z, &s))
                {
                    Ok(h) => conns.push(h),
                    Err(e) => tracing::warn!(error = %e, "cannot start a DNS TCP thread"),
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                tracing::debug!(error = %e, "DNS TCP accept failed");
                thread::sleep(POLL);
            }
        }
    }
    for h in conns {
        let _ = h.join();
    }
}

/// Reads exactly `buf.len()` bytes; false on EOF, error, stop or deadline.
fn read_full(s: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool, deadline: Instant) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        if stop.load(Ordering::Acquire) || Instant::now() >= deadline {
            return false;
        }
        match s.read(&mut buf[filled..]) {
            Ok(0) => return false,
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Serves length-framed queries (RFC 1035 4.2.2, RFC 7766) until the
/// client closes, goes idle, or the server stops.
fn serve_tcp_conn(mut s: TcpStream, zone: &ArcSwap<DnsZone>, stop: &AtomicBool) {
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(POLL)).is_err()
        || s.set_write_timeout(Some(TCP_WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let _ = s.set_nodelay(true);
    loop {
        let deadline = Instant::now() + TCP_IDLE;
        let mut len = [0u8; 2];
        if !read_full(&mut s, &mut len, stop, deadline) {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !read_full(&mut s, &mut msg, stop, deadline) {
            return;
        }
        let Some(reply) = answer_over(&zone.load(), &msg, Transport::Tcp) else {
            return;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&reply);
        if s.write_all(&framed).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
