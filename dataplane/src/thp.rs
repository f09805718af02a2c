//! Transparent huge pages for the big tables.
//!
//! A flow table of a million flows spans a hundred megabytes that every
//! packet reads at a random place: on 4 KiB pages nearly every lookup also
//! misses the TLB, and a prefetch that misses the TLB waits for a page walk
//! before it can even leave. Backing the table with 2 MiB pages removes most
//! of those walks. Linux does that for ranges marked `MADV_HUGEPAGE` when
//! `/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` (the Debian
//! default) or `always`; elsewhere the hint is ignored and nothing changes.
//!
//! The hint must come before the memory is first touched, so the tables
//! allocate with [`alloc_huge`] and fill the vector afterwards.

/// A vector with room for `n` elements whose (untouched) buffer is marked
/// for transparent huge pages. Fill it to `n` before converting it into a
/// boxed slice, so that no reallocation moves it off the marked range.
pub fn alloc_huge<T>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    advise(v.spare_capacity_mut());
    v
}

/// Marks the whole pages inside `buf` with `MADV_HUGEPAGE`; a hint only.
fn advise<T>(buf: &mut [std::mem::MaybeUninit<T>]) {
    const PAGE: usize = 4096;
    let start = buf.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(buf);
    let first = start.next_multiple_of(PAGE);
    let last = end - end % PAGE;
    if last <= first {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: [first, last) lies inside `buf`, memory this process owns
    // (the vector's allocation) and nothing else aliases yet; MADV_HUGEPAGE
    // only changes how the kernel backs those pages and never their
    // contents, so no Rust invariant can be broken. A failure (no THP
    // support) is harmless and ignored.
    unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            last - first,
            libc::MADV_HUGEPAGE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_allocation_fills_and_keeps_its_buffer() {
        for n in [0usize, 1, 1000, 1 << 20] {
            let mut v: Vec<u64> = alloc_huge(n);
            let p = v.as_ptr();
            v.extend(0..n as u64);
            let b = v.into_boxed_slice();
            assert_eq!(b.len(), n);
            if n > 0 {
                assert_eq!(b.as_ptr(), p, "boxed without moving");
                assert_eq!(b[n - 1], n as u64 - 1);
            }
        }
    }
}
