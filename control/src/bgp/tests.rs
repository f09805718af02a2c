//! The announcement rule on tables built as the compiler builds them.

use super::*;
use sluice_dataplane::service::{BackendSpec, ServiceSpec, VipKey};
use sluice_dataplane::types::{proto, Addr};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn backend(addr: &str, weight: u16, terminating: bool) -> BackendSpec {
    BackendSpec {
        addr: Addr::from(ip(addr)),
        port: 8080,
        weight,
        terminating,
        ..BackendSpec::default()
    }
}

fn svc(vip: &str, port: u16, kind: VipKind, backends: Vec<BackendSpec>) -> ServiceSpec {
    ServiceSpec {
        name: format!("default/web:{port}"),
        vip: VipKey {
            addr: Addr::from(ip(vip)),
            port,
            proto: proto::TCP,
        },
        backends,
        kind,
        ..ServiceSpec::default()
    }
}

fn table(specs: Vec<ServiceSpec>) -> ServiceTable {
    ServiceTable::build(1, specs).expect("valid table")
}

fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
    addrs.iter().map(|a| ip(a)).collect()
}

#[test]
fn a_vip_is_usable_with_one_ready_endpoint_on_any_port() {
    let t = table(vec![
        // Port 80 has no ready endpoint, port 443 has one: usable.
        svc(
            "198.18.100.10",
            80,
            VipKind::ClusterIp,
            vec![backend("198.18.1.11", 0, true)],
        ),
        svc(
            "198.18.100.10",
            443,
            VipKind::ClusterIp,
            vec![backend("198.18.1.11", 1, false)],
        ),
        // Only a draining (weight 0) and a terminating endpoint: not usable.
        svc(
            "198.18.100.20",
            80,
            VipKind::LoadBalancer,
            vec![
                backend("198.18.1.11", 0, false),
                backend("198.18.1.12", 0, true),
            ],
        ),
        // No endpoint at all.
        svc("198.18.100.30", 80, VipKind::ExternalIp, vec![]),
        svc(
            "2001:db8:100::10",
            80,
            VipKind::LoadBalancer,
            vec![backend("2001:db8:1::11", 3, false)],
        ),
        // A node port is the host's own address: never a candidate.
        svc(
            "198.18.0.1",
            30080,
            VipKind::NodePort,
            vec![backend("198.18.1.11", 1, false)],
        ),
    ]);
    let c = candidates(&t);
    assert_eq!(
        c.into_iter().collect::<Vec<_>>(),
        vec![
            (ip("198.18.100.10"), true),
            (ip("198.18.100.20"), false),
            (ip("198.18.100.30"), false),
            (ip("2001:db8:100::10"), true),
        ]
    );
}

#[test]
fn nothing_is_announced_before_the_warm_up_ends() {
    let t0 = Instant::now();
    let t = table(vec![svc(
        "198.18.100.10",
        80,
        VipKind::ClusterIp,
        vec![backend("198.18.1.11", 1, false)],
    )]);
    let a = Announcer::new(t0, Duration::from_secs(5));
    let early = a.want(&t, t0 + Duration::from_millis(4999), true, true);
    assert!(early.vips.is_empty());
    assert_eq!(early.hold, Some(Hold::WarmingUp));
    assert_eq!(early.candidates, set(&["198.18.100.10"]));
    let late = a.want(&t, t0 + Duration::from_secs(5), true, true);
    assert_eq!(late.vips, set(&["198.18.100.10"]));
    assert_eq!(late.hold, None);
}

#[test]
fn a_stopped_data_path_withdraws_everything() {
    let t0 = Instant::now();
    let t = table(vec![svc(
        "198.18.100.10",
        80,
        VipKind::ClusterIp,
        vec![backend("198.18.1.11", 1, false)],
    )]);
    let a = Announcer::new(t0, Duration::ZERO);
    let w = a.want(&t, t0, false, true);
    assert!(w.vips.is_empty());
    assert_eq!(w.hold, Some(Hold::DataPathStopped));
    // No usable VIP: nothing is held back, so no hold to report.
    let empty = table(vec![svc("198.18.100.10", 80, VipKind::ClusterIp, vec![])]);
    assert_eq!(a.want(&empty, t0, false, true).hold, None);
}

#[test]
fn the_watchdog_wants_every_heartbeat_fresh() {
    let stale = Duration::from_secs(1);
    assert!(data_path_alive(&[10_000, 9_500], 10_400, stale));
    assert!(data_path_alive(&[10_000], 11_000, stale));
    // One worker stuck for over a second is enough.
    assert!(!data_path_alive(&[10_000, 8_999], 10_000, stale));
    assert!(!data_path_alive(&[], 10_000, stale));
    // A heartbeat ahead of the reader's clock (read order) is fresh.
    assert!(data_path_alive(&[10_001], 10_000, stale));
}

#[test]
fn bird_is_told_until_it_accepts_and_then_only_changes() {
    let mut a = Announcer::new(Instant::now(), Duration::ZERO);
    // The first sync is due even for the empty set: BIRD may still hold
    // a previous run's routes.
    assert!(a.needs_sync(&BTreeSet::new()));
    a.accepted(BTreeSet::new());
    assert!(!a.needs_sync(&BTreeSet::new()));
    let one = set(&["198.18.100.10"]);
    assert!(a.needs_sync(&one));
    // Not accepted (BIRD refused): still due, and what is announced is
    // what BIRD last took.
    assert!(a.needs_sync(&one));
    assert!(a.announced().is_empty());
    a.accepted(one.clone());
    assert!(!a.needs_sync(&one));
    assert_eq!(a.announced(), one);
}

#[test]
fn the_status_lists_candidates_and_vips_still_announced() {
    let s = Status::default();
    s.set(
        &set(&["198.18.100.10", "198.18.100.20"]),
        &set(&["198.18.100.10", "198.18.100.99"]),
    );
    assert_eq!(
        s.announced(),
        vec![
            (ip("198.18.100.10"), true),
            (ip("198.18.100.20"), false),
            (ip("198.18.100.99"), true),
        ]
    );
}

/// A fake BIRD that refuses the first `configure` and accepts the
/// second: the announcer keeps the old set after the refusal, counts it,
/// and retries; at shutdown both files are emptied.
#[test]
fn sync_writes_both_files_and_reports_refusals() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    let dir = std::env::temp_dir().join(format!("sluice-bgp-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let opts = BgpOpts {
        socket: dir.join("bird.ctl"),
        include: dir.join("v4.conf"),
        include6: dir.join("v6.conf"),
        announce_after: Duration::ZERO,
    };
    let listener = UnixListener::bind(&opts.socket).expect("bind");
    let server = std::thread::spawn(move || {
        for reply in [
            &b"0002-Reading configuration from bird.conf\n8002 v4.conf:1:1 syntax error\n"[..],
            b"0002-Reading configuration from bird.conf\n0003 Reconfigured\n",
        ] {
            let (mut s, _) = listener.accept().expect("accept");
            s.write_all(b"0001 BIRD 2.0.12 ready.\n").expect("greet");
            let mut cmd = [0u8; 10];
            s.read_exact(&mut cmd).expect("command");
            s.write_all(reply).expect("reply");
        }
    });
    let vips = set(&["198.18.100.10", "2001:db8:100::10"]);
    let e = sync(&opts, &vips).expect_err("refused");
    assert!(
        matches!(&e, BirdError::Refused { code: 8002, text } if text.contains("v4.conf:1:1")),
        "{e}"
    );
    sync(&opts, &vips).expect("accepted");
    server.join().expect("server");
    let v4 = std::fs::read_to_string(&opts.include).expect("v4 file");
    let v6 = std::fs::read_to_string(&opts.include6).expect("v6 file");
    assert!(v4.contains("route 198.18.100.10/32 blackhole;"), "{v4}");
    assert!(!v4.contains("2001:db8"), "{v4}");
    assert!(v6.contains("route 2001:db8:100::10/128 blackhole;"), "{v6}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_failed_config_reload_withdraws_until_one_applies() {
    let t0 = Instant::now();
    let t = table(vec![svc(
        "198.18.100.10",
        80,
        VipKind::ClusterIp,
        vec![backend("198.18.1.11", 1, false)],
    )]);
    let a = Announcer::new(t0, Duration::ZERO);
    let cfg = ConfigApplied::default();
    assert!(cfg.get(), "the config a host starts with applied");
    assert_eq!(
        a.want(&t, t0, true, cfg.get()).vips,
        set(&["198.18.100.10"])
    );
    cfg.set(false);
    let w = a.want(&t, t0, true, cfg.get());
    assert!(w.vips.is_empty());
    assert_eq!(w.hold, Some(Hold::ConfigFailed));
    assert_eq!(w.candidates, set(&["198.18.100.10"]));
    cfg.clone().set(true);
    let w = a.want(&t, t0, true, cfg.get());
    assert_eq!((w.vips, w.hold), (set(&["198.18.100.10"]), None));
}
