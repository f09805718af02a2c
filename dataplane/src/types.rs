//! Small value types shared by every stage of the packet path.
//!
//! Addresses are stored as 16 bytes whatever the family (IPv4 as the
//! IPv4-mapped IPv6 form `::ffff:a.b.c.d`, RFC 4291 § 2.5.5.2), so one flow
//! key type serves both families and compares with a single memcmp.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 address in 16 bytes (IPv4 is IPv4-mapped).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Addr(pub [u8; 16]);

impl Addr {
    /// The unspecified address (`::`).
    pub const UNSPECIFIED: Addr = Addr([0; 16]);

    /// An IPv4 address as its IPv4-mapped form.
    #[inline]
    pub const fn from_v4(o: [u8; 4]) -> Addr {
        Addr([
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
        ])
    }

    /// An IPv6 address as it is.
    #[inline]
    pub const fn from_v6(o: [u8; 16]) -> Addr {
        Addr(o)
    }

    /// Whether this is an IPv4(-mapped) address.
    #[inline]
    pub fn is_v4(&self) -> bool {
        self.0[..10] == [0; 10] && self.0[10] == 0xff && self.0[11] == 0xff
    }

    /// The four IPv4 octets (meaningful only when [`Addr::is_v4`]).
    #[inline]
    pub fn v4_octets(&self) -> [u8; 4] {
        [self.0[12], self.0[13], self.0[14], self.0[15]]
    }

    /// As a standard library address.
    pub fn to_ip(&self) -> IpAddr {
        if self.is_v4() {
            IpAddr::V4(Ipv4Addr::from(self.v4_octets()))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.0))
        }
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(v4) => Addr::from_v4(v4.octets()),
            IpAddr::V6(v6) => Addr::from_v6(v6.octets()),
        }
    }
}

impl From<Ipv4Addr> for Addr {
    fn from(ip: Ipv4Addr) -> Addr {
        Addr::from_v4(ip.octets())
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_ip())
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_ip())
    }
}

/// IP protocol numbers Sluice forwards.
pub mod proto {
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// A connection 5-tuple as seen on the wire in one direction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct FlowKey {
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// Source port (0 for protocols without ports).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol number ([`proto`]).
    pub proto: u8,
}

impl FlowKey {
    /// The same tuple seen from the other end.
    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            proto::TCP => "tcp",
            proto::UDP => "udp",
            proto::SCTP => "sctp",
            _ => "ip",
        };
        write!(
            f,
            "{p} {}:{} -> {}:{}",
            self.src, self.sport, self.dst, self.dport
        )
    }
}

/// A MAC address.
pub type Mac = [u8; 6];

/// Where a frame leaves: the index of the interface in the worker's port
/// set and the destination MAC of the next hop.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct L2Hop {
    /// Index of the egress interface (order of `--iface` on the command line).
    pub port: u8,
    /// Destination MAC.
    pub mac: Mac,
}

/// An address prefix (`198.18.0.0/15`, `2001:db8::/32`).
///
/// Stored over the 16-byte [`Addr`]; an IPv4 prefix length `n` is held as
/// `96 + n` so that one comparison routine serves both families.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Cidr {
    addr: Addr,
    /// Prefix length over the 128-bit form.
    len128: u8,
}

impl Cidr {
    /// A prefix from an address and its family's prefix length.
    ///
    /// Returns `None` when the length is too long for the family.
    pub fn new(addr: Addr, prefix_len: u8) -> Option<Cidr> {
        let len128 = if addr.is_v4() {
            if prefix_len > 32 {
                return None;
            }
            96 + prefix_len
        } else {
            if prefix_len > 128 {
                return None;
            }
            prefix_len
        };
        Some(Cidr { addr, len128 })
    }

    /// The prefix length over the 128-bit (IPv4-mapped) form: 96 + N for
    /// an IPv4 /N.
    pub fn len128(&self) -> u8 {
        self.len128
    }

    /// The prefix's first address: the address given, host bits cleared.
    pub fn network(&self) -> Addr {
        let mut out = self.addr;
        for (i, b) in out.0.iter_mut().enumerate() {
            let bits = usize::from(self.len128).saturating_sub(i * 8).min(8);
            *b &= !(0xffu16 >> bits) as u8;
        }
        out
    }

    /// Whether `a` lies inside this prefix (never across families).
    #[inline]
    pub fn contains(&self, a: &Addr) -> bool {
        if a.is_v4() != self.addr.is_v4() {
            return false;
        }
        let full = (self.len128 / 8) as usize;
        if self.addr.0[..full] != a.0[..full] {
            return false;
        }
        let rem = self.len128 % 8;
        if rem == 0 {
            return true;
        }
        let mask = 0xffu8 << (8 - rem);
        (self.addr.0[full] & mask) == (a.0[full] & mask)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a prefix: expected ADDRESS/LENGTH"))?;
        let ip: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} in {s:?} is not an IP address"))?;
        let len: u8 = l
            .parse()
            .map_err(|_| format!("{l:?} in {s:?} is not a prefix length"))?;
        Cidr::new(Addr::from(ip), len)
            .ok_or_else(|| format!("prefix length {len} is too long for {ip}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = if self.addr.is_v4() {
            self.len128 - 96
        } else {
            self.len128
        };
        write!(f, "{}/{len}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_round_trip() {
        let a = Addr::from(Ipv4Addr::new(198, 18, 0, 1));
        assert!(a.is_v4());
        assert_eq!(a.v4_octets(), [198, 18, 0, 1]);
        assert_eq!(a.to_ip(), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
        let b = Addr::from("2001:db8::1".parse::<IpAddr>().unwrap());
        assert!(!b.is_v4());
        assert_eq!(b.to_string(), "2001:db8::1");
    }

    #[test]
    fn cidr_contains() {
        let c: Cidr = "198.18.0.128/25".parse().unwrap();
        assert!(c.contains(&Addr::from_v4([198, 18, 0, 130])));
        assert!(!c.contains(&Addr::from_v4([198, 18, 0, 2])));
        assert!(!c.contains(&Addr::from("2001:db8::1".parse::<IpAddr>().unwrap())));
        let z: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(z.contains(&Addr::from_v4([1, 2, 3, 4])));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(&Addr::from("2001:db8:1::5".parse::<IpAddr>().unwrap())));
        assert!(!v6.contains(&Addr::from_v4([198, 18, 0, 1])));
        assert!("198.18.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert_eq!(c.to_string(), "198.18.0.128/25");
        let h: Cidr = "198.18.0.200/25".parse().unwrap();
        assert_eq!(h.network(), Addr::from_v4([198, 18, 0, 128]));
        assert_eq!(h.len128(), 121);
        assert_eq!(c.network(), Addr::from_v4([198, 18, 0, 128]));
        let w: Cidr = "2001:db8::1/32".parse().unwrap();
        assert_eq!(w.network().to_string(), "2001:db8::");
    }

    #[test]
    fn reversed_swaps_ends() {
        let k = FlowKey {
            src: Addr::from_v4([1, 2, 3, 4]),
            dst: Addr::from_v4([5, 6, 7, 8]),
            sport: 1000,
            dport: 80,
            proto: proto::TCP,
        };
        let r = k.reversed();
        assert_eq!(r.src, k.dst);
        assert_eq!(r.sport, 80);
        assert_eq!(r.reversed(), k);
    }
}
