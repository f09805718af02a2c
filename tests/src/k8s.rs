//! Small builders for the Kubernetes objects of test configs.
//!
//! What a Service test is about (its type, policies, ranges, IPs) stays
//! written in the test; the parts every test repeats (the `default/web`
//! header, its one port, the EndpointSlice around it) are built here
//! ([`WebService`], [`endpoint_slice`]).

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
    WebService::new("type: ClusterIP").yaml(&ready_backends(idx))
}

/// The `default/web` Service of a test, 198.18.100.10 (or
/// [`WebService::cluster_ip`]) with one port `http` 80 → 8080/TCP, and its
/// EndpointSlice `web-1`: what tests share is
/// written here, what the test is about (type, policies, ranges, IPs) is
/// the test's own `spec` text.
#[derive(Debug, Clone)]
pub struct WebService<'a> {
    /// Lines of `spec:` (unindented, one field a line), e.g.
    /// `"type: LoadBalancer\nexternalTrafficPolicy: Local"`.
    pub spec: &'a str,
    /// `clusterIP`.
    pub cluster_ip: &'a str,
    /// The port's `nodePort`, if given.
    pub node_port: Option<u16>,
    /// `status.loadBalancer.ingress[0].ip`, if any.
    pub lb_ip: Option<&'a str>,
}

impl<'a> WebService<'a> {
    /// A service with these `spec` lines, no nodePort, no LB status.
    pub fn new(spec: &'a str) -> Self {
        Self {
            spec,
            cluster_ip: "198.18.100.10",
            node_port: None,
            lb_ip: None,
        }
    }

    /// Sets `clusterIP` (list `clusterIPs`, `ipFamilies` in `spec` for an
    /// IPv6 one).
    pub fn cluster_ip(mut self, ip: &'a str) -> Self {
        self.cluster_ip = ip;
        self
    }

    /// Sets the port's `nodePort`.
    pub fn node_port(mut self, port: u16) -> Self {
        self.node_port = Some(port);
        self
    }

    /// Sets the LoadBalancer ingress IP (`status.loadBalancer`).
    pub fn lb_ip(mut self, ip: &'a str) -> Self {
        self.lb_ip = Some(ip);
        self
    }

    /// The Service and its EndpointSlice with `endpoints`, as one YAML
    /// stream.
    pub fn yaml(&self, endpoints: &[Ep]) -> String {
        let mut s = String::from(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n",
        );
        for line in self.spec.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = writeln!(s, "  {line}");
        }
        let _ = write!(
            s,
            "  clusterIP: {}\n  ports:\n  - name: http\n    protocol: TCP\n    \
             port: 80\n    targetPort: 8080\n",
            self.cluster_ip
        );
        if let Some(np) = self.node_port {
            let _ = writeln!(s, "    nodePort: {np}");
        }
        if let Some(ip) = self.lb_ip {
            let _ = writeln!(s, "status:\n  loadBalancer:\n    ingress:\n    - ip: {ip}");
        }
        s.push_str("---\n");
        s + &endpoint_slice("web-1", "web", &[("http", 8080, "TCP")], endpoints)
    }
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

    #[test]
    fn builds_a_web_service() {
        let y = WebService::new("type: LoadBalancer\n externalTrafficPolicy: Local\n")
            .node_port(30080)
            .lb_ip("198.18.100.20")
            .yaml(&[Ep::ready("198.18.1.11")]);
        let (svc, slice) = y.split_once("---\n").expect("two documents");
        assert!(
            svc.contains(
                "spec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  clusterIP: 198.18.100.10\n"
            ),
            "{svc}"
        );
        assert!(
            svc.contains("    targetPort: 8080\n    nodePort: 30080\nstatus:\n"),
            "{svc}"
        );
        assert!(svc.ends_with("    - ip: 198.18.100.20\n"), "{svc}");
        assert!(
            slice.contains("name: web-1\n") && slice.contains("198.18.1.11"),
            "{slice}"
        );
        let y = web_http(&[1]);
        assert!(
            y.contains("spec:\n  type: ClusterIP\n  clusterIP: 198.18.100.10\n  ports:\n"),
            "{y}"
        );
        assert!(!y.contains("nodePort") && !y.contains("status:"), "{y}");
    }
}
