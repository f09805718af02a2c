//! Least privilege: `sluice run` serves as an unprivileged user holding
//! only the capabilities `control/src/caps.rs` lists (granted as ambient
//! capabilities with `setpriv`, as systemd's `AmbientCapabilities=` in
//! `packaging/sluice.service` does), and with one of them taken away it
//! refuses to start with an error that names the missing one.
//!
//! The user is `nobody`; its state directory and API socket live in a
//! directory this test creates and gives to it (systemd's
//! `StateDirectory=` and `RuntimeDirectory=` do the same).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice_tests::k8s::web_http;
use sluice_tests::{
    exec_timeout, parse_backend_reply, poll_until, require_root, sluice_bin, topology, BgProcess,
    Pipe, Role, Topology,
};

/// What the README and the unit grant (`CAP_NET_BIND_SERVICE` only for
/// `--dns` below port 1024, not used here).
const CAPS: &[&str] = &["net_admin", "net_raw", "bpf", "perfmon", "ipc_lock"];

/// A directory owned by `nobody`, removed on drop.
struct UserDir(PathBuf);

impl UserDir {
    fn new(topo: &Topology) -> UserDir {
        let dir = std::env::temp_dir().join(format!("{}-privileges", topo.prefix()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create the user's directory");
        let (uid, gid) = nobody();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown to nobody");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        UserDir(dir)
    }
}

impl Drop for UserDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// uid and gid of `nobody` (from `id`).
fn nobody() -> (u32, u32) {
    let id = |flag: &str| {
        let out = exec_timeout(
            {
                let mut c = Command::new("id");
                c.args([flag, "nobody"]);
                c
            },
            Duration::from_secs(5),
        );
        out.expect_ok().trim().parse::<u32>().expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// `setpriv` as `nobody` with exactly `caps` (inheritable, ambient and
/// bounding set), then `sluice run` on the LB's two links.
fn command(topo: &Topology, dir: &Path, config: &Path, caps: &[&str]) -> Command {
    command_env(topo, dir, config, caps, false)
}

/// The capabilities of `packaging/sluice.service` besides
/// `CAP_NET_BIND_SERVICE` (only for `--dns` on port 53): the tested set.
/// (It also sets `LimitMEMLOCK=infinity`, which would make `CAP_IPC_LOCK`
/// unneeded; that cannot be tried here, where the hard memlock limit is
/// 8 MiB and the tests lack `CAP_SYS_RESOURCE` to lift it.)
const UNIT_CAPS: &[&str] = CAPS;

/// [`command`], with sluice's own check skipped when `skip_check`
/// (`SLUICE_SKIP_CAPS_CHECK`), so that the kernel's refusal shows.
fn command_env(
    topo: &Topology,
    dir: &Path,
    config: &Path,
    caps: &[&str],
    skip_check: bool,
) -> Command {
    let (uid, gid) = nobody();
    let plus: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let plus = plus.join(",");
    let bounding = format!("-all,{plus}");
    let (uid, gid) = (uid.to_string(), gid.to_string());
    let bin = sluice_bin();
    let sock = dir.join("sluice.sock");
    let state = dir.join("state");
    // The memlock limit as the tests inherit it (8 MiB here, the kernel's
    // default), so CAP_IPC_LOCK is needed for the UMEM.
    let mut argv: Vec<&str> = vec![
        "setpriv",
        "--reuid",
        &uid,
        "--regid",
        &gid,
        "--clear-groups",
        "--inh-caps",
        &plus,
        "--ambient-caps",
        &plus,
        "--bounding-set",
        &bounding,
    ];
    if caps.is_empty() {
        argv.truncate(6);
        argv.extend(["--inh-caps", "-all", "--bounding-set", "-all"]);
    }
    let rest = [
        bin.to_str().expect("utf-8 path"),
        "run",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--iface",
        "front",
        "--iface",
        "back",
        "--workers",
        "1",
        "--api-socket",
        sock.to_str().expect("utf-8 path"),
        "--state-dir",
        state.to_str().expect("utf-8 path"),
    ];
    argv.extend(rest);
    let mut cmd = topo.command(Role::Lb, &argv);
    cmd.env("NO_COLOR", "1");
    if skip_check {
        cmd.env("SLUICE_SKIP_CAPS_CHECK", "1");
    }
    cmd
}

fn write_config(dir: &Path) -> PathBuf {
    let p = dir.join("lb.yaml");
    std::fs::write(&p, web_http(&[1, 2])).expect("write config");
    p
}

#[test]
fn serves_as_nobody_with_only_the_listed_capabilities() {
    require_root();
    let topo = topology!();
    let dir = UserDir::new(&topo);
    let config = write_config(&dir.0);
    let mut p = BgProcess::spawn(command(&topo, &dir.0, &config, CAPS));
    assert!(
        p.wait_for(Pipe::Stderr, 0, "sluice ready", Duration::from_secs(20)),
        "not ready as nobody with {CAPS:?}:\n{}",
        p.output(Pipe::Stderr)
    );
    // It really runs as nobody, with no capability beyond the list.
    let status = std::fs::read_to_string(format!("/proc/{}/status", sluice_pid(&p)))
        .expect("status of sluice");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert!(
        uid_line.split_whitespace().nth(1) == Some(&nobody().0.to_string()),
        "{uid_line}"
    );
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    // net_admin 12, net_raw 13, ipc_lock 14, perfmon 38, bpf 39.
    let listed = (1u64 << 12) | (1 << 13) | (1 << 14) | (1 << 38) | (1 << 39);
    assert_eq!(eff, listed, "CapEff {eff:#x}");
    let hits = poll_until(Duration::from_secs(5), || {
        let out = topo.curl("http://198.18.100.10/", None);
        parse_backend_reply(&out.stdout)
    });
    assert!(hits.is_some(), "no answer through the VIP as nobody");
    for i in 0..6 {
        let out = topo.curl("http://198.18.100.10/", None);
        assert!(out.success(), "connection {i} as nobody: {out}");
    }
    assert!(
        dir.0.join("state").exists(),
        "the state dir was written as nobody"
    );
    p.signal(libc::SIGTERM);
    let out = p.wait(Duration::from_secs(10));
    assert!(
        out.status.is_some_and(|s| s.success()),
        "clean stop as nobody: {out}"
    );
    assert!(out.stdout.contains("counter new_flows"), "{out}");
}

/// `systemd-analyze verify` accepts the unit without a warning (it exits
/// 0 on unknown keys, so its stderr must be empty too), and the unit grants
/// exactly what the tests above prove is enough.
#[test]
fn the_systemd_unit_verifies_and_grants_the_tested_capabilities() {
    require_root();
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/sluice.service");
    let unit = std::fs::read_to_string(&unit_path).expect("packaging/sluice.service");
    let dir = std::env::temp_dir().join(format!("sluice-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("temp dir");
    // verify checks that ExecStart's binary exists: point it at the build.
    let bin = sluice_bin();
    let local = dir.join("sluice.service");
    std::fs::write(
        &local,
        unit.replace("/usr/bin/sluice", bin.to_str().expect("utf-8 path")),
    )
    .expect("write the unit copy");
    let out = exec_timeout(
        {
            let mut c = Command::new("systemd-analyze");
            c.arg("verify").arg(&local);
            c
        },
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.success() && out.stderr.trim().is_empty(),
        "systemd-analyze verify (install systemd: scripts/deps.sh): {out}"
    );
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key}= missing from the unit"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let want: Vec<String> = UNIT_CAPS
        .iter()
        .map(|c| format!("CAP_{}", c.to_uppercase()))
        .chain(["CAP_NET_BIND_SERVICE".to_string()])
        .collect();
    assert_eq!(value("AmbientCapabilities"), want);
    assert_eq!(value("CapabilityBoundingSet"), want);
    for (k, v) in [
        ("LimitMEMLOCK", "infinity"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "sluice"),
        ("RuntimeDirectory", "sluice"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(value(k), vec![v.to_string()], "{k}");
    }
    assert!(
        unit.contains("--state-dir /var/lib/sluice")
            && unit.contains("--api-socket /run/sluice/sluice.sock"),
        "the unit uses its StateDirectory and RuntimeDirectory"
    );
}

/// The PID of sluice under `ip netns exec` + `setpriv` (both exec, so the
/// spawned PID is sluice's own).
fn sluice_pid(p: &BgProcess) -> u32 {
    p.pid()
}

#[test]
fn one_capability_fewer_is_refused_by_name() {
    require_root();
    let topo = topology!();
    let dir = UserDir::new(&topo);
    let config = write_config(&dir.0);
    for (drop, name) in [
        ("net_admin", "CAP_NET_ADMIN"),
        ("net_raw", "CAP_NET_RAW"),
        ("bpf", "CAP_BPF"),
        ("perfmon", "CAP_PERFMON"),
        ("ipc_lock", "CAP_IPC_LOCK"),
    ] {
        let caps: Vec<&str> = CAPS.iter().copied().filter(|c| *c != drop).collect();
        let out = exec_timeout(
            command(&topo, &dir.0, &config, &caps),
            Duration::from_secs(20),
        );
        assert!(!out.success(), "started without {name}: {out}");
        assert!(
            out.stderr.contains(&format!("lacks {name}")),
            "the error names {name}: {out}"
        );
        let others: Vec<&str> = ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF", "CAP_PERFMON"]
            .into_iter()
            .filter(|n| *n != name)
            .collect();
        for o in others {
            assert!(!out.stderr.contains(o), "only {name} is named: {out}");
        }
        // Each one is really needed: past sluice's own check, the kernel
        // refuses the start (a map, the verifier, the UMEM or the socket).
        let out = exec_timeout(
            command_env(&topo, &dir.0, &config, &caps, true),
            Duration::from_secs(20),
        );
        assert!(
            !out.success() && !out.stderr.contains("sluice ready"),
            "the kernel let sluice start without {name}: {out}"
        );
    }
    // Nothing at all: every one is named, and nothing was attached.
    let out = exec_timeout(
        command(&topo, &dir.0, &config, &[]),
        Duration::from_secs(20),
    );
    assert!(!out.success(), "{out}");
    for name in [
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_IPC_LOCK",
    ] {
        assert!(out.stderr.contains(name), "{name} named: {out}");
    }
    let link = topo.exec(
        Role::Lb,
        &["ip", "link", "show", "front"],
        Duration::from_secs(5),
    );
    assert!(
        !link.expect_ok().contains("xdp"),
        "nothing attached: {link}"
    );
}
