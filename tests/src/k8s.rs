//! Small builders for the Kubernetes objects of test configs.
//!
//! Services stay written out in full in each test (they are what the test is
//! about); the EndpointSlices around them are repetitive, so they are built
//! here.

use std::fmt::Write as _;

/// One EndpointSlice endpoint.
#[derive(Debug, Clone)]
pub struct Ep {
    /// The address (IPv4 or IPv6).
    pub addr: String,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// `nodeName`, if any.
    pub node: Option<String>,
}

impl Ep {
    /// A ready endpoint.
    pub fn ready(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            ready: true,
            serving: true,
            terminating: false,
            node: None,
        }
    }

    /// A terminating endpoint that still serves (a Pod being deleted):
    /// `ready: false, serving: true, terminating: true`.
    pub fn terminating(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            ready: false,
            serving: true,
            terminating: true,
            node: None,
        }
    }

    /// Sets `nodeName`.
    pub fn on(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }
}

/// An EndpointSlice `NAME` for Service `default/SERVICE` with `ports`
/// (`(name, port, protocol)`) and `endpoints`; `endpoints: []` when empty.
/// The address type follows the first endpoint (IPv4 when there is none).
pub fn endpoint_slice(
    name: &str,
    service: &str,
    ports: &[(&str, u16, &str)],
    endpoints: &[Ep],
) -> String {
    let family = if endpoints.first().is_some_and(|e| e.addr.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\n\
         addressType: {family}\nports:\n"
    );
    for (pname, port, proto) in ports {
        let _ = write!(
            s,
            "  - name: {pname}\n    port: {port}\n    protocol: {proto}\n"
        );
    }
    if endpoints.is_empty() {
        s.push_str("endpoints: []\n");
        return s;
    }
    s.push_str("endpoints:\n");
    for e in endpoints {
        let _ = write!(
            s,
            "  - addresses: [\"{}\"]\n    conditions:\n      ready: {}\n      serving: {}\n      \
             terminating: {}\n",
            e.addr, e.ready, e.serving, e.terminating
        );
        if let Some(n) = &e.node {
            let _ = writeln!(s, "    nodeName: {n}");
        }
    }
    s
}

/// Ready endpoints for backends `idx` (1-based) at their IPv4 addresses.
pub fn ready_backends(idx: &[usize]) -> Vec<Ep> {
    idx.iter()
        .map(|&i| Ep::ready(crate::Topology::backend_ip(i)))
        .collect()
}

/// The `default/web` ClusterIP service most tests use: 198.18.100.10, one
/// port `http` 80 → 8080/TCP, with ready endpoints on backends `idx`.
pub fn web_http(idx: &[usize]) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  \
         type: ClusterIP\n  clusterIP: 198.18.100.10\n  ports:\n  - name: http\n    \
         protocol: TCP\n    port: 80\n    targetPort: 8080\n---\n{}",
        endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &ready_backends(idx)
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_slice() {
        let y = endpoint_slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &[Ep::terminating("198.18.1.11").on("node1")],
        );
        assert!(y.contains("kubernetes.io/service-name: web\n"), "{y}");
        assert!(y.contains("addressType: IPv4\n"), "{y}");
        assert!(y.contains("      ready: false\n      serving: true\n      terminating: true\n    nodeName: node1\n"), "{y}");
        let y = endpoint_slice("a", "b", &[("http", 80, "TCP")], &[]);
        assert!(y.ends_with("endpoints: []\n"), "{y}");
        let y = endpoint_slice("a", "b", &[], &[Ep::ready("2001:db8:1::11")]);
        assert!(y.contains("addressType: IPv6"), "{y}");
    }
}
