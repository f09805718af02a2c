//! The cluster watch: Services and EndpointSlices followed from a
//! Kubernetes API server and written to the store as their own source.
//!
//! kube-rs's [`watcher`] does the protocol: a list, then a watch from the
//! list's resource version with bookmarks; on a `410 Gone` (the server
//! compacted past the version) a relist; on a dropped connection a new
//! watch from the last version seen, with exponential backoff on errors.
//! Each event becomes a store batch through the one write path
//! ([`Reconciler::apply`]), on the daemon's runtime (the compile runs on
//! its blocking pool, like the API's writes). The rules of what is written
//! (owners, slices held until their Service) are in [`view`].
//!
//! A relist arrives as `Init`, `InitApply`… and `InitDone`: the listed
//! objects are buffered and, at `InitDone`, replace the view's objects of
//! that kind, so an object deleted while the watch was broken is deleted
//! here too.
//!
//! An object the compile refuses is logged with its name and counted
//! (`cluster_refused`); it is not written and the rest keep flowing: a
//! batch that fails is retried write by write.
//!
//! Pods are not watched. A Service with a selector gets its endpoints from
//! the EndpointSlices the cluster's EndpointSlice controller writes for it
//! (kube-proxy does not watch Pods either), and following every Pod of a
//! cluster would cost far more than the slices that summarise them.
//!
//! The watch starts only when asked: `--kubeconfig PATH`, or
//! `--cluster-watch` to find the cluster as kubectl does (the in-cluster
//! service account when `KUBERNETES_SERVICE_HOST` is set, else
//! `$KUBECONFIG` or `~/.kube/config`). A host where an operator happens to
//! have a kubeconfig must not start following that cluster by itself.

pub mod convert;
pub mod view;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, watcher, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::daemon::SharedReconciler;
use crate::reconcile::Reconciler;
use crate::store::{Batch, EventType, Key, Kind};
use view::{plan, View};

/// The owner (field manager) of the objects the cluster wrote.
pub const OWNER: &str = "sluice-cluster-watch";

/// Where the cluster is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterSource {
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// As kubectl finds it: in-cluster, `$KUBECONFIG`, `~/.kube/config`.
    Infer,
}

/// Why the watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig file does not load.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: kube::config::KubeconfigError,
    },
    /// No cluster configuration was found (`--cluster-watch`).
    #[error("--cluster-watch: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built (TLS, proxy settings).
    #[error("cluster client: {0}")]
    Client(#[from] kube::Error),
}

/// The watch's counters, printed at shutdown (`counter cluster_NAME N`).
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Watch events received (relisted objects included).
    pub events: AtomicU64,
    /// Store writes committed.
    pub writes: AtomicU64,
    /// Objects the compile (or conversion) refused.
    pub refused: AtomicU64,
    /// Keys left alone because another source owns them.
    pub foreign: AtomicU64,
    /// Complete lists applied (the first one and every relist).
    pub lists: AtomicU64,
    /// Watch errors (each followed by a retry with backoff).
    pub errors: AtomicU64,
}

impl WatchStats {
    /// The counters by name.
    pub fn named(&self) -> [(&'static str, u64); 6] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("cluster_events", g(&self.events)),
            ("cluster_writes", g(&self.writes)),
            ("cluster_refused", g(&self.refused)),
            ("cluster_foreign", g(&self.foreign)),
            ("cluster_lists", g(&self.lists)),
            ("cluster_errors", g(&self.errors)),
        ]
    }
}

/// A client for the cluster `source` names.
///
/// # Errors
/// [`ClusterError`] when its configuration does not load.
pub async fn client(source: &ClusterSource) -> Result<Client, ClusterError> {
    let config = match source {
        ClusterSource::Kubeconfig(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ClusterError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ClusterError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        ClusterSource::Infer => kube::Config::infer().await?,
    };
    info!("cluster watch: API server {}", config.cluster_url);
    Ok(Client::try_from(config)?)
}

type Stream<K> = BoxStream<'static, Result<WatchEvent<K>, watcher::Error>>;

fn stream<K>(client: &Client) -> Stream<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed()
}

/// One kind's watch and its relist buffer.
struct Follow<K> {
    kind: Kind,
    stream: Stream<K>,
    relist: Option<Vec<(Key, serde_json::Value)>>,
}

impl<K> Follow<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + 'static,
{
    fn new(kind: Kind, client: &Client) -> Self {
        Follow {
            kind,
            stream: stream(client),
            relist: None,
        }
    }

    /// Folds one watcher item into the view; returns the keys to re-plan.
    fn on(
        &mut self,
        item: Result<WatchEvent<K>, watcher::Error>,
        view: &Mutex<View>,
        client: &Client,
        stats: &WatchStats,
    ) -> Vec<Key> {
        let ev = match item {
            Ok(ev) => ev,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!("cluster watch of {}: {e}; retrying", self.kind.plural());
                if is_gone(&e) {
                    // A watch refused with an HTTP 410 leaves kube-rs's
                    // watcher retrying the same version; start over.
                    info!("cluster watch of {}: relisting", self.kind.plural());
                    self.stream = stream(client);
                    self.relist = None;
                }
                return Vec::new();
            }
        };
        let mut view = view.lock().unwrap_or_else(|p| p.into_inner());
        match ev {
            WatchEvent::Init => {
                self.relist = Some(Vec::new());
                Vec::new()
            }
            WatchEvent::InitApply(obj) => {
                stats.events.fetch_add(1, Ordering::Relaxed);
                let kv = self.convert(&obj, stats);
                if let (Some(buf), Some(kv)) = (&mut self.relist, kv) {
                    buf.push(kv);
                }
                Vec::new()
            }
            WatchEvent::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                stats.lists.fetch_add(1, Ordering::Relaxed);
                info!(
                    "cluster watch: {} {} listed",
                    listed.len(),
                    self.kind.plural()
                );
                view.replace_kind(self.kind, listed)
            }
            WatchEvent::Apply(obj) => {
                stats.events.fetch_add(1, Ordering::Relaxed);
                match self.convert(&obj, stats) {
                    Some((k, v)) => view.upsert(k, v),
                    None => Vec::new(),
                }
            }
            WatchEvent::Delete(obj) => {
                stats.events.fetch_add(1, Ordering::Relaxed);
                match self.convert(&obj, stats) {
                    Some((k, _)) => view.remove(&k),
                    None => Vec::new(),
                }
            }
        }
    }

    fn convert(&self, obj: &K, stats: &WatchStats) -> Option<(Key, serde_json::Value)> {
        match convert::to_store(self.kind, obj) {
            Ok(kv) => Some(kv),
            Err(e) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                warn!("cluster object refused: {e}");
                None
            }
        }
    }
}

/// Whether a watcher error is a `410 Gone` answer to a watch request.
fn is_gone(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410)
}

/// Follows the cluster until the task is aborted.
pub async fn follow(client: Client, rec: SharedReconciler, stats: Arc<WatchStats>) {
    let view = Arc::new(Mutex::new(View::default()));
    let mut store_events = rec.lock().unwrap_or_else(|p| p.into_inner()).subscribe();
    let mut services = Follow::<Service>::new(Kind::Service, &client);
    let mut slices = Follow::<EndpointSlice>::new(Kind::EndpointSlice, &client);
    loop {
        let keys = tokio::select! {
            Some(item) = services.stream.next() => services.on(item, &view, &client, &stats),
            Some(item) = slices.stream.next() => slices.on(item, &view, &client, &stats),
            ev = store_events.recv() => match ev {
                // Another source let a key of the view go, or wrote a
                // Service that held-back slices wait for: re-plan those.
                Ok(ev) => {
                    let v = view.lock().unwrap_or_else(|p| p.into_inner());
                    let mut keys = Vec::new();
                    if ev.kind == EventType::Deleted && v.get(&ev.key).is_some() {
                        keys.push(ev.key.clone());
                    }
                    if ev.key.kind == Kind::Service {
                        keys.extend(v.with_slices(&ev.key).into_iter().skip(1));
                    }
                    keys
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!("cluster watch: {n} store events missed; re-planning everything");
                    let v = view.lock().unwrap_or_else(|p| p.into_inner());
                    Kind::ALL.into_iter().flat_map(|k| v.keys(k).cloned().collect::<Vec<_>>()).collect()
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if keys.is_empty() {
            continue;
        }
        let (rec, view, stats) = (rec.clone(), view.clone(), stats.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let mut r = rec.lock().unwrap_or_else(|p| p.into_inner());
            let v = view.lock().unwrap_or_else(|p| p.into_inner());
            sync(&mut r, &v, &keys, &stats);
        })
        .await;
    }
}

/// Writes what the view wants for `keys`; a refused batch is retried write
/// by write, so that one bad object stops only itself.
pub fn sync(r: &mut Reconciler, view: &View, keys: &[Key], stats: &WatchStats) {
    let p = plan(view, keys, r.store());
    for (key, owner) in &p.foreign {
        stats.foreign.fetch_add(1, Ordering::Relaxed);
        warn!("cluster {key} not applied: {owner} owns it here");
    }
    for key in &p.held {
        debug!("cluster {key} held until its Service is applied");
    }
    if p.batch.writes.is_empty() {
        return;
    }
    let n = p.batch.writes.len();
    match r.apply(p.batch.clone()) {
        Ok(a) => {
            stats.writes.fetch_add(n as u64, Ordering::Relaxed);
            info!(
                "cluster change applied version={} services={} objects_changed={}",
                a.commit.output.epoch,
                a.commit.output.services,
                a.commit.events.len()
            );
        }
        Err(_) if n > 1 => {
            for w in p.batch.writes {
                let mut one = Batch::default();
                one.push(w.clone());
                match r.apply(one) {
                    Ok(_) => {
                        stats.writes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => refuse(&w, &e.to_string(), stats),
                }
            }
        }
        Err(e) => refuse(&p.batch.writes[0], &e.to_string(), stats),
    }
}

fn refuse(w: &crate::store::Write, why: &str, stats: &WatchStats) {
    stats.refused.fetch_add(1, Ordering::Relaxed);
    let what = match w {
        crate::store::Write::Upsert { object, .. } => match Key::of(object) {
            Ok(k) => k.to_string(),
            Err(_) => convert::name_of(object),
        },
        crate::store::Write::Delete { key, .. } => format!("delete of {key}"),
    };
    warn!("cluster object refused: {what}: {why}");
}
