//! hostPort mappings: a server in a pod reached at the node's address and at 127.0.0.1 on the
//! host port, over TCP and UDP, and by the pod itself (hairpin); a second pod asking for a
//! port that is taken is refused and gets nothing; nothing is left in nftables after the pod
//! goes, or after a crash and a restart, and a running pod's mappings survive the restart;
//! a pod cannot use the bridge's route_localnet to reach the node's loopback.

mod common;

use anyhow::{Context, Result, ensure};
use cri_api::v1::Protocol;
use tonic::Code;

fn says(answer: &str, pod: &str, what: &str) -> Result<()> {
    ensure!(
        answer.trim() == format!("hello from {pod}"),
        "{what}: the answer was {answer:?}"
    );
    Ok(())
}

#[tokio::test]
async fn tcp_and_udp_host_ports_reach_the_pod() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let config = node
        .pod_config("web")
        .port(Protocol::Tcp, "", 8080, 80)
        .port(Protocol::Udp, "", 8053, 53)
        .port(Protocol::Tcp, "192.0.2.1", 9090, 81);
    let web = node.run_pod(&config).await?;
    let ip = node.pod_info(&web).await?.ip;
    let mut elements = node.hostport_elements().await?;
    elements.sort();
    ensure!(
        elements
            == [
                format!("hostports: 192.0.2.1 . tcp . 9090 : {ip} . 81"),
                format!("hostports_any: tcp . 8080 : {ip} . 80"),
                format!("hostports_any: udp . 8053 : {ip} . 53"),
            ],
        "the maps hold {elements:?}"
    );

    // TCP on every address: the node's, loopback, and from the pod itself (hairpin).
    let tcp = node.listen_in_pod(&web, "0.0.0.0:80", 3).await?;
    for to in ["192.0.2.1:8080", "127.0.0.1:8080"] {
        says(&node.ask_from_node("connect", to).await?, "web", to)?;
    }
    let hairpin = node.connect_from_pod(&web, "192.0.2.1:8080").await?;
    says(&hairpin, "web", "the pod at its own hostPort")?;
    tcp.finish().await?;

    // UDP likewise.
    let udp = node.listen_udp_in_pod(&web, "0.0.0.0:53", 2).await?;
    for to in ["192.0.2.1:8053", "127.0.0.1:8053"] {
        says(&node.ask_from_node("udp-ask", to).await?, "web", to)?;
    }
    udp.finish().await?;

    // A mapping bound to one address answers there and only there.
    let bound = node.listen_in_pod(&web, "0.0.0.0:81", 1).await?;
    let elsewhere = node.ask_from_node("connect", "127.0.0.1:9090").await;
    ensure!(
        elsewhere.is_err(),
        "127.0.0.1:9090 answered a mapping bound to 192.0.2.1: {elsewhere:?}"
    );
    says(
        &node.ask_from_node("connect", "192.0.2.1:9090").await?,
        "web",
        "192.0.2.1:9090",
    )?;
    bound.finish().await?;

    node.stop_and_remove(&web).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn a_taken_host_port_is_refused_and_freed_by_stop() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let first = node
        .run_pod(&node.pod_config("first").port(Protocol::Tcp, "", 8080, 80))
        .await?;
    let leases = node.leases()?;
    let veths = node.host_veths().await?;
    let elements = node.hostport_elements().await?;

    // The same port on one address overlaps the wildcard of the first pod.
    let second = node
        .pod_config("second")
        .port(Protocol::Udp, "", 8080, 80)
        .port(Protocol::Tcp, "192.0.2.1", 8080, 80);
    let refused = node.client().await?.run_pod_sandbox(second.request()).await;
    common::expect_code(refused, Code::AlreadyExists, "a second pod on tcp 8080")?;
    ensure!(node.leases()? == leases, "the refused pod got a lease");
    ensure!(
        node.host_veths().await? == veths,
        "the refused pod got a veth"
    );
    ensure!(
        node.hostport_elements().await? == elements,
        "the refused pod changed the maps"
    );
    ensure!(
        node.pod_ids().await?.len() == 1,
        "the refused pod is listed"
    );

    // Bad mappings are refused as such.
    let bad = node
        .pod_config("bad")
        .port(Protocol::Sctp, "", 8081, 80)
        .request();
    let refused = node.client().await?.run_pod_sandbox(bad).await;
    common::expect_code(refused, Code::InvalidArgument, "an SCTP hostPort")?;

    // Stopped, the first pod lets go of its port: its elements are gone and the port is free.
    node.stop_pod(&first).await?;
    let left = node.hostport_elements().await?;
    ensure!(left.is_empty(), "a stopped pod left {left:?}");
    let again = node.run_pod(&second).await?;
    ensure!(
        node.hostport_elements().await?.len() == 2,
        "the second pod's mappings: {:?}",
        node.hostport_elements().await?
    );
    // Stop twice: the elements are already gone, the stop still succeeds.
    node.stop_pod(&again).await?;
    node.stop_pod(&again).await?;
    for id in [&first, &again] {
        node.remove_pod(id).await?;
    }
    node.assert_empty().await
}

#[tokio::test]
async fn a_crash_leaves_no_mapping_and_keeps_the_running_ones() -> Result<()> {
    let mut node = common::node_with_uplink().await?;
    let kept = node
        .run_pod(&node.pod_config("kept").port(Protocol::Tcp, "", 8080, 80))
        .await?;
    let kept_elements = node.hostport_elements().await?;

    // Crash right after the attach made the second pod's elements, before it was recorded.
    node.stop_daemon().await?;
    node.set_daemon_env("PEAPOD_FAULT", Some("run:attach"));
    node.start_daemon().await?;
    let lost = node.pod_config("lost").port(Protocol::Tcp, "", 8081, 80);
    let crashed = node.client().await?.run_pod_sandbox(lost.request()).await;
    ensure!(crashed.is_err(), "the armed daemon answered {crashed:?}");
    node.wait_daemon_gone().await.context(
        "the daemon did not crash at run:attach (built without --features peapod/fault-injection?)",
    )?;
    let orphans = node.hostport_elements().await?;
    ensure!(
        orphans.len() == 2,
        "the crash should have left the lost pod's element: {orphans:?}"
    );

    node.set_daemon_env("PEAPOD_FAULT", None);
    node.start_daemon().await?;
    let after = node.hostport_elements().await?;
    ensure!(
        after == kept_elements,
        "after the restart the maps hold {after:?}, not {kept_elements:?}"
    );
    let listener = node.listen_in_pod(&kept, "0.0.0.0:80", 1).await?;
    says(
        &node.ask_from_node("connect", "127.0.0.1:8080").await?,
        "kept",
        "the running pod after the restart",
    )?;
    listener.finish().await?;
    // The lost pod's port is free again.
    let reborn = node.run_pod(&lost).await?;

    // SIGKILL and restart with both pods running: nothing changes.
    let mut both = node.hostport_elements().await?;
    both.sort();
    node.kill_daemon().await?;
    node.start_daemon().await?;
    let mut after = node.hostport_elements().await?;
    after.sort();
    ensure!(
        after == both,
        "a restart changed the maps: {after:?}, not {both:?}"
    );

    // The table deleted under the running pods: a restart makes their mappings again.
    node.stop_daemon().await?;
    node.exec(&["nft", "delete", "table", "inet", "peapod"])
        .await?;
    node.start_daemon().await?;
    let mut restored = node.hostport_elements().await?;
    restored.sort();
    ensure!(
        restored == both,
        "after the table went the maps hold {restored:?}, not {both:?}"
    );
    let listener = node.listen_in_pod(&reborn, "0.0.0.0:80", 1).await?;
    says(
        &node.ask_from_node("connect", "192.0.2.1:8081").await?,
        "lost",
        "a restored mapping",
    )?;
    listener.finish().await?;
    for id in [&kept, &reborn] {
        node.stop_and_remove(id).await?;
    }
    node.assert_empty().await
}

/// With `route_localnet` on the bridge, a pod that forges traffic to the node's loopback
/// (it may: it is root in its own netns) must not reach the node's local services.
#[tokio::test]
async fn pods_cannot_reach_the_nodes_loopback() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let pod = node
        .run_pod(&node.pod_config("forger").port(Protocol::Tcp, "", 8080, 80))
        .await?;
    for command in [
        &["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"][..],
        &[
            "ip",
            "route",
            "del",
            "local",
            "127.0.0.0/8",
            "dev",
            "lo",
            "table",
            "local",
        ],
        &[
            "ip",
            "route",
            "add",
            "127.0.0.5/32",
            "via",
            "10.88.0.1",
            "dev",
            "eth0",
        ],
    ] {
        node.exec_in_pod(&pod, command).await?;
    }
    let listener = node.listen_in_node("127.0.0.5:7777", 1).await?;
    let forged = node.connect_from_pod(&pod, "127.0.0.5:7777").await;
    ensure!(
        forged.is_err(),
        "a pod reached the node's 127.0.0.5:7777: {forged:?}"
    );
    // The node itself still can (and so the listener ends).
    node.ask_from_node("connect", "127.0.0.5:7777").await?;
    listener.finish().await?;
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn a_removed_udp_host_port_forgets_its_flows() -> Result<()> {
    // A client that keeps its source port has one conntrack entry, DNATed to the pod that
    // had the mapping. That pod goes and another maps the port (with another address: IPAM
    // hands out the next one): the old entry must be gone, or the datagrams keep going to
    // the address of the pod that is no more.
    let node = common::node_with_uplink().await?;
    let probe = node.probe_path().display().to_string();
    let ask = [probe.as_str(), "udp-ask-from", "40053", "192.0.2.1:8053"];
    let mapping = |name: &str| node.pod_config(name).port(Protocol::Udp, "", 8053, 53);
    let first = node.run_pod(&mapping("first")).await?;
    let listener = node.listen_udp_in_pod(&first, "0.0.0.0:53", 1).await?;
    says(&node.exec(&ask).await?, "first", "the first pod")?;
    listener.finish().await?;
    let first_ip = node.pod_info(&first).await?.ip;
    node.stop_and_remove(&first).await?;

    let second = node.run_pod(&mapping("second")).await?;
    let second_ip = node.pod_info(&second).await?.ip;
    ensure!(second_ip != first_ip, "IPAM gave {first_ip} again");
    let listener = node.listen_udp_in_pod(&second, "0.0.0.0:53", 1).await?;
    says(
        &node.exec(&ask).await?,
        "second",
        "the second pod, same client port",
    )?;
    listener.finish().await?;
    node.stop_and_remove(&second).await?;
    node.assert_empty().await
}
