//! The API server: Kubernetes REST shapes over a Unix socket (and,
//! optionally, TCP), so that kubectl and `sluice apply/get/delete` drive the
//! live store.
//!
//! * `--api-socket PATH` (default `/run/sluice/sluice.sock`): the directory
//!   is created, a stale socket removed, the socket made mode 0600: who can
//!   open it is root's choice, as with the Docker socket.
//! * `--api-listen ADDR:PORT`: TCP for kubectl (`kubectl --server
//!   http://127.0.0.1:PORT`). A loopback address needs no token; any other
//!   refuses to start unless `--api-token-file` is given, and then every
//!   request must carry `Authorization: Bearer TOKEN` (401 otherwise).
//! * Request bodies are limited to `--api-max-body` bytes (413 above).
//!
//! Every write goes through the [`Reconciler`] and is answered only after
//! the workers have loaded the new table; single-object writes that arrive
//! while another commits are committed together ([`group`]). Errors are
//! Kubernetes `Status` objects ([`status`]).

pub mod checks;
pub mod describe;
pub mod discovery;
pub mod group;
pub mod ipvs;
pub mod ipvs_conns;
pub mod objects;
pub mod patch;
pub mod status;
pub mod watch;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use crate::daemon::SharedReconciler;

/// Default Unix socket.
pub const DEFAULT_SOCKET: &str = "/run/sluice/sluice.sock";
/// Default request body limit (3 MiB, kube-apiserver's).
pub const DEFAULT_MAX_BODY: usize = 3 << 20;

/// Where and how the API listens.
#[derive(Clone, Debug)]
pub struct ApiOpts {
    /// The Unix socket.
    pub socket: PathBuf,
    /// Optional TCP address.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token TCP requests must carry.
    pub token_file: Option<PathBuf>,
    /// Largest request body, in bytes.
    pub max_body: usize,
}

impl Default for ApiOpts {
    fn default() -> ApiOpts {
        ApiOpts {
            socket: PathBuf::from(DEFAULT_SOCKET),
            listen: None,
            token_file: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A non-loopback TCP address without a token.
    #[error("--api-listen {0}: not a loopback address, so requests must be authenticated: give --api-token-file FILE")]
    TokenRequired(SocketAddr),
    /// The token file is unreadable or empty.
    #[error("--api-token-file {}: {reason}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The socket could not be created.
    #[error("{}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TCP address could not be bound.
    #[error("--api-listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

impl ApiOpts {
    /// Checks the options that need no privileges (token rules).
    ///
    /// # Errors
    /// [`ApiError::TokenRequired`], [`ApiError::Token`].
    pub fn check(&self) -> Result<(), ApiError> {
        if let Some(addr) = self.listen {
            if !addr.ip().is_loopback() && self.token_file.is_none() {
                return Err(ApiError::TokenRequired(addr));
            }
        }
        self.token().map(|_| ())
    }

    fn token(&self) -> Result<Option<String>, ApiError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let bad = |reason: String| ApiError::Token {
            path: path.clone(),
            reason,
        };
        let t = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let t = t.trim();
        if t.is_empty() {
            return Err(bad("empty".into()));
        }
        Ok(Some(t.to_owned()))
    }
}

/// The bound sockets.
pub struct Listeners {
    unix: UnixListener,
    tcp: Option<(TcpListener, Option<Arc<str>>)>,
}

/// Binds the sockets (before the data path starts, so that a bad address
/// fails the start).
///
/// # Errors
/// [`ApiError`].
pub async fn bind(opts: &ApiOpts) -> Result<Listeners, ApiError> {
    let sock_err = |source| ApiError::Socket {
        path: opts.socket.clone(),
        source,
    };
    if let Some(dir) = opts.socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(sock_err)?;
    }
    remove_stale(&opts.socket).map_err(sock_err)?;
    // Created 0600 from the start (umask), then set explicitly: no window
    // in which another user can connect.
    // SAFETY: umask has no preconditions and cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let unix = UnixListener::bind(&opts.socket);
    // SAFETY: as above; restores the process's mask.
    unsafe { libc::umask(old) };
    let unix = unix.map_err(sock_err)?;
    std::fs::set_permissions(&opts.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(sock_err)?;
    info!("API on unix:{}", opts.socket.display());
    let tcp = match opts.listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ApiError::Listen { addr, source })?;
            let token = opts.token()?.map(Arc::from);
            info!(
                "API on http://{} ({})",
                l.local_addr().unwrap_or(addr),
                if token.is_some() {
                    "bearer token required"
                } else {
                    "loopback, no token"
                }
            );
            Some((l, token))
        }
        None => None,
    };
    Ok(Listeners { unix, tcp })
}

/// Removes a socket left by a previous run; refuses to remove anything
/// that is not a socket, or one that another process still serves.
fn remove_stale(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process serves this socket (another sluice?): stop it or give --api-socket",
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not a socket",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the socket at shutdown (the listener is closed by then).
pub fn remove_socket(opts: &ApiOpts) {
    if let Err(e) = std::fs::remove_file(&opts.socket) {
        warn!("removing {}: {e}", opts.socket.display());
    }
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The reconciler.
    pub rec: SharedReconciler,
    /// The single-object writes waiting for it ([`group`]).
    pub queue: Arc<group::Queue>,
}

/// The routes.
pub fn router(rec: SharedReconciler, max_body: usize) -> Router {
    Router::new()
        .merge(discovery::routes())
        .merge(objects::routes())
        .merge(ipvs::routes())
        .merge(ipvs_conns::routes())
        .route(STATS_PATH, axum::routing::get(stats))
        .merge(checks::routes())
        .merge(describe::routes())
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(AppState {
            queue: group::Queue::start(rec.clone()),
            rec,
        })
}

/// The stats route: per service port, per backend and per worker
/// figures ([`crate::stats::Report`]), for `sluice stats` and ipvsadm.
pub const STATS_PATH: &str = "/apis/sluice.dev/v1/stats";

async fn stats(State(s): State<AppState>) -> Response {
    let rec = s.rec.clone();
    let report = tokio::task::spawn_blocking(move || {
        let stats = {
            let mut r = rec.lock().unwrap_or_else(|p| p.into_inner());
            r.publisher().stats().cloned()
        };
        stats.map(|s| s.report())
    })
    .await
    .ok()
    .flatten();
    match report {
        Some(r) => axum::Json(r).into_response(),
        None => status::Status::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "no data path to report on".into(),
        )
        .into_response(),
    }
}

async fn require_token(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        status::Status::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        )
        .into_response()
    }
}

/// Compares without an early exit, so the time taken says nothing about
/// how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the API until the task is dropped.
pub async fn serve(listeners: Listeners, rec: SharedReconciler, opts: ApiOpts) {
    let app = router(rec, opts.max_body);
    let unix = axum::serve(listeners.unix, app.clone());
    match listeners.tcp {
        Some((tcp, token)) => {
            let app = match token {
                Some(t) => app.layer(middleware::from_fn_with_state(t, require_token)),
                None => app,
            };
            let tcp = axum::serve(tcp, app);
            let (a, b) = tokio::join!(
                std::future::IntoFuture::into_future(unix),
                std::future::IntoFuture::into_future(tcp)
            );
            for r in [a, b] {
                if let Err(e) = r {
                    warn!("API server: {e}");
                }
            }
        }
        None => {
            if let Err(e) = unix.await {
                warn!("API server: {e}");
            }
        }
    }
}
