//! The UDP load generator: 64-byte frames (60 bytes + the 4-byte FCS a wire
//! would add) over many flows, from the client namespace, bounded by a
//! packet count and a duration.
//!
//! It writes whole Ethernet frames with an `AF_PACKET` socket and
//! `sendmmsg(2)` (64 frames per call) with `PACKET_QDISC_BYPASS`, so the
//! client's kernel stack and qdisc add nothing: each frame goes straight to
//! the veth's `ndo_start_xmit`. AF_XDP TX would be no faster here: on veth it
//! is copy mode, which builds the same skb. Frames are prebuilt, one per
//! flow (source port, and source address beyond 60 000 flows), with valid
//! IPv4 and UDP checksums, and sent round-robin over the flows.
//!
//! Flow `j` goes to service `j % S` when there are at least as many flows as
//! services (`S`), else to service `j * S / F`, so that the flows spread
//! over the whole service table (a linear iptables chain pays its average
//! depth, not its first rules').

use std::time::{Duration, Instant};

use crate::sys::Res;
use crate::topo::service_vip;

/// Length of the frames sent (64 bytes on a wire, with the FCS).
pub const FRAME_LEN: usize = 60;
/// UDP payload bytes in each frame.
const PAYLOAD: usize = FRAME_LEN - 14 - 20 - 8;
/// `PACKET_QDISC_BYPASS` from `<linux/if_packet.h>`.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// Distinct source ports per source address.
const PORTS_PER_ADDR: usize = 60_000;

/// What to send.
#[derive(Clone, Debug)]
pub struct GenArgs {
    /// Interface to send on.
    pub ifname: String,
    /// Source MAC (the client's).
    pub src_mac: [u8; 6],
    /// Destination MAC (the LB's front).
    pub dst_mac: [u8; 6],
    /// Source addresses (flows beyond 60 000 use the next one).
    pub src_ips: Vec<[u8; 4]>,
    /// Number of flows.
    pub flows: usize,
    /// Number of services the flows spread over.
    pub services: usize,
    /// UDP destination port.
    pub dport: u16,
    /// Stop after this many frames.
    pub count: u64,
    /// Stop after this long.
    pub seconds: f64,
    /// Frames per second (0: as fast as possible).
    pub rate: u64,
}

/// One's-complement sum of 16-bit words.
fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 60-byte Ethernet/IPv4/UDP frame with correct checksums.
pub fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((FRAME_LEN - 14) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = csum_fold(csum_add(0, ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp_len = (8 + PAYLOAD) as u16;
    {
        let udp = &mut f[34..42];
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&dport.to_be_bytes());
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    }
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    let mut sum = csum_add(0, &src);
    sum = csum_add(sum, &dst);
    sum += 17 + u32::from(udp_len);
    sum = csum_add(sum, &f[34..FRAME_LEN]);
    let mut c = csum_fold(sum);
    if c == 0 {
        c = 0xffff;
    }
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

/// The frames of every flow.
pub fn flow_frames(a: &GenArgs) -> Res<Vec<[u8; FRAME_LEN]>> {
    if a.flows == 0 || a.services == 0 {
        return Err("flows and services must be at least 1".into());
    }
    if a.flows > PORTS_PER_ADDR * a.src_ips.len() {
        return Err(format!(
            "{} flows need more than {} source addresses",
            a.flows,
            a.src_ips.len()
        ));
    }
    Ok((0..a.flows)
        .map(|j| {
            let s = if a.flows >= a.services {
                j % a.services
            } else {
                j * a.services / a.flows
            };
            let src = a.src_ips[j / PORTS_PER_ADDR];
            let sport = 1024 + (j % PORTS_PER_ADDR) as u16;
            frame(a.src_mac, a.dst_mac, src, service_vip(s), sport, a.dport)
        })
        .collect())
}

/// Sends; returns (frames sent, seconds spent).
pub fn run(a: &GenArgs) -> Res<(u64, f64)> {
    let frames = flow_frames(a)?;
    let cname = std::ffi::CString::new(a.ifname.as_str()).map_err(|e| e.to_string())?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(format!("{}: no such interface", a.ifname));
    }
    // SAFETY: plain socket(2); protocol 0 so the socket receives nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    let fd = Fd(fd);
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid c_int option value of the stated size.
    unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_PACKET,
            PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&a.dst_mac);
    let sll_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;

    // SAFETY: iovec is a plain C struct; all-zero is a valid value (the
    // pointers are set before any use).
    let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // SAFETY: as above, for mmsghdr.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];

    let start = Instant::now();
    let limit = Duration::from_secs_f64(a.seconds);
    let mut sent = 0u64;
    let mut next = 0usize;
    let mut errors = 0u64;
    while sent < a.count {
        let elapsed = start.elapsed();
        if elapsed >= limit {
            break;
        }
        let mut n = BATCH.min((a.count - sent) as usize);
        if a.rate > 0 {
            let allowed = (a.rate as f64 * elapsed.as_secs_f64()) as u64 + BATCH as u64;
            if sent >= allowed {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            n = n.min((allowed - sent) as usize);
        }
        for i in 0..n {
            let f = &frames[(next + i) % frames.len()];
            iov[i].iov_base = f.as_ptr() as *mut libc::c_void;
            iov[i].iov_len = FRAME_LEN;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
            h.msg_namelen = sll_len;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..n]` point at live iovecs over frames that outlive
        // the call and at `sll`; the kernel only reads them.
        let rc = unsafe { libc::sendmmsg(fd.0, msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if rc < 0 {
            errors += 1;
            if errors > 1_000_000 {
                return Err(format!("sendmmsg: {}", std::io::Error::last_os_error()));
            }
            std::thread::yield_now();
            continue;
        }
        sent += rc as u64;
        next = (next + rc as usize) % frames.len();
    }
    Ok((sent, start.elapsed().as_secs_f64()))
}

/// Owns a raw fd.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and close it once.
        unsafe {
            libc::close(self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_checksums_verify() {
        let f = frame(
            [2, 0, 0, 0, 0, 2],
            [2, 0, 0, 0, 0, 1],
            [198, 18, 0, 2],
            [198, 18, 100, 10],
            1024,
            5353,
        );
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not ipv4")
        };
        assert_eq!(csum_fold(csum_add(0, ip.header().slice())), 0);
        let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
            panic!("not udp")
        };
        let h = udp.to_header();
        assert_eq!(h.destination_port, 5353);
        let want = h
            .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
            .unwrap();
        assert_eq!(h.checksum, want);
        assert_eq!(udp.payload().len(), PAYLOAD);
    }

    #[test]
    fn flows_spread_over_services() {
        let a = GenArgs {
            ifname: "x".into(),
            src_mac: [0; 6],
            dst_mac: [0; 6],
            src_ips: vec![[198, 18, 0, 2]],
            flows: 10,
            services: 1000,
            dport: 5353,
            count: 0,
            seconds: 0.0,
            rate: 0,
        };
        let f = flow_frames(&a).unwrap();
        assert_eq!(&f[0][30..34], &[198, 18, 100, 10]);
        assert_eq!(&f[9][30..34], &service_vip(900));
        assert!(flow_frames(&GenArgs {
            flows: 200_000,
            ..a
        })
        .is_err());
    }
}
