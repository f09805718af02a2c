//! Port names from `/etc/services`, as ipvsadm's `getservbyname` and
//! `getservbyport` read them (`-t 198.18.0.1:http`; listings without `-n`).

use sluice_dataplane::types::proto;

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::UDP => "udp",
        proto::SCTP => "sctp",
        _ => "tcp",
    }
}

/// `(name, port, protocol)` of every entry, aliases included.
fn entries() -> Vec<(String, u16, String)> {
    let text = std::fs::read_to_string("/etc/services").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut f = line.split_whitespace();
        let (Some(name), Some(pp)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((port, p)) = pp.split_once('/') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        for n in std::iter::once(name).chain(f) {
            out.push((n.to_owned(), port, p.to_owned()));
        }
    }
    out
}

/// The port a service name stands for, for a protocol.
pub fn port_by_name(name: &str, p: u8) -> Option<u16> {
    let want = proto_name(p);
    entries()
        .into_iter()
        .find(|(n, _, pr)| n == name && pr == want)
        .map(|(_, port, _)| port)
}

/// The first name of a port, for a protocol.
pub fn name_of_port(port: u16, p: u8) -> Option<String> {
    let want = proto_name(p);
    entries()
        .into_iter()
        .find(|(_, n, pr)| *n == port && pr == want)
        .map(|(name, _, _)| name)
}
