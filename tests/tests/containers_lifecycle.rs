//! Container lifecycle across daemon crashes, the CRI's error codes, and removal leaving
//! nothing behind.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::expect_code;
use cri_api::v1::{
    ContainerFilter, ContainerState, ContainerStateValue, ContainerStatusRequest,
    CreateContainerRequest, ListContainersRequest, RemoveContainerRequest,
    ReopenContainerLogRequest, StopContainerRequest,
};
use peapod_tests::containers::{BUSYBOX as IMAGE, Traced, container_config};
use tonic::Code;

fn ticks(log: &str) -> usize {
    log.lines().filter(|l| l.contains(" stdout F tick")).count()
}

#[tokio::test]
async fn containers_survive_a_daemon_crash_and_removal_leaves_nothing() -> Result<()> {
    let mut node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("life");
    let pod = node.run_pod(&cfg).await?;
    let ticker = container_config(
        "ticker",
        IMAGE,
        &["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
    );
    let ticker = node.run_container(&pod, &cfg, ticker).await?;
    let late = container_config("late", IMAGE, &["sh", "-c", "sleep 1; exit 7"]);
    let late = node.run_container(&pod, &cfg, late).await?;
    node.wait_log(&cfg, "ticker.log", "tick", Duration::from_secs(10))
        .await?;
    let pid_before = node.container_pid(&ticker).await?;

    node.kill_daemon().await?;
    let before = ticks(&node.container_log(&cfg, "ticker.log"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = ticks(&node.container_log(&cfg, "ticker.log"));
    ensure!(
        during > before,
        "the log stopped with the daemon ({before} → {during})"
    );
    node.start_daemon().await?;

    let s = node.container_status(&ticker).await?;
    ensure!(s.state == ContainerState::ContainerRunning as i32, "{s:?}");
    ensure!(
        node.container_pid(&ticker).await? == pid_before,
        "the ticker is another process"
    );
    let s = node.wait_exited(&late, Duration::from_secs(5)).await?;
    ensure!(
        s.exit_code == 7 && s.reason == "Error",
        "exited while the daemon was down: {s:?}"
    );
    let r = node.exec_ok(&ticker, &["echo", "still here"]).await?;
    ensure!(r == "still here\n", "{r}");

    // Log rotation: move the file away, reopen, the monitor writes a new one.
    let log = std::path::Path::new(&cfg.log_directory).join("ticker.log");
    std::fs::rename(&log, log.with_extension("log.1"))?;
    node.client()
        .await?
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await?;
    node.wait_log(&cfg, "ticker.log", "tick", Duration::from_secs(5))
        .await?;

    // Filters.
    let running = node
        .client()
        .await?
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    ensure!(running.len() == 1 && running[0].id == ticker, "{running:?}");
    let by_prefix = node
        .client()
        .await?
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                id: late[..12].to_owned(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    ensure!(
        by_prefix.len() == 1 && by_prefix[0].id == late,
        "{by_prefix:?}"
    );

    // Removing the pod removes its containers, their monitors, cgroups and mounts.
    node.stop_and_remove(&pod).await?;
    let procs = node.processes().await?;
    let peapods = procs.iter().filter(|p| p.comm == "peapod").count();
    ensure!(
        peapods == 1,
        "only the daemon may be left, no monitor: {procs:?}"
    );
    ensure!(
        !procs.iter().any(|p| p.comm == "sleep" || p.comm == "sh"),
        "{procs:?}"
    );
    let dirs: Vec<_> = std::fs::read_dir(node.state_dir().join("containers"))?.collect();
    ensure!(dirs.is_empty(), "container dirs left: {dirs:?}");
    let mounts = node.mounts().await?;
    ensure!(
        !mounts
            .iter()
            .any(|m| m.contains(&pod) || m.contains("overlay")),
        "{mounts:?}"
    );
    let list = node
        .client()
        .await?
        .list_containers(ListContainersRequest::default())
        .await?;
    ensure!(list.into_inner().containers.is_empty());
    node.assert_empty().await
}

#[tokio::test]
async fn errors_have_the_cri_codes() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("errs");
    let pod = node.run_pod(&cfg).await?;
    let mut client = node.client().await?;
    let req = |pod: &str, c: cri_api::v1::ContainerConfig| CreateContainerRequest {
        pod_sandbox_id: pod.to_owned(),
        config: Some(c),
        sandbox_config: Some(cfg.build()),
    };
    let r = client
        .create_container(req(&pod, container_config("x", "no-such-image", &["true"])))
        .await;
    expect_code(r, Code::NotFound, "unknown image")?;
    let r = client
        .create_container(req(
            &"f".repeat(64),
            container_config("x", IMAGE, &["true"]),
        ))
        .await;
    expect_code(r, Code::NotFound, "unknown sandbox")?;
    let mut bad_log = container_config("x", IMAGE, &["true"]);
    bad_log.log_path = "../../etc/escape.log".into();
    let r = client.create_container(req(&pod, bad_log)).await;
    expect_code(r, Code::InvalidArgument, "log path with ..")?;
    // Hostile input is refused before any work: nothing is made for it.
    type Spoil = fn(&mut cri_api::v1::ContainerConfig);
    let hostile: [(&str, Spoil); 5] = [
        ("an env name with '='", |c| {
            c.envs.push(peapod_tests::containers::env("A=B", "c"))
        }),
        ("a NUL in an argument", |c| c.args.push("a\0b".into())),
        ("a relative working dir", |c| c.working_dir = "tmp".into()),
        ("a negative user id", |c| {
            peapod_tests::containers::security(c).run_as_user =
                Some(cri_api::v1::Int64Value { value: -1 })
        }),
        ("a relative mount host path", |c| {
            c.mounts.push(cri_api::v1::Mount {
                container_path: "/data".into(),
                host_path: "etc".into(),
                ..Default::default()
            })
        }),
    ];
    for (what, spoil) in hostile {
        let mut config = container_config("hostile", IMAGE, &["true"]);
        spoil(&mut config);
        let r = client.create_container(req(&pod, config)).await;
        expect_code(r, Code::InvalidArgument, what)?;
    }
    // The CRI: run_as_group only with run_as_user or run_as_username, else the runtime MUST
    // refuse; the error names the field.
    let mut group_only = container_config("hostile", IMAGE, &["true"]);
    peapod_tests::containers::security(&mut group_only).run_as_group =
        Some(cri_api::v1::Int64Value { value: 1000 });
    let r = client.create_container(req(&pod, group_only)).await;
    if let Err(s) = &r {
        ensure!(
            s.message().contains("run_as_group"),
            "the refusal does not name run_as_group: {}",
            s.message()
        );
    }
    expect_code(r, Code::InvalidArgument, "run_as_group without a user")?;
    ensure!(
        node.container_dirs().is_empty(),
        "refused requests left container dirs: {:?}",
        node.container_dirs()
    );

    let first = node
        .create_container(&pod, &cfg, container_config("dup", IMAGE, &["true"]))
        .await?;
    // ExecSync's command is checked before the container's state.
    let r = client
        .exec_sync(cri_api::v1::ExecSyncRequest {
            container_id: first.clone(),
            cmd: vec!["echo".into(), "a\0b".into()],
            timeout: 0,
        })
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "ExecSync with a NUL in its command",
    )?;
    let r = client
        .create_container(req(&pod, container_config("dup", IMAGE, &["true"])))
        .await;
    expect_code(r, Code::AlreadyExists, "same name and attempt")?;
    let r = client
        .container_status(ContainerStatusRequest {
            container_id: "0".repeat(64),
            verbose: false,
        })
        .await;
    expect_code(r, Code::NotFound, "status of an unknown container")?;
    client
        .stop_container(StopContainerRequest {
            container_id: "0".repeat(64),
            timeout: 0,
        })
        .await?;
    client
        .remove_container(RemoveContainerRequest {
            container_id: "0".repeat(64),
        })
        .await?;
    // A command that does not exist: StartContainer fails and says why, the container has
    // exited with reason StartError, and it cannot be started again.
    let bad = node
        .create_container(
            &pod,
            &cfg,
            container_config("bad", IMAGE, &["/no/such/cmd"]),
        )
        .await?;
    let e = format!("{:#}", node.start_container(&bad).await.unwrap_err());
    ensure!(e.contains("/no/such/cmd"), "{e}");
    let s = node.container_status(&bad).await?;
    ensure!(
        s.state == ContainerState::ContainerExited as i32
            && s.reason == "StartError"
            && s.message.contains("/no/such/cmd"),
        "{s:?}"
    );
    let again = client
        .start_container(cri_api::v1::StartContainerRequest {
            container_id: bad.clone(),
        })
        .await;
    expect_code(
        again,
        Code::FailedPrecondition,
        "starting an exited container",
    )?;
    node.remove_container(&bad).await?;

    // A created container that never ran can be removed, and its name is free again.
    node.remove_container(&first).await?;
    node.remove_container(&first).await?;
    node.create_container(&pod, &cfg, container_config("dup", IMAGE, &["true"]))
        .await?;

    node.stop_pod(&pod).await?;
    let r = client
        .create_container(req(&pod, container_config("late", IMAGE, &["true"])))
        .await;
    expect_code(r, Code::FailedPrecondition, "a stopped pod")?;
    node.remove_pod(&pod).await?;
    node.assert_empty().await
}

/// Whether `pid` (as the node sees it) is a live process.
async fn runs(node: &peapod_tests::Node, pid: u64) -> Result<bool> {
    let procs = node.processes().await?;
    Ok(procs
        .iter()
        .any(|p| u64::from(p.pid) == pid && !p.is_zombie()))
}

/// A container's monitor, or its process, killed from outside: ContainerStatus says Exited
/// promptly with a reason (never hangs, never stays Running), ListContainers agrees, the
/// container's process does not run on unsupervised, and Stop and Remove of the containers
/// and of the pod leave nothing: no process, cgroup, dir, socket or shm mount.
#[tokio::test]
async fn a_monitor_or_process_killed_from_outside_makes_the_container_exited() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("victims");
    let pod = node.run_pod(&cfg).await?;
    let sleeper = |name| container_config(name, IMAGE, &["sleep", "1000"]);
    let orphan = node.run_container(&pod, &cfg, sleeper("orphan")).await?;
    let killed = node.run_container(&pod, &cfg, sleeper("killed")).await?;
    let mut cgroups = Vec::new();
    for id in [&orphan, &killed] {
        let info = node.container_info(id).await?;
        cgroups.push(info["cgroupPath"].as_str().unwrap_or_default().to_owned());
    }
    ensure!(
        cgroups
            .iter()
            .all(|c| !peapod_tests::cgroup_dirs(c).is_empty()),
        "no container cgroups: {cgroups:?}"
    );

    let info = node.container_info(&orphan).await?;
    let (monitor, pid) = (
        info["monitorPid"].as_u64().unwrap_or_default(),
        info["pid"].as_u64().unwrap_or_default(),
    );
    node.exec(&["kill", "-KILL", &monitor.to_string()]).await?;
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        node.wait_exited(&orphan, Duration::from_secs(5)),
    )
    .await??;
    ensure!(
        s.reason == "MonitorDied" && s.message.contains("monitor") && s.exit_code != 0,
        "a container whose monitor was killed: {s:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while runs(&node, pid).await? {
        ensure!(
            std::time::Instant::now() < deadline,
            "the container's process runs on without its monitor"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pid = node.container_pid(&killed).await?;
    node.exec(&["kill", "-KILL", &pid.to_string()]).await?;
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        node.wait_exited(&killed, Duration::from_secs(5)),
    )
    .await??;
    ensure!(
        s.exit_code == 137 && s.reason == "Error",
        "a container whose process was killed: {s:?}"
    );

    let exited = node
        .client()
        .await?
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerExited as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    let mut ids: Vec<&str> = exited.iter().map(|c| c.id.as_str()).collect();
    ids.sort();
    let mut want = vec![orphan.as_str(), killed.as_str()];
    want.sort();
    ensure!(ids == want, "ListContainers(Exited): {ids:?}");

    for id in [&orphan, &killed] {
        node.stop_container(id, 0).await?;
        node.remove_container(id).await?;
    }
    for c in &cgroups {
        let left = peapod_tests::cgroup_dirs(c);
        ensure!(left.is_empty(), "container cgroups left: {left:?}");
    }
    let socks = node.exec(&["ls", "-A", "/run/peapod/mon"]).await?;
    ensure!(socks.trim().is_empty(), "monitor sockets left: {socks}");
    let dirs: Vec<_> = std::fs::read_dir(node.state_dir().join("containers"))?.collect();
    ensure!(dirs.is_empty(), "container dirs left: {dirs:?}");
    node.stop_and_remove(&pod).await?;
    let procs = node.processes().await?;
    ensure!(
        procs.iter().filter(|p| p.comm == "peapod").count() == 1
            && !procs.iter().any(|p| p.comm == "sleep"),
        "only the daemon may be left: {procs:?}"
    );
    let mounts = node.mounts().await?;
    ensure!(
        !mounts.iter().any(|m| m.contains(&pod)),
        "mounts left: {mounts:?}"
    );
    node.assert_empty().await
}

/// A full, then a read-only state dir (a tmpfs, as in the pods' test): CreateContainer and
/// StartContainer fail with a clear error (ResourceExhausted for a full disk), leave nothing
/// half-made (no container dir, cgroup or process; the name is free again), and the pod's
/// running container is untouched. Once the disk is back, both work.
#[tokio::test]
async fn a_full_or_read_only_state_dir_fails_container_calls_cleanly() -> Result<()> {
    let (node, state) = common::node_on_small_state_dir("64m").await?;
    // Imported from inside the node: the tmpfs is mounted there only.
    let images = peapod_tests::images::TestImages::build()?;
    let (peapod, socket) = (node.bin_dir().join("peapod"), node.socket());
    node.exec(&[
        peapod.to_str().unwrap_or_default(),
        "image",
        "--state-dir",
        &state,
        "--socket",
        socket.to_str().unwrap_or_default(),
        "import",
        images.path("busybox.oci.tar").to_str().unwrap_or_default(),
    ])
    .await?;
    let cfg = node.pod_config("disk");
    let pod = node.run_pod(&cfg).await?;
    let sleeper = |name| container_config(name, IMAGE, &["sleep", "1000"]);
    let alive = node.run_container(&pod, &cfg, sleeper("alive")).await?;
    let alive_pid = node.container_pid(&alive).await?;
    // The one that fails to start leaves a trace if its command ever runs.
    let traced = Traced::new(&node, "waiting")?;
    let waiting = node
        .create_container(&pod, &cfg, traced.config.clone())
        .await?;
    let alive_cgroup = node.container_info(&alive).await?["cgroupPath"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pod_cgroup = alive_cgroup.rsplit_once('/').map_or("", |(p, _)| p);
    let ls = || async {
        let out = node
            .exec(&["ls", "-A", &format!("{state}/containers")])
            .await?;
        Ok::<Vec<String>, anyhow::Error>(out.lines().map(str::to_owned).collect())
    };
    let dirs = ls().await?;
    let unchanged = || async {
        ensure!(ls().await? == dirs, "a container dir was made or lost");
        let s = node.container_status(&alive).await?;
        ensure!(
            s.state == ContainerState::ContainerRunning as i32
                && node.container_pid(&alive).await? == alive_pid,
            "the running container was touched: {s:?}"
        );
        let s = node.container_status(&waiting).await?;
        ensure!(
            s.state == ContainerState::ContainerCreated as i32,
            "a failed start left {s:?}"
        );
        let cgroups = peapod_tests::cgroup_dirs(&format!("{pod_cgroup}/{waiting}"));
        ensure!(cgroups.is_empty(), "a failed start left {cgroups:?}");
        let procs = node.processes().await?;
        let sleeps = procs.iter().filter(|p| p.comm == "sleep").count();
        ensure!(sleeps == 1, "a failed start left a process: {procs:?}");
        // Not even for a moment: nothing runs that could not be recorded.
        ensure!(
            traced.runs().is_empty(),
            "the command ran: {:?}",
            traced.runs()
        );
        Ok::<(), anyhow::Error>(())
    };
    let mut client = node.client().await?;
    let create = CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(sleeper("new")),
        sandbox_config: Some(cfg.build()),
    };
    let start = cri_api::v1::StartContainerRequest {
        container_id: waiting.clone(),
    };

    common::fill_state_dir(&node, &state, true).await?;
    let created = client.create_container(create.clone()).await;
    let started = client.start_container(start.clone()).await;
    common::fill_state_dir(&node, &state, false).await?;
    for (what, r) in [
        ("CreateContainer", created.map(|_| ())),
        ("StartContainer", started.map(|_| ())),
    ] {
        match r {
            Err(s) if s.code() == Code::ResourceExhausted && s.message().contains("No space") => {}
            other => {
                anyhow::bail!("{what} on a full disk: expected ResourceExhausted, got {other:?}")
            }
        }
    }
    unchanged().await?;

    common::state_dir_read_only(&node, &state, true).await?;
    let created = client.create_container(create.clone()).await;
    let started = client.start_container(start.clone()).await;
    common::state_dir_read_only(&node, &state, false).await?;
    for (what, r) in [
        ("CreateContainer", created.map(|_| ())),
        ("StartContainer", started.map(|_| ())),
    ] {
        match r {
            Err(s) if s.message().contains("Read-only file system") => {}
            other => anyhow::bail!("{what} on a read-only state dir: got {other:?}"),
        }
    }
    unchanged().await?;

    // Room again: the same name and attempt can be created, and both start.
    let new = client
        .create_container(create)
        .await?
        .into_inner()
        .container_id;
    node.start_container(&new).await?;
    node.start_container(&waiting).await?;
    traced.ran_once().await?;
    node.stop_and_remove(&pod).await?;
    ensure!(ls().await?.is_empty(), "container dirs left");
    node.assert_empty().await
}

/// A CreateContainer still in flight when its pod is stopped and removed (held mid-way by the
/// `create:stall` fault point, after the pod's /dev/shm is mounted): the stop waits for it,
/// and the removal takes the new container with it. Nothing is left: no record of a container
/// whose pod is gone, no /dev/shm mount, dir, cgroup or process.
#[tokio::test]
async fn a_pod_removed_while_a_container_is_being_created_leaves_nothing() -> Result<()> {
    let mut node = common::node().await?;
    node.import_busybox().await?;
    node.stop_daemon().await?;
    node.set_daemon_env("PEAPOD_FAULT", Some("create:stall"));
    node.start_daemon().await?;
    let cfg = node.pod_config("raced");
    let pod = node.run_pod(&cfg).await?;
    let create = node.create_container(&pod, &cfg, container_config("late", IMAGE, &["true"]));
    let remove = async {
        // Well inside the stall: the container's dir and the pod's /dev/shm exist by now.
        tokio::time::sleep(Duration::from_millis(700)).await;
        ensure!(
            !node.shm_mounts().await?.is_empty(),
            "the creation is not in its stall yet: the test would prove nothing"
        );
        node.stop_pod(&pod).await?;
        node.remove_pod(&pod).await
    };
    let (created, removed) = tokio::join!(create, remove);
    removed?;
    // Made before the pod closed (then removed with it) or refused: both are fine.
    if let Err(e) = &created {
        ensure!(
            format!("{e:#}").contains("not ready"),
            "CreateContainer failed otherwise: {e:#}"
        );
    }
    let left = node.list_containers().await?;
    ensure!(left.is_empty(), "containers of a removed pod: {left:?}");
    node.assert_no_container_leftovers(&[]).await?;
    ensure!(
        node.container_cgroups().is_empty(),
        "cgroups left: {:?}",
        node.container_cgroups()
    );
    Ok(())
}

/// A copy of the container's lock held for a moment by someone else (as a child forked by
/// another thread of the daemon holds one until it execs): StartContainer waits it out
/// instead of taking it for a monitor from before a crash. Found by the soak (8 clients).
#[tokio::test]
async fn a_start_waits_out_a_passing_holder_of_the_lock() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("lock");
    let pod = node.run_pod(&cfg).await?;
    let id = node
        .create_container(
            &pod,
            &cfg,
            container_config("app", IMAGE, &["sleep", "1000"]),
        )
        .await?;
    let dir = std::fs::File::open(node.state_dir().join("containers").join(&id))?;
    dir.lock()?;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(dir);
    });
    node.start_container(&id).await?;
    release.await?;
    ensure!(
        node.container_status(&id).await?.state == ContainerState::ContainerRunning as i32,
        "not running"
    );
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}
