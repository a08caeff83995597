use super::*;

fn route(dst: &str, gateway: Option<&str>, oif: u32) -> Route {
    Route {
        dst: dst.parse().unwrap(),
        gateway: gateway.map(|g| g.parse().unwrap()),
        oif: Some(oif),
        onlink: false,
    }
}

#[test]
fn the_longest_prefix_wins_and_default_catches_the_rest() {
    let routes = [
        route("0.0.0.0/0", Some("10.88.0.1"), 2),
        route("10.88.0.0/16", None, 2),
        route("10.89.1.0/24", Some("192.168.50.2"), 3),
    ];
    let pick = |ip: &str| longest_match(&routes, ip.parse().unwrap()).map(|r| r.dst.to_string());
    assert_eq!(pick("10.88.3.4").as_deref(), Some("10.88.0.0/16"));
    assert_eq!(pick("10.89.1.9").as_deref(), Some("10.89.1.0/24"));
    assert_eq!(pick("10.96.0.10").as_deref(), Some("0.0.0.0/0"));
    assert_eq!(
        longest_match(&routes[1..], "10.96.0.10".parse().unwrap()),
        None
    );
}

#[test]
fn routes_read_as_ip_route_prints_them() {
    let links = [Link {
        index: 2,
        name: "eth0".into(),
        mtu: None,
        mac: None,
        master: None,
        up: true,
        kind: None,
    }];
    let mut r = route("0.0.0.0/0", Some("10.88.0.1"), 2);
    assert_eq!(describe_route(&r, &links), "default via 10.88.0.1 dev eth0");
    r.dst = "10.89.0.0/24".parse().unwrap();
    r.oif = Some(7);
    r.onlink = true;
    assert_eq!(
        describe_route(&r, &links),
        "10.89.0.0/24 via 10.88.0.1 dev #7 onlink"
    );
}

const CHAIN: &str = "table inet peapod {
\tchain svc_0123456789abcdef_tcp80 { # handle 40
\t\tnumgen random mod 2 0 meta l4proto tcp dnat ip to 10.88.0.5:8080 # handle 41
\t\tmeta l4proto tcp dnat ip to 10.88.0.6:8080 # handle 42
\t}
}
";

#[test]
fn chain_listings_give_their_rules_without_handles() {
    assert_eq!(
        chain_rules(CHAIN),
        [
            "numgen random mod 2 0 meta l4proto tcp dnat ip to 10.88.0.5:8080",
            "meta l4proto tcp dnat ip to 10.88.0.6:8080",
        ]
    );
    let base = "table inet peapod {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tip daddr . meta l4proto . th dport vmap @svc_ip4\n\t}\n}\n";
    assert_eq!(
        chain_rules(base),
        ["ip daddr . meta l4proto . th dport vmap @svc_ip4"]
    );
    assert!(chain_rules("").is_empty());
}

#[test]
fn dnat_targets_and_gotos_are_read_from_rule_text() {
    let rules = chain_rules(CHAIN);
    assert_eq!(
        dnat_target(&rules[0]),
        Some("10.88.0.5:8080".parse().unwrap())
    );
    assert_eq!(dnat_target("ip saddr @aff_x goto svc_x_y"), None);
    assert_eq!(goto_target("ip saddr @aff_x goto svc_x_y"), Some("svc_x_y"));
    assert_eq!(
        goto_target("numgen random mod 3 0 jump svc_a"),
        Some("svc_a")
    );
    assert_eq!(goto_target(&rules[1]), None);
}

#[test]
fn macs_round_trip() {
    let mac = [0x02, 0x70, 0xc0, 0xa8, 0x32, 0x02];
    assert_eq!(format_mac(&mac), "02:70:c0:a8:32:02");
    assert_eq!(parse_mac("02:70:c0:a8:32:02"), Some(mac));
    assert_eq!(parse_mac("02:70:c0:a8:32"), None);
    assert_eq!(parse_mac("02:70:c0:a8:32:02:01"), None);
    assert_eq!(parse_mac("zz:70:c0:a8:32:02"), None);
}

#[test]
fn replies_say_how_conntrack_translates_them() {
    use crate::conntrack::{Protocol, Tuple};
    let t = |s: &str, sp, d: &str, dp| Tuple {
        src: s.parse().unwrap(),
        dst: d.parse().unwrap(),
        protocol: Protocol::TCP,
        src_port: sp,
        dst_port: dp,
    };
    let dnat = Flow {
        original: t("10.88.0.3", 41000, "10.96.0.10", 80),
        reply: t("10.88.0.5", 8080, "10.88.0.3", 41000),
    };
    assert_eq!(
        reply_hop(&dnat).detail,
        "10.88.0.3:41000 -> 10.96.0.10:80: replies come from 10.88.0.5:8080 to \
         10.88.0.3:41000, rewritten back to come from 10.96.0.10:80"
    );
    let plain = Flow {
        original: t("10.88.0.3", 41000, "10.88.0.5", 80),
        reply: t("10.88.0.5", 80, "10.88.0.3", 41000),
    };
    assert!(!reply_hop(&plain).detail.contains("rewritten"));
}

#[test]
fn the_json_form_is_stable() {
    let path = Path {
        version: VERSION,
        from: Endpoint {
            pod: "client".into(),
            id: "ab".into(),
            ip: "10.88.0.3".parse().unwrap(),
        },
        to: "10.96.0.10:80".into(),
        protocol: "tcp".into(),
        hops: vec![Hop {
            at: "node".into(),
            kind: Kind::Dnat,
            detail: "d".into(),
            rule: Some(RuleRef {
                chain: "prerouting".into(),
                rule: "r".into(),
            }),
        }],
        backends: vec![Branch {
            backend: "10.88.0.5:8080".into(),
            hops: vec![Hop {
                at: "bridge peapod0".into(),
                kind: Kind::Bridge,
                detail: "b".into(),
                rule: None,
            }],
            outcome: Outcome::Pod,
            verdict: "v".into(),
        }],
        outcome: Outcome::Pod,
        verdict: "v".into(),
        reply: Vec::new(),
    };
    let json = serde_json::to_value(&path).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "version": 1,
            "from": {"pod": "client", "id": "ab", "ip": "10.88.0.3"},
            "to": "10.96.0.10:80",
            "protocol": "tcp",
            "hops": [{"at": "node", "kind": "dnat", "detail": "d",
                      "rule": {"chain": "prerouting", "rule": "r"}}],
            "backends": [{"backend": "10.88.0.5:8080", "outcome": "pod", "verdict": "v",
                          "hops": [{"at": "bridge peapod0", "kind": "bridge", "detail": "b"}]}],
            "outcome": "pod",
            "verdict": "v",
            "reply": []
        })
    );
    let back: Path = serde_json::from_value(json).unwrap();
    assert_eq!(back, path);
}
