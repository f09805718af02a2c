//! Cost of the NAT rewrite alone ([`nat::rewrite`]): both addresses and both
//! ports of a parsed frame replaced, IPv4 header and TCP checksums updated
//! incrementally (RFC 1624), in ns per call. No parse, lookup, MAC rewrite
//! or port bookkeeping: the frame is parsed once outside the timed loop, and
//! each call rewrites it to the other of two tuples (client → VIP, then
//! client → backend, and back), so every call changes every field.
//!
//! Frames: a minimum-size IPv4 TCP segment (60 bytes, the 64-byte class on
//! the wire with the FCS) and an IPv6 TCP segment (74 bytes, no payload).
//!
//! Beside it: [`nat::set_macs`], the MAC rewrite every NAT verdict pays on
//! top (so a NAT packet costs `nat` + `set_macs`), and [`dr::rewrite`], the
//! whole rewrite of a direct-routing packet (both MACs, nothing else;
//! each call alternates between two backends' MACs so that every call
//! changes the destination).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_bench::{backend_ip, tcp, tcp6, BACKEND_PORT, BACK_MAC, VIP};
use sluice_dataplane::forward::{dr, nat};
use sluice_dataplane::types::{Addr, FlowKey};
use sluice_dataplane::wire;

fn bench_frame(c: &mut Criterion, name: &str, mut frame: Vec<u8>, other: FlowKey) {
    let p = wire::parse(&frame).expect("fixture parses");
    let orig = p.key;
    let targets = [other, orig];
    let mut g = c.benchmark_group("rewrite");
    g.throughput(Throughput::Elements(1));
    let mut k = 0usize;
    g.bench_function(format!("nat/{name}"), |b| {
        b.iter(|| {
            let to = &targets[k & 1];
            k += 1;
            nat::rewrite(black_box(&mut frame), black_box(&p), black_box(to))
        })
    });
    // Every rewrite succeeded and an even number of calls restores the frame
    // to its original tuple (the same alternation, finished if odd).
    if k & 1 == 1 {
        nat::rewrite(&mut frame, &p, &orig).expect("rewrite back");
    }
    assert_eq!(wire::parse(&frame).expect("still parses").key, orig);
    g.bench_function(format!("set_macs/{name}"), |b| {
        b.iter(|| {
            nat::set_macs(
                black_box(&mut frame),
                black_box(BACK_MAC),
                black_box([2; 6]),
            )
        })
    });
    let macs = [[2, 0, 0, 0, 1, 0x11], [2, 0, 0, 0, 1, 0x12]];
    let mut k = 0usize;
    g.bench_function(format!("dr/{name}"), |b| {
        b.iter(|| {
            let dst = macs[k & 1];
            k += 1;
            dr::rewrite(black_box(&mut frame), black_box(BACK_MAC), black_box(dst))
        })
    });
    assert_eq!(wire::parse(&frame).expect("still parses").key, orig);
    g.finish();
}

fn bench(c: &mut Criterion) {
    let client = [198, 19, 0, 7];
    let mut v4 = tcp(client, VIP, 40_000, 80, false, true);
    v4.resize(60, 0); // Ethernet padding up to the minimum frame.
    let to4 = FlowKey {
        src: Addr::from_v4([198, 18, 1, 1]),
        dst: Addr::from_v4(backend_ip(1)),
        sport: 61_234,
        dport: BACKEND_PORT,
        proto: sluice_dataplane::types::proto::TCP,
    };
    bench_frame(c, "ipv4_tcp_60B", v4, to4);

    let mut c6 = [0u8; 16];
    c6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    c6[15] = 7;
    let mut vip6 = c6;
    vip6[7] = 0x64;
    vip6[15] = 10;
    let mut be6 = c6;
    be6[7] = 1;
    be6[15] = 12;
    let mut snat6 = c6;
    snat6[7] = 1;
    snat6[15] = 1;
    let v6 = tcp6(c6, vip6, 40_000, 80);
    let to6 = FlowKey {
        src: Addr::from_v6(snat6),
        dst: Addr::from_v6(be6),
        sport: 61_234,
        dport: BACKEND_PORT,
        proto: sluice_dataplane::types::proto::TCP,
    };
    bench_frame(c, "ipv6_tcp_74B", v6, to6);
}

criterion_group!(benches, bench);
criterion_main!(benches);
