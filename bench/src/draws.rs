//! Which flow each benchmark packet belongs to, drawn over the whole table.
//!
//! A per-packet bench that replays a small hot set of flows measures cache
//! hits, not a flow table of the size it names. Here the packets are drawn
//! from every flow of the table, in two orders: **uniform** (each packet
//! from any flow, equally likely: the worst case for the caches) and
//! **Zipf** with s = 1 (flow of rank k drawn with probability ∝ 1/k, as
//! real traffic is skewed). The draws are made once, before timing, from a
//! fixed seed (the same sequence on every run), and kept as the packets'
//! 12-byte tuples in one array that the timed loop reads in order, so the
//! only random memory accesses in the timed section are the worker's own.
//!
//! [`Draws::fill`] writes the next tuple into a frame built from a
//! template (addresses, ports, and both checksums recomputed), which is
//! what the NIC's DMA stands in for; the `port_only` bench pays the same
//! cost, so it can be subtracted.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// How many packets a draw sequence holds before it repeats (2²¹: large
/// enough that a uniform sequence over 1e6 flows visits most of them, and
/// at 12 bytes a packet 24 MB, read sequentially).
pub const DRAWS: usize = 1 << 21;

/// Addresses and ports of one packet (IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// How the flows of a packet sequence are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Every flow equally likely.
    Uniform,
    /// Flow of rank k with probability ∝ 1/k (s = 1).
    Zipf,
}

impl Order {
    /// The bench-id name of the order.
    pub fn name(self) -> &'static str {
        match self {
            Order::Uniform => "uniform",
            Order::Zipf => "zipf",
        }
    }
}

/// A fixed sequence of packet tuples, replayed in order.
pub struct Draws {
    tuples: Vec<Tuple>,
    next: usize,
}

/// How concentrated a draw sequence is: what the caches can hold of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotSet {
    /// Distinct flows in the sequence.
    pub distinct: usize,
    /// The fewest flows that carry 90 % of the packets.
    pub flows_90: usize,
}

impl Draws {
    /// Draws [`DRAWS`] packets from `flows` (one tuple per flow, in rank
    /// order for Zipf) in `order`, from a fixed seed.
    pub fn new(flows: &[Tuple], order: Order) -> Draws {
        assert!(!flows.is_empty(), "no flows to draw from");
        let mut rng = StdRng::seed_from_u64(0x51u64 << 32 | flows.len() as u64);
        let n = flows.len();
        let tuples = match order {
            Order::Uniform => (0..DRAWS).map(|_| flows[rng.random_range(0..n)]).collect(),
            Order::Zipf => {
                let z = Zipf::new(n as f64, 1.0).expect("valid Zipf parameters");
                (0..DRAWS)
                    .map(|_| {
                        // Ranks are 1..=n.
                        let k = z.sample(&mut rng) as usize;
                        flows[k.clamp(1, n) - 1]
                    })
                    .collect()
            }
        };
        Draws { tuples, next: 0 }
    }

    /// The sequence's hot set.
    pub fn hot_set(&self) -> HotSet {
        let mut counts: std::collections::HashMap<Tuple, u32> = Default::default();
        for t in &self.tuples {
            *counts.entry(*t).or_default() += 1;
        }
        let mut c: Vec<u32> = counts.values().copied().collect();
        c.sort_unstable_by(|a, b| b.cmp(a));
        let goal = self.tuples.len() as u64 * 9 / 10;
        let mut sum = 0u64;
        let flows_90 = c
            .iter()
            .take_while(|&&x| {
                let below = sum < goal;
                sum += u64::from(x);
                below
            })
            .count();
        HotSet {
            distinct: c.len(),
            flows_90,
        }
    }

    /// Writes the next packet's tuple into `frame` (an Ethernet + IPv4 +
    /// TCP frame with no IP options, as [`crate::tcp`] builds) and fixes
    /// both checksums.
    #[inline]
    pub fn fill(&mut self, frame: &mut [u8]) {
        let t = self.tuples[self.next];
        self.next = (self.next + 1) % self.tuples.len();
        retarget(frame, &t);
    }
}

/// Rewrites an Ethernet/IPv4/TCP frame's addresses and ports to `t`,
/// recomputing the IPv4 header checksum and the TCP checksum.
pub fn retarget(frame: &mut [u8], t: &Tuple) {
    const IP: usize = 14;
    const L4: usize = IP + 20;
    frame[IP + 12..IP + 16].copy_from_slice(&t.src);
    frame[IP + 16..IP + 20].copy_from_slice(&t.dst);
    frame[L4..L4 + 2].copy_from_slice(&t.sport.to_be_bytes());
    frame[L4 + 2..L4 + 4].copy_from_slice(&t.dport.to_be_bytes());
    frame[IP + 10..IP + 12].fill(0);
    let ip = fold(sum(&frame[IP..L4]));
    frame[IP + 10..IP + 12].copy_from_slice(&(!ip).to_be_bytes());
    let total = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    let l4_len = total - 20;
    frame[L4 + 16..L4 + 18].fill(0);
    let pseudo = sum(&frame[IP + 12..IP + 20]) + u32::from(frame[IP + 9]) + l4_len as u32;
    let tcp = fold(pseudo + sum(&frame[L4..L4 + l4_len]));
    frame[L4 + 16..L4 + 18].copy_from_slice(&(!tcp).to_be_bytes());
}

/// One's-complement sum of big-endian 16-bit words (an odd last byte is
/// padded with zero), unfolded.
fn sum(b: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut chunks = b.chunks_exact(2);
    for w in &mut chunks {
        s += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flows(n: u32) -> Vec<Tuple> {
        (0..n)
            .map(|c| {
                let (src, sport) = crate::client(c);
                Tuple {
                    src,
                    dst: crate::VIP,
                    sport,
                    dport: 80,
                }
            })
            .collect()
    }

    #[test]
    fn retarget_matches_a_freshly_built_frame() {
        let mut f = crate::tcp([198, 19, 0, 1], crate::VIP, 1000, 80, false, true);
        let t = Tuple {
            src: [198, 19, 7, 9],
            dst: [198, 18, 1, 11],
            sport: 4242,
            dport: 8080,
        };
        retarget(&mut f, &t);
        let want = crate::tcp(t.src, t.dst, t.sport, t.dport, false, true);
        assert_eq!(f, want);
    }

    #[test]
    fn uniform_draws_reach_most_of_a_large_table() {
        let d = Draws::new(&flows(1_000_000), Order::Uniform);
        let h = d.hot_set();
        // 2^21 draws over 1e6 flows: 1 - e^-2.1 ≈ 88 % of them appear.
        assert!(h.distinct > 850_000, "{h:?}");
        assert!(h.flows_90 > 600_000, "{h:?}");
    }

    #[test]
    fn zipf_draws_are_skewed_but_not_a_tiny_hot_set() {
        let d = Draws::new(&flows(1_000_000), Order::Zipf);
        let h = d.hot_set();
        // The most popular flow is rank 1; 90 % of s = 1 Zipf over 1e6
        // lies in the top few hundred thousand ranks, far beyond 4096.
        assert!(h.flows_90 > 50_000 && h.flows_90 < 900_000, "{h:?}");
        assert!(h.distinct < DRAWS, "{h:?}");
    }

    #[test]
    fn the_sequence_is_the_same_on_every_run() {
        let f = flows(10_000);
        let mut a = Draws::new(&f, Order::Zipf);
        let mut b = Draws::new(&f, Order::Zipf);
        let (mut x, mut y) = (crate::tcp([0; 4], [0; 4], 0, 0, false, true), vec![]);
        y.clone_from(&x);
        for _ in 0..1000 {
            a.fill(&mut x);
            b.fill(&mut y);
            assert_eq!(x, y);
        }
    }
}
