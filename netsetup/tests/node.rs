//! Privileged: the node side (bridge, gateway addresses, ip_forward, nft table), and the
//! default-route helpers. Each test runs in its own throwaway network namespace.

mod common;

use common::*;

#[test]
fn ensure_node_makes_the_bridge_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net("10.88.0.0/16")]).unwrap();
        network.ensure_node(&[net("10.88.0.0/16")]).unwrap();

        let link = &ip_json(&["-d", "link", "show", "dev", BRIDGE])[0];
        assert_eq!(link["linkinfo"]["info_kind"], "bridge");
        assert_eq!(link["mtu"], MTU);
        assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        assert_eq!(gateway_addresses(), ["10.88.0.1/16"]);
        // The bridge has a MAC of its own (locally administered; a bridge without ports
        // would otherwise show all zeros), so it does not change as ports come and go.
        let mac = link["address"].as_str().unwrap().to_owned();
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02, "unicast, locally administered: {mac}");
        let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        assert_eq!(forward.trim(), "1");

        let table = nft_table();
        assert_eq!(table.matches(" daddr != 10.").count(), 1, "{table}");
        assert!(table.contains(
            "ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 ip daddr != @cluster_cidrs masquerade"
        ));
        assert!(
            table.contains(&format!("iifname \"{BRIDGE}\" accept")),
            "{table}"
        );
        assert!(
            table.contains(&format!(
                "oifname \"{BRIDGE}\" ct state established,related accept"
            )),
            "{table}"
        );
    });
}

#[test]
fn ensure_node_adds_subnets_and_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net("10.88.0.0/16")]).unwrap();
        // UpdateRuntimeConfig with a new pod CIDR: only the new one is passed.
        network.ensure_node(&[net("10.99.0.0/24")]).unwrap();
        network
            .ensure_node(&[net("10.88.0.0/16"), net("10.99.0.0/24")])
            .unwrap();

        let mut gateways = gateway_addresses();
        gateways.sort();
        assert_eq!(gateways, ["10.88.0.1/16", "10.99.0.1/24"]);
        let table = nft_table();
        assert_eq!(table.matches(" daddr != 10.").count(), 2, "{table}");
        for subnet in ["10.88.0.0/16", "10.99.0.0/24"] {
            assert!(table.contains(&format!(
                "ip saddr {subnet} ip daddr != {subnet} ip daddr != @cluster_cidrs masquerade"
            )));
        }
    });
}

#[test]
fn ensure_node_repairs_a_bridge_left_down() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net("10.88.0.0/16")]).unwrap();
        ip(&["link", "set", BRIDGE, "down", "mtu", "1300"]);
        network.ensure_node(&[net("10.88.0.0/16")]).unwrap();
        let link = &ip_json(&["link", "show", "dev", BRIDGE])[0];
        assert_eq!(link["mtu"], MTU);
        assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    });
}

#[test]
fn default_route_helpers_read_the_callers_netns() {
    on_node(|| {
        assert_eq!(netsetup::default_route_mtu(), None);
        assert_eq!(netsetup::node_ip(), None);
        ip(&[
            "link", "add", "uplink0", "mtu", "1234", "type", "veth", "peer", "uplink1",
        ]);
        ip(&["addr", "add", "192.0.2.10/24", "dev", "uplink0"]);
        ip(&["link", "set", "uplink0", "up"]);
        ip(&["route", "add", "default", "via", "192.0.2.1"]);
        assert_eq!(netsetup::default_route_mtu(), Some(1234));
        assert_eq!(netsetup::node_ip(), Some(addr("192.0.2.10")));
    });
}

/// The IPv4 addresses of the bridge, as `ip/prefix`.
fn gateway_addresses() -> Vec<String> {
    let addrs = ip_json(&["-4", "addr", "show", "dev", BRIDGE]);
    addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}
