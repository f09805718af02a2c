//! The node-traffic socket programs (`bpf/host_sock.c`): loader, cgroup
//! attachment and map writes.
//!
//! The design (why socket-level and not a veth pair into the data path)
//! is argued in `control/src/host_traffic/mod.rs`; this module is only
//! the I/O: it loads the eight `cgroup/*` programs, attaches each through
//! a `bpf_link` to a cgroup v2 directory (the links are owned by
//! [`HostSock`] and the kernel drops them when the process exits, also
//! after `kill -9`: nothing is pinned, nothing stays behind), and writes
//! the maps the programs read.
//!
//! # Map layouts (shared with `bpf/host_sock.c`)
//!
//! Every key and value is a byte array (native byte order for counters and
//! ids, network order for addresses and ports):
//!
//! * `svcs`: key [`FrontKey`] (20 bytes: IPv4 in the first 4 address bytes
//!   and 12 zeros, or the 16 IPv6 bytes; port big-endian; protocol; family
//!   2 or 10), value 24 bytes: generation id, slot count, flags
//!   ([`FLAG_REJECT`]), cursor (the program's), affinity timeout in ns.
//! * `backends`: key (generation id, slot) as two `u32`, value a 20-byte
//!   address/port/family like the key of `svcs` without the protocol.
//! * `members`: key (generation id, a 20-byte backend value), value one
//!   byte: each backend a generation's slots name, once (the affinity
//!   check).
//! * `config[0]`: the network namespace cookie served (0: none);
//!   `config[1]`: sockets rewritten; `config[2]`: sockets refused;
//!   `config[3]`: sockets refused for a destination in a service range
//!   that no Service owns.
//! * `service_ranges`: the steering program's trie
//!   ([`crate::steer::ranges`]), read only when loaded with it.
//! * `revnat`, `affinity`: the programs' own (LRU).

use std::collections::HashMap as StdHashMap;
use std::fs::File;
use std::io;

use aya::maps::{Array, HashMap, MapData, MapError};
use aya::programs::links::CgroupAttachMode;
use aya::programs::{CgroupSockAddr, ProgramError};
use aya::{include_bytes_aligned, Ebpf, EbpfLoader};

use crate::types::Addr;

/// The compiled socket programs.
static HOST_SOCK_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/host_sock.o"));

/// The programs of `bpf/host_sock.c`, by function name.
const PROGRAMS: [&str; 8] = [
    "host_connect4",
    "host_connect6",
    "host_sendmsg4",
    "host_sendmsg6",
    "host_recvmsg4",
    "host_recvmsg6",
    "host_getpeername4",
    "host_getpeername6",
];

/// Capacity of `svcs` (front ends).
pub const MAX_FRONTS: usize = 16384;
/// Capacity of `backends` (slots over every front end).
pub const MAX_SLOTS_TOTAL: usize = 262_144;
/// Most slots one front end has: as many as a service port may have
/// endpoints (the flow record's 16-bit index), so every endpoint gets at
/// least one. The program checks an affinity entry in `members` (one
/// lookup), never by walking the slots.
pub const MAX_SLOTS: usize = 65536;
/// `svcs` flag: no usable endpoint, refuse with `ECONNREFUSED`.
pub const FLAG_REJECT: u32 = 1;

/// A front end as the programs key it.
pub type FrontKey = [u8; 20];
/// A backend (address, port, family) as the programs store it.
pub type BackendVal = [u8; 20];

/// The `svcs` key of `addr:port/proto`.
pub fn front_key(addr: Addr, port: u16, proto: u8) -> FrontKey {
    let mut k = [0u8; 20];
    k[..18].copy_from_slice(&backend_val(addr, port)[..18]);
    k[18] = proto;
    k[19] = family(addr);
    k
}

/// The `backends` value of `addr:port`.
pub fn backend_val(addr: Addr, port: u16) -> BackendVal {
    let mut v = [0u8; 20];
    if addr.is_v4() {
        v[..4].copy_from_slice(&addr.v4_octets());
    } else {
        v[..16].copy_from_slice(&addr.0);
    }
    v[16..18].copy_from_slice(&port.to_be_bytes());
    v[18] = family(addr);
    v
}

/// `AF_INET` or `AF_INET6`.
fn family(addr: Addr) -> u8 {
    if addr.is_v4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// What one front end gives the node's sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontEntry {
    /// Backends in the order new sockets take them (cursor mod length);
    /// empty with `reject`.
    pub slots: Vec<BackendVal>,
    /// Refuse new sockets (`ECONNREFUSED`).
    pub reject: bool,
    /// Session affinity idle timeout in ns (0: none).
    pub affinity_ns: u64,
}

/// Error loading, attaching or writing the socket programs.
#[derive(Debug, thiserror::Error)]
pub enum HostSockError {
    /// The object would not load (verifier, permissions).
    #[error("loading the socket programs: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program is missing, would not load or attach.
    #[error("program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// Cause.
        source: ProgramError,
    },
    /// A map is missing or refused a write.
    #[error("map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// Cause.
        source: MapError,
    },
    /// The network namespace cookie could not be read.
    #[error("reading this network namespace's cookie (SO_NETNS_COOKIE): {0}")]
    NetnsCookie(io::Error),
    /// More slots than the map holds.
    #[error("{0} backend slots for the node's own traffic: the map holds {MAX_SLOTS_TOTAL}")]
    Full(usize),
}

/// The loaded, attached socket programs and the front ends written.
pub struct HostSock {
    ebpf: Ebpf,
    /// Front end → (generation id, slot count) as written.
    written: StdHashMap<FrontKey, (u32, FrontEntry)>,
    next_id: u32,
    slots_used: usize,
}

impl HostSock {
    /// Loads the programs, serves this process's network namespace and
    /// attaches every program to the cgroup v2 directory `cgroup` (open).
    ///
    /// # Errors
    /// [`HostSockError`] naming what failed; nothing stays attached then.
    pub fn attach(cgroup: &File) -> Result<HostSock, HostSockError> {
        HostSock::attach_with(cgroup, false)
    }

    /// [`HostSock::attach`]; with `service_ranges`, the programs also match
    /// the `service_ranges` trie ([`HostSock::take_service_ranges`]).
    ///
    /// # Errors
    /// As [`HostSock::attach`].
    pub fn attach_with(cgroup: &File, service_ranges: bool) -> Result<HostSock, HostSockError> {
        let on = u8::from(service_ranges);
        let mut ebpf = EbpfLoader::new()
            .set_global("service_ranges_on", &on, true)
            .load(HOST_SOCK_OBJ)?;
        let cookie = netns_cookie().map_err(HostSockError::NetnsCookie)?;
        let mut config: Array<&mut MapData, u64> =
            Array::try_from(ebpf.map_mut("config").ok_or(HostSockError::Map {
                name: "config",
                source: MapError::InvalidName {
                    name: "config".into(),
                },
            })?)
            .map_err(|source| HostSockError::Map {
                name: "config",
                source,
            })?;
        config
            .set(0, cookie, 0)
            .map_err(|source| HostSockError::Map {
                name: "config",
                source,
            })?;
        let dir = cgroup;
        for name in PROGRAMS {
            let err = |source| HostSockError::Program { name, source };
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(ProgramError::NotLoaded)
                .map_err(err)?
                .try_into()
                .map_err(err)?;
            prog.load().map_err(err)?;
            // A bpf_link: always one of several programs on the cgroup
            // (the kernel refuses flags on cgroup links).
            prog.attach(dir, CgroupAttachMode::Single).map_err(err)?;
        }
        Ok(HostSock {
            ebpf,
            written: StdHashMap::new(),
            next_id: 1,
            slots_used: 0,
        })
    }

    /// Makes the maps hold exactly `want`: only front ends that changed
    /// are written (new slots under a new generation id, then the front
    /// end, then the old slots removed, so a concurrent connect sees the
    /// old or the new set, never a mix). Returns how many front ends were
    /// written or removed.
    ///
    /// # Errors
    /// [`HostSockError::Map`] when the kernel refuses a write, or
    /// [`HostSockError::Full`]; what was written before stays consistent.
    pub fn sync(
        &mut self,
        want: &StdHashMap<FrontKey, FrontEntry>,
    ) -> Result<usize, HostSockError> {
        let mut changed = 0;
        let gone: Vec<FrontKey> = self
            .written
            .keys()
            .filter(|k| !want.contains_key(*k))
            .copied()
            .collect();
        for k in gone {
            self.remove(&k)?;
            changed += 1;
        }
        for (k, e) in want {
            if self.written.get(k).map(|(_, old)| old) == Some(e) {
                continue;
            }
            self.put(k, e)?;
            changed += 1;
        }
        Ok(changed)
    }

    /// The `service_ranges` trie, for its one writer (the control plane's
    /// follower); `None` once taken.
    ///
    /// # Errors
    /// [`HostSockError::Map`] when the map is missing.
    pub fn take_service_ranges(
        &mut self,
    ) -> Result<Option<crate::steer::ranges::RangeMap>, HostSockError> {
        let Some(map) = self.ebpf.take_map("service_ranges") else {
            return Ok(None);
        };
        let trie = aya::maps::LpmTrie::try_from(map).map_err(|source| HostSockError::Map {
            name: "service_ranges",
            source,
        })?;
        Ok(Some(crate::steer::ranges::RangeMap::new(trie)))
    }

    /// Sockets rewritten, refused, and refused for a service range since
    /// the programs were loaded.
    ///
    /// # Errors
    /// [`HostSockError::Map`] when `config` cannot be read.
    pub fn counters(&self) -> Result<(u64, u64, u64), HostSockError> {
        let err = |source| HostSockError::Map {
            name: "config",
            source,
        };
        let map = self.ebpf.map("config").ok_or(HostSockError::Map {
            name: "config",
            source: MapError::InvalidName {
                name: "config".into(),
            },
        })?;
        let config: Array<&MapData, u64> = Array::try_from(map).map_err(err)?;
        Ok((
            config.get(&1, 0).map_err(err)?,
            config.get(&2, 0).map_err(err)?,
            config.get(&3, 0).map_err(err)?,
        ))
    }

    fn put(&mut self, k: &FrontKey, e: &FrontEntry) -> Result<(), HostSockError> {
        let old = self.written.get(k).map(|(id, e)| (*id, e.slots.clone()));
        let freed = old.as_ref().map_or(0, |(_, s)| s.len());
        if self.slots_used - freed + e.slots.len() > MAX_SLOTS_TOTAL {
            return Err(HostSockError::Full(self.slots_used + e.slots.len()));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        {
            let mut backends = self.backends()?;
            for (i, b) in e.slots.iter().enumerate() {
                backends
                    .insert(slot_key(id, i as u32), *b, 0)
                    .map_err(|source| HostSockError::Map {
                        name: "backends",
                        source,
                    })?;
            }
            let mut members = self.members()?;
            for b in &e.slots {
                members
                    .insert(member_key(id, b), 1, 0)
                    .map_err(|source| HostSockError::Map {
                        name: "members",
                        source,
                    })?;
            }
        }
        let mut val = [0u8; 24];
        val[0..4].copy_from_slice(&id.to_ne_bytes());
        val[4..8].copy_from_slice(&(e.slots.len() as u32).to_ne_bytes());
        let flags = if e.reject { FLAG_REJECT } else { 0 };
        val[8..12].copy_from_slice(&flags.to_ne_bytes());
        val[16..24].copy_from_slice(&e.affinity_ns.to_ne_bytes());
        self.svcs()?
            .insert(*k, val, 0)
            .map_err(|source| HostSockError::Map {
                name: "svcs",
                source,
            })?;
        self.slots_used += e.slots.len();
        if let Some((old_id, slots)) = old {
            self.remove_slots(old_id, &slots)?;
        }
        self.written.insert(*k, (id, e.clone()));
        Ok(())
    }

    fn remove(&mut self, k: &FrontKey) -> Result<(), HostSockError> {
        let Some((id, e)) = self.written.remove(k) else {
            return Ok(());
        };
        match self.svcs()?.remove(k) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(HostSockError::Map {
                    name: "svcs",
                    source,
                })
            }
        }
        self.remove_slots(id, &e.slots)
    }

    fn remove_slots(&mut self, id: u32, slots: &[BackendVal]) -> Result<(), HostSockError> {
        let n = slots.len();
        let mut members = self.members()?;
        for b in slots {
            match members.remove(&member_key(id, b)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(HostSockError::Map {
                        name: "members",
                        source,
                    })
                }
            }
        }
        let mut backends = self.backends()?;
        for i in 0..n {
            match backends.remove(&slot_key(id, i as u32)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(HostSockError::Map {
                        name: "backends",
                        source,
                    })
                }
            }
        }
        self.slots_used -= n;
        Ok(())
    }

    fn svcs(&mut self) -> Result<HashMap<&mut MapData, FrontKey, [u8; 24]>, HostSockError> {
        self.hash("svcs")
    }

    fn backends(&mut self) -> Result<HashMap<&mut MapData, [u8; 8], BackendVal>, HostSockError> {
        self.hash("backends")
    }

    fn members(&mut self) -> Result<HashMap<&mut MapData, [u8; 24], u8>, HostSockError> {
        self.hash("members")
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, HostSockError> {
        let map = self.ebpf.map_mut(name).ok_or(HostSockError::Map {
            name,
            source: MapError::InvalidName { name: name.into() },
        })?;
        HashMap::try_from(map).map_err(|source| HostSockError::Map { name, source })
    }
}

/// The `backends` key of slot `i` of generation `id`.
/// A `members` key: the generation id, then the backend as in `backends`.
fn member_key(id: u32, b: &BackendVal) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..4].copy_from_slice(&id.to_ne_bytes());
    k[4..].copy_from_slice(b);
    k
}

fn slot_key(id: u32, i: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&id.to_ne_bytes());
    k[4..].copy_from_slice(&i.to_ne_bytes());
    k
}

/// This process's network namespace cookie (what `bpf_get_netns_cookie`
/// returns for its sockets).
fn netns_cookie() -> io::Result<u64> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `fd` is the socket just opened; `cookie` and `len` are valid
    // for writes of the sizes given, and live across the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_c_layout() {
        let k = front_key(Addr::from_v4([198, 18, 100, 10]), 80, 6);
        assert_eq!(&k[..4], &[198, 18, 100, 10]);
        assert_eq!(&k[4..16], &[0; 12]);
        assert_eq!(&k[16..18], &[0, 80]);
        assert_eq!((k[18], k[19]), (6, 2));
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[15] = 1;
        let b = backend_val(Addr::from_v6(v6), 8080);
        assert_eq!(&b[..16], &v6);
        assert_eq!(&b[16..18], &8080u16.to_be_bytes());
        assert_eq!(b[18], 10);
    }
}
