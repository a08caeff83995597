use super::*;

fn port(name: &str, protocol: pb::Protocol, port: u32) -> pb::ServicePort {
    pb::ServicePort {
        name: name.into(),
        protocol: protocol.into(),
        port,
        target_port: 0,
        node_port: 0,
    }
}

fn service() -> pb::Service {
    pb::Service {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ip: "10.96.0.10".into(),
        ports: vec![port("", pb::Protocol::Tcp, 80)],
        ..Default::default()
    }
}

fn field_of(r: Result<Service, ServiceError>) -> String {
    match r {
        Err(ServiceError::Invalid { field, .. }) => field,
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn a_plain_service_converts_and_back() {
    let mut s = service();
    s.ports[0].node_port = 30080;
    s.session_affinity = pb::SessionAffinity::ClientIp.into();
    let m = service_from(s.clone()).unwrap();
    assert_eq!(m.ports[0].target_port, 80);
    assert_eq!(m.ports[0].node_port, Some(30080));
    assert_eq!(m.affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
    let back = service_to(&m);
    assert_eq!(back.cluster_ip, "10.96.0.10");
    assert_eq!(back.ports[0].target_port, 80);
    assert_eq!(back.affinity_timeout_seconds, DEFAULT_AFFINITY_TIMEOUT);
    assert_eq!(service_from(back).unwrap(), m);
}

#[test]
fn each_bad_field_is_named() {
    type Change = Box<dyn Fn(&mut pb::Service)>;
    let cases: Vec<(&str, Change)> = vec![
        ("namespace", Box::new(|s| s.namespace = "Default".into())),
        ("name", Box::new(|s| s.name = "-web".into())),
        ("name", Box::new(|s| s.name = "a".repeat(64))),
        ("cluster_ip", Box::new(|s| s.cluster_ip = "10.96.0".into())),
        (
            "cluster_ip",
            Box::new(|s| s.cluster_ip = "224.0.0.1".into()),
        ),
        (
            "cluster_ip",
            Box::new(|s| s.cluster_ip = "255.255.255.255".into()),
        ),
        ("cluster_ip", Box::new(|s| s.cluster_ip = "::".into())),
        ("ports", Box::new(|s| s.ports.clear())),
        ("ports[0].port", Box::new(|s| s.ports[0].port = 65536)),
        (
            "ports[0].target_port",
            Box::new(|s| s.ports[0].target_port = 70000),
        ),
        (
            "ports[0].node_port",
            Box::new(|s| s.ports[0].node_port = 29999),
        ),
        ("ports[0].protocol", Box::new(|s| s.ports[0].protocol = 9)),
        (
            "ports[0].name",
            Box::new(|s| s.ports[0].name = "Http".into()),
        ),
        (
            "ports",
            Box::new(|s| s.ports.push(port("dns", pb::Protocol::Udp, 53))),
        ),
        (
            "ports[1].port",
            Box::new(|s| {
                s.ports = vec![
                    port("a", pb::Protocol::Tcp, 80),
                    port("b", pb::Protocol::Tcp, 80),
                ]
            }),
        ),
        (
            "ports[1].name",
            Box::new(|s| {
                s.ports = vec![
                    port("a", pb::Protocol::Tcp, 80),
                    port("a", pb::Protocol::Udp, 80),
                ]
            }),
        ),
        (
            "external_ips[0]",
            Box::new(|s| s.external_ips = vec!["10.96.0.10".into()]),
        ),
        (
            "external_ips[0]",
            Box::new(|s| s.external_ips = vec!["fd00::1".into()]),
        ),
        (
            "affinity_timeout_seconds",
            Box::new(|s| s.affinity_timeout_seconds = 5),
        ),
        (
            "affinity_timeout_seconds",
            Box::new(|s| {
                s.session_affinity = pb::SessionAffinity::ClientIp.into();
                s.affinity_timeout_seconds = MAX_AFFINITY_TIMEOUT + 1;
            }),
        ),
        ("session_affinity", Box::new(|s| s.session_affinity = 7)),
    ];
    for (field, change) in cases {
        let mut s = service();
        change(&mut s);
        assert_eq!(field_of(service_from(s.clone())), field, "{s:?}");
    }
}

#[test]
fn the_same_port_number_over_two_protocols_is_fine() {
    let mut s = service();
    s.ports = vec![
        port("a", pb::Protocol::Tcp, 53),
        port("b", pb::Protocol::Udp, 53),
    ];
    assert_eq!(service_from(s).unwrap().ports.len(), 2);
}

#[test]
fn endpoints_are_checked_against_the_service() {
    let mut s = service();
    s.ports[0].name = "http".into();
    let svc = service_from(s).unwrap();
    let ep = |ip: &str| pb::Endpoint {
        ip: ip.into(),
        ready: true,
        ..Default::default()
    };
    let ok = endpoints_from(&svc, vec![ep("10.88.0.5"), ep("10.88.0.6")]).unwrap();
    assert!(ok.iter().all(|e| e.ready && e.serving));
    let err = |eps| match endpoints_from(&svc, eps) {
        Err(ServiceError::Invalid { field, .. }) => field,
        other => panic!("expected invalid, got {other:?}"),
    };
    assert_eq!(
        err(vec![ep("10.88.0.5"), ep("10.88.0.5")]),
        "endpoints[1].ip"
    );
    assert_eq!(err(vec![ep("fd00::5")]), "endpoints[0].ip");
    assert_eq!(err(vec![ep("127.0.0.1")]), "endpoints[0].ip");
    let mut named = ep("10.88.0.5");
    named.ports.insert("dns".into(), 53);
    assert_eq!(err(vec![named]), "endpoints[0].ports");
    let mut zero = ep("10.88.0.5");
    zero.ports.insert("http".into(), 0);
    assert_eq!(err(vec![zero]), "endpoints[0].ports[http]");
    let many: Vec<pb::Endpoint> = (0..=MAX_ENDPOINTS)
        .map(|i| ep(&format!("10.88.{}.{}", i / 250, i % 250 + 1)))
        .collect();
    assert_eq!(err(many), "endpoints");
}

#[test]
fn node_names_are_dns_subdomains() {
    for ok in ["b", "node-2", "ip-10-0-1-2.ec2.internal"] {
        assert!(check_subdomain("name", ok).is_ok(), "{ok}");
    }
    let long = ["a".repeat(63).as_str(); 5].join(".");
    for bad in ["", "B", "a..b", ".a", "a.", "-a.b", &long] {
        assert!(check_subdomain("name", bad).is_err(), "{bad}");
    }
}
