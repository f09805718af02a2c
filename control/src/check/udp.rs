//! UDP check: one datagram from a connected socket. With an expected
//! prefix, up when a reply that starts with it arrives within the timeout;
//! without, up unless the kernel reports an ICMP port unreachable (a
//! connected UDP socket's `ECONNREFUSED`) within the timeout, as
//! keepalived's UDP_CHECK without `require_reply`. An ICMP error is a
//! failure in both cases.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::ProbeError;

/// Sends `payload` to `addr` and waits for a reply starting with `expect`.
///
/// # Errors
/// [`ProbeError::Refused`] on an ICMP port unreachable,
/// [`ProbeError::Timeout`] when an expected reply does not come,
/// [`ProbeError::BadReply`] for a reply with another start,
/// [`ProbeError::Io`] otherwise.
pub async fn probe(
    addr: SocketAddr,
    payload: &[u8],
    expect: Option<&[u8]>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => ProbeError::Refused,
        k => ProbeError::Io(k),
    };
    let s = UdpSocket::bind(local).await.map_err(io)?;
    s.connect(addr).await.map_err(io)?;
    s.send(payload).await.map_err(io)?;
    let mut buf = [0u8; 2048];
    match (
        tokio::time::timeout(timeout, s.recv(&mut buf)).await,
        expect,
    ) {
        (Ok(Err(e)), _) => Err(io(e)),
        (Err(_), None) => Ok(()),
        (Err(_), Some(_)) => Err(ProbeError::Timeout(timeout)),
        (Ok(Ok(_)), None) => Ok(()),
        (Ok(Ok(n)), Some(want)) if buf[..n].starts_with(want) => Ok(()),
        (Ok(Ok(n)), Some(_)) => Err(ProbeError::BadReply(
            String::from_utf8_lossy(&buf[..n.min(64)]).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_prefix_and_port_unreachable() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let srv = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let a = srv.local_addr().unwrap();
            let echo = tokio::spawn(async move {
                let mut b = [0u8; 64];
                for reply in [&b"pong from b1"[..], b"nope"] {
                    let (n, from) = srv.recv_from(&mut b).await.unwrap();
                    assert_eq!(&b[..n], b"ping");
                    srv.send_to(reply, from).await.unwrap();
                }
                srv
            });
            let t = Duration::from_millis(500);
            assert_eq!(probe(a, b"ping", Some(b"pong"), t).await, Ok(()));
            assert!(matches!(
                probe(a, b"ping", Some(b"pong"), t).await,
                Err(ProbeError::BadReply(_))
            ));
            let srv = echo.await.unwrap();
            // Bound but silent: no reply in time.
            assert_eq!(
                probe(a, b"ping", Some(b"pong"), t).await,
                Err(ProbeError::Timeout(t))
            );
            assert_eq!(probe(a, b"ping", None, t).await, Ok(()));
            drop(srv);
            // Closed: the kernel answers ICMP port unreachable.
            assert_eq!(
                probe(a, b"ping", Some(b"pong"), t).await,
                Err(ProbeError::Refused)
            );
            assert_eq!(probe(a, b"ping", None, t).await, Err(ProbeError::Refused));
        });
    }
}
