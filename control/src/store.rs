//! The desired-state store: every object Sluice serves, keyed by (kind,
//! namespace, name), as its Kubernetes JSON.
//!
//! Its sources (the config file, the API) write it in [`Batch`]es. A batch
//! is validated *whole*: [`Store::commit`] builds the object set as it would
//! be after the batch and hands it to a validator (the reconciler compiles
//! it); only if that succeeds is the batch committed, so an invalid write
//! changes nothing. The store sets the metadata the API server owns, as
//! kube-apiserver does: `metadata.uid` and `creationTimestamp` on create,
//! `resourceVersion` from one global counter (etcd's revision) on every
//! write. Each commit records its events (ADDED / MODIFIED / DELETED, with
//! the new resource version) in a bounded history, from which a watch
//! resumes; a watch from a version older than the history gets
//! [`StoreError::Gone`] (HTTP 410, and the client relists, as with the real
//! API server's compacted revisions).
//!
//! The store is pure: no I/O, and the clock comes in as an argument.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};

/// The kinds of object the store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` Service.
    Service,
    /// `v1` Endpoints.
    Endpoints,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `v1` Pod.
    Pod,
    /// `sluice.dev/v1` VirtualService: an IPVS virtual service
    /// (`config/virtual_service.rs`).
    VirtualService,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 5] = [
        Kind::Service,
        Kind::Endpoints,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::VirtualService,
    ];

    /// The `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::VirtualService => "VirtualService",
        }
    }

    /// The `apiVersion` field.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::VirtualService => "sluice.dev/v1",
            _ => "v1",
        }
    }

    /// The API group ("" for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::VirtualService => "sluice.dev",
            _ => "",
        }
    }

    /// The REST resource name (`services`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Endpoints => "endpoints",
            Kind::EndpointSlice => "endpointslices",
            Kind::Pod => "pods",
            Kind::VirtualService => "virtualservices",
        }
    }

    /// The singular name (`service`), as kubectl's discovery lists it.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Endpoints => "endpoints",
            Kind::EndpointSlice => "endpointslice",
            Kind::Pod => "pod",
            Kind::VirtualService => "virtualservice",
        }
    }

    /// kubectl's short names.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Service => &["svc"],
            Kind::Endpoints => &["ep"],
            Kind::EndpointSlice => &[],
            Kind::Pod => &["po"],
            Kind::VirtualService => &["vs"],
        }
    }

    /// The kind named by a `kind` field.
    pub fn from_kind(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind a user names the way kubectl accepts: plural, singular,
    /// short name or kind, any case (`svc`, `services`, `Service`).
    pub fn from_user(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|k| {
            k.plural() == s
                || k.singular() == s
                || k.as_str().to_ascii_lowercase() == s
                || k.short_names().contains(&s.as_str())
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Its kind.
    pub kind: Kind,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl Key {
    /// A key.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Key {
        Key {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The key of a Kubernetes object: its `kind`, `metadata.namespace`
    /// (default `default`) and `metadata.name`.
    ///
    /// # Errors
    /// [`StoreError::BadObject`] naming the missing or unsupported field.
    pub fn of(obj: &Value) -> Result<Key, StoreError> {
        let bad = |field: &str, reason: String| StoreError::BadObject {
            field: field.to_owned(),
            reason,
        };
        let Some(map) = obj.as_object() else {
            return Err(bad("", "an object must be a JSON/YAML mapping".into()));
        };
        let kind = match map.get("kind") {
            Some(Value::String(k)) => Kind::from_kind(k).ok_or_else(|| {
                bad(
                    "kind",
                    format!("unsupported kind {k:?} (Service, Endpoints, EndpointSlice, Pod or VirtualService)"),
                )
            })?,
            _ => return Err(bad("kind", "required".into())),
        };
        let meta = map.get("metadata").and_then(Value::as_object);
        let name = match meta.and_then(|m| m.get("name")) {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(bad("metadata.name", "required".into())),
        };
        let namespace = match meta.and_then(|m| m.get("namespace")) {
            Some(Value::String(ns)) if !ns.is_empty() => ns.clone(),
            None | Some(Value::Null) => "default".to_owned(),
            Some(Value::String(_)) => "default".to_owned(),
            Some(_) => return Err(bad("metadata.namespace", "must be a string".into())),
        };
        Ok(Key {
            kind,
            namespace,
            name,
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One stored object.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// The object as the API returns it (metadata filled in).
    pub object: Arc<Value>,
    /// Who wrote it last (a field manager: `file`, `kubectl`, ...). The
    /// file source deletes only the objects it owns.
    pub owner: Arc<str>,
    /// The resource version of its last write.
    pub resource_version: u64,
}

/// A write of one object.
#[derive(Clone, Debug)]
pub enum Write {
    /// Create or replace an object.
    Upsert {
        /// The object (its metadata's server-owned fields are overwritten).
        object: Value,
        /// The writer (field manager).
        owner: Arc<str>,
        /// What must hold before the write.
        mode: UpsertMode,
    },
    /// Delete an object.
    Delete {
        /// Which.
        key: Key,
        /// Fail with [`StoreError::NotFound`] if it is absent (the API);
        /// otherwise an absent object is no error (the file source).
        must_exist: bool,
    },
}

/// The precondition of an upsert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsertMode {
    /// POST: the object must not exist.
    Create,
    /// PUT: the object must exist; with `Some(rv)` its resource version
    /// must be `rv` (optimistic concurrency), with `None` unconditional.
    Replace(Option<u64>),
    /// Apply (file source, server-side apply, patch): create or replace;
    /// with `Some(rv)` the object must still be at `rv` (patch read-modify-write).
    Apply(Option<u64>),
}

/// A set of writes committed all together or not at all.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// The writes, applied in order.
    pub writes: Vec<Write>,
}

impl Batch {
    /// Adds a write.
    pub fn push(&mut self, w: Write) -> &mut Self {
        self.writes.push(w);
        self
    }
}

/// The type of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was replaced.
    Modified,
    /// The object was deleted.
    Deleted,
}

impl EventType {
    /// As the watch protocol writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventType,
    /// The key.
    pub key: Key,
    /// The object after the change (before it, for a delete), with its
    /// `resourceVersion` set to this event's.
    pub object: Arc<Value>,
    /// The store's resource version after this change.
    pub resource_version: u64,
}

/// Why a write or a watch was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError<E = std::convert::Infallible> {
    /// The object is not a supported Kubernetes object.
    #[error("{field}: {reason}")]
    BadObject {
        /// The offending field.
        field: String,
        /// Why.
        reason: String,
    },
    /// A create of an object that exists.
    #[error("{0} already exists")]
    AlreadyExists(Key),
    /// A replace, patch or delete of an object that does not exist.
    #[error("{0} not found")]
    NotFound(Key),
    /// A write with a stale `resourceVersion`.
    #[error("{key}: the object has been modified (resourceVersion {given}, now {current}); read it again and retry")]
    Conflict {
        /// The object.
        key: Key,
        /// The version the writer had.
        given: u64,
        /// The version stored.
        current: u64,
    },
    /// The state after the batch does not validate.
    #[error("{0}")]
    Invalid(E),
    /// A watch from a resource version older than the kept history.
    #[error("too old resource version: {requested} (the oldest kept is {oldest})")]
    Gone {
        /// The version asked for.
        requested: u64,
        /// The oldest version a watch can start from.
        oldest: u64,
    },
}

/// The objects by key: a persistent ordered map, so that a commit's
/// working copy and a snapshot for the persister are O(1) clones sharing
/// the untouched nodes (a `BTreeMap` copy cost 30 ms per commit at 10k
/// services), and writes O(log n).
pub type Objects = imbl::OrdMap<Key, Stored>;

/// Default number of events kept for watches.
pub const DEFAULT_HISTORY: usize = 10_000;

/// The store.
#[derive(Debug)]
pub struct Store {
    objects: Objects,
    revision: u64,
    history: VecDeque<Event>,
    history_cap: usize,
    /// The revision of the newest event dropped from the history: a watch
    /// must start at or after it.
    compacted: u64,
}

impl Default for Store {
    fn default() -> Store {
        Store::new(DEFAULT_HISTORY)
    }
}

/// What a commit did.
#[derive(Debug)]
pub struct Commit<T> {
    /// The validator's output for the new state.
    pub output: T,
    /// The events, in order.
    pub events: Vec<Event>,
    /// The store's resource version after the commit.
    pub revision: u64,
}

impl Store {
    /// An empty store keeping `history` events for watches.
    pub fn new(history: usize) -> Store {
        Store {
            objects: Objects::new(),
            revision: 0,
            history: VecDeque::new(),
            history_cap: history.max(1),
            compacted: 0,
        }
    }

    /// A store holding exactly `objects` at `revision`, as a previous run
    /// left them ([`crate::persist`]): uids, creation times and resource
    /// versions are kept; the watch history starts empty at `revision`
    /// (a watch from before it gets [`StoreError::Gone`] and relists).
    pub fn restored(objects: Objects, revision: u64) -> Store {
        let revision = objects
            .values()
            .map(|s| s.resource_version)
            .max()
            .unwrap_or(0)
            .max(revision);
        Store {
            objects,
            revision,
            history: VecDeque::new(),
            history_cap: DEFAULT_HISTORY,
            compacted: revision,
        }
    }

    /// The current resource version (that of the last write).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The objects, in key order.
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// One object.
    pub fn get(&self, key: &Key) -> Option<&Stored> {
        self.objects.get(key)
    }

    /// The objects of a kind, in one namespace or all (`None`).
    pub fn list<'a>(
        &'a self,
        kind: Kind,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Stored> + 'a {
        self.objects
            .iter()
            .filter(move |(k, _)| k.kind == kind && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v)
    }

    /// The events after `from` (exclusive), oldest first.
    ///
    /// # Errors
    /// [`StoreError::Gone`] when events after `from` were already dropped
    /// from the history.
    pub fn events_since(&self, from: u64) -> Result<Vec<Event>, StoreError> {
        if from < self.compacted {
            return Err(StoreError::Gone {
                requested: from,
                oldest: self.compacted,
            });
        }
        Ok(self
            .history
            .iter()
            .filter(|e| e.resource_version > from)
            .cloned()
            .collect())
    }

    /// Validates the state after `batch` with `validate` and, if it
    /// passes, commits it. `now` stamps created objects.
    ///
    /// # Errors
    /// A precondition failure ([`StoreError::AlreadyExists`],
    /// [`StoreError::NotFound`], [`StoreError::Conflict`]), an object that
    /// is not one ([`StoreError::BadObject`]), or the validator's error
    /// ([`StoreError::Invalid`]). In every case the store is unchanged.
    pub fn commit<T, E>(
        &mut self,
        batch: Batch,
        now: SystemTime,
        validate: impl FnOnce(&Objects) -> Result<T, E>,
    ) -> Result<Commit<T>, StoreError<E>> {
        self.commit_with(batch, now, |objects, _| validate(objects))
    }

    /// As [`Store::commit`], but the validator also gets the batch's
    /// events (what it changed, in order), so that it can compile only the
    /// change (`reconcile/incremental.rs`).
    ///
    /// # Errors
    /// As [`Store::commit`]; the store is unchanged.
    pub fn commit_with<T, E>(
        &mut self,
        batch: Batch,
        now: SystemTime,
        validate: impl FnOnce(&Objects, &[Event]) -> Result<T, E>,
    ) -> Result<Commit<T>, StoreError<E>> {
        let mut next = self.objects.clone();
        let mut rev = self.revision;
        let mut events = Vec::new();
        for w in batch.writes {
            match w {
                Write::Upsert {
                    object,
                    owner,
                    mode,
                } => {
                    let key = Key::of(&object).map_err(widen)?;
                    let old = next.get(&key);
                    check_upsert(&key, old, mode).map_err(widen)?;
                    if let Some(old) = old {
                        // An apply that changes nothing is no write (a
                        // SIGHUP of an unchanged file bumps nothing).
                        if strip_server_fields(&old.object) == strip_server_fields(&object)
                            && *old.owner == *owner
                        {
                            continue;
                        }
                    }
                    rev += 1;
                    let object = stamp(object, &key, old, rev, now);
                    let kind = if old.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    let object = Arc::new(object);
                    events.push(Event {
                        kind,
                        key: key.clone(),
                        object: object.clone(),
                        resource_version: rev,
                    });
                    next.insert(
                        key,
                        Stored {
                            object,
                            owner,
                            resource_version: rev,
                        },
                    );
                }
                Write::Delete { key, must_exist } => match next.remove(&key) {
                    Some(old) => {
                        rev += 1;
                        let mut obj = (*old.object).clone();
                        set_meta(&mut obj, "resourceVersion", Value::String(rev.to_string()));
                        events.push(Event {
                            kind: EventType::Deleted,
                            key,
                            object: Arc::new(obj),
                            resource_version: rev,
                        });
                    }
                    None if must_exist => return Err(StoreError::NotFound(key)),
                    None => {}
                },
            }
        }
        let output = validate(&next, &events).map_err(StoreError::Invalid)?;
        self.objects = next;
        self.revision = rev;
        for e in &events {
            if self.history.len() == self.history_cap {
                if let Some(old) = self.history.pop_front() {
                    self.compacted = old.resource_version;
                }
            }
            self.history.push_back(e.clone());
        }
        Ok(Commit {
            output,
            events,
            revision: rev,
        })
    }
}

fn widen<E>(e: StoreError) -> StoreError<E> {
    match e {
        StoreError::BadObject { field, reason } => StoreError::BadObject { field, reason },
        StoreError::AlreadyExists(k) => StoreError::AlreadyExists(k),
        StoreError::NotFound(k) => StoreError::NotFound(k),
        StoreError::Conflict {
            key,
            given,
            current,
        } => StoreError::Conflict {
            key,
            given,
            current,
        },
        StoreError::Gone { requested, oldest } => StoreError::Gone { requested, oldest },
        StoreError::Invalid(never) => match never {},
    }
}

fn check_upsert(key: &Key, old: Option<&Stored>, mode: UpsertMode) -> Result<(), StoreError> {
    let expect = match (mode, old) {
        (UpsertMode::Create, Some(_)) => return Err(StoreError::AlreadyExists(key.clone())),
        (UpsertMode::Replace(_), None) => return Err(StoreError::NotFound(key.clone())),
        (UpsertMode::Replace(rv) | UpsertMode::Apply(rv), _) => rv,
        (UpsertMode::Create, None) => None,
    };
    match (expect, old) {
        (Some(given), Some(o)) if given != o.resource_version => Err(StoreError::Conflict {
            key: key.clone(),
            given,
            current: o.resource_version,
        }),
        (Some(_), None) => Err(StoreError::NotFound(key.clone())),
        _ => Ok(()),
    }
}

/// The object without the fields the store sets, for comparing intent.
fn strip_server_fields(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
        ] {
            meta.remove(f);
        }
        if meta.get("namespace").is_none() {
            meta.insert("namespace".into(), Value::String("default".into()));
        }
    }
    obj
}

/// Sets the server-owned metadata: namespace, uid and creation time (kept
/// from the old object on a replace), resource version.
fn stamp(mut obj: Value, key: &Key, old: Option<&Stored>, rev: u64, now: SystemTime) -> Value {
    let old_meta = old.and_then(|o| o.object.get("metadata"));
    let keep = |f: &str| old_meta.and_then(|m| m.get(f)).cloned();
    let uid = keep("uid").unwrap_or_else(|| Value::String(uuid::Uuid::new_v4().to_string()));
    let created = keep("creationTimestamp")
        .unwrap_or_else(|| Value::String(humantime::format_rfc3339_seconds(now).to_string()));
    set_meta(&mut obj, "namespace", Value::String(key.namespace.clone()));
    set_meta(&mut obj, "uid", uid);
    set_meta(&mut obj, "creationTimestamp", created);
    set_meta(&mut obj, "resourceVersion", Value::String(rev.to_string()));
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    obj
}

fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if let Some(map) = obj.as_object_mut() {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        if let Some(m) = meta.as_object_mut() {
            m.insert(field.to_owned(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, port: u16) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"clusterIP": "198.18.100.10", "ports": [{"port": port}]}})
    }

    fn upsert(obj: Value, mode: UpsertMode) -> Write {
        Write::Upsert {
            object: obj,
            owner: Arc::from("test"),
            mode,
        }
    }

    fn ok(_: &Objects) -> Result<(), String> {
        Ok(())
    }

    fn one(store: &mut Store, w: Write) -> Result<Commit<()>, StoreError<String>> {
        let mut b = Batch::default();
        b.push(w);
        store.commit(b, SystemTime::UNIX_EPOCH, ok)
    }

    fn web() -> Key {
        Key::new(Kind::Service, "default", "web")
    }

    #[test]
    fn create_sets_server_metadata_and_one_global_revision() {
        let mut s = Store::default();
        let c = one(&mut s, upsert(svc("web", 80), UpsertMode::Create)).unwrap();
        assert_eq!(c.revision, 1);
        let c2 = one(&mut s, upsert(svc("api", 80), UpsertMode::Create)).unwrap();
        assert_eq!(c2.revision, 2, "one counter across objects");
        let o = &s.get(&web()).unwrap().object;
        assert_eq!(o["metadata"]["resourceVersion"], "1");
        assert_eq!(o["metadata"]["creationTimestamp"], "1970-01-01T00:00:00Z");
        let uid = o["metadata"]["uid"].as_str().unwrap().to_owned();
        assert_eq!(uid.len(), 36);
        // A replace keeps uid and creation time, bumps the version.
        let mut b = Batch::default();
        b.push(upsert(svc("web", 81), UpsertMode::Replace(None)));
        s.commit(b, SystemTime::now(), ok).unwrap();
        let o = &s.get(&web()).unwrap().object;
        assert_eq!(o["metadata"]["uid"], uid.as_str());
        assert_eq!(o["metadata"]["creationTimestamp"], "1970-01-01T00:00:00Z");
        assert_eq!(o["metadata"]["resourceVersion"], "3");
        assert_eq!(o["spec"]["ports"][0]["port"], 81);
    }

    #[test]
    fn preconditions() {
        let mut s = Store::default();
        one(&mut s, upsert(svc("web", 80), UpsertMode::Create)).unwrap();
        assert!(matches!(
            one(&mut s, upsert(svc("web", 80), UpsertMode::Create)),
            Err(StoreError::AlreadyExists(k)) if k == web()
        ));
        assert!(matches!(
            one(&mut s, upsert(svc("nope", 80), UpsertMode::Replace(None))),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            one(&mut s, upsert(svc("web", 81), UpsertMode::Replace(Some(7)))),
            Err(StoreError::Conflict {
                given: 7,
                current: 1,
                ..
            })
        ));
        one(&mut s, upsert(svc("web", 81), UpsertMode::Replace(Some(1)))).unwrap();
        assert!(matches!(
            one(
                &mut s,
                Write::Delete {
                    key: Key::new(Kind::Pod, "default", "web"),
                    must_exist: true
                }
            ),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.revision(), 2, "refused writes bump nothing");
    }

    #[test]
    fn an_invalid_batch_changes_nothing() {
        let mut s = Store::default();
        one(&mut s, upsert(svc("web", 80), UpsertMode::Create)).unwrap();
        let before = s.objects().clone();
        let mut b = Batch::default();
        b.push(upsert(svc("api", 80), UpsertMode::Create));
        b.push(Write::Delete {
            key: web(),
            must_exist: true,
        });
        let seen = std::cell::Cell::new(0);
        let r: Result<Commit<()>, _> = s.commit(b, SystemTime::now(), |next| {
            // The validator sees the state after the whole batch.
            seen.set(next.len());
            assert!(next.contains_key(&Key::new(Kind::Service, "default", "api")));
            assert!(!next.contains_key(&web()));
            Err("port clash")
        });
        assert_eq!(seen.get(), 1);
        assert!(matches!(r, Err(StoreError::Invalid("port clash"))));
        assert_eq!(s.objects(), &before);
        assert_eq!(s.revision(), 1);
        assert_eq!(s.events_since(0).unwrap().len(), 1, "no events recorded");
        // A precondition failure late in a batch undoes the earlier writes.
        let mut b = Batch::default();
        b.push(upsert(svc("api", 80), UpsertMode::Create));
        b.push(upsert(svc("web", 80), UpsertMode::Create));
        assert!(s.commit(b, SystemTime::now(), ok).is_err());
        assert_eq!(s.objects(), &before);
    }

    #[test]
    fn bad_objects_name_the_field() {
        let mut s = Store::default();
        for (obj, field) in [
            (json!([1]), ""),
            (
                json!({"kind": "Deployment", "metadata": {"name": "x"}}),
                "kind",
            ),
            (json!({"metadata": {"name": "x"}}), "kind"),
            (json!({"kind": "Service", "metadata": {}}), "metadata.name"),
            (
                json!({"kind": "Service", "metadata": {"name": "x", "namespace": 3}}),
                "metadata.namespace",
            ),
        ] {
            match one(&mut s, upsert(obj.clone(), UpsertMode::Apply(None))) {
                Err(StoreError::BadObject { field: f, .. }) => assert_eq!(f, field, "{obj}"),
                other => panic!("{obj}: {other:?}"),
            }
        }
        assert!(s.objects().is_empty());
    }

    #[test]
    fn events_and_watch_history() {
        let mut s = Store::new(3);
        one(&mut s, upsert(svc("web", 80), UpsertMode::Create)).unwrap();
        one(&mut s, upsert(svc("web", 81), UpsertMode::Apply(None))).unwrap();
        // An apply of the same intent is no write.
        let c = one(&mut s, upsert(svc("web", 81), UpsertMode::Apply(None))).unwrap();
        assert!(c.events.is_empty());
        assert_eq!(c.revision, 2);
        let c = one(
            &mut s,
            Write::Delete {
                key: web(),
                must_exist: true,
            },
        )
        .unwrap();
        assert_eq!(c.events[0].kind, EventType::Deleted);
        assert_eq!(c.events[0].object["metadata"]["resourceVersion"], "3");
        let kinds: Vec<_> = s
            .events_since(0)
            .unwrap()
            .iter()
            .map(|e| (e.kind, e.resource_version))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EventType::Added, 1),
                (EventType::Modified, 2),
                (EventType::Deleted, 3)
            ]
        );
        assert_eq!(s.events_since(2).unwrap().len(), 1);
        // The history holds 3: the fourth event pushes out the first, and a
        // watch from before it is told it is gone.
        one(&mut s, upsert(svc("web", 80), UpsertMode::Create)).unwrap();
        assert!(matches!(
            s.events_since(0),
            Err(StoreError::Gone {
                requested: 0,
                oldest: 1
            })
        ));
        assert_eq!(s.events_since(1).unwrap().len(), 3);
    }

    #[test]
    fn kinds_by_user_name() {
        assert_eq!(Kind::from_user("svc"), Some(Kind::Service));
        assert_eq!(Kind::from_user("Services"), Some(Kind::Service));
        assert_eq!(Kind::from_user("endpointslice"), Some(Kind::EndpointSlice));
        assert_eq!(Kind::from_user("ep"), Some(Kind::Endpoints));
        assert_eq!(Kind::from_user("deploy"), None);
        assert_eq!(Kind::from_user("po").map(Kind::api_version), Some("v1"));
    }

    #[test]
    fn list_by_namespace() {
        let mut s = Store::default();
        let mut other = svc("web", 80);
        other["metadata"]["namespace"] = json!("prod");
        let mut b = Batch::default();
        b.push(upsert(svc("web", 80), UpsertMode::Create));
        b.push(upsert(other, UpsertMode::Create));
        s.commit(b, SystemTime::now(), ok).unwrap();
        assert_eq!(s.list(Kind::Service, None).count(), 2);
        assert_eq!(s.list(Kind::Service, Some("prod")).count(), 1);
        assert_eq!(s.list(Kind::Pod, None).count(), 0);
    }

    proptest::proptest! {
        /// Whatever the batches, the revision only grows, every stored
        /// object's resourceVersion matches its record, and a refused batch
        /// leaves the objects as they were.
        #[test]
        fn revisions_are_monotonic(ops in proptest::collection::vec((0u8..4, 0u8..3, proptest::bool::ANY), 1..40)) {
            let mut s = Store::new(8);
            let mut last = 0;
            for (op, n, fail) in ops {
                let name = format!("s{n}");
                let w = match op {
                    0 => upsert(svc(&name, 80), UpsertMode::Create),
                    1 => upsert(svc(&name, 81 + u16::from(n)), UpsertMode::Replace(None)),
                    2 => upsert(svc(&name, 90), UpsertMode::Apply(None)),
                    _ => Write::Delete { key: Key::new(Kind::Service, "default", &name), must_exist: false },
                };
                let before = s.objects().clone();
                let mut b = Batch::default();
                b.push(w);
                let r = s.commit(b, SystemTime::now(), |_| if fail { Err(()) } else { Ok(()) });
                if r.is_err() {
                    proptest::prop_assert_eq!(s.objects(), &before);
                }
                proptest::prop_assert!(s.revision() >= last);
                last = s.revision();
                for st in s.objects().values() {
                    proptest::prop_assert_eq!(
                        st.object["metadata"]["resourceVersion"].as_str().unwrap(),
                        st.resource_version.to_string()
                    );
                }
            }
        }
    }
}
