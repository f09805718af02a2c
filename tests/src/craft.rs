//! Crafted Ethernet frames for the tests that send what no socket API
//! would: bad checksums, IPv4 options, IPv6 extension headers, odd TCP
//! flags, VLAN tags, fragments. Sent with `sluice-testsrv frame-send` and
//! watched for with `frame-capture` ([`send_frames`], [`Capture`]).
//!
//! Every builder computes correct checksums (RFC 1071) unless the test
//! breaks one on purpose afterwards, so a frame that is refused is refused
//! for the one thing the test changed. A payload marker (a few random
//! bytes per test) makes each kind of frame recognisable on the far side.

use std::time::Duration;

use crate::netns::{BgProcess, Pipe};
use crate::topology::{Role, Topology};

/// The Internet checksum of `data` (RFC 1071) folded from `start`.
pub fn checksum(start: u32, data: &[u8]) -> u16 {
    let mut acc = u64::from(start);
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += u64::from(w);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn sum_words(data: &[u8]) -> u32 {
    // The one's complement sum, unfolded (a complemented checksum, undone).
    u32::from(!checksum(0, data))
}

/// An IPv4 header to build packets with.
#[derive(Debug, Clone)]
pub struct Ip4 {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// The flags and fragment offset word (0x4000 = DF).
    pub frag: u16,
    /// Options, a multiple of 4 bytes.
    pub options: Vec<u8>,
}

impl Ip4 {
    /// `src` → `dst`, DF set, no options.
    pub fn new(src: [u8; 4], dst: [u8; 4]) -> Self {
        Self {
            src,
            dst,
            frag: 0x4000,
            options: Vec::new(),
        }
    }

    /// The packet: this header (checksum filled in) and `l4`, protocol
    /// `proto`.
    pub fn packet(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0, "options must fill 32-bit words");
        let hl = 20 + self.options.len();
        let total = (hl + l4.len()) as u16;
        let mut h = vec![0x40 | (hl / 4) as u8, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34]);
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&self.options);
        let c = checksum(0, &h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(l4);
        h
    }

    fn pseudo(&self, proto: u8, len: usize) -> u32 {
        let mut p = Vec::with_capacity(12);
        p.extend_from_slice(&self.src);
        p.extend_from_slice(&self.dst);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        sum_words(&p)
    }

    /// A UDP datagram in this header.
    pub fn udp(&self, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let seg = udp_segment(sport, dport, data, |len| self.pseudo(17, len));
        self.packet(17, &seg)
    }

    /// A TCP segment with the flag byte `flags` in this header.
    pub fn tcp(&self, sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
        let seg = tcp_segment(sport, dport, flags, data, |len| self.pseudo(6, len));
        self.packet(6, &seg)
    }
}

/// An IPv6 header to build packets with.
#[derive(Debug, Clone)]
pub struct Ip6 {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Extension headers as (type, bytes) in order; each `bytes` is the
    /// whole header, a multiple of 8 long, whose first byte (next header)
    /// is filled in by [`Ip6::packet`].
    pub ext: Vec<(u8, Vec<u8>)>,
}

impl Ip6 {
    /// `src` → `dst`, no extension headers.
    pub fn new(src: [u8; 16], dst: [u8; 16]) -> Self {
        Self {
            src,
            dst,
            ext: Vec::new(),
        }
    }

    /// The packet: the fixed header, the extension headers and `l4` of
    /// protocol `proto`.
    pub fn packet(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, (_, bytes)) in self.ext.iter().enumerate() {
            let mut b = bytes.clone();
            b[0] = self.ext.get(i + 1).map_or(proto, |(t, _)| *t);
            chain.extend_from_slice(&b);
        }
        let first = self.ext.first().map_or(proto, |(t, _)| *t);
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[first, 64]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&chain);
        h.extend_from_slice(l4);
        h
    }

    fn pseudo(&self, proto: u8, len: usize) -> u32 {
        let mut p = Vec::with_capacity(40);
        p.extend_from_slice(&self.src);
        p.extend_from_slice(&self.dst);
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
        sum_words(&p)
    }

    /// A UDP datagram in this header.
    pub fn udp(&self, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let seg = udp_segment(sport, dport, data, |len| self.pseudo(17, len));
        self.packet(17, &seg)
    }
}

fn udp_segment(sport: u16, dport: u16, data: &[u8], pseudo: impl Fn(usize) -> u32) -> Vec<u8> {
    let len = 8 + data.len();
    let mut s = Vec::with_capacity(len);
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&(len as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(data);
    let mut c = checksum(pseudo(len), &s);
    if c == 0 {
        c = 0xffff; // RFC 768: zero means "no checksum"
    }
    s[6..8].copy_from_slice(&c.to_be_bytes());
    s
}

fn tcp_segment(
    sport: u16,
    dport: u16,
    flags: u8,
    data: &[u8],
    pseudo: impl Fn(usize) -> u32,
) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + data.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
    s.extend_from_slice(&0u32.to_be_bytes()); // ack
    s.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    s.extend_from_slice(data);
    let c = checksum(pseudo(s.len()), &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// An Ethernet II frame `src` → `dst` with VLAN tags `tags` (each
/// (TPID, TCI), outermost first) around `payload` of EtherType `ethertype`.
pub fn ether(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// EtherType of IPv4.
pub const IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const IPV6: u16 = 0x86dd;
/// TPID of an 802.1Q tag.
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad tag.
pub const TPID_8021AD: u16 = 0x88a8;

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The MAC address of `ifname` in `role`'s namespace.
///
/// # Panics
/// If it cannot be read.
pub fn mac(topo: &Topology, role: Role, ifname: &str) -> [u8; 6] {
    let out = topo.exec(
        role,
        &["cat", &format!("/sys/class/net/{ifname}/address")],
        Duration::from_secs(5),
    );
    let s = out.expect_ok().trim().to_string();
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap_or_else(|e| panic!("MAC {s:?}: {e}")))
        .collect();
    v.try_into()
        .unwrap_or_else(|_| panic!("MAC {s:?} is not 6 bytes"))
}

/// Eight random bytes, to mark the frames of one test.
pub fn marker() -> [u8; 8] {
    let mut b = [0u8; 8];
    // SAFETY: `b` is valid for 8 bytes of writes; getrandom only writes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 8, "getrandom");
    b
}

/// Sends `frames` out of `ifname` in `role`'s namespace, 5 ms apart.
///
/// # Panics
/// If sending fails.
pub fn send_frames(topo: &Topology, role: Role, ifname: &str, frames: &[Vec<u8>]) {
    let mut args = vec![
        "frame-send".to_string(),
        "--iface".to_string(),
        ifname.to_string(),
    ];
    args.extend(frames.iter().map(|f| hex(f)));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = topo.testsrv(role, &argv, Duration::from_secs(20));
    assert!(
        out.success() && out.stdout.contains(&format!("sent {}", frames.len())),
        "frame-send: {out}"
    );
}

/// A bounded capture of the frames that carry a marker, on one link.
pub struct Capture {
    proc: Option<BgProcess>,
}

impl Capture {
    /// Starts capturing on `ifname` in `role`'s namespace for at most `ms`
    /// milliseconds, keeping frames that contain `marker`; returns once the
    /// socket is open.
    ///
    /// # Panics
    /// If the capture does not start.
    pub fn start(topo: &Topology, role: Role, ifname: &str, marker: &[u8], ms: u64) -> Self {
        let (ms, m) = (ms.to_string(), hex(marker));
        let p = topo.spawn_testsrv(
            role,
            &[
                "frame-capture",
                "--iface",
                ifname,
                "--ms",
                &ms,
                "--marker",
                &m,
            ],
        );
        assert!(
            p.wait_for(Pipe::Stdout, 0, "ready", Duration::from_secs(10)),
            "frame-capture did not start: {}",
            p.output(Pipe::Stderr)
        );
        Capture { proc: Some(p) }
    }

    /// Waits for the capture to end (its `ms` are up) and returns the
    /// captured frames.
    pub fn frames(mut self) -> Vec<Vec<u8>> {
        let p = self.proc.take().expect("capture already read");
        let out = p.wait(Duration::from_secs(30));
        out.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("frame "))
            .map(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex from frame-capture"))
                    .collect()
            })
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGKILL);
            let _ = p.wait(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = Ip4::new([198, 18, 0, 2], [198, 18, 100, 10]).udp(1, 2, b"x");
        assert_eq!(checksum(0, &p[..20]), 0);
        // UDP over the pseudo-header verifies to zero too.
        let mut ph = Vec::new();
        ph.extend_from_slice(&p[12..20]);
        ph.extend_from_slice(&[0, 17, 0, 9]);
        ph.extend_from_slice(&p[20..]);
        assert_eq!(checksum(0, &ph), 0);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 § 3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (+ carry).
        assert_eq!(
            !checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn ipv6_chain_links_next_headers() {
        let mut ip = Ip6::new([0; 16], [1; 16]);
        ip.ext.push((60, vec![0, 0, 1, 4, 0, 0, 0, 0]));
        ip.ext.push((43, vec![0, 0, 4, 0, 0, 0, 0, 0]));
        let p = ip.udp(1, 2, b"");
        assert_eq!(p[6], 60);
        assert_eq!(p[40], 43);
        assert_eq!(p[48], 17);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 16 + 8);
    }
}
