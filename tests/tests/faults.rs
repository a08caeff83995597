//! Deterministic crashes: a daemon built with `--features peapod/fault-injection` SIGKILLs
//! itself at the fault point named by `PEAPOD_FAULT`. For every point after each step of
//! RunPodSandbox, StopPodSandbox and RemovePodSandbox, the test crashes the daemon there,
//! restarts it, and checks that the pod is whole or gone (run), NotReady and removable (stop),
//! or removable (remove) — and that nothing is left once it is removed. A pod made before the
//! crashes stays whole throughout.

mod common;

use anyhow::{Context, Result, ensure};
use k8s_cri::v1::PodSandboxState;
use peapod_tests::{Node, host_veth};

const RUN_POINTS: &[&str] = &[
    "run:dir",
    "run:record",
    "run:cgroup",
    "run:pause",
    "run:pause-recorded",
    "run:pins",
    "run:attach",
    "run:network-recorded",
    "run:sysctls",
    "run:files",
    "run:ready",
];
const STOP_POINTS: &[&str] = &["stop:pause", "stop:detach"];
const REMOVE_POINTS: &[&str] = &[
    "remove:stopped",
    "remove:unpinned",
    "remove:cgroup",
    "remove:files",
];

/// Restarts the daemon so that it crashes at `point`.
async fn arm(node: &mut Node, point: &str) -> Result<()> {
    node.stop_daemon().await?;
    node.set_daemon_env("PEAPOD_FAULT", Some(point));
    node.start_daemon().await
}

/// Waits for the armed daemon to crash, then starts a clean one.
async fn crashed_then_restart(node: &mut Node, point: &str) -> Result<()> {
    node.wait_daemon_gone().await.with_context(|| {
        format!(
            "the daemon did not crash at fault point {point:?}: is the point gone, or was \
             peapod built without `--features peapod/fault-injection` (hack/test.sh builds it)?"
        )
    })?;
    node.set_daemon_env("PEAPOD_FAULT", None);
    node.start_daemon().await
}

/// A Ready pod with its pin, its veth on the bridge, its lease, and answering TCP.
async fn assert_whole(node: &Node, id: &str, what: &str) -> Result<()> {
    let status = node.pod_status(id).await?.status.context("no status")?;
    ensure!(
        status.state == PodSandboxState::SandboxReady as i32,
        "{what}: pod {id} is not Ready"
    );
    let info = node.pod_info(id).await?;
    ensure!(
        node.leases()?.get(&info.ip) == Some(&id.to_owned()),
        "{what}: no lease for {}",
        info.ip
    );
    ensure!(
        node.pins().await?.contains(&format!("peapod-{id}")),
        "{what}: no pin"
    );
    ensure!(
        node.bridge_ports().await?.contains(&host_veth(id)),
        "{what}: veth not on the bridge"
    );
    let addr = format!("{}:7000", info.ip);
    let listener = node.listen_in_pod(id, &addr, 1).await?;
    let probe = node.probe_path().to_str().context("probe path")?.to_owned();
    node.exec(&[&probe, "connect", &addr])
        .await
        .with_context(|| format!("{what}: pod unreachable at {addr}"))?;
    listener.finish().await?;
    Ok(())
}

#[tokio::test]
async fn every_fault_point_recovers() -> Result<()> {
    let mut node = common::node().await?;
    let keep = node.run_pod(&node.pod_config("keep")).await?;
    let mut n = 0;

    for point in RUN_POINTS {
        n += 1;
        arm(&mut node, point).await?;
        let config = node.pod_config(&format!("run-{n}"));
        let crashed = node.run_pod(&config).await;
        ensure!(
            crashed.is_err(),
            "{point}: RunPodSandbox answered {crashed:?}"
        );
        crashed_then_restart(&mut node, point).await?;
        // Whole (the crash came after Ready was recorded) or gone: never half-made.
        let pods = node.list_pods().await?;
        for p in pods.iter().filter(|p| p.id != keep) {
            assert_whole(&node, &p.id, point).await?;
            node.stop_and_remove(&p.id).await?;
        }
        ensure!(
            pods.len() == 1 || *point == "run:ready",
            "{point}: an interrupted pod survived: {pods:?}"
        );
        assert_whole(&node, &keep, point).await?;
        // The same pod can be made again (no "name reserved").
        let again = node.run_pod(&config).await.context(*point)?;
        node.stop_and_remove(&again).await?;
    }

    for point in STOP_POINTS {
        n += 1;
        let id = node.run_pod(&node.pod_config(&format!("stop-{n}"))).await?;
        arm(&mut node, point).await?;
        ensure!(node.stop_pod(&id).await.is_err(), "{point}: Stop answered");
        crashed_then_restart(&mut node, point).await?;
        let status = node.pod_status(&id).await?.status.context("no status")?;
        ensure!(
            status.state == PodSandboxState::SandboxNotready as i32,
            "{point}: a pod whose Stop crashed is {status:?}"
        );
        node.stop_and_remove(&id).await.context(*point)?;
        assert_whole(&node, &keep, point).await?;
    }

    for point in REMOVE_POINTS {
        n += 1;
        let id = node.run_pod(&node.pod_config(&format!("rm-{n}"))).await?;
        arm(&mut node, point).await?;
        ensure!(
            node.remove_pod(&id).await.is_err(),
            "{point}: Remove answered"
        );
        crashed_then_restart(&mut node, point).await?;
        node.remove_pod(&id).await.context(*point)?;
        ensure!(
            !node.pod_ids().await?.contains(&id),
            "{point}: removed pod still listed"
        );
        assert_whole(&node, &keep, point).await?;
    }

    node.stop_and_remove(&keep).await?;
    node.assert_empty().await
}
