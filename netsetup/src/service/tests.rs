//! The scripts Services make, and (as root, in a network namespace of their own) what the
//! kernel makes of them.

use std::process::Command;

use super::*;
use crate::firewall::{Firewall, Nftables, node_script};

fn port(id: &str, backends: &[&str], affinity: Option<u32>) -> ServicePortRules {
    ServicePortRules {
        id: id.into(),
        addresses: vec!["10.96.0.10".parse().unwrap()],
        protocol: L4::Tcp,
        port: 80,
        node_port: None,
        affinity,
        backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
    }
}

#[test]
fn only_a_change_of_backends_skips_nft() {
    use crate::nftnl::{ChainRules, DnatRule};
    let two = port("a", &["10.88.0.5:8080", "10.88.0.6:8080"], None);
    let one = port("a", &["10.88.0.7:8080"], None);
    let dnat = |modulus, target: &str| DnatRule {
        modulus,
        protocol: 6,
        target: target.parse().unwrap(),
    };
    assert_eq!(
        rules_only(std::slice::from_ref(&one), std::slice::from_ref(&two)),
        Some(vec![ChainRules {
            chain: "svc_a".into(),
            rules: vec![
                dnat(Some(2), "10.88.0.5:8080"),
                dnat(None, "10.88.0.6:8080")
            ],
        }])
    );
    let same = std::slice::from_ref(&two);
    assert_eq!(rules_only(same, same), Some(vec![]));
    // Anything else is nft's: no backends (the keys move to the reject sets), affinity
    // (chains and sets per backend), another address or node port, a port more or less.
    let none = port("a", &[], None);
    let sticky = port("a", &["10.88.0.7:8080"], Some(60));
    let moved = ServicePortRules {
        node_port: Some(30080),
        ..one.clone()
    };
    let b = port("b", &["10.88.0.7:8080"], None);
    for (old, new) in [
        (vec![two.clone()], vec![none]),
        (vec![two.clone()], vec![sticky]),
        (vec![two.clone()], vec![moved]),
        (vec![two.clone()], vec![one.clone(), b.clone()]),
        (vec![two.clone()], vec![b]),
        (vec![], vec![one]),
    ] {
        assert_eq!(rules_only(&old, &new), None, "{old:?} -> {new:?}");
    }
}

fn changed(old: Option<&ServicePortRules>, new: Option<&ServicePortRules>) -> String {
    let mut s = String::new();
    change(&mut s, old, new);
    s
}

#[test]
fn backends_are_picked_by_numgen_one_rule_each() {
    let p = port(
        "a1",
        &["10.88.0.5:8080", "10.88.0.6:8080", "10.88.0.7:8080"],
        None,
    );
    let s = changed(None, Some(&p));
    assert!(s.contains(
        "add rule inet peapod svc_a1 numgen random mod 3 0 meta l4proto tcp dnat ip to 10.88.0.5:8080\n\
         add rule inet peapod svc_a1 numgen random mod 2 0 meta l4proto tcp dnat ip to 10.88.0.6:8080\n\
         add rule inet peapod svc_a1 meta l4proto tcp dnat ip to 10.88.0.7:8080\n"
    ), "{s}");
    assert!(!s.contains(" map {"), "no anonymous map: {s}");
    assert!(s.contains("add element inet peapod svc_ip4 { 10.96.0.10 . tcp . 80 : goto svc_a1 }"));
    assert!(!s.contains("svc_noep4"), "{s}");
    let one = port("a1", &["10.88.0.5:8080"], None);
    assert!(changed(None, Some(&one)).contains("meta l4proto tcp dnat ip to 10.88.0.5:8080\n"));
}

#[test]
fn no_backend_means_a_reject_element_and_no_dnat() {
    let p = port("b", &[], None);
    let s = changed(None, Some(&p));
    assert!(s.contains("add element inet peapod svc_noep4 { 10.96.0.10 . tcp . 80 }\n"));
    assert!(!s.contains("svc_ip4 {"), "{s}");
    assert!(!s.contains("dnat"), "{s}");
    // Backends come: the reject element goes (added first, so that its delete cannot fail).
    let with = port("b", &["10.88.0.5:80"], None);
    let s = changed(Some(&p), Some(&with));
    assert!(s.contains(
        "add element inet peapod svc_noep4 { 10.96.0.10 . tcp . 80 }\ndelete element inet peapod svc_noep4 { 10.96.0.10 . tcp . 80 }\n"
    ), "{s}");
    assert!(s.contains("svc_ip4 { 10.96.0.10 . tcp . 80 : goto svc_b }"));
}

#[test]
fn affinity_has_a_chain_and_a_timed_set_per_backend() {
    let p = port("c", &["10.88.0.5:80", "10.88.0.6:80"], Some(600));
    let s = changed(None, Some(&p));
    for tag in ["0a580005_0050", "0a580006_0050"] {
        assert!(s.contains(&format!(
            "add set inet peapod aff_c_{tag} {{ type ipv4_addr; flags dynamic,timeout; timeout 600s; }}"
        )));
        assert!(s.contains(&format!(
            "add rule inet peapod svc_c ip saddr @aff_c_{tag} goto svc_c_{tag}\n"
        )));
        assert!(s.contains(&format!("update @aff_c_{tag} {{ ip saddr timeout 600s }}")));
    }
    assert!(
        s.contains(
            "add rule inet peapod svc_c numgen random mod 2 0 goto svc_c_0a580005_0050\n\
         add rule inet peapod svc_c goto svc_c_0a580006_0050\n"
        ),
        "{s}"
    );
    // One backend goes: its chain and set go, the other's stay.
    let fewer = port("c", &["10.88.0.6:80"], Some(600));
    let s = changed(Some(&p), Some(&fewer));
    assert!(
        s.contains("delete chain inet peapod svc_c_0a580005_0050\n"),
        "{s}"
    );
    assert!(
        s.contains("delete set inet peapod aff_c_0a580005_0050\n"),
        "{s}"
    );
    assert!(
        !s.contains("delete chain inet peapod svc_c_0a580006_0050"),
        "{s}"
    );
}

#[test]
fn removal_deletes_elements_before_the_chain() {
    let mut p = port("d", &["10.88.0.5:80"], None);
    p.node_port = Some(30080);
    p.addresses.push("192.0.2.7".parse().unwrap());
    let s = changed(Some(&p), None);
    let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} in {s}"));
    assert!(
        at("delete element inet peapod svc_ip4 { 10.96.0.10 . tcp . 80 }")
            < at("delete chain inet peapod svc_d\n")
    );
    assert!(at("delete element inet peapod svc_ip4 { 192.0.2.7 . tcp . 80 }") > 0);
    assert!(at("delete element inet peapod svc_nodeports { tcp . 30080 }") > 0);
    assert!(!s.contains("add rule"), "{s}");
}

#[test]
fn ipv6_ports_use_ip6_maps_and_targets() {
    let p = ServicePortRules {
        addresses: vec!["fd00:96::a".parse().unwrap()],
        backends: vec!["[fd00:88::5]:8080".parse().unwrap()],
        protocol: L4::Udp,
        ..port("e", &[], None)
    };
    let s = changed(None, Some(&p));
    assert!(
        s.contains("svc_ip6 { fd00:96::a . udp . 80 : goto svc_e }"),
        "{s}"
    );
    assert!(
        s.contains("meta l4proto udp dnat ip6 to [fd00:88::5]:8080"),
        "{s}"
    );
}

#[test]
fn sync_flushes_maps_and_drops_what_is_not_wanted() {
    let present = Present {
        chains: vec!["svc_old".into(), "svc_keep".into()],
        sets: vec!["aff_old_0a000001_0001".into()],
    };
    let mut s = String::new();
    sync(&mut s, &present, &[port("keep", &["10.88.0.5:80"], None)]);
    assert!(s.starts_with("flush map inet peapod svc_ip4\n"), "{s}");
    assert!(s.contains("flush set inet peapod svc_noep4\n"));
    assert!(s.contains("flush chain inet peapod svc_old\nflush chain inet peapod svc_keep\n"));
    assert!(s.contains("delete chain inet peapod svc_old\n"));
    assert!(!s.contains("delete chain inet peapod svc_keep"), "{s}");
    assert!(s.contains("delete set inet peapod aff_old_0a000001_0001\n"));
    assert!(
        s.contains("add element inet peapod svc_ip4 { 10.96.0.10 . tcp . 80 : goto svc_keep }")
    );
}

#[test]
fn listings_name_service_chains_and_affinity_sets_only() {
    let chains = br#"{"nftables": [{"metainfo": {}},
        {"chain": {"family": "inet", "table": "peapod", "name": "prerouting"}},
        {"chain": {"family": "inet", "table": "peapod", "name": "svc_reject"}},
        {"chain": {"family": "inet", "table": "peapod", "name": "svc_ab"}},
        {"chain": {"family": "inet", "table": "other", "name": "svc_x"}}]}"#;
    let sets = br#"{"nftables": [
        {"set": {"family": "inet", "table": "peapod", "name": "svc_noep4"}},
        {"set": {"family": "inet", "table": "peapod", "name": "aff_ab_0a000001_0001"}}]}"#;
    let p = parse_present(chains, sets).unwrap();
    assert_eq!(p.chains, ["svc_ab"]);
    assert_eq!(p.sets, ["aff_ab_0a000001_0001"]);
    assert!(parse_present(b"{", sets).is_err());
}

fn in_netns(f: impl FnOnce() + Send + 'static) {
    crate::testing::in_netns("the nftables tests of Services", f);
}

fn table() -> String {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "peapod"])
        .output()
        .expect("nft runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_kernel_takes_every_change() {
    in_netns(|| {
        let fw = Nftables::new();
        fw.run(&node_script("peapod0", &["10.88.0.0/16".parse().unwrap()]))
            .expect("node script");
        let mut a = port("a", &["10.88.0.5:8080", "10.88.0.6:8080"], None);
        a.node_port = Some(30080);
        let b = port("b", &[], Some(60));
        let b = ServicePortRules {
            addresses: vec!["10.96.0.11".parse().unwrap()],
            ..b
        };
        fw.change_services(&[], &[a.clone(), b.clone()])
            .expect("add");
        let t = table();
        assert!(t.contains("10.96.0.10 . tcp . 80 : goto svc_a"), "{t}");
        assert!(t.contains("tcp . 30080 : goto svc_a"), "{t}");
        assert!(t.contains("elements = { 10.96.0.11 . tcp . 80 }"), "{t}");
        // b gets backends with affinity; a loses one; then the same again (idempotent).
        let b2 = ServicePortRules {
            backends: vec!["10.88.0.7:80".parse().unwrap()],
            ..b.clone()
        };
        let a2 = ServicePortRules {
            backends: vec!["10.88.0.6:8080".parse().unwrap()],
            ..a.clone()
        };
        fw.change_services(&[a.clone(), b.clone()], &[a2.clone(), b2.clone()])
            .expect("change");
        fw.change_services(&[a2.clone(), b2.clone()], &[a2.clone(), b2.clone()])
            .expect("same again");
        let t = table();
        assert!(t.contains("set aff_b_0a580007_0050"), "{t}");
        assert!(t.contains("dnat ip to 10.88.0.6:8080"), "{t}");
        assert!(!t.contains("10.96.0.11 . tcp . 80 }"), "{t}");
        // A restart's sync with only b wanted: a's chain and elements go, b's set stays.
        fw.sync_services(std::slice::from_ref(&b2)).expect("sync");
        let t = table();
        assert!(!t.contains("svc_a"), "{t}");
        assert!(t.contains("10.96.0.11 . tcp . 80 : goto svc_b"), "{t}");
        assert!(t.contains("set aff_b_0a580007_0050"), "{t}");
        // The node script again (a daemon restart) keeps the Services.
        fw.run(&node_script("peapod0", &[]))
            .expect("node script again");
        assert!(table().contains("10.96.0.11 . tcp . 80 : goto svc_b"));
        fw.change_services(&[b2], &[]).expect("remove");
        let t = table();
        assert!(!t.contains("svc_b"), "{t}");
        assert!(!t.contains("aff_b"), "{t}");
    });
}
