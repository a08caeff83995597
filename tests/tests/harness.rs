//! The harness itself: a node is isolated from the host and leaves nothing behind, even when
//! the test process is killed hard; the probe talks TCP.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

fn host_mounts() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/self/mounts")?)
}

fn ns_inode(pid: u32, kind: &str) -> Result<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))?;
    Ok(link.display().to_string())
}

/// Host pids of the processes that are in the namespace `ns` (e.g. `net:[4026532]`).
fn processes_in(kind: &str, ns: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if ns_inode(pid, kind).is_ok_and(|n| n == ns) {
            pids.push(pid);
        }
    }
    pids
}

async fn wait_until_gone(what: &str, mut present: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while present() {
        if Instant::now() > deadline {
            bail!("{what} still there 10s after the node went away");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn node_is_isolated_and_leaves_nothing_behind() -> Result<()> {
    let mounts_before = host_mounts()?;
    let node = common::builder().without_daemon().start().await?;
    let pid1 = node.pid1();
    let netns = ns_inode(pid1, "net")?;
    let mntns = ns_inode(pid1, "mnt")?;
    ensure!(
        netns != ns_inode(std::process::id(), "net")?,
        "the node shares the host netns"
    );
    ensure!(
        mntns != ns_inode(std::process::id(), "mnt")?,
        "the node shares the host mount ns"
    );

    // Inside: only lo, up; a private /run; sysfs of its own netns; nothing pinned.
    let links = node.links().await?;
    ensure!(links == ["lo"], "a fresh node has only lo, found {links:?}");
    let sys_net = node.exec(&["ls", "/sys/class/net"]).await?;
    ensure!(sys_net.trim() == "lo", "the node's /sys shows {sys_net:?}");
    ensure!(node.pins().await?.is_empty(), "a fresh node has pins");
    let mounts = node.mounts().await?;
    ensure!(
        mounts.iter().any(|m| m.starts_with("tmpfs /run tmpfs")),
        "no tmpfs on the node's /run: {mounts:#?}"
    );
    let cg = node.exec(&["ls", "/sys/fs/cgroup"]).await?;
    ensure!(
        !cg.trim().is_empty(),
        "cgroups are not reachable inside the node"
    );

    // Make what a daemon would make: a bridge, a veth, a pinned netns, a mount, a process,
    // a cgroup under the node's parent.
    let tag = peapod_tests::random_hex(3);
    let (veth, bridge, pin) = (
        format!("pt{tag}a"),
        format!("pt{tag}br"),
        format!("pt{tag}"),
    );
    for cmd in [
        format!("ip link add name {bridge} type bridge"),
        format!("ip link add name {veth} type veth peer name pt{tag}b"),
        format!("ip link set {veth} master {bridge}"),
        format!("ip netns add {pin}"),
        format!("ip link set pt{tag}b netns {pin}"),
        "mkdir -p /run/peapod/shm && mount -t tmpfs tmpfs /run/peapod/shm".to_owned(),
    ] {
        node.exec(&["sh", "-c", &cmd]).await?;
    }
    let cgroup = format!("{}/harness", node.cgroup_parent());
    let hierarchy = cgroup_dir(&cgroup)?;
    std::fs::create_dir_all(&hierarchy)?;
    let procs = hierarchy.join("cgroup.procs").display().to_string();
    let mut sleeper = node.spawn(&[
        "sh",
        "-c",
        &format!("echo $$ > {procs} && echo moved && exec sleep 300"),
    ])?;
    sleeper.wait_for_line("moved").await?;
    ensure!(
        node.pins().await? == [pin.clone()],
        "ip netns add did not pin inside the node"
    );
    ensure!(
        !host_mounts()?.contains(&pin) && !host_mounts()?.contains("/run/peapod"),
        "a mount made inside the node shows on the host"
    );
    let host_links = Command::new("ip").args(["-o", "link"]).output()?;
    let host_links = String::from_utf8_lossy(&host_links.stdout);
    ensure!(
        !host_links.contains(&tag),
        "a link made inside the node shows on the host"
    );
    let dir = node.dir().to_path_buf();

    drop(sleeper);
    drop(node);

    ensure!(
        ns_inode(pid1, "net").map_or(true, |n| n != netns),
        "the node's PID 1 survived"
    );
    wait_until_gone("a process in the node's netns", || {
        !processes_in("net", &netns).is_empty()
    })
    .await?;
    wait_until_gone("a process in the node's mount ns", || {
        !processes_in("mnt", &mntns).is_empty()
    })
    .await?;
    ensure!(
        !hierarchy.exists(),
        "{} survived the node",
        hierarchy.display()
    );
    ensure!(
        !dir.exists(),
        "the node's temp dir {} survived",
        dir.display()
    );
    // Only our own mounts count: others on a shared machine may mount meanwhile.
    let after = host_mounts()?;
    let new: Vec<&str> = after
        .lines()
        .filter(|m| !mounts_before.lines().any(|b| b == *m))
        .filter(|m| m.contains(&tag) || m.contains("peapod") || m.contains(" /run"))
        .collect();
    ensure!(new.is_empty(), "the node left mounts on the host: {new:?}");
    Ok(())
}

/// The dir of `cgroup` in the pids hierarchy (v1) or the unified one (v2).
fn cgroup_dir(cgroup: &str) -> Result<std::path::PathBuf> {
    let rel = cgroup.trim_start_matches('/');
    for root in [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        if Path::new(root).join("cgroup.procs").exists() {
            return Ok(Path::new(root).join(rel));
        }
    }
    bail!("no cgroup hierarchy found")
}

#[tokio::test]
async fn probe_talks_tcp_inside_the_node() -> Result<()> {
    let node = common::builder().without_daemon().start().await?;
    let listener = node.listen_in_node("127.0.0.1:7000", 2).await?;
    let host = node.exec(&["cat", "/proc/sys/kernel/hostname"]).await?;
    for _ in 0..2 {
        let said = node
            .exec(&[common::PROBE, "connect", "127.0.0.1:7000"])
            .await?;
        ensure!(
            said == format!("hello from {}\n", host.trim()),
            "probe said {said:?}"
        );
    }
    listener.finish().await?;
    let refused = node
        .exec_output(&[
            common::PROBE,
            "connect",
            "127.0.0.1:7000",
            "--timeout-ms",
            "500",
        ])
        .await?;
    ensure!(
        refused.status.code() == Some(1),
        "connect to a closed port: {refused:?}"
    );
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("127.0.0.1:7000"),
        "the error names the address: {refused:?}"
    );
    Ok(())
}

/// A hard-killed test process takes its node down with it (PR_SET_PDEATHSIG on `unshare`).
#[tokio::test]
async fn node_dies_with_a_killed_test_process() -> Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "holds_a_node_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("PEAPOD_TESTS_HOLD_NODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (mut pid1, mut dir) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(p) = line.strip_prefix("node-pid1=") {
            pid1 = Some(p.parse::<u32>()?);
        }
        if let Some(d) = line.strip_prefix("node-dir=") {
            dir = Some(d.to_owned());
            break;
        }
    }
    let (Some(pid1), Some(dir)) = (pid1, dir) else {
        let _ = child.kill();
        bail!("the helper test never reported its node");
    };
    let netns = ns_inode(pid1, "net")?;
    child.kill()?;
    child.wait()?;
    wait_until_gone("the node's PID 1", || {
        ns_inode(pid1, "net").is_ok_and(|n| n == netns)
    })
    .await?;
    wait_until_gone("a process in the node's netns", || {
        !processes_in("net", &netns).is_empty()
    })
    .await?;
    // The killed process could not clean its temp dir; do it for it.
    std::fs::remove_dir_all(&dir).with_context(|| format!("remove {dir}"))?;
    Ok(())
}

#[tokio::test]
#[ignore = "helper: run by node_dies_with_a_killed_test_process"]
async fn holds_a_node_until_killed() -> Result<()> {
    ensure!(
        std::env::var_os("PEAPOD_TESTS_HOLD_NODE").is_some(),
        "only run as a helper"
    );
    let node = common::builder().without_daemon().start().await?;
    println!("node-pid1={}", node.pid1());
    println!("node-dir={}", node.dir().display());
    tokio::time::sleep(Duration::from_secs(60)).await;
    bail!("was not killed")
}
