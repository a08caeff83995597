//! Issue 21, item 1: a container reaches only the devices its allow-list names (runc's
//! default list, plus what the CRI request grants; everything for a privileged container).
//!
//! The canary: a loop device of the node attached to a file that holds a secret. A default
//! container that `mknod`s it (CAP_MKNOD is a default capability, and mknod itself is allowed,
//! as with runc) must not read or write it; nor open a character device off the list
//! (`/dev/kvm`, 10:232, made with mknod). The file must be untouched afterwards. The same on
//! the host's cgroup2 hierarchy, where a BPF device program does the job of `devices.list`.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use cri_api::v1::{ContainerConfig, Device};
use peapod_tests::containers::{BUSYBOX, container_config, security};
use peapod_tests::{Node, PodConfig};

const SECRET: &str = "node-secret-0123456789abcdef";

/// runc's default allow-list as `devices.list` shows it.
const DEFAULT_LIST: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:8 rwm",
    "c 1:7 rwm",
    "c 5:0 rwm",
    "c 1:5 rwm",
    "c 1:9 rwm",
    "c 136:* rwm",
    "c 5:2 rwm",
    "c 10:200 rwm",
];

/// A node loop device attached to a file holding [`SECRET`]; detached on drop.
struct LoopCanary {
    dev: String,
    major: u64,
    minor: u64,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopCanary {
    fn new() -> Result<LoopCanary> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("disk.img");
        let mut content = SECRET.as_bytes().to_vec();
        content.resize(64 << 10, 0);
        std::fs::write(&file, &content)?;
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output()
            .context("losetup")?;
        ensure!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let meta = std::fs::metadata(&dev).with_context(|| format!("stat {dev}"))?;
        ensure!(
            meta.file_type().is_block_device(),
            "{dev} is no block device"
        );
        let rdev = meta.rdev();
        Ok(LoopCanary {
            dev,
            major: nix::sys::stat::major(rdev),
            minor: nix::sys::stat::minor(rdev),
            file,
            _dir: dir,
        })
    }

    /// The backing file still holds the secret and nothing else.
    fn untouched(&self) -> Result<()> {
        let content = std::fs::read(&self.file)?;
        ensure!(
            content.starts_with(SECRET.as_bytes())
                && content[SECRET.len()..].iter().all(|b| *b == 0),
            "the canary file of {} was written to",
            self.dev
        );
        Ok(())
    }
}

impl Drop for LoopCanary {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Runs `script` with `sh -c` in the container; (exit code, stdout, stderr).
async fn sh(node: &Node, id: &str, script: &str) -> Result<(i32, String, String)> {
    let r = node.exec_sync(id, &["sh", "-c", script], 10).await?;
    Ok((
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    ))
}

/// `script` must fail with EPERM.
async fn denied(node: &Node, id: &str, script: &str) -> Result<()> {
    let (code, out, err) = sh(node, id, script).await?;
    ensure!(
        code != 0 && err.contains("Operation not permitted"),
        "{script:?} was not refused with EPERM: exit {code}, stdout {out:?}, stderr {err:?}"
    );
    ensure!(!out.contains(SECRET), "{script:?} read the secret");
    Ok(())
}

/// `script` must succeed; its stdout.
async fn allowed(node: &Node, id: &str, script: &str) -> Result<String> {
    let (code, out, err) = sh(node, id, script).await?;
    ensure!(code == 0, "{script:?} failed: exit {code}, {err}");
    Ok(out)
}

/// The probes of a default container: the canary's block device and /dev/kvm, made with
/// mknod, do not open; the devices of the list do.
async fn default_is_denied(node: &Node, id: &str, canary: &LoopCanary) -> Result<()> {
    let (major, minor) = (canary.major, canary.minor);
    // mknod is allowed (`b *:* m`), as with runc; opening is not.
    allowed(
        node,
        id,
        &format!("busybox mknod /tmp/hd b {major} {minor}"),
    )
    .await?;
    denied(node, id, "head -c 64 /tmp/hd").await?;
    denied(node, id, "echo pwned > /tmp/hd").await?;
    allowed(node, id, "busybox mknod /tmp/kvm c 10 232").await?;
    denied(node, id, "exec 3<>/tmp/kvm").await?;
    denied(node, id, "exec 3</tmp/kvm").await?;
    // The list's devices open, also as nodes made anew.
    allowed(
        node,
        id,
        "head -c 4 /dev/zero >/dev/null && head -c 4 /dev/urandom >/dev/null \
         && head -c 4 /dev/random >/dev/null && echo x >/dev/null && exec 3<>/dev/full \
         && exec 4<>/dev/ptmx && busybox mknod /tmp/null c 1 3 && echo x >/tmp/null",
    )
    .await?;
    canary.untouched()
}

/// The container's cgroup in the v1 hierarchy `controller`, inside the node.
async fn v1_cgroup(node: &Node, id: &str, controller: &str) -> Result<PathBuf> {
    let pid = node.container_pid(id).await?;
    let text = node.exec(&["cat", &format!("/proc/{pid}/cgroup")]).await?;
    let rel = text
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, names, path) = (f.next()?, f.next()?, f.next()?);
            names.split(',').any(|n| n == controller).then_some(path)
        })
        .with_context(|| format!("no {controller} line in /proc/{pid}/cgroup:\n{text}"))?;
    Ok(Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(rel.trim_start_matches('/')))
}

async fn devices_list(node: &Node, id: &str) -> Result<Vec<String>> {
    let dir = v1_cgroup(node, id, "devices").await?;
    let file = dir.join("devices.list");
    let text = node.exec(&["cat", &file.display().to_string()]).await?;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    Ok(lines)
}

fn sorted(lines: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn sleeper(name: &str) -> ContainerConfig {
    container_config(name, BUSYBOX, &["sleep", "1000"])
}

fn granted(name: &str, canary: &LoopCanary, permissions: &str) -> ContainerConfig {
    let mut c = sleeper(name);
    c.devices = vec![Device {
        container_path: "/dev/granted".into(),
        host_path: canary.dev.clone(),
        permissions: permissions.into(),
    }];
    c
}

fn privileged(name: &str) -> ContainerConfig {
    let mut c = sleeper(name);
    security(&mut c).privileged = true;
    c
}

/// A granted device is there, with the node device's type and numbers, and opens with the
/// permissions granted (`r`) and no others.
async fn granted_opens_as_asked(node: &Node, id: &str, canary: &LoopCanary) -> Result<()> {
    let kind = allowed(node, id, "stat -c '%F %t:%T' /dev/granted").await?;
    let want = format!("block special file {:x}:{:x}", canary.major, canary.minor);
    ensure!(
        kind.trim() == want,
        "/dev/granted is {kind:?}, not {want:?}"
    );
    let read = allowed(node, id, "head -c 28 /dev/granted").await?;
    ensure!(read == SECRET, "read {read:?} from the granted device");
    denied(node, id, "echo pwned > /dev/granted").await?;
    canary.untouched()
}

/// The privileged container has the node's devices in its /dev and opens them (the canary's
/// loop device, and loop-control, which every node with loop devices has).
async fn privileged_opens(node: &Node, id: &str, canary: &LoopCanary) -> Result<()> {
    let read = allowed(node, id, &format!("head -c 28 {}", canary.dev)).await?;
    ensure!(read == SECRET, "read {read:?} from {}", canary.dev);
    // (`<>` creates a file that is missing: the node must be there first.)
    allowed(
        node,
        id,
        "test -c /dev/loop-control && exec 3<>/dev/loop-control",
    )
    .await?;
    canary.untouched()
}

async fn run_pod(node: &Node, name: &str) -> Result<(PodConfig, String)> {
    let cfg = node.pod_config(name);
    let pod = node.run_pod(&cfg).await?;
    Ok((cfg, pod))
}

#[tokio::test]
async fn a_default_container_opens_only_the_default_devices() -> Result<()> {
    let canary = LoopCanary::new()?;
    let node = common::node().await?;
    node.import_busybox().await?;
    let (cfg, pod) = run_pod(&node, "dev").await?;
    let id = node.run_container(&pod, &cfg, sleeper("plain")).await?;
    default_is_denied(&node, &id, &canary).await?;
    let list = devices_list(&node, &id).await?;
    ensure!(
        list == sorted(DEFAULT_LIST),
        "devices.list of a default container:\n{}",
        list.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn a_granted_device_opens_with_its_permissions_only() -> Result<()> {
    let canary = LoopCanary::new()?;
    let node = common::node().await?;
    node.import_busybox().await?;
    let (cfg, pod) = run_pod(&node, "grant").await?;
    let id = node
        .run_container(&pod, &cfg, granted("granted", &canary, "r"))
        .await?;
    granted_opens_as_asked(&node, &id, &canary).await?;
    let mut want = DEFAULT_LIST.to_vec();
    let rule = format!("b {}:{} r", canary.major, canary.minor);
    want.push(&rule);
    let list = devices_list(&node, &id).await?;
    ensure!(list == sorted(&want), "devices.list:\n{}", list.join("\n"));

    // Refused, and nothing made: bad permissions, a host path that is no device or missing.
    let file = node.dir().join("not-a-device");
    std::fs::write(&file, "x")?;
    let before = node.list_containers().await?.len();
    for (host, perms) in [
        (canary.dev.as_str(), "rwx"),
        (canary.dev.as_str(), ""),
        (file.to_str().unwrap(), "rw"),
        ("/dev/no-such-device", "rw"),
    ] {
        let mut c = granted("bad", &canary, perms);
        c.devices[0].host_path = host.into();
        let Err(e) = node.create_container(&pod, &cfg, c).await else {
            bail!("a device {host} with permissions {perms:?} was accepted");
        };
        let status = e
            .chain()
            .find_map(|c| c.downcast_ref::<tonic::Status>())
            .with_context(|| format!("{e:#}"))?;
        ensure!(
            status.code() == tonic::Code::InvalidArgument,
            "{host} {perms:?}: {status:?}"
        );
    }
    ensure!(node.list_containers().await?.len() == before);
    Ok(())
}

#[tokio::test]
async fn a_privileged_container_opens_every_device() -> Result<()> {
    let canary = LoopCanary::new()?;
    let node = common::node().await?;
    node.import_busybox().await?;
    let (cfg, pod) = run_pod(&node, "priv").await?;
    let id = node.run_container(&pod, &cfg, privileged("all")).await?;
    privileged_opens(&node, &id, &canary).await?;
    let list = devices_list(&node, &id).await?;
    ensure!(list == ["a *:* rwm"], "devices.list:\n{}", list.join("\n"));
    Ok(())
}

/// The same on the host's cgroup2 hierarchy: a BPF device program on the container's cgroup.
#[tokio::test]
async fn on_cgroup_v2_a_device_program_does_the_same() -> Result<()> {
    let canary = LoopCanary::new()?;
    let node = common::builder().cgroup_v2().start().await?;
    node.import_busybox().await?;
    let (cfg, pod) = run_pod(&node, "v2").await?;
    let plain = node.run_container(&pod, &cfg, sleeper("plain")).await?;
    default_is_denied(&node, &plain, &canary).await?;
    let grant = node
        .run_container(&pod, &cfg, granted("granted", &canary, "r"))
        .await?;
    granted_opens_as_asked(&node, &grant, &canary).await?;
    let all = node.run_container(&pod, &cfg, privileged("all")).await?;
    privileged_opens(&node, &all, &canary).await?;
    Ok(())
}

/// The grant and the rules are in the container's records: created before a daemon restart,
/// started after it, the container has its device and the default-deny list.
#[tokio::test]
async fn a_grant_made_before_a_daemon_restart_holds_after_it() -> Result<()> {
    let canary = LoopCanary::new()?;
    let mut node = common::node().await?;
    node.import_busybox().await?;
    let (cfg, pod) = run_pod(&node, "restart").await?;
    let id = node
        .create_container(&pod, &cfg, granted("granted", &canary, "r"))
        .await?;
    node.restart_daemon().await?;
    node.start_container(&id).await?;
    granted_opens_as_asked(&node, &id, &canary).await?;
    // (The canary's device is the granted one here: readable.)
    allowed(&node, &id, "busybox mknod /tmp/kvm c 10 232").await?;
    denied(&node, &id, "exec 3<>/tmp/kvm").await?;
    let mut want = DEFAULT_LIST.to_vec();
    let rule = format!("b {}:{} r", canary.major, canary.minor);
    want.push(&rule);
    let list = devices_list(&node, &id).await?;
    ensure!(list == sorted(&want), "devices.list:\n{}", list.join("\n"));
    Ok(())
}
