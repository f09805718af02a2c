//! A safe handle on one interface's `fast_flows` map.
//!
//! Each interface's steering program has its own map (it matches the frames
//! that interface receives). [`crate::steer::Steering::fast_map`] hands out
//! handles over duplicated file descriptors, so that the workers and the
//! sweep each own theirs and none shares a lock; the kernel's hash map is
//! safe for concurrent updates.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError};

use super::entry::{FastKey, FastValue, KEY_LEN, VALUE_LEN};
use crate::steer::SteerError;

/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;
/// The `bpf(2)` command `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// The part of `union bpf_attr` the map element commands use.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Counters of the fast path in one steering program, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastStats {
    /// Frames rewritten and redirected by the XDP program.
    pub hits: u64,
    /// TCP/UDP frames that found no entry.
    pub misses: u64,
    /// Frames that found an entry but went the usual way (SYN/FIN/RST, TTL,
    /// MTU, IPv6 UDP without checksum).
    pub slow: u64,
    /// Frames that found an entry but are malformed (bad IPv4 header
    /// checksum, options, lengths that do not fit): they went the usual way,
    /// to a worker that drops and counts them.
    pub malformed: u64,
}

/// One interface's `fast_flows` map.
pub struct FastMap {
    ifname: String,
    map: HashMap<MapData, [u8; KEY_LEN], [u8; VALUE_LEN]>,
}

impl std::fmt::Debug for FastMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastMap")
            .field("ifname", &self.ifname)
            .finish_non_exhaustive()
    }
}

impl FastMap {
    /// A handle over `map`, the `fast_flows` map of `ifname`'s program.
    ///
    /// # Errors
    /// [`SteerError::Map`] when `map` is not a hash map of the layout.
    pub fn new(ifname: &str, map: Map) -> Result<FastMap, SteerError> {
        let map = HashMap::try_from(map).map_err(|e| err(ifname, "open", e))?;
        Ok(FastMap {
            ifname: ifname.to_string(),
            map,
        })
    }

    /// Another handle on the same map (a duplicated descriptor).
    ///
    /// # Errors
    /// [`SteerError::Map`] when the descriptor cannot be duplicated.
    pub fn try_clone(&self) -> Result<FastMap, SteerError> {
        let fd = self
            .map
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| {
                err(
                    &self.ifname,
                    "dup",
                    MapError::SyscallError(aya::sys::SyscallError {
                        call: "dup",
                        io_error: e,
                    }),
                )
            })?;
        let data = MapData::from_fd(fd).map_err(|e| err(&self.ifname, "open", e))?;
        FastMap::new(&self.ifname, Map::HashMap(data))
    }

    /// The interface whose map this is.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Publishes `v` for `k` unless an entry exists (whose counters are
    /// kept). Returns whether it was inserted.
    ///
    /// # Errors
    /// [`SteerError::Map`] (the map is full: `E2BIG`, or another failure).
    pub fn publish(&mut self, k: &FastKey, v: &FastValue) -> Result<bool, SteerError> {
        match self.map.insert(k.encode(), v.encode(), BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(err(&self.ifname, "insert", e)),
        }
    }

    /// Withdraws the entry of `k`; `false` when there was none.
    ///
    /// # Errors
    /// [`SteerError::Map`] on a failure other than a missing key.
    pub fn withdraw(&mut self, k: &FastKey) -> Result<bool, SteerError> {
        match self.map.remove(&k.encode()) {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENOENT) || matches!(e, MapError::KeyNotFound) => {
                Ok(false)
            }
            Err(e) => Err(err(&self.ifname, "delete", e)),
        }
    }

    /// Withdraws the entry of `k` and returns it as it was at that moment
    /// (with its last counts: no packet the XDP program forwards is lost
    /// between a read and a delete); `None` when there was none. One
    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (hash maps: kernel 5.14).
    ///
    /// # Errors
    /// [`SteerError::Map`] on a failure other than a missing key.
    pub fn take(&mut self, k: &FastKey) -> Result<Option<FastValue>, SteerError> {
        let key = k.encode();
        let mut val = [0u8; VALUE_LEN];
        let attr = ElemAttr {
            map_fd: self.map.map().fd().as_fd().as_raw_fd() as u32,
            pad: 0,
            key: key.as_ptr() as u64,
            value: val.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `attr` is the `bpf_attr` layout of the map element
        // commands (map_fd, key, value, flags); the kernel reads KEY_LEN
        // bytes at `key` and writes VALUE_LEN bytes (the map's key and value
        // sizes, checked at FastMap::new by aya's HashMap) at `value`, both
        // live arrays of those sizes for the whole call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &attr as *const ElemAttr,
                std::mem::size_of::<ElemAttr>() as u32,
            )
        };
        if r == 0 {
            return Ok(Some(FastValue::decode(&val, k.0.proto)));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        Err(err(
            &self.ifname,
            "lookup_and_delete",
            MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_and_delete_elem",
                io_error: e,
            }),
        ))
    }

    /// Every entry, read one by one (an entry deleted meanwhile is skipped).
    ///
    /// # Errors
    /// [`SteerError::Map`] when the walk fails.
    pub fn entries(&self, out: &mut Vec<(FastKey, FastValue)>) -> Result<(), SteerError> {
        for r in self.map.iter() {
            match r {
                Ok((k, v)) => {
                    let key = FastKey::decode(&k);
                    let val = FastValue::decode(&v, key.0.proto);
                    out.push((key, val));
                }
                Err(MapError::KeyNotFound) => continue,
                Err(e) if errno(&e) == Some(libc::ENOENT) => continue,
                Err(e) => return Err(err(&self.ifname, "read", e)),
            }
        }
        Ok(())
    }
}

fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

fn err(ifname: &str, op: &'static str, source: MapError) -> SteerError {
    SteerError::Map {
        ifname: ifname.to_string(),
        map: "fast_flows",
        op,
        source: Box::new(source),
    }
}
