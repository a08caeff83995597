//! A daemon restart, clean or after a crash, loses no pod and interrupts no pod traffic.

mod common;

use anyhow::{Context, Result, ensure};
use k8s_cri::v1::PodSandboxState;
use peapod_tests::{Node, PodInfo};

/// What must survive a restart: per pod its info and state, and the node's leases and pins.
#[derive(Debug, PartialEq)]
struct Snapshot {
    pods: Vec<(String, Option<u32>, String, String, String, i32)>,
    leases: std::collections::BTreeMap<String, String>,
    pins: Vec<String>,
    veths: Vec<String>,
}

async fn snapshot(node: &Node, ids: &[&String]) -> Result<Snapshot> {
    let mut pods = Vec::new();
    for id in ids {
        let PodInfo {
            pid,
            ip,
            host_veth,
            netns_path,
            ..
        } = node.pod_info(id).await?;
        let status = node.pod_status(id).await?.status.context("no status")?;
        pods.push((id.to_string(), pid, ip, host_veth, netns_path, status.state));
    }
    let mut pins = node.pins().await?;
    pins.sort();
    let mut veths = node.host_veths().await?;
    veths.sort();
    Ok(Snapshot {
        pods,
        leases: node.leases()?,
        pins,
        veths,
    })
}

/// Pod `from` reaches the probe listener of pod "server" at `target`.
async fn reach(node: &Node, from: &str, target: &str, when: &str) -> Result<()> {
    let said = node
        .connect_from_pod(from, target)
        .await
        .context(when.to_owned())?;
    ensure!(said == "hello from server\n", "{when}: got {said:?}");
    Ok(())
}

#[tokio::test]
async fn restart_and_crash_keep_every_pod() -> Result<()> {
    let mut node = common::node().await?;
    let a = node.run_pod(&node.pod_config("client")).await?;
    let b = node.run_pod(&node.pod_config("server")).await?;
    let stopped = node.run_pod(&node.pod_config("stopped")).await?;
    node.stop_pod(&stopped).await?;
    let before = snapshot(&node, &[&a, &b, &stopped]).await?;
    let ready = PodSandboxState::SandboxReady as i32;
    ensure!(
        before.pods[0].5 == ready && before.pods[1].5 == ready,
        "{before:?}"
    );

    let target = format!("{}:8080", node.pod_info(&b).await?.ip);
    let listener = node.listen_in_pod(&b, &target, 6).await?;
    reach(&node, &a, &target, "before any restart").await?;

    node.stop_daemon().await?;
    reach(&node, &a, &target, "while the daemon is stopped").await?;
    node.start_daemon().await?;
    let after = snapshot(&node, &[&a, &b, &stopped]).await?;
    ensure!(
        after == before,
        "a SIGTERM restart changed the node:\n{before:#?}\n{after:#?}"
    );
    reach(&node, &a, &target, "after the restart").await?;

    node.kill_daemon().await?;
    reach(&node, &a, &target, "while the daemon is dead").await?;
    node.start_daemon().await?;
    let after = snapshot(&node, &[&a, &b, &stopped]).await?;
    ensure!(
        after == before,
        "a crash and restart changed the node:\n{before:#?}\n{after:#?}"
    );
    reach(&node, &a, &target, "after the crash").await?;

    // The restarted daemon still knows which addresses are taken.
    let c = node.run_pod(&node.pod_config("late")).await?;
    let c_ip = node.pod_info(&c).await?.ip;
    let taken: Vec<&str> = before.leases.keys().map(String::as_str).collect();
    ensure!(
        !taken.contains(&c_ip.as_str()),
        "a new pod got the taken address {c_ip}"
    );
    let said = node.connect_from_pod(&c, &target).await?;
    ensure!(said == "hello from server\n", "the new pod got {said:?}");
    listener.finish().await?;

    for id in [&a, &b, &stopped, &c] {
        node.stop_and_remove(id).await?;
    }
    node.assert_empty().await
}
