//! The Linux capabilities `sluice run` needs, checked before anything is
//! touched, so that a missing one is named instead of surfacing later as a
//! bare `EPERM` from the kernel.
//!
//! Why each one (kernel 6.x; found by running `sluice run` as `nobody`
//! with `setpriv --ambient-caps`, one capability fewer each time:
//! `tests/tests/privileges.rs`):
//! - `CAP_NET_ADMIN`: attaching an XDP program to a link, netlink link
//!   changes;
//! - `CAP_NET_RAW`: creating AF_XDP sockets (`xsk_create`);
//! - `CAP_BPF`: loading the steering program and creating its maps
//!   (`CAP_SYS_ADMIN` also grants it, as on kernels before 5.8);
//! - `CAP_PERFMON`: the verifier's pointer arithmetic in the steering
//!   program;
//! - `CAP_IPC_LOCK`: pinning the UMEM (AF_XDP charges it to
//!   `RLIMIT_MEMLOCK` unless the process has it); not needed when the
//!   memlock limit is unlimited (systemd `LimitMEMLOCK=infinity`);
//! - `CAP_NET_BIND_SERVICE`: only with `--dns` on a port below 1024.
//!
//! Root has them all; nothing is checked by user id.

use std::fmt;

/// One capability: its number (`linux/capability.h`) and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Bit number in the capability sets.
    pub bit: u32,
    /// Name as `capsh`, `setpriv` and systemd spell it.
    pub name: &'static str,
    /// What sluice needs it for.
    pub why: &'static str,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.why)
    }
}

/// `CAP_NET_ADMIN`.
pub const NET_ADMIN: Cap = Cap {
    bit: 12,
    name: "CAP_NET_ADMIN",
    why: "attach the XDP steering program",
};
/// `CAP_NET_RAW`.
pub const NET_RAW: Cap = Cap {
    bit: 13,
    name: "CAP_NET_RAW",
    why: "create AF_XDP sockets",
};
/// `CAP_IPC_LOCK`.
pub const IPC_LOCK: Cap = Cap {
    bit: 14,
    name: "CAP_IPC_LOCK",
    why: "pin the UMEM beyond RLIMIT_MEMLOCK",
};
/// `CAP_NET_BIND_SERVICE`.
pub const NET_BIND_SERVICE: Cap = Cap {
    bit: 10,
    name: "CAP_NET_BIND_SERVICE",
    why: "serve --dns on a port below 1024",
};
/// `CAP_SYS_ADMIN` (grants what `CAP_BPF` and `CAP_PERFMON` do).
pub const SYS_ADMIN: Cap = Cap {
    bit: 21,
    name: "CAP_SYS_ADMIN",
    why: "",
};
/// `CAP_PERFMON`.
pub const PERFMON: Cap = Cap {
    bit: 38,
    name: "CAP_PERFMON",
    why: "verify the steering program's pointer arithmetic",
};
/// `CAP_BPF`.
pub const BPF: Cap = Cap {
    bit: 39,
    name: "CAP_BPF",
    why: "load the steering program and its maps",
};

/// Capabilities `sluice run` is missing.
#[derive(Debug, thiserror::Error)]
#[error("sluice run lacks {}: run it as root, or grant them (systemd AmbientCapabilities=, or setpriv --inh-caps/--ambient-caps); see README \"Running as a service\"", list(.missing))]
pub struct CapsError {
    /// The capabilities not in the effective set, each with its use.
    pub missing: Vec<Cap>,
}

fn list(caps: &[Cap]) -> String {
    caps.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the process has and is allowed: the inputs of [`missing`].
#[derive(Clone, Copy, Debug)]
pub struct Privileges {
    /// The effective capability set (`CapEff` in `/proc/self/status`).
    pub effective: u64,
    /// The `RLIMIT_MEMLOCK` soft limit in bytes (`None`: unlimited).
    pub memlock: Option<u64>,
}

/// UMEM bytes the default start pins at most per worker socket set; a
/// memlock limit below this needs `CAP_IPC_LOCK`. Kept generous: the
/// sizes live in `XskConfig` and may grow.
pub const UMEM_MEMLOCK_BYTES: u64 = 64 << 20;

/// The capabilities missing from `p` for a start with `--dns` on
/// `dns_port` (if any).
pub fn missing(p: Privileges, dns_port: Option<u16>) -> Vec<Cap> {
    let has = |c: Cap| p.effective & (1u64 << c.bit) != 0;
    let mut out = Vec::new();
    for c in [NET_ADMIN, NET_RAW] {
        if !has(c) {
            out.push(c);
        }
    }
    for c in [BPF, PERFMON] {
        if !has(c) && !has(SYS_ADMIN) {
            out.push(c);
        }
    }
    let memlock_ok = p.memlock.is_none_or(|m| m >= UMEM_MEMLOCK_BYTES);
    if !memlock_ok && !has(IPC_LOCK) {
        out.push(IPC_LOCK);
    }
    if dns_port.is_some_and(|port| port < 1024 && port != 0) && !has(NET_BIND_SERVICE) {
        out.push(NET_BIND_SERVICE);
    }
    out
}

/// This process's [`Privileges`]; an unreadable `/proc/self/status`
/// counts as no capabilities.
pub fn current() -> Privileges {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Privileges {
        effective: parse_cap_eff(&status).unwrap_or(0),
        memlock: memlock_limit(),
    }
}

/// `CapEff` out of the text of `/proc/self/status`.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit that getrlimit only writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Some(0);
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Fails with the capabilities `sluice run` lacks, before it touches
/// anything.
///
/// # Errors
/// [`CapsError`] naming each missing capability and what it is for.
pub fn check_run(dns_port: Option<u16>) -> Result<(), CapsError> {
    if std::env::var_os("SLUICE_SKIP_CAPS_CHECK").is_some() {
        return Ok(());
    }
    let missing = missing(current(), dns_port);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapsError { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(caps: &[Cap], memlock: Option<u64>) -> Privileges {
        Privileges {
            effective: caps.iter().fold(0, |m, c| m | (1u64 << c.bit)),
            memlock,
        }
    }

    const ALL: &[Cap] = &[NET_ADMIN, NET_RAW, BPF, PERFMON, IPC_LOCK];

    #[test]
    fn the_listed_set_is_enough_and_each_one_is_named_when_missing() {
        assert!(missing(with(ALL, Some(8 << 20)), None).is_empty());
        for c in ALL {
            let fewer: Vec<Cap> = ALL.iter().copied().filter(|o| o != c).collect();
            assert_eq!(missing(with(&fewer, Some(8 << 20)), None), vec![*c]);
        }
        assert_eq!(missing(with(&[], Some(8 << 20)), None).len(), 5);
    }

    #[test]
    fn ipc_lock_only_below_the_umem_memlock_and_sys_admin_stands_in_for_bpf() {
        let four = [NET_ADMIN, NET_RAW, BPF, PERFMON];
        assert!(missing(with(&four, None), None).is_empty(), "unlimited");
        assert!(missing(with(&four, Some(UMEM_MEMLOCK_BYTES)), None).is_empty());
        assert_eq!(
            missing(with(&four, Some(UMEM_MEMLOCK_BYTES - 1)), None),
            vec![IPC_LOCK]
        );
        let old = [NET_ADMIN, NET_RAW, SYS_ADMIN];
        assert!(missing(with(&old, None), None).is_empty());
    }

    #[test]
    fn bind_service_only_for_dns_below_1024() {
        let four = [NET_ADMIN, NET_RAW, BPF, PERFMON];
        assert!(missing(with(&four, None), Some(5353)).is_empty());
        assert_eq!(missing(with(&four, None), Some(53)), vec![NET_BIND_SERVICE]);
    }

    #[test]
    fn the_error_names_each_capability_and_what_it_is_for() {
        let e = CapsError {
            missing: vec![NET_RAW, PERFMON],
        };
        let s = e.to_string();
        assert!(
            s.contains("lacks CAP_NET_RAW (create AF_XDP sockets), CAP_PERFMON"),
            "{s}"
        );
        assert!(s.contains("AmbientCapabilities="), "{s}");
    }

    #[test]
    fn cap_eff_is_read_from_status() {
        let st = "Name:\tsluice\nCapInh:\t0000000000000000\nCapEff:\t000000c000007000\n";
        let eff = parse_cap_eff(st).expect("CapEff");
        let p = Privileges {
            effective: eff,
            memlock: Some(0),
        };
        assert!(missing(p, None).is_empty(), "{eff:#x}");
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
