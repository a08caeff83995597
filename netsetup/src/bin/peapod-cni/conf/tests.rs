use super::*;
use crate::error::code;

fn conf(extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.1.0","name":"pods","type":"peapod","subnet":"10.99.0.0/24"{extra}}}"#
    )
}

fn parse(text: &str) -> Result<NetConf, CniError> {
    NetConf::parse(text.as_bytes(), Command::Add)
}

/// The host ports as `protocol hostIP hostPort containerPort`.
fn ports(c: &NetConf) -> Vec<String> {
    c.host_ports
        .iter()
        .map(|p| {
            format!(
                "{} {:?} {} {}",
                p.protocol, p.host_ip, p.host_port, p.container_port
            )
        })
        .collect()
}

fn code_of(text: &str) -> u32 {
    parse(text).unwrap_err().code()
}

#[test]
fn defaults_fill_what_the_configuration_leaves_out() {
    let c = parse(&conf("")).unwrap();
    assert_eq!(c.bridge, "peapod0");
    assert_eq!(c.subnet.to_string(), "10.99.0.0/24");
    assert_eq!(c.mtu, None);
    assert!(c.ip_masq);
    assert_eq!(c.dir, PathBuf::from("/var/lib/peapod-cni/pods"));
    assert!(c.host_ports.is_empty());
    assert!(c.prev_result.is_none());
    assert!(c.valid_attachments.is_none());
}

#[test]
fn every_setting_is_read() {
    let c = parse(&conf(
        r#","bridge":"cni9","mtu":1400,"ipMasq":false,"dataDir":"/tmp/x",
        "dns":{"nameservers":["10.99.0.10"]},"prevResult":{"ips":[]}"#,
    ))
    .unwrap();
    assert_eq!(c.bridge, "cni9");
    assert_eq!(c.mtu, Some(1400));
    assert!(!c.ip_masq);
    assert_eq!(c.dir, PathBuf::from("/tmp/x/pods"));
    assert_eq!(c.dns.unwrap()["nameservers"][0], "10.99.0.10");
    assert!(c.prev_result.is_some());
}

#[test]
fn a_subnet_is_truncated_to_its_network() {
    let c = parse(&conf("").replace("10.99.0.0/24", "10.99.0.77/24")).unwrap();
    assert_eq!(c.subnet.to_string(), "10.99.0.0/24");
}

#[test]
fn bad_configurations_get_the_spec_codes() {
    assert_eq!(code_of("{"), code::DECODE);
    assert_eq!(code_of("[]"), code::DECODE);
    assert_eq!(code_of(r#"{"name":"pods","type":"peapod"}"#), code::DECODE);
    assert_eq!(
        code_of(&conf("").replace("1.1.0", "0.3.1")),
        code::INCOMPATIBLE_VERSION
    );
    for bad in [
        conf("").replace("10.99.0.0/24", "10.99.0.0/33"),
        conf("").replace("10.99.0.0/24", "banana"),
        conf("").replace("10.99.0.0/24", "10.99.0.0/31"),
        conf("").replace("10.99.0.0/24", "fd00::/64"),
        conf("").replace(r#","subnet":"10.99.0.0/24""#, ""),
        conf("").replace(r#""name":"pods""#, r#""name":"../etc""#),
        conf("").replace(r#""name":"pods""#, r#""name":"""#),
        conf(r#","bridge":"a/b""#),
        conf(r#","bridge":"sixteen-chars-xx""#),
        conf(r#","mtu":67"#),
        conf(r#","mtu":70000"#),
        conf(r#","dataDir":"relative/dir""#),
        conf(r#","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}"#),
        conf(
            r#","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"sctp"}]}"#,
        ),
        conf(
            r#","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"::1"}]}"#,
        ),
        conf(
            r#","ipMasq":false,"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}"#,
        ),
    ] {
        assert_eq!(code_of(&bad), code::INVALID_CONFIG, "{bad}");
    }
}

#[test]
fn port_mappings_become_host_ports() {
    let c = parse(&conf(
        r#","runtimeConfig":{"portMappings":[
            {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
            {"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"},
            {"hostPort":9000,"containerPort":9000,"hostIP":"0.0.0.0"}]}"#,
    ))
    .unwrap();
    assert_eq!(
        ports(&c),
        [
            "tcp None 8080 80",
            "udp Some(127.0.0.1) 5353 53",
            "tcp None 9000 9000"
        ]
    );
}

#[test]
fn port_mappings_keys_match_in_any_case_as_go_matches_them() {
    // containerd's go-cni sends Go's field names; Go plugins match keys case-insensitively.
    let c = parse(&conf(
        r#","runtimeConfig":{"portMappings":[
            {"HostPort":12000,"ContainerPort":80,"Protocol":"tcp","HostIP":""},
            {"hostport":12001,"containerport":81,"protocol":"UDP","hostip":"127.0.0.1"},
            {"HOSTPORT":12002,"CONTAINERPORT":82,"PROTOCOL":"TCP","HOSTIP":"0.0.0.0"},
            {"hOsTpOrT":12003,"containerPort":83,"HostIp":null}]}"#,
    ))
    .unwrap();
    assert_eq!(
        ports(&c),
        [
            "tcp None 12000 80",
            "udp Some(127.0.0.1) 12001 81",
            "tcp None 12002 82",
            "tcp None 12003 83"
        ]
    );
    // The record keeps them under our names, and reads them back.
    let stored = serde_json::to_value(&c.port_mappings[0]).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"hostPort":12000,"containerPort":80,"protocol":"tcp","hostIP":""})
    );
    let back: PortMapping = serde_json::from_value(stored).unwrap();
    assert_eq!(back, c.port_mappings[0]);
    // Two keys for one field: the later one counts, as in Go.
    let c = parse(&conf(
        r#","runtimeConfig":{"portMappings":[{"hostPort":1,"HostPort":2,"containerPort":80}]}"#,
    ))
    .unwrap();
    assert_eq!(ports(&c), ["tcp None 2 80"]);
}

#[test]
fn the_configuration_and_gc_lists_match_keys_in_any_case_too() {
    let c = parse(
        r#"{"CNIVersion":"1.1.0","Name":"pods","TYPE":"peapod","Subnet":"10.99.0.0/24",
            "IPMasq":false,"DataDir":"/tmp/x","RuntimeConfig":{"PortMappings":[]},
            "CNI.dev/Valid-Attachments":[{"ContainerID":"c1","IfName":"eth0"}]}"#,
    )
    .unwrap();
    assert!(!c.ip_masq);
    assert_eq!(c.dir, PathBuf::from("/tmp/x/pods"));
    assert!(c.valid_attachments.unwrap().contains(&AttachmentId {
        container_id: "c1".into(),
        ifname: "eth0".into()
    }));
}

#[test]
fn only_add_refuses_a_runtime_config_it_cannot_use() {
    for bad in [
        r#","runtimeConfig":"banana""#,
        r#","runtimeConfig":{"portMappings":"banana"}"#,
        r#","runtimeConfig":{"portMappings":[{"hostPort":"x","containerPort":80}]}"#,
        r#","runtimeConfig":{"portMappings":[{"containerPort":80}]}"#,
        r#","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}"#,
        r#","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"sctp"}]}"#,
        r#","ipMasq":false,"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}"#,
    ] {
        let text = conf(bad);
        let code = parse(&text).unwrap_err().code();
        assert!(
            [code::DECODE, code::INVALID_CONFIG].contains(&code),
            "{text}"
        );
        for command in [Command::Del, Command::Check, Command::Gc, Command::Status] {
            let c = NetConf::parse(text.as_bytes(), command)
                .unwrap_or_else(|e| panic!("{command:?} {text}: {e}"));
            assert!(c.host_ports.is_empty() && c.port_mappings.is_empty());
            assert_eq!(c.dir, PathBuf::from("/var/lib/peapod-cni/pods"));
        }
    }
}

#[test]
fn valid_attachments_come_from_either_key() {
    let list = r#"[{"containerID":"c1","ifname":"eth0"}]"#;
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let c = parse(&conf(&format!(r#","{key}":{list}"#))).unwrap();
        let valid = c.valid_attachments.unwrap();
        assert_eq!(valid.len(), 1);
        assert!(valid.contains(&AttachmentId {
            container_id: "c1".into(),
            ifname: "eth0".into()
        }));
    }
    let empty = parse(&conf(r#","cni.dev/valid-attachments":[]"#)).unwrap();
    assert_eq!(empty.valid_attachments, Some(BTreeSet::new()));
}

#[test]
fn commands_and_the_environment_are_checked() {
    assert_eq!(Command::parse(Some("ADD")).unwrap(), Command::Add);
    assert_eq!(Command::parse(Some("GC")).unwrap(), Command::Gc);
    assert_eq!(
        Command::parse(Some("add")).unwrap_err().code(),
        code::INVALID_ENV
    );
    assert_eq!(Command::parse(None).unwrap_err().code(), code::INVALID_ENV);
    let id = |c: Option<&str>, i: Option<&str>| {
        AttachmentId::from_env(c.map(Into::into), i.map(Into::into))
    };
    assert!(id(Some("abc-1.2_3"), Some("eth0")).is_ok());
    for (c, i) in [
        (None, Some("eth0")),
        (Some("abc"), None),
        (Some("-abc"), Some("eth0")),
        (Some("a/b"), Some("eth0")),
        (Some("abc"), Some("eth/0")),
        (Some("abc"), Some("much-too-long-name")),
    ] {
        assert_eq!(
            id(c, i).unwrap_err().code(),
            code::INVALID_ENV,
            "{c:?} {i:?}"
        );
    }
}

#[test]
fn keys_and_names_are_stable_and_distinct() {
    let a = AttachmentId {
        container_id: "c1".into(),
        ifname: "eth0".into(),
    };
    let b = AttachmentId {
        container_id: "c1".into(),
        ifname: "eth1".into(),
    };
    assert_eq!(a.key().len(), 64);
    assert_ne!(a.key(), b.key());
    assert_eq!(a.key(), a.clone().key());
    assert!(
        netsetup::is_host_ifname(&a.host_ifname()),
        "{}",
        a.host_ifname()
    );
    assert_eq!(AttachmentId::from_owner(&a.owner()), Some(a));
}

#[test]
fn versions_and_pools() {
    assert_eq!(version_of(br#"{"cniVersion":"1.0.0"}"#), "1.0.0");
    assert_eq!(version_of(br#"{"cniVersion":"0.4.0"}"#), DEFAULT_VERSION);
    assert_eq!(version_of(b"garbage"), DEFAULT_VERSION);
    assert_eq!(pool_size("10.0.0.0/30".parse().unwrap()), 1);
    assert_eq!(pool_size("10.0.0.0/24".parse().unwrap()), 253);
}

#[test]
fn errors_print_as_the_spec_has_them() {
    let e = parse(&conf("").replace("10.99.0.0/24", "banana")).unwrap_err();
    let json = e.to_json("1.0.0");
    assert_eq!(json["cniVersion"], "1.0.0");
    assert_eq!(json["code"], code::INVALID_CONFIG);
    assert!(json["msg"].as_str().unwrap().contains("subnet"), "{json}");
    assert!(json["details"].is_string());
}
