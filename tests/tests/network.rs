//! Pod networking: addresses, reachability, pins; NODE-network pods; a new pod CIDR.

mod common;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{NamespaceMode, NetworkConfig, RuntimeConfig, UpdateRuntimeConfigRequest};
use peapod_tests::{host_veth, in_cidr};
use tonic::Code;

#[tokio::test]
async fn two_pods_reach_each_other_and_the_gateway() -> Result<()> {
    let node = common::node().await?;
    let a = node.run_pod(&node.pod_config("pod-a")).await?;
    let b = node.run_pod(&node.pod_config("pod-b")).await?;
    ensure!(a != b, "two pods got the same id {a}");
    let (pa, pb) = (node.pod_info(&a).await?, node.pod_info(&b).await?);

    // Addresses: distinct, in the default CIDR, not the network or gateway address, and the
    // same in the status and the verbose info.
    ensure!(pa.ip != pb.ip, "both pods got {}", pa.ip);
    for pod in [&pa, &pb] {
        ensure!(
            in_cidr(&pod.ip, "10.88.0.0/16"),
            "{} is outside 10.88.0.0/16",
            pod.ip
        );
        ensure!(
            !["10.88.0.0", "10.88.0.1"].contains(&pod.ip.as_str()),
            "pod got {}",
            pod.ip
        );
        let status = node
            .pod_status(&pod.id)
            .await?
            .status
            .context("no status")?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ensure!(
            ip == pod.ip,
            "status.network.ip {ip:?} != info ip {:?}",
            pod.ip
        );
        ensure!(
            pod.netns_path == format!("/run/netns/peapod-{}", pod.id),
            "netnsPath is {:?}",
            pod.netns_path
        );
        ensure!(
            pod.host_veth == host_veth(&pod.id),
            "hostVeth is {:?}",
            pod.host_veth
        );
        let addr = node
            .exec_in_pod(&pod.id, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
            .await?;
        ensure!(
            addr.contains(&format!("inet {}/", pod.ip)),
            "eth0 of the pod: {addr}"
        );
        let route = node
            .exec_in_pod(&pod.id, &["ip", "route", "show", "default"])
            .await?;
        ensure!(
            route.contains("via 10.88.0.1"),
            "default route in the pod: {route:?}"
        );
    }
    let gateway = node.ipv4_of("peapod0").await?;
    ensure!(
        gateway == "10.88.0.1",
        "the bridge has {gateway}, not the gateway 10.88.0.1"
    );
    let ports = node
        .exec(&["ip", "-o", "link", "show", "master", "peapod0"])
        .await?;
    for pod in [&pa, &pb] {
        ensure!(
            ports.contains(&pod.host_veth),
            "{} is not on peapod0: {ports}",
            pod.host_veth
        );
    }

    // Both pins live in the node's /run/netns (and so, not on the host).
    let pins = node.pins().await?;
    for id in [&a, &b] {
        ensure!(
            pins.contains(&format!("peapod-{id}")),
            "no pin for {id}: {pins:?}"
        );
    }

    // A reaches B by B's IP, and a listener on the gateway address in the node.
    let listener = node
        .listen_in_pod(&b, &format!("{}:8080", pb.ip), 1)
        .await?;
    let said = node
        .connect_from_pod(&a, &format!("{}:8080", pb.ip))
        .await?;
    ensure!(
        said == "hello from pod-b\n",
        "pod B's listener said {said:?}"
    );
    listener.finish().await?;

    let hostname = node.exec(&["cat", "/proc/sys/kernel/hostname"]).await?;
    let listener = node.listen_in_node("10.88.0.1:8081", 1).await?;
    let said = node.connect_from_pod(&a, "10.88.0.1:8081").await?;
    ensure!(
        said == format!("hello from {}\n", hostname.trim()),
        "the node said {said:?}"
    );
    listener.finish().await?;

    for id in [&a, &b] {
        node.stop_and_remove(id).await?;
    }
    node.assert_gone(&[pa, pb]).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn node_network_pods_share_the_node_network() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let pod_net = node.run_pod(&node.pod_config("pod-net")).await?;
    let pins_before = node.pins().await?;
    let leases_before = node.leases()?;
    let veths_before = node.host_veths().await?;

    let config = node.pod_config("host-net").network(NamespaceMode::Node);
    let id = node.run_pod(&config).await?;
    let status = node.pod_status(&id).await?.status.context("no status")?;
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    ensure!(
        ip == "192.0.2.1",
        "a NODE-network pod reports {ip:?}, not the node's 192.0.2.1"
    );
    let options = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .context("status has no linux.namespaces.options")?;
    ensure!(
        options.network == NamespaceMode::Node as i32,
        "options echoed: {options:?}"
    );

    ensure!(
        node.pins().await? == pins_before,
        "a NODE-network pod got a netns pin"
    );
    ensure!(
        node.leases()? == leases_before,
        "a NODE-network pod got a lease"
    );
    ensure!(
        node.host_veths().await? == veths_before,
        "a NODE-network pod got a veth"
    );
    let info = node.pod_info(&id).await?;
    let pause_net = node
        .exec(&["readlink", &format!("/proc/{}/ns/net", info.pause_pid()?)])
        .await?;
    let node_net = node.exec(&["readlink", "/proc/1/ns/net"]).await?;
    ensure!(
        pause_net == node_net,
        "the pause is not in the node netns: {pause_net} vs {node_net}"
    );

    // The POD-network pod next to it is unaffected.
    let other = node.pod_info(&pod_net).await?;
    ensure!(
        in_cidr(&other.ip, "10.88.0.0/16"),
        "the POD-network pod has {}",
        other.ip
    );

    node.stop_and_remove(&id).await?;
    node.stop_and_remove(&pod_net).await?;
    node.assert_gone(&[info, other]).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn update_runtime_config_gives_new_pods_the_new_cidr() -> Result<()> {
    let node = common::node().await?;
    let old = node.run_pod(&node.pod_config("old")).await?;
    let old_ip = node.pod_info(&old).await?.ip;
    ensure!(in_cidr(&old_ip, "10.88.0.0/16"), "old pod has {old_ip}");

    let request = UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: "10.99.0.0/24".to_owned(),
            }),
        }),
    };
    node.client()
        .await?
        .update_runtime_config(request)
        .await
        .context("UpdateRuntimeConfig")?;

    let new = node.run_pod(&node.pod_config("new")).await?;
    let new_info = node.pod_info(&new).await?;
    ensure!(
        in_cidr(&new_info.ip, "10.99.0.0/24") && new_info.ip != "10.99.0.1",
        "a pod made after UpdateRuntimeConfig(10.99.0.0/24) got {}",
        new_info.ip
    );
    let old_info = node.pod_info(&old).await?;
    ensure!(
        old_info.ip == old_ip,
        "the old pod's IP changed: {old_ip} -> {}",
        old_info.ip
    );

    // The new subnet's gateway answers, and the pods of both subnets reach each other.
    let listener = node.listen_in_node("10.99.0.1:8082", 1).await?;
    node.connect_from_pod(&new, "10.99.0.1:8082")
        .await
        .context("new pod to the new subnet's gateway")?;
    listener.finish().await?;
    let listener = node
        .listen_in_pod(&old, &format!("{old_ip}:8083"), 1)
        .await?;
    let said = node
        .connect_from_pod(&new, &format!("{old_ip}:8083"))
        .await
        .context("new-subnet pod to old-subnet pod")?;
    ensure!(said == "hello from old\n", "the old pod said {said:?}");
    listener.finish().await?;

    node.stop_and_remove(&new).await?;
    node.stop_and_remove(&old).await?;
    node.assert_gone(&[new_info, old_info]).await?;
    node.assert_empty().await
}

/// The bridge name is taken by a link that is not a bridge: Status says NetworkReady false
/// with a reason, pods on the pod network are refused with FailedPrecondition (and nothing is
/// made), node-network pods still run; once the name is free, the next pod sets up the
/// network and Status turns ready.
#[tokio::test]
async fn network_not_ready_is_reported_and_recovers() -> Result<()> {
    let node = common::builder()
        .setup(&[
            "ip", "link", "add", "name", "peapod0", "type", "veth", "peer", "name", "impostor",
        ])
        .start()
        .await?;
    let mut client = node.client().await?;
    let network_ready = |r: &cri_api::v1::StatusResponse| {
        r.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.r#type == "NetworkReady"))
            .cloned()
            .context("no NetworkReady condition")
    };
    let status = client
        .status(cri_api::v1::StatusRequest { verbose: false })
        .await?
        .into_inner();
    let cond = network_ready(&status)?;
    ensure!(!cond.status, "NetworkReady is true with peapod0 a veth");
    ensure!(
        !cond.reason.is_empty() && cond.message.contains("not a bridge"),
        "NetworkReady false without a clear reason: {cond:?}"
    );
    let runtime_ready = status.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status)
    });
    ensure!(runtime_ready, "RuntimeReady should stay true: {status:?}");

    let result = client
        .run_pod_sandbox(node.pod_config("refused").request())
        .await;
    common::expect_code(result, Code::FailedPrecondition, "a pod-network pod")?;
    node.assert_empty().await?;
    let host = node
        .run_pod(&node.pod_config("host-net").network(NamespaceMode::Node))
        .await?;

    node.exec(&["ip", "link", "del", "peapod0"]).await?;
    let id = node.run_pod(&node.pod_config("after")).await?;
    let info = node.pod_info(&id).await?;
    ensure!(info.ip.starts_with("10.88."), "pod IP {:?}", info.ip);
    let status = client
        .status(cri_api::v1::StatusRequest { verbose: false })
        .await?
        .into_inner();
    ensure!(
        network_ready(&status)?.status,
        "NetworkReady stays false: {status:?}"
    );
    for id in [&host, &id] {
        node.stop_and_remove(id).await?;
    }
    node.assert_empty().await
}
