//! Container and pod stats (ContainerStats, ListContainerStats, PodSandboxStats,
//! ListPodSandboxStats) and UpdateContainerResources, against real cgroups and real traffic.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{
    ContainerStats, ContainerStatsFilter, ContainerStatsRequest, LinuxContainerResources,
    ListContainerStatsRequest, ListPodSandboxStatsRequest, NamespaceMode, PodSandboxStats,
    PodSandboxStatsFilter, PodSandboxStatsRequest, UpdateContainerResourcesRequest,
};
use peapod_tests::Node;
use peapod_tests::containers::{BUSYBOX as IMAGE, container_config};
use tonic::Code;

const MIB: u64 = 1 << 20;

async fn container_stats(node: &Node, id: &str) -> Result<ContainerStats> {
    let request = ContainerStatsRequest {
        container_id: id.to_owned(),
    };
    node.client()
        .await?
        .container_stats(request)
        .await
        .with_context(|| format!("ContainerStats {id}"))?
        .into_inner()
        .stats
        .context("ContainerStats without stats")
}

async fn list_container_stats(node: &Node, filter: ContainerStatsFilter) -> Result<Vec<String>> {
    let request = ListContainerStatsRequest {
        filter: Some(filter),
    };
    let stats = node
        .client()
        .await?
        .list_container_stats(request)
        .await
        .context("ListContainerStats")?
        .into_inner()
        .stats;
    let mut ids: Vec<String> = stats
        .into_iter()
        .map(|s| s.attributes.map(|a| a.id).unwrap_or_default())
        .collect();
    ids.sort();
    Ok(ids)
}

async fn pod_stats(node: &Node, id: &str) -> Result<PodSandboxStats> {
    let request = PodSandboxStatsRequest {
        pod_sandbox_id: id.to_owned(),
    };
    node.client()
        .await?
        .pod_sandbox_stats(request)
        .await
        .with_context(|| format!("PodSandboxStats {id}"))?
        .into_inner()
        .stats
        .context("PodSandboxStats without stats")
}

/// (rx_bytes, tx_bytes) of the pod's default interface.
async fn eth0(node: &Node, id: &str) -> Result<(u64, u64)> {
    let s = pod_stats(node, id).await?;
    let i = s
        .linux
        .and_then(|l| l.network)
        .and_then(|n| n.default_interface)
        .with_context(|| format!("no default interface stats for pod {id}"))?;
    ensure!(i.name == "eth0", "{i:?}");
    Ok((
        i.rx_bytes.map_or(0, |v| v.value),
        i.tx_bytes.map_or(0, |v| v.value),
    ))
}

fn cpu_ns(s: &ContainerStats) -> Result<u64> {
    s.cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value)
        .with_context(|| format!("no cpu usage in {s:?}"))
}

fn labelled(name: &str, command: &[&str], role: &str) -> cri_api::v1::ContainerConfig {
    let mut c = container_config(name, IMAGE, command);
    c.labels = HashMap::from([("role".to_owned(), role.to_owned())]);
    c
}

#[tokio::test]
async fn container_stats_show_cpu_memory_and_the_writable_layer() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("stats");
    let pod = node.run_pod(&cfg).await?;
    let burner = labelled("burner", &["sh", "-c", "while :; do :; done"], "burn");
    let burner = node.run_container(&pod, &cfg, burner).await?;
    let hog = labelled(
        "hog",
        &[
            "sh",
            "-c",
            "head -c 33554432 /dev/zero > /dev/shm/blob && \
             head -c 5242880 /dev/zero > /written && touch /ready && exec sleep 1000",
        ],
        "hog",
    );
    let hog = node.run_container(&pod, &cfg, hog).await?;
    let idle = labelled("idle", &["sleep", "1000"], "idle");
    let idle = node.create_container(&pod, &cfg, idle).await?;
    let other_cfg = node.pod_config("other");
    let other = node.run_pod(&other_cfg).await?;
    let elsewhere = labelled("elsewhere", &["sleep", "1000"], "burn");
    let elsewhere = node.run_container(&other, &other_cfg, elsewhere).await?;

    // CPU: cumulative usage grows while the loop runs; the second sample has a rate.
    let first = container_stats(&node, &burner).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = container_stats(&node, &burner).await?;
    let (a, b) = (cpu_ns(&first)?, cpu_ns(&second)?);
    ensure!(b >= a + 100_000_000, "cpu usage {a} → {b} ns over 1.5 s");
    let rate = second.cpu.as_ref().and_then(|c| c.usage_nano_cores);
    ensure!(
        rate.as_ref().is_some_and(|r| r.value >= 50_000_000),
        "usage_nano_cores {rate:?}"
    );
    // Pressure (PSI) where the node's cgroups have it (v2), with the stall time a busy loop
    // on a shared CPU builds up; none on v1.
    let v2 = node.sees_cgroup_v2(&burner).await?;
    let cpu_psi = second.cpu.as_ref().and_then(|c| c.psi);
    let mem_psi = second.memory.as_ref().and_then(|m| m.psi);
    let io_psi = second.io.as_ref().and_then(|i| i.psi);
    ensure!(
        (cpu_psi.is_some(), mem_psi.is_some(), io_psi.is_some()) == (v2, v2, v2),
        "cgroup v2: {v2}; psi {cpu_psi:?} {mem_psi:?} {io_psi:?}"
    );
    if let Some(psi) = cpu_psi {
        let some = psi.some.as_ref().context("no `some` line")?;
        ensure!(some.avg10 >= 0.0 && some.avg10 <= 100.0, "{psi:?}");
    }
    let attrs = second.attributes.clone().context("no attributes")?;
    ensure!(
        attrs.id == burner
            && attrs.metadata.as_ref().map(|m| m.name.as_str()) == Some("burner")
            && attrs.labels.get("role").map(String::as_str) == Some("burn"),
        "{attrs:?}"
    );

    // Memory and writable layer: 32 MiB in the pod's /dev/shm, 5 MiB written into the rootfs.
    for _ in 0..100 {
        if node.exec_ok(&hog, &["ls", "/ready"]).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.exec_ok(&hog, &["ls", "/ready"]).await?;
    let s = container_stats(&node, &hog).await?;
    let mem = s.memory.context("no memory stats")?;
    let ws = mem.working_set_bytes.map_or(0, |v| v.value);
    ensure!(ws >= 32 * MIB, "working set {ws} < 32 MiB: {mem:?}");
    ensure!(
        mem.usage_bytes.map_or(0, |v| v.value) >= ws,
        "usage below working set: {mem:?}"
    );
    ensure!(mem.available_bytes.is_none(), "no limit, yet {mem:?}");
    let layer = s.writable_layer.clone().context("no writable layer")?;
    let used = layer.used_bytes.map_or(0, |v| v.value);
    ensure!(used >= 5 * MIB, "writable layer {used} < 5 MiB: {layer:?}");
    ensure!(
        layer.inodes_used.map_or(0, |v| v.value) >= 2
            && layer
                .fs_id
                .as_ref()
                .is_some_and(|f| f.mountpoint.starts_with('/')),
        "{layer:?}"
    );

    // A created container has stats (no cgroup yet, so no cpu) but is not listed.
    let s = container_stats(&node, &idle).await?;
    ensure!(s.cpu.is_none() && s.writable_layer.is_some(), "{s:?}");
    // Starting writes nothing into the writable layer (the mount points for /etc/hosts and
    // the like come from peapod's lowest layer): a running container that writes nothing
    // has the same layer as one never started.
    let untouched = |s: &ContainerStats| {
        s.writable_layer
            .as_ref()
            .map(|l| (l.used_bytes, l.inodes_used))
    };
    let ran = container_stats(&node, &elsewhere).await?;
    ensure!(
        untouched(&ran) == untouched(&s),
        "a started container's writable layer {:?}, a created one's {:?}",
        ran.writable_layer,
        s.writable_layer
    );
    let all = list_container_stats(&node, Default::default()).await?;
    let mut want = vec![burner.clone(), hog.clone(), elsewhere.clone()];
    want.sort();
    ensure!(all == want, "listed {all:?}, running {want:?}");
    let by_id = ContainerStatsFilter {
        id: burner[..12].to_owned(),
        ..Default::default()
    };
    ensure!(list_container_stats(&node, by_id).await? == vec![burner.clone()]);
    let by_pod = ContainerStatsFilter {
        pod_sandbox_id: other[..12].to_owned(),
        ..Default::default()
    };
    ensure!(list_container_stats(&node, by_pod).await? == vec![elsewhere.clone()]);
    let by_label = ContainerStatsFilter {
        pod_sandbox_id: pod.clone(),
        label_selector: HashMap::from([("role".to_owned(), "burn".to_owned())]),
        ..Default::default()
    };
    ensure!(list_container_stats(&node, by_label).await? == vec![burner.clone()]);

    let unknown = node
        .client()
        .await?
        .container_stats(ContainerStatsRequest {
            container_id: "0".repeat(64),
        })
        .await;
    common::expect_code(unknown, Code::NotFound, "ContainerStats of an unknown id")?;

    for p in [&pod, &other] {
        node.stop_and_remove(p).await?;
    }
    node.assert_empty().await
}

#[tokio::test]
async fn pod_stats_count_traffic_processes_and_containers() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let web_cfg = node.pod_config("web").label("tier", "web");
    let web = node.run_pod(&web_cfg).await?;
    let ip = node.pod_info(&web).await?.ip;
    let server = container_config(
        "server",
        IMAGE,
        &[
            "sh",
            "-c",
            "mkdir -p /w && head -c 2097152 /dev/zero > /w/big && exec httpd -f -p 80 -h /w",
        ],
    );
    let server = node.run_container(&web, &web_cfg, server).await?;
    let client_cfg = node.pod_config("client").label("tier", "client");
    let client = node.run_pod(&client_cfg).await?;

    let (web_rx0, web_tx0) = eth0(&node, &web).await?;
    let (client_rx0, _) = eth0(&node, &client).await?;
    let url = format!("http://{ip}/big");
    let fetch = container_config(
        "fetch",
        IMAGE,
        &[
            "sh",
            "-c",
            &format!("until wget -qO /dev/null {url}; do sleep 0.2; done"),
        ],
    );
    let fetch = node.run_container(&client, &client_cfg, fetch).await?;
    let status = node.wait_exited(&fetch, Duration::from_secs(30)).await?;
    ensure!(status.exit_code == 0, "fetch: {status:?}");
    let (web_rx1, web_tx1) = eth0(&node, &web).await?;
    let (client_rx1, _) = eth0(&node, &client).await?;
    ensure!(
        web_tx1 >= web_tx0 + 2 * MIB && web_rx1 > web_rx0,
        "web eth0 rx {web_rx0}→{web_rx1} tx {web_tx0}→{web_tx1}"
    );
    ensure!(
        client_rx1 >= client_rx0 + 2 * MIB,
        "client eth0 rx {client_rx0}→{client_rx1}"
    );

    let s = pod_stats(&node, &web).await?;
    let attrs = s.attributes.clone().context("no attributes")?;
    ensure!(
        attrs.id == web && attrs.labels.get("tier").map(String::as_str) == Some("web"),
        "{attrs:?}"
    );
    let linux = s.linux.context("no linux stats")?;
    let procs = linux.process.and_then(|p| p.process_count).map(|v| v.value);
    ensure!(procs.is_some_and(|n| n >= 2), "pause + httpd: {procs:?}");
    ensure!(
        linux.cpu.and_then(|c| c.usage_core_nano_seconds).is_some(),
        "no pod cpu"
    );
    let ws = linux
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    ensure!(ws > 0, "pod working set {ws}");
    let ids: Vec<String> = linux
        .containers
        .iter()
        .filter_map(|c| c.attributes.as_ref().map(|a| a.id.clone()))
        .collect();
    ensure!(ids == vec![server.clone()], "pod containers {ids:?}");
    // The client pod's only container has exited: none listed.
    let c = pod_stats(&node, &client).await?;
    ensure!(c.linux.is_some_and(|l| l.containers.is_empty()));

    // Lists: every ready pod; by id prefix; by label.
    let list = |filter: PodSandboxStatsFilter| {
        let node = &node;
        async move {
            let stats = node
                .client()
                .await?
                .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
                    filter: Some(filter),
                })
                .await?
                .into_inner()
                .stats;
            let mut ids: Vec<String> = stats
                .into_iter()
                .filter_map(|s| s.attributes.map(|a| a.id))
                .collect();
            ids.sort();
            anyhow::Ok(ids)
        }
    };
    let mut both = vec![web.clone(), client.clone()];
    both.sort();
    ensure!(list(Default::default()).await? == both);
    let by_id = PodSandboxStatsFilter {
        id: client[..12].to_owned(),
        ..Default::default()
    };
    ensure!(list(by_id).await? == vec![client.clone()]);
    let by_label = PodSandboxStatsFilter {
        label_selector: HashMap::from([("tier".to_owned(), "web".to_owned())]),
        ..Default::default()
    };
    ensure!(list(by_label).await? == vec![web.clone()]);

    // The node's network is not the pod's to report.
    let host_cfg = node.pod_config("host").network(NamespaceMode::Node);
    let host = node.run_pod(&host_cfg).await?;
    let h = pod_stats(&node, &host).await?;
    ensure!(
        h.linux.as_ref().is_some_and(|l| l.network.is_none()),
        "{h:?}"
    );

    let unknown = node
        .client()
        .await?
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: "0".repeat(64),
        })
        .await;
    common::expect_code(unknown, Code::NotFound, "PodSandboxStats of an unknown id")?;

    for p in [&web, &client, &host] {
        node.stop_and_remove(p).await?;
    }
    node.assert_empty().await
}

async fn update(
    node: &Node,
    id: &str,
    linux: LinuxContainerResources,
) -> Result<(), tonic::Status> {
    node.client()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.to_owned(),
            linux: Some(linux),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// (memory limit, cpu quota, cpu period) as the container sees them: v1's
/// `memory.limit_in_bytes`, `cpu.cfs_quota_us`, `cpu.cfs_period_us`, or v2's `memory.max` and
/// `cpu.max`.
async fn limits(node: &Node, id: &str) -> Result<(u64, i64, i64)> {
    let v = node
        .own_cgroup(
            id,
            &[
                "memory/memory.limit_in_bytes",
                "cpu/cpu.cfs_quota_us",
                "cpu/cpu.cfs_period_us",
            ],
            &["memory.max", "cpu.max"],
        )
        .await?;
    ensure!(v.len() == 3, "{v:?}");
    Ok((v[0].parse()?, v[1].parse()?, v[2].parse()?))
}

async fn reported(node: &Node, id: &str) -> Result<LinuxContainerResources> {
    node.container_status(id)
        .await?
        .resources
        .and_then(|r| r.linux)
        .context("ContainerStatus reports no resources")
}

/// The CPUs the container's cpuset cgroup allows, as the container sees them.
async fn cpuset(node: &Node, id: &str) -> Result<String> {
    let cpus = node
        .own_cgroup(id, &["cpuset/cpuset.cpus"], &["cpuset.cpus"])
        .await?;
    Ok(cpus.join(" "))
}

#[tokio::test]
async fn update_container_resources_changes_the_cgroup_and_the_status() -> Result<()> {
    let mut node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("update");
    let pod = node.run_pod(&cfg).await?;
    let mut c = container_config("app", IMAGE, &["sleep", "1000"]);
    c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: (64 * MIB) as i64,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpuset_cpus: "1".to_owned(),
        ..Default::default()
    });
    let app = node.run_container(&pod, &cfg, c).await?;
    ensure!(limits(&node, &app).await? == (64 * MIB, 50_000, 100_000));
    let r = reported(&node, &app).await?;
    ensure!(
        r.memory_limit_in_bytes == (64 * MIB) as i64 && r.cpu_quota == 50_000,
        "{r:?}"
    );
    ensure!(cpuset(&node, &app).await? == "1");
    ensure!(r.cpuset_cpus == "1" && r.unified.is_empty(), "{r:?}");

    // Up (the v1 swap limit must move first), then down; the period is kept.
    update(
        &node,
        &app,
        LinuxContainerResources {
            memory_limit_in_bytes: (128 * MIB) as i64,
            cpu_quota: 20_000,
            ..Default::default()
        },
    )
    .await?;
    ensure!(limits(&node, &app).await? == (128 * MIB, 20_000, 100_000));
    update(
        &node,
        &app,
        LinuxContainerResources {
            memory_limit_in_bytes: (32 * MIB) as i64,
            ..Default::default()
        },
    )
    .await?;
    ensure!(limits(&node, &app).await? == (32 * MIB, 20_000, 100_000));
    let r = reported(&node, &app).await?;
    ensure!(
        (r.memory_limit_in_bytes, r.cpu_quota, r.cpu_period)
            == ((32 * MIB) as i64, 20_000, 100_000),
        "{r:?}"
    );
    // The CPU set, in the cpuset hierarchy.
    update(
        &node,
        &app,
        LinuxContainerResources {
            cpuset_cpus: "0".to_owned(),
            ..Default::default()
        },
    )
    .await?;
    ensure!(cpuset(&node, &app).await? == "0");
    let r = reported(&node, &app).await?;
    ensure!(r.cpuset_cpus == "0" && r.unified.is_empty(), "{r:?}");
    // The stats see the limit.
    let s = container_stats(&node, &app).await?;
    let avail = s.memory.and_then(|m| m.available_bytes).map(|v| v.value);
    ensure!(
        avail.is_some_and(|a| a > 0 && a <= 32 * MIB),
        "available {avail:?}"
    );

    // A bad request changes nothing.
    let bad = update(
        &node,
        &app,
        LinuxContainerResources {
            cpu_period: 10,
            memory_limit_in_bytes: (200 * MIB) as i64,
            ..Default::default()
        },
    )
    .await;
    common::expect_code(bad, Code::InvalidArgument, "cpu_period 10")?;
    ensure!(limits(&node, &app).await? == (32 * MIB, 20_000, 100_000));

    // A created container: the new limits are recorded and applied when it starts.
    let later = node
        .create_container(
            &pod,
            &cfg,
            container_config("later", IMAGE, &["sleep", "1000"]),
        )
        .await?;
    update(
        &node,
        &later,
        LinuxContainerResources {
            memory_limit_in_bytes: (96 * MIB) as i64,
            cpu_quota: 30_000,
            cpu_period: 60_000,
            ..Default::default()
        },
    )
    .await?;
    node.start_container(&later).await?;
    ensure!(limits(&node, &later).await? == (96 * MIB, 30_000, 60_000));

    // Persisted: a restarted daemon reports the updated resources.
    node.restart_daemon().await?;
    let r = reported(&node, &app).await?;
    ensure!(
        r.memory_limit_in_bytes == (32 * MIB) as i64,
        "after restart {r:?}"
    );

    // Exited: only the record changes (containerd answers OK too); unknown: NotFound.
    node.stop_container(&later, 0).await?;
    update(
        &node,
        &later,
        LinuxContainerResources {
            memory_limit_in_bytes: (64 * MIB) as i64,
            ..Default::default()
        },
    )
    .await?;
    let r = reported(&node, &later).await?;
    ensure!(r.memory_limit_in_bytes == (64 * MIB) as i64, "exited {r:?}");
    let unknown = update(&node, &"0".repeat(64), Default::default()).await;
    common::expect_code(unknown, Code::NotFound, "an unknown container")?;

    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

/// The value after `key` among the words of a `cpu.stat`.
fn stat(words: &[String], key: &str) -> Result<u64> {
    let i = words
        .iter()
        .position(|w| w == key)
        .with_context(|| format!("no {key} in {words:?}"))?;
    Ok(words.get(i + 1).context("no value")?.parse()?)
}

/// The limits hold, not only their files: a fork beyond `pids.max` (from the CRI's `unified`
/// map) fails, and a busy loop under a CPU quota is throttled. On this machine's cgroup v1,
/// and on cgroup v2 in the VM node (`vm_node.rs`).
#[tokio::test]
async fn limits_are_enforced() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("enforced");
    let pod = node.run_pod(&cfg).await?;
    let with = |name: &str, r: LinuxContainerResources| {
        let mut c = container_config(name, IMAGE, &["sleep", "1000"]);
        c.linux.as_mut().unwrap().resources = Some(r);
        c
    };
    let few = with(
        "few",
        LinuxContainerResources {
            unified: [("pids.max".to_owned(), "8".to_owned())].into(),
            ..Default::default()
        },
    );
    let few = node.run_container(&pod, &cfg, few).await?;
    let forks = "i=0; while [ $i -lt 20 ]; do sleep 60 </dev/null >/dev/null 2>&1 & \
                 i=$((i+1)); done; echo forked $i";
    let r = node.exec_sync(&few, &["sh", "-c", forks], 30).await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    ensure!(
        said.contains("can't fork") && !said.contains("forked 20"),
        "20 forks under pids.max 8: exit {}: {said}",
        r.exit_code
    );

    let slow = with(
        "slow",
        LinuxContainerResources {
            cpu_quota: 10_000,
            cpu_period: 100_000,
            ..Default::default()
        },
    );
    let slow = node.run_container(&pod, &cfg, slow).await?;
    let cpu_stat = || node.own_cgroup(&slow, &["cpu/cpu.stat"], &["cpu.stat"]);
    let before = stat(&cpu_stat().await?, "nr_throttled")?;
    let busy = "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done";
    node.exec_sync(&slow, &["sh", "-c", busy], 120).await?;
    let after = stat(&cpu_stat().await?, "nr_throttled")?;
    ensure!(
        after > before,
        "a busy loop under 10% of a CPU was not throttled ({before} → {after})"
    );

    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}
