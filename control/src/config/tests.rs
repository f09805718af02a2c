//! Fixture tables (YAML → expected services, YAML → expected error) and
//! robustness tests for the config loader.

use sluice_dataplane::service::{BackendSpec, SchedKind, ServiceSpec, TableError, VipKey};
use sluice_dataplane::types::{proto, Addr};

use super::*;

fn v4(s: &str) -> Addr {
    Addr::from(s.parse::<std::net::IpAddr>().unwrap())
}

fn spec(name: &str, vip: &str, port: u16, p: u8, backends: &[(&str, u16)]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        vip: VipKey {
            addr: v4(vip),
            port,
            proto: p,
        },
        backends: backends
            .iter()
            .map(|&(a, port)| BackendSpec {
                addr: v4(a),
                port,
                weight: 1,
                ..Default::default()
            })
            .collect(),
        sched: SchedKind::RoundRobin,
        ..Default::default()
    }
}

fn load(text: &str) -> Result<Config, ConfigError> {
    load_str(text, "t.yaml")
}

/// Asserts an `Invalid` error with this field and line; returns its reason.
#[track_caller]
fn invalid(text: &str, want_field: &str, want_line: usize) -> String {
    match load(text) {
        Err(ConfigError::Invalid {
            field,
            line,
            reason,
            ..
        }) => {
            assert_eq!(
                (field.as_str(), line),
                (want_field, want_line),
                "reason: {reason}"
            );
            reason
        }
        other => panic!("expected Invalid at {want_field}, got {other:?}"),
    }
}

/// Asserts a `Yaml` error at this line; returns its message.
#[track_caller]
fn yaml(text: &str, want_line: usize) -> String {
    match load(text) {
        Err(ConfigError::Yaml { line, message, .. }) => {
            assert_eq!(line, want_line, "message: {message}");
            message
        }
        other => panic!("expected Yaml error, got {other:?}"),
    }
}

const SVC_WEB: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.0.0.1
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP}
";

#[test]
fn demo_example_loads() {
    let cfg = load_str(include_str!("../../../examples/demo.yaml"), "demo.yaml").unwrap();
    let b = [("198.18.1.11", 0), ("198.18.1.12", 0), ("198.18.1.13", 0)];
    let with = |port| b.map(|(a, _)| (a, port));
    assert_eq!(
        cfg.services,
        vec![
            spec(
                "default/web:http",
                "198.18.100.10",
                80,
                proto::TCP,
                &with(8080)
            ),
            spec(
                "default/web:echo",
                "198.18.100.10",
                5353,
                proto::UDP,
                &with(5353)
            ),
        ]
    );
    assert_eq!(
        cfg.objects,
        ObjectsSummary {
            services: 1,
            headless: 0,
            endpoints: 0,
            endpoint_slices: 1,
            pods: 0,
            waiting: 0,
        }
    );
}

#[test]
fn bad_example_fails_on_port_zero() {
    let e = load_str(
        include_str!("../../../examples/bad.yaml"),
        "examples/bad.yaml",
    )
    .unwrap_err();
    assert!(
        matches!(&e, ConfigError::Invalid { field, line: 11, .. } if field == "spec.ports[0].port"),
        "{e:?}"
    );
    // The comment at the top of bad.yaml quotes this message.
    assert!(include_str!("../../../examples/bad.yaml").contains(&e.to_string()));
}

#[test]
fn display_format() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.0.0.1\n  ports: [{port: 0}]\n";
    let e = load_str(text, "lb.yaml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "lb.yaml:1: Service default/web: spec.ports[0].port: must be between 1 and 65535, got 0"
    );
}

/// Fixture table: input → expected services.
#[test]
fn compiles_fixtures() {
    let cases: Vec<(&str, String, Vec<ServiceSpec>)> = vec![
        (
            "endpoints v1, named ports, not-ready ignored, unnamed single port",
            format!(
                "{SVC_WEB}---
apiVersion: v1
kind: Endpoints
metadata: {{name: web}}
subsets:
- addresses: [{{ip: 10.1.0.2}}, {{ip: 10.1.0.1, nodeName: n1}}]
  notReadyAddresses: [{{ip: 10.1.0.9}}]
  ports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: one, namespace: prod}}
spec: {{clusterIP: 10.0.0.2, ports: [{{port: 443}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: one, namespace: prod}}
subsets: [{{addresses: [{{ip: 10.1.0.3}}], ports: [{{port: 8443}}]}}]
"
            ),
            vec![
                spec("default/web:http", "10.0.0.1", 80, proto::TCP, &[("10.1.0.1", 8080), ("10.1.0.2", 8080)]),
                spec("default/web:dns", "10.0.0.1", 53, proto::UDP, &[("10.1.0.1", 5353), ("10.1.0.2", 5353)]),
                spec("prod/one:443", "10.0.0.2", 443, proto::TCP, &[("10.1.0.3", 8443)]),
            ],
        ),
        (
            "slices win over Endpoints; terminating kept at weight 0; ready absent = ready; protocol must match",
            format!(
                "{SVC_WEB}---
apiVersion: v1
kind: Endpoints
metadata: {{name: web}}
subsets: [{{addresses: [{{ip: 10.9.9.9}}], ports: [{{name: http, port: 1}}]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.1.0.1]
- addresses: [10.1.0.2]
  conditions: {{ready: false, serving: true, terminating: true}}
- addresses: [10.1.0.3, 10.1.0.4]
  conditions: {{ready: true}}
ports:
- {{name: http, port: 8080}}
- {{name: dns, port: 5353, protocol: TCP}}
"
            ),
            vec![
                {
                    // Serving and terminating: kept with weight 0 (used only
                    // when no endpoint is ready).
                    let mut s = spec("default/web:http", "10.0.0.1", 80, proto::TCP, &[("10.1.0.1", 8080), ("10.1.0.3", 8080)]);
                    s.backends.insert(1, BackendSpec { addr: v4("10.1.0.2"), port: 8080, weight: 0, terminating: true, ..Default::default() });
                    s
                },
                spec("default/web:dns", "10.0.0.1", 53, proto::UDP, &[]),
            ],
        ),
        (
            "dual stack: one spec per family, backends of that family",
            "apiVersion: v1
kind: Service
metadata: {name: ds}
spec:
  clusterIP: 10.0.0.5
  clusterIPs: [10.0.0.5, 'fd00::5']
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ds-a, labels: {kubernetes.io/service-name: ds}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]
ports: [{port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ds-b, labels: {kubernetes.io/service-name: ds}}
addressType: IPv6
endpoints: [{addresses: ['fd00::1:1']}]
ports: [{port: 8080}]
"
            .to_owned(),
            vec![
                spec("default/ds:80", "10.0.0.5", 80, proto::TCP, &[("10.1.0.1", 8080)]),
                spec("default/ds:80", "fd00::5", 80, proto::TCP, &[("fd00::1:1", 8080)]),
            ],
        ),
        (
            "no endpoints at all: a service with no backends; empty slice with nulls",
            "apiVersion: v1
kind: Service
metadata: {name: lonely}
spec: {clusterIP: 10.0.0.7, ports: [{port: 80, protocol: SCTP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lonely-x, labels: {kubernetes.io/service-name: lonely}}
addressType: IPv4
endpoints: null
ports: null
"
            .to_owned(),
            vec![spec("default/lonely:80", "10.0.0.7", 80, proto::SCTP, &[])],
        ),
        (
            "kind: List, `...` end markers and comment-only documents",
            "# leading comment
---
# only a comment
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
  spec: {clusterIP: 10.0.0.8, ports: [{port: 80}]}
- apiVersion: v1
  kind: Endpoints
  metadata: {name: a}
  subsets: [{addresses: [{ip: 10.1.0.1}], ports: [{port: 80}]}]
...
"
            .to_owned(),
            vec![spec("default/a:80", "10.0.0.8", 80, proto::TCP, &[("10.1.0.1", 80)])],
        ),
    ];
    for (what, text, want) in cases {
        let got = load(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got.services, want, "{what}");
    }
}

#[test]
fn named_target_port_resolves_per_endpoint() {
    // Two slices of the same Service: Pods of the old version listen on
    // 8080, the new on 9090, both under the port name "http".
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.0.0.1
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-old, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}, {addresses: [10.1.0.2]}]
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-new, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.3]}, {addresses: [10.1.0.1]}]
ports: [{name: http, port: 9090, protocol: TCP}]
";
    let cfg = load(text).unwrap();
    assert_eq!(
        cfg.services,
        vec![spec(
            "default/web:http",
            "10.0.0.1",
            80,
            proto::TCP,
            &[
                ("10.1.0.1", 8080),
                ("10.1.0.1", 9090),
                ("10.1.0.2", 8080),
                ("10.1.0.3", 9090)
            ]
        )]
    );
    assert_eq!(cfg.objects.endpoint_slices, 2);
}

#[test]
fn slices_merge_and_deduplicate() {
    let slice = |name: &str| {
        format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, labels: {{kubernetes.io/service-name: s}}}}
addressType: IPv4
endpoints: [{{addresses: [10.1.0.2]}}, {{addresses: [10.1.0.1]}}]
ports: [{{port: 80}}]
"
        )
    };
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {{clusterIP: 10.0.0.1, ports: [{{port: 80}}]}}\n{}{}",
        slice("s-1"),
        slice("s-2")
    );
    let cfg = load(&text).unwrap();
    assert_eq!(
        cfg.services,
        vec![spec(
            "default/s:80",
            "10.0.0.1",
            80,
            proto::TCP,
            &[("10.1.0.1", 80), ("10.1.0.2", 80)]
        )]
    );
}

#[test]
fn headless_produces_nothing() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  clusterIPs: [None]
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: bare}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]
ports: [{name: pg, port: 5432}]
";
    let cfg = load(text).unwrap();
    assert!(cfg.services.is_empty());
    assert_eq!(
        cfg.objects,
        ObjectsSummary {
            services: 2,
            headless: 2,
            endpoints: 0,
            endpoint_slices: 1,
            pods: 0,
            waiting: 0,
        }
    );
    assert_eq!(
        cfg.objects.to_string(),
        "2 services (2 headless), 0 endpoints, 1 endpointslices, 0 pods"
    );
}

/// What `kubectl get svc,endpointslices -o yaml` prints, trimmed a little
/// but with the noisy parts kept: uid, managedFields, status, annotations
/// with embedded JSON, `null` fields, hints, targetRef.
const KUBECTL_DUMP: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"name":"web","namespace":"shop"},"spec":{"ports":[{"name":"http","port":80,"targetPort":"http"}],"selector":{"app":"web"}}}
    creationTimestamp: "2024-05-02T10:11:12Z"
    labels:
      app: web
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:annotations:
            .: {}
            f:kubectl.kubernetes.io/last-applied-configuration: {}
        f:spec:
          f:ports:
            .: {}
            k:{"port":80,"protocol":"TCP"}:
              .: {}
              f:name: {}
      manager: kubectl-client-side-apply
      operation: Update
      time: "2024-05-02T10:11:12Z"
    name: web
    namespace: shop
    resourceVersion: "123456"
    uid: 0b7c6c53-4f2e-4d0c-9a1e-5d6b1f3c2a10
  spec:
    clusterIP: 10.96.12.34
    clusterIPs:
    - 10.96.12.34
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: http
    - appProtocol: grpc
      name: grpc
      port: 9000
      protocol: TCP
      targetPort: 9000
    selector:
      app: web
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- apiVersion: discovery.k8s.io/v1
  addressType: IPv4
  endpoints:
  - addresses:
    - 10.244.1.7
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-a
    targetRef:
      kind: Pod
      name: web-7d9f8b6c5d-abcde
      namespace: shop
      uid: 6a1b2c3d-0000-4000-8000-000000000001
    zone: zone-a
  - addresses:
    - 10.244.2.9
    conditions:
      ready: false
      serving: false
      terminating: true
    nodeName: node-b
  hints:
    forZones:
    - name: zone-a
  kind: EndpointSlice
  metadata:
    annotations:
      endpoints.kubernetes.io/last-change-trigger-time: "2024-05-02T10:11:20Z"
    creationTimestamp: "2024-05-02T10:11:12Z"
    generateName: web-
    generation: 3
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    managedFields: []
    name: web-x7k2p
    namespace: shop
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: web
      uid: 0b7c6c53-4f2e-4d0c-9a1e-5d6b1f3c2a10
    resourceVersion: "123999"
    uid: 3e0e1b8a-1111-4222-8333-444455556666
  ports:
  - name: http
    port: 8080
    protocol: TCP
  - name: grpc
    port: 9000
    protocol: TCP
kind: List
metadata:
  resourceVersion: ""
"#;

#[test]
fn kubectl_dump_loads() {
    let cfg = load(KUBECTL_DUMP).unwrap();
    assert_eq!(
        cfg.services,
        vec![
            spec(
                "shop/web:http",
                "10.96.12.34",
                80,
                proto::TCP,
                &[("10.244.1.7", 8080)]
            ),
            spec(
                "shop/web:grpc",
                "10.96.12.34",
                9000,
                proto::TCP,
                &[("10.244.1.7", 9000)]
            ),
        ]
    );
    assert_eq!(cfg.objects.services, 1);
    assert_eq!(cfg.objects.endpoint_slices, 1);
}

#[test]
fn type_errors_inside_a_list_name_the_item() {
    let text = KUBECTL_DUMP.replace("      port: 80\n", "      port: eighty\n");
    let line = KUBECTL_DUMP
        .lines()
        .position(|l| l == "      port: 80")
        .unwrap()
        + 1;
    let msg = yaml(&text, line);
    assert!(
        msg.starts_with("Service shop/web: items[0].spec.ports[0].port: invalid type"),
        "{msg}"
    );
}

/// Endpoints and EndpointSlices whose Service is absent are accepted, as
/// Kubernetes accepts them (an object may come before its Service, or
/// outlive it), listed as waiting, and forward nothing.
#[test]
fn endpoint_sources_without_their_service_wait_for_it() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n---\n\
        apiVersion: v1\nkind: Endpoints\nmetadata: {name: webb}\nsubsets: [{addresses: [{ip: 10.0.0.9}], ports: [{port: 8080}]}]\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}\n\
        addressType: IPv4\nendpoints: [{addresses: [10.0.0.8]}]\nports: [{port: 8080}]\n";
    let cfg = load(text).expect("waiting sources are not an error");
    assert_eq!(
        cfg.waiting,
        [
            Waiting {
                kind: "Endpoints",
                object: "default/webb".into(),
                service: "default/webb".into(),
                line: 5,
            },
            Waiting {
                kind: "EndpointSlice",
                object: "shop/api-1".into(),
                service: "shop/api".into(),
                line: 10,
            },
        ]
    );
    assert_eq!(cfg.objects.waiting, 2);
    assert_eq!(cfg.services.len(), 1, "only web's front end");
    assert!(
        cfg.services[0].backends.is_empty(),
        "webb's endpoints are not web's"
    );
    assert_eq!(
        cfg.waiting[0].to_string(),
        "Endpoints default/webb waits for Service default/webb (line 5)"
    );
    assert!(cfg
        .objects
        .to_string()
        .ends_with("(2 waiting for their Service)"));
}

/// Fixture table: input → expected `Invalid` error (field, line).
#[test]
fn invalid_fixtures() {
    let svc = |spec: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {spec}\n")
    };
    let slice = |body: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{clusterIP: 10.0.0.1, ports: [{{port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, labels: {{kubernetes.io/service-name: web}}}}\n{body}"
        )
    };
    let p = "clusterIP: 10.0.0.1, ports: [{port: 80}]";
    let cases: Vec<(String, &str, usize, &str)> = vec![
        (svc("{clusterIP: 10.0.0.1, ports: [{port: 0}]}"), "spec.ports[0].port", 1, "got 0"),
        (svc("{clusterIP: 10.0.0.1, ports: [{port: 65536}]}"), "spec.ports[0].port", 1, "got 65536"),
        (svc("{clusterIP: 10.0.0.1, ports: [{port: -1}]}"), "spec.ports[0].port", 1, "got -1"),
        (svc("{clusterIP: 10.0.0.1, ports: [{name: a}]}"), "spec.ports[0].port", 1, "required"),
        (svc(&format!("{{type: Bogus, {p}}}")), "spec.type", 1, "got \"Bogus\""),
        (svc("{ports: [{port: 80}]}"), "spec.clusterIP", 1, "does not allocate"),
        (svc("{clusterIP: 10.0.0.300, ports: [{port: 80}]}"), "spec.clusterIP", 1, "not an IP address"),
        (svc("{clusterIP: '::ffff:10.0.0.1', ports: [{port: 80}]}"), "spec.clusterIP", 1, "IPv4-mapped"),
        (svc("{clusterIP: 10.0.0.1, clusterIPs: [10.0.0.2], ports: [{port: 80}]}"), "spec.clusterIPs[0]", 1, "must equal"),
        (svc("{clusterIPs: [10.0.0.1, 10.0.0.2], ports: [{port: 80}]}"), "spec.clusterIPs[1]", 1, "one IPv4 and one IPv6"),
        (svc("{clusterIP: 10.0.0.1}"), "spec.ports", 1, "at least one port"),
        (svc("{clusterIP: 10.0.0.1, ports: [{port: 80, protocol: tcp}]}"), "spec.ports[0].protocol", 1, "got \"tcp\""),
        (svc("{clusterIP: 10.0.0.1, ports: [{name: a, port: 80}, {port: 81}]}"), "spec.ports[1].name", 1, "more than one port"),
        (svc("{clusterIP: 10.0.0.1, ports: [{name: a, port: 80}, {name: a, port: 81}]}"), "spec.ports[1].name", 1, "duplicate port name \"a\""),
        (
            svc("{clusterIP: 10.0.0.1, ports: [{name: a, port: 80}, {name: b, port: 81}, {name: c, port: 80}]}"),
            "spec.ports[2].port",
            1,
            "duplicate port 80/TCP (also spec.ports[0])",
        ),
        (svc("{clusterIP: 10.0.0.1, ports: [{name: Http, port: 80}]}"), "spec.ports[0].name", 1, "DNS label"),
        (svc("{clusterIP: 10.0.0.1, ports: [{port: 80, targetPort: 70000}]}"), "spec.ports[0].targetPort", 1, "got 70000"),
        (svc("{clusterIP: 10.0.0.1, ports: [{port: 80, targetPort: '8080'}]}"), "spec.ports[0].targetPort", 1, "port name"),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\nspec: {}\n".into(),
            "metadata.name",
            1,
            "required",
        ),
        ("apiVersion: v2\nkind: Service\nmetadata: {name: a}\n".into(), "apiVersion", 1, "must be \"v1\""),
        ("kind: Service\nmetadata: {name: a}\n".into(), "apiVersion", 1, "required"),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {selector: {matchLabels: {app: web}}}\n".into(),
            "kind",
            1,
            "unsupported kind \"Deployment\"",
        ),
        ("apiVersion: v1\nmetadata: {name: a}\n".into(), "kind", 1, "required"),
        ("- a\n- b\n".into(), "kind", 1, "got a sequence"),
        (
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n".into(),
            "items[0].kind",
            1,
            "ConfigMap",
        ),
        (
            format!("{}---\n{}", svc(&format!("{{{p}}}")), svc("{clusterIP: 10.0.0.2, ports: [{port: 80}]}")),
            "metadata.name",
            5,
            "duplicate Service (first at line 1)",
        ),
        (
            format!(
                "{}---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: web}}\nsubsets: [{{addresses: [{{ip: x}}], ports: [{{port: 1}}]}}]\n",
                svc(&format!("{{{p}}}"))
            ),
            "subsets[0].addresses[0].ip",
            5,
            "not an IP address: \"x\"",
        ),
        (
            format!(
                "{}---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: web}}\nsubsets: [{{addresses: [{{ip: 10.0.0.9}}], ports: [{{name: a}}]}}]\n",
                svc(&format!("{{{p}}}"))
            ),
            "subsets[0].ports[0].port",
            5,
            "required",
        ),
        (slice("addressType: FQDN\n"), "addressType", 5, "FQDN is not supported"),
        (slice("endpoints: []\n"), "addressType", 5, "required"),
        (
            slice("addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\n"),
            "endpoints[0].addresses[0]",
            5,
            "not an IPv4 address",
        ),
        (slice("addressType: IPv4\nendpoints: [{conditions: {ready: true}}]\n"), "endpoints[0].addresses", 5, "at least one"),
        (slice("addressType: IPv4\nports: [{port: 0}]\n"), "ports[0].port", 5, "got 0"),
        (slice("addressType: IPv4\nports: [{port: 1}, {port: 2}]\n"), "ports[1].name", 5, "duplicate port"),
        (
            slice("addressType: IPv4\n").replace("labels: {kubernetes.io/service-name: web}", "labels: {app: web}"),
            "metadata.labels[\"kubernetes.io/service-name\"]",
            5,
            "required",
        ),
    ];
    for (text, field, line, reason) in cases {
        let got = invalid(&text, field, line);
        assert!(
            got.contains(reason),
            "{field}: want {reason:?} in {got:?}\n{text}"
        );
    }
}

#[test]
fn line_numbers_point_at_the_document() {
    // The comment-only document is dropped; the next starts at line 11 (its `---`).
    let text = format!(
        "{SVC_WEB}---\n# a comment\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: 10.0.0.2\n  ports: [{{port: 80, protocol: QUIC}}]\n"
    );
    let r = invalid(&text, "spec.ports[0].protocol", 11);
    assert!(r.contains("QUIC"));
    // CRLF line endings count lines the same way.
    let crlf = text.replace('\n', "\r\n");
    invalid(&crlf, "spec.ports[0].protocol", 11);
}

#[test]
fn yaml_errors_have_file_lines() {
    // A wrong type in the second document: line 9 of the file.
    let text = format!("{SVC_WEB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: 10.0.0.2\n  ports: [{{port: \"80\"}}]\n");
    let line = text.lines().position(|l| l.contains("\"80\"")).unwrap() + 1;
    let msg = yaml(&text, line);
    assert!(
        msg.starts_with("Service default/b: spec.ports[0].port: invalid type"),
        "{msg}"
    );
    assert!(
        !msg.contains("at line"),
        "location is reported once, as line/column: {msg}"
    );

    // A boolean that is not one.
    let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\naddressType: IPv4\nendpoints:\n- addresses: [10.0.0.1]\n  conditions: {ready: yes}\n";
    let msg = yaml(text, 7);
    assert!(msg.contains("endpoints[0].conditions.ready"), "{msg}");

    // A syntax error in the second document.
    let text = format!("{SVC_WEB}---\nkind: Service\nmetadata: {{name: [}}\n");
    let line = text.lines().count();
    match load(&text) {
        Err(ConfigError::Yaml {
            line: l,
            column,
            message,
            ..
        }) => {
            assert_eq!(l, line, "{message}");
            assert!(column > 1);
        }
        other => panic!("{other:?}"),
    }

    // Duplicate keys are refused (serde_norway points at the mapping).
    let msg = yaml("apiVersion: v1\nkind: Service\nkind: Service\n", 1);
    assert!(msg.contains("duplicate entry"), "{msg}");
}

#[test]
fn duplicate_vip_refused_at_load() {
    let text = format!(
        "{SVC_WEB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: other}}\nspec: {{clusterIP: 10.0.0.1, ports: [{{port: 80}}]}}\n"
    );
    let e = load(&text).unwrap_err();
    assert!(
        matches!(e, ConfigError::Table(TableError::DuplicateVip { .. })),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "services default/web:http and default/other:80 both claim 10.0.0.1:80/tcp"
    );
}

#[test]
fn io_error_names_the_path() {
    let e = load_file(Path::new("/nonexistent/sluice.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().starts_with("/nonexistent/sluice.yaml: "));
}

#[test]
fn empty_input_is_an_empty_config() {
    for text in [
        "",
        "\n",
        "# nothing\n",
        "---\n",
        "---\n...\n---\n# x\n",
        "\u{feff}",
    ] {
        assert_eq!(load(text).unwrap().services, vec![], "{text:?}");
    }
}

#[test]
fn split_documents_lines() {
    let text = "# c\n%YAML 1.2\n---\na: 1\n--- # c\nb: 2\n...\nc: 3\n---\n---\n--- {d: 4}\n";
    let got: Vec<(usize, usize, &str)> = split_documents(text)
        .iter()
        .map(|d| (d.line, d.text_line, d.text))
        .collect();
    assert_eq!(
        got,
        vec![
            (3, 1, "# c\n%YAML 1.2\n---\na: 1\n"),
            (5, 5, "--- # c\nb: 2\n...\n"),
            (8, 8, "c: 3\n"),
            (11, 11, "--- {d: 4}\n"),
        ]
    );
    // `----` and `---x` are not markers.
    assert_eq!(split_documents("a: |\n  x\n---x: 1\n").len(), 1);
}

#[test]
fn relocates_messages() {
    assert_eq!(relocate_message("bad at line 2 column 3", 10), "bad");
    assert_eq!(
        relocate_message(
            "did not find expected key at line 2 column 3, while parsing at line 1 column 1",
            10
        ),
        "did not find expected key, while parsing at line 11 column 1"
    );
    assert_eq!(relocate_message("odd at line x", 1), "odd at line x");
}

/// Every truncation (at a char boundary) of valid files, and a few byte
/// flips, load or fail with an error, never panic.
#[test]
fn truncations_never_panic() {
    let demo = include_str!("../../../examples/demo.yaml");
    let lb = include_str!("../../../examples/loadbalancer.yaml");
    let pods = include_str!("../../../examples/pods.yaml");
    for text in [demo, KUBECTL_DUMP, lb, pods] {
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let _ = load(&text[..end]);
        }
    }
}

mod prop {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary text never panics.
        #[test]
        fn any_text_never_panics(text in "\\PC{0,300}") {
            let _ = load(&text);
        }

        /// The demo with a random slice of it replaced by random YAML-ish
        /// text never panics.
        #[test]
        fn mutated_demo_never_panics(
            at in 0usize..2000,
            len in 0usize..40,
            junk in "[-:\\[\\]{}#&*!|>'\" \n0-9a-zA-Z.]{0,30}",
        ) {
            let demo = include_str!("../../../examples/demo.yaml");
            let at = at.min(demo.len());
            let end = (at + len).min(demo.len());
            if demo.is_char_boundary(at) && demo.is_char_boundary(end) {
                let text = format!("{}{}{}", &demo[..at], junk, &demo[end..]);
                let _ = load(&text);
            }
        }
    }
}
