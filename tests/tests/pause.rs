//! The pause of a pod that shares a pid namespace is its PID 1 and reaps orphans.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cri_api::v1::NamespaceMode;

#[tokio::test]
async fn pause_is_pid1_of_a_shared_pid_namespace_and_reaps_orphans() -> Result<()> {
    let node = common::node().await?;
    let config = node.pod_config("shared-pid").pid(NamespaceMode::Pod);
    let id = node.run_pod(&config).await?;
    let status = node.pod_status(&id).await?.status.context("no status")?;
    let options = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .context("status has no linux.namespaces.options")?;
    ensure!(
        options == config.namespace_options(),
        "namespace options echoed as {options:?}, sent {:?}",
        config.namespace_options()
    );

    let info = node.pod_info(&id).await?;
    let pause = info.pause_pid()?;
    let pid = pause.to_string();
    let proc_status = node.exec(&["cat", &format!("/proc/{pid}/status")]).await?;
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    ensure!(
        field("Name:") == ["peapod-pause"],
        "pid {pid} is {:?}",
        field("Name:")
    );
    ensure!(
        field("NSpid:") == [pid.as_str(), "1"],
        "the pause should be {pid} in the node and 1 in its own pid namespace; NSpid: {:?}",
        field("NSpid:")
    );

    // Orphan a child inside the pod's pid namespace: its shell exits at once, so the sleep is
    // reparented to the namespace's PID 1, the pause, which must reap it when it exits. (The
    // sleep must not hold our stdout pipe, or exec would wait for it to end.)
    let orphan = "sleep 1 </dev/null >/dev/null 2>&1 & exit 0";
    node.exec(&["nsenter", "-t", &pid, "-p", "--", "sh", "-c", orphan])
        .await?;
    let children = node.processes().await?;
    let orphan = children
        .iter()
        .find(|p| p.ppid == pause && p.comm == "sleep")
        .with_context(|| {
            format!("the orphaned sleep was not reparented to the pause {pid}: {children:#?}")
        })?
        .pid;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = node.processes().await?;
        let left: Vec<_> = procs.iter().filter(|p| p.ppid == pause).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the pause {pid} did not reap its orphan {orphan} within 10s: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    node.stop_and_remove(&id).await?;
    node.assert_gone(&[info]).await?;
    node.assert_empty().await
}
