//! Fixture tests of mid-flow pickup ([`picks_up_mid_flow`], issue 14): a
//! TCP segment without SYN that no flow owns, as a host of a tier sees
//! when ECMP moves a connection to it after another host's loss. For an
//! `mh` service by DR or IPIP it goes to the backend a SYN of the same
//! client would have got on any host (a fresh flow table stands for the
//! other host) and its flow is created; for every other service (another
//! scheduler, NAT, FULLNAT) it is answered with a RST as before.

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::{FlowState, Timeouts};
use crate::service::{BackendSpec, SchedKind, ServiceSpec};

use super::tests::{backend_ip, fixture_snapshot, BACK_MAC, CLIENT_MAC, FRONT_MAC, VIP};

/// A TCP service on VIP:80 scheduled by `sched`, forwarded by `forward`,
/// three backends on port 80 (DR cannot remap) reached on port 1; clients
/// on port 0.
fn snapshot(sched: SchedKind, forward: ForwardMethod) -> Snapshot {
    let spec = ServiceSpec {
        name: "default/web:80".into(),
        vip: VipKey {
            addr: Addr::from_v4(VIP),
            port: 80,
            proto: proto::TCP,
        },
        backends: (0..3)
            .map(|i| BackendSpec {
                addr: Addr::from_v4(backend_ip(i)),
                port: 80,
                weight: 1,
                ..Default::default()
            })
            .collect(),
        sched,
        forward,
        ..Default::default()
    };
    fixture_snapshot(
        ServiceTable::build(1, vec![spec]).unwrap(),
        3,
        MasqPolicy::default(),
    )
}

/// Client `198.18.0.<host>` → VIP:80 from `sport`, with `flags`.
fn tcp(host: u8, sport: u16, flags: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, FRONT_MAC).ipv4([198, 18, 0, host], VIP, 64);
    let mut b = b.tcp(sport, 80, 5000, 65535);
    if flags & tcp_flags::SYN != 0 {
        b = b.syn();
    }
    if flags & tcp_flags::ACK != 0 {
        b = b.ack(777);
    }
    if flags & tcp_flags::FIN != 0 {
        b = b.fin();
    }
    if flags & tcp_flags::RST != 0 {
        b = b.rst();
    }
    let mut out = Vec::new();
    b.write(&mut out, b"mid-stream bytes").unwrap();
    out
}

fn key(host: u8, sport: u16) -> FlowKey {
    FlowKey {
        src: Addr::from_v4([198, 18, 0, host]),
        dst: Addr::from_v4(VIP),
        sport,
        dport: 80,
        proto: proto::TCP,
    }
}

/// One host: a snapshot and its own flow table.
struct Host {
    snap: Snapshot,
    flows: FlowTable,
    aff: AffinityTable,
    stats: Stats,
}

impl Host {
    fn new(sched: SchedKind, forward: ForwardMethod) -> Host {
        Host {
            snap: snapshot(sched, forward),
            flows: FlowTable::new(1024, Timeouts::default()),
            aff: AffinityTable::new(64),
            stats: Stats::default(),
        }
    }

    /// Runs `frame` through the core: the verdict and the frame out.
    fn run(&mut self, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = [0u8; 2048];
        buf[..frame.len()].copy_from_slice(frame);
        let ctx = Ctx {
            snap: &self.snap,
            flows: &self.flows,
            affinity: &self.aff,
            now: 1,
            share: Share::WHOLE,
        };
        let v = process(&ctx, &mut buf, frame.len(), 0, &mut self.stats);
        let n = match v {
            Verdict::Reply(n) | Verdict::TxLen(_, n) => n,
            _ => frame.len(),
        };
        (v, buf[..n].to_vec())
    }
}

/// Whether `frame` is a RST from VIP:80 to the client `198.18.0.<host>`.
fn is_rst_to_client(frame: &[u8], host: u8) -> bool {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        return false;
    };
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        return false;
    };
    t.rst()
        && (ip.header().source(), ip.header().destination()) == (VIP, [198, 18, 0, host])
        && (t.source_port(), t.destination_port()) == (80, 40000)
}

#[test]
fn an_ack_without_flow_to_an_mh_dr_service_goes_to_the_maglev_backend_and_is_recorded() {
    let mut host = Host::new(SchedKind::Maglev, ForwardMethod::Dr);
    let mut backends = std::collections::BTreeSet::new();
    for c in 1..=32u8 {
        // The host that carried the flow until now: it saw the SYN.
        let mut other = Host::new(SchedKind::Maglev, ForwardMethod::Dr);
        let (v, syn_out) = other.run(&tcp(c, 40000, tcp_flags::SYN));
        assert_eq!(v, Verdict::Tx(1));
        // A SYN is a new flow, not a pickup.
        assert_eq!((other.stats.new_flows, other.stats.flows_picked_up), (1, 0));
        let want_mac: Mac = syn_out[..6].try_into().unwrap();
        backends.insert(want_mac);

        // This host never saw it: the client's next segment, an ACK with
        // data, leaves for the same backend with only its MACs changed.
        let ack = tcp(c, 40000, tcp_flags::ACK);
        let (v, out) = host.run(&ack);
        assert_eq!(v, Verdict::Tx(1), "client {c}");
        let mut want = crate::udp_fixture::one_hop_on(&ack, 14);
        want[..6].copy_from_slice(&want_mac);
        want[6..12].copy_from_slice(&BACK_MAC);
        assert_eq!(out, want, "client {c}");

        // Its flow now exists, established, and the next segment follows it.
        let hit = host.flows.lookup(&key(c, 40000), 1).expect("flow created");
        assert!(is_dr_flow(&hit.entry));
        assert_eq!(hit.entry.orig_hop.mac, want_mac);
        assert_eq!(hit.state, FlowState::Established);
        let (v, out) = host.run(&tcp(c, 40000, tcp_flags::ACK | tcp_flags::FIN));
        assert_eq!((v, &out[..6]), (Verdict::Tx(1), &want_mac[..]));
    }
    assert_eq!(host.stats.new_flows, 32);
    // Each client's first segment here was picked up; the FIN that
    // followed it found its flow.
    assert_eq!(host.stats.flows_picked_up, 32);
    assert_eq!(host.stats.resets, 0);
    assert_eq!(host.flows.len(), 32);
    assert!(backends.len() > 1, "the clients spread: {backends:?}");
}

#[test]
fn an_ack_without_flow_to_an_mh_ipip_service_is_tunnelled_to_the_maglev_backend() {
    let mut host = Host::new(SchedKind::Maglev, ForwardMethod::Tunnel);
    for c in 1..=16u8 {
        let mut other = Host::new(SchedKind::Maglev, ForwardMethod::Tunnel);
        let (v, syn_out) = other.run(&tcp(c, 40000, tcp_flags::SYN));
        assert!(matches!(v, Verdict::TxLen(1, _)), "{v:?}");
        let (v, out) = host.run(&tcp(c, 40000, tcp_flags::ACK));
        assert!(matches!(v, Verdict::TxLen(1, _)), "client {c}: {v:?}");
        // Same next hop, same outer destination (the real server).
        assert_eq!(&out[..6], &syn_out[..6], "client {c}");
        assert_eq!(&out[30..34], &syn_out[30..34], "client {c}");
        assert_eq!(
            host.flows.lookup(&key(c, 40000), 1).map(|h| h.state),
            Some(FlowState::Established)
        );
    }
    assert_eq!((host.stats.new_flows, host.stats.resets), (16, 0));
    assert_eq!(host.stats.flows_picked_up, 16);
}

#[test]
fn an_ack_without_flow_is_still_reset_for_other_schedulers_nat_and_fullnat() {
    for (sched, fwd) in [
        (SchedKind::RoundRobin, ForwardMethod::Dr),
        (SchedKind::RoundRobin, ForwardMethod::Tunnel),
        (SchedKind::Maglev, ForwardMethod::Nat),
        (SchedKind::Maglev, ForwardMethod::FullNat),
    ] {
        let mut host = Host::new(sched, fwd);
        let (v, out) = host.run(&tcp(7, 40000, tcp_flags::ACK));
        assert!(matches!(v, Verdict::Reply(_)), "{sched:?} {fwd:?}: {v:?}");
        assert!(is_rst_to_client(&out, 7), "{sched:?} {fwd:?}");
        assert_eq!(host.flows.len(), 0, "{sched:?} {fwd:?}");
        assert_eq!(host.stats.resets, 1);
        assert_eq!(host.stats.flows_picked_up, 0, "{sched:?} {fwd:?}");
    }
}

#[test]
fn a_stray_rst_to_an_mh_dr_service_creates_nothing() {
    let mut host = Host::new(SchedKind::Maglev, ForwardMethod::Dr);
    for flags in [tcp_flags::RST, tcp_flags::RST | tcp_flags::ACK] {
        let (v, _) = host.run(&tcp(7, 40000, flags));
        assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    }
    assert_eq!(host.flows.len(), 0);
    assert_eq!(host.stats.flows_picked_up, 0);
}
