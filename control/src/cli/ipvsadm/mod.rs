//! `sluice ipvsadm ARGS` and the binary invoked as `ipvsadm`: ipvsadm 1.31
//! against the running daemon's API instead of the kernel.
//!
//! Every IPVS service that ipvsadm creates is a `VirtualService` object
//! (namespace `ipvs`, named for its front end: `tcp-198-18-0-100-80`,
//! `udp-2001-db8--1-53`, `fwm-7`); services that already exist keep their
//! object whatever its name or namespace (one written by a file, say).
//! A command reads the objects and the compiled view
//! (`GET /apis/sluice.dev/v1/ipvs`), applies itself to them here — where
//! the kernel's answers come from: "Service already exists", "No such
//! destination", ... — and sends what changed as one batch
//! (`POST /apis/sluice.dev/v1/ipvs`, each write conditional on the
//! resource version it read), which the daemon validates whole. `-R` does
//! the same for all its lines at once, so a restore is all or nothing: a
//! bad line, whether ipvsadm would refuse it at parse time or the kernel
//! would, changes nothing (ipvsadm itself would have applied the lines
//! before it). Services from Kubernetes objects are listed and saved but
//! cannot be changed here.
//!
//! DPVS's local-address commands (`--add-laddr`/`-P`, `--del-laddr`/`-Q`,
//! `--get-laddr`/`-G`) edit and list a VirtualService's
//! `spec.localAddresses`, its FULLNAT sources, with DPVS's messages
//! ("Service not defined", "Local address already exists", "No such Local
//! address"); the daemon refuses an address the host does not own.

pub mod args;
pub mod list;
mod services;

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use hyper::{Method as HttpMethod, StatusCode};
use serde_json::{json, Value};
use sluice_dataplane::service::SchedKind;
use sluice_dataplane::types::proto;

use self::args::{fail2, fail255, opt, Action, Cmd, Fail, Mask, Parsed};
use self::list::Format;
use crate::api::ipvs::IpvsService;
use crate::api::ipvs_conns::{IpvsConnList, IpvsTimeouts};
use crate::config::virtual_service::{
    self as vs, Front, Netmask, PersistenceSpec, RealServerSpec, VirtualService, VsSpec,
};

/// `ipvsadm -v`.
pub const VERSION: &str = "ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)";
/// The namespace of the objects ipvsadm creates.
pub const NAMESPACE: &str = "ipvs";
const VIEW: &str = "/apis/sluice.dev/v1/ipvs";
const CONNS: &str = "/apis/sluice.dev/v1/ipvs/connections";
const TIMEOUTS: &str = "/apis/sluice.dev/v1/ipvs/timeouts";
const ZERO: &str = "/apis/sluice.dev/v1/ipvs/zero";

/// `ipvsadm -h`.
pub fn usage(prog: &str) -> String {
    format!(
        "{VERSION}\nUsage:\n  {prog} -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] [-b sched-flags]\n  {prog} -D virtual-service\n  {prog} -C\n  {prog} -R\n  {prog} -S [-n]\n  {prog} -a|e virtual-service -r server-address [options]\n  {prog} -d virtual-service -r server-address\n  {prog} -L|l [virtual-service] [options]\n  {prog} -Z [virtual-service]\n  {prog} --set tcp tcpfin udp\n  {prog} --add-laddr|--del-laddr -z local-address virtual-service [-F ifname]\n  {prog} --get-laddr|-G [virtual-service]\n  {prog} -h\n\nSluice's own list options: --k8s (the object of each service), --health (each real server's check state).\nSluice serves these through its API (--api-socket PATH or SLUICE_SOCKET).\nSee the README section \"IPVS and ipvsadm\" for every option and its support.\n"
    )
}

/// Runs one ipvsadm command line against the daemon at `socket`; returns
/// the exit code (messages are printed).
pub fn main(prog: &str, args: &[String], socket: &Path) -> u8 {
    let r = if args.is_empty() {
        list(socket, &Format::default(), None)
    } else {
        args::parse(prog, args, false).and_then(|a| match a {
            Action::Print(s) => Ok(s),
            Action::Run(p) => run(prog, &p, socket),
        })
    };
    match r {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(f) => {
            eprintln!("{}", f.msg);
            f.code
        }
    }
}

fn not_yet(what: &str) -> Fail {
    fail255(format!("{what} is not supported yet by Sluice"))
}

fn format_of(p: &Parsed) -> Format {
    Format {
        numeric: p.has(opt::NUMERIC),
        rule: p.cmd == Cmd::Save,
        thresholds: p.has(opt::THRESHOLDS),
        persistent_conn: p.has(opt::PERSISTENTCONN),
        nosort: p.has(opt::NOSORT),
        tun_info: p.has(opt::TUN_INFO),
        k8s: p.has(opt::K8S),
        // ipvsadm's priority: stats over rate.
        stats: p.has(opt::STATS),
        rate: p.has(opt::RATE) && !p.has(opt::STATS),
        exact: p.has(opt::EXACT),
        health: p.has(opt::HEALTH),
    }
}

fn run(prog: &str, p: &Parsed, socket: &Path) -> Result<String, Fail> {
    match p.cmd {
        Cmd::List => {
            if p.has(opt::CONNECTION) {
                let l: IpvsConnList = get_as(socket, CONNS)?;
                return Ok(list::connections(&l.items, format_of(p)));
            }
            if p.has(opt::TIMEOUT) {
                return Ok(list::timeouts(&get_as(socket, TIMEOUTS)?));
            }
            if p.has(opt::DAEMON) {
                return Ok(String::new());
            }
            let one = p.has(opt::SERVICE).then(|| front_of(p));
            list(socket, &format_of(p), one)
        }
        Cmd::Save => list(socket, &format_of(p), None),
        Cmd::GetLaddr => get_laddrs(p, socket),
        Cmd::Zero => zero(p, socket),
        Cmd::Timeout => {
            let (tcp, tcpfin, udp) = p.timeouts.unwrap_or_default();
            let t = IpvsTimeouts { tcp, tcpfin, udp };
            let body = serde_json::to_vec(&t).unwrap_or_default();
            send(socket, HttpMethod::PUT, TIMEOUTS, body)
        }
        Cmd::StartDaemon | Cmd::StopDaemon => Err(not_yet("the connection sync daemon")),
        Cmd::Restore => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| fail255(format!("reading stdin: {e}")))?;
            restore(prog, &text, socket)
        }
        _ => {
            let mut m = Model::load(socket)?;
            m.apply(p)?;
            m.commit(socket)?;
            Ok(String::new())
        }
    }
}

/// Reads every line first, applies them in order to one model, and
/// commits the result as one batch.
fn restore(prog: &str, text: &str, socket: &Path) -> Result<String, Fail> {
    let mut lines = Vec::new();
    for line in text.lines() {
        let toks: Vec<String> = line
            .split_whitespace()
            .filter(|t| *t != "ipvsadm")
            .map(str::to_owned)
            .collect();
        if toks.is_empty() || toks[0].starts_with('#') {
            continue;
        }
        match args::parse(prog, &toks, true)? {
            Action::Print(_) => {}
            Action::Run(p) => lines.push(p),
        }
    }
    let mut m = Model::load(socket)?;
    for p in &lines {
        match p.cmd {
            Cmd::List | Cmd::Save | Cmd::GetLaddr => return Err(not_yet("listing inside -R")),
            Cmd::Zero | Cmd::Timeout | Cmd::StartDaemon | Cmd::StopDaemon => {
                return run(prog, p, socket)
            }
            _ => m.apply(p)?,
        }
    }
    m.commit(socket)?;
    Ok(String::new())
}

fn call(
    socket: &Path,
    method: HttpMethod,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Value), Fail> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail255(e.to_string()))?;
    let (code, bytes) = rt
        .block_on(super::client::request(
            socket,
            method,
            path,
            "application/json",
            body,
        ))
        .map_err(|e| Fail {
            code: 2,
            msg: format!("Can't initialize ipvs: {e}"),
        })?;
    Ok((code, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

fn message(v: &Value, code: StatusCode) -> String {
    v.get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the server answered {code}"))
}

fn get(socket: &Path, path: &str) -> Result<Value, Fail> {
    let (code, v) = call(socket, HttpMethod::GET, path, Vec::new())?;
    if !code.is_success() {
        return Err(fail255(message(&v, code)));
    }
    Ok(v)
}

/// A GET answer as `T`.
fn get_as<T: serde::de::DeserializeOwned>(socket: &Path, path: &str) -> Result<T, Fail> {
    serde_json::from_value(get(socket, path)?)
        .map_err(|e| fail255(format!("unexpected answer from {path}: {e}")))
}

/// A write; its refusal's message is ipvsadm's (exit 255).
fn send(socket: &Path, method: HttpMethod, path: &str, body: Vec<u8>) -> Result<String, Fail> {
    let (code, v) = call(socket, method, path, body)?;
    if code.is_success() {
        Ok(String::new())
    } else {
        Err(fail255(message(&v, code)))
    }
}

/// `-Z [service]`: zero the ipvsadm view's counters, of one service or all.
fn zero(p: &Parsed, socket: &Path) -> Result<String, Fail> {
    let body = if p.has(opt::SERVICE) {
        match front_of(p) {
            Front::Addr { proto, addr, port } => {
                json!({"protocol": proto, "addr": addr, "port": port})
            }
            Front::Fwmark { .. } => return Err(fail255("No such service")),
        }
    } else {
        json!({})
    };
    send(
        socket,
        HttpMethod::POST,
        ZERO,
        body.to_string().into_bytes(),
    )
}

/// The compiled view.
pub fn view(socket: &Path) -> Result<Vec<IpvsService>, Fail> {
    view_at(socket, VIEW)
}

fn view_at(socket: &Path, path: &str) -> Result<Vec<IpvsService>, Fail> {
    let v = get(socket, path)?;
    serde_json::from_value(v.get("items").cloned().unwrap_or(Value::Null))
        .map_err(|e| fail255(format!("unexpected answer from {path}: {e}")))
}

fn list(socket: &Path, f: &Format, one: Option<Front>) -> Result<String, Fail> {
    let services = if f.stats || f.rate {
        view_at(socket, &format!("{VIEW}?stats=true"))?
    } else if f.persistent_conn {
        view_at(socket, &format!("{VIEW}?templates=true"))?
    } else {
        view(socket)?
    };
    match one {
        None => Ok(list::list_all(&services, *f)),
        Some(front) => services
            .iter()
            .find(|s| view_front(s) == front)
            .map(|s| list::list_one(s, *f))
            .ok_or_else(|| Fail {
                code: 1,
                msg: "No such service".into(),
            }),
    }
}

/// DPVS's `-G [service]`: every service's local addresses, or one's
/// ("Service not defined", exit 1, as DPVS's `list_laddrs`).
fn get_laddrs(p: &Parsed, socket: &Path) -> Result<String, Fail> {
    let services = view_at(socket, &format!("{VIEW}?laddrs=true"))?;
    if !p.has(opt::SERVICE) {
        return Ok(list::laddrs(&services));
    }
    let f = front_of(p);
    services
        .into_iter()
        .find(|s| view_front(s) == f)
        .map(|s| list::laddrs(&[s]))
        .ok_or_else(|| Fail {
            code: 1,
            msg: "Service not defined".into(),
        })
}

fn view_front(s: &IpvsService) -> Front {
    if s.fwmark != 0 {
        Front::Fwmark {
            mark: s.fwmark,
            v6: s.addr.is_ipv6(),
        }
    } else {
        Front::Addr {
            proto: s.protocol,
            addr: s.addr,
            port: s.port,
        }
    }
}

fn front_of(p: &Parsed) -> Front {
    match p.svc.addr {
        Some(addr) if p.svc.fwmark == 0 => Front::Addr {
            proto: p.svc.proto,
            addr,
            port: p.svc.port,
        },
        _ => Front::Fwmark {
            mark: p.svc.fwmark,
            v6: p.svc.v6,
        },
    }
}

/// The name ipvsadm gives a new service's object.
pub fn object_name(f: &Front) -> String {
    match f {
        Front::Fwmark { mark, v6: false } => format!("fwm-{mark}"),
        Front::Fwmark { mark, v6: true } => format!("fwm-{mark}-ipv6"),
        Front::Addr {
            proto: p,
            addr,
            port,
        } => {
            let p = match *p {
                proto::UDP => "udp",
                proto::SCTP => "sctp",
                _ => "tcp",
            };
            let a = addr.to_string().replace(['.', ':'], "-");
            format!("{p}-{a}-{port}")
        }
    }
}

fn describe(f: &Front) -> String {
    match f {
        Front::Fwmark { mark, .. } => format!("FWM {mark}"),
        Front::Addr {
            proto: p,
            addr,
            port,
        } => format!(
            "{} {}",
            match *p {
                proto::UDP => "UDP",
                proto::SCTP => "SCTP",
                _ => "TCP",
            },
            list::addr_port(*addr, *port, *p, true)
        ),
    }
}

/// One VirtualService as read, and what this run did to it.
struct Obj {
    ns: String,
    name: String,
    rv: Option<String>,
    object: Value,
    spec: VsSpec,
    front: Front,
    new: bool,
    changed: bool,
    deleted: bool,
}

/// The VirtualServices and the Kubernetes-made services, as one run sees
/// and changes them.
struct Model {
    objs: Vec<Obj>,
    k8s: Vec<IpvsService>,
}

impl Model {
    fn load(socket: &Path) -> Result<Model, Fail> {
        let k8s = view(socket)?
            .into_iter()
            .filter(|s| s.origin.kind != vs::KIND)
            .collect();
        let list = get(socket, "/apis/sluice.dev/v1/virtualservices")?;
        let mut objs = Vec::new();
        for o in list
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Ok(v) = serde_json::from_value::<VirtualService>(o.clone()) else {
                continue;
            };
            let Ok(def) = vs::check(&v) else { continue };
            objs.push(Obj {
                ns: def.ns.clone(),
                name: def.name.clone(),
                rv: o
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                object: o.clone(),
                spec: v.spec.unwrap_or_default(),
                front: def.front,
                new: false,
                changed: false,
                deleted: false,
            });
        }
        Ok(Model { objs, k8s })
    }

    fn find(&mut self, f: &Front) -> Option<&mut Obj> {
        self.objs.iter_mut().find(|o| !o.deleted && o.front == *f)
    }

    fn k8s_owner(&self, f: &Front) -> Result<(), Fail> {
        match self.k8s.iter().find(|s| view_front(s) == *f) {
            Some(s) => Err(fail255(format!(
                "{} comes from Kubernetes Service {}/{}: change it through its Kubernetes objects, not ipvsadm",
                describe(f),
                s.origin.namespace,
                s.origin.name
            ))),
            None => Ok(()),
        }
    }

    fn service<'m>(&'m mut self, f: &Front, missing: &str) -> Result<&'m mut Obj, Fail> {
        self.k8s_owner(f)?;
        self.find(f).ok_or_else(|| fail255(missing))
    }

    fn apply(&mut self, p: &Parsed) -> Result<(), Fail> {
        let f = front_of(p);
        match p.cmd {
            Cmd::Add => {
                check_service_opts(p)?;
                self.k8s_owner(&f)?;
                if self.find(&f).is_some() {
                    return Err(fail255("Service already exists"));
                }
                let mut spec = VsSpec::default();
                set_service(&mut spec, p);
                let name = object_name(&f);
                // A service this run deleted comes back as the same object.
                if let Some(o) = self
                    .objs
                    .iter_mut()
                    .find(|o| o.deleted && o.ns == NAMESPACE && o.name == name)
                {
                    o.deleted = false;
                    o.changed = true;
                    o.front = f;
                    o.spec = spec;
                    return Ok(());
                }
                self.objs.push(Obj {
                    ns: NAMESPACE.into(),
                    object: json!({"apiVersion": vs::API_VERSION, "kind": vs::KIND,
                        "metadata": {"name": name, "namespace": NAMESPACE}}),
                    name,
                    rv: None,
                    spec,
                    front: f,
                    new: true,
                    changed: true,
                    deleted: false,
                });
            }
            Cmd::Edit => {
                check_service_opts(p)?;
                let o = self.service(&f, "No such service")?;
                let servers = o.spec.real_servers.take();
                let laddrs = o.spec.local_addresses.take();
                let mut spec = VsSpec::default();
                set_service(&mut spec, p);
                spec.real_servers = servers;
                spec.local_addresses = laddrs;
                o.spec = spec;
                o.changed = true;
            }
            Cmd::Del => {
                let o = self.service(&f, "No such service")?;
                o.deleted = true;
            }
            Cmd::Flush => self.objs.iter_mut().for_each(|o| o.deleted = true),
            Cmd::AddDest | Cmd::EditDest | Cmd::DelDest => self.dest(p, &f)?,
            Cmd::AddLaddr | Cmd::DelLaddr => self.laddr(p, &f)?,
            _ => {}
        }
        Ok(())
    }

    /// DPVS's `--add-laddr` / `--del-laddr` on `spec.localAddresses`
    /// (whether the host owns the address, the daemon checks).
    fn laddr(&mut self, p: &Parsed, f: &Front) -> Result<(), Fail> {
        let Some(addr) = p.laddr else {
            return Err(fail2("illegal local address"));
        };
        let o = self.service(f, "Service not defined")?;
        let v6 = match f {
            Front::Addr { addr, .. } => addr.is_ipv6(),
            Front::Fwmark { v6, .. } => *v6,
        };
        if addr.is_ipv6() != v6 {
            return Err(fail255(
                "Operation not supported with specified address family",
            ));
        }
        let list = o.spec.local_addresses.get_or_insert_with(Vec::new);
        let at = list
            .iter()
            .position(|a| a.parse::<IpAddr>().ok() == Some(addr));
        match (p.cmd, at) {
            (Cmd::AddLaddr, Some(_)) => return Err(fail255("Local address already exists")),
            (Cmd::AddLaddr, None) => list.push(addr.to_string()),
            (_, Some(i)) => {
                list.remove(i);
            }
            (_, None) => return Err(fail255("No such Local address")),
        }
        if list.is_empty() {
            o.spec.local_addresses = None;
        }
        o.changed = true;
        Ok(())
    }

    fn dest(&mut self, p: &Parsed, f: &Front) -> Result<(), Fail> {
        let d = &p.dest;
        if p.cmd != Cmd::DelDest && d.lower > d.upper {
            return Err(fail255("Numerical result out of range"));
        }
        let o = self.service(f, "Service not defined")?;
        let servers = o.spec.real_servers.get_or_insert_with(Vec::new);
        let addr = d.addr.map(|a| a.to_string()).unwrap_or_default();
        let vport = match f {
            Front::Addr { port, .. } => i64::from(*port),
            Front::Fwmark { .. } => 0,
        };
        let at = servers.iter().position(|r| {
            r.address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()) == d.addr
                && r.port.unwrap_or(vport) == i64::from(d.port)
        });
        let rs = RealServerSpec {
            address: Some(addr),
            port: Some(i64::from(d.port)),
            method: Some(d.method.as_str().to_owned()),
            weight: Some(i64::from(d.weight)),
            upper_threshold: (d.upper > 0).then_some(i64::from(d.upper)),
            lower_threshold: (d.lower > 0).then_some(i64::from(d.lower)),
        };
        match (p.cmd, at) {
            (Cmd::AddDest, Some(_)) => return Err(fail255("Destination already exists")),
            (Cmd::AddDest, None) => servers.push(rs),
            (Cmd::EditDest, Some(i)) => servers[i] = rs,
            (Cmd::DelDest, Some(i)) => {
                servers.remove(i);
            }
            _ => return Err(fail255("No such destination")),
        }
        o.changed = true;
        Ok(())
    }

    fn commit(self, socket: &Path) -> Result<(), Fail> {
        let mut writes = Vec::new();
        for mut o in self.objs {
            match (o.new, o.deleted, o.changed) {
                (true, true, _) | (_, false, false) => {}
                (false, true, _) => {
                    writes.push(json!({"op": "delete", "namespace": o.ns, "name": o.name}))
                }
                (new, false, true) => {
                    o.object["spec"] =
                        serde_json::to_value(&o.spec).map_err(|e| fail255(e.to_string()))?;
                    writes.push(if new {
                        json!({"op": "create", "object": o.object})
                    } else {
                        json!({"op": "replace", "object": o.object,
                            "resourceVersion": o.rv.unwrap_or_default()})
                    });
                }
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&json!({ "writes": writes })).unwrap_or_default();
        let (code, v) = call(socket, HttpMethod::POST, VIEW, body)?;
        if code.is_success() {
            Ok(())
        } else {
            Err(fail255(message(&v, code)))
        }
    }
}

/// What the kernel would refuse of `-A`/`-E`: an unknown scheduler or
/// persistence engine (ENOENT); and what Sluice cannot do yet.
fn check_service_opts(p: &Parsed) -> Result<(), Fail> {
    if p.pe.is_some() || SchedKind::from_name(p.sched.as_deref().unwrap_or("wlc")).is_none() {
        return Err(fail255("Scheduler or persistence engine not found"));
    }
    if p.flags.iter().any(|f| f == "flag-3") {
        return Err(not_yet("scheduler flag flag-3"));
    }
    if p.has(opt::ONEPACKET) {
        return Err(not_yet("One-Packet Scheduling (-o)"));
    }
    Ok(())
}

fn set_service(spec: &mut VsSpec, p: &Parsed) {
    match front_of(p) {
        Front::Addr {
            proto: pr,
            addr,
            port,
        } => {
            spec.protocol = Some(
                match pr {
                    proto::UDP => "UDP",
                    proto::SCTP => "SCTP",
                    _ => "TCP",
                }
                .into(),
            );
            spec.address = Some(addr.to_string());
            spec.port = Some(i64::from(port));
        }
        Front::Fwmark { mark, v6 } => {
            spec.fwmark = Some(i64::from(mark));
            spec.ip_family = v6.then(|| "IPv6".into());
        }
    }
    spec.scheduler = p.sched.clone();
    spec.scheduler_flags = (!p.flags.is_empty()).then(|| p.flags.clone());
    spec.persistence = p.persistent.map(|t| PersistenceSpec {
        timeout: Some(i64::from(t)),
        netmask: match p.netmask {
            Some(Mask::V4(m)) if m != u32::MAX => {
                Some(Netmask::Text(std::net::Ipv4Addr::from(m).to_string()))
            }
            Some(Mask::V6(n)) if n != 128 => Some(Netmask::Prefix(i64::from(n))),
            _ => None,
        },
    });
}

#[cfg(test)]
mod tests;
