//! What the config yields besides the virtual services: the records the
//! service DNS answers and the health checks kube-proxy would serve.
//!
//! The config compiler ([`crate::config`]) produces these; the DNS server
//! ([`crate::dns`]) and the health-check server ([`crate::health`]) consume
//! them, so neither depends on the Kubernetes object shapes.

use std::net::IpAddr;

/// A protocol name as used in SRV records (`_http._tcp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SrvProto {
    /// `_tcp`
    Tcp,
    /// `_udp`
    Udp,
    /// `_sctp`
    Sctp,
}

impl SrvProto {
    /// The label without the underscore.
    pub fn as_str(self) -> &'static str {
        match self {
            SrvProto::Tcp => "tcp",
            SrvProto::Udp => "udp",
            SrvProto::Sctp => "sctp",
        }
    }
}

/// A named port of a service, for SRV records.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    /// The ServicePort's name.
    pub name: String,
    /// Protocol.
    pub proto: SrvProto,
    /// The service port (ClusterIP services) or the endpoint port
    /// (headless services, where SRV targets are the endpoints).
    pub port: u16,
}

/// One service as the DNS sees it (Kubernetes DNS specification,
/// `<svc>.<ns>.svc.<zone>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsService {
    /// A service with cluster IPs: A/AAAA → the cluster IPs; SRV for named
    /// ports → `<svc>.<ns>.svc.<zone>`.
    ClusterIp {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cluster IPs (one per family).
        ips: Vec<IpAddr>,
        /// Named ports.
        ports: Vec<NamedPort>,
    },
    /// `clusterIP: None`: A/AAAA → the ready endpoint addresses; SRV for
    /// named ports → each endpoint.
    Headless {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Ready endpoint addresses.
        ips: Vec<IpAddr>,
        /// Named ports (endpoint port numbers).
        ports: Vec<NamedPort>,
    },
    /// `type: ExternalName`: CNAME → the external name.
    ExternalName {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The CNAME target.
        target: String,
    },
}

/// A `healthCheckNodePort` kube-proxy serves for a LoadBalancer service with
/// `externalTrafficPolicy: Local`: HTTP 200 with the local endpoint count
/// when there is one or more, 503 when there are none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The port to listen on (every node address).
    pub port: u16,
    /// `namespace/name` of the service.
    pub service: String,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: u32,
}
