//! A small HTTP/1.1 client over the API's Unix socket (hyper).

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::CliError;

/// One request; the answer's status and body.
///
/// # Errors
/// [`CliError::Connect`] when the socket cannot be reached,
/// [`CliError::Http`] when the exchange fails.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), CliError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| CliError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    let http = |e: &dyn std::fmt::Display| CliError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes();
    Ok((status, body))
}
