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
        Addr([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3]])
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
        write!(f, "{p} {}:{} -> {}:{}", self.src, self.sport, self.dst, self.dport)
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
