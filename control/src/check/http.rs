//! HTTP GET check (keepalived's HTTP_GET with `status_code`): an HTTP/1.0
//! request for the path, `Connection: close`; up when the status line's
//! code is the expected one. Only the status line is read (at most
//! [`MAX_STATUS_LINE`] bytes), and the whole exchange must fit in the
//! timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ProbeError;

/// The longest status line read.
pub const MAX_STATUS_LINE: usize = 1024;

/// GETs `path` from `addr` and compares the status with `want`.
///
/// # Errors
/// [`ProbeError::Timeout`], [`ProbeError::Connect`], [`ProbeError::Io`],
/// [`ProbeError::BadReply`] for a reply that is not HTTP, or
/// [`ProbeError::Status`] for another status.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    want: u16,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let exchange = async {
        let mut s = super::tcp::connect(addr, timeout).await?;
        let host = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: sluice-check\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| ProbeError::Io(e.kind()))?;
        let line = read_status_line(&mut s).await?;
        match status_code(&line) {
            Some(code) if code == want => Ok(()),
            Some(code) => Err(ProbeError::Status { got: code, want }),
            None => Err(ProbeError::BadReply(line)),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

async fn read_status_line(s: &mut tokio::net::TcpStream) -> Result<String, ProbeError> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| ProbeError::Io(e.kind()))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..end.min(MAX_STATUS_LINE)]);
    Ok(line.trim_end().to_owned())
}

/// The code of a status line `HTTP/x.y NNN reason`.
pub fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot server on a local socket that answers `reply` to the
    /// first request and hands back what it was sent.
    async fn serve_once(reply: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        (addr, h)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn the_expected_status_is_up_another_is_down() {
        rt().block_on(async {
            let t = Duration::from_secs(2);
            let (a, h) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
            assert_eq!(probe(a, "/healthz", 200, t).await, Ok(()));
            let req = h.await.unwrap();
            assert!(req.starts_with("GET /healthz HTTP/1.0\r\n"), "{req:?}");
            assert!(req.contains("\r\nHost: 127.0.0.1\r\n"), "{req:?}");

            let (a, _h) = serve_once("HTTP/1.0 503 Service Unavailable\r\n\r\n").await;
            assert_eq!(
                probe(a, "/", 200, t).await,
                Err(ProbeError::Status {
                    got: 503,
                    want: 200
                })
            );
            let (a, _h) = serve_once("SSH-2.0-OpenSSH\r\n").await;
            assert!(matches!(
                probe(a, "/", 200, t).await,
                Err(ProbeError::BadReply(_))
            ));
        });
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        rt().block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            // Accepted by the kernel's backlog, never answered.
            let t = Duration::from_millis(200);
            assert_eq!(probe(a, "/", 200, t).await, Err(ProbeError::Timeout(t)));
            drop(l);
            assert!(matches!(
                probe(a, "/", 200, t).await,
                Err(ProbeError::Connect(std::io::ErrorKind::ConnectionRefused))
            ));
        });
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 404"), Some(404));
        assert_eq!(status_code("HTTP/1.1 20 OK"), None);
        assert_eq!(status_code("FTP 200 OK"), None);
        assert_eq!(status_code(""), None);
    }
}
