//! Traffic the node itself sends to its services (`--host-traffic on`):
//! kube-proxy's `OUTPUT`-chain rules, done at the socket.
//!
//! # The design, and why
//!
//! Two ways were weighed (issue 12):
//!
//! * *The IPVS way*: a veth pair (`kube-ipvs0`-like), service addresses
//!   routed into it so that the node's packets enter the AF_XDP data path,
//!   replies handed back to the host's stack through it. Every packet of
//!   every node connection then pays two veth crossings and two AF_XDP
//!   copies (≈ 7 µs per packet on this machine, README "Performance"), and
//!   the routing does not reach everything: a NodePort or an owned
//!   externalIP is a *local* address, resolved by the `local` rule at
//!   priority 0, before any rule Sluice could add, so that rule would have
//!   to be moved; and a connection kube-proxy does *not* masquerade would
//!   get its reply at a host address and ephemeral port, which the steering
//!   program deliberately hands to the kernel (it cannot tell it from the
//!   host's own connection to an endpoint). Routes, rules and the device
//!   also outlive a `kill -9` and must be found and removed at the next
//!   start.
//! * *The socket way* (Cilium's socket LB; chosen): cgroup `connect4/6`,
//!   `sendmsg4/6`, `recvmsg4/6` and `getpeername4/6` programs
//!   (`dataplane/bpf/host_sock.c`, loaded by
//!   [`sluice_dataplane::host_sock`]) rewrite the destination of a socket
//!   at `connect()` (per datagram for unconnected UDP) from a front end to
//!   a backend, and show the front end back to `getpeername()` and
//!   `recvfrom()`. No packet is translated: the kernel connects to the
//!   backend itself, so there is no per-packet cost at all (one hash lookup
//!   per connect), local addresses need no routing trick (the hook runs
//!   before the route lookup), and replies are ordinary replies to a
//!   host socket. The programs hang on the root of the cgroup v2 hierarchy
//!   through `bpf_link`s that the kernel releases when the process ends,
//!   also on `kill -9`: nothing is left to clean, nothing can break the
//!   node's other traffic after Sluice is gone, and a restart attaches
//!   afresh. The root cgroup holds every process of the machine, so the
//!   programs act only on sockets of Sluice's own network namespace (the
//!   namespace cookie in `config[0]`).
//!
//! What that means for kube-proxy's semantics ([`plan`] has the rules):
//! the endpoint is chosen from the service's own scheduler sequence;
//! *masquerade* is the kernel's choice of source towards the endpoint,
//! which is what kube-proxy's `MASQUERADE` picks for node traffic it marks
//! (`--masquerade-all`, sources outside `--cluster-cidr`, every external
//! front end); where kube-proxy does not masquerade it keeps the source
//! chosen towards the service address, the same address on a node whose
//! service and endpoint routes leave by one interface, and another one
//! only on a multi-homed node (Cilium's socket LB behaves the same).
//! SCTP sockets take the same `connect` hooks; this kernel has none, so
//! that path is untested here.
//!
//! # Off by default
//!
//! `--host-traffic off` is the default: the programs act on every socket of
//! the namespace Sluice runs in, which on a dedicated edge LB host (the
//! first use, GUIDE "Who uses it") would change where the host's own
//! connections to a VIP go; a node that replaces kube-proxy turns it on
//! (Cilium's `bpf-lb-sock` is likewise off unless kube-proxy replacement
//! is enabled). The existing integration tests run clients in other
//! namespaces and never see it either way.
//!
//! # Staying in step
//!
//! A thread polls the published snapshot (an `ArcSwap` load every
//! [`POLL`]) and, when it changed, plans again and writes only the front
//! ends that differ ([`HostSock::sync`]): the programs see a change within
//! a few milliseconds of its publication, without a hook in the publisher.

pub mod plan;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_dataplane::host_sock::{HostSock, HostSockError};
use sluice_dataplane::pipeline::Snapshot;
use sluice_dataplane::worker::Shared;
use tracing::{info, warn};

use crate::nodeport_addresses::NodePortAddresses;

pub use plan::{plan, PlanOpts};

/// How often the published snapshot is checked for a change.
pub const POLL: Duration = Duration::from_millis(5);

/// `--host-traffic`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Leave the node's own sockets alone.
    #[default]
    Off,
    /// Redirect the node's connections to service front ends.
    On,
}

/// Why the node-traffic programs could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostTrafficError {
    /// No cgroup v2 hierarchy is mounted, and mounting one failed.
    #[error("--host-traffic on: no cgroup2 file system in /proc/self/mountinfo and mounting one failed ({0}); the kernel needs cgroup v2, or run with --host-traffic off")]
    NoCgroup2(std::io::Error),
    /// Loading, attaching or filling the programs failed.
    #[error("--host-traffic on: {0}")]
    Programs(#[from] HostSockError),
    /// The sync thread could not be started.
    #[error("--host-traffic on: starting the sync thread: {0}")]
    Thread(std::io::Error),
}

/// The running node-traffic programs and their sync thread.
pub struct HostTraffic {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<HostSock>>,
    /// The programs' service-range trie, until its writer takes it.
    ranges: Option<sluice_dataplane::steer::ranges::RangeMap>,
}

impl HostTraffic {
    /// Attaches the programs, fills them from the current snapshot and
    /// keeps them in step with every later one.
    ///
    /// # Errors
    /// [`HostTrafficError`]; nothing stays attached then.
    pub fn start(shared: Arc<Shared>, opts: PlanOpts) -> Result<HostTraffic, HostTrafficError> {
        let (dir, root) = cgroup2_root()?;
        let mut sock = HostSock::attach_with(&dir, opts.service_ranges)?;
        let ranges = match opts.service_ranges {
            true => sock.take_service_ranges()?,
            false => None,
        };
        let first = shared.snapshot.load_full();
        let n = sock.sync(&plan(&first.services, &opts))?;
        info!(
            "host traffic: socket programs on cgroup {}, {n} front ends",
            root.display()
        );
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("host-traffic".into())
            .spawn(move || follow(sock, &shared, &opts, first, &flag))
            .map_err(HostTrafficError::Thread)?;
        Ok(HostTraffic {
            stop,
            thread: Some(thread),
            ranges,
        })
    }

    /// The programs' `service_ranges` trie (with [`PlanOpts::service_ranges`]),
    /// for [`crate::service_cidr::ServiceRanges`], which keeps it with the
    /// steering programs' (kube-proxy's `cluster-ips-check` also runs on
    /// the node's output); `None` once taken.
    pub fn take_service_ranges(&mut self) -> Option<sluice_dataplane::steer::ranges::RangeMap> {
        self.ranges.take()
    }

    /// Detaches the programs; returns (sockets rewritten, refused, refused
    /// for a service range).
    pub fn stop(mut self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(sock) = self.thread.take().and_then(|t| t.join().ok()) else {
            return (0, 0, 0);
        };
        let counts = sock.counters().unwrap_or_else(|e| {
            warn!("host traffic: counters: {e}");
            (0, 0, 0)
        });
        drop(sock);
        counts
    }
}

impl Drop for HostTraffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The sync loop: plan and write whenever the snapshot changes.
fn follow(
    mut sock: HostSock,
    shared: &Shared,
    opts: &PlanOpts,
    mut last: Arc<Snapshot>,
    stop: &AtomicBool,
) -> HostSock {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        let now = shared.snapshot.load_full();
        if Arc::ptr_eq(&now, &last) {
            continue;
        }
        if let Err(e) = sock.sync(&plan(&now.services, opts)) {
            warn!("host traffic: {e}");
        }
        last = now;
    }
    sock
}

/// Whether NodePorts answer the node on `127.0.0.1` (kube-proxy's
/// iptables mode with `route_localnet`): when `--nodeport-addresses` is
/// unset or one of its prefixes holds 127.0.0.1; never for `primary`.
pub fn localhost_nodeports(sel: &NodePortAddresses) -> bool {
    let lo = sluice_dataplane::types::Addr::from_v4([127, 0, 0, 1]);
    match sel {
        NodePortAddresses::All => true,
        NodePortAddresses::Cidrs(c) => c.iter().any(|c| c.contains(&lo)),
        NodePortAddresses::Primary => false,
    }
}

/// The root of the cgroup v2 hierarchy, opened: its mount point in this
/// mount namespace (`/sys/fs/cgroup` on a unified system,
/// `/sys/fs/cgroup/unified` on a hybrid one), else a mount of its own
/// that is detached again at once ([`mount_private`]): `ip netns exec`
/// gives a process a fresh `/sys` without the cgroup mounts, and the
/// hierarchy is the same wherever it is mounted.
fn cgroup2_root() -> Result<(File, PathBuf), HostTrafficError> {
    let own = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(p) = cgroup2_in_mountinfo(&own) {
        if let Ok(f) = File::open(&p) {
            return Ok((f, p));
        }
    }
    mount_private().map_err(HostTrafficError::NoCgroup2)
}

/// Mounts cgroup2 on a fresh directory, opens it, and detaches the mount
/// and removes the directory again: the open directory keeps the
/// hierarchy's root reachable for the attach, and nothing is left in the
/// mount table.
fn mount_private() -> std::io::Result<(File, PathBuf)> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let dir = std::env::temp_dir().join(format!("sluice-cgroup2-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let c_dir = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let fstype = c"cgroup2";
    // SAFETY: every pointer is a NUL-terminated string that lives across
    // the call; data is null (no options).
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c_dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(&dir);
        return Err(e);
    }
    let opened = File::open(&dir);
    // SAFETY: `c_dir` is a valid NUL-terminated path; MNT_DETACH unmounts
    // lazily, so the directory opened above stays usable.
    unsafe { libc::umount2(c_dir.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(&dir);
    Ok((opened?, PathBuf::from("(cgroup2 root, private mount)")))
}

/// The first cgroup2 mount point of a mountinfo text.
fn cgroup2_in_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|p| Path::new(p).to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 30 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_in_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_in_mountinfo("31 30 0:27 / /x rw - cgroup cgroup rw"),
            None
        );
    }
}
