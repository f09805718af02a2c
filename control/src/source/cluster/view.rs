//! The cluster as the watch last saw it, and the writes that make the
//! store follow it.
//!
//! The view holds every Service and EndpointSlice the watch delivered,
//! converted. [`plan`] turns the keys an event touched into store writes,
//! by these rules:
//!
//! * **Owner.** The cluster writes under [`OWNER`]. A key another source
//!   holds (the file or the API) is left alone: the operator's local
//!   objects win over the cluster's, as the file source's apply already
//!   takes over any key it names. The cluster's version stays in the view
//!   and is written once the other source lets the key go (the follower
//!   re-plans a key when the store reports it deleted). Such keys are
//!   returned so they can be logged and counted.
//! * **Slices follow their Service.** The compile refuses an EndpointSlice
//!   whose Service is absent, and the two arrive on separate watches, in
//!   either order. So a slice is written only when its Service is (or will
//!   be, in the same batch) in the store, and a Service's removal takes its
//!   slices along in the same batch. A slice held back is written when its
//!   Service arrives (a Service event touches its slices too).
//! * **Deletes.** The cluster deletes only what it owns; an object gone
//!   from the cluster (a delete event, or absent from a relist) goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use super::OWNER;
use crate::store::{Batch, Key, Kind, Store, UpsertMode, Write};

/// The cluster's objects, as last seen.
#[derive(Debug, Default)]
pub struct View {
    objects: BTreeMap<Key, Value>,
    /// Slice → its Service, and the reverse, from the service-name label.
    slice_service: BTreeMap<Key, Key>,
    service_slices: BTreeMap<Key, BTreeSet<Key>>,
}

impl View {
    /// Stores `obj` under `key`; returns the keys to re-plan.
    pub fn upsert(&mut self, key: Key, obj: Value) -> Vec<Key> {
        self.unlink(&key);
        let mut touched = Vec::new();
        if key.kind == Kind::EndpointSlice {
            if let Some(svc) = super::convert::slice_service(&key, &obj) {
                self.service_slices
                    .entry(svc.clone())
                    .or_default()
                    .insert(key.clone());
                self.slice_service.insert(key.clone(), svc);
            }
        }
        self.objects.insert(key.clone(), obj);
        touched.extend(self.with_slices(&key));
        touched
    }

    /// Forgets `key`; returns the keys to re-plan.
    pub fn remove(&mut self, key: &Key) -> Vec<Key> {
        self.unlink(key);
        self.objects.remove(key);
        self.with_slices(key)
    }

    /// Replaces every object of `kind` by `objects` (a relist); returns the
    /// keys to re-plan: those that left, and those listed.
    pub fn replace_kind(&mut self, kind: Kind, objects: Vec<(Key, Value)>) -> Vec<Key> {
        let old: Vec<Key> = self.keys(kind).cloned().collect();
        let mut touched = Vec::new();
        let listed: BTreeSet<&Key> = objects.iter().map(|(k, _)| k).collect();
        for k in old.iter().filter(|k| !listed.contains(k)) {
            touched.extend(self.remove(k));
        }
        for (k, v) in objects {
            touched.extend(self.upsert(k, v));
        }
        touched
    }

    /// The keys of `kind` held.
    pub fn keys(&self, kind: Kind) -> impl Iterator<Item = &Key> {
        self.objects.keys().filter(move |k| k.kind == kind)
    }

    /// The object held under `key`.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// How many objects are held.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// `key`, and when it is a Service, the slices that name it.
    pub fn with_slices(&self, key: &Key) -> Vec<Key> {
        let mut out = vec![key.clone()];
        if key.kind == Kind::Service {
            if let Some(s) = self.service_slices.get(key) {
                out.extend(s.iter().cloned());
            }
        }
        out
    }

    /// Drops the slice → Service link of `key`.
    fn unlink(&mut self, key: &Key) {
        let Some(svc) = self.slice_service.remove(key) else {
            return;
        };
        if let Some(set) = self.service_slices.get_mut(&svc) {
            set.remove(key);
            if set.is_empty() {
                self.service_slices.remove(&svc);
            }
        }
    }
}

/// What [`plan`] decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// The writes, Services (and deletes) before slices.
    pub batch: Batch,
    /// Keys the view wants but another source owns in the store: untouched.
    pub foreign: Vec<(Key, Arc<str>)>,
    /// Slices held back because their Service is not in the store.
    pub held: Vec<Key>,
}

/// The writes that make the store hold, for `keys`, what the view wants.
pub fn plan(view: &View, keys: &[Key], store: &Store) -> Plan {
    let owner: Arc<str> = Arc::from(OWNER);
    let keys: BTreeSet<&Key> = keys.iter().collect();
    let mut p = Plan::default();
    // Whether a Service will be in the store after the batch.
    let mut services_after: BTreeMap<&Key, bool> = BTreeMap::new();
    let (services, others): (Vec<&Key>, Vec<&Key>) =
        keys.into_iter().partition(|k| k.kind == Kind::Service);
    for key in services.into_iter().chain(others) {
        let stored = store.get(key);
        if let Some(s) = stored.filter(|s| &*s.owner != OWNER) {
            if view.get(key).is_some() {
                p.foreign.push((key.clone(), s.owner.clone()));
            }
            continue;
        }
        let want = view.get(key).filter(|_| match key.kind {
            Kind::EndpointSlice => match view.slice_service.get(key) {
                Some(svc) => *services_after
                    .entry(svc)
                    .or_insert_with(|| store.get(svc).is_some()),
                None => true,
            },
            _ => true,
        });
        if key.kind == Kind::EndpointSlice && view.get(key).is_some() && want.is_none() {
            p.held.push(key.clone());
        }
        match want {
            Some(obj) => {
                if key.kind == Kind::Service {
                    services_after.insert(key, true);
                }
                if stored.is_some_and(|s| same_intent(&s.object, obj)) {
                    continue;
                }
                p.batch.push(Write::Upsert {
                    object: obj.clone(),
                    owner: owner.clone(),
                    mode: UpsertMode::Apply(None),
                });
            }
            None if stored.is_some() => {
                if key.kind == Kind::Service {
                    services_after.insert(key, false);
                }
                p.batch.push(Write::Delete {
                    key: key.clone(),
                    must_exist: false,
                });
            }
            None => {}
        }
    }
    p
}

/// Whether the stored object says what `obj` says (the store's own
/// metadata aside), so that a relist of unchanged objects writes nothing.
fn same_intent(stored: &Value, obj: &Value) -> bool {
    let mut s = stored.clone();
    if let Some(meta) = s.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in ["uid", "resourceVersion", "creationTimestamp"] {
            meta.remove(f);
        }
    }
    &s == obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::SystemTime;

    fn svc(name: &str, ip: &str) -> (Key, Value) {
        (
            Key::new(Kind::Service, "default", name),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": name, "namespace": "default"},
                   "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
    }

    fn slice(name: &str, service: &str, addr: &str) -> (Key, Value) {
        (
            Key::new(Kind::EndpointSlice, "default", name),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": name, "namespace": "default",
                                "labels": {"kubernetes.io/service-name": service}},
                   "addressType": "IPv4",
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                   "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}]}),
        )
    }

    /// Commits a plan through the real compile, as the reconciler would.
    fn commit(store: &mut Store, b: Batch) -> Result<(), String> {
        store
            .commit(b, SystemTime::now(), |objs| {
                crate::reconcile::compile_config(objs, &Default::default()).map(|_| ())
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn plan_commit(store: &mut Store, view: &View, keys: &[Key]) -> Result<(), String> {
        let b = plan(view, keys, store).batch;
        commit(store, b)
    }

    fn upsert(view: &mut View, (k, v): (Key, Value)) -> Vec<Key> {
        view.upsert(k, v)
    }

    fn names(store: &Store) -> Vec<(Kind, String, String)> {
        store
            .objects()
            .iter()
            .map(|(k, s)| (k.kind, k.name.clone(), s.owner.to_string()))
            .collect()
    }

    #[test]
    fn a_slice_before_its_service_is_held_then_written_with_it() {
        let mut store = Store::default();
        let mut view = View::default();
        let keys = upsert(&mut view, slice("web-1", "web", "198.18.1.11"));
        let p = plan(&view, &keys, &store);
        assert!(p.batch.writes.is_empty(), "no Service yet: nothing written");
        assert_eq!(p.held, [Key::new(Kind::EndpointSlice, "default", "web-1")]);
        let keys = upsert(&mut view, svc("web", "198.18.100.10"));
        assert_eq!(keys.len(), 2, "the Service touches its slice: {keys:?}");
        let p = plan(&view, &keys, &store);
        assert_eq!(p.batch.writes.len(), 2);
        commit(&mut store, p.batch).unwrap();
        assert_eq!(store.objects().len(), 2);
        // Nothing changed: a relist of the same objects writes nothing.
        let keys = view.replace_kind(Kind::Service, vec![svc("web", "198.18.100.10")]);
        assert!(plan(&view, &keys, &store).batch.writes.is_empty());
    }

    #[test]
    fn a_deleted_service_takes_its_slices_in_the_same_batch() {
        let mut store = Store::default();
        let mut view = View::default();
        upsert(&mut view, svc("web", "198.18.100.10"));
        let keys = upsert(&mut view, slice("web-1", "web", "198.18.1.11"));
        let mut all = view.with_slices(&svc("web", "").0);
        all.extend(keys);
        plan_commit(&mut store, &view, &all).unwrap();
        let keys = view.remove(&svc("web", "").0);
        let p = plan(&view, &keys, &store);
        assert_eq!(p.batch.writes.len(), 2, "{:?}", p.batch);
        commit(&mut store, p.batch).unwrap();
        assert!(store.objects().is_empty());
    }

    #[test]
    fn a_relist_deletes_what_left_the_cluster_and_only_what_the_cluster_wrote() {
        let mut store = Store::default();
        let mut view = View::default();
        let mut keys = upsert(&mut view, svc("a", "198.18.100.10"));
        keys.extend(upsert(&mut view, svc("b", "198.18.100.11")));
        plan_commit(&mut store, &view, &keys).unwrap();
        // The API wrote another Service.
        let mut b = Batch::default();
        b.push(Write::Upsert {
            object: svc("mine", "198.18.100.12").1,
            owner: Arc::from("kubectl"),
            mode: UpsertMode::Create,
        });
        commit(&mut store, b).unwrap();
        // While the watch was broken, b was deleted in the cluster.
        let keys = view.replace_kind(Kind::Service, vec![svc("a", "198.18.100.10")]);
        plan_commit(&mut store, &view, &keys).unwrap();
        assert_eq!(
            names(&store),
            [
                (Kind::Service, String::from("a"), String::from(OWNER)),
                (Kind::Service, String::from("mine"), String::from("kubectl"))
            ]
        );
    }

    #[test]
    fn a_key_another_source_owns_is_left_alone_then_taken_when_freed() {
        let mut store = Store::default();
        let mut b = Batch::default();
        b.push(Write::Upsert {
            object: svc("web", "198.18.100.10").1,
            owner: Arc::from(crate::source::file::OWNER),
            mode: UpsertMode::Apply(None),
        });
        commit(&mut store, b).unwrap();
        let mut view = View::default();
        let keys = upsert(&mut view, svc("web", "198.18.100.20"));
        let p = plan(&view, &keys, &store);
        assert!(
            p.batch.writes.is_empty(),
            "the file's object is not touched"
        );
        assert_eq!(p.foreign.len(), 1);
        assert_eq!(&*p.foreign[0].1, crate::source::file::OWNER);
        // The cluster deleting it does not delete the file's object either.
        let keys = view.remove(&svc("web", "").0);
        assert!(plan(&view, &keys, &store).batch.writes.is_empty());
        // Once the file lets it go, the cluster's version is written.
        let keys = upsert(&mut view, svc("web", "198.18.100.20"));
        let mut b = Batch::default();
        b.push(Write::Delete {
            key: svc("web", "").0,
            must_exist: true,
        });
        commit(&mut store, b).unwrap();
        plan_commit(&mut store, &view, &keys).unwrap();
        let s = store.get(&svc("web", "").0).unwrap();
        assert_eq!(&*s.owner, OWNER);
        assert_eq!(s.object["spec"]["clusterIP"], "198.18.100.20");
    }

    #[test]
    fn a_slice_of_a_file_service_is_written_against_it() {
        let mut store = Store::default();
        let mut b = Batch::default();
        b.push(Write::Upsert {
            object: svc("web", "198.18.100.10").1,
            owner: Arc::from(crate::source::file::OWNER),
            mode: UpsertMode::Apply(None),
        });
        commit(&mut store, b).unwrap();
        let mut view = View::default();
        let keys = upsert(&mut view, slice("web-1", "web", "198.18.1.11"));
        let p = plan(&view, &keys, &store);
        assert_eq!(p.batch.writes.len(), 1);
        commit(&mut store, p.batch).unwrap();
    }
}
