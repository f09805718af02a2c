//! A fake Kubernetes API server for the cluster-watch tests: Services and
//! EndpointSlices over the real list/watch protocol, driven by the test.
//!
//! No kube-apiserver can run here, so this stands in for one, as small as
//! the protocol allows and no smaller (checked against the real kubectl in
//! `tests/cluster_watch.rs`):
//!
//! * `GET /api/v1/services` and `/apis/discovery.k8s.io/v1/endpointslices`
//!   (and the `/namespaces/{ns}/` forms, and one object by name) list with
//!   `metadata.resourceVersion`, the server's revision; every object carries
//!   its own `resourceVersion`, `uid` and `creationTimestamp`.
//! * `?watch=1&resourceVersion=RV` streams newline-delimited JSON events
//!   (`ADDED`, `MODIFIED`, `DELETED`, and `BOOKMARK`s every second when
//!   `allowWatchBookmarks=true`) over chunked encoding, from the events after
//!   `RV`; `RV` empty or `0` starts with an `ADDED` per object, as the real
//!   server does. `timeoutSeconds` ends the stream cleanly.
//! * A watch from a version older than the kept history ([`compact`]) is
//!   answered as kube-apiserver's watch cache does, with `200` and one
//!   `ERROR` event carrying a `Status` of code 410 (`Expired`); or, with
//!   [`GoneAnswer::Http`], with an HTTP `410` and the `Status` as body.
//! * [`gone_mid_watch`] sends every open watch that `ERROR` 410 and ends it
//!   (a compaction under an open watch); [`drop_watches`] cuts every open
//!   watch's TCP connection without a final chunk (an API server restart).
//! * `/version`, `/api`, `/apis`, `/api/v1`, `/apis/discovery.k8s.io/v1`:
//!   the discovery documents kubectl reads.
//!
//! The server runs in the test process on threads (std only), one per
//! connection, every connection `Connection: close`. [`FakeApiServer::start_in`]
//! binds it to 127.0.0.1 inside a network namespace the test created, so
//! that a sluice started there reaches it.
//!
//! [`compact`]: FakeApiServer::compact
//! [`gone_mid_watch`]: FakeApiServer::gone_mid_watch
//! [`drop_watches`]: FakeApiServer::drop_watches

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The resources the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `v1` services.
    Services,
    /// `discovery.k8s.io/v1` endpointslices.
    EndpointSlices,
}

impl Resource {
    fn of_kind(kind: &str) -> Option<Resource> {
        match kind {
            "Service" => Some(Resource::Services),
            "EndpointSlice" => Some(Resource::EndpointSlices),
            _ => None,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Services => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
        }
    }
}

/// How a watch from a too-old resource version is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoneAnswer {
    /// `200` and one `ERROR` event with a 410 `Status` (kube-apiserver's
    /// watch cache).
    Event,
    /// An HTTP `410` with the `Status` as body.
    Http,
}

type ObjKey = (Resource, String, String);

struct State {
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    /// (rv, resource, event type, object), in order.
    events: Vec<(u64, Resource, &'static str, Value)>,
    /// A watch from a version below this is gone.
    compacted: u64,
    gone_gen: u64,
    drop_gen: u64,
    gone_answer: GoneAnswer,
    /// Open watches send nothing while set.
    hold: bool,
    /// `METHOD path?query` of every request, in order.
    requests: Vec<String>,
    uid: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Starts it on 127.0.0.1 (an ephemeral port) in this process's
    /// network namespace.
    ///
    /// # Panics
    /// If it cannot bind.
    pub fn start() -> FakeApiServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        FakeApiServer::serve(l)
    }

    /// Starts it on 127.0.0.1 inside network namespace `ns` (one the test
    /// created, under `/run/netns`): a thread enters the namespace, binds,
    /// and hands the socket back; a socket stays in the namespace it was
    /// made in, whichever thread uses it.
    ///
    /// # Panics
    /// If the namespace cannot be entered or the socket bound.
    pub fn start_in(ns: &str) -> FakeApiServer {
        let path = format!("/run/netns/{ns}");
        let l = thread::spawn(move || -> std::io::Result<TcpListener> {
            let f = std::fs::File::open(&path)?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd; it changes only this
            // thread's network namespace, and the thread ends right after.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            TcpListener::bind("127.0.0.1:0")
        })
        .join()
        .expect("netns thread")
        .unwrap_or_else(|e| panic!("fake API server in netns {ns}: {e}"));
        FakeApiServer::serve(l)
    }

    fn serve(l: TcpListener) -> FakeApiServer {
        let addr = l.local_addr().expect("local addr");
        l.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 100,
                objects: BTreeMap::new(),
                events: Vec::new(),
                compacted: 0,
                gone_gen: 0,
                drop_gen: 0,
                gone_answer: GoneAnswer::Event,
                hold: false,
                requests: Vec::new(),
                uid: 0,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        thread::spawn(move || handle(conn, &s));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeApiServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig whose current context is this server.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// Creates or replaces `obj` (a Service or EndpointSlice): `ADDED` or
    /// `MODIFIED`. Returns the new resource version.
    ///
    /// # Panics
    /// If `obj` is not a Service or EndpointSlice with a name.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let res = Resource::of_kind(obj["kind"].as_str().unwrap_or("")).expect("kind");
        let name = obj["metadata"]["name"].as_str().expect("name").to_owned();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let mut st = self.shared.lock();
        st.rv += 1;
        st.uid += 1;
        let rv = st.rv;
        let key = (res, ns.clone(), name);
        let old = st.objects.get(&key).map(|o| o["metadata"].clone());
        let meta = &mut obj["metadata"];
        meta["namespace"] = json!(ns);
        meta["resourceVersion"] = json!(rv.to_string());
        meta["uid"] = old
            .as_ref()
            .map(|m| m["uid"].clone())
            .unwrap_or_else(|| json!(format!("00000000-0000-4000-8000-{:012}", st.uid)));
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        let ty = if old.is_some() { "MODIFIED" } else { "ADDED" };
        st.objects.insert(key, obj.clone());
        st.events.push((rv, res, ty, obj));
        drop(st);
        self.shared.changed.notify_all();
        rv
    }

    /// Deletes an object: `DELETED` with its last state. Returns whether it
    /// existed.
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> bool {
        let res = Resource::of_kind(kind).expect("kind");
        let mut st = self.shared.lock();
        let Some(mut obj) = st.objects.remove(&(res, ns.to_owned(), name.to_owned())) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.events.push((rv, res, "DELETED", obj));
        drop(st);
        self.shared.changed.notify_all();
        true
    }

    /// Forgets the history: a watch from any version older than now is
    /// gone (410).
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv;
        st.events.clear();
    }

    /// How a watch from a too-old version is answered from now on.
    pub fn set_gone_answer(&self, a: GoneAnswer) {
        self.shared.lock().gone_answer = a;
    }

    /// Compacts, and sends every open watch an `ERROR` event with a 410
    /// `Status`, then ends it.
    pub fn gone_mid_watch(&self) {
        self.compact();
        self.shared.lock().gone_gen += 1;
        self.shared.changed.notify_all();
    }

    /// Cuts every open watch's connection (no final chunk).
    pub fn drop_watches(&self) {
        self.shared.lock().drop_gen += 1;
        self.shared.changed.notify_all();
    }

    /// While `on`, open watches send nothing (events stay in the history,
    /// unless compacted away): the test changes objects that the watcher
    /// must not see before a 410 or a cut.
    pub fn hold(&self, on: bool) {
        self.shared.lock().hold = on;
        self.shared.changed.notify_all();
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// How many watch requests of `res` were made so far.
    pub fn watch_requests(&self, res: Resource) -> usize {
        let path = match res {
            Resource::Services => "/services?",
            Resource::EndpointSlices => "/endpointslices?",
        };
        self.requests()
            .iter()
            .filter(|r| r.contains(path) && (r.contains("watch=1") || r.contains("watch=true")))
            .count()
    }

    /// How many list (non-watch) requests of `res` were made so far.
    pub fn list_requests(&self, res: Resource) -> usize {
        let path = match res {
            Resource::Services => "/services",
            Resource::EndpointSlices => "/endpointslices",
        };
        self.requests()
            .iter()
            .filter(|r| {
                let p = r.split('?').next().unwrap_or("");
                p.ends_with(path) && !(r.contains("watch=1") || r.contains("watch=true"))
            })
            .count()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A parsed request line.
struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(conn: &TcpStream) -> Option<(String, Request)> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some((
        method,
        Request {
            path: path.to_owned(),
            query,
        },
    ))
}

fn handle(mut conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let Some((method, req)) = read_request(&conn) else {
        return;
    };
    let target = if req.query.is_empty() {
        req.path.clone()
    } else {
        let q: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}?{}", req.path, q.join("&"))
    };
    shared.lock().requests.push(format!("{method} {target}"));
    if method != "GET" {
        return respond(
            &mut conn,
            405,
            &status(405, "MethodNotAllowed", "read only"),
        );
    }
    if let Some(doc) = discovery(&req.path) {
        return respond(&mut conn, 200, &doc);
    }
    let Some((res, ns, name)) = route(&req.path) else {
        return respond(
            &mut conn,
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let watch = matches!(
        req.query.get("watch").map(String::as_str),
        Some("1" | "true")
    );
    if watch {
        return watch_stream(conn, shared, res, ns.as_deref(), &req);
    }
    let st = shared.lock();
    if let Some(name) = name {
        let key = (res, ns.unwrap_or_default(), name.clone());
        let body = match st.objects.get(&key) {
            Some(o) => o.clone(),
            None => {
                drop(st);
                let msg = format!("{}s \"{name}\" not found", res.kind().to_lowercase());
                return respond(&mut conn, 404, &status(404, "NotFound", &msg));
            }
        };
        drop(st);
        return respond(&mut conn, 200, &body);
    }
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((r, n, _), _)| *r == res && ns.as_deref().is_none_or(|ns| ns == n))
        .map(|(_, o)| {
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        })
        .collect();
    let body = json!({
        "apiVersion": res.api_version(),
        "kind": format!("{}List", res.kind()),
        "metadata": {"resourceVersion": st.rv.to_string()},
        "items": items,
    });
    drop(st);
    respond(&mut conn, 200, &body)
}

/// The resource, namespace and name a path names.
fn route(path: &str) -> Option<(Resource, Option<String>, Option<String>)> {
    let rest = if let Some(r) = path.strip_prefix("/api/v1/") {
        r
    } else {
        path.strip_prefix("/apis/discovery.k8s.io/v1/")?
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let (ns, plural, name) = match parts.as_slice() {
        [plural] => (None, *plural, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => return None,
    };
    let res = match (path.starts_with("/api/v1/"), plural) {
        (true, "services") => Resource::Services,
        (false, "endpointslices") => Resource::EndpointSlices,
        _ => return None,
    };
    Some((res, ns.map(str::to_owned), name.map(str::to_owned)))
}

fn watch_stream(
    mut conn: TcpStream,
    shared: &Shared,
    res: Resource,
    ns: Option<&str>,
    req: &Request,
) {
    let from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = req.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let deadline = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(|t| Instant::now() + Duration::from_secs(t));
    let st = shared.lock();
    let mut sent = from;
    let mut initial = Vec::new();
    if from == 0 {
        // "Start at most recent": every object as ADDED, then changes.
        sent = st.rv;
        initial = st
            .objects
            .iter()
            .filter(|((r, n, _), _)| *r == res && ns.is_none_or(|ns| ns == n))
            .map(|(_, o)| json!({"type": "ADDED", "object": o}))
            .collect();
    } else if from < st.compacted {
        let gone = gone_status(from, st.compacted);
        let answer = st.gone_answer;
        drop(st);
        if answer == GoneAnswer::Http {
            return respond(&mut conn, 410, &gone);
        }
        let _ = start_chunked(&mut conn)
            .and_then(|()| chunk(&mut conn, &json!({"type": "ERROR", "object": gone})))
            .and_then(|()| conn.write_all(b"0\r\n\r\n"));
        return;
    }
    let (gone_gen, drop_gen) = (st.gone_gen, st.drop_gen);
    drop(st);
    if start_chunked(&mut conn).is_err() {
        return;
    }
    for ev in &initial {
        if chunk(&mut conn, ev).is_err() {
            return;
        }
    }
    let mut last_sent = Instant::now();
    loop {
        let st = shared.lock();
        if shared.stop.load(Ordering::Relaxed) || st.drop_gen != drop_gen {
            drop(st);
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        if st.gone_gen != gone_gen {
            let gone = gone_status(sent, st.compacted);
            drop(st);
            let _ = chunk(&mut conn, &json!({"type": "ERROR", "object": gone}))
                .and_then(|()| conn.write_all(b"0\r\n\r\n"));
            return;
        }
        let out: Vec<Value> = st
            .events
            .iter()
            .filter(|(rv, r, _, o)| {
                !st.hold
                    && *rv > sent
                    && *r == res
                    && ns.is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            })
            .map(|(_, _, ty, o)| json!({"type": ty, "object": o}))
            .collect();
        let rv = if st.hold { sent } else { st.rv };
        if out.is_empty() {
            let (g, _) = shared
                .changed
                .wait_timeout(st, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner());
            drop(g);
        } else {
            drop(st);
        }
        sent = sent.max(rv);
        for ev in &out {
            if chunk(&mut conn, ev).is_err() {
                return;
            }
            last_sent = Instant::now();
        }
        if bookmarks && last_sent.elapsed() >= Duration::from_secs(1) {
            let bm = json!({"type": "BOOKMARK", "object": {
                "kind": res.kind(), "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": sent.to_string()}}});
            if chunk(&mut conn, &bm).is_err() {
                return;
            }
            last_sent = Instant::now();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = conn.write_all(b"0\r\n\r\n");
            return;
        }
    }
}

fn gone_status(asked: u64, oldest: u64) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("too old resource version: {asked} ({oldest})"),
           "reason": "Expired", "code": 410})
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn start_chunked(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
}

fn chunk(conn: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let line = format!("{v}\n");
    write!(conn, "{:x}\r\n{line}\r\n", line.len())?;
    conn.flush()
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        _ => "Error",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = conn.flush();
}

/// The discovery documents kubectl reads before a `get`.
fn discovery(path: &str) -> Option<Value> {
    let resource = |name: &str, kind: &str, short: &[&str]| {
        json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": true,
               "kind": kind, "verbs": ["get", "list", "watch"], "shortNames": short})
    };
    Some(match path {
        "/version" => json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-fake",
                             "platform": "linux/amd64"}),
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
            "name": "discovery.k8s.io",
            "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}}]}),
        "/api/v1" => json!({"kind": "APIResourceList", "groupVersion": "v1",
                            "resources": [resource("services", "Service", &["svc"])]}),
        "/apis/discovery.k8s.io/v1" => json!({"kind": "APIResourceList",
            "groupVersion": "discovery.k8s.io/v1",
            "resources": [resource("endpointslices", "EndpointSlice", &[])]}),
        _ => return None,
    })
}
