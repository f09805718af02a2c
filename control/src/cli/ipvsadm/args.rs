//! ipvsadm 1.31's command line: popt's option syntax (bundled short
//! options, `-tADDR` or `-t ADDR`, `--long=V` or `--long V`, `-p`'s
//! optional value), the command-versus-option table, and the exact
//! messages and exit codes ipvsadm prints (`../shared/reference`,
//! ipvsadm.c `parse_options`/`process_options`/`generic_opt_check`).
//! Parsing is pure: it returns a [`Parsed`] or the [`Fail`] to print.

use std::net::{IpAddr, Ipv4Addr};

use sluice_dataplane::types::proto;

use crate::config::virtual_service::Method;

/// Why ipvsadm stops: the text for stderr and the exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fail {
    /// Exit code (2 for option errors, 255 for popt's and the kernel's).
    pub code: u8,
    /// The message, without its final newline.
    pub msg: String,
}

/// `fail(2, ...)`.
pub fn fail2(msg: impl Into<String>) -> Fail {
    Fail {
        code: 2,
        msg: msg.into(),
    }
}

/// A kernel-side error (ipvsadm prints `ipvs_strerror` and exits 255).
pub fn fail255(msg: impl Into<String>) -> Fail {
    Fail {
        code: 255,
        msg: msg.into(),
    }
}

fn tryhelp(prog: &str) -> Fail {
    fail255(format!(
        "Try `{prog} -h' or '{prog} --help' for more information."
    ))
}

/// The commands, in ipvsadm's `CMD_*` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// `-A`
    Add,
    /// `-E`
    Edit,
    /// `-D`
    Del,
    /// `-C`
    Flush,
    /// `-L`, `-l`
    List,
    /// `-a`
    AddDest,
    /// `-d`
    DelDest,
    /// `-e`
    EditDest,
    /// `--set`
    Timeout,
    /// `--start-daemon`
    StartDaemon,
    /// `--stop-daemon`
    StopDaemon,
    /// `-R`
    Restore,
    /// `-S`
    Save,
    /// `-Z`
    Zero,
    /// DPVS's `--add-laddr`, `-P`
    AddLaddr,
    /// DPVS's `--del-laddr`, `-Q`
    DelLaddr,
    /// DPVS's `--get-laddr`, `-G`
    GetLaddr,
}

const CMD_NAMES: [&str; 17] = [
    "add-service",
    "edit-service",
    "delete-service",
    "flush",
    "list",
    "add-server",
    "delete-server",
    "edit-server",
    "set",
    "start-daemon",
    "stop-daemon",
    "restore",
    "save",
    "zero",
    "add-laddr",
    "del-laddr",
    "get-laddr",
];

/// Option indices (ipvsadm's `OPTC_*`).
pub mod opt {
    #![allow(missing_docs)]
    pub const NUMERIC: usize = 0;
    pub const CONNECTION: usize = 1;
    pub const SERVICE: usize = 2;
    pub const SCHEDULER: usize = 3;
    pub const PERSISTENT: usize = 4;
    pub const NETMASK: usize = 5;
    pub const SERVER: usize = 6;
    pub const FORWARD: usize = 7;
    pub const WEIGHT: usize = 8;
    pub const UTHRESHOLD: usize = 9;
    pub const LTHRESHOLD: usize = 10;
    pub const MCAST: usize = 11;
    pub const TIMEOUT: usize = 12;
    pub const DAEMON: usize = 13;
    pub const STATS: usize = 14;
    pub const RATE: usize = 15;
    pub const THRESHOLDS: usize = 16;
    pub const PERSISTENTCONN: usize = 17;
    pub const NOSORT: usize = 18;
    pub const SYNCID: usize = 19;
    pub const EXACT: usize = 20;
    pub const ONEPACKET: usize = 21;
    pub const PE: usize = 22;
    pub const SCHED_FLAGS: usize = 23;
    pub const MCAST_GROUP: usize = 24;
    pub const MCAST_PORT: usize = 25;
    pub const MCAST_TTL: usize = 26;
    pub const SYNC_MAXLEN: usize = 27;
    pub const TUN_INFO: usize = 28;
    pub const TUN_TYPE: usize = 29;
    pub const TUN_PORT: usize = 30;
    pub const TUN_NOCSUM: usize = 31;
    pub const TUN_CSUM: usize = 32;
    pub const TUN_REMCSUM: usize = 33;
    /// Sluice's own `--k8s` (outside ipvsadm's table).
    pub const K8S: usize = 34;
    /// Sluice's own `--health` (outside ipvsadm's table).
    pub const HEALTH: usize = 35;
    /// DPVS's `-z` (`--laddr`), named `local-address` in its messages.
    pub const LADDR: usize = 36;
    /// DPVS's `-F` (`--ifname`).
    pub const IFNAME: usize = 37;
}

const OPT_NAMES: [&str; 38] = [
    "numeric",
    "connection",
    "service-address",
    "scheduler",
    "persistent",
    "netmask",
    "real-server",
    "forwarding-method",
    "weight",
    "u-threshold",
    "l-threshold",
    "mcast-interface",
    "timeout",
    "daemon",
    "stats",
    "rate",
    "thresholds",
    "persistent-conn",
    "nosort",
    "syncid",
    "exact",
    "ops",
    "pe",
    "sched-flags",
    "mcast-group",
    "mcast-port",
    "mcast-ttl",
    "sync-maxlen",
    "tun-info",
    "tun-type",
    "tun-port",
    "tun-nocsum",
    "tun-csum",
    "tun-remcsum",
    "k8s",
    "health",
    "local-address",
    "ifname",
];

/// ipvsadm's `commands_v_options` (`+` compulsory, `x` illegal, `1`
/// exclusive, `.` optional), one row per command; `--k8s` and `--health`
/// (allowed with `-L` only) and DPVS's `-z` and `-F` (its local-address
/// commands) are the last four columns. DPVS makes `-F` compulsory with
/// `--add-laddr`/`--del-laddr`; Sluice needs no interface (the address is
/// the host's, on whichever interface has it), so it is optional.
const TABLE: [&str; 17] = [
    "xx+...xxxxxxxxxxxxxxx...xxxxxxxxxxxxxx",
    "xx+...xxxxxxxxxxxxxxx...xxxxxxxxxxxxxx",
    "xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ".11xxxxxxxxx11.......xxxxxxx.xxxxx..xx",
    "xx+xxx+....xxxxxxxxxxxxxxxxxx.....xxxx",
    "xx+xxx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "xx+xxx+....xxxxxxxxxxxxxxxxxx.....xxxx",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "xxxxxxxxxxx.xxxxxxx.xxxx....xxxxxxxxxx",
    "xxxxxxxxxxxxxxxxxxx.xxxxxxxxxxxxxxxxxx",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ".xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "xx.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx+.",
    "xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx+.",
    "xx.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

/// A virtual service as given (`-t`, `-u`, `--sctp-service`, `-f`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Svc {
    /// IP protocol (TCP for fwmark services, as ipvsadm sets it).
    pub proto: u8,
    /// Address (None for fwmark services).
    pub addr: Option<IpAddr>,
    /// Port.
    pub port: u16,
    /// Firewall mark (0: none).
    pub fwmark: u32,
    /// IPv6 (from the address, or `-6` after `-f`).
    pub v6: bool,
}

/// A netmask as given with `-M`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask {
    /// An IPv4 mask.
    V4(u32),
    /// An IPv6 prefix length.
    V6(u8),
}

/// A real server as given (`-r`, `-g/-i/-m`, `-w`, `-x`, `-y`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    /// Address.
    pub addr: Option<IpAddr>,
    /// Port.
    pub port: u16,
    /// Method (ipvsadm's default: direct routing).
    pub method: Method,
    /// Weight (default 1).
    pub weight: u32,
    /// `-x`
    pub upper: u32,
    /// `-y`
    pub lower: u32,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The command.
    pub cmd: Cmd,
    /// Options given, by [`opt`] index bit.
    pub options: u64,
    /// The virtual service.
    pub svc: Svc,
    /// `-s` (default wlc for -A/-E, set by [`process`]).
    pub sched: Option<String>,
    /// `-p` timeout.
    pub persistent: Option<u32>,
    /// `-M`.
    pub netmask: Option<Mask>,
    /// `--pe`.
    pub pe: Option<String>,
    /// `-b` flag names, checked.
    pub flags: Vec<String>,
    /// The real server.
    pub dest: Dest,
    /// `--set` values.
    pub timeouts: Option<(u32, u32, u32)>,
    /// DPVS's `-z`: a local address.
    pub laddr: Option<IpAddr>,
    /// DPVS's `-F`: its interface.
    pub ifname: Option<String>,
}

impl Parsed {
    /// Whether option `o` was given.
    pub fn has(&self, o: usize) -> bool {
        self.options & (1 << o) != 0
    }
}

/// What a command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Print this on stdout and exit 0 (`-h`, `-v`).
    Print(String),
    /// Run a command.
    Run(Box<Parsed>),
}

/// Long options: name, option code, takes an argument.
const LONG: &[(&str, Code, Arg)] = &[
    ("add-service", Code::Cmd(Cmd::Add), Arg::None),
    ("edit-service", Code::Cmd(Cmd::Edit), Arg::None),
    ("delete-service", Code::Cmd(Cmd::Del), Arg::None),
    ("clear", Code::Cmd(Cmd::Flush), Arg::None),
    ("list", Code::Cmd(Cmd::List), Arg::None),
    ("zero", Code::Cmd(Cmd::Zero), Arg::None),
    ("add-server", Code::Cmd(Cmd::AddDest), Arg::None),
    ("edit-server", Code::Cmd(Cmd::EditDest), Arg::None),
    ("delete-server", Code::Cmd(Cmd::DelDest), Arg::None),
    ("set", Code::Cmd(Cmd::Timeout), Arg::None),
    ("help", Code::Help, Arg::None),
    ("version", Code::Version, Arg::None),
    ("restore", Code::Cmd(Cmd::Restore), Arg::None),
    ("save", Code::Cmd(Cmd::Save), Arg::None),
    ("start-daemon", Code::Cmd(Cmd::StartDaemon), Arg::Required),
    ("stop-daemon", Code::Cmd(Cmd::StopDaemon), Arg::Required),
    ("tcp-service", Code::Char('t'), Arg::Required),
    ("udp-service", Code::Char('u'), Arg::Required),
    ("sctp-service", Code::Sctp, Arg::Required),
    ("fwmark-service", Code::Char('f'), Arg::Required),
    ("scheduler", Code::Char('s'), Arg::Required),
    ("persistent", Code::Char('p'), Arg::Optional),
    ("netmask", Code::Char('M'), Arg::Required),
    ("real-server", Code::Char('r'), Arg::Required),
    ("masquerading", Code::Char('m'), Arg::None),
    ("ipip", Code::Char('i'), Arg::None),
    ("gatewaying", Code::Char('g'), Arg::None),
    // DPVS's FULLNAT real servers (long option only: DPVS's -b would
    // clash with ipvsadm's --sched-flags).
    ("fullnat", Code::FullNat, Arg::None),
    ("weight", Code::Char('w'), Arg::Required),
    ("u-threshold", Code::Char('x'), Arg::Required),
    ("l-threshold", Code::Char('y'), Arg::Required),
    ("numeric", Code::Char('n'), Arg::None),
    ("connection", Code::Char('c'), Arg::None),
    ("mcast-interface", Code::Flag(opt::MCAST), Arg::Required),
    ("syncid", Code::Flag(opt::SYNCID), Arg::Required),
    ("timeout", Code::Flag(opt::TIMEOUT), Arg::None),
    ("daemon", Code::Flag(opt::DAEMON), Arg::None),
    ("stats", Code::Flag(opt::STATS), Arg::None),
    ("rate", Code::Flag(opt::RATE), Arg::None),
    ("thresholds", Code::Flag(opt::THRESHOLDS), Arg::None),
    (
        "persistent-conn",
        Code::Flag(opt::PERSISTENTCONN),
        Arg::None,
    ),
    ("nosort", Code::Flag(opt::NOSORT), Arg::None),
    ("sort", Code::Sort, Arg::None),
    ("exact", Code::Char('X'), Arg::None),
    ("ipv6", Code::Char('6'), Arg::None),
    ("ops", Code::Char('o'), Arg::None),
    ("pe", Code::Pe, Arg::Required),
    ("sched-flags", Code::Char('b'), Arg::Required),
    ("mcast-group", Code::Flag(opt::MCAST_GROUP), Arg::Required),
    ("mcast-port", Code::Flag(opt::MCAST_PORT), Arg::Required),
    ("mcast-ttl", Code::Flag(opt::MCAST_TTL), Arg::Required),
    ("sync-maxlen", Code::Flag(opt::SYNC_MAXLEN), Arg::Required),
    ("tun-info", Code::Flag(opt::TUN_INFO), Arg::None),
    ("tun-type", Code::Flag(opt::TUN_TYPE), Arg::Required),
    ("tun-port", Code::Flag(opt::TUN_PORT), Arg::Required),
    ("tun-nocsum", Code::Flag(opt::TUN_NOCSUM), Arg::None),
    ("tun-csum", Code::Flag(opt::TUN_CSUM), Arg::None),
    ("tun-remcsum", Code::Flag(opt::TUN_REMCSUM), Arg::None),
    ("k8s", Code::Flag(opt::K8S), Arg::None),
    ("health", Code::Flag(opt::HEALTH), Arg::None),
    // DPVS's local addresses (FULLNAT).
    ("add-laddr", Code::Cmd(Cmd::AddLaddr), Arg::None),
    ("del-laddr", Code::Cmd(Cmd::DelLaddr), Arg::None),
    ("get-laddr", Code::Cmd(Cmd::GetLaddr), Arg::None),
    ("laddr", Code::Char('z'), Arg::Required),
    ("ifname", Code::Char('F'), Arg::Required),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Code {
    Cmd(Cmd),
    Help,
    Version,
    Char(char),
    Sctp,
    Pe,
    Sort,
    FullNat,
    Flag(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arg {
    None,
    Required,
    Optional,
}

fn short(c: char) -> Option<(Code, Arg)> {
    let cmd = |k| Some((Code::Cmd(k), Arg::None));
    match c {
        'A' => cmd(Cmd::Add),
        'E' => cmd(Cmd::Edit),
        'D' => cmd(Cmd::Del),
        'C' => cmd(Cmd::Flush),
        'L' | 'l' => cmd(Cmd::List),
        'Z' => cmd(Cmd::Zero),
        'a' => cmd(Cmd::AddDest),
        'e' => cmd(Cmd::EditDest),
        'd' => cmd(Cmd::DelDest),
        'R' => cmd(Cmd::Restore),
        'S' => cmd(Cmd::Save),
        'P' => cmd(Cmd::AddLaddr),
        'Q' => cmd(Cmd::DelLaddr),
        'G' => cmd(Cmd::GetLaddr),
        'h' => Some((Code::Help, Arg::None)),
        'v' => Some((Code::Version, Arg::None)),
        't' | 'u' | 'f' | 's' | 'M' | 'r' | 'w' | 'x' | 'y' | 'b' | 'z' | 'F' => {
            Some((Code::Char(c), Arg::Required))
        }
        'p' => Some((Code::Char(c), Arg::Optional)),
        'm' | 'i' | 'g' | 'n' | 'c' | 'X' | '6' | 'o' => Some((Code::Char(c), Arg::None)),
        _ => None,
    }
}

/// One option occurrence: code, its text as typed, its value.
struct Occ {
    code: Code,
    text: String,
    value: Option<String>,
}

/// popt's scan: the options in order and the leftover arguments.
fn scan(args: &[String]) -> Result<(Vec<Occ>, Vec<String>), (bool, Fail)> {
    let mut occ = Vec::new();
    let mut rest = Vec::new();
    let mut i = 0;
    let popt = |text: &str, why: &str| (true, fail255(format!("{text}: {why}")));
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            rest.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let Some(&(_, code, arg)) = LONG.iter().find(|(n, _, _)| *n == name) else {
                return Err(popt(a, "unknown option"));
            };
            let value =
                take_value(arg, inline, args, &mut i).map_err(|_| popt(a, "missing argument"))?;
            occ.push(Occ {
                code,
                text: format!("--{name}"),
                value,
            });
        } else if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                let Some((code, arg)) = short(c) else {
                    return Err(popt(&format!("-{c}"), "unknown option"));
                };
                let inline: String = chars[j..].iter().collect();
                let inline = (arg != Arg::None && !inline.is_empty()).then(|| {
                    j = chars.len();
                    inline
                });
                let value = take_value(arg, inline, args, &mut i)
                    .map_err(|_| popt(&format!("-{c}"), "missing argument"))?;
                occ.push(Occ {
                    code,
                    text: format!("-{c}"),
                    value,
                });
            }
        } else {
            rest.push(a.clone());
        }
    }
    Ok((occ, rest))
}

fn take_value(
    arg: Arg,
    inline: Option<String>,
    args: &[String],
    i: &mut usize,
) -> Result<Option<String>, ()> {
    match (arg, inline) {
        (Arg::None, _) => Ok(None),
        (_, Some(v)) => Ok(Some(v)),
        (Arg::Required, None) => {
            let v = args.get(*i).cloned().ok_or(())?;
            *i += 1;
            Ok(Some(v))
        }
        (Arg::Optional, None) => match args.get(*i) {
            Some(v) if !v.starts_with('-') => {
                *i += 1;
                Ok(Some(v.clone()))
            }
            _ => Ok(None),
        },
    }
}

/// Parses one command line (`args` without the program name); `prog` is
/// the name messages use; `reading_stdin` forbids `-R` (inside `-R`).
///
/// # Errors
/// The [`Fail`] ipvsadm would print.
pub fn parse(prog: &str, args: &[String], reading_stdin: bool) -> Result<Action, Fail> {
    let (occ, rest) = match scan(args) {
        Ok(x) => x,
        // popt's error on the first option: ipvsadm prints its "Try" line.
        Err((_, f)) if first_is_bad(args) => return Err(tryhelp_or(prog, f)),
        Err((_, f)) => return Err(f),
    };
    let mut it = occ.into_iter();
    let first = it.next().ok_or_else(|| tryhelp(prog))?;
    let cmd = match first.code {
        Code::Cmd(c) => c,
        Code::Help => return Ok(Action::Print(super::usage(prog))),
        Code::Version => return Ok(Action::Print(format!("{}\n", super::VERSION))),
        _ => return Err(tryhelp(prog)),
    };
    if cmd == Cmd::Restore && reading_stdin {
        return Err(tryhelp(prog));
    }
    let mut p = Parsed {
        cmd,
        options: 0,
        svc: Svc::default(),
        sched: None,
        persistent: None,
        netmask: None,
        pe: None,
        flags: Vec::new(),
        dest: Dest {
            addr: None,
            port: 0,
            method: Method::Route,
            weight: 1,
            upper: 0,
            lower: 0,
        },
        timeouts: None,
        laddr: None,
        ifname: None,
    };
    if let Some(v) = &first.value {
        if v != "master" && v != "backup" {
            return Err(fail2(if cmd == Cmd::StartDaemon {
                "illegal start-daemon parameter specified"
            } else {
                "illegal start_daemon specified"
            }));
        }
    }
    let mut flags_arg = None;
    for o in it {
        option(&mut p, o, &mut flags_arg)?;
    }
    let mut rest = rest.into_iter();
    if cmd == Cmd::Timeout {
        let vals: Vec<String> = rest.by_ref().take(3).collect();
        if vals.len() < 3 {
            return Err(fail2("--set option requires 3 timeout values"));
        }
        let t = |s: &str| parse_timeout(Some(s), 0);
        p.timeouts = Some((t(&vals[0])?, t(&vals[1])?, t(&vals[2])?));
    }
    if let Some(extra) = rest.next() {
        return Err(fail2(format!("unexpected argument {extra}")));
    }
    if let Some(f) = flags_arg {
        p.flags = parse_sched_flags(p.sched.as_deref().unwrap_or("wlc"), &f)?;
    }
    process(&mut p)?;
    Ok(Action::Run(Box::new(p)))
}

fn first_is_bad(args: &[String]) -> bool {
    args.first().is_some_and(|a| {
        a.starts_with('-') && a.len() > 1 && {
            let (o, _) = match scan(std::slice::from_ref(a)) {
                Ok(x) => x,
                Err(_) => return true,
            };
            o.is_empty()
        }
    })
}

fn tryhelp_or(prog: &str, _popt: Fail) -> Fail {
    tryhelp(prog)
}

fn set(p: &mut Parsed, o: usize) -> Result<(), Fail> {
    if p.has(o) {
        return Err(fail2(format!(
            "multiple '{}' options specified",
            OPT_NAMES[o]
        )));
    }
    p.options |= 1 << o;
    Ok(())
}

fn option(p: &mut Parsed, o: Occ, flags_arg: &mut Option<String>) -> Result<(), Fail> {
    let v = o.value.clone().unwrap_or_default();
    match o.code {
        Code::Char(c @ ('t' | 'u')) => {
            set(p, opt::SERVICE)?;
            p.svc.proto = if c == 'u' { proto::UDP } else { proto::TCP };
            service(p, &v)?;
        }
        Code::Sctp => {
            set(p, opt::SERVICE)?;
            p.svc.proto = proto::SCTP;
            service(p, &v)?;
        }
        Code::Char('f') => {
            set(p, opt::SERVICE)?;
            p.svc.proto = proto::TCP;
            p.svc.v6 = false;
            p.svc.fwmark = match v.parse::<i64>() {
                Ok(m) if m > 0 && m <= i64::from(u32::MAX) => m as u32,
                _ => return Err(fail2(format!("invalid fwmark value `{v}' specified"))),
            };
        }
        Code::Char('s') => {
            set(p, opt::SCHEDULER)?;
            p.sched = Some(v.chars().take(15).collect());
        }
        Code::Char('p') => {
            set(p, opt::PERSISTENT)?;
            p.persistent = Some(parse_timeout(o.value.as_deref(), 1)?);
        }
        Code::Char('M') => {
            set(p, opt::NETMASK)?;
            p.netmask = Some(if p.svc.v6 {
                match v.parse::<i64>() {
                    Ok(n) if (1..=128).contains(&n) => Mask::V6(n as u8),
                    _ => return Err(fail2("illegal ipv6 netmask specified")),
                }
            } else {
                let m: Ipv4Addr = v
                    .parse()
                    .map_err(|_| fail2("illegal virtual server persistent mask specified"))?;
                Mask::V4(u32::from(m))
            });
        }
        Code::Char('r') => {
            set(p, opt::SERVER)?;
            let (addr, port) = parse_addr_port(&v, p.svc.proto)
                .ok_or_else(|| fail2("illegal real server address[:port] specified"))?;
            p.dest.addr = Some(addr);
            p.dest.port = port.unwrap_or(p.svc.port);
        }
        Code::Char(c @ ('i' | 'g' | 'm')) => {
            set(p, opt::FORWARD)?;
            p.dest.method = match c {
                'i' => Method::Tunnel,
                'm' => Method::Masq,
                _ => Method::Route,
            };
        }
        Code::Char('w') => {
            set(p, opt::WEIGHT)?;
            p.dest.weight = number(&v, 65535).ok_or_else(|| fail2("illegal weight specified"))?;
        }
        Code::Char('x') => {
            set(p, opt::UTHRESHOLD)?;
            p.dest.upper = number(&v, i32::MAX as u32)
                .ok_or_else(|| fail2("illegal u_threshold specified"))?;
        }
        Code::Char('y') => {
            set(p, opt::LTHRESHOLD)?;
            p.dest.lower = number(&v, i32::MAX as u32)
                .ok_or_else(|| fail2("illegal l_threshold specified"))?;
        }
        Code::Char('z') => {
            set(p, opt::LADDR)?;
            let (addr, _) =
                parse_addr_port(&v, p.svc.proto).ok_or_else(|| fail2("illegal local address"))?;
            p.laddr = Some(addr);
        }
        Code::Char('F') => {
            set(p, opt::IFNAME)?;
            p.ifname = Some(v);
        }
        Code::Char('c') => set(p, opt::CONNECTION)?,
        Code::Char('n') => set(p, opt::NUMERIC)?,
        Code::Char('X') => set(p, opt::EXACT)?,
        Code::Char('6') => {
            if p.svc.fwmark != 0 {
                p.svc.v6 = true;
            } else {
                return Err(fail2("-6 used before -f\n"));
            }
        }
        Code::Char('o') => set(p, opt::ONEPACKET)?,
        Code::Pe => {
            set(p, opt::PE)?;
            p.pe = Some(v);
        }
        Code::Char('b') => {
            set(p, opt::SCHED_FLAGS)?;
            *flags_arg = Some(v);
        }
        Code::Sort => {}
        Code::FullNat => {
            set(p, opt::FORWARD)?;
            p.dest.method = Method::FullNat;
        }
        Code::Flag(f) => {
            set(p, f)?;
            flag_value(f, &v)?;
        }
        Code::Cmd(_) | Code::Help | Code::Version | Code::Char(_) => {
            return Err(fail2(format!("invalid option `{}'", o.text)))
        }
    }
    Ok(())
}

/// The checks ipvsadm makes on the values of the daemon and tunnel options.
fn flag_value(f: usize, v: &str) -> Result<(), Fail> {
    let check = |max: u32, what: &str| {
        number(v, max)
            .filter(|n| *n >= 1 || what == "syncid")
            .map(|_| ())
            .ok_or_else(|| fail2(format!("illegal {what} specified")))
    };
    match f {
        opt::SYNCID => check(255, "syncid"),
        opt::MCAST_PORT => check(65535, "mcast-port"),
        opt::MCAST_TTL => check(255, "mcast-ttl"),
        opt::SYNC_MAXLEN => check(65535 - 28, "sync-maxlen"),
        opt::TUN_PORT => check(65535, "tunnel port"),
        opt::TUN_TYPE if !["ipip", "gue", "gre"].contains(&v) => {
            Err(fail2("illegal tunnel type specified"))
        }
        _ => Ok(()),
    }
}

/// ipvsadm's `string_to_number(s, 0, max)`.
fn number(s: &str, max: u32) -> Option<u32> {
    s.parse::<i64>()
        .ok()
        .filter(|n| (0..=i64::from(max)).contains(n))
        .map(|n| n as u32)
}

fn parse_timeout(v: Option<&str>, min: i64) -> Result<u32, Fail> {
    let Some(v) = v else {
        return Ok(crate::config::virtual_service::DEFAULT_TIMEOUT);
    };
    match v.parse::<i64>() {
        Ok(n) if n >= min && n <= crate::config::virtual_service::MAX_TIMEOUT => Ok(n as u32),
        _ => Err(fail2(format!("invalid timeout value `{v}' specified"))),
    }
}

fn service(p: &mut Parsed, v: &str) -> Result<(), Fail> {
    let (addr, port) = parse_addr_port(v, p.svc.proto)
        .ok_or_else(|| fail2("illegal virtual server address[:port] specified"))?;
    p.svc.v6 = addr.is_ipv6();
    p.svc.addr = Some(addr);
    if let Some(port) = port {
        p.svc.port = port;
    }
    Ok(())
}

/// ipvsadm's `parse_service`: `a.b.c.d[:port]`, `[v6]:port` or a bare
/// IPv6 address; a port is a number or a name from /etc/services. Host
/// names are not resolved (Sluice does not use the resolver here).
pub fn parse_addr_port(s: &str, proto: u8) -> Option<(IpAddr, Option<u16>)> {
    if s.is_empty() || s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        (h, Some(p.strip_prefix(':')?))
    } else if s.parse::<std::net::Ipv6Addr>().is_ok() {
        (s, None)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let addr: IpAddr = if s.starts_with('[') {
        IpAddr::V6(host.parse().ok()?)
    } else {
        host.parse().ok()?
    };
    let port = match port {
        None => None,
        Some(p) => Some(match number(p, 65535) {
            Some(n) => n as u16,
            None => super::services::port_by_name(p, proto)?,
        }),
    };
    Some((addr, port))
}

/// ipvsadm's `parse_sched_flags`.
fn parse_sched_flags(sched: &str, arg: &str) -> Result<Vec<String>, Fail> {
    let mut out = Vec::new();
    for flag in arg.split(',').filter(|f| !f.is_empty()) {
        match flag {
            "flag-1" | "flag-2" | "flag-3" => {}
            "sh-fallback" | "sh-port" if sched != "sh" => {
                return Err(fail2(format!("incompatible scheduler flag `{flag}'")))
            }
            "mh-fallback" | "mh-port" if sched != "mh" => {
                return Err(fail2(format!("incompatible scheduler flag `{flag}'")))
            }
            "sh-fallback" | "sh-port" | "mh-fallback" | "mh-port" => {}
            _ => return Err(fail2(format!("invalid scheduler flag `{flag}'"))),
        }
        if !out.iter().any(|f| f == flag) {
            out.push(flag.to_owned());
        }
    }
    Ok(out)
}

/// `generic_opt_check` and the per-command checks of `process_options`.
fn process(p: &mut Parsed) -> Result<(), Fail> {
    let row = TABLE[p.cmd as usize].as_bytes();
    let cmd = CMD_NAMES[p.cmd as usize];
    let mut last = None;
    for (j, &rule) in row.iter().enumerate() {
        if !p.has(j) {
            if rule == b'+' {
                return Err(fail2(format!(
                    "You need to supply the '{}' option for the '{cmd}' command",
                    OPT_NAMES[j]
                )));
            }
            continue;
        }
        match rule {
            b'x' => {
                return Err(fail2(format!(
                    "Illegal '{}' option with the '{cmd}' command",
                    OPT_NAMES[j]
                )))
            }
            b'1' => match last {
                None => last = Some(j),
                Some(l) => {
                    return Err(fail2(format!(
                        "The option '{}' conflicts with the '{}' option in the '{cmd}' command",
                        OPT_NAMES[j], OPT_NAMES[l]
                    )))
                }
            },
            _ => {}
        }
    }
    match p.cmd {
        Cmd::Add | Cmd::Edit => {
            if p.svc.fwmark == 0 && p.svc.port == 0 && !p.has(opt::PERSISTENT) {
                return Err(fail2("Zero port specified for non-persistent service"));
            }
            if p.has(opt::ONEPACKET) && p.svc.fwmark == 0 && p.svc.proto != proto::UDP {
                return Err(fail2(
                    "One-Packet Scheduling is only for UDP virtual services",
                ));
            }
            if p.sched.as_deref().is_none_or(str::is_empty) {
                p.sched = Some("wlc".into());
            }
        }
        Cmd::AddDest | Cmd::EditDest => {
            if p.svc.fwmark == 0 && matches!(p.dest.method, Method::Tunnel | Method::Route) {
                p.dest.port = p.svc.port;
            }
            let dest_v6 = p.dest.addr.is_some_and(|a| a.is_ipv6());
            if dest_v6 != p.svc.v6 && p.dest.method != Method::Tunnel {
                return Err(fail2(
                    "Different address family is allowed only for tunneling servers",
                ));
            }
            let tun = [
                opt::TUN_TYPE,
                opt::TUN_PORT,
                opt::TUN_NOCSUM,
                opt::TUN_CSUM,
                opt::TUN_REMCSUM,
            ];
            if tun.iter().any(|&o| p.has(o)) && p.dest.method != Method::Tunnel {
                return Err(fail2("Tunnel options conflict with forward method"));
            }
        }
        Cmd::List => {
            let a = [opt::CONNECTION, opt::TIMEOUT, opt::DAEMON]
                .iter()
                .any(|&o| p.has(o));
            let b = [opt::STATS, opt::RATE, opt::THRESHOLDS]
                .iter()
                .any(|&o| p.has(o));
            let c = [opt::TIMEOUT, opt::DAEMON].iter().any(|&o| p.has(o));
            // `--health` adds a column to the plain layout only.
            let other_layout = [
                opt::CONNECTION,
                opt::TIMEOUT,
                opt::DAEMON,
                opt::STATS,
                opt::RATE,
                opt::THRESHOLDS,
                opt::PERSISTENTCONN,
                opt::TUN_INFO,
            ]
            .iter()
            .any(|&o| p.has(o));
            if (a && b) || (c && p.has(opt::PERSISTENTCONN)) || (p.has(opt::HEALTH) && other_layout)
            {
                return Err(fail2("options conflicts in the list command"));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Result<Parsed, Fail> {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        match parse("ipvsadm", &args, false)? {
            Action::Run(p) => Ok(*p),
            Action::Print(_) => panic!("printed"),
        }
    }

    fn err(line: &str) -> (u8, String) {
        let f = run(line).expect_err(line);
        (f.code, f.msg)
    }

    #[test]
    fn good_lines() {
        let p = run("-A -t 198.18.0.1:80 -s rr -p 300 -M 255.255.255.0").unwrap();
        assert_eq!(p.cmd, Cmd::Add);
        assert_eq!(p.svc.addr, Some("198.18.0.1".parse().unwrap()));
        assert_eq!((p.svc.port, p.svc.proto), (80, proto::TCP));
        assert_eq!(p.sched.as_deref(), Some("rr"));
        assert_eq!(p.persistent, Some(300));
        assert_eq!(p.netmask, Some(Mask::V4(0xffff_ff00)));
        let p = run("-A -t 198.18.0.1:80").unwrap();
        assert_eq!(p.sched.as_deref(), Some("wlc"));
        let p = run("-A -t198.18.0.1:80 -p").unwrap();
        assert_eq!(p.persistent, Some(360));
        let p = run(
            "--add-server --tcp-service=[2001:db8::1]:443 -r [2001:db8::2]:8443 -m -w 3 -x 10 -y 5",
        )
        .unwrap();
        assert_eq!(p.dest.addr, Some("2001:db8::2".parse().unwrap()));
        assert_eq!(
            (p.dest.port, p.dest.method, p.dest.weight),
            (8443, Method::Masq, 3)
        );
        assert_eq!((p.dest.upper, p.dest.lower), (10, 5));
        // -g forces the service port; a bare -r address copies it.
        let p = run("-a -t 198.18.0.1:80 -r 198.18.1.1:8080 -g").unwrap();
        assert_eq!(p.dest.port, 80);
        let p = run("-a -t 198.18.0.1:80 -r 198.18.1.1 -m").unwrap();
        assert_eq!(p.dest.port, 80);
        let p = run("-Ln").unwrap();
        assert!(p.has(opt::NUMERIC) && p.cmd == Cmd::List);
        let p = run("-Ln --health --k8s -t 198.18.0.1:80").unwrap();
        assert!(p.has(opt::HEALTH) && p.has(opt::K8S) && p.cmd == Cmd::List);
        let p = run("-A -u 198.18.0.1:53 -s sh -b sh-fallback,sh-port").unwrap();
        assert_eq!(p.flags, vec!["sh-fallback", "sh-port"]);
        let p = run("-A -f 7 -6 -s rr -p 60 -M 64").unwrap();
        assert!(p.svc.v6 && p.svc.fwmark == 7 && p.netmask == Some(Mask::V6(64)));
        let p = run("-A -t 198.18.0.1:http").unwrap();
        assert_eq!(p.svc.port, 80);
        let p = run("--add-laddr -z 198.18.1.5 -t 198.18.0.1:80 -F back").unwrap();
        assert_eq!(p.cmd, Cmd::AddLaddr);
        assert_eq!(p.laddr, Some("198.18.1.5".parse().unwrap()));
        assert_eq!(p.ifname.as_deref(), Some("back"));
        let p = run("-Q -z 2001:db8::5 -u [2001:db8::1]:53").unwrap();
        assert_eq!(
            (p.cmd, p.laddr),
            (Cmd::DelLaddr, Some("2001:db8::5".parse().unwrap()))
        );
        assert!(p.ifname.is_none());
        let p = run("-G").unwrap();
        assert!(p.cmd == Cmd::GetLaddr && !p.has(opt::SERVICE));
        let p = run("--get-laddr -t 198.18.0.1:80").unwrap();
        assert!(p.cmd == Cmd::GetLaddr && p.has(opt::SERVICE));
    }

    #[test]
    fn bad_lines_fail_as_ipvsadm() {
        let cases: &[(&str, u8, &str)] = &[
            ("", 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information."),
            ("-t 198.18.0.1:80", 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information."),
            ("--bogus", 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information."),
            ("-A -t 198.18.0.1:80 --bogus", 255, "--bogus: unknown option"),
            ("-A -t", 255, "-t: missing argument"),
            ("-A -D", 2, "invalid option `-D'"),
            ("-A", 2, "You need to supply the 'service-address' option for the 'add-service' command"),
            ("-A -t 198.18.0.1:80 -r 198.18.1.1", 2, "Illegal 'real-server' option with the 'add-service' command"),
            ("-a -t 198.18.0.1:80", 2, "You need to supply the 'real-server' option for the 'add-server' command"),
            ("-d -t 198.18.0.1:80 -r 198.18.1.1 -m", 2, "Illegal 'forwarding-method' option with the 'delete-server' command"),
            ("-A -t 198.18.0.1:80 -s rr -s wrr", 2, "multiple 'scheduler' options specified"),
            ("-A -t 80", 2, "illegal virtual server address[:port] specified"),
            ("-A -t 198.18.0.1:99999", 2, "illegal virtual server address[:port] specified"),
            ("-A -t [2001:db8::1]", 2, "illegal virtual server address[:port] specified"),
            ("-a -t 198.18.0.1:80 -r bogus", 2, "illegal real server address[:port] specified"),
            ("-a -t 198.18.0.1:80 -r 198.18.1.1 -w 65536", 2, "illegal weight specified"),
            ("-a -t 198.18.0.1:80 -r 198.18.1.1 -x -1", 2, "illegal u_threshold specified"),
            ("-a -t 198.18.0.1:80 -r 198.18.1.1 -x", 255, "-x: missing argument"),
            ("-a -t 198.18.0.1:80 -r 198.18.1.1 -y x", 2, "illegal l_threshold specified"),
            ("-A -t 198.18.0.1:80 -p 0", 2, "invalid timeout value `0' specified"),
            ("-A -f 0", 2, "invalid fwmark value `0' specified"),
            ("-A -6 -f 1", 2, "-6 used before -f\n"),
            ("-A -t 198.18.0.1:80 -p -M 255.255.255.x", 2, "illegal virtual server persistent mask specified"),
            ("-A -f 1 -6 -p -M 129", 2, "illegal ipv6 netmask specified"),
            ("-A -t 198.18.0.1:0", 2, "Zero port specified for non-persistent service"),
            ("-A -t 198.18.0.1:80 -o", 2, "One-Packet Scheduling is only for UDP virtual services"),
            ("-A -t 198.18.0.1:80 -s rr -b sh-port", 2, "incompatible scheduler flag `sh-port'"),
            ("-A -t 198.18.0.1:80 -b nope", 2, "invalid scheduler flag `nope'"),
            ("-a -t 198.18.0.1:80 -r [2001:db8::1]:80 -m", 2, "Different address family is allowed only for tunneling servers"),
            ("-a -t 198.18.0.1:80 -r 198.18.1.1 -m --tun-type ipip", 2, "Tunnel options conflict with forward method"),
            ("-a -t 198.18.0.1:80 -r 198.18.1.1 -i --tun-type foo", 2, "illegal tunnel type specified"),
            ("-L -c --stats", 2, "options conflicts in the list command"),
            ("-L --timeout --persistent-conn", 2, "options conflicts in the list command"),
            ("-Ln --health --stats", 2, "options conflicts in the list command"),
            ("-Ln --health --thresholds", 2, "options conflicts in the list command"),
            ("-Ln --health --tun-info", 2, "options conflicts in the list command"),
            ("-Lnc --health", 2, "options conflicts in the list command"),
            ("-S --health", 2, "Illegal 'health' option with the 'save' command"),
            ("-A -t 198.18.0.1:80 --health", 2, "Illegal 'health' option with the 'add-service' command"),
            ("-L -c -t 198.18.0.1:80", 2, "The option 'service-address' conflicts with the 'connection' option in the 'list' command"),
            ("--set 1 2", 2, "--set option requires 3 timeout values"),
            ("-C extra", 2, "unexpected argument extra"),
            ("-S -t 198.18.0.1:80", 2, "Illegal 'service-address' option with the 'save' command"),
            ("--start-daemon bogus", 2, "illegal start-daemon parameter specified"),
            ("-A -t 198.18.0.1:80 --k8s", 2, "Illegal 'k8s' option with the 'add-service' command"),
            ("--add-laddr -t 198.18.0.1:80", 2, "You need to supply the 'local-address' option for the 'add-laddr' command"),
            ("--add-laddr -z 198.18.1.5", 2, "You need to supply the 'service-address' option for the 'add-laddr' command"),
            ("--del-laddr -t 198.18.0.1:80", 2, "You need to supply the 'local-address' option for the 'del-laddr' command"),
            ("--add-laddr -z bogus -t 198.18.0.1:80", 2, "illegal local address"),
            ("--add-laddr -z 198.18.1.5 -z 198.18.1.6 -t 198.18.0.1:80", 2, "multiple 'local-address' options specified"),
            ("--add-laddr -z 198.18.1.5 -t 198.18.0.1:80 -r 198.18.1.1", 2, "Illegal 'real-server' option with the 'add-laddr' command"),
            ("-G -z 198.18.1.5", 2, "Illegal 'local-address' option with the 'get-laddr' command"),
            ("-G -n", 2, "Illegal 'numeric' option with the 'get-laddr' command"),
            ("-A -t 198.18.0.1:80 -z 198.18.1.5", 2, "Illegal 'local-address' option with the 'add-service' command"),
            ("-L -F back", 2, "Illegal 'ifname' option with the 'list' command"),
        ];
        for (line, code, msg) in cases {
            assert_eq!(err(line), (*code, (*msg).to_owned()), "{line}");
        }
    }

    #[test]
    fn restore_inside_restore_and_help() {
        let f = parse("ipvsadm", &["-R".to_owned()], true).unwrap_err();
        assert_eq!(f.code, 255);
        assert!(
            matches!(parse("ipvsadm", &["-v".to_owned()], false), Ok(Action::Print(v)) if v.starts_with("ipvsadm v1.31 2019/12/24"))
        );
        assert!(matches!(
            parse("ipvsadm", &["-h".to_owned()], false),
            Ok(Action::Print(_))
        ));
    }
}
