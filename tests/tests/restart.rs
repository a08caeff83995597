//! A daemon restart, clean or after a crash, loses no pod and interrupts no pod traffic.

mod common;

use anyhow::{Context, Result, ensure};
use cri_api::v1::PodSandboxState;
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

/// A crash in the middle of RunPodSandbox leaves a `Creating` record that may lack the pause's
/// pid, a pause process, and leases without records. The next start rolls the pod back (the
/// pause found by its environment and stopped, its lease freed, its dir gone), releases leases
/// no record owns, and keeps the healthy pod as it was.
#[tokio::test]
async fn restart_rolls_back_what_a_crash_left_half_made() -> Result<()> {
    let mut node = common::node().await?;
    let keep = node.run_pod(&node.pod_config("keep")).await?;
    let kept = node.pod_info(&keep).await?;
    node.kill_daemon().await?;

    let id = "cafe".repeat(16);
    let pause_bin = peapod_tests::bin_dir().join("peapod-pause");
    let env = format!("PEAPOD_SANDBOX_ID={id}");
    let pause_bin = pause_bin.to_str().context("pause path")?;
    let pause = node.spawn(&["env", &env, pause_bin])?;
    // Wait until the stray pause runs with its environment in place (exec sets it up last).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let find = format!("grep -lz '^{env}$' /proc/[0-9]*/environ 2>/dev/null || true");
    while node.exec(&["sh", "-c", &find]).await?.trim().is_empty() {
        ensure!(
            std::time::Instant::now() < deadline,
            "the stray pause never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let dir = node.state_dir().join("sandboxes").join(&id);
    std::fs::create_dir_all(&dir)?;
    let record = serde_json::json!({
        "id": id, "state": "Creating", "created_at": 1, "pause": null, "cgroup": null,
        "network": null, "node_ip": null,
        "pins": { "net": null, "ipc": null, "uts": null, "pid": null },
        "spec": {
            "metadata": { "name": "crashed", "namespace": "default", "uid": "u", "attempt": 0 },
            "hostname": "crashed", "log_directory": "", "dns": null, "port_mappings": [],
            "labels": {}, "annotations": {}, "cgroup_parent": node.cgroup_parent(),
            "sysctls": {}, "runtime_handler": "",
            "namespaces": { "network": "Pod", "pid": "Pod", "ipc": "Pod", "target_id": "" }
        }
    });
    std::fs::write(dir.join("sandbox.json"), record.to_string())?;
    let ipam = node.state_dir().join("ipam").join("peapod");
    std::fs::write(ipam.join("10.88.0.77"), format!("{id}\n"))?;
    std::fs::write(ipam.join("10.88.0.78"), format!("{}\n", "d".repeat(64)))?;

    node.start_daemon().await?;
    pause
        .finish()
        .await
        .context("the crashed pod's pause was not stopped")?;
    ensure!(!dir.exists(), "the crashed pod's dir is still there");
    let leases = node.leases()?;
    ensure!(
        leases.keys().cloned().collect::<Vec<_>>() == [kept.ip.clone()],
        "leases after recovery: {leases:?} (only {} should stay)",
        kept.ip
    );
    ensure!(
        node.pod_ids().await? == [keep.clone()],
        "pods after recovery"
    );
    let status = node.pod_status(&keep).await?.status.context("no status")?;
    ensure!(
        status.state == PodSandboxState::SandboxReady as i32,
        "the healthy pod is {status:?}"
    );
    node.stop_and_remove(&keep).await?;
    node.assert_empty().await
}

/// Every process left in the cgroup `dir` killed, as systemd stops a unit with its default
/// `KillMode=control-group`; returns how many there were.
async fn kill_cgroup(dir: &std::path::Path) -> Result<usize> {
    let mut killed = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return Ok(killed);
        }
        for pid in pids {
            let pid = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{} stays busy",
            dir.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The daemon runs in a cgroup of its own, as in a systemd unit, and everything in that
/// cgroup is killed, as `systemctl stop` does by default: the containers' monitors live in
/// their pods' cgroups, so the container keeps running and logging, the restarted daemon
/// finds it running, and its exit code and last words still arrive.
#[tokio::test]
async fn killing_the_daemons_whole_cgroup_loses_no_container() -> Result<()> {
    use peapod_tests::containers::{BUSYBOX, container_config};
    let mut node = common::node().await?;
    node.import_busybox().await?;
    let pids = peapod_tests::cgroup_v1_hierarchies()
        .into_iter()
        .find(|h| h.ends_with("pids"))
        .context("no pids hierarchy")?;
    let unit = pids
        .join(node.cgroup_parent().trim_start_matches('/'))
        .join("unit");
    std::fs::create_dir_all(&unit)?;
    let daemon = node.daemon_pid().context("no daemon")?;
    std::fs::write(unit.join("cgroup.procs"), daemon.to_string())?;

    let cfg = node.pod_config("unit");
    let pod = node.run_pod(&cfg).await?;
    let script = "trap 'echo bye; exit 3' TERM; i=0; \
                  while :; do echo tick $i; i=$((i+1)); sleep 0.1; done";
    let ticker = container_config("ticker", BUSYBOX, &["sh", "-c", script]);
    let ctr = node.run_container(&pod, &cfg, ticker).await?;
    let log = |node: &Node| node.container_log(&cfg, "ticker.log");
    let ticks = |text: &str| text.matches(" stdout F tick ").count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ticks(&log(&node)) < 3 {
        ensure!(
            std::time::Instant::now() < deadline,
            "no ticks: {}",
            log(&node)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let killed = kill_cgroup(&unit).await?;
    ensure!(killed >= 1, "nothing was in the daemon's cgroup");
    node.wait_daemon_gone().await?;
    let monitors = node.monitors().await?;
    ensure!(
        monitors.iter().any(|(id, _)| *id == ctr),
        "the container's monitor went with the daemon's cgroup: {monitors:?}"
    );
    let before = ticks(&log(&node));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    ensure!(
        ticks(&log(&node)) > before,
        "the log stopped with the daemon"
    );

    node.start_daemon().await?;
    let status = node.container_status(&ctr).await?;
    ensure!(
        status.state == cri_api::v1::ContainerState::ContainerRunning as i32,
        "after the restart: {status:?}"
    );
    node.stop_container(&ctr, 10).await?;
    let status = node.container_status(&ctr).await?;
    ensure!(status.exit_code == 3, "{status:?}");
    ensure!(log(&node).contains(" stdout F bye"), "{}", log(&node));

    node.stop_and_remove(&pod).await?;
    std::fs::remove_dir(&unit)?;
    node.assert_empty().await
}

/// SIGTERM (`systemctl stop`) stops the daemon promptly although its clients stay connected,
/// as the kubelet always is (and with an open GetContainerEvents stream under Evented PLEG):
/// in-flight calls get a short grace, then the daemon exits instead of waiting for every
/// client to hang up (systemd would SIGKILL it after 90 s).
#[tokio::test]
async fn sigterm_stops_the_daemon_promptly_with_clients_connected() -> Result<()> {
    let mut node = common::node().await?;
    let mut idle = node.client().await?;
    idle.version(cri_api::v1::VersionRequest::default()).await?;
    let _events = node.container_events().await?;
    let started = std::time::Instant::now();
    node.stop_daemon().await?;
    let took = started.elapsed();
    ensure!(
        took < std::time::Duration::from_secs(5),
        "SIGTERM took {took:?} with clients connected"
    );
    node.start_daemon().await?;
    node.assert_empty().await
}
