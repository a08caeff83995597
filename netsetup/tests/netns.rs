//! Privileged: running code in other namespaces, pod sysctls, and the netlink wrapper's moves.

mod common;

use std::fs::File;
use std::os::fd::AsFd;

use common::*;
use netsetup::netlink::{Netlink, VethPair};
use netsetup::{netns, sysctl};
use nix::sched::CloneFlags;

fn own_netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

#[test]
fn run_in_enters_the_namespace_and_leaves_the_caller_alone() {
    on_node(|| {
        let pod = PodNs::new();
        let before = own_netns_inode();
        let inside = netns::run_in(&pod.netns(), own_netns_inode).unwrap();
        assert_ne!(inside, before);
        assert_eq!(own_netns_inode(), before);
        let expected = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(pod.netns()).unwrap().ino()
        };
        assert_eq!(inside, expected);
    });
}

#[test]
fn run_in_reports_a_missing_namespace_with_its_path() {
    require_root();
    let err = netns::run_in(std::path::Path::new("/nonexistent/ns"), || ()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("/nonexistent/ns"), "{err}");
}

#[test]
fn run_in_carries_a_panic_over() {
    on_node(|| {
        let pod = PodNs::new();
        let netns = pod.netns();
        let caught = std::panic::catch_unwind(|| netns::run_in(&netns, || panic!("inside")));
        assert!(caught.is_err());
    });
}

#[test]
fn pod_sysctls_go_to_the_pods_net_and_ipc_namespaces() {
    on_node(|| {
        let pod = PodNs::with_flags(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC);
        let host_shmmni = sysctl::read("kernel.shmmni").unwrap();
        let (net_ns, ipc_ns) = (pod.ns("net"), pod.ns("ipc"));
        let namespaces = [
            (net_ns.as_path(), CloneFlags::CLONE_NEWNET),
            (ipc_ns.as_path(), CloneFlags::CLONE_NEWIPC),
        ];
        netns::run_in_namespaces(&namespaces, || {
            sysctl::write("net.ipv4.ip_unprivileged_port_start", "80").unwrap();
            sysctl::write("kernel.shmmni", "1234").unwrap();
        })
        .unwrap();
        let read_both = || {
            (
                sysctl::read("net.ipv4.ip_unprivileged_port_start").unwrap(),
                sysctl::read("kernel.shmmni").unwrap(),
            )
        };
        let inside = netns::run_in_namespaces(&namespaces, read_both).unwrap();
        assert_eq!(inside, ("80".to_string(), "1234".to_string()));
        let outside = read_both();
        assert_ne!(outside.0, "80");
        assert_eq!(outside.1, host_shmmni);
    });
}

#[test]
fn netlink_moves_renames_and_resizes_links() {
    on_node(|| {
        let pod = PodNs::new();
        let mut nl = Netlink::open().unwrap();
        let own = File::open("/proc/thread-self/ns/net").unwrap();
        nl.create_veth_pair(&VethPair {
            host: "mv0",
            peer: "mv1",
            mtu: 1400,
            master: None,
            peer_netns: own.as_fd(),
        })
        .unwrap();
        let peer = nl.existing_link("mv1").unwrap();
        assert_eq!(peer.mtu, Some(1400));
        let pod_ns = File::open(pod.netns()).unwrap();
        nl.move_to_netns(&peer, pod_ns.as_fd()).unwrap();
        assert_eq!(nl.link("mv1").unwrap(), None);

        pod.run(|| {
            let mut nl = Netlink::open().unwrap();
            let link = nl.existing_link("mv1").unwrap();
            nl.rename(&link, "eth7").unwrap();
            let link = nl.existing_link("eth7").unwrap();
            nl.set_mtu(&link, 1300).unwrap();
            nl.set_up(&link).unwrap();
        });
        let eth7 = &pod.ip_json(&["link", "show", "dev", "eth7"])[0];
        assert_eq!(eth7["mtu"], 1300);

        assert!(nl.delete_link("mv0").unwrap());
        assert!(!nl.delete_link("mv0").unwrap());
        let err = nl.existing_link("mv0").unwrap_err();
        assert_eq!(err.to_string(), "link mv0 not found");
    });
}
