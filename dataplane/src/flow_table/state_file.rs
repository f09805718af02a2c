//! The flow table in a file that outlives the process (`sluice run
//! --flow-state PATH`), so that `kill -9` and a restart (an upgrade looks
//! the same) lose no established flow.
//!
//! # What the file holds
//!
//! ```text
//! 0      header (one 4 KiB page, below)
//! 4096   the IPv4 store's records   (capacity_v4 × 48 bytes)
//! …      the IPv6 store's records   (capacity_v6 × 96 bytes, 64-aligned)
//! ```
//!
//! The records are the table's own memory: the workers update them in
//! place through the shared mapping ([`crate::shm`]), so nothing is copied
//! or written out, and a process killed at any instant leaves them in the
//! file's pages (tmpfs or hugetlbfs keep them for as long as the machine
//! runs). The index (buckets) and the free stack are *not* in the file:
//! they are derived from the records, and rebuilt from them when the file
//! is attached ([`Store::over`](super::store::Store::over)), which also
//! throws away whatever a killed process left half-done (a record being
//! inserted, a slot being moved).
//!
//! The header: magic `SLUICEFT`, layout version [`VERSION`], both
//! capacities and record sizes, both stores' hash seeds, the boot id
//! (`/proc/sys/kernel/random/boot_id`), the epoch, a checksum of all of
//! these, and a state word (`0` being created, [`DIRTY`] in use, [`CLEAN`]
//! closed by an orderly stop).
//!
//! # Time
//!
//! A flow's `last_seen` counts seconds from the table's epoch, the
//! `CLOCK_MONOTONIC` instant the file was created ([`crate::shm::monotonic_ns`]).
//! A new process takes that epoch over ([`epoch_instant`], the workers'
//! `Shared::epoch`), so its clock continues the old one's and a flow's
//! age means the same. `CLOCK_MONOTONIC` restarts at boot, hence the boot
//! id: a file from another boot is discarded.
//!
//! # Attaching, or why not
//!
//! [`open`] re-attaches the file when every header field matches what this
//! process would create (capacities from the flags, the layout of this
//! build, this boot) and the checksum holds; otherwise it logs the reason
//! ([`Discard`]), truncates the file and starts empty. Only an unusable
//! file (cannot be created or mapped) or one locked by a live process is
//! an error ([`StateFileError`]).

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shm::{LockedFile, MappedSlice, Mapping, Pod, ShmError};

use super::store::{Record, Restored, Store};
use super::{FlowTable, Store4, Store6, Timeouts};

/// `SLUICEFT` as a little-endian word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SLUICEFT");
/// The layout version: bump it whenever a record's or the header's layout
/// changes meaning.
pub const VERSION: u32 = 1;
/// Bytes before the first record.
pub const HEADER_BYTES: usize = 4096;
/// State word: closed by an orderly stop.
pub const CLEAN: u32 = 1;
/// State word: attached by a process (still running, or killed).
pub const DIRTY: u32 = 2;

/// The header, as it lies at offset 0.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    header_bytes: AtomicU32,
    capacity_v4: AtomicU64,
    capacity_v6: AtomicU64,
    record_v4: AtomicU32,
    record_v6: AtomicU32,
    seed_v4: [AtomicU64; 4],
    seed_v6: [AtomicU64; 4],
    boot_id: [AtomicU64; 2],
    epoch_ns: AtomicU64,
    checksum: AtomicU64,
    state: AtomicU32,
}

// SAFETY: `#[repr(C)]` of std atomics only: valid for every bit pattern,
// no drop, every access atomic.
unsafe impl Pod for Header {}

/// The header's fields as plain values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields {
    /// Magic word ([`MAGIC`]).
    pub magic: u64,
    /// Layout version ([`VERSION`]).
    pub version: u32,
    /// Bytes before the records ([`HEADER_BYTES`]).
    pub header_bytes: u32,
    /// IPv4 store capacity (records).
    pub capacity_v4: u64,
    /// IPv6 store capacity.
    pub capacity_v6: u64,
    /// Bytes per IPv4 record.
    pub record_v4: u32,
    /// Bytes per IPv6 record.
    pub record_v6: u32,
    /// IPv4 store hash seed.
    pub seed_v4: [u64; 4],
    /// IPv6 store hash seed.
    pub seed_v6: [u64; 4],
    /// The boot the file was created in.
    pub boot_id: [u64; 2],
    /// `CLOCK_MONOTONIC` ns of the table's second 0.
    pub epoch_ns: u64,
}

impl Fields {
    /// FNV-1a over every field: a header torn or scribbled on fails it.
    pub fn checksum(&self) -> u64 {
        let mut words = vec![
            self.magic,
            u64::from(self.version) | (u64::from(self.header_bytes) << 32),
            self.capacity_v4,
            self.capacity_v6,
            u64::from(self.record_v4) | (u64::from(self.record_v6) << 32),
        ];
        words.extend(self.seed_v4);
        words.extend(self.seed_v6);
        words.extend(self.boot_id);
        words.push(self.epoch_ns);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in words.iter().flat_map(|w| w.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

impl Header {
    fn read(&self) -> (Fields, u64, u32) {
        let l = |a: &AtomicU64| a.load(Ordering::Acquire);
        let l32 = |a: &AtomicU32| a.load(Ordering::Acquire);
        (
            Fields {
                magic: l(&self.magic),
                version: l32(&self.version),
                header_bytes: l32(&self.header_bytes),
                capacity_v4: l(&self.capacity_v4),
                capacity_v6: l(&self.capacity_v6),
                record_v4: l32(&self.record_v4),
                record_v6: l32(&self.record_v6),
                seed_v4: self.seed_v4.each_ref().map(l),
                seed_v6: self.seed_v6.each_ref().map(l),
                boot_id: self.boot_id.each_ref().map(l),
                epoch_ns: l(&self.epoch_ns),
            },
            l(&self.checksum),
            l32(&self.state),
        )
    }

    fn write(&self, f: &Fields) {
        let s = |a: &AtomicU64, v: u64| a.store(v, Ordering::Release);
        let s32 = |a: &AtomicU32, v: u32| a.store(v, Ordering::Release);
        s32(&self.state, 0);
        s(&self.magic, f.magic);
        s32(&self.version, f.version);
        s32(&self.header_bytes, f.header_bytes);
        s(&self.capacity_v4, f.capacity_v4);
        s(&self.capacity_v6, f.capacity_v6);
        s32(&self.record_v4, f.record_v4);
        s32(&self.record_v6, f.record_v6);
        for (a, v) in self.seed_v4.iter().zip(f.seed_v4) {
            s(a, v);
        }
        for (a, v) in self.seed_v6.iter().zip(f.seed_v6) {
            s(a, v);
        }
        for (a, v) in self.boot_id.iter().zip(f.boot_id) {
            s(a, v);
        }
        s(&self.epoch_ns, f.epoch_ns);
        s(&self.checksum, f.checksum());
    }
}

/// Why a file was not attached (logged; the table starts empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    /// Shorter than its header (a new file, or truncated).
    #[error("the file is shorter than its header ({len} bytes)")]
    Short {
        /// Its length.
        len: u64,
    },
    /// Not a flow-state file.
    #[error("bad magic {found:#018x} (not a sluice flow-state file)")]
    Magic {
        /// The first word found.
        found: u64,
    },
    /// Written by a build with another record layout.
    #[error("layout version {found}, this build writes {VERSION}")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// Record or header sizes differ from this build's.
    #[error("record sizes {found:?}, this build has {want:?}")]
    Layout {
        /// The file's (header, IPv4, IPv6) bytes.
        found: (u32, u32, u32),
        /// This build's.
        want: (u32, u32, u32),
    },
    /// Capacities differ from the flags'.
    #[error("capacities {found:?} (IPv4, IPv6), the flags ask for {want:?}")]
    Capacity {
        /// The file's.
        found: (u64, u64),
        /// The flags'.
        want: (u64, u64),
    },
    /// Created in another boot: its clock means nothing now.
    #[error("written in another boot (boot id {found:032x}, now {now:032x})")]
    Boot {
        /// The file's boot id.
        found: u128,
        /// This boot's.
        now: u128,
    },
    /// This boot's id is unknown, so the file's clock cannot be trusted.
    #[error("this boot's id is unreadable ({0})")]
    NoBootId(String),
    /// The process that created it died before the header was complete.
    #[error("its header was never completed")]
    Incomplete,
    /// The header's checksum does not match its fields.
    #[error("header checksum mismatch (corrupt)")]
    Checksum,
    /// The file's length does not match its header.
    #[error("{found} bytes, the header says {want}")]
    Length {
        /// The file's length.
        found: u64,
        /// What the header implies.
        want: u64,
    },
    /// An epoch in the future of this boot's clock.
    #[error("its epoch lies in the future")]
    Epoch,
}

/// Why [`open`] could not give a table at all.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// The file cannot be opened, locked, sized or mapped.
    #[error("flow state file: {0}")]
    Shm(#[from] ShmError),
    /// The mapping is smaller than its header says (the file was
    /// truncated by someone else meanwhile).
    #[error("flow state file: the mapping does not hold the records its header names")]
    Geometry,
}

/// How [`open`] started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new file (there was none, or it was empty).
    Created,
    /// The file did not match; it was truncated and the table starts
    /// empty.
    Discarded(Discard),
    /// The file was re-attached.
    Attached {
        /// The previous process stopped in order (else it was killed or
        /// crashed: the records were checked all the same).
        was_clean: bool,
        /// What became of its records.
        restored: Restored,
    },
}

/// What [`open`] gives.
#[derive(Debug)]
pub struct Opened {
    /// The table, over the file.
    pub table: FlowTable,
    /// `CLOCK_MONOTONIC` ns of the table's second 0 ([`epoch_instant`]).
    pub epoch_ns: u64,
    /// What happened.
    pub outcome: Outcome,
    /// Time spent checking the records and rebuilding the index.
    pub took: Duration,
}

/// The handle a file-backed table keeps, to mark the file clean at an
/// orderly stop.
#[derive(Debug)]
pub struct StateHandle {
    header: MappedSlice<Header>,
}

impl StateHandle {
    /// Marks the file closed in order. Call once nothing writes the table
    /// any more (the workers stopped); the next [`open`] reports it.
    pub fn mark_clean(&self) {
        self.header[0].state.store(CLEAN, Ordering::Release);
    }
}

/// This boot's id as a number, from `/proc/sys/kernel/random/boot_id`.
///
/// # Errors
///
/// The file is unreadable or not a UUID.
pub fn boot_id() -> Result<u128, String> {
    let s =
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map_err(|e| e.to_string())?;
    parse_boot_id(&s).ok_or_else(|| format!("not a UUID: {:?}", s.trim()))
}

fn parse_boot_id(s: &str) -> Option<u128> {
    let hex: String = s.trim().chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

/// The [`Instant`] of `CLOCK_MONOTONIC` ns `epoch_ns` (the process's
/// `Instant`s are that clock): now minus the time since. An epoch in the
/// future, or one before the clock's origin, gives now.
pub fn epoch_instant(epoch_ns: u64) -> Instant {
    let now = Instant::now();
    let since = crate::shm::monotonic_ns().saturating_sub(epoch_ns);
    now.checked_sub(Duration::from_nanos(since)).unwrap_or(now)
}

/// Byte offsets of the two stores' records and the file length.
fn geometry(v4: u64, v6: u64) -> (usize, usize, u64) {
    let r4 = Store4::RECORD_BYTES as u64;
    let r6 = Store6::RECORD_BYTES as u64;
    let off6 = (HEADER_BYTES as u64 + v4 * r4).next_multiple_of(64);
    let len = (off6 + v6 * r6).next_multiple_of(4096);
    (HEADER_BYTES, off6 as usize, len)
}

/// What this process would write: the fields a file must have to be
/// attached (seeds and epoch aside, which are the file's).
#[derive(Clone, Copy, Debug)]
pub struct Want {
    /// IPv4 capacity.
    pub v4: u64,
    /// IPv6 capacity.
    pub v6: u64,
    /// This boot's id.
    pub boot_id: u128,
    /// `CLOCK_MONOTONIC` now, ns.
    pub now_ns: u64,
}

/// Whether a header read as `(f, checksum, state)` from a file of `len`
/// bytes may be attached by a process that wants `want`: the pure check,
/// in the order that gives the most useful reason.
///
/// # Errors
///
/// The first [`Discard`] reason found.
pub fn check(f: &Fields, checksum: u64, state: u32, len: u64, want: &Want) -> Result<(), Discard> {
    if len < HEADER_BYTES as u64 {
        return Err(Discard::Short { len });
    }
    if f.magic != MAGIC {
        return Err(Discard::Magic { found: f.magic });
    }
    if f.version != VERSION {
        return Err(Discard::Version { found: f.version });
    }
    let layout = (
        HEADER_BYTES as u32,
        Store4::RECORD_BYTES as u32,
        Store6::RECORD_BYTES as u32,
    );
    if (f.header_bytes, f.record_v4, f.record_v6) != layout {
        return Err(Discard::Layout {
            found: (f.header_bytes, f.record_v4, f.record_v6),
            want: layout,
        });
    }
    if state != CLEAN && state != DIRTY {
        return Err(Discard::Incomplete);
    }
    if checksum != f.checksum() {
        return Err(Discard::Checksum);
    }
    if (f.capacity_v4, f.capacity_v6) != (want.v4, want.v6) {
        return Err(Discard::Capacity {
            found: (f.capacity_v4, f.capacity_v6),
            want: (want.v4, want.v6),
        });
    }
    let found = u128::from(f.boot_id[0]) | (u128::from(f.boot_id[1]) << 64);
    if found != want.boot_id {
        return Err(Discard::Boot {
            found,
            now: want.boot_id,
        });
    }
    let (_, _, need) = geometry(f.capacity_v4, f.capacity_v6);
    if len != need {
        return Err(Discard::Length {
            found: len,
            want: need,
        });
    }
    if f.epoch_ns > want.now_ns {
        return Err(Discard::Epoch);
    }
    Ok(())
}

/// Opens (or creates) the flow-state file at `path` for a table of `v4`
/// IPv4 and `v6` IPv6 flows (each capped at [`FlowTable::MAX_CAPACITY`]):
/// re-attaches it if it matches, else starts it empty (module docs). The
/// file stays locked and marked [`DIRTY`] while the table lives.
///
/// # Errors
///
/// [`StateFileError`] if the file cannot be used at all (another process
/// holds it, or it cannot be created, sized or mapped).
pub fn open(
    path: &Path,
    v4: usize,
    v6: usize,
    timeouts: Timeouts,
) -> Result<Opened, StateFileError> {
    let start = Instant::now();
    let (v4, v6) = (
        v4.min(FlowTable::MAX_CAPACITY) as u64,
        v6.min(FlowTable::MAX_CAPACITY) as u64,
    );
    let shown = path.display().to_string();
    let io = |op: &'static str| {
        let path = shown.clone();
        move |source| StateFileError::Shm(ShmError::Io { op, path, source })
    };
    let file = LockedFile::open(path)?;
    let len = file.byte_len().map_err(io("stat"))?;
    let now_ns = crate::shm::monotonic_ns();
    let boot = boot_id();
    let want = |boot_id| Want {
        v4,
        v6,
        boot_id,
        now_ns,
    };
    let mut why = (len > 0).then_some(Discard::Short { len });
    if len >= HEADER_BYTES as u64 {
        let m = Arc::new(file.map().map_err(io("mmap"))?);
        let h = header_of(&m)?;
        let (f, sum, state) = h[0].read();
        let verdict = match &boot {
            Ok(b) => check(&f, sum, state, len, &want(*b)),
            Err(e) => Err(Discard::NoBootId(e.clone())),
        };
        match verdict {
            Ok(()) => return finish(&m, h, f, Some(state == CLEAN), timeouts, start),
            Err(d) => why = Some(d),
        }
    }
    // Start empty: truncate (no stale page survives) and grow again.
    let (_, _, need) = geometry(v4, v6);
    file.reset(need).map_err(io("truncate"))?;
    let m = Arc::new(file.map().map_err(io("mmap"))?);
    let h = header_of(&m)?;
    let f = new_fields(v4, v6, boot.unwrap_or(0), now_ns);
    h[0].write(&f);
    let mut o = finish(&m, h, f, None, timeouts, start)?;
    if let Some(d) = why {
        o.outcome = Outcome::Discarded(d);
    }
    Ok(o)
}

fn header_of(m: &Arc<Mapping>) -> Result<MappedSlice<Header>, StateFileError> {
    m.slice(0, 1).ok_or(StateFileError::Geometry)
}

fn new_fields(v4: u64, v6: u64, boot: u128, now_ns: u64) -> Fields {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let rs = RandomState::new();
    let seed = |k: u64| std::array::from_fn(|i| rs.hash_one(k * 4 + i as u64) | 1);
    Fields {
        magic: MAGIC,
        version: VERSION,
        header_bytes: HEADER_BYTES as u32,
        capacity_v4: v4,
        capacity_v6: v6,
        record_v4: Store4::RECORD_BYTES as u32,
        record_v6: Store6::RECORD_BYTES as u32,
        seed_v4: seed(0),
        seed_v6: seed(1),
        boot_id: [boot as u64, (boot >> 64) as u64],
        epoch_ns: now_ns,
    }
}

/// Builds the table over mapping `m` whose header says `f`: fresh
/// (`attached` None) or re-attached (`Some(was_clean)`).
fn finish(
    m: &Arc<Mapping>,
    h: MappedSlice<Header>,
    f: Fields,
    attached: Option<bool>,
    timeouts: Timeouts,
    start: Instant,
) -> Result<Opened, StateFileError> {
    let (off4, off6, _) = geometry(f.capacity_v4, f.capacity_v6);
    let r4: MappedSlice<Record<5>> = m
        .slice(off4, f.capacity_v4 as usize)
        .ok_or(StateFileError::Geometry)?;
    let r6: MappedSlice<Record<11>> = m
        .slice(off6, f.capacity_v6 as usize)
        .ok_or(StateFileError::Geometry)?;
    let timeouts = timeouts.capped();
    let now = (crate::shm::monotonic_ns().saturating_sub(f.epoch_ns) / 1_000_000_000) as u32;
    let fresh = attached.is_none();
    let (s4, mut restored) = Store::over(r4, fresh, timeouts, f.seed_v4, now);
    let (s6, b) = Store::over(r6, fresh, timeouts, f.seed_v6, now);
    restored += b;
    h[0].state.store(DIRTY, Ordering::Release);
    let table = FlowTable::from_stores(s4, s6, Some(StateHandle { header: h }));
    table.tick(now);
    let outcome = match attached {
        Some(was_clean) => Outcome::Attached {
            was_clean,
            restored,
        },
        None => Outcome::Created,
    };
    Ok(Opened {
        table,
        epoch_ns: f.epoch_ns,
        outcome,
        took: start.elapsed(),
    })
}

#[cfg(test)]
mod tests;
