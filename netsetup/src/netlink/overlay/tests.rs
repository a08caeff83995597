//! The VTEP MAC rule, then the real thing in a throwaway netns, checked against both the
//! wrapper's own listings and iproute2's JSON output (needs root; PEAPOD_SKIP_PRIVILEGED=1
//! skips those tests when not root).

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::thread;

use nix::sched::{CloneFlags, unshare};
use serde_json::{Value, json};

use super::*;
use crate::netlink::{Link, VethPair};

const VXLAN: &str = "peapod.vxlan";
const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

#[test]
fn vtep_mac_is_locally_administered_unicast_and_carries_the_node_ip() {
    assert_eq!(
        vtep_mac(Ipv4Addr::new(10, 1, 254, 7)),
        [0x02, 0x70, 10, 1, 254, 7]
    );
    let mac = vtep_mac(Ipv4Addr::new(255, 255, 255, 255));
    assert_eq!(mac[0] & 0x03, 0x02, "locally administered, unicast");
    assert_ne!(vtep_mac(LOCAL), vtep_mac(PEER));
}

fn privileged() -> bool {
    crate::testing::privileged("the overlay netlink tests")
}

/// Runs `test` on a fresh thread in a new network namespace holding the underlay veth pair
/// `u0`/`u1` (192.0.2.1/24 on `u0`, both up) and the VXLAN device, up; the namespace goes with
/// the thread. Children the test spawns inherit the thread's namespace.
fn with_vxlan(test: impl FnOnce(&mut Netlink, &Link, &Link) + Send) {
    if !privileged() {
        return;
    }
    thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
            let mut nl = Netlink::open().expect("open rtnetlink");
            let netns = File::open("/proc/thread-self/ns/net").expect("open own netns");
            nl.create_veth_pair(&VethPair {
                host: "u0",
                peer: "u1",
                mtu: 1500,
                master: None,
                peer_netns: netns.as_fd(),
            })
            .expect("create the underlay veth pair");
            let u0 = nl.existing_link("u0").expect("find u0");
            let u1 = nl.existing_link("u1").expect("find u1");
            nl.set_up(&u1).expect("bring u1 up");
            nl.add_address(&u0, "192.0.2.1/24".parse().unwrap())
                .expect("address u0");
            nl.create_vxlan(&spec(u0.index)).expect("create the vxlan");
            let vxlan = nl.existing_link(VXLAN).expect("find the vxlan");
            nl.set_up(&vxlan).expect("bring the vxlan up");
            test(&mut nl, &u0, &vxlan);
        });
    });
}

fn spec(underlay: u32) -> VxlanSpec<'static> {
    VxlanSpec {
        name: VXLAN,
        vni: 42,
        port: 4789,
        local: LOCAL,
        underlay: Some(underlay),
        mtu: 1450,
        mac: vtep_mac(LOCAL),
    }
}

/// Runs iproute2's `program` with `-j` and the given arguments, returns its JSON output.
fn iproute2(program: &str, args: &[&str]) -> Value {
    let out = Command::new(program)
        .arg("-j")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // Some versions print nothing instead of `[]` when there is nothing to show.
    serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text })
        .unwrap_or_else(|e| panic!("{program} {args:?} printed no JSON ({e}): {text}"))
}

/// The objects of a JSON array with `key` equal to `value`.
fn with<'v>(list: &'v Value, key: &str, value: &str) -> Vec<&'v Value> {
    let list = list.as_array().expect("a JSON array");
    list.iter().filter(|o| o[key] == value).collect()
}

fn ip_route(dst: &str) -> Vec<Value> {
    with(
        &iproute2("ip", &["route", "show", "table", "main"]),
        "dst",
        dst,
    )
    .into_iter()
    .cloned()
    .collect()
}

fn mac_text(mac: [u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

#[test]
fn vxlan_is_created_as_specified_and_read_back() {
    with_vxlan(|nl, u0, vxlan| {
        let info = nl
            .vxlan_info(VXLAN)
            .expect("read the vxlan")
            .expect("the vxlan exists");
        let expected = VxlanInfo {
            index: vxlan.index,
            vni: 42,
            port: 4789,
            local: LOCAL,
            underlay: Some(u0.index),
            learning: false,
            mtu: 1450,
            mac: vtep_mac(LOCAL),
        };
        assert_eq!(info, expected);
        assert!(info.matches(&spec(u0.index)));
        assert!(!info.matches(&VxlanSpec {
            port: 8472,
            ..spec(u0.index)
        }));

        let shown = iproute2("ip", &["-d", "link", "show", VXLAN]);
        let link = &shown[0];
        assert_eq!(link["mtu"], 1450);
        assert_eq!(link["address"], "02:70:c0:00:02:01");
        let data = &link["linkinfo"]["info_data"];
        assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
        assert_eq!(data["id"], 42);
        assert_eq!(data["port"], 4789, "dstport in network order: {data}");
        assert_eq!(data["local"], "192.0.2.1");
        assert_eq!(data["link"], "u0");
        assert_eq!(data["learning"], false);
    });
}

#[test]
fn vxlan_info_is_none_for_a_missing_or_non_vxlan_link() {
    with_vxlan(|nl, u0, _| {
        assert_eq!(nl.vxlan_info("nothing").expect("look up"), None);
        assert_eq!(nl.vxlan_info("u0").expect("look up"), None, "a veth");
        let again = nl.create_vxlan(&spec(u0.index)).unwrap_err();
        assert_eq!(again.errno(), Some(libc::EEXIST), "{again}");
    });
}

#[test]
fn overlay_route_neighbour_and_fdb_entries_are_replaced_listed_and_deleted() {
    with_vxlan(|nl, _, vxlan| {
        nl.add_address(vxlan, "10.89.0.0/32".parse().unwrap())
            .expect("address the vxlan");
        let pod_gw = IpAddr::from(Ipv4Addr::new(10, 90, 0, 0));
        let peer_mac = vtep_mac(PEER);
        let route = Route {
            dst: "10.90.0.0/24".parse().unwrap(),
            gateway: Some(pod_gw),
            oif: Some(vxlan.index),
            onlink: true,
        };
        for round in ["first", "again"] {
            nl.replace_neighbour(vxlan.index, pod_gw, peer_mac)
                .unwrap_or_else(|e| panic!("{round}: {e}"));
            nl.replace_fdb(vxlan.index, peer_mac, PEER.into())
                .unwrap_or_else(|e| panic!("{round}: {e}"));
            nl.replace_route(&route)
                .unwrap_or_else(|e| panic!("{round}: {e}"));

            assert_eq!(nl.neighbours(vxlan.index).unwrap(), [(pod_gw, peer_mac)]);
            assert_eq!(nl.fdb(vxlan.index).unwrap(), [(peer_mac, PEER.into())]);
            let ours: Vec<Route> = nl
                .routes()
                .unwrap()
                .into_iter()
                .filter(|r| r.dst == route.dst)
                .collect();
            assert_eq!(ours, [route], "{round}");
        }

        let neigh = iproute2("ip", &["neigh", "show", "dev", VXLAN]);
        let neigh = with(&neigh, "dst", "10.90.0.0");
        assert_eq!(neigh.len(), 1, "{neigh:?}");
        assert_eq!(neigh[0]["lladdr"], mac_text(peer_mac));
        assert_eq!(neigh[0]["state"], json!(["PERMANENT"]));

        let fdb = iproute2("bridge", &["fdb", "show", "dev", VXLAN]);
        let fdb = with(&fdb, "mac", &mac_text(peer_mac));
        assert_eq!(fdb.len(), 1, "{fdb:?}");
        assert_eq!(fdb[0]["dst"], "192.0.2.2");
        assert_eq!(fdb[0]["state"], "permanent");
        assert!(fdb[0]["flags"].as_array().unwrap().contains(&json!("self")));

        let shown = ip_route("10.90.0.0/24");
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!(shown[0]["gateway"], "10.90.0.0");
        assert_eq!(shown[0]["dev"], VXLAN);
        assert_eq!(shown[0]["protocol"], "static");
        assert_eq!(shown[0]["flags"], json!(["onlink"]));

        for round in ["first", "again"] {
            let gone = round == "first";
            assert_eq!(nl.delete_route(route.dst).unwrap(), gone, "{round}");
            assert_eq!(nl.delete_neighbour(vxlan.index, pod_gw).unwrap(), gone);
            assert_eq!(
                nl.delete_fdb(vxlan.index, peer_mac, PEER.into()).unwrap(),
                gone
            );
        }
        assert!(nl.routes().unwrap().iter().all(|r| r.dst != route.dst));
        assert_eq!(nl.neighbours(vxlan.index).unwrap(), []);
        assert_eq!(nl.fdb(vxlan.index).unwrap(), []);
        assert_eq!(ip_route("10.90.0.0/24"), Vec::<Value>::new());
        let neigh = iproute2("ip", &["neigh", "show", "dev", VXLAN]);
        assert!(with(&neigh, "dst", "10.90.0.0").is_empty(), "{neigh}");
        let fdb = iproute2("bridge", &["fdb", "show", "dev", VXLAN]);
        assert!(with(&fdb, "mac", &mac_text(peer_mac)).is_empty(), "{fdb}");
    });
}

#[test]
fn routed_mode_route_via_the_underlay_is_listed_and_deleted() {
    with_vxlan(|nl, u0, _| {
        let dst: IpNet = "10.91.0.0/24".parse().unwrap();
        let route = Route {
            dst,
            gateway: Some(PEER.into()),
            oif: None,
            onlink: false,
        };
        nl.replace_route(&route).expect("add the route");
        nl.replace_route(&route).expect("replace the route");
        let listed: Vec<Route> = nl
            .routes()
            .unwrap()
            .into_iter()
            .filter(|r| r.dst == dst)
            .collect();
        // The kernel resolves the gateway to the underlay link.
        let resolved = Route {
            oif: Some(u0.index),
            ..route
        };
        assert_eq!(listed, [resolved]);
        let shown = ip_route("10.91.0.0/24");
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!(shown[0]["gateway"], "192.0.2.2");
        assert_eq!(shown[0]["dev"], "u0");
        assert_eq!(shown[0]["flags"], json!([]));

        assert!(nl.delete_route(dst).unwrap());
        assert!(nl.routes().unwrap().iter().all(|r| r.dst != dst));
        assert_eq!(ip_route("10.91.0.0/24"), Vec::<Value>::new());
        assert!(!nl.delete_route(dst).unwrap());
    });
}
