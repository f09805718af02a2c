//! The packet core on arbitrary frame sequences.
//!
//! The input is a sequence of records `[port: u8][len: u16 BE][frame]`; each
//! frame is processed in turn on that port (0 front, 1 back) through one
//! flow table, so a fuzzed sequence can open flows and then send replies,
//! ICMP errors and resets for them. The snapshot holds a NAT service that
//! keeps the client address, a masqueraded UDP service, an IPv6 service and
//! a direct-routing service. The port byte's upper bits advance the clock.
//!
//! Besides "never panic", the target checks the core's checksum contract
//! with a checksum written here, independently of `wire::checksum`: a frame
//! that is sent on (`Tx`, `TxLen`) carries valid IPv4 header and TCP/UDP/
//! ICMP checksums whenever the frame that came in did, and an answer the
//! core builds itself (`Reply`) always does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::affinity::AffinityTable;
use sluice_dataplane::flow_table::{FlowTable, Timeouts};
use sluice_dataplane::pipeline::{
    process, Ctx, MasqPolicy, NextHop, PortInfo, Snapshot, Stats, Verdict,
};
use sluice_dataplane::service::{
    BackendSpec, ForwardMethod, MasqMode, SchedKind, ServiceSpec, ServiceTable, VipKey,
};
use sluice_dataplane::snat::Share;
use sluice_dataplane::types::{proto, Addr, L2Hop};

const VIP: [u8; 4] = [198, 18, 0, 100];
const VIP6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const B1: [u8; 4] = [198, 18, 1, 11];
const B2: [u8; 4] = [198, 18, 1, 12];
const B6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
const LB4: [u8; 4] = [198, 18, 1, 1];
const LB6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn service(
    vip: Addr,
    port: u16,
    proto: u8,
    backends: &[(Addr, u16)],
    masq: MasqMode,
    forward: ForwardMethod,
) -> ServiceSpec {
    ServiceSpec {
        name: format!("fuzz/{vip}:{port}/{proto}"),
        vip: VipKey {
            addr: vip,
            port,
            proto,
        },
        backends: backends
            .iter()
            .map(|&(addr, port)| BackendSpec {
                addr,
                port,
                weight: 1,
                ..Default::default()
            })
            .collect(),
        sched: SchedKind::RoundRobin,
        masq,
        forward,
        ..Default::default()
    }
}

fn snapshot() -> Snapshot {
    let (vip, vip6) = (Addr::from_v4(VIP), Addr::from_v6(VIP6));
    let (b1, b2, b6) = (Addr::from_v4(B1), Addr::from_v4(B2), Addr::from_v6(B6));
    let specs = vec![
        service(
            vip,
            80,
            proto::TCP,
            &[(b1, 8080), (b2, 8080)],
            MasqMode::Never,
            ForwardMethod::Nat,
        ),
        service(
            vip,
            53,
            proto::UDP,
            &[(b1, 5353)],
            MasqMode::Always,
            ForwardMethod::Nat,
        ),
        service(
            vip,
            80,
            proto::SCTP,
            &[(b2, 8080)],
            MasqMode::Never,
            ForwardMethod::Nat,
        ),
        service(
            vip,
            443,
            proto::TCP,
            &[(b2, 443)],
            MasqMode::Never,
            ForwardMethod::Dr,
        ),
        service(
            vip6,
            80,
            proto::TCP,
            &[(b6, 8080)],
            MasqMode::Always,
            ForwardMethod::Nat,
        ),
    ];
    let services = ServiceTable::build(1, specs).expect("the fixture table builds");
    let hop = |mac_last: u8, snat: Addr| NextHop {
        hop: L2Hop {
            port: 1,
            mac: [2, 0, 0, 0, 1, mac_last],
        },
        snat,
    };
    let nexthops = [
        (b1, hop(11, Addr::from_v4(LB4))),
        (b2, hop(12, Addr::from_v4(LB4))),
        (b6, hop(13, Addr::from_v6(LB6))),
    ];
    Snapshot {
        services,
        ports: vec![
            PortInfo {
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
            },
            PortInfo {
                mac: [2, 0, 0, 0, 1, 1],
                mtu: 1500,
            },
        ],
        nexthops: nexthops.into_iter().collect(),
        masq: MasqPolicy::default(),
        removed: Default::default(),
        moved: Default::default(),
    }
}

/// One's-complement sum of `data` as big-endian 16-bit words.
fn sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn folds_to_ones(mut acc: u64) -> bool {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc == 0xffff
}

/// Whether the checksums of `frame` that the core is responsible for hold:
/// `None` when the frame is not one they apply to (not IP, fragment,
/// SCTP, a UDP datagram without checksum, truncated).
fn checksums_ok(frame: &[u8]) -> Option<bool> {
    let mut l3 = 14;
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        l3 = 18;
    }
    match ethertype {
        0x0800 => {
            let ip = frame.get(l3..)?;
            let ihl = usize::from(*ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let flags_frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            if ihl < 20 || total < ihl || flags_frag & 0x3fff != 0 {
                return None;
            }
            let header_ok = folds_to_ones(sum(ip.get(..ihl)?));
            let seg = ip.get(ihl..total)?;
            let p = ip[9];
            let pseudo = sum(&ip[12..20]) + u64::from(p) + seg.len() as u64;
            let l4_ok = match p {
                6 => folds_to_ones(pseudo + sum(seg)),
                17 if u16::from_be_bytes([*seg.get(6)?, *seg.get(7)?]) == 0 => return None,
                17 => folds_to_ones(pseudo + sum(seg)),
                1 => folds_to_ones(sum(seg)),
                _ => return None,
            };
            Some(header_ok && l4_ok)
        }
        0x86dd => {
            let ip = frame.get(l3..)?;
            let plen = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let nh = *ip.get(6)?;
            // Extension headers: leave them to the parser's own tests.
            if !matches!(nh, 6 | 17 | 58) {
                return None;
            }
            let seg = ip.get(40..40 + plen)?;
            let pseudo = sum(&ip[8..40]) + u64::from(nh) + seg.len() as u64;
            Some(folds_to_ones(pseudo + sum(seg)))
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let snap = snapshot();
    let flows = FlowTable::new(256, Timeouts::default());
    let affinity = AffinityTable::new(64);
    let mut rest = data;
    let mut now = 1;
    while rest.len() >= 3 {
        let port = rest[0] & 1;
        // The other bits of the port byte advance the clock (up to ~17
        // minutes a record), so sequences also reach flow expiry.
        let dt = u32::from(rest[0] >> 1) * 8;
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let frame = &rest[3..3 + len];
        rest = &rest[3 + len..];
        now += dt;
        let ctx = Ctx {
            snap: &snap,
            flows: &flows,
            affinity: &affinity,
            now,
            share: Share::WHOLE,
        };
        let mut buf = vec![0u8; 2048];
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        let before = checksums_ok(&buf[..n]);
        let mut stats = Stats::default();
        match process(&ctx, &mut buf, n, port, &mut stats) {
            Verdict::Tx(_) => {
                if before == Some(true) {
                    assert_eq!(
                        checksums_ok(&buf[..n]),
                        Some(true),
                        "forwarded frame lost its checksums"
                    );
                }
            }
            Verdict::TxLen(_, out) => {
                assert!(out <= buf.len(), "TxLen {out} past the buffer");
                if before == Some(true) {
                    assert_eq!(
                        checksums_ok(&buf[..out]),
                        Some(true),
                        "cut frame lost its checksums"
                    );
                }
            }
            Verdict::Reply(out) => {
                assert!(out <= buf.len(), "reply of {out} bytes past the buffer");
                assert_ne!(
                    checksums_ok(&buf[..out]),
                    Some(false),
                    "the core built a bad answer"
                );
            }
            Verdict::Drop(_) | Verdict::TooBig(_) | Verdict::TtlExceeded => {}
        }
    }
});
