//! Pods and containers on a pure cgroup v2 node (`NodeBuilder::cgroup_v2`): the node sees the
//! host's cgroup2 hierarchy at `/sys/fs/cgroup`, which on this kind of machine offers one
//! controller, hugetlb. The pause sits in `<pod>/pause`, a container in `<pod>/<ctr>`, huge
//! page limits land in `hugetlb.<size>.max`, a limit whose controller is missing is refused,
//! and nothing is left in the hierarchy once the pods are gone, also after a crash.

mod common;

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use cri_api::v1::{
    CreateContainerRequest, HugepageLimit, LinuxContainerResources, PodSandboxState,
};
use peapod_tests::containers::{BUSYBOX, container_config};
use peapod_tests::{Node, PodConfig};

const HUGE_2MB: u64 = 4 << 20;

async fn v2_node() -> Result<Node> {
    common::builder().cgroup_v2().start().await
}

/// The cgroup of `pid` (inside the node) in the v2 hierarchy: the `0::` line of its
/// `/proc/<pid>/cgroup`.
async fn v2_cgroup_of(node: &Node, pid: u64) -> Result<String> {
    let text = node.exec(&["cat", &format!("/proc/{pid}/cgroup")]).await?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .with_context(|| format!("no v2 line in /proc/{pid}/cgroup:\n{text}"))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// The cgroup mounts of the host, to show that the node's cgroup2 mount stays in the node.
fn host_cgroup_mounts() -> Result<Vec<String>> {
    Ok(read(Path::new("/proc/self/mountinfo"))?
        .lines()
        .filter(|l| l.contains(" - cgroup") || l.contains(" /sys/fs/cgroup "))
        .map(|l| l.split_whitespace().skip(4).take(1).collect())
        .collect())
}

fn sleeper(name: &str, hugepages: Option<u64>) -> cri_api::v1::ContainerConfig {
    let mut c = container_config(name, BUSYBOX, &["sleep", "1000"]);
    if let Some(limit) = hugepages {
        c.linux.as_mut().expect("linux").resources = Some(LinuxContainerResources {
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit,
            }],
            ..Default::default()
        });
    }
    c
}

/// CreateContainer with `resources`, which must fail with FailedPrecondition naming
/// `controller` and `field`.
async fn refused(
    node: &Node,
    pod: &str,
    cfg: &PodConfig,
    resources: LinuxContainerResources,
    controller: &str,
    field: &str,
) -> Result<()> {
    let mut c = container_config(controller, BUSYBOX, &["sleep", "1000"]);
    c.linux.as_mut().expect("linux").resources = Some(resources);
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.to_owned(),
        config: Some(c),
        sandbox_config: Some(cfg.build()),
    };
    let result = node.client().await?.create_container(request).await;
    let status = match result {
        Ok(r) => {
            bail!("a {controller} limit without a {controller} controller was accepted: {r:?}")
        }
        Err(status) => status,
    };
    ensure!(
        status.code() == tonic::Code::FailedPrecondition,
        "{controller}: expected FailedPrecondition, got {:?}: {}",
        status.code(),
        status.message()
    );
    let msg = status.message();
    ensure!(
        msg.contains(&format!("the {controller} cgroup controller"))
            && msg.contains(field)
            && msg.contains("available: hugetlb"),
        "the error does not say what is missing: {msg}"
    );
    Ok(())
}

#[tokio::test]
async fn pods_and_containers_get_their_own_v2_cgroups_and_leave_none() -> Result<()> {
    let mounts_before = host_cgroup_mounts()?;
    let node = v2_node().await?;
    ensure!(
        host_cgroup_mounts()? == mounts_before,
        "the node's cgroup2 mount reached the host's mount table"
    );
    let fs = node
        .exec(&["stat", "-f", "-c", "%T", "/sys/fs/cgroup"])
        .await?;
    ensure!(
        fs.trim() == "cgroup2fs",
        "the node sees {fs:?} at /sys/fs/cgroup"
    );
    node.import_busybox().await?;

    let parent = node.cgroup_parent().to_owned();
    let cfg = node.pod_config("v2");
    let pod = node.run_pod(&cfg).await?;
    let pod_cg = format!("{parent}/{pod}");
    let pause = node.pod_info(&pod).await?.pause_pid()?;
    let got = v2_cgroup_of(&node, pause.into()).await?;
    ensure!(
        got == format!("{pod_cg}/pause"),
        "the pause is in {got}, not in {pod_cg}/pause"
    );
    // hugetlb is handed down from the root through the parent peapod made to the pod.
    for cg in ["", parent.as_str(), pod_cg.as_str()] {
        let ctl = read(&node.node_cgroup(cg).join("cgroup.subtree_control"))?;
        ensure!(
            ctl.split_whitespace().any(|c| c == "hugetlb"),
            "hugetlb is not enabled below {cg:?}: {ctl:?}"
        );
    }

    let huge = node
        .run_container(&pod, &cfg, sleeper("huge", Some(HUGE_2MB)))
        .await?;
    let init = node.container_pid(&huge).await?;
    // PSI from the container's and the pod's v2 cgroups (cpu, memory and io pressure).
    let stats = node
        .client()
        .await?
        .container_stats(cri_api::v1::ContainerStatsRequest {
            container_id: huge.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no stats")?;
    let psi = |p: Option<&cri_api::v1::PsiStats>| p.and_then(|p| p.some).is_some();
    // (No memory stats at all where the node lacks the memory controller, as here.)
    ensure!(
        psi(stats.cpu.as_ref().and_then(|c| c.psi.as_ref()))
            && stats.memory.as_ref().is_none_or(|m| psi(m.psi.as_ref()))
            && psi(stats.io.as_ref().and_then(|i| i.psi.as_ref())),
        "no PSI in {stats:?}"
    );
    let pod_stats = node
        .client()
        .await?
        .pod_sandbox_stats(cri_api::v1::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?
        .into_inner()
        .stats
        .and_then(|s| s.linux)
        .context("no pod stats")?;
    ensure!(
        psi(pod_stats.io.as_ref().and_then(|i| i.psi.as_ref())),
        "no PSI in {pod_stats:?}"
    );
    let ctr_cg = format!("{pod_cg}/{huge}");
    let got = v2_cgroup_of(&node, init).await?;
    ensure!(
        got == ctr_cg,
        "the container's init is in {got}, not {ctr_cg}"
    );
    let dir = node.node_cgroup(&ctr_cg);
    for file in ["hugetlb.2MB.max", "hugetlb.2MB.rsvd.max"] {
        let limit = read(&dir.join(file))?;
        ensure!(limit.trim() == HUGE_2MB.to_string(), "{file} is {limit:?}");
    }
    // The container sees its own cgroup at /sys/fs/cgroup.
    let inside = node
        .exec_ok(&huge, &["cat", "/sys/fs/cgroup/hugetlb.2MB.max"])
        .await?;
    ensure!(inside.trim() == HUGE_2MB.to_string(), "inside: {inside:?}");

    // Limits this node has no controller for are refused, and leave no container behind.
    let memory = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    refused(&node, &pod, &cfg, memory, "memory", "memory_limit_in_bytes").await?;
    let cpu = LinuxContainerResources {
        cpu_quota: 50_000,
        cpu_period: 100_000,
        ..Default::default()
    };
    refused(&node, &pod, &cfg, cpu, "cpu", "cpu_quota").await?;
    let pids = LinuxContainerResources {
        unified: [("pids.max".to_owned(), "64".to_owned())].into(),
        ..Default::default()
    };
    refused(&node, &pod, &cfg, pids, "pids", "unified[pids.max]").await?;
    let listed = node.list_containers().await?;
    ensure!(
        listed.len() == 1,
        "refused containers were kept: {listed:?}"
    );

    // A second container without limits; then both go, one by one.
    let plain = node
        .run_container(&pod, &cfg, sleeper("plain", None))
        .await?;
    node.stop_container(&huge, 0).await?;
    node.remove_container(&huge).await?;
    ensure!(!dir.exists(), "the container's cgroup {ctr_cg} is left");
    ensure!(
        node.node_cgroup(&format!("{pod_cg}/{plain}")).is_dir(),
        "the other container's cgroup went too"
    );
    let info = node.pod_info(&pod).await?;
    node.stop_and_remove(&pod).await?;
    node.assert_gone(&[info]).await?;
    node.assert_empty().await?;
    ensure!(
        !node.node_cgroup(&parent).exists(),
        "the parent peapod made ({parent}) outlived its last pod"
    );
    Ok(())
}

#[tokio::test]
async fn a_crashed_daemon_recovers_v2_pods_and_collects_orphaned_cgroups() -> Result<()> {
    let mut node = v2_node().await?;
    node.import_busybox().await?;
    let parent = node.cgroup_parent().to_owned();
    let cfg = node.pod_config("kept");
    let kept = node.run_pod(&cfg).await?;
    let ctr = node
        .run_container(&kept, &cfg, sleeper("kept", Some(HUGE_2MB)))
        .await?;
    let lost = node.run_pod(&node.pod_config("lost")).await?;
    let lost_info = node.pod_info(&lost).await?;

    // A crash that lost the record of `lost`, with a process that escaped into a cgroup of
    // its own below the pod.
    node.crash_losing_pod_record(&lost).await?;
    let stray = format!("{parent}/{lost}/stray");
    std::fs::create_dir(node.node_cgroup(&stray))?;
    let procs = format!(
        "/sys/fs/cgroup/{}/cgroup.procs",
        stray.trim_start_matches('/')
    );
    let mut escaped = node.spawn(&[
        "sh",
        "-c",
        &format!("echo $$ > {procs}; echo in; exec sleep 1000"),
    ])?;
    escaped.wait_for_line("in").await?;
    // And a crash in the middle of RunPodSandbox, right after the pause went into its leaf.
    node.set_daemon_env("PEAPOD_FAULT", Some("run:pause-placed"));
    node.start_daemon().await?;
    let crashed = node.run_pod(&node.pod_config("crashed")).await;
    ensure!(crashed.is_err(), "the armed daemon did not crash");
    node.wait_daemon_gone().await?;
    node.set_daemon_env("PEAPOD_FAULT", None);
    node.start_daemon().await?;

    // The kept pod and its container are back and work.
    let status = node.pod_status(&kept).await?.status.context("no status")?;
    ensure!(
        status.state == PodSandboxState::SandboxReady as i32,
        "the kept pod is {status:?}"
    );
    let inside = node
        .exec_ok(&ctr, &["cat", "/sys/fs/cgroup/hugetlb.2MB.max"])
        .await?;
    ensure!(inside.trim() == HUGE_2MB.to_string(), "inside: {inside:?}");
    // Everything else under the parent went: the lost pod's cgroup with its stray process
    // and the interrupted pod's.
    let left: Vec<String> = std::fs::read_dir(node.node_cgroup(&parent))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ensure!(left == [kept.clone()], "under {parent}: {left:?}");
    // (A populated cgroup cannot be removed, and the process is gone at once.)
    let out = tokio::time::timeout(std::time::Duration::from_secs(5), escaped.finish()).await;
    ensure!(
        matches!(out, Ok(Err(_))),
        "the escaped process was not killed: {out:?}"
    );
    node.assert_gone(&[lost_info]).await?;

    // The recovered pod still takes new containers with limits.
    let more = node
        .run_container(&kept, &cfg, sleeper("more", Some(2 << 20)))
        .await?;
    let limit = read(
        &node
            .node_cgroup(&format!("{parent}/{kept}/{more}"))
            .join("hugetlb.2MB.max"),
    )?;
    ensure!(limit.trim() == (2u64 << 20).to_string(), "{limit:?}");
    node.stop_and_remove(&kept).await?;
    node.assert_empty().await?;
    ensure!(
        !node.node_cgroup(&parent).exists(),
        "the parent peapod made ({parent}) outlived its last pod"
    );
    Ok(())
}
