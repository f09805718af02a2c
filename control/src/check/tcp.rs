//! TCP connect check: up when the three-way handshake completes within the
//! timeout (keepalived's TCP_CHECK). The connection is closed at once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::ProbeError;

/// Connects to `addr` within `timeout`.
///
/// # Errors
/// [`ProbeError::Timeout`] or [`ProbeError::Connect`].
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    connect(addr, timeout).await.map(drop)
}

/// The connection, for the HTTP check.
pub(super) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProbeError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ProbeError::Timeout(timeout)),
        Ok(Err(e)) => Err(ProbeError::Connect(e.kind())),
        Ok(Ok(s)) => Ok(s),
    }
}
