use super::*;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, NodeAddress, NodeSpec, NodeStatus, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint as KEndpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

fn port(name: &str, port: i32, target: Option<IntOrString>) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: target,
        ..ServicePort::default()
    }
}

fn kservice(ns: &str, name: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> KService {
    KService {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn web() -> KService {
    kservice(
        "default",
        "web",
        "10.96.0.10",
        vec![port("http", 80, Some(IntOrString::Int(8080)))],
    )
}

fn spec(s: &mut KService) -> &mut ServiceSpec {
    s.spec.as_mut().unwrap()
}

/// An endpoint; `None` conditions as the API leaves them unset.
fn ep(
    ip: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> KEndpoint {
    KEndpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready,
            serving,
            terminating,
        }),
        ..KEndpoint::default()
    }
}

fn slice(
    ns: &str,
    service: &str,
    name: &str,
    ports: &[(&str, i32)],
    endpoints: Vec<KEndpoint>,
) -> EndpointSlice {
    let mut m = meta(ns, name);
    m.labels = Some([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into());
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: Some((*n).into()),
                    port: Some(*p),
                    protocol: Some("TCP".into()),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    }
}

fn ips(s: &Service) -> Vec<String> {
    s.endpoints.iter().map(|e| e.ip.to_string()).collect()
}

fn backends(s: &Service) -> Vec<Vec<String>> {
    s.rules()
        .iter()
        .map(|r| r.backends.iter().map(ToString::to_string).collect())
        .collect()
}

fn reasons(skipped: &[Skipped]) -> Vec<String> {
    skipped.iter().map(ToString::to_string).collect()
}

#[test]
fn a_cluster_ip_service_gets_its_two_ready_endpoints() {
    let mut nil = ep("10.88.0.6", None, None, None);
    nil.conditions = None;
    let slices = [slice(
        "default",
        "web",
        "web-abc",
        &[("http", 8080)],
        vec![ep("10.88.0.5", Some(true), Some(true), Some(false)), nil],
    )];
    let out = services(&[web()], &slices);
    assert_eq!(out.skipped, []);
    assert_eq!(out.services.len(), 1);
    let s = &out.services[0];
    assert_eq!((s.namespace.as_str(), s.name.as_str()), ("default", "web"));
    assert_eq!(s.cluster_ip.to_string(), "10.96.0.10");
    assert_eq!(
        s.ports,
        [Port {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
            node_port: None,
        }]
    );
    assert_eq!((s.affinity, s.external_ips.len()), (None, 0));
    assert_eq!(ips(s), ["10.88.0.5", "10.88.0.6"]);
    assert!(
        s.endpoints
            .iter()
            .all(|e| e.ready && e.serving && !e.terminating)
    );
    assert!(
        s.endpoints.iter().all(|e| e.ports.is_empty()),
        "same as target_port"
    );
    assert_eq!(backends(s), [["10.88.0.5:8080", "10.88.0.6:8080"]]);
}

#[test]
fn a_named_target_port_resolves_from_each_slices_port_of_that_name() {
    let mut svc = web();
    spec(&mut svc).ports = Some(vec![
        port("http", 80, Some(IntOrString::String("web".into()))),
        port("metrics", 9100, None),
    ]);
    let slices = [
        slice(
            "default",
            "web",
            "web-a",
            &[("http", 8080), ("metrics", 9100)],
            vec![ep("10.88.0.5", Some(true), None, None)],
        ),
        slice(
            "default",
            "web",
            "web-b",
            &[("http", 9090), ("metrics", 9100)],
            vec![ep("10.88.0.6", Some(true), None, None)],
        ),
        slice(
            "default",
            "web",
            "web-c",
            &[("metrics", 9100)],
            vec![ep("10.88.0.7", Some(true), None, None)],
        ),
    ];
    let out = services(&[svc], &slices);
    let s = &out.services[0];
    assert_eq!(ips(s), ["10.88.0.5", "10.88.0.6", "10.88.0.7"]);
    // web-c has no `http` (the EndpointSlice controller writes such slices for pods without
    // the named port): its endpoint serves `metrics` only, as kube-proxy has it.
    assert_eq!(
        backends(s),
        [
            vec!["10.88.0.5:8080", "10.88.0.6:9090"],
            vec!["10.88.0.5:9100", "10.88.0.6:9100", "10.88.0.7:9100"]
        ]
    );
    assert_eq!(out.skipped, []);
}

/// A slice of Service default/web with one endpoint, `ip`, without conditions.
fn web_slice(name: &str, ports: &[(&str, i32)], ip: &str) -> EndpointSlice {
    slice(
        "default",
        "web",
        name,
        ports,
        vec![ep(ip, None, None, None)],
    )
}

/// A Service with ports `http` (80 → 8080) and `alt` (81 → 8081), both TCP.
fn two_ports() -> KService {
    let mut svc = web();
    spec(&mut svc).ports = Some(vec![
        port("http", 80, Some(IntOrString::Int(8080))),
        port("alt", 81, Some(IntOrString::Int(8081))),
    ]);
    svc
}

#[test]
fn an_address_serves_only_the_service_ports_its_slice_lists() {
    let slices = [
        web_slice("web-a", &[("http", 8080)], "10.88.0.5"),
        web_slice("web-b", &[("alt", 8081)], "10.88.0.6"),
    ];
    let out = services(&[two_ports()], &slices);
    assert_eq!(out.skipped, []);
    assert_eq!(
        backends(&out.services[0]),
        [vec!["10.88.0.5:8080"], vec!["10.88.0.6:8081"]]
    );
}

#[test]
fn a_slice_port_of_another_name_or_protocol_or_none_serves_nothing() {
    let other = web_slice("web-o", &[("other", 8080)], "10.88.0.5");
    let mut empty = web_slice("web-e", &[], "10.88.0.6");
    empty.ports = Some(Vec::new());
    let mut none = web_slice("web-n", &[], "10.88.0.8");
    none.ports = None;
    let mut udp = web_slice("web-u", &[("http", 8080)], "10.88.0.7");
    udp.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    let out = services(&[web()], &[other, empty, none, udp]);
    let s = &out.services[0];
    assert!(s.endpoints.is_empty(), "{:?}", s.endpoints);
    assert_eq!(backends(s), [Vec::<String>::new()]);
}

#[test]
fn tcp_and_udp_ports_on_separate_slices_stay_apart() {
    let mut svc = web();
    let mut dns_udp = port("dns-udp", 53, Some(IntOrString::Int(5353)));
    dns_udp.protocol = Some("UDP".into());
    spec(&mut svc).ports = Some(vec![
        port("dns-tcp", 53, Some(IntOrString::Int(5353))),
        dns_udp,
    ]);
    let tcp = web_slice("web-t", &[("dns-tcp", 5353)], "10.88.0.5");
    let mut udp = web_slice("web-u", &[("dns-udp", 5353)], "10.88.0.6");
    udp.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    let out = services(&[svc], &[tcp, udp]);
    assert_eq!(
        backends(&out.services[0]),
        [vec!["10.88.0.5:5353"], vec!["10.88.0.6:5353"]]
    );
}

#[test]
fn one_address_with_two_port_numbers_in_two_slices_is_two_backends() {
    let slices = [
        web_slice("web-a", &[("http", 8080)], "10.88.0.5"),
        web_slice("web-b", &[("http", 9090)], "10.88.0.5"),
    ];
    let out = services(&[web()], &slices);
    assert_eq!(
        backends(&out.services[0]),
        [vec!["10.88.0.5:8080", "10.88.0.5:9090"]]
    );
}

#[test]
fn not_ready_and_terminating_endpoints_keep_their_conditions() {
    let slices = [slice(
        "default",
        "web",
        "web-abc",
        &[("http", 8080)],
        vec![
            ep("10.88.0.5", Some(true), Some(true), Some(false)),
            ep("10.88.0.6", Some(false), Some(false), Some(false)),
            ep("10.88.0.7", Some(false), Some(true), Some(true)),
        ],
    )];
    let out = services(&[web()], &slices);
    let s = &out.services[0];
    let conditions: Vec<(bool, bool, bool)> = s
        .endpoints
        .iter()
        .map(|e| (e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        conditions,
        [
            (true, true, false),
            (false, false, false),
            (false, true, true)
        ]
    );
    assert_eq!(backends(s), [["10.88.0.5:8080"]], "only the ready one");
    let mut s = s.clone();
    s.endpoints.remove(0);
    assert_eq!(
        backends(&s),
        [["10.88.0.7:8080"]],
        "then the terminating one"
    );
}

#[test]
fn node_ports_and_external_ips_are_taken_and_bad_external_ips_named() {
    let mut svc = web();
    let sp = spec(&mut svc);
    sp.type_ = Some("NodePort".into());
    sp.ports.as_mut().unwrap()[0].node_port = Some(30080);
    sp.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    sp.external_ips = Some(vec![
        "192.0.2.7".into(),
        "2001:db8::7".into(),
        "192.0.2.7".into(),
        "10.96.0.10".into(),
        "192.0.2.8".into(),
    ]);
    let out = services(&[svc], &[]);
    let s = &out.services[0];
    assert_eq!(s.ports[0].node_port, Some(30080));
    assert_eq!(s.ports[0].protocol, Protocol::Udp);
    let ext: Vec<String> = s.external_ips.iter().map(ToString::to_string).collect();
    assert_eq!(ext, ["192.0.2.7", "192.0.2.8"]);
    assert_eq!(
        reasons(&out.skipped),
        [
            "service default/web: external IP \"2001:db8::7\" is not an IPv4 address (IPv6 is not supported)"
        ]
    );
    assert!(s.endpoints.is_empty());
    let rule = &s.rules()[0];
    assert_eq!((rule.node_port, rule.addresses.len()), (Some(30080), 3));
}

#[test]
fn client_ip_affinity_takes_its_timeout_or_the_default() {
    let affinity = |mode: Option<&str>, timeout: Option<i32>| {
        let mut svc = web();
        spec(&mut svc).session_affinity = mode.map(Into::into);
        spec(&mut svc).session_affinity_config = timeout.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        services(&[svc], &[]).services[0].affinity
    };
    assert_eq!(affinity(Some("ClientIP"), Some(600)), Some(600));
    assert_eq!(affinity(Some("ClientIP"), None), Some(10_800));
    assert_eq!(affinity(Some("ClientIP"), Some(200_000)), Some(86_400));
    assert_eq!(affinity(Some("None"), None), None);
    assert_eq!(affinity(None, None), None);
}

#[test]
fn headless_external_name_and_ipv6_services_are_left_out() {
    let headless = kservice("default", "db", "None", vec![port("pg", 5432, None)]);
    let mut external = kservice("default", "ext", "", vec![]);
    spec(&mut external).type_ = Some("ExternalName".into());
    spec(&mut external).external_name = Some("db.example.com".into());
    let v6 = kservice("default", "six", "fd00::10", vec![port("http", 80, None)]);
    let slices = [slice(
        "default",
        "db",
        "db-x",
        &[("pg", 5432)],
        vec![ep("10.88.0.9", None, None, None)],
    )];
    let out = services(&[headless, external, v6, web()], &slices);
    let names: Vec<&str> = out.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web"]);
    assert_eq!(
        reasons(&out.skipped),
        ["service default/six: no IPv4 cluster IP in fd00::10 (IPv6 Services are not supported)"]
    );
}

#[test]
fn the_slices_of_one_service_are_merged_and_others_kept_apart() {
    let slices = [
        slice(
            "default",
            "web",
            "web-b",
            &[("http", 8080)],
            vec![
                ep("10.88.0.6", Some(true), None, None),
                ep("10.88.0.7", Some(false), Some(false), None),
            ],
        ),
        slice(
            "default",
            "web",
            "web-a",
            &[("http", 8080)],
            vec![
                ep("10.88.0.5", Some(true), None, None),
                // The same pod again, ready in this slice: the readier one wins.
                ep("10.88.0.7", Some(true), None, None),
            ],
        ),
        // Same Service name, another namespace.
        slice(
            "other",
            "web",
            "web-z",
            &[("http", 8080)],
            vec![ep("10.88.1.1", None, None, None)],
        ),
        EndpointSlice {
            address_type: "IPv6".into(),
            ..slice(
                "default",
                "web",
                "web-six",
                &[("http", 8080)],
                vec![ep("fd00::5", None, None, None)],
            )
        },
    ];
    let out = services(&[web()], &slices);
    assert_eq!(out.skipped, []);
    let s = &out.services[0];
    assert_eq!(ips(s), ["10.88.0.5", "10.88.0.6", "10.88.0.7"]);
    assert!(s.endpoints.iter().all(|e| e.ready));
}

#[test]
fn of_two_services_claiming_one_address_the_older_keeps_it() {
    let at = |s: &str| Some(Time(s.parse().unwrap()));
    let mut old = kservice("b", "old", "10.96.0.20", vec![port("http", 80, None)]);
    old.metadata.creation_timestamp = at("2024-01-01T00:00:00Z");
    spec(&mut old).external_ips = Some(vec!["192.0.2.7".into()]);
    let mut new = kservice("a", "new", "10.96.0.21", vec![port("http", 80, None)]);
    new.metadata.creation_timestamp = at("2025-01-01T00:00:00Z");
    spec(&mut new).external_ips = Some(vec!["192.0.2.7".into()]);
    let out = services(&[new, old], &[]);
    // The newer keeps its cluster IP; only the external IP it cannot have is left out.
    let names: Vec<&str> = out.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["new", "old"]);
    assert!(out.services[0].external_ips.is_empty());
    assert_eq!(out.services[0].cluster_ip.to_string(), "10.96.0.21");
    assert_eq!(out.services[1].external_ips.len(), 1);
    assert_eq!(
        reasons(&out.skipped),
        [
            "service a/new: external IP 192.0.2.7 left out: 192.0.2.7:80 tcp belongs to service b/old"
        ]
    );
}

#[test]
fn of_two_services_claiming_one_node_port_the_newer_runs_without_it() {
    let at = |s: &str| Some(Time(s.parse().unwrap()));
    let mut old = kservice("b", "old", "10.96.0.20", vec![port("http", 80, None)]);
    old.metadata.creation_timestamp = at("2024-01-01T00:00:00Z");
    spec(&mut old).ports.as_mut().unwrap()[0].node_port = Some(30080);
    let mut new = kservice("a", "new", "10.96.0.21", vec![port("web", 80, None)]);
    new.metadata.creation_timestamp = at("2025-01-01T00:00:00Z");
    spec(&mut new).ports.as_mut().unwrap()[0].node_port = Some(30080);
    let out = services(&[new, old], &[]);
    assert_eq!(out.services.len(), 2);
    assert_eq!(out.services[0].ports[0].node_port, None);
    assert_eq!(out.services[1].ports[0].node_port, Some(30080));
    assert_eq!(
        reasons(&out.skipped),
        [
            "service a/new: node port of port \"web\" left out: node port 30080/tcp belongs to service b/old"
        ]
    );
}

#[test]
fn a_port_given_twice_or_of_an_unknown_protocol_skips_the_service() {
    let mut twice = web();
    spec(&mut twice).ports = Some(vec![port("a", 80, None), port("b", 80, None)]);
    let mut unknown = kservice("default", "x", "10.96.0.11", vec![port("a", 80, None)]);
    spec(&mut unknown).ports.as_mut().unwrap()[0].protocol = Some("QUIC".into());
    let out = services(&[twice, unknown], &[]);
    assert!(out.services.is_empty());
    assert_eq!(
        reasons(&out.skipped),
        [
            "service default/web: port 80/tcp is given twice",
            "service default/x: port \"a\": unknown protocol \"QUIC\""
        ]
    );
}

fn node(name: &str, cidr: Option<&str>, addresses: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: cidr.map(Into::into),
            pod_cidrs: cidr.map(|c| c.split(',').map(Into::into).collect()),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|(t, a)| NodeAddress {
                        type_: (*t).into(),
                        address: (*a).into(),
                    })
                    .collect(),
            ),
            ..NodeStatus::default()
        }),
    }
}

#[test]
fn other_nodes_become_peers_and_this_one_reports_its_pod_cidr() {
    let nodes = [
        node(
            "node-b.example",
            Some("10.244.1.0/24"),
            &[("Hostname", "node-b"), ("InternalIP", "192.0.2.2")],
        ),
        node("me", Some("10.244.0.0/24"), &[("InternalIP", "192.0.2.1")]),
        node(
            "dual",
            Some("fd00:1::/64,10.244.2.0/24"),
            &[
                ("ExternalIP", "198.51.100.3"),
                ("InternalIP", "fd00::3"),
                ("InternalIP", "192.0.2.3"),
            ],
        ),
    ];
    let out = peers(&nodes, "me");
    assert!(out.found_self);
    assert_eq!(out.own_pod_cidr.as_deref(), Some("10.244.0.0/24"));
    assert_eq!(out.skipped, []);
    let got: Vec<String> = out
        .peers
        .iter()
        .map(|p| format!("{} {} {}", p.name, p.node_ip, p.pod_cidr))
        .collect();
    assert_eq!(
        got,
        [
            "dual 192.0.2.3 10.244.2.0/24",
            "node-b.example 192.0.2.2 10.244.1.0/24"
        ]
    );
}

#[test]
fn nodes_without_a_usable_cidr_or_address_are_skipped_with_the_reason() {
    let ip = [("InternalIP", "192.0.2.9")];
    let nodes = [
        node("bad", Some("10.244.1.0/33"), &ip),
        node("hostbits", Some("10.244.1.5/24"), &ip),
        node("six", Some("fd00:1::/64"), &ip),
        node("young", None, &ip),
        node(
            "noip",
            Some("10.244.4.0/24"),
            &[("ExternalIP", "198.51.100.4")],
        ),
    ];
    let out = peers(&nodes, "me");
    assert!(out.peers.is_empty());
    assert_eq!((out.found_self, out.own_pod_cidr), (false, None));
    assert_eq!(
        reasons(&out.skipped),
        [
            "node bad: pod CIDR \"10.244.1.0/33\" is not a CIDR",
            "node hostbits: pod CIDR 10.244.1.5/24 has host bits set (the network is 10.244.1.0/24)",
            "node six: no IPv4 pod CIDR in fd00:1::/64 (IPv6 is not supported)",
            "node young: no pod CIDR (spec.podCIDR) yet",
            "node noip: no IPv4 InternalIP address",
        ]
    );
}
