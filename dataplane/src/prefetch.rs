//! A safe wrapper around the CPU's prefetch hint.
//!
//! Burst processing (DPDK's pattern) walks a burst three times: it parses
//! every frame and asks for the home bucket of the flow index its lookup
//! will read first, then asks for the record a matching tag in that bucket
//! points at (or, when none matches, for the second bucket), then processes
//! the frames, by which time those lines are in the cache. Stable Rust has
//! no safe prefetch, so this is one of the two small `unsafe` hints of the
//! data path outside the I/O layer (the other is [`crate::thp`]); the
//! steering loader ([`crate::steer`]) has two libc calls of its own.

/// Hints the CPU to bring the cache line holding `*p` closer.
#[inline(always)]
pub fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults, whatever the address,
    // and has no effect visible to the program; the pointer comes from a
    // live reference anyway. SSE is part of the x86_64 baseline, so the
    // target feature the intrinsic requires is always present.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (p as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefetch_is_harmless() {
        let v = vec![1u64; 1024];
        for x in &v {
            super::prefetch(x);
        }
        assert_eq!(v.iter().sum::<u64>(), 1024);
    }
}
