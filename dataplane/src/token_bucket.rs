//! A token bucket on a caller-supplied clock: the rate limit of the ICMP
//! errors a worker sends.
//!
//! Routers must rate-limit the ICMP errors they generate (RFC 1812
//! § 4.3.2.8; RFC 4443 § 2.4 (f) names a token bucket), or a flood of
//! oversized packets turns into a flood of answers. Linux does it with one
//! global bucket (`icmp_global_allow` in `net/ipv4/icmp.c`, sysctls
//! `net.ipv4.icmp_msgs_per_sec` = 1000 and `icmp_msgs_burst` = 50). Here
//! each worker owns one bucket, so the packet path makes no shared write;
//! the host's limit is the per-worker one times the number of workers.
//!
//! Sans-I/O: the bucket reads no clock; the caller passes milliseconds on
//! any monotonic clock, so tests run on a virtual one.

/// Tokens are counted in thousandths, so that a rate of `r` per second
/// refills `r` thousandths per millisecond without rounding.
const MILLI: u64 = 1000;

/// A bucket of `burst` tokens refilled at `rate` per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    rate_per_sec: u32,
    burst: u32,
    /// Tokens in thousandths, at most `burst * MILLI`.
    milli_tokens: u64,
    /// When the bucket was last refilled.
    last_ms: u64,
}

impl TokenBucket {
    /// The ICMP budget of Linux's defaults: 1000 per second, bursts of 50.
    pub const ICMP_RATE_PER_SEC: u32 = 1000;
    /// See [`TokenBucket::ICMP_RATE_PER_SEC`].
    pub const ICMP_BURST: u32 = 50;

    /// A full bucket of `burst` tokens refilled at `rate_per_sec`, as of
    /// `now_ms`.
    pub fn new(rate_per_sec: u32, burst: u32, now_ms: u64) -> TokenBucket {
        TokenBucket {
            rate_per_sec,
            burst,
            milli_tokens: u64::from(burst) * MILLI,
            last_ms: now_ms,
        }
    }

    /// Whether a token is available at `now_ms` (refilling first). Spend it
    /// with [`TokenBucket::spend`] once the thing it pays for is done.
    /// A clock that goes back refills nothing.
    #[inline]
    pub fn ready(&mut self, now_ms: u64) -> bool {
        let dt = now_ms.saturating_sub(self.last_ms);
        if dt > 0 {
            self.last_ms = now_ms;
            let add = dt.saturating_mul(u64::from(self.rate_per_sec));
            self.milli_tokens = self
                .milli_tokens
                .saturating_add(add)
                .min(u64::from(self.burst) * MILLI);
        }
        self.milli_tokens >= MILLI
    }

    /// Spends one token (none when the bucket is empty).
    #[inline]
    pub fn spend(&mut self) {
        self.milli_tokens = self.milli_tokens.saturating_sub(MILLI);
    }

    /// [`TokenBucket::ready`] then [`TokenBucket::spend`]: whether a token
    /// was taken.
    #[inline]
    pub fn take(&mut self, now_ms: u64) -> bool {
        let ok = self.ready(now_ms);
        if ok {
            self.spend();
        }
        ok
    }
}

impl Default for TokenBucket {
    /// The ICMP budget ([`TokenBucket::ICMP_RATE_PER_SEC`],
    /// [`TokenBucket::ICMP_BURST`]) as of time 0.
    fn default() -> Self {
        TokenBucket::new(Self::ICMP_RATE_PER_SEC, Self::ICMP_BURST, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = TokenBucket::new(1000, 50, 0);
        // The burst, all at once.
        assert_eq!((0..100).filter(|_| b.take(0)).count(), 50);
        // One per millisecond at 1000/s.
        assert!(b.take(1));
        assert!(!b.take(1));
        // 10 ms: 10 more, not the whole burst.
        assert_eq!((0..100).filter(|_| b.take(11)).count(), 10);
        // A long pause fills to the burst and no further.
        assert_eq!((0..100).filter(|_| b.take(60_000)).count(), 50);
    }

    #[test]
    fn slow_rates_accumulate_fractions() {
        let mut b = TokenBucket::new(10, 1, 0);
        assert!(b.take(0));
        // 10/s: one token per 100 ms, built from 1 ms steps.
        for t in 1..100 {
            assert!(!b.take(t), "t={t}");
        }
        assert!(b.take(100));
    }

    #[test]
    fn ready_does_not_spend_and_the_clock_going_back_adds_nothing() {
        let mut b = TokenBucket::new(1000, 2, 1_000);
        assert!(b.ready(1_000) && b.ready(1_000));
        b.spend();
        b.spend();
        b.spend(); // empty: nothing to spend
        assert!(!b.ready(1_000));
        assert!(!b.ready(500));
        assert!(b.take(1_001));
        assert!(!b.take(1_001));
    }

    proptest! {
        /// Over any schedule, no more tokens are taken than the burst plus
        /// the rate times the time elapsed.
        #[test]
        fn never_more_than_burst_plus_rate(
            rate in 0u32..5000, burst in 0u32..100,
            steps in proptest::collection::vec((0u64..50, 0usize..20), 1..100),
        ) {
            let mut b = TokenBucket::new(rate, burst, 0);
            let (mut now, mut taken) = (0u64, 0u64);
            for (dt, tries) in steps {
                now += dt;
                taken += (0..tries).filter(|_| b.take(now)).count() as u64;
                prop_assert!(taken * 1000 <= u64::from(burst) * 1000 + now * u64::from(rate));
            }
        }
    }
}
