use super::*;
use crate::model::{NamedPort, SrvProto};
use hickory_proto::op::{MessageType, Query};
use proptest::prelude::*;
use std::net::{TcpStream, UdpSocket};

fn port(name: &str, proto: SrvProto, port: u16) -> NamedPort {
    NamedPort {
        name: name.into(),
        proto,
        port,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn services() -> Vec<DnsService> {
    vec![
        DnsService::ClusterIp {
            namespace: "default".into(),
            name: "web".into(),
            ips: vec![ip("10.96.0.10"), ip("fd00::10")],
            ports: vec![
                port("http", SrvProto::Tcp, 80),
                port("dns", SrvProto::Udp, 53),
                port("", SrvProto::Tcp, 8080),
            ],
        },
        DnsService::ClusterIp {
            namespace: "default".into(),
            name: "v4only".into(),
            ips: vec![ip("10.96.0.11")],
            ports: vec![],
        },
        DnsService::Headless {
            namespace: "prod".into(),
            name: "db".into(),
            ips: vec![ip("10.1.0.1"), ip("10.1.0.2"), ip("fd00::1")],
            ports: vec![port("pg", SrvProto::Tcp, 5432)],
        },
        DnsService::ExternalName {
            namespace: "default".into(),
            name: "ext".into(),
            target: "Example.COM.".into(),
        },
        DnsService::ExternalName {
            namespace: "default".into(),
            name: "alias".into(),
            target: "web.default.svc.cluster.local".into(),
        },
    ]
}

fn zone() -> DnsZone {
    DnsZone::new("cluster.local", &services()).unwrap()
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

fn ask_msg(zone: &DnsZone, q: &Message, transport: Transport) -> (Message, usize) {
    let bytes = answer_over(zone, &q.to_vec().unwrap(), transport).expect("a response");
    let r = Message::from_vec(&bytes).unwrap();
    assert_eq!(r.id, q.id);
    assert_eq!(r.message_type, MessageType::Response);
    assert!(r.recursion_desired);
    assert!(!r.recursion_available);
    (r, bytes.len())
}

fn ask(zone: &DnsZone, name: &str, qtype: RecordType) -> Message {
    let q = query(name, qtype);
    let (r, _) = ask_msg(zone, &q, Transport::Udp);
    assert_eq!(r.queries, q.queries, "question echoed");
    r
}

fn a_of(records: &[Record]) -> Vec<Ipv4Addr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn aaaa_of(records: &[Record]) -> Vec<Ipv6Addr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn srv_of(records: &[Record]) -> Vec<(u16, u16, u16, String)> {
    let mut v: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_string())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn assert_soa_authority(r: &Message) {
    assert_eq!(r.authorities.len(), 1, "{r}");
    let soa = &r.authorities[0];
    assert_eq!(soa.name.to_string(), "cluster.local.");
    let RData::SOA(s) = &soa.data else {
        panic!("not an SOA: {soa:?}")
    };
    assert_eq!(s.minimum, DEFAULT_TTL);
    assert_eq!(s.mname.to_string(), "ns.dns.cluster.local.");
}

#[test]
fn a_clusterip() {
    let r = ask(&zone(), "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.authoritative);
    assert_eq!(a_of(&r.answers), vec![Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, DEFAULT_TTL);
    assert_eq!(
        r.answers[0].name.to_string(),
        "web.default.svc.cluster.local."
    );
    assert!(r.authorities.is_empty());
}

#[test]
fn aaaa_clusterip() {
    let r = ask(&zone(), "web.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert_eq!(
        aaaa_of(&r.answers),
        vec!["fd00::10".parse::<Ipv6Addr>().unwrap()]
    );
    assert_eq!(r.answers.len(), 1);
}

#[test]
fn nodata_when_family_missing() {
    let r = ask(
        &zone(),
        "v4only.default.svc.cluster.local.",
        RecordType::AAAA,
    );
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.authoritative);
    assert!(r.answers.is_empty());
    assert_soa_authority(&r);
    // Other types at an existing name are NODATA too.
    let r = ask(&zone(), "web.default.svc.cluster.local.", RecordType::MX);
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert_soa_authority(&r);
}

#[test]
fn empty_non_terminals_are_nodata() {
    for name in [
        "default.svc.cluster.local.",
        "svc.cluster.local.",
        "_tcp.web.default.svc.cluster.local.",
    ] {
        let r = ask(&zone(), name, RecordType::A);
        assert_eq!(r.response_code, ResponseCode::NoError, "{name}");
        assert!(r.answers.is_empty(), "{name}");
        assert_soa_authority(&r);
    }
}

#[test]
fn headless_returns_every_endpoint() {
    let z = zone();
    let r = ask(&z, "db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(r.response_code, ResponseCode::NoError);
    let mut a = a_of(&r.answers);
    a.sort();
    assert_eq!(
        a,
        vec![Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2)]
    );
    let r = ask(&z, "db.prod.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(
        aaaa_of(&r.answers),
        vec!["fd00::1".parse::<Ipv6Addr>().unwrap()]
    );

    // The dashed endpoint hostnames resolve to their own address only.
    let r = ask(&z, "10-1-0-2.db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(a_of(&r.answers), vec![Ipv4Addr::new(10, 1, 0, 2)]);
    let r = ask(&z, "fd00--1.db.prod.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(
        aaaa_of(&r.answers),
        vec!["fd00::1".parse::<Ipv6Addr>().unwrap()]
    );
    let r = ask(&z, "fd00--1.db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    let r = ask(&z, "10-1-0-9.db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(r.response_code, ResponseCode::NXDomain);
}

#[test]
fn headless_without_endpoints_is_nodata() {
    let z = DnsZone::new(
        "cluster.local",
        &[DnsService::Headless {
            namespace: "a".into(),
            name: "b".into(),
            ips: vec![],
            ports: vec![port("p", SrvProto::Tcp, 1)],
        }],
    )
    .unwrap();
    assert!(z.is_empty());
    let r = ask(&z, "b.a.svc.cluster.local.", RecordType::A);
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
}

#[test]
fn external_name_is_a_cname_for_every_type() {
    let z = zone();
    for qtype in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::CNAME,
        RecordType::TXT,
    ] {
        let r = ask(&z, "ext.default.svc.cluster.local.", qtype);
        assert_eq!(r.response_code, ResponseCode::NoError, "{qtype}");
        assert!(r.authoritative);
        assert_eq!(r.answers.len(), 1, "{qtype}");
        let RData::CNAME(c) = &r.answers[0].data else {
            panic!("{:?}", r.answers[0])
        };
        assert_eq!(c.0.to_string(), "example.com.");
        assert_eq!(r.answers[0].ttl, DEFAULT_TTL);
    }
}

#[test]
fn external_name_in_zone_is_followed() {
    let z = zone();
    let r = ask(&z, "alias.default.svc.cluster.local.", RecordType::A);
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 2);
    assert!(
        matches!(&r.answers[0].data, RData::CNAME(c) if c.0.to_string() == "web.default.svc.cluster.local.")
    );
    assert_eq!(a_of(&r.answers), vec![Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(
        r.answers[1].name.to_string(),
        "web.default.svc.cluster.local."
    );

    // A target in the zone that does not exist: CNAME, then NXDOMAIN (RFC 6604).
    let z = DnsZone::new(
        "cluster.local",
        &[DnsService::ExternalName {
            namespace: "a".into(),
            name: "b".into(),
            target: "gone.a.svc.cluster.local".into(),
        }],
    )
    .unwrap();
    let r = ask(&z, "b.a.svc.cluster.local.", RecordType::A);
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    assert_eq!(r.answers.len(), 1);
    assert_soa_authority(&r);

    // A loop ends without hanging.
    let z = DnsZone::new(
        "cluster.local",
        &[
            DnsService::ExternalName {
                namespace: "a".into(),
                name: "x".into(),
                target: "y.a.svc.cluster.local".into(),
            },
            DnsService::ExternalName {
                namespace: "a".into(),
                name: "y".into(),
                target: "x.a.svc.cluster.local".into(),
            },
        ],
    )
    .unwrap();
    let r = ask(&z, "x.a.svc.cluster.local.", RecordType::A);
    assert_eq!(r.answers.len(), MAX_CNAME_CHAIN + 1);
}

#[test]
fn srv_clusterip() {
    let z = zone();
    let r = ask(
        &z,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.authoritative);
    assert_eq!(
        srv_of(&r.answers),
        vec![(0, 100, 80, "web.default.svc.cluster.local.".to_owned())]
    );
    assert_eq!(a_of(&r.additionals), vec![Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(
        aaaa_of(&r.additionals),
        vec!["fd00::10".parse::<Ipv6Addr>().unwrap()]
    );
    assert!(r
        .additionals
        .iter()
        .all(|a| a.name.to_string() == "web.default.svc.cluster.local."));

    let r = ask(
        &z,
        "_dns._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(srv_of(&r.answers)[0].2, 53);
    // Wrong protocol or unknown port name: NXDOMAIN.
    for name in [
        "_dns._tcp.web.default.svc.cluster.local.",
        "_nope._tcp.web.default.svc.cluster.local.",
    ] {
        let r = ask(&z, name, RecordType::SRV);
        assert_eq!(r.response_code, ResponseCode::NXDomain, "{name}");
    }
    // A at an SRV name: NODATA.
    let r = ask(
        &z,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
}

#[test]
fn srv_headless() {
    let z = zone();
    let r = ask(&z, "_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV);
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert_eq!(
        srv_of(&r.answers),
        vec![
            (
                0,
                100,
                5432,
                "10-1-0-1.db.prod.svc.cluster.local.".to_owned()
            ),
            (
                0,
                100,
                5432,
                "10-1-0-2.db.prod.svc.cluster.local.".to_owned()
            ),
            (
                0,
                100,
                5432,
                "fd00--1.db.prod.svc.cluster.local.".to_owned()
            ),
        ]
    );
    let mut a: Vec<(String, Ipv4Addr)> = r
        .additionals
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::A(a) => Some((rec.name.to_string(), a.0)),
            _ => None,
        })
        .collect();
    a.sort();
    assert_eq!(
        a,
        vec![
            (
                "10-1-0-1.db.prod.svc.cluster.local.".into(),
                Ipv4Addr::new(10, 1, 0, 1)
            ),
            (
                "10-1-0-2.db.prod.svc.cluster.local.".into(),
                Ipv4Addr::new(10, 1, 0, 2)
            ),
        ]
    );
    assert_eq!(
        aaaa_of(&r.additionals),
        vec!["fd00::1".parse::<Ipv6Addr>().unwrap()]
    );
}

#[test]
fn nxdomain_with_soa() {
    let z = zone();
    for name in [
        "nope.default.svc.cluster.local.",
        "web.nope.svc.cluster.local.",
        "x.web.default.svc.cluster.local.",
        "pod.cluster.local.",
    ] {
        let r = ask(&z, name, RecordType::A);
        assert_eq!(r.response_code, ResponseCode::NXDomain, "{name}");
        assert!(r.authoritative);
        assert!(r.answers.is_empty());
        assert_soa_authority(&r);
    }
}

#[test]
fn refused_outside_the_domain() {
    let z = zone();
    for name in ["example.com.", "local.", ".", "cluster.local.example.com."] {
        let r = ask(&z, name, RecordType::A);
        assert_eq!(r.response_code, ResponseCode::Refused, "{name}");
        assert!(!r.authoritative);
        assert!(r.answers.is_empty() && r.authorities.is_empty());
    }
    // Zone transfers are refused too.
    let r = ask(&z, "cluster.local.", RecordType::AXFR);
    assert_eq!(r.response_code, ResponseCode::Refused);
}

#[test]
fn case_insensitive_and_question_case_kept() {
    let z = zone();
    let r = ask(&z, "WeB.DeFault.SVC.Cluster.LOCAL.", RecordType::A);
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert_eq!(a_of(&r.answers), vec![Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(
        r.answers[0].name.to_string(),
        "WeB.DeFault.SVC.Cluster.LOCAL."
    );
    let r = ask(
        &z,
        "_HTTP._TCP.WEB.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(srv_of(&r.answers).len(), 1);
    // Upper case in the config and the domain is folded too.
    let z = DnsZone::new(
        "Cluster.Local.",
        &[DnsService::ClusterIp {
            namespace: "NS".into(),
            name: "Svc".into(),
            ips: vec![ip("10.0.0.1")],
            ports: vec![],
        }],
    )
    .unwrap();
    assert_eq!(z.domain(), "cluster.local.");
    let r = ask(&z, "svc.ns.svc.cluster.local.", RecordType::A);
    assert_eq!(a_of(&r.answers), vec![Ipv4Addr::new(10, 0, 0, 1)]);
}

#[test]
fn apex_soa_and_dns_version() {
    let z = zone();
    let r = ask(&z, "cluster.local.", RecordType::SOA);
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(matches!(r.answers.as_slice(), [rec] if matches!(rec.data, RData::SOA(_))));
    let r = ask(&z, "dns-version.cluster.local.", RecordType::TXT);
    assert!(
        matches!(r.answers.as_slice(), [rec] if matches!(&rec.data, RData::TXT(t) if t.to_string() == "1.1.0"))
    );
    let r = ask(&z, "cluster.local.", RecordType::NS);
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
}

#[test]
fn any_returns_everything_at_the_name() {
    let r = ask(&zone(), "web.default.svc.cluster.local.", RecordType::ANY);
    assert_eq!(r.answers.len(), 2);
}

#[test]
fn ttl_is_settable() {
    let z = DnsZone::with_ttl("cluster.local", &services(), 30).unwrap();
    assert_eq!(z.ttl(), 30);
    let r = ask(&z, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(r.answers[0].ttl, 30);
    let r = ask(&z, "nope.default.svc.cluster.local.", RecordType::A);
    assert_eq!(r.authorities[0].ttl, 30);
}

#[test]
fn only_query_opcode() {
    let z = zone();
    let mut q = query("web.default.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    q[2] = (q[2] & !0x78) | (2 << 3); // STATUS
    let r = answer(&z, &q).unwrap();
    assert_eq!(r.len(), 12);
    assert_eq!(r[..2], q[..2]);
    assert_eq!(r[2] & 0x80, 0x80, "QR");
    assert_eq!((r[2] >> 3) & 0x0f, 2, "opcode echoed");
    assert_eq!(r[3] & 0x0f, 4, "NOTIMP");
    // Responses are never answered.
    q[2] |= 0x80;
    assert!(answer(&z, &q).is_none());
}

#[test]
fn malformed_and_multi_question_are_formerr() {
    let z = zone();
    let mut q = query("web.default.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    q.truncate(20);
    let r = Message::from_vec(&answer(&z, &q).unwrap()).unwrap();
    assert_eq!(r.response_code, ResponseCode::FormErr);

    let mut q = query("web.default.svc.cluster.local.", RecordType::A);
    q.add_query(Query::query(
        Name::from_ascii("v4only.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    let (r, _) = ask_msg(&z, &q, Transport::Udp);
    assert_eq!(r.response_code, ResponseCode::FormErr);

    assert!(answer(&z, &[]).is_none());
    assert!(answer(&z, &[0; 11]).is_none());
    assert!(answer(&z, &[0; 12]).is_some());
}

#[test]
fn edns_is_answered() {
    let z = zone();
    let mut q = query("web.default.svc.cluster.local.", RecordType::A);
    let mut e = Edns::new();
    e.set_max_payload(4096);
    q.set_edns(e.clone());
    let (r, _) = ask_msg(&z, &q, Transport::Udp);
    assert_eq!(r.response_code, ResponseCode::NoError);
    let re = r.edns.as_ref().expect("OPT in the response");
    assert_eq!(re.max_payload(), EDNS_PAYLOAD);
    assert_eq!(a_of(&r.answers).len(), 1);

    e.set_version(1);
    q.set_edns(e);
    let (r, _) = ask_msg(&z, &q, Transport::Udp);
    // BADVERS and BADSIG share code 16; the decoder calls it BADSIG.
    assert_eq!(u16::from(r.response_code), u16::from(ResponseCode::BADVERS));
    assert!(r.answers.is_empty());

    let (r, _) = ask_msg(
        &z,
        &query("web.default.svc.cluster.local.", RecordType::A),
        Transport::Udp,
    );
    assert!(r.edns.is_none());
}

fn big_headless(n: u8) -> DnsZone {
    let ips = (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 2, 0, i)))
        .collect();
    DnsZone::new(
        "cluster.local",
        &[DnsService::Headless {
            namespace: "big".into(),
            name: "many".into(),
            ips,
            ports: vec![port("p", SrvProto::Tcp, 9)],
        }],
    )
    .unwrap()
}

#[test]
fn udp_truncation() {
    let z = big_headless(100);
    assert_eq!(z.len(), 300);
    let name = "many.big.svc.cluster.local.";
    let q = query(name, RecordType::A);
    let (r, len) = ask_msg(&z, &q, Transport::Udp);
    assert!(len <= 512);
    assert!(r.truncation);
    assert!(r.answers.is_empty());
    assert_eq!(r.queries, q.queries);

    let (r, len) = ask_msg(&z, &q, Transport::Tcp);
    assert!(!r.truncation);
    assert_eq!(r.answers.len(), 100);
    assert!(len > 1232);

    // With EDNS 4096 the limit is ours, 1232: 100 A records do not fit, 50 do.
    let mut qe = q.clone();
    let mut e = Edns::new();
    e.set_max_payload(4096);
    qe.set_edns(e);
    let (r, len) = ask_msg(&z, &qe, Transport::Udp);
    assert!(r.truncation && len <= 1232);
    assert!(r.edns.is_some());
    let z50 = big_headless(50);
    let (r, _) = ask_msg(&z50, &qe, Transport::Udp);
    assert!(!r.truncation);
    assert_eq!(r.answers.len(), 50);
    let (r, _) = ask_msg(&z50, &q, Transport::Udp);
    assert!(r.truncation);

    // SRV whose answers fit but whose additional section does not: the
    // additionals go, without TC.
    let z20 = big_headless(20);
    let (r, len) = ask_msg(
        &z20,
        &query("_p._tcp.many.big.svc.cluster.local.", RecordType::SRV),
        Transport::Udp,
    );
    assert!(len <= 512);
    if r.truncation {
        assert!(r.answers.is_empty());
    } else {
        assert_eq!(r.answers.len(), 20);
        assert!(r.additionals.is_empty());
    }
}

#[test]
fn zone_errors_and_len() {
    assert_eq!(zone().len(), 2 + 2 + 1 + (3 + 3 + 3) + 1 + 1);
    assert!(DnsZone::new::<DnsService>("cluster.local", &[])
        .unwrap()
        .is_empty());
    for bad in ["", ".", "bad_domain.local", "a..b", "-x.local"] {
        assert!(
            matches!(
                DnsZone::new::<DnsService>(bad, &[]),
                Err(DnsError::InvalidDomain { .. })
            ),
            "{bad:?}"
        );
    }
    let dup = [services()[0].clone(), services()[0].clone()];
    assert!(matches!(
        DnsZone::new("cluster.local", &dup),
        Err(DnsError::Duplicate { .. })
    ));
    let bad = DnsService::ClusterIp {
        namespace: "default".into(),
        name: "has.dot".into(),
        ips: vec![],
        ports: vec![],
    };
    let e = DnsZone::new("cluster.local", &[bad]).unwrap_err();
    assert!(e.to_string().contains("has.dot"), "{e}");
    let bad = DnsService::ClusterIp {
        namespace: "default".into(),
        name: "x".into(),
        ips: vec![],
        ports: vec![port("a b", SrvProto::Tcp, 1)],
    };
    assert!(matches!(
        DnsZone::new("cluster.local", &[bad]),
        Err(DnsError::InvalidName {
            what: "port name",
            ..
        })
    ));
    let bad = DnsService::ExternalName {
        namespace: "default".into(),
        name: "x".into(),
        target: ".".into(),
    };
    assert!(matches!(
        DnsZone::new("cluster.local", &[bad]),
        Err(DnsError::InvalidName { what: "target", .. })
    ));
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let z = zone();
        let r = answer(&z, &bytes);
        if bytes.len() < 12 {
            prop_assert!(r.is_none());
        }
        if let Some(r) = r {
            prop_assert!(r.len() >= 12);
            prop_assert_eq!(&r[..2], &bytes[..2]);
        }
        let _ = answer_over(&z, &bytes, Transport::Tcp);
    }

    #[test]
    fn mutated_queries_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let z = zone();
        let mut q = query("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        q.set_edns(Edns::new());
        let mut b = q.to_vec().unwrap();
        for (i, v) in flips {
            let i = i % b.len();
            b[i] ^= v;
        }
        b.truncate(cut % (b.len() + 1));
        if let Some(r) = answer(&z, &b) {
            prop_assert!(r.len() <= 512);
        }
    }
}

#[test]
fn udp_and_tcp_round_trip_and_update() {
    let server = DnsServer::spawn("127.0.0.1:0".parse().unwrap(), zone()).unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let udp_ask = |name: &str| -> Message {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let q = query(name, RecordType::A);
        sock.send_to(&q.to_vec().unwrap(), addr).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(from, addr);
        let r = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(r.id, q.id);
        r
    };
    let r = udp_ask("web.default.svc.cluster.local.");
    assert_eq!(a_of(&r.answers), vec![Ipv4Addr::new(10, 96, 0, 10)]);

    // TCP: two framed queries on one connection, the second large.
    server.update(big_headless(100));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tcp_ask = |name: &str| -> Message {
        let q = query(name, RecordType::A).to_vec().unwrap();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).unwrap();
        Message::from_vec(&buf).unwrap()
    };
    let r = tcp_ask("many.big.svc.cluster.local.");
    assert!(!r.truncation);
    assert_eq!(r.answers.len(), 100);
    let r = tcp_ask("web.default.svc.cluster.local.");
    assert_eq!(r.response_code, ResponseCode::NXDomain, "zone was swapped");

    // UDP sees the new zone as well, and truncates.
    let r = udp_ask("many.big.svc.cluster.local.");
    assert!(r.truncation);
    server.update(zone());
    let r = udp_ask("web.default.svc.cluster.local.");
    assert_eq!(r.response_code, ResponseCode::NoError);

    // Garbage over UDP does not kill the server.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(&[1, 2, 3], addr).unwrap();
    let r = udp_ask("web.default.svc.cluster.local.");
    assert_eq!(a_of(&r.answers).len(), 1);

    // Drop stops both threads (and the open TCP connection) promptly.
    let t = Instant::now();
    drop(server);
    assert!(t.elapsed() < Duration::from_secs(3));
    let mut buf = [0u8; 2];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
}
