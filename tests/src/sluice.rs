//! The real `sluice` binary, run in the LB namespace of a [`Topology`].
//!
//! The contract the tests hold the binary to:
//! `sluice run --config FILE --iface front --iface back [ARGS]`; a stderr line
//! containing `sluice ready` once it forwards; SIGHUP re-reads the config and
//! logs `reload applied` or `reload rejected: <error>`; SIGTERM exits 0 and
//! prints `counter <name> <value>` lines on stdout; a bad config exits
//! non-zero with the field named on stderr. Each instance gets its own
//! `--api-socket` (unless the test gives one), so tests run in parallel;
//! [`Sluice::start_empty`] starts it without `--config`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use crate::netns::{BgProcess, CmdOutput, Pipe};
use crate::topology::{Role, Topology};

/// How long `start` waits for `sluice ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `reload` waits for its outcome line.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits for exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Locates the `sluice` binary: `SLUICE_BIN`, else the newer of
/// `<workspace>/target/{release,debug}/sluice` (also under `CARGO_TARGET_DIR`).
///
/// # Panics
/// If no binary is found, with the command that builds it.
pub fn sluice_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "SLUICE_BIN={} does not exist", p.display());
        return p;
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives in the workspace")
        .to_path_buf();
    let mut dirs = vec![ws.join("target")];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t));
    }
    let mtime = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    for d in &dirs {
        let rel = d.join("release/sluice");
        let dbg = d.join("debug/sluice");
        match (rel.exists(), dbg.exists()) {
            (true, true) if mtime(&rel) >= mtime(&dbg) => return rel,
            (_, true) => return dbg,
            (true, false) => return rel,
            (false, false) => {}
        }
    }
    panic!(
        "sluice binary not found in {dirs:?} (nor SLUICE_BIN): build it first: cargo build --bins"
    );
}

/// What a SIGHUP reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// `reload applied`, with the `version=N` from the log line if present.
    Applied(Option<u64>),
    /// `reload rejected: <error>`, with the error text.
    Rejected(String),
}

/// What `stop` collected.
#[derive(Debug)]
pub struct StopReport {
    /// Exit status (`None` if it had to be killed after SIGTERM).
    pub status: Option<ExitStatus>,
    /// `counter <name> <value>` lines from stdout.
    pub counters: BTreeMap<String, u64>,
    /// All of stdout.
    pub stdout: String,
    /// All of stderr (the log).
    pub logs: String,
}

impl StopReport {
    /// A counter's value.
    ///
    /// # Panics
    /// When sluice did not print `name` at exit (it prints every counter it
    /// knows, zeros included): a renamed or misspelt counter must fail the
    /// test that reads it, not read as 0. The message lists the counters
    /// that were printed.
    pub fn counter(&self, name: &str) -> u64 {
        match self.try_counter(name) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// A counter's value, or an error naming it and the counters that were
    /// printed.
    ///
    /// # Errors
    /// [`MissingCounter`] when sluice did not print `name` at exit.
    pub fn try_counter(&self, name: &str) -> Result<u64, MissingCounter> {
        self.counters
            .get(name)
            .copied()
            .ok_or_else(|| MissingCounter {
                name: name.to_string(),
                printed: self.counters.keys().cloned().collect(),
            })
    }
}

/// A counter that sluice did not print at exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingCounter {
    /// The counter asked for.
    pub name: String,
    /// The counters sluice printed, sorted.
    pub printed: Vec<String>,
}

impl std::fmt::Display for MissingCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sluice printed no counter {:?} at exit; it printed: {:?}",
            self.name, self.printed
        )
    }
}

impl std::error::Error for MissingCounter {}

/// A running sluice; killed (by PID) on drop unless stopped. Its config file
/// is removed on drop.
pub struct Sluice {
    proc: Option<BgProcess>,
    config: PathBuf,
    /// The API's Unix socket (unique per instance, so tests run in parallel).
    socket: PathBuf,
}

fn temp_config_path(topo: &Topology) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "{}-sluice-{}-{}.yaml",
        topo.prefix(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Replaces the file atomically (write + rename), so sluice never reads half
/// a config.
fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename {}: {e}", path.display()));
}

fn argv<'a>(bin: &'a str, config: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        bin, "run", "--config", config, "--iface", "front", "--iface", "back",
    ];
    v.extend_from_slice(args);
    v
}

/// A unique API socket path for one sluice of `topo`.
fn temp_socket_path(topo: &Topology) -> PathBuf {
    temp_config_path(topo).with_extension("sock")
}

/// `argv` plus `--api-socket SOCKET` unless `args` name one; without a
/// config (`config == None`) no `--config`.
fn argv_api<'a>(
    bin: &'a str,
    config: Option<&'a str>,
    socket: &'a str,
    args: &[&'a str],
) -> Vec<&'a str> {
    let mut v = match config {
        Some(c) => argv(bin, c, args),
        None => {
            let mut v = vec![bin, "run", "--iface", "front", "--iface", "back"];
            v.extend_from_slice(args);
            v
        }
    };
    if !args.contains(&"--api-socket") {
        v.extend_from_slice(&["--api-socket", socket]);
    }
    if !args.contains(&"--state-dir") {
        // The socket's unique path, as a directory: never the shared
        // default, so tests neither see nor leave each other's state.
        v.extend_from_slice(&["--state-dir", state_dir_of(socket)]);
    }
    v
}

/// The state directory the harness gives a sluice whose socket is `socket`
/// (removed with it on drop).
fn state_dir_of(socket: &str) -> &str {
    socket.strip_suffix(".sock").unwrap_or(socket)
}

impl Sluice {
    /// Writes `config_yaml` to a temp file, starts sluice in the LB namespace
    /// with `args` appended, and waits up to 20 s for `sluice ready`.
    ///
    /// # Panics
    /// If the binary is missing, exits, or is not ready in time (with its log).
    pub fn start(topo: &Topology, config_yaml: &str, args: &[&str]) -> Self {
        Self::start_in(topo, Role::Lb, config_yaml, args)
    }

    /// Like [`Sluice::start`], in the namespace of LB node `lb` ([`Role::Lb`]
    /// or [`Role::Lb2`]), serving that node's `front` and `back` links.
    ///
    /// # Panics
    /// As [`Sluice::start`].
    pub fn start_in(topo: &Topology, lb: Role, config_yaml: &str, args: &[&str]) -> Self {
        assert!(
            matches!(lb, Role::Lb | Role::Lb2),
            "sluice runs in an LB namespace, not {lb:?}"
        );
        Self::start_opt(topo, lb, Some(config_yaml), args)
    }

    /// Starts sluice without `--config` (it starts empty and is configured
    /// through its API), with `args` appended; waits for `sluice ready`.
    ///
    /// # Panics
    /// As [`Sluice::start`].
    pub fn start_empty(topo: &Topology, args: &[&str]) -> Self {
        Self::start_opt(topo, Role::Lb, None, args)
    }

    fn start_opt(topo: &Topology, lb: Role, config_yaml: Option<&str>, args: &[&str]) -> Self {
        let bin = sluice_bin();
        let config = temp_config_path(topo);
        let socket = temp_socket_path(topo);
        if let Some(y) = config_yaml {
            write_atomic(&config, y);
        }
        let (b, c, s) = (
            bin.to_string_lossy(),
            config.to_string_lossy(),
            socket.to_string_lossy(),
        );
        let c = config_yaml.map(|_| c.as_ref());
        let mut cmd = topo.command(lb, &argv_api(&b, c, &s, args));
        // Plain log lines: the harness matches on their text.
        cmd.env("NO_COLOR", "1");
        let proc = BgProcess::spawn(cmd);
        let mut me = Sluice {
            proc: Some(proc),
            config,
            socket,
        };
        let p = me.proc.as_mut().expect("just set");
        if !p.wait_for(Pipe::Stderr, 0, "sluice ready", READY_TIMEOUT) {
            let running = p.is_running();
            let what = if running {
                format!("not ready after {READY_TIMEOUT:?}")
            } else {
                "exited before ready".to_string()
            };
            let (cmd, out, err) = (
                p.cmdline().to_string(),
                p.output(Pipe::Stdout),
                p.output(Pipe::Stderr),
            );
            panic!("sluice {what}: `{cmd}`\n--- stdout\n{out}\n--- stderr\n{err}");
        }
        me
    }

    /// Runs sluice with `config_yaml` expecting it to exit by itself (a bad
    /// config); it is killed after `timeout` if it does not.
    pub fn run_to_exit(
        topo: &Topology,
        config_yaml: &str,
        args: &[&str],
        timeout: Duration,
    ) -> CmdOutput {
        let bin = sluice_bin();
        let config = temp_config_path(topo);
        let socket = temp_socket_path(topo);
        write_atomic(&config, config_yaml);
        let (b, c, s) = (
            bin.to_string_lossy(),
            config.to_string_lossy(),
            socket.to_string_lossy(),
        );
        let mut cmd = topo.command(Role::Lb, &argv_api(&b, Some(&c), &s, args));
        cmd.env("NO_COLOR", "1");
        let out = crate::netns::exec_timeout(cmd, timeout);
        let _ = std::fs::remove_file(&config);
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_dir_all(state_dir_of(&socket.to_string_lossy()));
        out
    }

    fn proc(&self) -> &BgProcess {
        self.proc.as_ref().expect("sluice already stopped")
    }

    /// The PID of the sluice process.
    pub fn pid(&self) -> u32 {
        self.proc().pid()
    }

    /// The log (stderr) so far.
    pub fn logs(&self) -> String {
        self.proc().output(Pipe::Stderr)
    }

    /// The API's Unix socket (the `--api-socket` the harness gave, unless
    /// the test gave its own).
    pub fn api_socket(&self) -> &Path {
        &self.socket
    }

    /// Path of the config file sluice was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Replaces the config file (atomically); takes effect on [`Sluice::reload`].
    pub fn rewrite_config(&self, config_yaml: &str) {
        write_atomic(&self.config, config_yaml);
    }

    /// Sends SIGHUP and waits (≤ 10 s) for `reload applied` or
    /// `reload rejected` logged after the signal.
    ///
    /// # Panics
    /// If neither line appears in time, with the log.
    pub fn reload(&mut self) -> ReloadOutcome {
        let p = self.proc.as_mut().expect("sluice already stopped");
        let from = p.offset(Pipe::Stderr);
        p.signal(libc::SIGHUP);
        let outcome = p.wait_for_with(Pipe::Stderr, from, RELOAD_TIMEOUT, |log| {
            strip_ansi(log).lines().find_map(|l| {
                if let Some(i) = l.find("reload rejected") {
                    let rest = l[i + "reload rejected".len()..].trim_start_matches([':', ' ']);
                    Some(ReloadOutcome::Rejected(rest.to_string()))
                } else if l.contains("reload applied") {
                    let v = l
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("version="))
                        .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok());
                    Some(ReloadOutcome::Applied(v))
                } else {
                    None
                }
            })
        });
        outcome.unwrap_or_else(|| {
            panic!(
                "no `reload applied`/`reload rejected` within {RELOAD_TIMEOUT:?}; log:\n{}",
                p.output(Pipe::Stderr)
            )
        })
    }

    /// Sends SIGTERM, waits (≤ 10 s, then SIGKILL) and collects the exit
    /// status, the `counter` lines and the logs.
    pub fn stop(mut self) -> StopReport {
        let mut p = self.proc.take().expect("sluice already stopped");
        p.signal(libc::SIGTERM);
        let out = p.wait(STOP_TIMEOUT);
        let counters = parse_counters(&out.stdout);
        StopReport {
            status: out.status,
            counters,
            stdout: out.stdout,
            logs: out.stderr,
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // Not stopped by the test (it panicked): end it by PID, and show
            // its log, which is what one needs to read the failure.
            p.signal(libc::SIGKILL);
            let out = p.wait(Duration::from_secs(5));
            if std::thread::panicking() {
                eprintln!("--- sluice log (pid killed on drop)\n{}", out.stderr);
            }
        }
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(self.config.with_extension("yaml.tmp"));
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir_all(state_dir_of(&self.socket.to_string_lossy()));
    }
}

/// Removes ANSI escape sequences (colour codes) from a log.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC '[' parameters... final byte in '@'..='~'.
            if chars.next() == Some('[') {
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until `f` returns `Some`, polling every 100 ms, up to `timeout`.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `counter <name> <value>` lines of sluice's stdout.
fn parse_counters(stdout: &str) -> BTreeMap<String, u64> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("counter"), Some(name), Some(v)) => Some((name.to_string(), v.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{parse_counters, strip_ansi, MissingCounter, StopReport};

    fn report(stdout: &str) -> StopReport {
        StopReport {
            status: None,
            counters: parse_counters(stdout),
            stdout: stdout.to_string(),
            logs: String::new(),
        }
    }

    #[test]
    fn printed_counters_read_back_zeros_included() {
        let r = report("counter rx 7\ncounter drop_no_flow 0\nsomething else\n");
        assert_eq!(r.counter("rx"), 7);
        assert_eq!(r.counter("drop_no_flow"), 0);
    }

    #[test]
    fn a_counter_that_was_not_printed_is_an_error() {
        let r = report("counter rx 7\ncounter tx 6\n");
        assert_eq!(
            r.try_counter("drop_renamed"),
            Err(MissingCounter {
                name: "drop_renamed".into(),
                printed: vec!["rx".into(), "tx".into()],
            })
        );
        let msg = std::panic::catch_unwind(|| r.counter("drop_renamed"))
            .expect_err("a missing counter must panic")
            .downcast::<String>()
            .expect("a formatted message");
        assert!(
            msg.contains("\"drop_renamed\"") && msg.contains("\"rx\"") && msg.contains("\"tx\""),
            "{msg}"
        );
    }

    #[test]
    fn strips_colour_codes() {
        assert_eq!(
            strip_ansi("\x1b[32m INFO\x1b[0m reload applied \x1b[3mversion\x1b[0m\x1b[2m=\x1b[0m2"),
            " INFO reload applied version=2"
        );
    }
}
