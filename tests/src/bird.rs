//! A real BIRD 2 (`bird`, Debian `bird2`) in a namespace of a [`Topology`]:
//! the LB's BIRD that Sluice drives (`--bgp bird`) and the router's BIRD
//! that learns the VIPs over BGP and installs them in its kernel table.
//!
//! Each daemon runs in the foreground (`bird -f -c CONF -s SOCK -P PIDFILE`)
//! with its files in a temp directory of its own, so tests run in parallel
//! and never touch `/etc/bird` or `/run/bird`; it is ended by its PID when
//! the guard drops (also when the test panics) and the directory removed.
//! BIRD logs to stderr, which the guard captures for failure messages.
//!
//! The timers are short for the test (`hold time 3; keepalive time 1;
//! connect retry time 1; connect delay time 1; error wait time 1, 5;`), so
//! a session comes up in about a second, a lost peer is noticed in three,
//! and a peer that comes back after its session failed (a host of a tier
//! restarted) is retried within seconds, not after BIRD's default 60 s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::{exec_timeout, BgProcess, CmdOutput, Pipe};
use crate::sluice::poll_until;
use crate::topology::{Role, Topology};

/// The AS of the router.
pub const ROUTER_AS: u32 = 65000;
/// The AS of every LB host (one AS, so that the router's BIRD sees equal
/// paths and may merge them into one multipath route).
pub const LB_AS: u32 = 65001;

/// BGP timers short enough for a test (names from the BIRD 2 manual, BGP
/// protocol options).
const TIMERS: &str = "  hold time 3;\n  keepalive time 1;\n  connect retry time 1;\n  \
     connect delay time 1;\n  error wait time 1, 5;\n";

/// How long `start` waits for the control socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `bird`, ended by PID on drop.
pub struct Bird {
    proc: Option<BgProcess>,
    dir: PathBuf,
}

impl Bird {
    /// The temp directory a BIRD for `role` of `topo` uses (its config,
    /// socket, pid file and, for an LB, the include files).
    pub fn dir_for(topo: &Topology, role: Role) -> PathBuf {
        let tag = match role {
            Role::Lb => "lb",
            Role::Lb2 => "lb2",
            Role::Router => "rt",
            other => panic!("no BIRD in {other:?}"),
        };
        std::env::temp_dir().join(format!("{}-bird-{tag}", topo.prefix()))
    }

    /// The IPv4 include file of an LB's BIRD (what `--bird-include` names).
    pub fn include_path(topo: &Topology, role: Role) -> PathBuf {
        Self::dir_for(topo, role).join("sluice-vips.conf")
    }

    /// The IPv6 include file of an LB's BIRD (`--bird-include6`).
    pub fn include6_path(topo: &Topology, role: Role) -> PathBuf {
        Self::dir_for(topo, role).join("sluice-vips6.conf")
    }

    /// The control socket of a BIRD for `role` (`--bird-socket`).
    pub fn socket_path(topo: &Topology, role: Role) -> PathBuf {
        Self::dir_for(topo, role).join("bird.ctl")
    }

    /// Starts BIRD in LB node `role` with the `bird.conf` of README "Running
    /// a tier": static protocols `sluice` and `sluice6` that include the
    /// files Sluice writes (empty at first), exported to one BGP session
    /// to the router at `router_ip`. `my_ip` is the LB's front address.
    ///
    /// # Panics
    /// If BIRD does not start (with its log).
    pub fn start_lb(topo: &Topology, role: Role, my_ip: &str, router_ip: &str) -> Self {
        let dir = Self::dir_for(topo, role);
        std::fs::create_dir_all(&dir).expect("bird temp dir");
        let (inc, inc6) = (
            Self::include_path(topo, role),
            Self::include6_path(topo, role),
        );
        std::fs::write(&inc, "").expect("empty include");
        std::fs::write(&inc6, "").expect("empty include6");
        let conf = lb_conf(my_ip, router_ip, &inc, &inc6);
        Self::start(topo, role, dir, &conf)
    }

    /// Starts BIRD in the router namespace with one BGP session per LB
    /// address in `lbs`, every learnt route exported to the kernel table
    /// (equal paths merged into one multipath route).
    ///
    /// # Panics
    /// If BIRD does not start (with its log).
    pub fn start_router(topo: &Topology, my_ip: &str, lbs: &[&str]) -> Self {
        let dir = Self::dir_for(topo, Role::Router);
        std::fs::create_dir_all(&dir).expect("bird temp dir");
        Self::start(topo, Role::Router, dir, &router_conf(my_ip, lbs))
    }

    fn start(topo: &Topology, role: Role, dir: PathBuf, conf: &str) -> Self {
        let (conf_path, sock, pid) = (
            dir.join("bird.conf"),
            dir.join("bird.ctl"),
            dir.join("bird.pid"),
        );
        std::fs::write(&conf_path, conf).expect("bird.conf");
        let argv = [
            "bird",
            "-f",
            "-c",
            &conf_path.to_string_lossy(),
            "-s",
            &sock.to_string_lossy(),
            "-P",
            &pid.to_string_lossy(),
        ]
        .map(|s| s.to_string());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let proc = topo.spawn(role, &argv);
        let mut me = Bird {
            proc: Some(proc),
            dir,
        };
        let up = poll_until(START_TIMEOUT, || {
            me.birdc("show status")
                .stdout
                .contains("Daemon is up")
                .then_some(())
        });
        if up.is_none() {
            let p = me.proc.as_mut().expect("just set");
            let running = p.is_running();
            panic!(
                "bird in {role:?} not up after {START_TIMEOUT:?} (running: {running}):\n{conf}\n--- log\n{}",
                p.output(Pipe::Stderr)
            );
        }
        me
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// Runs `birdc -s SOCKET CMD` (a Unix socket: no namespace needed),
    /// killed after 5 s.
    pub fn birdc(&self, cmd: &str) -> CmdOutput {
        let mut c = std::process::Command::new("birdc");
        c.arg("-s").arg(self.socket()).args(cmd.split_whitespace());
        exec_timeout(c, Duration::from_secs(5))
    }

    /// BIRD's log so far.
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.output(Pipe::Stderr))
            .unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        // BgProcess ends it by PID (SIGKILL) and reaps it.
        if let Some(p) = self.proc.take() {
            if std::thread::panicking() {
                eprintln!(
                    "--- bird log ({})\n{}",
                    self.dir.display(),
                    p.output(Pipe::Stderr)
                );
            }
            drop(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The LB host's `bird.conf` (README "Running a tier (BGP with BIRD)").
pub fn lb_conf(my_ip: &str, router_ip: &str, include: &Path, include6: &Path) -> String {
    format!(
        "router id {my_ip};\nlog stderr all;\n\nprotocol device {{ }}\n\n\
         protocol static sluice {{\n  ipv4;\n  include \"{}\";\n}}\n\n\
         protocol static sluice6 {{\n  ipv6;\n  include \"{}\";\n}}\n\n\
         protocol bgp uplink {{\n  local {my_ip} as {LB_AS};\n  neighbor {router_ip} as {ROUTER_AS};\n{TIMERS}\
         \x20 ipv4 {{ import none; export where proto = \"sluice\"; }};\n\
         \x20 ipv6 {{ import none; export where proto = \"sluice6\"; }};\n}}\n",
        include.display(),
        include6.display()
    )
}

/// The router's `bird.conf`: a BGP session to each LB, learnt routes into
/// the kernel's main table, equal paths merged (`merge paths on`).
pub fn router_conf(my_ip: &str, lbs: &[&str]) -> String {
    let mut s = format!(
        "router id {my_ip};\nlog stderr all;\n\nprotocol device {{ }}\n\n\
         protocol kernel {{\n  ipv4 {{ export all; }};\n  merge paths on;\n}}\n"
    );
    for (i, lb) in lbs.iter().enumerate() {
        s.push_str(&format!(
            "\nprotocol bgp lb{i} {{\n  local {my_ip} as {ROUTER_AS};\n  neighbor {lb} as {LB_AS};\n{TIMERS}\
             \x20 ipv4 {{ import all; export none; }};\n}}\n"
        ));
    }
    s
}

/// The next hops of the router's kernel route to `prefix` (e.g.
/// `198.18.100.10`), sorted: one for a plain route, several for a
/// multipath one, none when there is no such route.
pub fn kernel_nexthops(topo: &Topology, prefix: &str) -> Vec<String> {
    let out = topo.exec(
        Role::Router,
        &[
            "ip", "-4", "route", "show", "exact", prefix, "proto", "bird",
        ],
        Duration::from_secs(5),
    );
    let mut hops: Vec<String> = out
        .stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect();
    hops.sort();
    hops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lb_config_keeps_the_include_on_its_own_line() {
        let c = lb_conf(
            "198.18.0.1",
            "198.18.0.4",
            Path::new("/x/v4.conf"),
            Path::new("/x/v6.conf"),
        );
        assert!(c.contains("\n  include \"/x/v4.conf\";\n"), "{c}");
        assert!(c.contains("\n  include \"/x/v6.conf\";\n"), "{c}");
        assert!(c.contains("export where proto = \"sluice\";"), "{c}");
        let r = router_conf("198.18.0.4", &["198.18.0.1", "198.18.0.3"]);
        assert!(r.contains("neighbor 198.18.0.3 as 65001;"), "{r}");
        assert!(r.contains("merge paths on;"), "{r}");
    }
}
