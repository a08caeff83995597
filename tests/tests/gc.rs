//! `peapod gc`: what carries peapod's names but has no record is listed by `--dry-run` and
//! removed by `gc`; pods with records are untouched; a running daemon is not run over.

mod common;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{ContainerState, PodSandboxState};
use peapod_tests::containers::{BUSYBOX, container_config};
use peapod_tests::{Node, host_veth, random_hex};

async fn gc(node: &Node, extra: &[&str]) -> Result<std::process::Output> {
    let peapod = peapod_tests::bin_dir().join("peapod");
    let state = node.state_dir();
    let mut args = vec![
        peapod.to_str().context("path")?,
        "gc",
        "--state-dir",
        state.to_str().context("path")?,
        "--run-dir",
        "/run/peapod",
    ];
    args.extend_from_slice(extra);
    node.exec_output(&args).await
}

#[tokio::test]
async fn gc_removes_what_no_record_owns_and_nothing_else() -> Result<()> {
    let mut node = common::builder().start().await?;
    let keep = node.run_pod(&node.pod_config("keep")).await?;
    let lost = node.run_pod(&node.pod_config("lost")).await?;
    let lost_info = node.pod_info(&lost).await?;
    // With a running container: its monitor, process, cgroup and the pod's /dev/shm go too.
    node.import_busybox().await?;
    let sleeper = container_config("sleeper", BUSYBOX, &["sleep", "1000"]);
    let ctr = node
        .run_container(&lost, &node.pod_config("lost"), sleeper)
        .await?;
    let info = node.container_info(&ctr).await?;
    let (monitor, pid) = (
        info["monitorPid"].as_u64().context("monitorPid")?,
        info["pid"].as_u64().context("pid")?,
    );

    let refused = gc(&node, &[]).await?;
    ensure!(
        !refused.status.success(),
        "gc ran while the daemon was running"
    );

    // A crash that lost the record: everything of `lost` is now garbage.
    node.crash_losing_pod_record(&lost).await?;

    let dry = gc(&node, &["--dry-run"]).await?;
    let said = String::from_utf8_lossy(&dry.stdout).into_owned();
    ensure!(dry.status.success(), "gc --dry-run failed: {dry:?}");
    let pause = lost_info.pause_pid()?.to_string();
    for expected in [
        format!("would remove pause process {pause} of sandbox {lost}"),
        format!("would remove namespace pin /run/netns/peapod-{lost}"),
        format!("would remove host link {}", host_veth(&lost)),
        format!("would remove IP leases [{}]", lost_info.ip),
        format!("would remove sandbox dir {lost}"),
        format!(
            "would remove cgroup {}/{lost}",
            node.cgroup_parent().trim_start_matches('/')
        ),
        format!("would remove namespace pin dir /run/peapod/ns/{lost}"),
        format!("would remove monitor process {monitor} of container {ctr}"),
        format!(
            "would remove container cgroup {}/{lost}/{ctr}",
            node.cgroup_parent().trim_start_matches('/')
        ),
        format!("would remove pod shm {RUN}/shm/{lost}"),
        format!("would remove monitor socket {RUN}/mon/{ctr}.sock"),
        format!(
            "would remove container dir {}/containers/{ctr} (no record of it or of its pod)",
            node.state_dir().display()
        ),
    ] {
        ensure!(
            said.contains(&expected),
            "dry run did not say {expected:?}:\n{said}"
        );
    }
    ensure!(
        !said.contains(&keep),
        "dry run would touch the kept pod:\n{said}"
    );
    ensure!(
        node.pins().await?.contains(&format!("peapod-{lost}")),
        "the dry run removed something"
    );

    let run = gc(&node, &[]).await?;
    let said = String::from_utf8_lossy(&run.stdout).into_owned();
    ensure!(run.status.success(), "gc failed: {run:?}");
    ensure!(
        said.contains(&format!("removed pause process {pause}")),
        "{said}"
    );
    let again = gc(&node, &[]).await?;
    ensure!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to collect"),
        "a second gc found more: {again:?}"
    );
    let running = node.still_running(&[monitor, pid]).await?;
    ensure!(
        running.is_empty(),
        "the lost pod's container or monitor still runs: {running:?}"
    );
    ensure!(
        !node.state_dir().join("containers").join(&ctr).exists(),
        "the lost pod's container dir is left"
    );

    node.start_daemon().await?;
    let status = node.pod_status(&keep).await?.status.context("no status")?;
    ensure!(
        status.state == PodSandboxState::SandboxReady as i32,
        "the kept pod is {status:?}"
    );
    node.assert_gone(&[lost_info]).await?;
    node.stop_and_remove(&keep).await?;
    node.assert_empty().await
}

/// Container leftovers planted in a node whose daemon was killed: real ones (a container
/// whose record was lost, with its monitor, process, cgroup and socket) and made ones (a
/// container dir with a half-written record and an overlay mount, a container cgroup, a pod
/// `/dev/shm` of no pod, a half-written file in a recorded container's dir).
struct Planted {
    pod: String,
    kept: String,
    kept_pid: u64,
    stray: String,
    stray_monitor: u64,
    stray_pid: u64,
    stray_cgroup: String,
    fake: String,
    fake_cgroup: String,
    fake_shm: String,
    temp: std::path::PathBuf,
}

const RUN: &str = "/run/peapod";

async fn plant(node: &mut Node) -> Result<Planted> {
    node.import_busybox().await?;
    let cfg = node.pod_config("ctrs");
    let pod = node.run_pod(&cfg).await?;
    let sleeper = |name| container_config(name, BUSYBOX, &["sleep", "1000"]);
    let kept = node.run_container(&pod, &cfg, sleeper("kept")).await?;
    let stray = node.run_container(&pod, &cfg, sleeper("stray")).await?;
    let kept_pid = node.container_pid(&kept).await?;
    let info = node.container_info(&stray).await?;
    let (stray_monitor, stray_pid) = (
        info["monitorPid"].as_u64().context("monitorPid")?,
        info["pid"].as_u64().context("pid")?,
    );
    let stray_cgroup = info["cgroupPath"].as_str().context("cgroup")?.to_owned();
    node.kill_daemon().await?;

    let ctrs = node.state_dir().join("containers");
    std::fs::remove_file(ctrs.join(&stray).join("container.json"))?;
    let fake = random_hex(32);
    let dir = ctrs.join(&fake);
    for d in ["lower", "upper", "work", "rootfs"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::write(dir.join(".container.json.tmp"), b"{\"id\": \"")?;
    let d = |s: &str| dir.join(s).display().to_string();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        d("lower"),
        d("upper"),
        d("work")
    );
    node.exec(&[
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        &opts,
        &d("rootfs"),
    ])
    .await?;
    let temp = ctrs.join(&kept).join(".container.json.tmp");
    std::fs::write(&temp, b"{")?;
    let pod_cgroup = std::path::Path::new(&stray_cgroup)
        .parent()
        .context("pod cgroup")?
        .display()
        .to_string();
    let fake_cgroup = format!("{pod_cgroup}/{fake}");
    for h in peapod_tests::cgroup_dirs(&pod_cgroup) {
        std::fs::create_dir(h.join(&fake))?;
    }
    let fake_shm = format!("{RUN}/shm/{}", random_hex(32));
    node.exec(&["mkdir", "-p", &fake_shm]).await?;
    node.exec(&["mount", "-t", "tmpfs", "shm", &fake_shm])
        .await?;
    Ok(Planted {
        pod,
        kept,
        kept_pid,
        stray,
        stray_monitor,
        stray_pid,
        stray_cgroup,
        fake,
        fake_cgroup,
        fake_shm,
        temp,
    })
}

/// What of `p` is still there, one line per thing.
async fn leftovers(node: &Node, p: &Planted) -> Result<Vec<String>> {
    let mut left = Vec::new();
    let procs = node.processes().await?;
    for pid in [p.stray_monitor, p.stray_pid] {
        if let Some(proc) = procs
            .iter()
            .find(|x| u64::from(x.pid) == pid && !x.is_zombie())
        {
            left.push(format!("process {proc:?}"));
        }
    }
    for cg in [&p.stray_cgroup, &p.fake_cgroup] {
        left.extend(
            peapod_tests::cgroup_dirs(cg)
                .iter()
                .map(|d| format!("cgroup {}", d.display())),
        );
    }
    let socks = node.exec(&["ls", "-A", &format!("{RUN}/mon")]).await?;
    if socks.contains(&p.stray) {
        left.push(format!("socket of {}", p.stray));
    }
    let mounts = node.mounts().await?;
    left.extend(
        mounts
            .iter()
            .filter(|m| m.contains(&p.fake) || m.contains(&p.fake_shm))
            .map(|m| format!("mount {m}")),
    );
    if node
        .exec_output(&["test", "-e", &p.fake_shm])
        .await?
        .status
        .success()
    {
        left.push(format!("dir {}", p.fake_shm));
    }
    let ctrs = node.state_dir().join("containers");
    for id in [&p.stray, &p.fake] {
        if ctrs.join(id).exists() {
            left.push(format!("container dir {id}"));
        }
    }
    if p.temp.exists() {
        left.push(format!("file {}", p.temp.display()));
    }
    Ok(left)
}

/// The kept container still runs, the same process, and everything is removed at the end.
async fn kept_and_clean(node: &Node, p: &Planted) -> Result<()> {
    let s = node.container_status(&p.kept).await?;
    ensure!(
        s.state == ContainerState::ContainerRunning as i32,
        "the kept container is {s:?}"
    );
    ensure!(
        node.container_pid(&p.kept).await? == p.kept_pid,
        "the kept container is another process"
    );
    let listed: Vec<String> = node
        .list_containers()
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    ensure!(
        listed == vec![p.kept.clone()],
        "ListContainers has {listed:?}"
    );
    node.stop_and_remove(&p.pod).await?;
    let dirs: Vec<_> = std::fs::read_dir(node.state_dir().join("containers"))?.collect();
    ensure!(dirs.is_empty(), "container dirs left: {dirs:?}");
    node.assert_empty().await
}

#[tokio::test]
async fn gc_lists_then_removes_container_leftovers() -> Result<()> {
    let mut node = common::node().await?;
    let p = plant(&mut node).await?;
    let planted = leftovers(&node, &p).await?;
    ensure!(
        planted.len() >= 10,
        "not everything was planted: {planted:?}"
    );

    let dry = gc(&node, &["--dry-run"]).await?;
    let said = String::from_utf8_lossy(&dry.stdout).into_owned();
    ensure!(dry.status.success(), "gc --dry-run failed: {dry:?}");
    let ctrs = node.state_dir().join("containers").display().to_string();
    for expected in [
        format!(
            "would remove monitor process {} of container {}",
            p.stray_monitor, p.stray
        ),
        format!(
            "would remove container cgroup {}",
            p.stray_cgroup.trim_start_matches('/')
        ),
        format!(
            "would remove container cgroup {}",
            p.fake_cgroup.trim_start_matches('/')
        ),
        format!("would remove monitor socket {RUN}/mon/{}.sock", p.stray),
        format!("would remove pod shm {}", p.fake_shm),
        format!("would remove mount {ctrs}/{}/rootfs", p.fake),
        format!(
            "would remove container dir {ctrs}/{} (no record of it or of its pod)",
            p.stray
        ),
        format!(
            "would remove container dir {ctrs}/{} (no record of it or of its pod)",
            p.fake
        ),
        format!("would remove half-written file {}", p.temp.display()),
    ] {
        ensure!(
            said.contains(&expected),
            "dry run did not say {expected:?}:\n{said}"
        );
    }
    let touches_kept = said
        .lines()
        .filter(|l| l.contains(&p.kept) && !l.contains(".container.json.tmp"))
        .collect::<Vec<_>>();
    ensure!(
        touches_kept.is_empty(),
        "dry run would touch the kept container: {touches_kept:?}"
    );
    ensure!(
        !said.contains(&format!("sandbox dir {}", p.pod)),
        "dry run would touch the pod:\n{said}"
    );
    let after_dry = leftovers(&node, &p).await?;
    ensure!(
        after_dry == planted,
        "the dry run changed something: {planted:?} → {after_dry:?}"
    );

    let run = gc(&node, &[]).await?;
    let said = String::from_utf8_lossy(&run.stdout).into_owned();
    ensure!(run.status.success(), "gc failed: {run:?}\n{said}");
    let left = leftovers(&node, &p).await?;
    ensure!(left.is_empty(), "gc left {left:?}:\n{said}");
    let again = gc(&node, &[]).await?;
    ensure!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to collect"),
        "a second gc found more: {again:?}"
    );
    node.start_daemon().await?;
    kept_and_clean(&node, &p).await
}

/// The daemon's start-up reconcile collects the same; and a recorded container whose monitor
/// was killed while the daemon was down comes back Exited with the reason, its process gone.
#[tokio::test]
async fn a_restart_collects_container_leftovers() -> Result<()> {
    let mut node = common::node().await?;
    let p = plant(&mut node).await?;
    ensure!(
        leftovers(&node, &p).await?.len() >= 10,
        "not everything was planted"
    );
    node.start_daemon().await?;
    let left = leftovers(&node, &p).await?;
    ensure!(
        left.is_empty(),
        "the restart left {left:?}\n{}",
        node.log_tail(40)
    );

    let cfg = node.pod_config("ctrs");
    let lost = container_config("lost", BUSYBOX, &["sleep", "1000"]);
    let lost = node.run_container(&p.pod, &cfg, lost).await?;
    let info = node.container_info(&lost).await?;
    let (monitor, pid) = (
        info["monitorPid"].as_u64().context("monitorPid")?,
        info["pid"].as_u64().context("pid")?,
    );
    node.kill_daemon().await?;
    node.exec(&["kill", "-KILL", &monitor.to_string()]).await?;
    node.start_daemon().await?;
    let s = node.container_status(&lost).await?;
    ensure!(
        s.state == ContainerState::ContainerExited as i32
            && s.reason == "MonitorDied"
            && s.message.contains("monitor")
            && s.exit_code != 0,
        "a container whose monitor died: {s:?}"
    );
    let running = node.still_running(&[pid]).await?;
    ensure!(
        running.is_empty(),
        "the container of a dead monitor still runs: {running:?}"
    );
    node.remove_container(&lost).await?;
    kept_and_clean(&node, &p).await
}

/// A restart after a crash that lost a pod's record: the pod's running container is removed
/// (monitor, process, cgroup, socket, dir) and the pod's garbage, its /dev/shm included, goes.
#[tokio::test]
async fn a_restart_removes_the_containers_of_a_lost_pod() -> Result<()> {
    let mut node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("lost");
    let lost = node.run_pod(&cfg).await?;
    let lost_info = node.pod_info(&lost).await?;
    let sleeper = container_config("sleeper", BUSYBOX, &["sleep", "1000"]);
    let ctr = node.run_container(&lost, &cfg, sleeper).await?;
    let info = node.container_info(&ctr).await?;
    let (monitor, pid) = (
        info["monitorPid"].as_u64().context("monitorPid")?,
        info["pid"].as_u64().context("pid")?,
    );
    node.crash_losing_pod_record(&lost).await?;
    node.start_daemon().await?;

    let running = node.still_running(&[monitor, pid]).await?;
    ensure!(
        running.is_empty(),
        "the lost pod's container or monitor still runs: {running:?}"
    );
    let socks = node.exec(&["ls", "-A", &format!("{RUN}/mon")]).await?;
    ensure!(socks.trim().is_empty(), "monitor sockets left: {socks}");
    let dirs: Vec<_> = std::fs::read_dir(node.state_dir().join("containers"))?.collect();
    ensure!(dirs.is_empty(), "container dirs left: {dirs:?}");
    let listed = node.list_containers().await?;
    ensure!(listed.is_empty(), "ListContainers has {listed:?}");
    node.assert_gone(&[lost_info]).await?;
    node.assert_empty().await
}
