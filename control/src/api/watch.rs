//! `?watch=true`: a chunked stream of `{"type":"ADDED","object":{...}}`
//! lines, as kube-apiserver writes them.
//!
//! With a `resourceVersion`, the stream starts with the stored history
//! after it (an `ERROR` event with a 410 `Status` if that is older than the
//! history, as the real server does, and the client relists); without one
//! (or with "0"), with an ADDED event for every object that matches.
//! Then every new event, until `timeoutSeconds` or the client goes away.
//! History and subscription are taken under one lock, so no event falls
//! between them.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::objects::{Filter, Params};
use super::status::{self, Status};
use crate::daemon::SharedReconciler;
use crate::store::{Event, EventType};

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// The watch response.
pub fn serve(rec: SharedReconciler, filter: Filter, q: &Params) -> Response {
    let from = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return Status::bad_request(format!(
                    "resourceVersion: {v:?} is not a resource version"
                ))
                .into_response()
            }
        },
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (first, mut rx, gone) = {
        let r = rec.lock().unwrap_or_else(|p| p.into_inner());
        let rx = r.subscribe();
        let store = r.store();
        let mut gone = false;
        let first: Vec<Bytes> = match from {
            None => store
                .objects()
                .iter()
                .filter(|(k, s)| filter.matches(k, &s.object))
                .map(|(_, s)| line(EventType::Added.as_str(), &s.object))
                .collect(),
            Some(n) => match store.events_since(n) {
                Ok(events) => events
                    .iter()
                    .filter(|e| filter.matches(&e.key, &e.object))
                    .map(|e| line(e.kind.as_str(), &e.object))
                    .collect(),
                Err(e) => {
                    gone = true;
                    vec![line("ERROR", &status::gone(&e.to_string()).body())]
                }
            },
        };
        (first, rx, gone)
    };
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        for l in first {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok(),
                    None => Some(rx.recv().await),
                }
            };
            tokio::select! {
                ev = next => match ev {
                    None => return,
                    Some(Ok(Event { kind, key, object, .. })) => {
                        if filter.matches(&key, &object)
                            && tx.send(Ok(line(kind.as_str(), &object))).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher that fell behind ends; the client resumes
                    // from its last resource version.
                    Some(Err(RecvError::Lagged(_))) | Some(Err(RecvError::Closed)) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream_from(body_rx);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// An mpsc receiver as a stream.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
