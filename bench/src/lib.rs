//! Shared fixtures for Sluice's benchmarks: a snapshot with one TCP service
//! behind three backends, and packet builders.

pub mod draws;

use sluice_dataplane::pipeline::{MasqPolicy, NextHop, PortInfo, Snapshot};
use sluice_dataplane::service::{BackendSpec, SchedKind, ServiceSpec, ServiceTable, VipKey};
use sluice_dataplane::types::{proto, Addr, L2Hop, Mac};

/// The client-side MAC used in fixtures.
pub const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 2];
/// The LB's front interface MAC.
pub const FRONT_MAC: Mac = [2, 0, 0, 0, 0, 1];
/// The LB's back interface MAC.
pub const BACK_MAC: Mac = [2, 0, 0, 0, 1, 1];
/// The service VIP.
pub const VIP: [u8; 4] = [198, 18, 100, 10];
/// The backends' port.
pub const BACKEND_PORT: u16 = 8080;

/// Address of backend `i`.
pub fn backend_ip(i: u8) -> [u8; 4] {
    [198, 18, 1, 11 + i]
}

/// A snapshot with `services` TCP services on consecutive ports of the VIP
/// (port 80 first), each with three backends reached on port 1.
pub fn snapshot(services: u16, masq: MasqPolicy) -> Snapshot {
    snapshot_of((0..services).map(|s| (VIP, 80 + s)), masq)
}

/// Front end of service `s` in [`snapshot_many`]: [`VIP`] port 80 for
/// `s == 0`, else `10.a.b.c` port 80 with `a.b.c` = `s` (ClusterIP-like:
/// one address per service).
pub fn service_vip(s: u32) -> ([u8; 4], u16) {
    if s == 0 {
        (VIP, 80)
    } else {
        ([10, (s >> 16) as u8, (s >> 8) as u8, s as u8], 80)
    }
}

/// A snapshot with `services` (up to 2²⁴) TCP services at
/// [`service_vip`]`(0..services)`, each with the same three backends as
/// [`snapshot`].
pub fn snapshot_many(services: u32, masq: MasqPolicy) -> Snapshot {
    assert!(services <= 1 << 24, "at most 2^24 bench services");
    snapshot_of((0..services).map(service_vip), masq)
}

fn snapshot_of(vips: impl Iterator<Item = ([u8; 4], u16)>, masq: MasqPolicy) -> Snapshot {
    let backends: Vec<BackendSpec> = (0..3)
        .map(|i| BackendSpec {
            addr: Addr::from_v4(backend_ip(i)),
            port: BACKEND_PORT,
            weight: 1,
            ..Default::default()
        })
        .collect();
    let specs = vips
        .enumerate()
        .map(|(s, (addr, port))| ServiceSpec {
            name: format!("bench/svc{s}"),
            vip: VipKey {
                addr: Addr::from_v4(addr),
                port,
                proto: proto::TCP,
            },
            backends: backends.clone(),
            sched: SchedKind::RoundRobin,
            ..Default::default()
        })
        .collect();
    Snapshot {
        services: ServiceTable::build(1, specs).expect("valid bench table"),
        ports: vec![
            PortInfo {
                mac: FRONT_MAC,
                mtu: 1500,
            },
            PortInfo {
                mac: BACK_MAC,
                mtu: 1500,
            },
        ],
        nexthops: (0..3)
            .map(|i| {
                (
                    Addr::from_v4(backend_ip(i)),
                    NextHop {
                        hop: L2Hop {
                            port: 1,
                            mac: [2, 0, 0, 0, 1, 0x10 + i],
                        },
                        snat: Addr::from_v4([198, 18, 1, 1]),
                    },
                )
            })
            .collect(),
        masq,
        removed: Default::default(),
        moved: Default::default(),
    }
}

/// Client number `n` (distinct address and port per n).
pub fn client(n: u32) -> ([u8; 4], u16) {
    let a = n / 50_000;
    let port = 1024 + (n % 50_000) as u16;
    ([198, 19, (a >> 8) as u8, a as u8], port)
}

/// A 64-byte-class TCP segment (no payload) with the given flags.
pub fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1, 65535);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1);
    }
    let mut out = Vec::with_capacity(64);
    b.write(&mut out, &[]).expect("building a fixture packet");
    out
}

/// A TCP ACK over IPv6 (no payload: 74 bytes).
pub fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 1, 65535)
        .ack(1);
    let mut out = Vec::with_capacity(80);
    b.write(&mut out, &[]).expect("building a fixture packet");
    out
}
