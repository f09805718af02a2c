//! The ceiling: a raw AF_XDP forwarder that only rewrites MAC addresses.
//!
//! It uses the same I/O path as Sluice and nothing else: the same steering
//! XDP program (`sluice_dataplane::steer`, loaded with aya, so only the
//! bench's VIP traffic reaches the sockets and ARP still reaches the
//! kernel), one AF_XDP socket per queue of `front` and `back` over one
//! shared UMEM (the sizes Sluice uses: 1024-entry rings, 2048 frames per
//! socket, bursts of 64), the same idle policy (sleep in `poll()` after 256
//! empty bursts unless `--busy-poll`), and the same TX kick per burst. What it
//! leaves out is Sluice's packet core: no parsing beyond the ports, no flow
//! table, no scheduling, no NAT, no checksum updates.
//!
//! We load Sluice's steering program rather than libxdp's default one
//! because libxdp's redirects *everything* on a queue with a socket, ARP
//! included, and needs bpffs for its dispatcher; with the same program on
//! both, the difference between this and Sluice is exactly the packet core.
//!
//! Because it does not translate addresses, the backends own the VIP (on
//! `lo`, like IPVS direct routing) while this contender runs, and answer from
//! it; frames from the client go to a backend chosen by a hash of the
//! client's address and port (or backend 0 for `--pin-port`, the iperf3
//! service, which has one endpoint in every contender), and frames from the
//! backends go to the client's MAC.

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_dataplane::service::VipKey;
use sluice_dataplane::steer::{AttachMode, Steering};
use sluice_dataplane::types::Addr;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::sys::{stop_flag, Res};

const RING: u32 = 1024;
const FRAMES_PER_SOCKET: u32 = 2048;
const BURST: usize = 64;

/// What to forward.
#[derive(Clone, Debug)]
pub struct FwdArgs {
    /// Client-side interface.
    pub front: String,
    /// Backend-side interface.
    pub back: String,
    /// The client's MAC (destination of frames leaving `front`).
    pub client_mac: [u8; 6],
    /// The backends' MACs.
    pub backend_macs: Vec<[u8; 6]>,
    /// Destination port that always goes to backend 0.
    pub pin_port: u16,
    /// (VIP, port, protocol) steered to the sockets, both from the client
    /// (destination) and from the backends (source).
    pub vips: Vec<([u8; 4], u16, u8)>,
    /// Spin instead of sleeping when idle.
    pub busy_poll: bool,
    /// Stop after this long at most.
    pub seconds: f64,
}

struct Sock {
    iface: usize,
    queue: u32,
    rx: RxQueue,
    tx: TxQueue,
    fq: FillQueue,
    cq: CompQueue,
    in_flight: u32,
}

fn read_sys(ifname: &str, what: &str) -> Res<String> {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/{what}"))
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{ifname}: reading {what}: {e}"))
}

fn rx_queues(ifname: &str) -> Res<u32> {
    let n = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map_err(|e| format!("{ifname}: {e}"))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(n.max(1) as u32)
}

/// Runs the forwarder until SIGTERM/SIGINT or `seconds`; prints `ready` on
/// stdout once attached and `counter NAME VALUE` lines on stderr at the end.
pub fn run(a: &FwdArgs) -> Res<()> {
    if a.backend_macs.is_empty() {
        return Err("no backend MACs".into());
    }
    let stop = stop_flag();
    let ifaces = [a.front.clone(), a.back.clone()];
    let macs = [
        crate::topo::parse_mac(&read_sys(&a.front, "address")?)?,
        crate::topo::parse_mac(&read_sys(&a.back, "address")?)?,
    ];
    let queues = [rx_queues(&a.front)?, rx_queues(&a.back)?];

    let keys: Vec<VipKey> = a
        .vips
        .iter()
        .map(|&(ip, port, proto)| VipKey {
            addr: Addr::from_v4(ip),
            port,
            proto,
        })
        .collect();
    let sources: Vec<(Addr, u16, u8)> = keys.iter().map(|k| (k.addr, k.port, k.proto)).collect();
    let mut steering = Vec::new();
    for ifname in &ifaces {
        let mut s = Steering::attach(ifname, AttachMode::Auto).map_err(|e| e.to_string())?;
        s.set_vips(&keys).map_err(|e| e.to_string())?;
        s.set_backends(&sources).map_err(|e| e.to_string())?;
        eprintln!("steering attached to {ifname} ({:?} mode)", s.mode());
        steering.push(s);
    }

    let ring = QueueSize::new(RING).map_err(|e| e.to_string())?;
    let umem_cfg = UmemConfig::builder()
        .frame_size(FrameSize::new(2048).map_err(|e| e.to_string())?)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| e.to_string())?;
    let nsocks = queues.iter().sum::<u32>();
    let frames = NonZeroU32::new(FRAMES_PER_SOCKET * nsocks).ok_or("no queues")?;
    let (umem, mut free) = Umem::new(umem_cfg, frames, false).map_err(|e| e.to_string())?;
    let sock_cfg = SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let mut socks = Vec::new();
    for (i, ifname) in ifaces.iter().enumerate() {
        let iface = std::ffi::CString::new(ifname.as_str())
            .map(Interface::new)
            .map_err(|e| e.to_string())?;
        for q in 0..queues[i] {
            // SAFETY: INHIBIT_PROG_LOAD is set on every socket (xsk-rs's
            // condition for sharing a UMEM), and each (interface, queue)
            // pair is bound exactly once, so fresh fill/completion rings
            // come back for it.
            let (tx, rx, fqcq) = unsafe { Socket::new(sock_cfg, &umem, &iface, q) }
                .map_err(|e| format!("AF_XDP socket on {ifname} queue {q}: {e}"))?;
            let (fq, cq) = fqcq.ok_or("no fill/completion ring for a fresh queue")?;
            steering[i]
                .register_socket(q, rx.fd().as_raw_fd())
                .map_err(|e| e.to_string())?;
            socks.push(Sock {
                iface: i,
                queue: q,
                rx,
                tx,
                fq,
                cq,
                in_flight: 0,
            });
        }
    }
    // Egress socket for each ingress socket: same queue index on the other
    // interface (modulo its queue count).
    let egress: Vec<usize> = socks
        .iter()
        .map(|s| {
            let other = 1 - s.iface;
            let q = s.queue % queues[other];
            socks
                .iter()
                .position(|t| t.iface == other && t.queue == q)
                .unwrap_or(0)
        })
        .collect();

    let mut pollfds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.rx.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut pending: Vec<Vec<FrameDesc>> = socks
        .iter()
        .map(|_| Vec::with_capacity(RING as usize))
        .collect();
    let mut scratch = vec![FrameDesc::default(); RING as usize];
    let (mut rx_total, mut tx_total, mut dropped) = (0u64, 0u64, 0u64);
    refill(&mut socks, &mut free);
    println!("ready");

    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    let mut idle = 0u32;
    let mut iter = 0u32;
    while !stop.load(Ordering::Relaxed) {
        iter = iter.wrapping_add(1);
        if iter.is_multiple_of(1024) && Instant::now() >= end {
            break;
        }
        let mut got = 0usize;
        for i in 0..socks.len() {
            // SAFETY: the rx ring belongs to a socket of `umem`; consume()
            // only writes descriptors into `scratch`.
            let n = unsafe { socks[i].rx.consume(&mut scratch[..BURST]) };
            got += n;
            let into = socks[i].iface;
            for d in scratch[..n].iter_mut() {
                // SAFETY: `d` came out of an rx ring of this UMEM and is held
                // by us alone until it is queued for TX or freed below.
                let mut data = unsafe { umem.data_mut(d) };
                let f = data.contents_mut();
                if f.len() < 14 {
                    free.push(*d);
                    continue;
                }
                let out = 1 - into;
                let dst = if into == 0 {
                    a.backend_macs[pick(f, a.pin_port, a.backend_macs.len())]
                } else {
                    a.client_mac
                };
                f[0..6].copy_from_slice(&dst);
                f[6..12].copy_from_slice(&macs[out]);
                let e = egress[i];
                if pending[e].len() < pending[e].capacity() {
                    pending[e].push(*d);
                } else {
                    dropped += 1;
                    free.push(*d);
                }
            }
        }
        rx_total += got as u64;
        for (s, p) in socks.iter_mut().zip(pending.iter_mut()) {
            if !p.is_empty() {
                let room = s.tx.nb_free(p.len() as u32) as usize;
                let n = room.min(p.len());
                // SAFETY: pending frames came from this UMEM's rx rings and
                // nothing else holds them; `nb_free` said `n` slots are free.
                let done = unsafe { s.tx.produce(&p[..n]) };
                s.in_flight += done as u32;
                tx_total += done as u64;
                for d in p.drain(..).skip(done) {
                    dropped += 1;
                    free.push(d);
                }
            }
            // Copy-mode TX happens inside sendto(): kick until drained
            // (bounded), reclaiming completions.
            let mut kicks = 0;
            loop {
                // SAFETY: completed descriptors belong to this UMEM and the
                // kernel is done with them.
                let c = unsafe { s.cq.consume(&mut scratch) };
                free.extend_from_slice(&scratch[..c]);
                s.in_flight = s.in_flight.saturating_sub(c as u32);
                if s.in_flight == 0 || kicks >= 8 || s.tx.wakeup().is_err() {
                    break;
                }
                kicks += 1;
            }
        }
        refill(&mut socks, &mut free);
        if got == 0 {
            idle = idle.saturating_add(1);
            if !a.busy_poll && idle > 256 {
                // SAFETY: `pollfds` is a live array of pollfd whose fds stay
                // open as long as `socks`.
                unsafe {
                    libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 10);
                }
            }
        } else {
            idle = 0;
        }
    }
    for (s, st) in steering.iter().zip(&ifaces) {
        if let Ok(x) = s.stats() {
            eprintln!("counter xdp_redirected_{st} {}", x.redirected);
            eprintln!("counter xdp_passed_{st} {}", x.passed);
        }
    }
    let (mut ring_full, mut fill_empty, mut rx_drop) = (0, 0, 0);
    for s in &socks {
        if let Ok(st) = s.rx.fd().xdp_statistics() {
            ring_full += st.rx_ring_full();
            fill_empty += st.rx_fill_ring_empty_descs();
            rx_drop += st.rx_dropped();
        }
    }
    eprintln!("counter xsk_rx_ring_full {ring_full}");
    eprintln!("counter xsk_fill_ring_empty {fill_empty}");
    eprintln!("counter xsk_rx_dropped {rx_drop}");
    eprintln!("counter rx {rx_total}");
    eprintln!("counter tx {tx_total}");
    eprintln!("counter tx_dropped {dropped}");
    // Sockets go before the UMEM and the steering program.
    drop(socks);
    drop(steering);
    Ok(())
}

/// Backend for a frame from the client: `pin_port` → 0, else a hash of the
/// source address and port.
fn pick(f: &[u8], pin_port: u16, n: usize) -> usize {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return 0;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let l4 = 14 + ihl;
    if f.len() < l4 + 4 {
        return 0;
    }
    let dport = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
    if dport == pin_port {
        return 0;
    }
    let mut h: u32 = 0x811c_9dc5;
    for &b in f[26..30].iter().chain(&f[l4..l4 + 2]) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % n as u32) as usize
}

fn refill(socks: &mut [Sock], free: &mut Vec<FrameDesc>) {
    for s in socks.iter_mut() {
        if free.is_empty() {
            break;
        }
        let n = (s.fq.nb_free(RING) as usize).min(free.len());
        if n == 0 {
            continue;
        }
        let start = free.len() - n;
        // SAFETY: these descriptors are on the free list, so no ring and no
        // other code holds them; they belong to this UMEM; `nb_free` said `n`
        // slots are free.
        let done = unsafe { s.fq.produce(&free[start..]) };
        free.truncate(free.len() - done);
        if done > 0 && s.fq.needs_wakeup() {
            let _ = s.fq.wakeup(s.rx.fd_mut(), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_pins_and_spreads() {
        let mut f = crate::gen::frame(
            [0; 6],
            [0; 6],
            [198, 18, 0, 2],
            [198, 18, 100, 10],
            1000,
            5201,
        );
        assert_eq!(pick(&f, 5201, 3), 0);
        let mut seen = [false; 3];
        for p in 0..64u16 {
            f = crate::gen::frame([0; 6], [0; 6], [198, 18, 0, 2], [198, 18, 100, 10], p, 5353);
            seen[pick(&f, 5201, 3)] = true;
        }
        assert_eq!(seen, [true; 3]);
        assert_eq!(pick(&[0u8; 20], 5201, 3), 0);
    }
}
