//! The fixture network of the worker-level UDP tests (fragments, PMTU): a
//! client on port 0, one backend per family on port 1, and UDP services on
//! VIP:53 and [VIP6]:53 → backend:5353 by NAT. Test builds only.

use crate::pipeline::{NextHop, PortInfo, Snapshot};
use crate::service::{BackendSpec, SchedKind, ServiceSpec, ServiceTable, VipKey};
use crate::types::{proto, Addr, L2Hop};

pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
pub const FRONT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const BACK_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x10];
pub const CLIENT: [u8; 4] = [198, 18, 0, 2];
pub const VIP: [u8; 4] = [198, 18, 100, 10];
pub const BACKEND: [u8; 4] = [198, 18, 1, 11];
pub const CLIENT6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const VIP6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
pub const BACKEND6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];

/// The services above, the backend link (port 1) with MTU `back_mtu`, the
/// client's link 1500.
pub fn snapshot(back_mtu: u16) -> Snapshot {
    let svc = |vip: Addr, backend: Addr| ServiceSpec {
        name: "default/dns:53".into(),
        vip: VipKey {
            addr: vip,
            port: 53,
            proto: proto::UDP,
        },
        backends: vec![BackendSpec {
            addr: backend,
            port: 5353,
            weight: 1,
            ..Default::default()
        }],
        sched: SchedKind::RoundRobin,
        ..Default::default()
    };
    let (b4, b6) = (Addr::from_v4(BACKEND), Addr::from_v6(BACKEND6));
    let services = ServiceTable::build(
        1,
        vec![svc(Addr::from_v4(VIP), b4), svc(Addr::from_v6(VIP6), b6)],
    )
    .unwrap();
    let nh = |snat| NextHop {
        hop: L2Hop {
            port: 1,
            mac: BACKEND_MAC,
        },
        snat,
    };
    Snapshot {
        services,
        ports: vec![
            PortInfo {
                mac: FRONT_MAC,
                mtu: 1500,
            },
            PortInfo {
                mac: BACK_MAC,
                mtu: back_mtu,
            },
        ],
        nexthops: [(b4, nh(b4)), (b6, nh(b6))].into_iter().collect(),
        ..Default::default()
    }
}

/// `frame` as a router sends it on: the IP header at `l3` with its TTL /
/// hop limit one less and, for IPv4, the header checksum computed afresh
/// (not incrementally, so the expectation is independent of
/// `forward::ttl`). What every forwarding method does besides its rewrite.
pub fn one_hop_on(frame: &[u8], l3: usize) -> Vec<u8> {
    let mut f = frame.to_vec();
    if f[l3] >> 4 == 6 {
        f[l3 + 7] -= 1;
    } else {
        let mut ip = crate::wire::ipv4::Packet::new_checked(&mut f[l3..]).unwrap();
        ip.set_ttl(ip.ttl() - 1);
        ip.fill_checksum();
    }
    f
}
