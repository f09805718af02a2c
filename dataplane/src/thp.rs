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

    /// The value of field `name` (`AnonHugePages`, `VmFlags`, ...) of the
    /// mapping of this process that holds address `addr`, from
    /// `/proc/self/smaps`.
    fn smaps_field(addr: usize, name: &str) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        inside = (a..b).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix(name).and_then(|v| v.strip_prefix(':')) {
                    return v.trim().to_owned();
                }
            }
        }
        panic!("no mapping holds {addr:#x} with a {name} field");
    }

    /// With THP in `madvise` or `always` mode (Debian's default is
    /// `madvise`), a table allocated by `alloc_huge` is advised for huge
    /// pages (`hg` in its mapping's `VmFlags`: without the hint, `madvise`
    /// mode gives it none). Whether the kernel has a free huge page at that
    /// moment is its business (a fragmented host under a parallel test run
    /// sometimes has none, and falls back to small pages): the test checks
    /// the hint, which is what this module does. With `never`, no huge
    /// page is used.
    #[test]
    fn tables_get_transparent_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .expect("read the THP mode");
        let mut v: Vec<u64> = alloc_huge(8 << 17); // 8 MiB
        v.extend(0..(8u64 << 17));
        let inside = v.as_ptr() as usize + (4 << 20);
        let huge_kb: u64 = smaps_field(inside, "AnonHugePages")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0);
        if mode.contains("[never]") {
            assert_eq!(huge_kb, 0, "THP is off ({mode:?}) yet huge pages were used");
        } else {
            let flags = smaps_field(inside, "VmFlags");
            assert!(
                flags.split_whitespace().any(|f| f == "hg"),
                "the 8 MiB table is not advised for huge pages (THP mode {mode:?}): VmFlags {flags}"
            );
        }
        assert_eq!(v[12345], 12345);
    }

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
