//! The writer thread: commits hand it states ([`Persister::submit`]), it
//! keeps the newest pending ([`Coalescer`]) and writes it to disk
//! ([`Disk`]): a line of the log per write, the snapshot when the log has
//! grown as large as it.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use tracing::warn;

use super::log::{record, LOG_FILE};
use super::{write_atomic, Encoder, Pending, PersistError};
use crate::store::Key;

/// The log is folded into a new snapshot once it is larger than the
/// snapshot, and never while it is under this size.
pub const MIN_LOG_BYTES: u64 = 1 << 20;

/// What a state to write changed since the one before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Changed {
    /// Unknown or everything: the whole state is written as a snapshot.
    #[default]
    All,
    /// These keys (written or deleted).
    Keys(BTreeSet<Key>),
}

impl Changed {
    /// What two states in a row changed together.
    fn merge(self, later: Changed) -> Changed {
        match (self, later) {
            (Changed::Keys(mut a), Changed::Keys(b)) => {
                a.extend(b);
                Changed::Keys(a)
            }
            _ => Changed::All,
        }
    }
}

/// The batching core, without threads: commits [`Coalescer::submit`] the
/// newest state, the writer [`Coalescer::take`]s what is pending (the
/// newest only) when it is free.
#[derive(Debug, Default)]
pub struct Coalescer {
    pending: Option<Pending>,
    /// A write is running (taken, not yet [`Coalescer::done`]).
    busy: bool,
    /// States submitted, and files written, so far.
    submitted: u64,
    written: u64,
}

impl Coalescer {
    /// A new state replaces any pending one; what both changed is kept
    /// (the one replaced is never written).
    pub fn submit(&mut self, mut p: Pending) {
        if let Some(old) = self.pending.take() {
            p.changed = old.changed.merge(std::mem::take(&mut p.changed));
        }
        self.pending = Some(p);
        self.submitted += 1;
    }

    /// The state to write now, if any; marks the writer busy.
    pub fn take(&mut self) -> Option<Pending> {
        let p = self.pending.take()?;
        self.busy = true;
        Some(p)
    }

    /// The write of the last taken state finished.
    pub fn done(&mut self) {
        self.busy = false;
        self.written += 1;
    }

    /// Nothing pending and no write running.
    pub fn idle(&self) -> bool {
        self.pending.is_none() && !self.busy
    }

    /// (states submitted, files written).
    pub fn counts(&self) -> (u64, u64) {
        (self.submitted, self.written)
    }
}

/// How a state went to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// As one line of the log.
    Appended,
    /// As a new snapshot; the log was emptied.
    Snapshot,
}

/// The state directory as the writer keeps it: the snapshot and the log
/// it appends to.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    enc: Encoder,
    /// The log, open once a snapshot was written by this writer (the
    /// first write is always a snapshot, which empties whatever log an
    /// earlier run left); None again after a failed append, which may
    /// have left part of a line.
    log: Option<File>,
    log_len: u64,
    snapshot_len: u64,
    /// [`MIN_LOG_BYTES`] (smaller in tests).
    min_log: u64,
}

impl Disk {
    /// A writer of `dir` (created at the first write if missing).
    pub fn new(dir: PathBuf) -> Disk {
        Disk::with_min_log(dir, MIN_LOG_BYTES)
    }

    /// [`Disk::new`], folding the log once it outgrows the snapshot and
    /// `min_log` bytes.
    pub fn with_min_log(dir: PathBuf, min_log: u64) -> Disk {
        Disk {
            dir,
            enc: Encoder::default(),
            log: None,
            log_len: 0,
            snapshot_len: 0,
            min_log,
        }
    }

    /// Writes `p`: a line of the log when only some keys changed and the
    /// log is smaller than the snapshot, else a new snapshot.
    ///
    /// # Errors
    /// [`PersistError::Io`]; what is on disk is then a whole, earlier
    /// state, and the next write is a snapshot.
    pub fn write(&mut self, p: &Pending) -> Result<Written, PersistError> {
        let room = self.log_len < self.snapshot_len.max(self.min_log);
        match (&p.changed, self.log.is_some() && room) {
            (Changed::Keys(keys), true) => self.append(p, keys).map(|()| Written::Appended),
            _ => self.snapshot(p).map(|()| Written::Snapshot),
        }
    }

    fn append(&mut self, p: &Pending, keys: &BTreeSet<Key>) -> Result<(), PersistError> {
        let line = record(p, keys);
        let path = self.dir.join(LOG_FILE);
        let Some(f) = self.log.as_mut() else {
            return Ok(());
        };
        let r = f.write_all(&line).and_then(|()| f.sync_data());
        if let Err(source) = r {
            self.log = None;
            return Err(PersistError::Io { path, source });
        }
        self.log_len += line.len() as u64;
        Ok(())
    }

    /// A new snapshot, then the log emptied: a crash in between leaves
    /// lines the snapshot already holds, which a replay skips.
    fn snapshot(&mut self, p: &Pending) -> Result<(), PersistError> {
        self.log = None;
        let bytes = self.enc.encode(p);
        write_atomic(&self.dir, &bytes)?;
        self.snapshot_len = bytes.len() as u64;
        self.log = Some(empty_log(&self.dir)?);
        self.log_len = 0;
        Ok(())
    }
}

/// Creates or truncates `dir`'s log, durably.
fn empty_log(dir: &Path) -> Result<File, PersistError> {
    let path = dir.join(LOG_FILE);
    let io = |source| PersistError::Io {
        path: path.clone(),
        source,
    };
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| PersistError::Io {
            path: dir.to_owned(),
            source,
        })?;
    Ok(f)
}

struct Inner {
    state: Mutex<Coalescer>,
    wake: Condvar,
}

/// The writer thread and its queue of one.
#[derive(Clone)]
pub struct Persister {
    inner: Arc<Inner>,
}

impl Persister {
    /// Starts the writer thread writing into `dir`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(dir: PathBuf) -> io::Result<Persister> {
        let mut disk = Disk::new(dir);
        Persister::with_sink(move |p| disk.write(p).map(|_| ()))
    }

    /// Starts a writer thread that hands each state to `sink` (tests count
    /// the writes).
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn with_sink(
        mut sink: impl FnMut(&Pending) -> Result<(), PersistError> + Send + 'static,
    ) -> io::Result<Persister> {
        let inner = Arc::new(Inner {
            state: Mutex::new(Coalescer::default()),
            wake: Condvar::new(),
        });
        let me = inner.clone();
        std::thread::Builder::new()
            .name("sluice-persist".into())
            .spawn(move || loop {
                let p = {
                    let mut c = me.state.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if let Some(p) = c.take() {
                            break p;
                        }
                        c = me.wake.wait(c).unwrap_or_else(|e| e.into_inner());
                    }
                };
                if let Err(e) = sink(&p) {
                    warn!("state not saved (revision {}): {e}", p.revision);
                }
                me.state.lock().unwrap_or_else(|e| e.into_inner()).done();
                me.wake.notify_all();
            })?;
        Ok(Persister { inner })
    }

    /// Queues `p` to be written (replacing a state not written yet).
    pub fn submit(&self, p: Pending) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .submit(p);
        self.inner.wake.notify_all();
    }

    /// Waits until every submitted state is written (or failed).
    pub fn flush(&self) {
        let mut c = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        while !c.idle() {
            c = self.inner.wake.wait(c).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// (states submitted, files written) so far.
    pub fn counts(&self) -> (u64, u64) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts()
    }
}
