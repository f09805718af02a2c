//! The applied object set on disk (`--state-dir`, default `/var/lib/sluice`),
//! so that a restart — also after `kill -9` — serves what was served before,
//! from its first packet.
//!
//! **Format.** A snapshot and a log ([`log`]). The snapshot is one JSON
//! file, `state.json`: `{"format": "sluice-state", "version": 1,
//! "revision": N, "objects": [{"owner": ..., "object": ...}]}`, every
//! object as the API returns it (uid, resourceVersion, creationTimestamp
//! kept) with its owner (field manager), which is what the file source
//! needs to delete only what it wrote. The log, `state.log`, holds one line
//! per write since the snapshot: the objects it put and the keys it
//! deleted. The state is the snapshot with the log replayed over it. A
//! snapshot or log line that does not parse, is not this format or has
//! another version is refused whole ([`PersistError`]); the daemon moves
//! both files aside ([`set_aside`]: `state.json.corrupt-<unix time>`, never
//! over an existing file) and starts from the config file alone, saying so.
//!
//! **Atomic.** A snapshot goes to `state.json.tmp`, is fsynced, renamed
//! over `state.json` and the directory fsynced ([`write_atomic`]); a log
//! line is appended and fsynced. A crash leaves the old snapshot or the new
//! one, and at most a last log line cut short, which the replay drops.
//!
//! **Cost in proportion to the change.** A write costs its own objects: one
//! log line. The log is folded into a new snapshot (and emptied) once it is
//! larger than the snapshot (and at least [`writer::MIN_LOG_BYTES`]), so a
//! snapshot's cost is spread over as many bytes of changes; the first write
//! of a run is a snapshot too ([`Disk`]).
//!
//! **Batched.** The reconciler hands every committed state to a
//! [`Persister`], which keeps only the newest one pending (with the keys
//! every state it replaced changed) and writes it from its own thread;
//! while a write runs, further commits replace the pending state, so a
//! burst of N writes costs one or two writes, not N ([`Coalescer`]).
//! Nothing of this runs on the packet path, and no API answer waits for it.
//!
//! **The durability point.** An API write is answered once its table is
//! visible to the workers (the reconciler waits for that), *not* once it is
//! on disk: the answer's latency stays that of the publish, and an fsync
//! (milliseconds on a loaded disk) is not paid per request. What a crash
//! right after an answer can lose is the last few milliseconds of writes;
//! the file on disk is always a whole, earlier state. A graceful stop
//! (SIGTERM) flushes the pending state before exiting ([`Persister::flush`]).
//! This is the trade kube-proxy and IPVS make (neither persists at all), with
//! etcd's stronger point available later by waiting on [`Persister::flush`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use crate::store::{Event, Key, Objects, Store, Stored};

pub mod log;
mod writer;

pub use log::LOG_FILE;
pub use writer::{Changed, Coalescer, Disk, Persister, Written};

/// The default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sluice";
/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// The `format` field.
const FORMAT: &str = "sluice-state";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Why a state file was refused, or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The file is not a whole, valid state (truncated, garbage, a bad
    /// object).
    #[error("{}: not a valid state file: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is of another format version.
    #[error("{}: state format version {found}, this sluice reads version {VERSION}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in it.
        found: u64,
    },
}

/// One object as stored on disk.
#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    owner: std::borrow::Cow<'a, str>,
    object: std::borrow::Cow<'a, Value>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    format: &'static str,
    version: u32,
    revision: u64,
    objects: Vec<Entry<'a>>,
}

/// A state to write: the store's objects (a persistent map, so taking it
/// is an O(1) clone whatever the store's size) and its revision.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    /// The store's resource version.
    pub revision: u64,
    /// The objects (with their owners).
    pub objects: Objects,
    /// What changed since the state submitted before.
    pub changed: Changed,
}

impl Pending {
    /// The state of `store`, written whole.
    pub fn of(store: &Store) -> Pending {
        Pending {
            revision: store.revision(),
            objects: store.objects().clone(),
            changed: Changed::All,
        }
    }

    /// The state of `store` after a commit of `events`: only their keys
    /// changed since the state submitted before.
    pub fn after(store: &Store, events: &[Event]) -> Pending {
        Pending {
            changed: Changed::Keys(events.iter().map(|e| e.key.clone()).collect()),
            ..Pending::of(store)
        }
    }
}

/// The file's bytes for `p`.
pub fn encode(p: &Pending) -> Vec<u8> {
    Encoder::default().encode(p)
}

/// Encodes states, keeping each object's serialised entry until its
/// resource version changes: a write after one change serialises one
/// object and copies the others' bytes (serialising every object on
/// every write took half a core at 10k services under a stream of
/// changes). The bytes are exactly [`FileOut`]'s serde encoding.
#[derive(Debug, Default)]
pub struct Encoder {
    /// Key → (resource version, the write that last saw it, its bytes).
    cache: hashbrown::HashMap<Key, (u64, u64, Vec<u8>)>,
    /// Writes encoded.
    writes: u64,
}

impl Encoder {
    /// The file's bytes for `p`; forgets objects `p` no longer has.
    pub fn encode(&mut self, p: &Pending) -> Vec<u8> {
        let head = FileOut {
            format: FORMAT,
            version: VERSION,
            revision: p.revision,
            objects: Vec::new(),
        };
        // Serialising a Value tree with string keys cannot fail.
        let mut out = serde_json::to_vec(&head).unwrap_or_default();
        // `..."objects":[]}`: the entries go between the brackets.
        out.truncate(out.len().saturating_sub(2));
        self.writes += 1;
        let write = self.writes;
        for (i, (k, s)) in p.objects.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let fresh = || {
                serde_json::to_vec(&Entry {
                    owner: std::borrow::Cow::Borrowed(&s.owner),
                    object: std::borrow::Cow::Borrowed(&s.object),
                })
                .unwrap_or_default()
            };
            // Updated in place: only a new key is cloned.
            let e = match self.cache.get_mut(k) {
                Some(e) => e,
                None => self
                    .cache
                    .entry(k.clone())
                    .or_insert((s.resource_version, 0, fresh())),
            };
            if e.0 != s.resource_version {
                *e = (s.resource_version, write, fresh());
            }
            e.1 = write;
            out.extend_from_slice(&e.2);
        }
        if self.cache.len() != p.objects.len() {
            self.cache.retain(|_, e| e.1 == write);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// The store `bytes` (read from `path`) describe.
///
/// # Errors
/// [`PersistError::Corrupt`] or [`PersistError::Version`].
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Store, PersistError> {
    let corrupt = |reason: String| PersistError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let v: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if v.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(corrupt(format!("no \"format\": \"{FORMAT}\" field")));
    }
    match v.get("version").and_then(Value::as_u64) {
        Some(n) if n == u64::from(VERSION) => {}
        Some(found) => {
            return Err(PersistError::Version {
                path: path.to_owned(),
                found,
            })
        }
        None => return Err(corrupt("no \"version\" number".into())),
    }
    let revision = v
        .get("revision")
        .and_then(Value::as_u64)
        .ok_or_else(|| corrupt("no \"revision\" number".into()))?;
    let entries = v
        .get("objects")
        .and_then(Value::as_array)
        .ok_or_else(|| corrupt("no \"objects\" list".into()))?;
    let mut objects = Objects::new();
    for (i, e) in entries.iter().enumerate() {
        let (key, stored) = entry(e).map_err(|r| corrupt(format!("objects[{i}]: {r}")))?;
        if objects.insert(key.clone(), stored).is_some() {
            return Err(corrupt(format!("objects[{i}]: {key} twice")));
        }
    }
    Ok(Store::restored(objects, revision))
}

fn entry(e: &Value) -> Result<(Key, Stored), String> {
    let owner = e
        .get("owner")
        .and_then(Value::as_str)
        .ok_or("no \"owner\" string")?;
    let object = e.get("object").ok_or("no \"object\"")?;
    let key = Key::of(object).map_err(|err| err.to_string())?;
    let resource_version = object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("no metadata.resourceVersion")?;
    Ok((
        key,
        Stored {
            object: Arc::new(object.clone()),
            owner: Arc::from(owner),
            resource_version,
        },
    ))
}

/// The state file of `dir`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// The log of `dir`.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

/// Reads `path`; `Ok(None)` when it does not exist.
fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, PersistError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PersistError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads the state of `dir`: the snapshot with the log replayed over it;
/// `Ok(None)` when there is no snapshot yet (a log without one is left
/// for [`restore`] to move aside).
///
/// # Errors
/// [`PersistError`]: unreadable, corrupt, or another version.
pub fn load(dir: &Path) -> Result<Option<Store>, PersistError> {
    let path = state_path(dir);
    let Some(bytes) = read_opt(&path)? else {
        return Ok(None);
    };
    let snapshot = decode(&path, &bytes)?;
    let log = log_path(dir);
    let Some(lines) = read_opt(&log)? else {
        return Ok(Some(snapshot));
    };
    let mut objects = snapshot.objects().clone();
    let mut revision = snapshot.revision();
    let r = log::replay(&log, &lines, &mut objects, &mut revision)?;
    if r.torn {
        warn!(
            "{}: the last write was cut short (a crash) and is dropped",
            log.display()
        );
    }
    Ok(Some(Store::restored(objects, revision)))
}

/// Moves a refused state file aside as `<name>.<why>-<unix time>` (with a
/// `.N` suffix if that exists: nothing is ever overwritten) and returns the
/// new path.
///
/// # Errors
/// [`PersistError::Io`] when it cannot be renamed.
pub fn set_aside(path: &Path, why: &str) -> Result<PathBuf, PersistError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| STATE_FILE.into());
    let base = path.with_file_name(format!("{name}.{why}-{secs}"));
    let mut to = base.clone();
    let mut n = 1;
    while to.exists() {
        to = PathBuf::from(format!("{}.{n}", base.display()));
        n += 1;
    }
    fs::rename(path, &to).map_err(|source| PersistError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(to)
}

/// Moves `dir`'s snapshot aside ([`set_aside`]) and its log too when it
/// has one (`state.log.<why>-<unix time>`): a refused state is kept whole.
/// Returns the snapshot's new path.
///
/// # Errors
/// [`PersistError::Io`] when the snapshot cannot be renamed.
pub fn set_aside_state(dir: &Path, why: &str) -> Result<PathBuf, PersistError> {
    let kept = set_aside(&state_path(dir), why)?;
    let log = log_path(dir);
    if log.exists() {
        match set_aside(&log, why) {
            Ok(p) => info!("{} kept as {}", log.display(), p.display()),
            Err(e) => warn!("moving the log aside: {e}"),
        }
    }
    Ok(kept)
}

/// Writes `bytes` as `dir/state.json` atomically: temp file, fsync,
/// rename, fsync of the directory. Creates `dir` (mode 0700) if missing.
///
/// # Errors
/// [`PersistError::Io`]; the old file is then intact.
pub fn write_atomic(dir: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PersistError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    let path = state_path(dir);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// What start-up found in the state directory.
#[derive(Debug)]
pub enum Restore {
    /// No state file: a first start.
    Fresh,
    /// The state of the previous run.
    Restored(Store),
    /// The file was refused and moved aside.
    Refused {
        /// Why.
        error: PersistError,
        /// Where it is now (`None`: it could not be moved either).
        kept: Option<PathBuf>,
    },
}

/// Reads `dir`'s state for the start, moving a refused file aside and
/// logging what happened.
pub fn restore(dir: &Path) -> Restore {
    match load(dir) {
        Ok(None) => {
            info!("state dir {}: no saved state", dir.display());
            let log = log_path(dir);
            if log.exists() {
                // Never written without a snapshot before it: the snapshot
                // was removed by hand. Kept, not replayed over nothing.
                match set_aside(&log, "orphan") {
                    Ok(p) => warn!(
                        "{}: a log without its snapshot, kept as {}",
                        log.display(),
                        p.display()
                    ),
                    Err(e) => warn!("moving a log without its snapshot aside: {e}"),
                }
            }
            Restore::Fresh
        }
        Ok(Some(store)) => {
            info!(
                "state dir {}: restored {} objects (revision {})",
                dir.display(),
                store.objects().len(),
                store.revision()
            );
            Restore::Restored(store)
        }
        Err(e @ PersistError::Io { .. }) => {
            tracing::error!("{e}; starting from the config file alone");
            Restore::Refused {
                error: e,
                kept: None,
            }
        }
        Err(error) => {
            let kept = match set_aside_state(dir, "corrupt") {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!("moving the refused state file aside: {e}");
                    None
                }
            };
            tracing::error!(
                "state file refused: {error}; kept as {}; starting from the config file alone",
                kept.as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(not moved)".into())
            );
            Restore::Refused { error, kept }
        }
    }
}

#[cfg(test)]
mod tests;
