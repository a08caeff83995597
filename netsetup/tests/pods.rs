//! Privileged: attaching and detaching pods for real, in throwaway namespaces.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::*;
use netsetup::{AttachRequest, Attachment, Network};

const SUBNET: &str = "10.88.0.0/16";

fn attach(network: &Network, pod: &PodNs, owner: &str) -> Result<Attachment, netsetup::NetError> {
    attach_in(network, pod, owner, SUBNET)
}

fn attach_in(
    network: &Network,
    pod: &PodNs,
    owner: &str,
    subnet: &str,
) -> Result<Attachment, netsetup::NetError> {
    let netns = pod.netns();
    network.attach(&AttachRequest {
        owner,
        netns: &netns,
        host_ifname: &netsetup::host_ifname(owner),
        pod_ifname: netsetup::POD_IFNAME,
        subnet: net(subnet),
        host_ports: &[],
    })
}

/// Accepts one connection on `listener` and echoes what it reads, uppercased.
fn serve_once(listener: TcpListener) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(&buf.to_ascii_uppercase()).unwrap();
    })
}

/// From inside `pod`, connects to `to` and checks the echo.
fn talk(pod: &PodNs, to: SocketAddr) {
    let answer = pod.run(move || {
        let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"hello")?;
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf)?;
        std::io::Result::Ok(buf)
    });
    assert_eq!(
        &answer.unwrap_or_else(|e| panic!("connect to {to}: {e}")),
        b"HELLO"
    );
}

#[test]
fn two_pods_get_distinct_addresses_and_talk() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net(SUBNET)]).unwrap();
        let (a, b) = (PodNs::new(), PodNs::new());
        let att_a = attach(&network, &a, "aaaaaaaa0001").unwrap();
        let att_b = attach(&network, &b, "bbbbbbbb0002").unwrap();
        assert_ne!(att_a.ip, att_b.ip);
        assert_eq!(att_a.gateway, addr("10.88.0.1"));
        assert_eq!((att_a.prefix_len, att_a.pod_ifname.as_str()), (16, "eth0"));

        // Pod A → pod B, across the bridge.
        let ip_b = att_b.ip;
        let listener = b.run(move || TcpListener::bind((ip_b, 8080))).unwrap();
        let server = serve_once(listener);
        talk(&a, SocketAddr::new(att_b.ip, 8080));
        server.join().unwrap();

        // Pod A → the node, on the gateway address.
        let listener = TcpListener::bind((att_a.gateway, 8081)).unwrap();
        let server = serve_once(listener);
        talk(&a, SocketAddr::new(att_a.gateway, 8081));
        server.join().unwrap();
    });
}

#[test]
fn pod_side_and_host_side_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net(SUBNET)]).unwrap();
        let pod = PodNs::new();
        let att = attach(&network, &pod, "cccccccc0003").unwrap();

        let eth0 = &pod.ip_json(&["addr", "show", "dev", "eth0"])[0];
        assert_eq!(eth0["mtu"], MTU);
        assert_eq!(eth0["address"], att.mac.as_str());
        assert_eq!(eth0["operstate"], "UP");
        let v4: Vec<String> = eth0["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect();
        assert_eq!(v4, [format!("{}/16", att.ip)]);
        let lo = &pod.ip_json(&["link", "show", "dev", "lo"])[0];
        assert!(lo["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        let routes = pod.ip_json(&["route", "show", "default"]);
        assert_eq!(routes[0]["gateway"], "10.88.0.1");
        assert_eq!(routes[0]["dev"], "eth0");

        let host = &ip_json(&["-d", "link", "show", "dev", &att.host_ifname])[0];
        assert_eq!(host["master"], BRIDGE);
        assert_eq!(host["mtu"], MTU);
        assert_eq!(host["linkinfo"]["info_kind"], "veth");
        assert_eq!(
            host["linkinfo"]["info_slave_data"]["hairpin"], true,
            "{host}"
        );
        assert!(host["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    });
}

#[test]
fn detach_removes_link_and_lease_and_can_repeat() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net(SUBNET)]).unwrap();
        let pod = PodNs::new();
        let owner = "dddddddd0004";
        let att = attach(&network, &pod, owner).unwrap();
        assert!(link_exists(&att.host_ifname));
        assert_eq!(network.leases().unwrap().len(), 1);
        assert_eq!(network.pod_links().unwrap(), vec![att.host_ifname.clone()]);

        network.detach(owner, &att).unwrap();
        // Cut off at once; deleted by the reaper soon after.
        assert!(bridge_ports(BRIDGE).is_empty(), "off the bridge at once");
        network.settle();
        assert!(!link_exists(&att.host_ifname));
        assert!(
            pod.ip_json(&["link", "show"]).as_array().unwrap().len() == 1,
            "only lo left"
        );
        assert!(network.leases().unwrap().is_empty());
        network.detach(owner, &att).unwrap();
        network.cleanup_partial(owner, &att.host_ifname).unwrap();
    });
}

#[test]
fn detach_after_the_pod_netns_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net(SUBNET)]).unwrap();
        let pod = PodNs::new();
        let att = attach(&network, &pod, "eeeeeeee0005").unwrap();
        drop(pod);
        network.detach("eeeeeeee0005", &att).unwrap();
        assert!(network.leases().unwrap().is_empty());
        assert!(bridge_ports(BRIDGE).is_empty());
    });
}

#[test]
fn detach_keeps_a_lease_that_someone_else_holds() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net(SUBNET)]).unwrap();
        let pod = PodNs::new();
        let att = attach(&network, &pod, "ffffffff0006").unwrap();
        network.detach("someone-else", &att).unwrap();
        assert_eq!(network.leases().unwrap()[0].owner, "ffffffff0006");
        network.settle();
        assert!(!link_exists(&att.host_ifname));
    });
}

#[test]
fn slash_29_takes_five_pods_then_is_exhausted_without_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        let subnet = "10.77.0.0/29";
        network.ensure_node(&[net(subnet)]).unwrap();
        let pods: Vec<PodNs> = (0..6).map(|_| PodNs::new()).collect();
        let mut atts = Vec::new();
        for (i, pod) in pods.iter().take(5).enumerate() {
            atts.push(attach_in(&network, pod, &format!("{i:08}"), subnet).unwrap());
        }
        let ips: Vec<IpAddr> = atts.iter().map(|a| a.ip).collect();
        let want: Vec<IpAddr> = (2..=6).map(|i| addr(&format!("10.77.0.{i}"))).collect();
        assert_eq!(ips, want);

        let err = attach_in(&network, &pods[5], "00000005", subnet).unwrap_err();
        assert!(err.is_exhausted(), "{err}");
        assert!(!link_exists(&netsetup::host_ifname("00000005")));
        assert_eq!(network.leases().unwrap().len(), 5);
        assert_eq!(
            pods[5].ip_json(&["link", "show"]).as_array().unwrap().len(),
            1
        );
        assert_eq!(bridge_ports(BRIDGE).len(), 5);

        for (i, att) in atts.iter().enumerate() {
            network.detach(&format!("{i:08}"), att).unwrap();
        }
        assert!(network.leases().unwrap().is_empty());
        assert!(bridge_ports(BRIDGE).is_empty());
    });
}

#[test]
fn failed_attaches_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net(SUBNET)]).unwrap();

        // No such netns: fails before any link exists.
        let err = network
            .attach(&AttachRequest {
                owner: "11111111",
                netns: Path::new("/nonexistent/netns"),
                host_ifname: "pp11111111",
                pod_ifname: netsetup::POD_IFNAME,
                subnet: net(SUBNET),
                host_ports: &[],
            })
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");

        // Host name taken by a live pod: the veth cannot be made; the live pod is untouched.
        let (live, other) = (PodNs::new(), PodNs::new());
        let att = attach(&network, &live, "22222222").unwrap();
        let netns = other.netns();
        let err = network
            .attach(&AttachRequest {
                owner: "33333333",
                netns: &netns,
                host_ifname: &att.host_ifname,
                pod_ifname: netsetup::POD_IFNAME,
                subnet: net(SUBNET),
                host_ports: &[],
            })
            .unwrap_err();
        assert!(err.to_string().contains("cannot create link"), "{err}");
        assert!(link_exists(&att.host_ifname));

        // The pod side fails (a default route is already there): the veth pair goes again.
        let busy = PodNs::new();
        busy.run(|| {
            ip(&["link", "add", "up0", "type", "veth", "peer", "up1"]);
            ip(&["addr", "add", "192.0.2.2/24", "dev", "up0"]);
            ip(&["link", "set", "up0", "up"]);
            ip(&["route", "add", "default", "via", "192.0.2.1"]);
        });
        let err = attach(&network, &busy, "44444444").unwrap_err();
        assert!(err.to_string().contains("default route"), "{err}");
        assert!(!link_exists(&netsetup::host_ifname("44444444")));

        let leases = network.leases().unwrap();
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!(leases[0].owner, "22222222");
        assert_eq!(bridge_ports(BRIDGE), vec![att.host_ifname.clone()]);
    });
}

#[test]
fn cleanup_partial_removes_link_and_every_lease_of_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net(SUBNET)]).unwrap();
        let pod = PodNs::new();
        let att = attach(&network, &pod, "55555555").unwrap();
        network
            .cleanup_partial("55555555", &att.host_ifname)
            .unwrap();
        // The link is cut off at once and deleted in the background.
        network.settle();
        assert!(!link_exists(&att.host_ifname));
        assert!(network.leases().unwrap().is_empty());
    });
}
