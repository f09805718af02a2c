//! Commands in network namespaces: bounded in time, ended by PID.
//!
//! Every command goes through `ip netns exec`, which `setns()`es and then
//! `exec`s the command in the same process, so the PID we hold is the
//! command's own and a signal to it reaches the program, not a wrapper.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a bounded command did.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit status; `None` if the command was killed at its deadline.
    pub status: Option<ExitStatus>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl CmdOutput {
    /// True if the command exited 0 before its deadline.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// True if the command was killed at its deadline.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// Returns stdout, panicking with the full picture unless it succeeded.
    pub fn expect_ok(&self) -> &str {
        assert!(self.success(), "command failed: {self}");
        &self.stdout
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "`{}` exited with {s}", self.cmdline)?,
            None => write!(f, "`{}` timed out and was killed", self.cmdline)?,
        }
        write!(
            f,
            "\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        )
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

fn cmdline(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion, killing it (by its PID) after `timeout`.
///
/// # Panics
/// If the command cannot be started at all (missing program).
pub fn exec_timeout(mut cmd: Command, timeout: Duration) -> CmdOutput {
    let line = cmdline(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_deadline(&mut child, Instant::now() + timeout);
    if status.is_none() {
        // Still running at the deadline: end it, by PID, and reap it.
        let _ = child.kill();
        let _ = child.wait();
    }
    CmdOutput {
        cmdline: line,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Polls `child` until it exits or `deadline` passes.
pub(crate) fn wait_deadline(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
}

/// Output of a background process, appended as it arrives so that tests
/// can wait for a line (`sluice ready`) while the process runs.
#[derive(Default)]
pub(crate) struct Captured {
    /// Bytes so far, and whether the pipe has closed.
    state: Mutex<(Vec<u8>, bool)>,
    cv: Condvar,
}

impl Captured {
    fn pump<R: Read + Send + 'static>(self: &Arc<Self>, r: Option<R>) -> JoinHandle<()> {
        let me = Arc::clone(self);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            if let Some(mut r) = r {
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut st = me.state.lock().unwrap_or_else(|e| e.into_inner());
                            st.0.extend_from_slice(&buf[..n]);
                            me.cv.notify_all();
                        }
                    }
                }
            }
            me.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
            me.cv.notify_all();
        })
    }

    /// Everything captured so far.
    pub(crate) fn text(&self) -> String {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&st.0).into_owned()
    }

    /// Length in bytes of what was captured so far (an offset for `wait_for`).
    pub(crate) fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0.len()
    }

    /// Waits until `pred` accepts the text captured after byte `from`, the
    /// pipe closes, or `timeout` passes.
    pub(crate) fn wait_for<T>(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let tail = String::from_utf8_lossy(st.0.get(from..).unwrap_or_default());
            if let Some(v) = pred(&tail) {
                return Some(v);
            }
            let now = Instant::now();
            if st.1 || now >= deadline {
                return None;
            }
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Which output stream of a [`BgProcess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A background process in a namespace, killed (SIGKILL, by PID) and reaped on
/// drop unless it was waited for. Its output is captured while it runs.
pub struct BgProcess {
    child: Option<Child>,
    out: Arc<Captured>,
    err: Arc<Captured>,
    pumps: Vec<JoinHandle<()>>,
    cmdline: String,
}

impl BgProcess {
    /// Starts `cmd` with stdout and stderr captured.
    ///
    /// # Panics
    /// If the program cannot be started.
    pub fn spawn(mut cmd: Command) -> Self {
        let line = cmdline(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
        let out = Arc::new(Captured::default());
        let err = Arc::new(Captured::default());
        let pumps = vec![out.pump(child.stdout.take()), err.pump(child.stderr.take())];
        Self {
            child: Some(child),
            out,
            err,
            pumps,
            cmdline: line,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The command line, for messages.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn pipe(&self, p: Pipe) -> &Captured {
        match p {
            Pipe::Stdout => &self.out,
            Pipe::Stderr => &self.err,
        }
    }

    /// What the process has written to `p` so far.
    pub fn output(&self, p: Pipe) -> String {
        self.pipe(p).text()
    }

    /// Byte offset of the end of what `p` holds now, to wait for lines that
    /// come after it.
    pub fn offset(&self, p: Pipe) -> usize {
        self.pipe(p).len()
    }

    /// Waits until `needle` appears in `p` after byte `from`; false if the
    /// pipe closed (the process exited) or `timeout` passed first.
    pub fn wait_for(&self, p: Pipe, from: usize, needle: &str, timeout: Duration) -> bool {
        self.wait_for_with(p, from, timeout, |t| t.contains(needle).then_some(()))
            .is_some()
    }

    /// Like [`BgProcess::wait_for`] with a custom matcher over the text after
    /// `from`.
    pub fn wait_for_with<T>(
        &self,
        p: Pipe,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        self.pipe(p).wait_for(from, timeout, pred)
    }

    /// Sends `sig` to the process (by PID) if it is still running.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.is_running() {
            let pid = self.pid() as libc::pid_t;
            // SAFETY: kill(2) on the PID of our own unreaped child, which
            // cannot have been recycled while we hold it unreaped.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; kills it at
    /// the deadline. Returns its output either way.
    pub fn wait(mut self, timeout: Duration) -> CmdOutput {
        let mut child = self.child.take().expect("child present until waited");
        let status = wait_deadline(&mut child, Instant::now() + timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for h in self.pumps.drain(..) {
            let _ = h.join();
        }
        CmdOutput {
            cmdline: std::mem::take(&mut self.cmdline),
            status,
            stdout: self.out.text(),
            stderr: self.err.text(),
        }
    }
}

impl Drop for BgProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // The pump threads end by themselves when the pipes close.
    }
}
