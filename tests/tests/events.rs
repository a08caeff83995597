//! GetContainerEvents: every container's created, started, stopped and deleted, in order,
//! with its pod's status; an exit by itself reported by the monitor's watcher, also for
//! containers started before a daemon restart.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{
    ContainerEventResponse, ContainerEventType as Ev, ContainerState, PodSandboxState,
};
use peapod_tests::containers::{BUSYBOX as IMAGE, container_config};

/// Generous: these tests check what arrives, not how fast.
const WAIT: Duration = Duration::from_secs(10);

/// The event's pod is `pod` (Ready), and among its containers `id` is in `state` (or, with
/// `None`, absent).
fn check_statuses(
    e: &ContainerEventResponse,
    pod: &str,
    id: &str,
    state: Option<ContainerState>,
) -> Result<()> {
    let p = e.pod_sandbox_status.as_ref().context("no pod status")?;
    ensure!(p.id == pod, "the event's pod is {}, not {pod}", p.id);
    ensure!(
        p.state == PodSandboxState::SandboxReady as i32,
        "pod not Ready: {p:?}"
    );
    ensure!(e.created_at > 0, "no timestamp: {e:?}");
    let found = e.containers_statuses.iter().find(|c| c.id == id);
    match (state, found) {
        (Some(s), Some(c)) => ensure!(
            c.state == s as i32,
            "{id} is {:?}, not {s:?}",
            ContainerState::try_from(c.state)
        ),
        (None, None) => {}
        (s, c) => anyhow::bail!("expected {id} as {s:?} among the pod's containers, got {c:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn create_start_stop_remove_in_order_with_the_pods_status() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("events");
    let pod = node.run_pod(&cfg).await?;
    let mut events = node.container_events().await?;

    let config = container_config("sleeper", IMAGE, &["sleep", "1000"]);
    let id = node.create_container(&pod, &cfg, config).await?;
    let created = events.expect(&id, Ev::ContainerCreatedEvent, WAIT).await?;
    check_statuses(&created, &pod, &id, Some(ContainerState::ContainerCreated))?;

    node.start_container(&id).await?;
    let started = events.expect(&id, Ev::ContainerStartedEvent, WAIT).await?;
    check_statuses(&started, &pod, &id, Some(ContainerState::ContainerRunning))?;

    node.stop_container(&id, 0).await?;
    let stopped = events.expect(&id, Ev::ContainerStoppedEvent, WAIT).await?;
    check_statuses(&stopped, &pod, &id, Some(ContainerState::ContainerExited))?;

    node.remove_container(&id).await?;
    let deleted = events.expect(&id, Ev::ContainerDeletedEvent, WAIT).await?;
    check_statuses(&deleted, &pod, &id, None)?;

    let times = [&created, &started, &stopped, &deleted].map(|e| e.created_at);
    ensure!(times.is_sorted(), "timestamps out of order: {times:?}");
    let more = events.drain(Duration::from_millis(500)).await;
    ensure!(more.is_empty(), "events after the deletion: {more:?}");
    node.stop_and_remove(&pod).await
}

#[tokio::test]
async fn exits_by_themselves_are_reported_once_for_each_of_several_containers() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("exits");
    let pod = node.run_pod(&cfg).await?;
    let mut events = node.container_events().await?;

    let mut ids = BTreeMap::new();
    for (name, code) in [("a", 3), ("b", 4), ("c", 5)] {
        let script = format!("sleep 0.5; exit {code}");
        let config = container_config(name, IMAGE, &["sh", "-c", &script]);
        let id = node.run_container(&pod, &cfg, config).await?;
        ids.insert(id, code);
    }
    let mut seen: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let stopped = Ev::ContainerStoppedEvent as i32;
    while seen
        .values()
        .map(|v| v.contains(&stopped) as usize)
        .sum::<usize>()
        < ids.len()
    {
        let e = events.next(WAIT).await.context("waiting for the exits")?;
        let kinds = seen.entry(e.container_id.clone()).or_default();
        kinds.push(e.container_event_type);
        if e.container_event_type == stopped {
            let code = ids.get(&e.container_id).context("an unknown container")?;
            let status = e
                .containers_statuses
                .iter()
                .find(|c| c.id == e.container_id)
                .context("the stopped container is not among its pod's")?;
            ensure!(
                status.state == ContainerState::ContainerExited as i32 && status.exit_code == *code,
                "expected exit {code}: {status:?}"
            );
        }
    }
    // Removing them says nothing more of their end.
    for id in ids.keys() {
        node.remove_container(id).await?;
    }
    for e in events.drain(Duration::from_millis(500)).await {
        seen.entry(e.container_id.clone())
            .or_default()
            .push(e.container_event_type);
    }
    let order = [
        Ev::ContainerCreatedEvent as i32,
        Ev::ContainerStartedEvent as i32,
        stopped,
        Ev::ContainerDeletedEvent as i32,
    ];
    for id in ids.keys() {
        ensure!(
            seen.get(id).map(Vec::as_slice) == Some(&order[..]),
            "events of {id}: {:?}",
            seen.get(id)
        );
    }
    node.stop_and_remove(&pod).await
}

#[tokio::test]
async fn containers_started_before_a_restart_still_report_their_exit() -> Result<()> {
    let mut node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("restart");
    let pod = node.run_pod(&cfg).await?;
    let script = "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 6";
    let waiter = container_config("waiter", IMAGE, &["sh", "-c", script]);
    let id = node.run_container(&pod, &cfg, waiter).await?;

    node.restart_daemon().await?;
    let mut events = node.container_events().await?;
    node.exec_ok(&id, &["touch", "/tmp/go"]).await?;
    let stopped = events.expect(&id, Ev::ContainerStoppedEvent, WAIT).await?;
    check_statuses(&stopped, &pod, &id, Some(ContainerState::ContainerExited))?;
    let status = stopped.containers_statuses.iter().find(|c| c.id == id);
    ensure!(
        status.is_some_and(|s| s.exit_code == 6),
        "expected exit 6: {status:?}"
    );

    // And after a crash.
    let again = container_config("again", IMAGE, &["sh", "-c", script]);
    let again = node.run_container(&pod, &cfg, again).await?;
    node.kill_daemon().await?;
    node.start_daemon().await?;
    let mut events = node.container_events().await?;
    node.exec_ok(&again, &["touch", "/tmp/go"]).await?;
    events
        .expect(&again, Ev::ContainerStoppedEvent, WAIT)
        .await?;
    node.stop_and_remove(&pod).await
}

#[tokio::test]
async fn a_monitor_killed_from_outside_is_reported_without_being_asked() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("orphan");
    let pod = node.run_pod(&cfg).await?;
    let config = container_config("sleeper", IMAGE, &["sleep", "1000"]);
    let id = node.run_container(&pod, &cfg, config).await?;
    let info = node.container_info(&id).await?;
    let monitor = info["monitorPid"].as_u64().context("no monitor pid")?;
    let mut events = node.container_events().await?;

    // No status call in between: only the watcher can notice.
    node.exec(&["kill", "-KILL", &monitor.to_string()]).await?;
    let stopped = events.expect(&id, Ev::ContainerStoppedEvent, WAIT).await?;
    check_statuses(&stopped, &pod, &id, Some(ContainerState::ContainerExited))?;
    let status = stopped.containers_statuses.iter().find(|c| c.id == id);
    ensure!(
        status.is_some_and(|s| s.reason == "MonitorDied"),
        "expected MonitorDied: {status:?}"
    );
    node.stop_and_remove(&pod).await
}

#[tokio::test]
async fn stopping_and_removing_the_pod_reports_its_containers() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("closing");
    let pod = node.run_pod(&cfg).await?;
    let config = container_config("sleeper", IMAGE, &["sleep", "1000"]);
    let id = node.run_container(&pod, &cfg, config).await?;
    let mut events = node.container_events().await?;

    node.stop_pod(&pod).await?;
    let stopped = events.expect(&id, Ev::ContainerStoppedEvent, WAIT).await?;
    let status = stopped.containers_statuses.iter().find(|c| c.id == id);
    ensure!(
        status.is_some_and(|s| s.state == ContainerState::ContainerExited as i32),
        "not exited: {status:?}"
    );
    node.remove_pod(&pod).await?;
    let deleted = events.expect(&id, Ev::ContainerDeletedEvent, WAIT).await?;
    ensure!(
        deleted.containers_statuses.iter().all(|c| c.id != id),
        "a deleted container among its pod's: {deleted:?}"
    );
    if let Some(p) = &deleted.pod_sandbox_status {
        ensure!(
            p.id == pod && p.state == PodSandboxState::SandboxNotready as i32,
            "the pod of a container deleted by its removal: {p:?}"
        );
    }
    Ok(())
}
