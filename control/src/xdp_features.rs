//! Whether an interface accepts frames that XDP redirects into it, from
//! the kernel's `netdev` generic-netlink family (`NETDEV_CMD_DEV_GET`,
//! attribute `xdp-features`, flag `NETDEV_XDP_ACT_NDO_XMIT`; kernel ≥ 6.3).
//!
//! The fast path ([`sluice_dataplane::fastpath`]) `XDP_REDIRECT`s frames to
//! their egress interface. A veth delivers them only when its peer runs
//! NAPI (an XDP program on the peer, or GRO on it); otherwise the kernel
//! drops them at the redirect. veth advertises exactly that as
//! `NDO_XMIT` on the sending end (`veth_set_xdp_features`), so the daemon
//! asks before it lets the fast path send to a link, and sends the flows
//! of a link without it through the AF_XDP workers.
//!
//! Raw messages (no generic-netlink crate): resolve the family id with
//! `CTRL_CMD_GETFAMILY`, then ask for the device by ifindex.

use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr as NlAddr};

/// `NETDEV_XDP_ACT_NDO_XMIT` (include/uapi/linux/netdev.h).
pub const XDP_ACT_NDO_XMIT: u64 = 4;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;

/// Why the features could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    /// The socket failed.
    #[error("generic netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused the request (no `netdev` family before 6.3).
    #[error("{request}: kernel error {errno}")]
    Kernel {
        /// What was asked.
        request: &'static str,
        /// The errno.
        errno: i32,
    },
    /// The answer lacks the attribute or is malformed.
    #[error("{request}: no {what} in the answer")]
    Missing {
        /// What was asked.
        request: &'static str,
        /// The attribute.
        what: &'static str,
    },
}

/// The `xdp-features` bit set of interface `ifindex`.
///
/// # Errors
/// [`FeaturesError`] when the socket, the family or the device cannot be
/// read.
pub fn xdp_features(ifindex: u32) -> Result<u64, FeaturesError> {
    let family = family_id("netdev")?;
    let req = message(
        family,
        NETDEV_CMD_DEV_GET,
        &attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
    );
    let reply = exchange(&req, "netdev dev-get")?;
    let a = find_attr(&reply, NETDEV_A_DEV_XDP_FEATURES).ok_or(FeaturesError::Missing {
        request: "netdev dev-get",
        what: "xdp-features",
    })?;
    let mut b = [0u8; 8];
    let n = a.len().min(8);
    b[..n].copy_from_slice(&a[..n]);
    Ok(u64::from_ne_bytes(b))
}

fn family_id(name: &str) -> Result<u16, FeaturesError> {
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    let req = message(
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        &attr(CTRL_ATTR_FAMILY_NAME, &n),
    );
    let reply = exchange(&req, "ctrl getfamily")?;
    find_attr(&reply, CTRL_ATTR_FAMILY_ID)
        .filter(|a| a.len() >= 2)
        .map(|a| u16::from_ne_bytes([a[0], a[1]]))
        .ok_or(FeaturesError::Missing {
            request: "ctrl getfamily",
            what: "family id",
        })
}

/// One netlink attribute, padded to 4 bytes.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut v = Vec::with_capacity((len + 3) & !3);
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(payload);
    v.resize((len + 3) & !3, 0);
    v
}

/// A generic-netlink request: nlmsghdr, genlmsghdr (version 1), attributes.
fn message(family: u16, cmd: u8, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(len as u32).to_ne_bytes());
    v.extend_from_slice(&family.to_ne_bytes());
    v.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    v.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    v.extend_from_slice(&0u32.to_ne_bytes()); // port
    v.extend_from_slice(&[cmd, 1, 0, 0]);
    v.extend_from_slice(attrs);
    v
}

/// The attribute `kind` of the first message of `reply` (after its
/// nlmsghdr and genlmsghdr), if any.
fn find_attr(reply: &[u8], kind: u16) -> Option<&[u8]> {
    let len = u32::from_ne_bytes(reply.get(0..4)?.try_into().ok()?) as usize;
    let msg = reply.get(..len.min(reply.len()))?;
    let mut off = 20;
    while off + 4 <= msg.len() {
        let alen = usize::from(u16::from_ne_bytes([msg[off], msg[off + 1]]));
        let akind = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]) & 0x3fff;
        if alen < 4 || off + alen > msg.len() {
            return None;
        }
        if akind == kind {
            return Some(&msg[off + 4..off + alen]);
        }
        off += (alen + 3) & !3;
    }
    None
}

fn exchange(req: &[u8], request: &'static str) -> Result<Vec<u8>, FeaturesError> {
    let mut sock = Socket::new(NETLINK_GENERIC).map_err(FeaturesError::Socket)?;
    sock.bind_auto().map_err(FeaturesError::Socket)?;
    sock.connect(&NlAddr::new(0, 0))
        .map_err(FeaturesError::Socket)?;
    sock.send(req, 0).map_err(FeaturesError::Socket)?;
    let (data, _) = sock.recv_from_full().map_err(FeaturesError::Socket)?;
    if data.len() >= 20 && u16::from_ne_bytes([data[4], data[5]]) == NLMSG_ERROR {
        let errno = i32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
        return Err(FeaturesError::Kernel {
            request,
            errno: -errno,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_found() {
        let a = attr(7, b"abc");
        assert_eq!(a.len(), 8);
        assert_eq!(&a[0..2], &7u16.to_ne_bytes());
        assert_eq!(&a[2..4], &7u16.to_ne_bytes());
        assert_eq!(&a[4..], b"abc\0");
        let mut attrs = attr(1, &5u32.to_ne_bytes());
        attrs.extend(attr(3, &0x15u64.to_ne_bytes()));
        let m = message(0x20, 1, &attrs);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(find_attr(&m, 3), Some(&0x15u64.to_ne_bytes()[..]));
        assert_eq!(find_attr(&m, 1), Some(&5u32.to_ne_bytes()[..]));
        assert_eq!(find_attr(&m, 9), None);
    }

    #[test]
    fn a_truncated_attribute_is_not_read() {
        let mut m = message(0x20, 1, &attr(3, &[1, 2, 3, 4, 5, 6, 7, 8]));
        m.truncate(m.len() - 2);
        let n = m.len() as u32;
        m[0..4].copy_from_slice(&n.to_ne_bytes());
        assert_eq!(find_attr(&m, 3), None);
    }
}
