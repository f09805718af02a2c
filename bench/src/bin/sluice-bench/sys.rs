//! Processes, commands and pinning.
//!
//! Every process the tool starts is a [`Proc`]: it is stopped by its own PID
//! (SIGTERM, then SIGKILL after a grace period) when the handle is dropped, so
//! an error or an early return never leaves a generator or a load balancer
//! running. Processes run inside a namespace with `ip netns exec NS taskset
//! -c CPU PROG ...`; both `ip` and `taskset` exec into the program, so the PID
//! we hold is the program's own.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Errors are messages naming what failed; this is a tool, not a library.
pub type Res<T> = Result<T, String>;

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The flag set by SIGINT/SIGTERM (registered on first use).
pub fn stop_flag() -> Arc<AtomicBool> {
    STOP.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registration only fails for forbidden signals; these are not.
            let _ = signal_hook::flag::register(sig, f.clone());
        }
        f
    })
    .clone()
}

/// Whether the user asked us to stop.
pub fn stopping() -> bool {
    stop_flag().load(Ordering::Relaxed)
}

/// Fails when the user asked us to stop (checked between phases).
pub fn check_stop() -> Res<()> {
    if stopping() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Sleeps, waking early when the user asks us to stop.
pub fn sleep(d: Duration) {
    let end = Instant::now() + d;
    while !stopping() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Runs a command to completion; returns its stdout, or an error with its
/// stderr.
pub fn run(args: &[&str]) -> Res<String> {
    run_input(args, None)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_input(args: &[&str], input: Option<&[u8]>) -> Res<String> {
    let (prog, rest) = args.split_first().ok_or("empty command")?;
    let mut child = Command::new(prog)
        .args(rest)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if let Some(data) = input {
        use std::io::Write;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let data = data.to_vec();
        // Write from a thread so that a large input cannot deadlock against
        // a full stdout pipe.
        thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let shown = if args.len() > 12 {
            format!("{} ...", args[..12].join(" "))
        } else {
            args.join(" ")
        };
        Err(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip netns exec NS ARGS...`
pub fn run_in(ns: &str, args: &[&str]) -> Res<String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

/// Niceness of every process the tool starts (set once by `run`).
static NICE: OnceLock<i32> = OnceLock::new();

/// Sets the niceness of the processes started from now on, and of this one.
pub fn set_nice(n: i32) {
    let _ = NICE.set(n);
    // SAFETY: setpriority(2) on our own process; no memory is involved.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, n);
    }
}

/// A process we started. Dropping it stops it (by PID).
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Option<Child>,
    /// Lines of its stderr.
    stderr_rx: Receiver<String>,
    /// Lines of its stdout.
    stdout_rx: Receiver<String>,
}

fn lines_of<R: Read + Send + 'static>(r: Option<R>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(r) = r {
        thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

impl Proc {
    /// Starts `args` in namespace `ns` pinned to `cpu` (`taskset`) at the
    /// tool's niceness, with stdout and stderr captured line by line.
    pub fn spawn(name: &str, ns: &str, cpu: usize, args: &[String]) -> Res<Proc> {
        let cpu = cpu.to_string();
        let nice = NICE.get().copied().unwrap_or(0).to_string();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", ns, "nice", "-n", &nice, "taskset", "-c", &cpu,
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {name} ({}): {e}", args.join(" ")))?;
        let stderr_rx = lines_of(child.stderr.take());
        let stdout_rx = lines_of(child.stdout.take());
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            stderr_rx,
            stdout_rx,
        })
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until a stderr line contains `needle` (returns the lines seen).
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Res<Vec<String>> {
        self.wait_line(false, needle, timeout)
    }

    /// Waits until a stdout line contains `needle` (returns the lines seen).
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> Res<Vec<String>> {
        self.wait_line(true, needle, timeout)
    }

    fn wait_line(&mut self, stdout: bool, needle: &str, timeout: Duration) -> Res<Vec<String>> {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            check_stop()?;
            let rx = if stdout {
                &self.stdout_rx
            } else {
                &self.stderr_rx
            };
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return Ok(seen);
                    }
                }
                Err(e) => {
                    let exited = match self.child.as_mut().map(Child::try_wait) {
                        Some(Ok(Some(st))) => Some(st.to_string()),
                        _ => None,
                    };
                    if exited.is_some() || e == mpsc::RecvTimeoutError::Disconnected {
                        // Give the other stream a moment to deliver its last words.
                        thread::sleep(Duration::from_millis(100));
                        let mut all = seen.clone();
                        all.extend(self.stderr_lines());
                        return Err(format!(
                            "{} exited ({}) before `{needle}`: {}",
                            self.name,
                            exited.unwrap_or_else(|| "output closed".into()),
                            tail(&all)
                        ));
                    }
                    if Instant::now() >= end {
                        seen.extend(self.stderr_lines());
                        return Err(format!(
                            "{}: no `{needle}` within {timeout:?}: {}",
                            self.name,
                            tail(&seen)
                        ));
                    }
                }
            }
        }
    }

    /// The stderr lines received so far (drains them).
    pub fn stderr_lines(&mut self) -> Vec<String> {
        self.stderr_rx.try_iter().collect()
    }

    /// Waits for the process to exit by itself (up to `timeout`, then it is
    /// killed) and returns its stdout.
    pub fn finish(mut self, timeout: Duration) -> Res<String> {
        let end = Instant::now() + timeout;
        let status = loop {
            let c = self.child.as_mut().ok_or("no child")?;
            if let Some(st) = c.try_wait().map_err(|e| e.to_string())? {
                break st;
            }
            if Instant::now() >= end || stopping() {
                self.stop(Duration::from_millis(500));
                return Err(format!("{} did not finish within {timeout:?}", self.name));
            }
            thread::sleep(Duration::from_millis(10));
        };
        self.child = None;
        let mut out = Vec::new();
        while let Ok(l) = self.stdout_rx.recv_timeout(Duration::from_secs(2)) {
            out.push(l);
        }
        if status.success() {
            Ok(out.join("\n"))
        } else {
            thread::sleep(Duration::from_millis(50));
            let t = tail(&self.stderr_lines());
            Err(format!("{} failed ({status}): {t}", self.name))
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the lines printed
    /// meanwhile on stdout and stderr (sluice prints its counters on
    /// SIGTERM).
    pub fn stop(&mut self, grace: Duration) -> Vec<String> {
        let Some(mut c) = self.child.take() else {
            return Vec::new();
        };
        if let Ok(None) = c.try_wait() {
            signal(c.id(), libc::SIGTERM);
            let end = Instant::now() + grace;
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= end => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        // The readers end when the pipes close; give them a moment.
        let mut lines: Vec<String> = Vec::new();
        for rx in [&self.stdout_rx, &self.stderr_rx] {
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                lines.push(l);
            }
        }
        lines
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped
    // yet (try_wait returned None), so the PID cannot have been reused.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn tail(lines: &[String]) -> String {
    let n = lines.len();
    lines[n.saturating_sub(4)..].join(" | ")
}

/// The CPU affinity of every thread of `pid`: `name=cpus` pairs.
pub fn affinity(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "?".into();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        out.push(format!("{}={cpus}", comm.trim()));
    }
    out.sort();
    out.join(" ")
}

/// utime + stime (USER_HZ ticks) of thread `tid` of `pid`.
pub fn task_ticks(pid: u32, tid: u32) -> u64 {
    let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
        return 0;
    };
    // Fields after the `(comm)`, which may contain spaces.
    let Some(rest) = st.rfind(')').map(|i| &st[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// utime + stime (USER_HZ ticks) of every thread of `pid`.
pub fn proc_ticks(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .map(|tid| task_ticks(pid, tid))
        .sum()
}

/// Softirq ticks (USER_HZ) of `cpu` so far, from /proc/stat.
pub fn softirq_ticks(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu}");
    stat.lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `comm` of a task.
pub fn thread_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| pid.to_string())
}

/// Sets the calling thread's CPU affinity to one CPU.
pub fn pin_self(cpu: usize) -> Res<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit inside `set` (bounds checked by libc's
    // macro equivalent against the set size).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "pinning to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Spins at `SCHED_IDLE` for `seconds` (or until SIGTERM): it takes only
/// time nothing else wants, and keeps the CPU out of tickless idle, so that
/// the tick-sampled softirq time in /proc/stat sees short bursts of work too
/// (this kernel has no IRQ time accounting).
pub fn soak(seconds: f64) -> Res<()> {
    // SAFETY: sched_param is plain data; SCHED_IDLE requires priority 0.
    let p: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: sched_setscheduler(2) on ourselves with a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) } != 0 {
        return Err(format!("SCHED_IDLE: {}", std::io::Error::last_os_error()));
    }
    let stop = stop_flag();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_add(1);
        if n.is_multiple_of(1 << 20) && Instant::now() >= end {
            break;
        }
        std::hint::spin_loop();
    }
    Ok(())
}

/// The path of this executable (re-run for the helper subcommands).
pub fn self_exe() -> Res<String> {
    std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| format!("locating our own executable: {e}"))
}
