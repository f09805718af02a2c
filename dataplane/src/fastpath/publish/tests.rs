//! The publish decision ([`Publisher::decide`]) against the real pipeline
//! and flow table: when a direction is published, and when a close costs
//! no map operation. No BPF map is involved (the publisher has none), so
//! these run unprivileged.

use etherparse::PacketBuilder;

use super::*;
use crate::affinity::AffinityTable;
use crate::flow_table::{FlowTable, Timeouts};
use crate::pipeline::{self, Stats};
use crate::service::{BackendSpec, SchedKind, ServiceSpec, ServiceTable, VipKey};
use crate::snat::Share;
use crate::types::Addr;
use crate::udp_fixture::*;

const ACK: u8 = tcp_flags::ACK;
const SYN: u8 = tcp_flags::SYN;
const FIN: u8 = tcp_flags::FIN;
const RST: u8 = tcp_flags::RST;

/// The fixture's network with a TCP service on VIP:80 beside the UDP one.
fn snap() -> crate::pipeline::Snapshot {
    let mut s = snapshot(1500);
    let svc = |port: u16, p: u8| ServiceSpec {
        name: format!("default/s:{port}"),
        vip: VipKey {
            addr: Addr::from_v4(VIP),
            port,
            proto: p,
        },
        backends: vec![BackendSpec {
            addr: Addr::from_v4(BACKEND),
            port: 8080,
            weight: 1,
            ..Default::default()
        }],
        sched: SchedKind::RoundRobin,
        ..Default::default()
    };
    s.services = ServiceTable::build(1, vec![svc(53, proto::UDP), svc(80, proto::TCP)]).unwrap();
    s
}

/// A frame of `k` with TCP `flags` (ignored for UDP).
fn frame(k: &FlowKey, flags: u8, mac: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac.0, mac.1).ipv4(k.src.v4_octets(), k.dst.v4_octets(), 64);
    let mut out = Vec::new();
    if k.proto == proto::TCP {
        let mut b = b.tcp(k.sport, k.dport, 1000, 65000);
        if flags & SYN != 0 {
            b = b.syn();
        }
        if flags & ACK != 0 {
            b = b.ack(1);
        }
        if flags & FIN != 0 {
            b = b.fin();
        }
        if flags & RST != 0 {
            b = b.rst();
        }
        b.write(&mut out, b"x").unwrap();
    } else {
        b.udp(k.sport, k.dport).write(&mut out, b"x").unwrap();
    }
    out
}

struct Bed {
    snap: crate::pipeline::Snapshot,
    flows: FlowTable,
    aff: AffinityTable,
    publisher: Publisher,
}

impl Bed {
    fn new(after: u32) -> Bed {
        Bed {
            snap: snap(),
            flows: FlowTable::new(1024, Timeouts::default()),
            aff: AffinityTable::new(64),
            // No maps: decide() only; interfaces 10 (front) and 20 (back).
            publisher: Publisher::new(
                Vec::new(),
                vec![10, 20],
                3,
                super::super::sync::withdrawals(),
                after,
            ),
        }
    }

    /// Sends a frame of `k` with `flags` from port `ingress` through the
    /// pipeline, then asks the publisher.
    fn send(&mut self, k: &FlowKey, flags: u8, ingress: u8) -> Decision {
        let ctx = Ctx {
            snap: &self.snap,
            flows: &self.flows,
            affinity: &self.aff,
            now: 1,
            share: Share::WHOLE,
        };
        let mac = if ingress == 0 {
            (CLIENT_MAC, FRONT_MAC)
        } else {
            (BACKEND_MAC, BACK_MAC)
        };
        let mut f = frame(k, flags, mac);
        let (parsed, _) = pipeline::parse_and_hash(&self.flows, &f);
        let p = parsed.expect("parses");
        let n = f.len();
        let v = pipeline::process(&ctx, &mut f, n, ingress, &mut Stats::default());
        assert!(matches!(v, Verdict::Tx(_)), "{v:?}");
        self.publisher.decide(&ctx, &p, v)
    }

    fn reply_of(&self, k: &FlowKey) -> FlowKey {
        self.flows.lookup(k, 1).expect("flow").entry.reply
    }

    fn mark(&self, k: &FlowKey) -> bool {
        let h = self.flows.lookup(k, 1).expect("flow");
        self.flows.mark_fast_path(h.id, 1)
    }
}

fn client(sport: u16, dport: u16, p: u8) -> FlowKey {
    FlowKey {
        src: Addr::from_v4(CLIENT),
        dst: Addr::from_v4(VIP),
        sport,
        dport,
        proto: p,
    }
}

fn published(d: &Decision) -> bool {
    matches!(d, Decision::Publish(..))
}

/// Each UDP direction is published on its `after`-th packet, not before,
/// with the rewrite of its own direction, counted apart from the other.
#[test]
fn udp_direction_published_on_its_nth_packet() {
    let mut b = Bed::new(4);
    let req = client(40000, 53, proto::UDP);
    for i in 1..4 {
        assert!(!published(&b.send(&req, 0, 0)), "request {i}");
    }
    let rep = b.reply_of(&req);
    for i in 1..4 {
        assert!(!published(&b.send(&rep, 0, 1)), "reply {i}");
    }
    match b.send(&req, 0, 0) {
        Decision::Publish(h, v) => {
            assert_eq!(h.dir, Direction::Original);
            assert_eq!(v.ifindex, 20, "towards the backend's interface");
            assert_eq!(v.worker, 3);
        }
        d => panic!("4th request: {d:?}"),
    }
    match b.send(&rep, 0, 1) {
        Decision::Publish(h, v) => {
            assert_eq!(h.dir, Direction::Reply);
            assert_eq!(v.ifindex, 10);
        }
        d => panic!("4th reply: {d:?}"),
    }
}

/// `after` 1 is the first forwarded packet (the behaviour before the
/// threshold); 0 counts as 1.
#[test]
fn after_one_publishes_the_first_packet() {
    for after in [0, 1] {
        let mut b = Bed::new(after);
        assert!(published(&b.send(&client(40001, 53, proto::UDP), 0, 0)));
    }
}

/// A short TCP connection (handshake, a request, the server's close)
/// never reaches the threshold in either direction, and its FINs cost no
/// map operation (counted as closes of unpublished flows).
#[test]
fn short_tcp_connection_is_never_published() {
    let mut b = Bed::new(4);
    let c = client(40002, 80, proto::TCP);
    let mut ds = vec![b.send(&c, SYN, 0)];
    let s = b.reply_of(&c);
    ds.push(b.send(&s, SYN | ACK, 1));
    ds.push(b.send(&c, ACK, 0));
    ds.push(b.send(&c, ACK, 0)); // the request
    ds.push(b.send(&s, ACK, 1)); // the response
    ds.push(b.send(&s, FIN | ACK, 1));
    ds.push(b.send(&c, ACK, 0));
    ds.push(b.send(&c, FIN | ACK, 0));
    ds.push(b.send(&s, ACK, 1));
    assert!(ds.iter().all(|d| matches!(d, Decision::Nothing)), "{ds:?}");
    assert_eq!(b.publisher.take_stats().closes_unpublished, 2);
}

/// A bulk TCP direction is published once established and past the
/// threshold; SYNs do not count, and packets before the handshake ends
/// count but do not publish.
#[test]
fn bulk_tcp_direction_is_published() {
    let mut b = Bed::new(3);
    let c = client(40003, 80, proto::TCP);
    assert!(!published(&b.send(&c, SYN, 0)));
    assert!(!published(&b.send(&c, SYN, 0)), "a retransmitted SYN");
    let s = b.reply_of(&c);
    assert!(!published(&b.send(&s, SYN | ACK, 1)));
    assert!(!published(&b.send(&c, ACK, 0)), "1st");
    assert!(!published(&b.send(&c, ACK, 0)), "2nd");
    assert!(published(&b.send(&c, ACK, 0)), "3rd");
    for i in 1..3 {
        assert!(!published(&b.send(&s, ACK, 1)), "reply {i}");
    }
    assert!(published(&b.send(&s, ACK, 1)), "3rd reply");
}

/// A FIN or RST withdraws exactly the flows marked as published.
#[test]
fn close_withdraws_only_published_flows() {
    for flag in [FIN, RST] {
        let mut b = Bed::new(2);
        let c = client(40004, 80, proto::TCP);
        b.send(&c, SYN, 0);
        let s = b.reply_of(&c);
        b.send(&s, SYN | ACK, 1);
        b.send(&c, ACK, 0);
        assert!(published(&b.send(&c, ACK, 0)));
        // Decided, but the map insert (and so the mark) never happened.
        assert!(matches!(b.send(&c, flag | ACK, 0), Decision::Nothing));
        assert_eq!(b.publisher.take_stats().closes_unpublished, 1);

        let mut b = Bed::new(2);
        let c = client(40005, 80, proto::TCP);
        b.send(&c, SYN, 0);
        let s = b.reply_of(&c);
        b.send(&s, SYN | ACK, 1);
        b.send(&c, ACK, 0);
        assert!(b.mark(&c), "an established flow can be marked");
        match b.send(&s, flag | ACK, 1) {
            Decision::Withdraw(h) => assert_eq!(h.entry.original, c),
            d => panic!("{d:?}"),
        }
        assert_eq!(b.publisher.take_stats().closes_unpublished, 0);
    }
}

/// The per-worker counts: the n-th packet of a key reaches, keys count
/// apart, a count saturates, `forget` starts a key again.
#[test]
fn counts_reach_saturate_and_forget() {
    let mut c = Counts::new();
    let (a, b) = (client(1, 80, proto::TCP), client(2, 80, proto::TCP));
    assert!(!c.reached(&a, 3));
    assert!(!c.reached(&b, 3));
    assert!(!c.reached(&a, 3));
    assert!(c.reached(&a, 3));
    assert!(c.reached(&a, 3), "saturated");
    assert!(!c.reached(&b, 3));
    assert!(c.reached(&b, 3));
    c.forget(&a);
    assert!(!c.reached(&a, 3));
    assert!(c.reached(&client(3, 80, proto::TCP), 1));
    // A threshold above the count's width saturates at the width.
    let k = client(4, 80, proto::UDP);
    let n = (1..=70_000).take_while(|_| !c.reached(&k, 100_000)).count();
    assert_eq!(n, 65534);
}

/// Keys that share a slot take it over from each other (counted anew),
/// and the table never grows: 1e5 distinct keys, one packet each, then a
/// key still needs its full count.
#[test]
fn counts_are_bounded() {
    let mut c = Counts::new();
    for i in 0..100_000u32 {
        let mut k = client((i & 0xFFFF) as u16, 80, proto::UDP);
        k.src = Addr::from_v4([198, 18, (i >> 16) as u8, 9]);
        c.reached(&k, 2);
    }
    assert_eq!(c.slots.len(), COUNT_SLOTS);
    let k = client(9, 9, proto::UDP);
    assert!(!c.reached(&k, 2));
    assert!(c.reached(&k, 2));
}
