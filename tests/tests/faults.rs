//! Deterministic crashes: a daemon built with `--features peapod/fault-injection` SIGKILLs
//! itself at the fault point named by `PEAPOD_FAULT`. For every point after each step of
//! RunPodSandbox, StopPodSandbox and RemovePodSandbox, the test crashes the daemon there,
//! restarts it, and checks that the pod is whole or gone (run), NotReady and removable (stop),
//! or removable (remove) — and that nothing is left once it is removed. A pod made before the
//! crashes stays whole throughout.
//!
//! The same for containers, at every point of CreateContainer (whole and startable, or gone;
//! the name can be used again), StartContainer (Running with its process, log and exec, or
//! Created/Exited and removable; never a Running record without a process, never a monitor
//! or a process of no container), StopContainer and RemoveContainer (removable). After each
//! crash nothing of a container is left that its record does not account for, and after the
//! pod goes, nothing at all. A pod and a container made before the crashes stay whole.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{
    ContainerConfig, ContainerState, NamespaceMode, NamespaceOption, PodSandboxState, Protocol,
};
use peapod_tests::containers::{BUSYBOX, Traced, container_config, security};
use peapod_tests::{Node, PodConfig, host_veth};

const RUN_POINTS: &[&str] = &[
    "run:dir",
    "run:record",
    "run:cgroup",
    "run:pause",
    "run:pause-placed",
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
const CREATE_POINTS: &[&str] = &["create:dir", "create:shm", "create:launch", "create:record"];
const START_POINTS: &[&str] = &[
    "start:cgroup",
    "start:limits",
    "start:monitor-spawned",
    // The daemon is back before the monitor reports: it must wait for it, not start another.
    "start:monitor-spawned,monitor:report",
    "start:monitor",
];
const CSTOP_POINTS: &[&str] = &["cstop:killed", "cstop:leftovers", "cstop:monitor-gone"];
const CREMOVE_POINTS: &[&str] = &[
    "cremove:stopped",
    "cremove:cgroup",
    "cremove:socket",
    "cremove:files",
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

/// The hostPort maps hold `expected` and nothing else.
async fn keeps_its_port(node: &Node, expected: &[String], point: &str) -> Result<()> {
    let found = node.hostport_elements().await?;
    ensure!(
        found == expected,
        "{point}: the hostPort maps hold {found:?}, not {expected:?}"
    );
    Ok(())
}

#[tokio::test]
async fn every_fault_point_recovers() -> Result<()> {
    let mut node = common::node().await?;
    // Every pod has a hostPort: a crash must leave no map element behind (the next pod on the
    // same port would fail to add its own), and must not take away the kept pod's.
    let keep = node
        .run_pod(&node.pod_config("keep").port(Protocol::Tcp, "", 8080, 7000))
        .await?;
    let keep_elements = node.hostport_elements().await?;
    let mut n = 0;

    for point in RUN_POINTS {
        n += 1;
        arm(&mut node, point).await?;
        let config = node
            .pod_config(&format!("run-{n}"))
            .port(Protocol::Tcp, "", 9000, 7000);
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
        keeps_its_port(&node, &keep_elements, point).await?;
        // The same pod can be made again (no "name reserved", no port left taken).
        let again = node.run_pod(&config).await.context(*point)?;
        node.stop_and_remove(&again).await?;
    }

    for point in STOP_POINTS {
        n += 1;
        let config = node.pod_config(&format!("stop-{n}"));
        let id = node
            .run_pod(&config.port(Protocol::Udp, "", 9000, 7000))
            .await?;
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
        keeps_its_port(&node, &keep_elements, point).await?;
    }

    for point in REMOVE_POINTS {
        n += 1;
        let config = node.pod_config(&format!("rm-{n}"));
        let id = node
            .run_pod(&config.port(Protocol::Tcp, "127.0.0.1", 9000, 7000))
            .await?;
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
        keeps_its_port(&node, &keep_elements, point).await?;
    }

    node.stop_and_remove(&keep).await?;
    node.assert_empty().await
}

/// A container that writes a line to its log every 100 ms.
fn ticker(name: &str) -> ContainerConfig {
    container_config(
        name,
        BUSYBOX,
        &["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
    )
}

fn ticks(log: &str) -> usize {
    log.lines().filter(|l| l.contains(" stdout F tick")).count()
}

/// A Running container: its process lives in its pod's netns with its monitor, its log grows,
/// ExecSync works.
async fn assert_runs(node: &Node, cfg: &PodConfig, id: &str, name: &str, what: &str) -> Result<()> {
    let s = node.container_status(id).await?;
    ensure!(
        s.state == ContainerState::ContainerRunning as i32,
        "{what}: container {name} is not Running: {s:?}"
    );
    node.assert_containers_alive(&[id.to_owned()])
        .await
        .context(what.to_owned())?;
    let log = format!("{name}.log");
    let before = ticks(&node.container_log(cfg, &log));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ticks(&node.container_log(cfg, &log)) <= before {
        ensure!(
            std::time::Instant::now() < deadline,
            "{what}: the log of {name} does not grow"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = node
        .exec_ok(id, &["echo", "hello"])
        .await
        .context(what.to_owned())?;
    ensure!(out == "hello\n", "{what}: exec in {name} said {out:?}");
    Ok(())
}

/// The containers of `pod` named `name`.
async fn named(node: &Node, pod: &str, name: &str) -> Result<Vec<cri_api::v1::Container>> {
    Ok(node
        .list_containers()
        .await?
        .into_iter()
        .filter(|c| c.pod_sandbox_id == pod && c.metadata.as_ref().is_some_and(|m| m.name == name))
        .collect())
}

#[tokio::test]
async fn every_container_fault_point_recovers() -> Result<()> {
    let mut node = common::node().await?;
    node.import_busybox().await?;
    let keep_cfg = node.pod_config("keep");
    let keep = node.run_pod(&keep_cfg).await?;
    let keep_ctr = node.run_container(&keep, &keep_cfg, ticker("keep")).await?;
    let cfg = node.pod_config("crashy");
    let pod = node.run_pod(&cfg).await?;
    // With one PID namespace for the pod, what a container's process leaves behind lives on
    // when it is killed, until the stop sweeps its cgroup.
    let shared_cfg = node.pod_config("shared").pid(NamespaceMode::Pod);
    let shared = node.run_pod(&shared_cfg).await?;
    let pods = [keep.clone(), pod.clone(), shared.clone()];
    let mut n = 0;

    for point in CREATE_POINTS {
        n += 1;
        let name = format!("create-{n}");
        arm(&mut node, point).await?;
        let crashed = node.create_container(&pod, &cfg, ticker(&name)).await;
        ensure!(
            crashed.is_err(),
            "{point}: CreateContainer answered {crashed:?}"
        );
        crashed_then_restart(&mut node, point).await?;
        // Whole (Created, and it starts and runs) or gone.
        let found = named(&node, &pod, &name).await?;
        ensure!(
            found.is_empty() || *point == "create:record",
            "{point}: an interrupted container survived: {found:?}"
        );
        for c in &found {
            ensure!(
                c.state == ContainerState::ContainerCreated as i32,
                "{point}: {c:?}"
            );
            node.start_container(&c.id).await.context(*point)?;
            assert_runs(&node, &cfg, &c.id, &name, point).await?;
            node.remove_container(&c.id).await.context(*point)?;
        }
        node.assert_no_container_leftovers(&pods)
            .await
            .context(*point)?;
        // The same name and attempt can be used again.
        let again = node
            .create_container(&pod, &cfg, ticker(&name))
            .await
            .context(*point)?;
        node.remove_container(&again).await.context(*point)?;
        assert_runs(&node, &keep_cfg, &keep_ctr, "keep", point).await?;
    }

    for point in START_POINTS {
        n += 1;
        let name = format!("start-{n}");
        let id = node.create_container(&pod, &cfg, ticker(&name)).await?;
        arm(&mut node, point).await?;
        let crashed = node.start_container(&id).await;
        ensure!(crashed.is_err(), "{point}: StartContainer answered");
        crashed_then_restart(&mut node, point).await?;
        // Right away: the restarted daemon has settled what the crash left.
        node.check_no_container_leftovers(&pods)
            .await
            .context(*point)?;
        let s = node.container_status(&id).await?;
        if s.state == ContainerState::ContainerCreated as i32 {
            // Not started: it still can be (at once: a monitor still on its way must not
            // make it two).
            node.start_container(&id).await.context(*point)?;
        }
        node.assert_no_container_leftovers(&pods)
            .await
            .context(*point)?;
        let s = node.container_status(&id).await?;
        if s.state == ContainerState::ContainerRunning as i32 {
            assert_runs(&node, &cfg, &id, &name, point).await?;
        }
        node.remove_container(&id).await.context(*point)?;
        node.assert_no_container_leftovers(&pods)
            .await
            .context(*point)?;
        assert_runs(&node, &keep_cfg, &keep_ctr, "keep", point).await?;
    }

    for point in CSTOP_POINTS {
        n += 1;
        let name = format!("cstop-{n}");
        let mut config = container_config(
            &name,
            BUSYBOX,
            &[
                "sh",
                "-c",
                "sleep 1000 & while true; do echo tick; sleep 0.1; done",
            ],
        );
        security(&mut config).namespace_options = Some(NamespaceOption {
            pid: NamespaceMode::Pod as i32,
            ..Default::default()
        });
        let id = node.run_container(&shared, &shared_cfg, config).await?;
        let bg = ["sh", "-c", "ps | grep -q '[s]leep 1000'"];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while node.exec_ok(&id, &bg).await.is_err() {
            ensure!(
                std::time::Instant::now() < deadline,
                "no sleep 1000 in {name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        arm(&mut node, point).await?;
        let crashed = node.stop_container(&id, 0).await;
        ensure!(crashed.is_err(), "{point}: StopContainer answered");
        crashed_then_restart(&mut node, point).await?;
        let s = node.container_status(&id).await?;
        ensure!(
            s.state == ContainerState::ContainerExited as i32,
            "{point}: a container whose Stop crashed after the kill is {s:?}"
        );
        node.assert_no_container_leftovers(&pods)
            .await
            .context(*point)?;
        node.stop_container(&id, 0).await.context(*point)?;
        node.remove_container(&id).await.context(*point)?;
        node.assert_no_container_leftovers(&pods)
            .await
            .context(*point)?;
        assert_runs(&node, &keep_cfg, &keep_ctr, "keep", point).await?;
    }

    for point in CREMOVE_POINTS {
        n += 1;
        let name = format!("cremove-{n}");
        let id = node.run_container(&pod, &cfg, ticker(&name)).await?;
        arm(&mut node, point).await?;
        let crashed = node.remove_container(&id).await;
        ensure!(crashed.is_err(), "{point}: RemoveContainer answered");
        crashed_then_restart(&mut node, point).await?;
        node.assert_no_container_leftovers(&pods)
            .await
            .context(*point)?;
        node.remove_container(&id).await.context(*point)?;
        ensure!(
            named(&node, &pod, &name).await?.is_empty(),
            "{point}: removed container still listed"
        );
        node.assert_no_container_leftovers(&pods)
            .await
            .context(*point)?;
        assert_runs(&node, &keep_cfg, &keep_ctr, "keep", point).await?;
    }

    // No crash: a container that ends on its own in a pod-wide PID namespace leaves its
    // child behind, in its cgroup; removing the container kills it.
    let mut config = container_config("orphaner", BUSYBOX, &["sh", "-c", "sleep 1000 & exit 3"]);
    security(&mut config).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let id = node.run_container(&shared, &shared_cfg, config).await?;
    node.wait_exited(&id, Duration::from_secs(10)).await?;
    node.remove_container(&id).await?;
    node.assert_no_container_leftovers(&pods).await?;

    // The pods go with a running and a created container: nothing of them is left.
    node.run_container(&pod, &cfg, ticker("last-running"))
        .await?;
    node.create_container(&pod, &cfg, ticker("last-created"))
        .await?;
    node.stop_and_remove(&pod).await?;
    node.stop_and_remove(&shared).await?;
    node.assert_no_container_leftovers(std::slice::from_ref(&keep))
        .await?;
    assert_runs(&node, &keep_cfg, &keep_ctr, "keep", "at the end").await?;
    node.stop_and_remove(&keep).await?;
    node.assert_no_container_leftovers(&[]).await?;
    ensure!(
        node.shm_mounts().await?.is_empty(),
        "pod /dev/shm mounts left"
    );
    node.assert_empty().await
}

/// The container's command runs only once its monitor has recorded it (`monitor.json`): the
/// monitor is held before it records (the `monitor:report` stall), and all that while the
/// command, which leaves a trace when it runs, has not run. And the monitor's stderr: the
/// daemon's until it answers, its own `monitor.log` after.
#[tokio::test]
async fn a_command_runs_only_once_recorded() -> Result<()> {
    let mut node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("recorded");
    let pod = node.run_pod(&cfg).await?;
    let traced = Traced::new(&node, "traced")?;
    let id = node
        .create_container(&pod, &cfg, traced.config.clone())
        .await?;
    arm(&mut node, "monitor:report").await?;
    let mut client = node.client().await?;
    let start = tokio::spawn(async move {
        client
            .start_container(cri_api::v1::StartContainerRequest { container_id: id })
            .await
    });
    let record = node.state_dir().join("containers");
    let recorded = || {
        std::fs::read_dir(&record)
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("monitor.json").exists())
    };
    // Well inside the stall (2 s): nothing recorded, and the command has not run.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ensure!(!start.is_finished(), "the start did not wait for the stall");
    ensure!(!recorded(), "recorded before the stall ended");
    ensure!(
        traced.runs().is_empty(),
        "the command ran before it was recorded"
    );
    start.await??;
    ensure!(recorded(), "started, and no monitor.json");
    traced.ran_once().await?;
    // Until it answered, the monitor wrote to the daemon's stderr (its stall notice is in
    // the daemon's log); from then on to its own monitor.log.
    ensure!(
        node.log_tail(400)
            .contains("fault injection: stalling at monitor:report"),
        "the monitor's early stderr is not the daemon's"
    );
    let dir = std::fs::read_dir(&record)?
        .flatten()
        .map(|d| d.path())
        .find(|d| d.join("monitor.json").exists())
        .context("no container dir")?;
    let running: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("monitor.json"))?)?;
    let monitor = running["monitor"]["pid"]
        .as_i64()
        .context("no monitor pid")?;
    let stderr = node
        .exec(&["readlink", &format!("/proc/{monitor}/fd/2")])
        .await?;
    ensure!(
        stderr.trim() == dir.join("monitor.log").display().to_string(),
        "the monitor's stderr is {stderr:?}"
    );
    node.set_daemon_env("PEAPOD_FAULT", None);
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}
