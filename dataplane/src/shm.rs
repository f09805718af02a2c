//! Memory that outlives the process: a file mapped `MAP_SHARED`, and typed
//! slices over it.
//!
//! The flow table keeps its records in such a file when asked
//! (`sluice run --flow-state PATH`, [`crate::flow_table::state_file`]), so
//! that a process killed with `kill -9` leaves them in the page cache of
//! the file (on tmpfs, `/dev/shm`, or hugetlbfs) for the next one. This
//! module is the only place that maps memory or builds slices from raw
//! pointers; everything above it sees `&[T]` of types that are valid for
//! every bit pattern and only ever accessed through atomics ([`Pod`]), so
//! whatever the file holds (another version, a torn write, garbage) can
//! be *wrong* but never undefined behaviour: the readers validate it.
//!
//! A file is locked with `flock(LOCK_EX | LOCK_NB)` while mapped: two
//! processes writing one flow table would corrupt each other, and the
//! kernel drops the lock when its holder dies, so a crashed process never
//! leaves the file locked.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

/// Types that may live in a shared mapping.
///
/// # Safety
///
/// Every bit pattern of `size_of::<T>()` bytes must be a valid `T`, `T`
/// must need no drop, and all of its state must be interior-mutable
/// through atomics (so that `&T` shared with another process or thread,
/// which may write it at any time, is sound): in practice a `#[repr(C)]`
/// struct of std atomics or arrays of them.
pub unsafe trait Pod: Sync {}

// SAFETY: a std atomic integer is valid for every bit pattern of its size,
// has no drop, and is only accessed through atomic operations.
unsafe impl Pod for std::sync::atomic::AtomicU64 {}
// SAFETY: as for AtomicU64.
unsafe impl Pod for std::sync::atomic::AtomicU32 {}

/// An open state file, locked exclusively for this process.
#[derive(Debug)]
pub struct LockedFile {
    file: File,
}

/// Why a state file cannot be used at all (as opposed to holding
/// something that does not match, which its reader decides).
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// Opening, creating, resizing or mapping the file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: String,
        /// The system's error.
        source: io::Error,
    },
    /// Another live process holds the file's lock.
    #[error("{path} is in use by another process (flock)")]
    InUse {
        /// The file.
        path: String,
    },
}

impl LockedFile {
    /// Opens `path` read-write, creating it (mode 0600) if missing, and
    /// takes its exclusive lock without waiting.
    ///
    /// # Errors
    ///
    /// [`ShmError::InUse`] if another process holds the lock;
    /// [`ShmError::Io`] if the file cannot be opened.
    pub fn open(path: &Path) -> Result<LockedFile, ShmError> {
        use std::os::unix::fs::OpenOptionsExt;
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| ShmError::Io {
                op: "open",
                path: shown.clone(),
                source,
            })?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(ShmError::InUse { path: shown });
            }
            return Err(ShmError::Io {
                op: "flock",
                path: shown,
                source: e,
            });
        }
        Ok(LockedFile { file })
    }

    /// The file's length in bytes.
    ///
    /// # Errors
    ///
    /// The system's error from `fstat`.
    pub fn byte_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Truncates the file to zero and grows it to `len` bytes of zeros
    /// (tmpfs allocates pages only as they are touched).
    ///
    /// # Errors
    ///
    /// The system's error from `ftruncate`.
    pub fn reset(&self, len: u64) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.set_len(len)
    }

    /// Maps the whole file shared, read-write.
    ///
    /// # Errors
    ///
    /// The system's error from `fstat` or `mmap` (an empty file cannot be
    /// mapped).
    pub fn map(&self) -> io::Result<Mapping> {
        let len = usize::try_from(self.byte_len()?)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: a fresh shared mapping of `len` bytes of a file we hold
        // open (the mapping keeps its own reference to the file); the
        // kernel picks the address, so no existing memory is replaced.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping {
            ptr,
            len,
            // A duplicate descriptor shares the open file description, and
            // so the lock: the mapping keeps the file locked.
            _file: self.file.try_clone()?,
        })
    }
}

/// A shared mapping of a whole [`LockedFile`]; unmapped (and the lock
/// dropped, once the [`LockedFile`] is gone too) when the last
/// [`MappedSlice`] over it goes.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    _file: File,
}

// SAFETY: the mapping is plain memory; every view of it handed out is of a
// `Pod` type, itself `Sync` and accessed through atomics only.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is the mapping `LockedFile::map` created;
        // no slice over it outlives `self` (each holds an `Arc` of it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl Mapping {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: an empty file is not mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `count` values of `T` from byte `offset`, or `None` if they do not
    /// fit the mapping or `offset` is not aligned for `T`.
    pub fn slice<T: Pod>(self: &Arc<Self>, offset: usize, count: usize) -> Option<MappedSlice<T>> {
        let bytes = count.checked_mul(std::mem::size_of::<T>())?;
        let end = offset.checked_add(bytes)?;
        if end > self.len || !offset.is_multiple_of(std::mem::align_of::<T>()) {
            return None;
        }
        // The mapping is page-aligned, so an aligned offset is an aligned
        // address.
        // SAFETY: offset + bytes ≤ len, so the result stays inside the
        // mapping (and is non-null: the mapping is).
        let p = unsafe { self.ptr.as_ptr().add(offset) };
        Some(MappedSlice {
            map: self.clone(),
            ptr: NonNull::new(p.cast::<T>())?,
            len: count,
        })
    }
}

/// `len` values of `T` inside a [`Mapping`], which it keeps alive.
#[derive(Debug)]
pub struct MappedSlice<T: Pod> {
    map: Arc<Mapping>,
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: `T: Pod` is `Sync` and the memory is the mapping's, which lives
// as long as the `Arc` this slice holds.
unsafe impl<T: Pod> Send for MappedSlice<T> {}
// SAFETY: as above.
unsafe impl<T: Pod> Sync for MappedSlice<T> {}

impl<T: Pod> Deref for MappedSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let _ = &self.map;
        // SAFETY: `Mapping::slice` checked that the `len` values lie inside
        // the mapping and are aligned; the mapping outlives `self`; any
        // bit pattern is a valid `T` (`Pod`), and `T` is only accessed
        // through shared references to atomics, so other writers (threads,
        // or another process) do not make this reference unsound.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of [`std::time::Instant`]
/// on Linux, readable as a number so that a later process can line its own
/// `Instant`s up with an earlier one's (both count from the same boot).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the local we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Memory for a table: on the heap (the default), or in a mapped file.
#[derive(Debug)]
pub enum Region<T: Pod> {
    /// Anonymous memory, gone with the process.
    Heap(Box<[T]>),
    /// A slice of a shared file mapping.
    Mapped(MappedSlice<T>),
}

impl<T: Pod> Deref for Region<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Region::Heap(b) => b,
            Region::Mapped(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    fn temp(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("sluice-shm-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn writes_survive_unmapping_and_are_seen_by_the_next_mapping() {
        let p = temp("survive");
        {
            let f = LockedFile::open(&p).unwrap();
            f.reset(8192).unwrap();
            let m = Arc::new(f.map().unwrap());
            let s: MappedSlice<AtomicU64> = m.slice(4096, 4).unwrap();
            s[3].store(0xDEAD_BEEF, Ordering::Relaxed);
        }
        let f = LockedFile::open(&p).unwrap();
        assert_eq!(f.byte_len().unwrap(), 8192);
        let m = Arc::new(f.map().unwrap());
        let s: MappedSlice<AtomicU64> = m.slice(4096, 4).unwrap();
        assert_eq!(s[3].load(Ordering::Relaxed), 0xDEAD_BEEF);
        assert_eq!(s[0].load(Ordering::Relaxed), 0, "fresh bytes are zero");
        drop(s);
        drop(m);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn slices_outside_the_mapping_or_misaligned_are_refused() {
        let p = temp("bounds");
        let f = LockedFile::open(&p).unwrap();
        f.reset(4096).unwrap();
        let m = Arc::new(f.map().unwrap());
        assert!(m.slice::<AtomicU64>(0, 512).is_some());
        assert!(m.slice::<AtomicU64>(0, 513).is_none(), "past the end");
        assert!(m.slice::<AtomicU64>(8, 512).is_none(), "past the end");
        assert!(m.slice::<AtomicU64>(4, 1).is_none(), "misaligned");
        assert!(m.slice::<AtomicU32>(4, 1).is_some());
        assert!(m.slice::<AtomicU64>(usize::MAX, 2).is_none(), "overflow");
        assert!(m.slice::<AtomicU64>(0, usize::MAX).is_none(), "overflow");
        drop(m);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_locked_file_is_refused_until_its_holder_lets_go() {
        let p = temp("lock");
        let a = LockedFile::open(&p).unwrap();
        assert!(matches!(LockedFile::open(&p), Err(ShmError::InUse { .. })));
        a.reset(4096).unwrap();
        let m = a.map().unwrap();
        drop(a);
        assert!(
            matches!(LockedFile::open(&p), Err(ShmError::InUse { .. })),
            "the mapping keeps the lock"
        );
        drop(m);
        assert!(LockedFile::open(&p).is_ok());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn the_monotonic_clock_is_the_clock_of_instant() {
        let a = monotonic_ns();
        let t = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = monotonic_ns();
        let d = t.elapsed().as_nanos() as u64;
        assert!(a > 0 && b > a);
        assert!((b - a).abs_diff(d) < 5_000_000, "{} vs {d}", b - a);
    }

    #[test]
    fn an_empty_file_is_not_mapped() {
        let p = temp("empty");
        let f = LockedFile::open(&p).unwrap();
        assert!(f.map().is_err());
        std::fs::remove_file(&p).unwrap();
    }
}
