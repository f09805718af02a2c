//! The object routes: get, list, create, replace, patch, delete and watch
//! of Services, Endpoints, Pods (`/api/v1`) and EndpointSlices
//! (`/apis/discovery.k8s.io/v1`) and VirtualServices (`/apis/sluice.dev/v1`),
//! namespaced and cluster-wide.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::group::{self, Job};
use super::status::{self, Status};
use super::{patch, watch, AppState};
use crate::store::{Key, Kind, Store, UpsertMode, Write};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/{resource}", get(list_all_core))
        .route(
            "/api/v1/namespaces/{ns}/{resource}",
            get(list_core).post(create_core),
        )
        .route(
            "/api/v1/namespaces/{ns}/{resource}/{name}",
            get(get_core)
                .put(replace_core)
                .patch(patch_core)
                .delete(delete_core),
        )
        .route("/apis/sluice.dev/v1/{resource}", get(list_all_sluice))
        .route(
            "/apis/sluice.dev/v1/namespaces/{ns}/{resource}",
            get(list_sluice).post(create_sluice),
        )
        .route(
            "/apis/sluice.dev/v1/namespaces/{ns}/{resource}/{name}",
            get(get_sluice)
                .put(replace_sluice)
                .patch(patch_sluice)
                .delete(delete_sluice),
        )
        .route("/apis/discovery.k8s.io/v1/{resource}", get(list_all_disc))
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/{resource}",
            get(list_disc).post(create_disc),
        )
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/{resource}/{name}",
            get(get_disc)
                .put(replace_disc)
                .patch(patch_disc)
                .delete(delete_disc),
        )
}

/// The query parameters Sluice reads.
pub type Params = HashMap<String, String>;

/// The kind a (group, resource) names.
fn kind_of(group: &str, resource: &str, uri: &Uri) -> Result<Kind, Status> {
    Kind::ALL
        .into_iter()
        .find(|k| k.group() == group && k.plural() == resource)
        .ok_or_else(|| Status::no_route(uri.path()))
}

macro_rules! group_handlers {
    ($group:expr, $list_all:ident, $list:ident, $create:ident, $get:ident, $replace:ident, $patch:ident, $delete:ident) => {
        async fn $list_all(
            State(s): State<AppState>,
            Path(resource): Path<String>,
            Query(q): Query<Params>,
            uri: Uri,
        ) -> Response {
            match kind_of($group, &resource, &uri) {
                Ok(k) => list(s, k, None, q).await,
                Err(e) => e.into_response(),
            }
        }
        async fn $list(
            State(s): State<AppState>,
            Path((ns, resource)): Path<(String, String)>,
            Query(q): Query<Params>,
            uri: Uri,
        ) -> Response {
            match kind_of($group, &resource, &uri) {
                Ok(k) => list(s, k, Some(ns), q).await,
                Err(e) => e.into_response(),
            }
        }
        async fn $create(
            State(s): State<AppState>,
            Path((ns, resource)): Path<(String, String)>,
            Query(q): Query<Params>,
            uri: Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            match kind_of($group, &resource, &uri) {
                Ok(k) => create(s, k, ns, q, headers, body)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                Err(e) => e.into_response(),
            }
        }
        async fn $get(
            State(s): State<AppState>,
            Path((ns, resource, name)): Path<(String, String, String)>,
            uri: Uri,
        ) -> Response {
            match kind_of($group, &resource, &uri) {
                Ok(k) => get_one(s, Key::new(k, &ns, &name))
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                Err(e) => e.into_response(),
            }
        }
        async fn $replace(
            State(s): State<AppState>,
            Path((ns, resource, name)): Path<(String, String, String)>,
            Query(q): Query<Params>,
            uri: Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            match kind_of($group, &resource, &uri) {
                Ok(k) => replace(s, Key::new(k, &ns, &name), q, headers, body)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                Err(e) => e.into_response(),
            }
        }
        async fn $patch(
            State(s): State<AppState>,
            Path((ns, resource, name)): Path<(String, String, String)>,
            Query(q): Query<Params>,
            uri: Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            match kind_of($group, &resource, &uri) {
                Ok(k) => patch_one(s, Key::new(k, &ns, &name), q, headers, body)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                Err(e) => e.into_response(),
            }
        }
        async fn $delete(
            State(s): State<AppState>,
            Path((ns, resource, name)): Path<(String, String, String)>,
            uri: Uri,
        ) -> Response {
            match kind_of($group, &resource, &uri) {
                Ok(k) => delete(s, Key::new(k, &ns, &name))
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                Err(e) => e.into_response(),
            }
        }
    };
}

group_handlers!(
    "",
    list_all_core,
    list_core,
    create_core,
    get_core,
    replace_core,
    patch_core,
    delete_core
);
group_handlers!(
    "sluice.dev",
    list_all_sluice,
    list_sluice,
    create_sluice,
    get_sluice,
    replace_sluice,
    patch_sluice,
    delete_sluice
);
group_handlers!(
    "discovery.k8s.io",
    list_all_disc,
    list_disc,
    create_disc,
    get_disc,
    replace_disc,
    patch_disc,
    delete_disc
);

/// A label or field selector of equality terms (`a=b`, `a==b`, `a!=b`)
/// and existence terms (`a`, `!a`), ANDed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<(String, Term)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

impl Selector {
    /// Parses a selector.
    ///
    /// # Errors
    /// A message naming the bad term.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (k, term) = if let Some((k, v)) = t.split_once("!=") {
                (k, Term::Ne(v.trim().to_owned()))
            } else if let Some((k, v)) = t.split_once("==") {
                (k, Term::Eq(v.trim().to_owned()))
            } else if let Some((k, v)) = t.split_once('=') {
                (k, Term::Eq(v.trim().to_owned()))
            } else if let Some(k) = t.strip_prefix('!') {
                (k, Term::Absent)
            } else if t.contains(' ') || t.contains('(') {
                return Err(format!(
                    "{t:?}: only equality (=, ==, !=) and existence selectors are supported"
                ));
            } else {
                (t, Term::Exists)
            };
            let k = k.trim();
            if k.is_empty() {
                return Err(format!("{t:?}: empty key"));
            }
            terms.push((k.to_owned(), term));
        }
        Ok(Selector { terms })
    }

    /// Whether `get(key)` satisfies every term.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.terms.iter().all(|(k, t)| match (t, get(k)) {
            (Term::Eq(v), Some(x)) => x == v,
            (Term::Eq(_), None) => false,
            (Term::Ne(v), x) => x != Some(v.as_str()),
            (Term::Exists, x) => x.is_some(),
            (Term::Absent, x) => x.is_none(),
        })
    }
}

/// The label and field selectors of a list or watch.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// The kind.
    pub kind: Option<Kind>,
    /// Namespace (`None`: all).
    pub namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn new(kind: Kind, namespace: Option<String>, q: &Params) -> Result<Filter, Status> {
        let sel = |p: &str| {
            Selector::parse(q.get(p).map(String::as_str).unwrap_or(""))
                .map_err(|e| Status::bad_request(format!("{p}: {e}")))
        };
        let fields = sel("fieldSelector")?;
        for (k, _) in &fields.terms {
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(Status::bad_request(format!(
                    "fieldSelector: field label not supported: {k}"
                )));
            }
        }
        Ok(Filter {
            kind: Some(kind),
            namespace,
            labels: sel("labelSelector")?,
            fields,
        })
    }

    /// Whether the object at `key` passes.
    pub fn matches(&self, key: &Key, obj: &Value) -> bool {
        if self.kind.is_some_and(|k| k != key.kind)
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != key.namespace)
        {
            return false;
        }
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.labels
            .matches(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
            && self.fields.matches(|k| match k {
                "metadata.name" => Some(key.name.as_str()),
                "metadata.namespace" => Some(key.namespace.as_str()),
                _ => None,
            })
    }
}

async fn list(s: AppState, kind: Kind, ns: Option<String>, q: Params) -> Response {
    let filter = match Filter::new(kind, ns, &q) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch::serve(s.rec, filter, &q).into_response();
    }
    let rec = s.rec.lock().unwrap_or_else(|p| p.into_inner());
    let store = rec.store();
    let items: Vec<Value> = store
        .objects()
        .iter()
        .filter(|(k, st)| filter.matches(k, &st.object))
        .map(|(_, st)| (*st.object).clone())
        .collect();
    Json(json!({
        "kind": format!("{}List", kind.as_str()),
        "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": store.revision().to_string()},
        "items": items,
    }))
    .into_response()
}

async fn get_one(s: AppState, key: Key) -> Result<Response, Status> {
    let rec = s.rec.lock().unwrap_or_else(|p| p.into_inner());
    match rec.store().get(&key) {
        Some(st) => Ok(Json((*st.object).clone()).into_response()),
        None => Err(status::not_found(&key)),
    }
}

/// The request body as JSON (JSON or YAML, by content type).
fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, Status> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let text = std::str::from_utf8(body)
        .map_err(|_| Status::bad_request("the request body is not UTF-8".into()))?;
    if ct.contains("yaml") {
        serde_norway::from_str(text)
            .map_err(|e| Status::bad_request(format!("the request body is not valid YAML: {e}")))
    } else {
        serde_json::from_str(text)
            .map_err(|e| Status::bad_request(format!("the request body is not valid JSON: {e}")))
    }
}

/// Checks that the body is of the path's kind, namespace and (when given)
/// name; fills in a missing namespace.
fn check_identity(obj: &mut Value, kind: Kind, ns: &str, name: Option<&str>) -> Result<(), Status> {
    if !obj.is_object() {
        return Err(Status::bad_request(
            "the request body must be a JSON object".into(),
        ));
    }
    let body_kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if body_kind.is_empty() {
        obj["kind"] = json!(kind.as_str());
    } else if body_kind != kind.as_str() {
        return Err(Status::bad_request(format!(
            "the body is a {body_kind:?}, the path names {}",
            kind.plural()
        )));
    }
    if obj.get("apiVersion").is_none() {
        obj["apiVersion"] = json!(kind.api_version());
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => meta["namespace"] = json!(ns),
        Some(n) if n == ns => {}
        Some(_) => return Err(Status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
    }
    if let Some(name) = name {
        match meta.get("name").and_then(Value::as_str) {
            None | Some("") => meta["name"] = json!(name),
            Some(n) if n == name => {}
            Some(_) => {
                return Err(Status::bad_request(
                    "the name of the object does not match the name on the URL".into(),
                ))
            }
        }
    }
    Ok(())
}

fn owner(q: &Params, default: &str) -> Arc<str> {
    Arc::from(q.get("fieldManager").map(String::as_str).unwrap_or(default))
}

fn body_rv(obj: &Value) -> Result<Option<u64>, Status> {
    match obj.pointer("/metadata/resourceVersion") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
            Status::bad_request(format!(
                "metadata.resourceVersion: {s:?} is not a resource version"
            ))
        }),
        Some(_) => Err(Status::bad_request(
            "metadata.resourceVersion must be a string".into(),
        )),
    }
}

fn reject_dry_run(q: &Params) -> Result<(), Status> {
    if q.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(Status::bad_request(
            "dryRun is not supported by Sluice".into(),
        ));
    }
    Ok(())
}

/// Commits one write (with whatever else is queued: `group.rs`); answers
/// with the stored object.
async fn write_one(s: &AppState, key: Key, w: Write, code: StatusCode) -> Result<Response, Status> {
    let job = Upsert {
        key,
        write: w,
        code,
    };
    group::submit(&s.queue, Box::new(job)).await
}

/// A create or replace.
struct Upsert {
    key: Key,
    /// The write (cloned for each commit of it: a group taken apart
    /// commits it again alone).
    write: Write,
    code: StatusCode,
}

impl Job for Upsert {
    fn key(&self) -> &Key {
        &self.key
    }

    fn write(&mut self, _: &Store) -> Result<Write, Status> {
        Ok(self.write.clone())
    }

    fn answer(self: Box<Self>, store: &Store) -> Result<Response, Status> {
        stored_answer(store, &self.key, self.code)
    }
}

/// The object now stored under `key`, as the answer to a write.
fn stored_answer(store: &Store, key: &Key, code: StatusCode) -> Result<Response, Status> {
    let st = store.get(key).ok_or_else(|| status::not_found(key))?;
    Ok((code, Json((*st.object).clone())).into_response())
}

async fn create(
    s: AppState,
    kind: Kind,
    ns: String,
    q: Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Status> {
    reject_dry_run(&q)?;
    let mut obj = parse_body(&headers, &body)?;
    check_identity(&mut obj, kind, &ns, None)?;
    let key = Key::of(&obj).map_err(|e| status::from_store(widen(e), None))?;
    let w = Write::Upsert {
        object: obj,
        owner: owner(&q, "api"),
        mode: UpsertMode::Create,
    };
    write_one(&s, key, w, StatusCode::CREATED).await
}

fn widen(e: crate::store::StoreError) -> crate::store::StoreError<crate::reconcile::ApplyError> {
    match e {
        crate::store::StoreError::BadObject { field, reason } => {
            crate::store::StoreError::BadObject { field, reason }
        }
        other => crate::store::StoreError::BadObject {
            field: String::new(),
            reason: other.to_string(),
        },
    }
}

async fn replace(
    s: AppState,
    key: Key,
    q: Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Status> {
    reject_dry_run(&q)?;
    let mut obj = parse_body(&headers, &body)?;
    check_identity(&mut obj, key.kind, &key.namespace, Some(&key.name))?;
    let rv = body_rv(&obj)?;
    let w = Write::Upsert {
        object: obj,
        owner: owner(&q, "api"),
        mode: UpsertMode::Replace(rv),
    };
    write_one(&s, key, w, StatusCode::OK).await
}

async fn patch_one(
    s: AppState,
    key: Key,
    q: Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Status> {
    reject_dry_run(&q)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let apply = match ct.as_str() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        "application/apply-patch+yaml" | "application/apply-patch+json" => true,
        other => {
            return Err(Status::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"),
            ))
        }
    };
    if apply && !q.contains_key("fieldManager") {
        return Err(Status::bad_request(
            "PATCH is not supported without fieldManager: server-side apply needs a field manager"
                .into(),
        ));
    }
    let mut p = parse_body(&headers, &body)?;
    if apply {
        check_identity(&mut p, key.kind, &key.namespace, Some(&key.name))?;
    }
    let rv_given = body_rv(&p)?;
    let owner = owner(&q, "api");
    let job = Patch {
        key,
        patch: p,
        apply,
        rv_given,
        owner,
        created: false,
    };
    group::submit(&s.queue, Box::new(job)).await
}

/// A merge patch or a server-side apply.
struct Patch {
    key: Key,
    patch: Value,
    /// Server-side apply: an absent object is created.
    apply: bool,
    rv_given: Option<u64>,
    owner: Arc<str>,
    /// Whether its write creates the object.
    created: bool,
}

impl Job for Patch {
    fn key(&self) -> &Key {
        &self.key
    }

    fn write(&mut self, store: &Store) -> Result<Write, Status> {
        let (object, mode, created) = match store.get(&self.key) {
            Some(cur) => {
                let mut obj = (*cur.object).clone();
                patch::merge(&mut obj, &self.patch);
                // The patch's own resourceVersion is a precondition; none
                // means "the version just read" (no lost update).
                let rv = self.rv_given.unwrap_or(cur.resource_version);
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                (obj, UpsertMode::Apply(Some(rv)), false)
            }
            None if self.apply => (self.patch.clone(), UpsertMode::Create, true),
            None => return Err(status::not_found(&self.key)),
        };
        let k = &self.key;
        check_identity(&mut object.clone(), k.kind, &k.namespace, Some(&k.name))?;
        self.created = created;
        Ok(Write::Upsert {
            object,
            owner: self.owner.clone(),
            mode,
        })
    }

    fn answer(self: Box<Self>, store: &Store) -> Result<Response, Status> {
        let code = if self.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        stored_answer(store, &self.key, code)
    }
}

async fn delete(s: AppState, key: Key) -> Result<Response, Status> {
    let job = Delete { key, before: None };
    group::submit(&s.queue, Box::new(job)).await
}

/// A delete; it answers with the object it deleted.
struct Delete {
    key: Key,
    before: Option<Value>,
}

impl Job for Delete {
    fn key(&self) -> &Key {
        &self.key
    }

    fn write(&mut self, store: &Store) -> Result<Write, Status> {
        self.before = store.get(&self.key).map(|s| (*s.object).clone());
        Ok(Write::Delete {
            key: self.key.clone(),
            must_exist: true,
        })
    }

    fn answer(self: Box<Self>, _: &Store) -> Result<Response, Status> {
        let before = self.before.ok_or_else(|| status::not_found(&self.key))?;
        Ok(Json(before).into_response())
    }
}

/// The objects of a list response, by key (for tests and the CLI).
pub fn items_by_key(list: &Value) -> BTreeMap<String, Value> {
    list.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let name = i.pointer("/metadata/name")?.as_str()?;
            Some((name.to_owned(), i.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels: BTreeMap<&str, &str> = [("app", "web"), ("tier", "front")].into();
        let get = |k: &str| labels.get(k).copied();
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=api", false),
            ("app!=api", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("tier", true),
            ("!tier", false),
            ("nope!=x", true),
            ("nope", false),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(get), want, "{sel}");
        }
        assert!(Selector::parse("app in (web)").is_err());
        assert!(Selector::parse("=x").is_err());
    }
}
