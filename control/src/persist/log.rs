//! The append-only log beside the snapshot (`state.log`), so that a write
//! costs its own objects on disk, not the whole state: at 100k Services
//! the snapshot is about 50 MB, and rewriting it per change took most of a
//! core under a stream of changes.
//!
//! One JSON line per write the persister took:
//! `{"revision":N,"put":[{"owner":...,"object":...}],"delete":[{"kind":...,"metadata":{"namespace":...,"name":...}}]}`
//! and a newline. The line is written whole and fsynced before the next.
//!
//! **Replay.** At start the snapshot is read, then the log's lines in
//! order; a line whose revision the snapshot already holds is skipped
//! (a crash between writing a new snapshot and emptying the log leaves
//! such lines). A last line without its newline is a write a crash cut
//! short: it is dropped, and the state is the one before it (what the
//! answer-before-fsync durability point allows, module doc of `persist`).
//! Any other line that does not parse makes the whole state refused.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::{entry, Entry, Pending, PersistError};
use crate::store::{Key, Objects};

/// The log's name inside the state directory.
pub const LOG_FILE: &str = "state.log";

#[derive(Serialize)]
struct RecordOut<'a> {
    revision: u64,
    put: Vec<Entry<'a>>,
    delete: Vec<KeyOut<'a>>,
}

/// A deleted key, written as an object's identity so that [`Key::of`]
/// reads it back.
#[derive(Serialize)]
struct KeyOut<'a> {
    kind: &'static str,
    metadata: KeyMeta<'a>,
}

#[derive(Serialize)]
struct KeyMeta<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// The log line (newline included) that takes a state holding the
/// objects of `p` but `keys` to `p`: the keys `p` holds are put, the
/// others deleted.
pub fn record(p: &Pending, keys: &BTreeSet<Key>) -> Vec<u8> {
    let mut out = RecordOut {
        revision: p.revision,
        put: Vec::new(),
        delete: Vec::new(),
    };
    for k in keys {
        match p.objects.get(k) {
            Some(s) => out.put.push(Entry {
                owner: std::borrow::Cow::Borrowed(&s.owner),
                object: std::borrow::Cow::Borrowed(&s.object),
            }),
            None => out.delete.push(KeyOut {
                kind: k.kind.as_str(),
                metadata: KeyMeta {
                    namespace: &k.namespace,
                    name: &k.name,
                },
            }),
        }
    }
    // Serialising a Value tree with string keys cannot fail.
    let mut line = serde_json::to_vec(&out).unwrap_or_default();
    line.push(b'\n');
    line
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Lines applied.
    pub applied: usize,
    /// Lines the snapshot already held.
    pub skipped: usize,
    /// A last line cut short by a crash was dropped.
    pub torn: bool,
}

/// Applies the log `bytes` (read from `path`) to `objects`, the state of
/// revision `revision`, which it advances.
///
/// # Errors
/// [`PersistError::Corrupt`] naming the line; `objects` is then partly
/// replayed and must be dropped.
pub fn replay(
    path: &Path,
    bytes: &[u8],
    objects: &mut Objects,
    revision: &mut u64,
) -> Result<Replayed, PersistError> {
    let mut r = Replayed::default();
    for (i, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        if !line.ends_with(b"\n") {
            // Only the last piece can lack its newline.
            r.torn = true;
            break;
        }
        let corrupt = |reason: String| PersistError::Corrupt {
            path: path.to_owned(),
            reason: format!("line {n}: {reason}"),
        };
        let v: Value = serde_json::from_slice(line).map_err(|e| corrupt(e.to_string()))?;
        let rev = v
            .get("revision")
            .and_then(Value::as_u64)
            .ok_or_else(|| corrupt("no \"revision\" number".into()))?;
        if rev <= *revision {
            r.skipped += 1;
            continue;
        }
        apply(&v, objects).map_err(corrupt)?;
        *revision = rev;
        r.applied += 1;
    }
    Ok(r)
}

/// Applies one parsed line's puts and deletes.
fn apply(v: &Value, objects: &mut Objects) -> Result<(), String> {
    let list = |field: &str| {
        v.get(field)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("no \"{field}\" list"))
    };
    for (i, e) in list("put")?.iter().enumerate() {
        let (key, stored) = entry(e).map_err(|r| format!("put[{i}]: {r}"))?;
        objects.insert(key, stored);
    }
    for (i, k) in list("delete")?.iter().enumerate() {
        let key = Key::of(k).map_err(|r| format!("delete[{i}]: {r}"))?;
        objects.remove(&key);
    }
    Ok(())
}
