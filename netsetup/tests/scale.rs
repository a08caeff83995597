//! Privileged: many pods at once, and how long attach and detach take.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use netsetup::{AttachRequest, Attachment};

#[test]
fn fifty_concurrent_attaches_then_detaches() {
    const PODS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        network.ensure_node(&[net("10.88.0.0/24")]).unwrap();
        let pods: Vec<PodNs> = (0..PODS).map(|_| PodNs::new()).collect();
        let owners: Vec<String> = (0..PODS).map(|i| format!("{i:08x}cafe")).collect();

        let started = Instant::now();
        let atts: Vec<Attachment> = std::thread::scope(|s| {
            let workers: Vec<_> = pods
                .iter()
                .zip(&owners)
                .map(|(pod, owner)| {
                    let network = &network;
                    s.spawn(move || {
                        let netns = pod.netns();
                        network
                            .attach(&AttachRequest {
                                owner,
                                netns: &netns,
                                host_ifname: &netsetup::host_ifname(owner),
                                pod_ifname: netsetup::POD_IFNAME,
                                subnet: net("10.88.0.0/24"),
                                host_ports: &[],
                            })
                            .unwrap()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });

        println!("{PODS} concurrent attaches took {:?}", started.elapsed());
        let ips: HashSet<IpAddr> = atts.iter().map(|a| a.ip).collect();
        assert_eq!(ips.len(), PODS);
        assert_eq!(network.leases().unwrap().len(), PODS);
        assert_eq!(bridge_ports(BRIDGE).len(), PODS);
        for (pod, att) in pods.iter().zip(&atts) {
            let eth0 = &pod.ip_json(&["-4", "addr", "show", "dev", "eth0"])[0];
            assert_eq!(eth0["addr_info"][0]["local"], att.ip.to_string());
        }

        std::thread::scope(|s| {
            for (att, owner) in atts.iter().zip(&owners) {
                let network = &network;
                s.spawn(move || network.detach(owner, att).unwrap());
            }
        });
        assert!(network.leases().unwrap().is_empty());
        assert!(bridge_ports(BRIDGE).is_empty());
        assert!(network.pod_links().unwrap().is_empty());
        network.settle();
        for owner in &owners {
            assert!(!link_exists(&netsetup::host_ifname(owner)), "{owner}");
        }
    });
}

#[test]
fn attach_and_detach_latency() {
    const PODS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    on_node(|| {
        let network = network(dir.path());
        let started = Instant::now();
        network.ensure_node(&[net("10.88.0.0/16")]).unwrap();
        println!("first ensure_node took {:?}", started.elapsed());
        let pods: Vec<PodNs> = (0..PODS).map(|_| PodNs::new()).collect();
        let mut attach_times = Vec::new();
        let mut atts = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let owner = format!("{i:08x}");
            let netns = pod.netns();
            let started = Instant::now();
            let att = network
                .attach(&AttachRequest {
                    owner: &owner,
                    netns: &netns,
                    host_ifname: &netsetup::host_ifname(&owner),
                    pod_ifname: netsetup::POD_IFNAME,
                    subnet: net("10.88.0.0/16"),
                    host_ports: &[],
                })
                .unwrap();
            attach_times.push(started.elapsed());
            atts.push((owner, att));
        }
        let mut detach_times = Vec::new();
        for (owner, att) in &atts {
            let started = Instant::now();
            network.detach(owner, att).unwrap();
            detach_times.push(started.elapsed());
        }
        let (attach_p50, attach_max) = summary(&mut attach_times);
        let (detach_p50, detach_max) = summary(&mut detach_times);
        println!(
            "attach p50 {attach_p50:?} max {attach_max:?}; detach p50 {detach_p50:?} max {detach_max:?} \
             ({PODS} pods, sequential)"
        );
        // Loose bounds: a shared 2-core machine with builds running must not fail this; a
        // regression to milliseconds per step (say, an nft run per pod) still would.
        assert!(
            attach_p50 < Duration::from_millis(25),
            "attach p50 {attach_p50:?}"
        );
        assert!(
            detach_p50 < Duration::from_millis(25),
            "detach p50 {detach_p50:?}"
        );
    });
}

fn summary(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}
