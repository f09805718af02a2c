//! ipvsadm 1.31's listings, byte for byte: `-L` (plain, `--thresholds`,
//! `--persistent-conn`, `--tun-info`), `-S` rules, DPVS's `-G` (local
//! addresses, `ipvsadm.c` `list_laddrs_print_*` of iqiyi/dpvs's
//! tools/ipvsadm), the header and titles,
//! the truncation of IPv4 names (33 and 28 characters) and the sort order
//! of `ipvs_cmp_services`/`ipvs_cmp_dests` with their `int` subtraction
//! quirk, sorted by a top-down merge sort as glibc's `qsort` (`msort`) does,
//! so even that inconsistent comparison orders the same way.

use std::fmt::Write as _;
use std::net::IpAddr;

use sluice_dataplane::types::proto;

use crate::api::ipvs::{Counters, IpvsDest, IpvsService};
use crate::api::ipvs_conns::{End, IpvsConn, IpvsTimeouts};

/// The header of a full listing.
pub const HEADER: &str = "IP Virtual Server version 1.2.1 (size=4096)\n";

/// Listing formats (ipvsadm's `FMT_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Format {
    /// `-n`
    pub numeric: bool,
    /// `-S`
    pub rule: bool,
    /// `--thresholds`
    pub thresholds: bool,
    /// `--persistent-conn`
    pub persistent_conn: bool,
    /// `--nosort`
    pub nosort: bool,
    /// `--tun-info`
    pub tun_info: bool,
    /// `--k8s`: which object each service comes from.
    pub k8s: bool,
    /// `--stats`
    pub stats: bool,
    /// `--rate`
    pub rate: bool,
    /// `--exact`
    pub exact: bool,
    /// `--health`: a column of each real server's check state after
    /// InActConn (plain layout only; `args` refuses it with the others).
    pub health: bool,
}

/// `print_title`.
pub fn title(f: Format) -> String {
    if f.stats || f.rate {
        let n: [&str; 5] = if f.stats {
            ["Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"]
        } else {
            ["CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"]
        };
        format!(
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port\n",
            "Prot LocalAddress:Port", n[0], n[1], n[2], n[3], n[4]
        )
    } else if f.thresholds {
        format!(
            "{:<33} {:<10} {:<10} {:<10} {:<10}\n  -> RemoteAddress:Port\n",
            "Prot LocalAddress:Port", "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
        )
    } else if f.persistent_conn {
        format!(
            "{:<33} {:<9} {:<11} {:<10} {:<10}\n  -> RemoteAddress:Port\n",
            "Prot LocalAddress:Port", "Weight", "PersistConn", "ActiveConn", "InActConn"
        )
    } else if f.tun_info {
        "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n".into()
    } else if f.rule {
        String::new()
    } else if f.health {
        // InActConn's column is 10 wide: the title pads it like a row.
        "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn  Health\n".into()
    } else {
        "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n".into()
    }
}

/// `addrport_to_anyname`: numeric, or with the port's service name (the
/// address stays numeric: no resolver is asked).
pub fn addr_port(addr: IpAddr, port: u16, protocol: u8, numeric: bool) -> String {
    let port = if numeric {
        port.to_string()
    } else {
        super::services::name_of_port(port, protocol).unwrap_or_else(|| port.to_string())
    };
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        proto::SCTP => "SCTP",
        _ => "?",
    }
}

fn proto_option(p: u8) -> &'static str {
    match p {
        proto::TCP => "-t",
        proto::UDP => "-u",
        proto::SCTP => "--sctp-service",
        _ => "--xxx-service",
    }
}

/// The service's name in a listing or a rule.
fn svc_name(s: &IpvsService, f: Format) -> String {
    let v6 = s.addr.is_ipv6();
    if s.fwmark != 0 {
        return match (f.rule, v6) {
            (true, true) => format!("-f {} -6", s.fwmark),
            (true, false) => format!("-f {}", s.fwmark),
            (false, true) => format!("FWM  {} IPv6", s.fwmark),
            (false, false) => format!("FWM  {}", s.fwmark),
        };
    }
    let vname = addr_port(s.addr, s.port, s.protocol, f.numeric);
    if f.rule {
        format!("{} {vname}", proto_option(s.protocol))
    } else {
        let mut n = format!("{:<4} {vname}", proto_name(s.protocol));
        if !v6 {
            n.truncate(33);
        }
        n
    }
}

fn mask_text(s: &IpvsService) -> Option<String> {
    let p = s.netmask?;
    Some(if s.addr.is_ipv6() {
        p.to_string()
    } else {
        let bits = if p == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(p))
        };
        std::net::Ipv4Addr::from(bits).to_string()
    })
}

fn method_switch(m: &str) -> &'static str {
    match m {
        "Masq" => "-m",
        "Tunnel" => "-i",
        "FullNat" => "--fullnat",
        _ => "-g",
    }
}

/// `print_service_entry`.
pub fn service_entry(s: &IpvsService, f: Format, out: &mut String) {
    let name = svc_name(s, f);
    if f.rule {
        let _ = write!(out, "-A {name} -s {}", s.scheduler);
        if let Some(t) = s.persistent {
            let _ = write!(out, " -p {t}");
            if let Some(m) = mask_text(s) {
                let _ = write!(out, " -M {m}");
            }
        }
        if !s.flags.is_empty() {
            let _ = write!(out, " -b {}", s.flags.join(","));
        }
    } else if f.stats || f.rate {
        let _ = write!(out, "{name:<33}");
        for v in figures(&s.stats, f) {
            largenum(v, f, out);
        }
    } else {
        let _ = write!(out, "{name} {}", s.scheduler);
        if !s.flags.is_empty() {
            let _ = write!(out, " ({})", s.flags.join(","));
        }
        if let Some(t) = s.persistent {
            let _ = write!(out, " persistent {t}");
            if let Some(m) = mask_text(s) {
                let _ = write!(out, " mask {m}");
            }
        }
        if f.k8s {
            let o = &s.origin;
            let _ = write!(out, " ({} {}/{})", o.kind, o.namespace, o.name);
        }
    }
    out.push('\n');
    let mut dests: Vec<&IpvsDest> = s.dests.iter().collect();
    if !f.nosort {
        msort(&mut dests, &|a, b| cmp_dests(a, b));
    } else {
        // The kernel lists real servers newest first.
        dests.reverse();
    }
    for d in dests {
        dest_entry(s, d, &name, f, out);
    }
    if f.rule {
        // DPVS's local addresses, restorable by -R after the service.
        for l in &s.laddrs {
            let _ = writeln!(out, "--add-laddr -z {} {name}", l.addr);
        }
    }
}

fn dest_entry(s: &IpvsService, d: &IpvsDest, svc_name: &str, f: Format, out: &mut String) {
    let mut dname = addr_port(d.addr, d.port, s.protocol, f.numeric);
    if !f.rule && d.addr.is_ipv4() {
        dname.truncate(28);
    }
    let _ = if f.rule {
        writeln!(
            out,
            "-a {svc_name} -r {dname} {} -w {}",
            method_switch(&d.method),
            d.weight
        )
    } else if f.stats {
        let _ = write!(out, "  -> {dname:<28}");
        for v in figures(&d.stats, f) {
            largenum(v, f, out);
        }
        writeln!(out)
    } else if f.rate {
        // ipvsadm prints the three per-second counts of a real server
        // plainly and only its byte rates through print_largenum.
        let r = figures(&d.stats, f);
        let _ = write!(out, "  -> {dname:<28} {:>8} {:>8} {:>8}", r[0], r[1], r[2]);
        largenum(r[3], f, out);
        largenum(r[4], f, out);
        writeln!(out)
    } else if f.thresholds {
        writeln!(
            out,
            "  -> {dname:<28} {:<10} {:<10} {:<10} {:<10}",
            d.upper, d.lower, d.active, d.inactive
        )
    } else if f.persistent_conn {
        // PersistConn: the server's templates, which the kernel counts
        // apart from ActiveConn and InActConn.
        writeln!(
            out,
            "  -> {dname:<28} {:<9} {:<11} {:<10} {:<10}",
            d.weight, d.persist, d.active, d.inactive
        )
    } else if f.tun_info {
        writeln!(
            out,
            "  -> {dname:<28} {:<7} {:<13} {:<6} {:<10} {:<10}",
            d.method, "n/a", d.weight, d.active, d.inactive
        )
    } else if f.health {
        // Padded to the title's width like every ipvsadm column, the
        // last one included.
        writeln!(
            out,
            "  -> {dname:<28} {:<7} {:<6} {:<10} {:<10} {:<6}",
            d.method,
            d.weight,
            d.active,
            d.inactive,
            d.health.as_deref().unwrap_or("-")
        )
    } else {
        writeln!(
            out,
            "  -> {dname:<28} {:<7} {:<6} {:<10} {:<10}",
            d.method, d.weight, d.active, d.inactive
        )
    };
}

/// The five numbers of `--stats` or of `--rate`, in column order.
fn figures(c: &Counters, f: Format) -> [u64; 5] {
    if f.rate {
        [c.cps, c.inpps, c.outpps, c.inbps, c.outbps]
    } else {
        [c.conns, c.inpkts, c.outpkts, c.inbytes, c.outbytes]
    }
}

/// `print_largenum`: with `--exact` the number in at least 9 columns (one
/// space before it even when longer); otherwise below 10⁸ as is, above in
/// K, M, G or T (thousands, millions, 10⁹, 10¹²), truncated.
pub fn largenum(i: u64, f: Format, out: &mut String) {
    let _ = if f.exact {
        let len = i.to_string().len();
        write!(out, "{i:>w$}", w = if len <= 8 { 9 } else { len + 1 })
    } else if i < 100_000_000 {
        write!(out, "{i:>9}")
    } else if i < 1_000_000_000 {
        write!(out, "{:>8}K", i / 1_000)
    } else if i < 100_000_000_000 {
        write!(out, "{:>8}M", i / 1_000_000)
    } else if i < 100_000_000_000_000 {
        write!(out, "{:>8}G", i / 1_000_000_000)
    } else {
        write!(out, "{:>8}T", i / 1_000_000_000_000)
    };
}

/// `list_conn`: the header, the title and one row per entry
/// (`print_conn`): protocol, expiry as `mm:ss` (minutes may pass 99),
/// state, client, virtual, destination.
pub fn connections(conns: &[IpvsConn], f: Format) -> String {
    let mut out = String::from("IPVS connection entries\n");
    let _ = writeln!(
        out,
        "pro expire {:<11} {:<18} {:<18} destination",
        "state", "source", "virtual"
    );
    for c in conns {
        let a = |e: &End| addr_port(e.addr, e.port, c.protocol, f.numeric);
        let expire = format!("{:02}:{:02}", c.expires / 60, c.expires % 60);
        let _ = writeln!(
            out,
            "{:<3} {expire:<6} {:<11} {:<18} {:<18} {}",
            proto_name(c.protocol),
            c.state,
            a(&c.client),
            a(&c.virt),
            a(&c.dest)
        );
    }
    out
}

/// DPVS's `-G`: a title before the first service, then per service its
/// address (always numeric, no protocol) and number of local addresses,
/// and per local address its text, port conflicts and live flows
/// (`list_laddrs_print_title`, `_service`, `_laddr`). CONFLICTS counts
/// DPVS's ports fetched from its pool that were already in use; Sluice's
/// allocator probes the flow table before it hands out a port
/// (`dataplane/src/snat.rs`) and keeps no count per address: always 0.
/// Services in ipvsadm's sort order (DPVS lists its table's order).
pub fn laddrs(services: &[IpvsService]) -> String {
    let mut out = String::new();
    let mut v: Vec<&IpvsService> = services.iter().collect();
    msort(&mut v, &|a, b| cmp_services(a, b));
    for (i, s) in v.into_iter().enumerate() {
        if i == 0 {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<20} {:<10} {:<10}",
                "VIP:VPORT", "TOTAL", "SNAT_IP", "CONFLICTS", "CONNS"
            );
        }
        let vname = addr_port(s.addr, s.port, s.protocol, true);
        let _ = writeln!(out, "{vname:<20} {:<8} ", s.laddrs.len());
        for l in &s.laddrs {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<20} {:<10} {:<10}",
                "",
                "",
                l.addr.to_string(),
                0,
                l.conns
            );
        }
    }
    out
}

/// `-L --timeout`.
pub fn timeouts(t: &IpvsTimeouts) -> String {
    format!(
        "Timeout (tcp tcpfin udp): {} {} {}\n",
        t.tcp, t.tcpfin, t.udp
    )
}

/// `list_all`: header (not for rules), title, every service.
pub fn list_all(services: &[IpvsService], f: Format) -> String {
    let mut out = String::new();
    if !f.rule {
        out.push_str(HEADER);
    }
    let mut v: Vec<&IpvsService> = services.iter().collect();
    if !f.nosort {
        msort(&mut v, &|a, b| cmp_services(a, b));
    }
    out.push_str(&title(f));
    for s in v {
        service_entry(s, f, &mut out);
    }
    out
}

/// `list_service`: title and one service, no header.
pub fn list_one(s: &IpvsService, f: Format) -> String {
    let mut out = title(f);
    service_entry(s, f, &mut out);
    out
}

/// The 32-bit words of an address in host order (`ntohl` of each).
fn words(a: IpAddr) -> Vec<u32> {
    match a {
        IpAddr::V4(a) => vec![u32::from(a)],
        IpAddr::V6(a) => a
            .octets()
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// `int r = ntohl(a) - ntohl(b)`, word by word: the unsigned difference
/// read as a signed int, so addresses 2^31 or more apart compare the
/// wrong way round (10.1.1.1 sorts after 192.168.1.1), as in ipvsadm.
fn cmp_addr(a: IpAddr, b: IpAddr) -> i32 {
    let mut r = 0i32;
    for (x, y) in words(a).into_iter().zip(words(b)) {
        r = x.wrapping_sub(y) as i32;
        if r != 0 {
            break;
        }
    }
    r
}

fn af(a: IpAddr) -> i32 {
    if a.is_ipv4() {
        2
    } else {
        10
    }
}

/// `ipvs_cmp_services`.
pub fn cmp_services(a: &IpvsService, b: &IpvsService) -> i32 {
    let r = a.fwmark.wrapping_sub(b.fwmark) as i32;
    if r != 0 {
        return r;
    }
    let r = af(a.addr) - af(b.addr);
    if r != 0 {
        return r;
    }
    let r = i32::from(a.protocol) - i32::from(b.protocol);
    if r != 0 {
        return r;
    }
    let r = cmp_addr(a.addr, b.addr);
    if r != 0 {
        return r;
    }
    i32::from(a.port) - i32::from(b.port)
}

/// `ipvs_cmp_dests`.
pub fn cmp_dests(a: &IpvsDest, b: &IpvsDest) -> i32 {
    let r = cmp_addr(a.addr, b.addr);
    if r != 0 {
        return r;
    }
    i32::from(a.port) - i32::from(b.port)
}

/// glibc's `msort_with_tmp`: split at n/2, sort both halves, merge taking
/// the left element while `cmp(left, right) <= 0`. Deterministic for any
/// comparison, consistent or not, and never panics.
pub fn msort<T: Copy>(v: &mut [T], cmp: &dyn Fn(&T, &T) -> i32) {
    let n = v.len();
    if n <= 1 {
        return;
    }
    let n1 = n / 2;
    msort(&mut v[..n1], cmp);
    msort(&mut v[n1..], cmp);
    let mut merged = Vec::with_capacity(n);
    let (mut i, mut j) = (0, n1);
    while i < n1 && j < n {
        if cmp(&v[i], &v[j]) <= 0 {
            merged.push(v[i]);
            i += 1;
        } else {
            merged.push(v[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&v[i..n1]);
    merged.extend_from_slice(&v[j..n]);
    v.copy_from_slice(&merged);
}
