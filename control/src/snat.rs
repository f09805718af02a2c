//! The SNAT sources `sluice run` masquerades with, decided once at start:
//! the ports (`--snat-ports`, by default every port from 1024 up outside
//! the host's ephemeral range) and the addresses (`--snat-address`, each
//! one the host's own; by default the route's preferred source towards
//! each backend). The data path's allocator is `sluice_dataplane::snat`.
//!
//! The ports must stay outside `net.ipv4.ip_local_port_range`: the host's
//! own connections (health checks, an operator's curl) take their source
//! ports from it, and a masqueraded flow on the same address and port
//! towards the same backend would steal their replies. The kernel's
//! MASQUERADE shares conntrack with local sockets and needs no such split;
//! Sluice's flow table does not see the host's sockets, so it keeps apart.

use std::net::IpAddr;
use std::path::Path;

use sluice_dataplane::snat::{PortRangeError, PortRanges, SnatAddrs};
use sluice_dataplane::types::Addr;

/// Where the kernel keeps the host's ephemeral port range (per network
/// namespace).
pub const EPHEMERAL_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Why the SNAT sources cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnatError {
    /// The ephemeral port range could not be read.
    #[error("reading {path}: {source}")]
    EphemeralRead {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The ephemeral port range file does not hold two ports.
    #[error("{path}: {text:?} is not a port range")]
    EphemeralParse {
        /// The file.
        path: String,
        /// What it holds.
        text: String,
    },
    /// The ephemeral range leaves no port from 1024 up.
    #[error("the host's ephemeral port range {lo}-{hi} (net.ipv4.ip_local_port_range) leaves no port from 1024 up for SNAT: give --snat-ports")]
    NoPortsLeft {
        /// Low end of the ephemeral range.
        lo: u16,
        /// High end.
        hi: u16,
    },
    /// `--snat-ports` shares ports with the ephemeral range.
    #[error("--snat-ports {ports} overlaps the host's ephemeral port range {lo}-{hi} (net.ipv4.ip_local_port_range) at {a}-{b}: the host's own connections would collide with masqueraded flows; choose ports outside it or narrow the ephemeral range")]
    Overlap {
        /// The ports given.
        ports: String,
        /// Low end of the ephemeral range.
        lo: u16,
        /// High end.
        hi: u16,
        /// First shared port.
        a: u16,
        /// Last shared port.
        b: u16,
    },
    /// `--snat-address` names an address no interface of the host has.
    #[error("--snat-address {0}: not an address of this host (replies to it would never reach it); add it to an interface first")]
    NotOwn(IpAddr),
    /// More `--snat-address`es than the steering program holds.
    #[error("{0} --snat-address given: at most {max}", max = sluice_dataplane::steer::MAX_SNAT_ADDRS)]
    TooManyAddrs(usize),
    /// The host's addresses could not be listed.
    #[error("listing the host's addresses: {0}")]
    ListAddrs(#[from] crate::netlink::NetlinkError),
}

/// Parses `--snat-ports`: `LO-HI` ranges separated by commas.
///
/// # Errors
/// A message naming the part that is not a range, or a [`PortRangeError`].
pub fn parse_ports(s: &str) -> Result<PortRanges, String> {
    let mut v = Vec::new();
    for part in s.split(',') {
        let (a, b) = part
            .split_once('-')
            .ok_or_else(|| format!("{part:?}: expected LO-HI"))?;
        let lo: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?} is not a port"))?;
        let hi: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("{b:?} is not a port"))?;
        v.push((lo, hi));
    }
    PortRanges::new(&v).map_err(|e: PortRangeError| e.to_string())
}

/// Parses the two numbers of `ip_local_port_range`.
pub fn parse_ephemeral(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(lo)), Some(Ok(hi)), None) = (it.next(), it.next(), it.next()) else {
        return None;
    };
    (lo <= hi).then_some((lo, hi))
}

/// The host's ephemeral port range, read from `path`
/// ([`EPHEMERAL_PATH`]).
///
/// # Errors
/// [`SnatError::EphemeralRead`] or [`SnatError::EphemeralParse`].
pub fn ephemeral_range(path: &Path) -> Result<(u16, u16), SnatError> {
    let text = std::fs::read_to_string(path).map_err(|source| SnatError::EphemeralRead {
        path: path.display().to_string(),
        source,
    })?;
    parse_ephemeral(&text).ok_or_else(|| SnatError::EphemeralParse {
        path: path.display().to_string(),
        text: text.trim().to_string(),
    })
}

/// The SNAT ports: `given` if it keeps clear of `ephemeral`, else the
/// complement of `ephemeral` from 1024 up.
///
/// # Errors
/// [`SnatError::Overlap`] when `given` shares ports with `ephemeral`;
/// [`SnatError::NoPortsLeft`] when there is no complement.
pub fn choose_ports(
    given: Option<&PortRanges>,
    ephemeral: (u16, u16),
) -> Result<PortRanges, SnatError> {
    let (lo, hi) = ephemeral;
    match given {
        Some(p) => match p.overlap(lo, hi) {
            Some((a, b)) => Err(SnatError::Overlap {
                ports: p.to_string(),
                lo,
                hi,
                a,
                b,
            }),
            None => Ok(p.clone()),
        },
        None => PortRanges::complement_of(lo, hi).ok_or(SnatError::NoPortsLeft { lo, hi }),
    }
}

/// Checks that every `--snat-address` is one of `host`'s addresses.
///
/// # Errors
/// [`SnatError::NotOwn`] naming the first that is not;
/// [`SnatError::TooManyAddrs`] beyond the steering program's capacity.
pub fn check_addresses(given: &[IpAddr], host: &[IpAddr]) -> Result<SnatAddrs, SnatError> {
    if given.len() > sluice_dataplane::steer::MAX_SNAT_ADDRS {
        return Err(SnatError::TooManyAddrs(given.len()));
    }
    if let Some(a) = given.iter().find(|a| !host.contains(a)) {
        return Err(SnatError::NotOwn(*a));
    }
    let addrs: Vec<Addr> = given.iter().map(|a| Addr::from(*a)).collect();
    Ok(SnatAddrs::new(&addrs))
}

/// Every address configured on any interface of the host (one rtnetlink
/// address dump, the same one the steering program's `local_addrs` set is
/// filled from).
///
/// # Errors
/// [`SnatError::ListAddrs`] when the dump fails.
pub fn host_addresses() -> Result<Vec<IpAddr>, SnatError> {
    let mut out: Vec<IpAddr> = crate::netlink::all_addresses()?
        .into_iter()
        .map(|(ip, _)| ip)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The ports and addresses `sluice run` masquerades with: reads the
/// ephemeral range and the host's addresses, checks the flags, and logs
/// the per-backend capacity.
///
/// # Errors
/// A [`SnatError`].
pub fn resolve(
    ports: Option<&PortRanges>,
    addrs: &[IpAddr],
) -> Result<(PortRanges, SnatAddrs), SnatError> {
    let ephemeral = ephemeral_range(Path::new(EPHEMERAL_PATH))?;
    let ports = choose_ports(ports, ephemeral)?;
    let snat_addrs = if addrs.is_empty() {
        SnatAddrs::default()
    } else {
        check_addresses(addrs, &host_addresses()?)?
    };
    let (v4, v6) = (
        snat_addrs.all().filter(|a| a.is_v4()).count(),
        snat_addrs.all().filter(|a| !a.is_v4()).count(),
    );
    let per = |n: usize| u64::from(ports.len()) * n.max(1) as u64;
    tracing::info!(
        "SNAT: ports {ports} ({} ports; host ephemeral range {}-{} excluded), addresses {}: up to {} IPv4 and {} IPv6 masqueraded flows at once per backend address:port; ports of closed flows are reused after 1-2 s of quiet",
        ports.len(),
        ephemeral.0,
        ephemeral.1,
        if snat_addrs.is_empty() {
            "the route's source towards each backend".to_string()
        } else {
            snat_addrs
                .all()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        },
        per(v4),
        per(v6),
    );
    Ok((ports, snat_addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_flag_parses_lists() {
        let p = parse_ports("61000-65535,1024-32767").unwrap();
        assert_eq!(p.ranges(), &[(1024, 32767), (61000, 65535)]);
        assert!(parse_ports("1024").unwrap_err().contains("LO-HI"));
        assert!(parse_ports("a-2").unwrap_err().contains("not a port"));
        assert!(parse_ports("0-2").unwrap_err().contains("1 <= LO <= HI"));
        assert!(parse_ports("1-5,5-9").unwrap_err().contains("overlap"));
    }

    #[test]
    fn ephemeral_file_parses() {
        assert_eq!(parse_ephemeral("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_ephemeral("32768"), None);
        assert_eq!(parse_ephemeral("2 1"), None);
        assert_eq!(parse_ephemeral("1 2 3"), None);
    }

    #[test]
    fn default_ports_skip_the_ephemeral_range_and_overlaps_are_refused() {
        let d = choose_ports(None, (32768, 60999)).unwrap();
        assert_eq!(d.to_string(), "1024-32767,61000-65535");
        assert_eq!(d.len(), 36280);
        let e = choose_ports(Some(&parse_ports("30000-40000").unwrap()), (32768, 60999));
        let msg = e.unwrap_err().to_string();
        assert!(
            msg.contains("30000-40000") && msg.contains("32768-40000"),
            "{msg}"
        );
        let ok = parse_ports("61000-65535").unwrap();
        assert_eq!(choose_ports(Some(&ok), (32768, 60999)).unwrap(), ok);
        assert!(matches!(
            choose_ports(None, (1, 65535)),
            Err(SnatError::NoPortsLeft { .. })
        ));
    }

    #[test]
    fn snat_addresses_must_be_the_hosts() {
        let host: Vec<IpAddr> = vec![
            "198.18.0.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ];
        let ok = check_addresses(&host, &host).unwrap();
        assert_eq!(ok.all().count(), 2);
        let bad: IpAddr = "198.18.0.9".parse().unwrap();
        let e = check_addresses(&[host[0], bad], &host).unwrap_err();
        assert!(e.to_string().contains("198.18.0.9"), "{e}");
    }

    #[test]
    fn the_host_has_its_loopback_address() {
        let all = host_addresses().unwrap();
        assert!(all.contains(&"127.0.0.1".parse().unwrap()), "{all:?}");
    }
}
