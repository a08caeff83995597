//! Issue 21, item 2: an open directory fd of the node must not reach a container (the
//! pattern of runc's CVE-2024-21626). The daemon is started with a leaked directory fd (not
//! close-on-exec) of a canary dir of the node holding a secret; containers then try to make
//! it their working dir (`/proc/self/fd/<n>`), an exec tries to `cd` into it, and a privileged
//! container of a pod that shares its PID namespace names a working dir through pause's
//! `/proc/1/root`; under containerd, the shim's task and exec do the same through the node's
//! PID 1. The canary: its secret is read by none of them, and nothing is written next to it.

mod common;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{NamespaceMode, NamespaceOption};
use peapod_tests::Node;
use peapod_tests::containerd::{self, Containerd};
use peapod_tests::containers::{BUSYBOX, container_config, security};

const SECRET: &str = "node-secret-7f3a9c";
/// The fd number the daemon inherits the canary dir at.
const LEAKED_FD: i32 = 9;
/// The fd numbers the containers try (the leaked one, and what else a process may hold).
const FDS: std::ops::RangeInclusive<i32> = 3..=12;

/// Reads the secret and writes next to it, from the working dir.
const ATTACK: &str = "cat secret; echo pwned > planted; ls";

fn canary(node: &Node) -> Result<std::path::PathBuf> {
    let dir = node.dir().join("canary");
    std::fs::create_dir(&dir)?;
    std::fs::write(dir.join("secret"), SECRET)?;
    Ok(dir)
}

/// What the canary dir holds beyond its secret, and whether the secret changed.
fn canary_touched(dir: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != "secret" {
            found.push(format!("a file {name:?} appeared in the canary dir"));
        }
    }
    if std::fs::read_to_string(dir.join("secret"))? != SECRET {
        found.push("the canary's secret changed".into());
    }
    Ok(found)
}

/// Processes of the node (its PID namespace) that hold `dir` open, as `pid fd`.
fn holders_in_node(node: &Node, dir: &Path) -> Vec<String> {
    let pid_ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let node_ns = pid_ns(&node.pid1().to_string());
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid_ns(&pid) != node_ns {
            continue;
        }
        for fd in std::fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == dir) {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                out.push(format!(
                    "pid {pid} ({}) holds it as fd {}",
                    comm.trim(),
                    fd.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}

/// Fails, naming every way in, if anything in `found` or the canary dir shows it was reached.
fn untouched(canary: &Path, mut found: Vec<String>) -> Result<()> {
    found.extend(canary_touched(canary).context("look at the canary")?);
    ensure!(
        found.is_empty(),
        "the node's canary dir {} was reached:\n{}",
        canary.display(),
        found.join("\n")
    );
    Ok(())
}

/// A start or exec refused for its working dir: the rootfs resolves it inside the root and
/// refuses magic links (`/proc/self/fd/N`, `/proc/1/root`: ELOOP) before anything runs; what
/// still gets to a `chdir` (an exec's working dir) is checked after it.
fn refused_for_its_cwd(msg: &str) -> bool {
    msg.contains("outside the container's root")
        || (msg.contains("cannot resolve /proc/")
            && msg.contains("Too many levels of symbolic links"))
}

#[tokio::test]
async fn an_inherited_directory_fd_does_not_reach_a_container() -> Result<()> {
    let mut node = common::builder().without_daemon().start().await?;
    let canary = canary(&node)?;
    let leaked = OwnedFd::from(std::fs::File::open(&canary)?);
    node.pass_daemon_fd(leaked, LEAKED_FD);
    node.start_daemon().await?;
    node.import_busybox().await?;
    let mut found = Vec::new();

    // The working dir through each fd the container's process might hold when it chdirs.
    let cfg = node.pod_config("fds");
    let pod = node.run_pod(&cfg).await?;
    let mut logs = Vec::new();
    for n in FDS {
        let name = format!("cwd-fd-{n}");
        let mut c = container_config(&name, BUSYBOX, &["sh", "-c", ATTACK]);
        c.working_dir = format!("/proc/self/fd/{n}");
        let id = node.create_container(&pod, &cfg, c).await?;
        if node.start_container(&id).await.is_ok() {
            node.wait_exited(&id, Duration::from_secs(10)).await?;
        }
        logs.push((
            name.clone(),
            node.container_log(&cfg, &format!("{name}.log")),
        ));
    }

    // An exec into a running container, through any fd it or the container's PID 1 holds.
    let c = container_config("sleeper", BUSYBOX, &["sleep", "1000"]);
    let sleeper = node.run_container(&pod, &cfg, c).await?;
    let holders = holders_in_node(&node, &canary);
    found.extend(holders);
    let script = format!(
        "for n in $(seq {} {}); do \
           (cd /proc/$$/fd/$n 2>/dev/null && {ATTACK}); \
           (cd /proc/1/fd/$n 2>/dev/null && {ATTACK}); \
         done; true",
        FDS.start(),
        FDS.end()
    );
    let r = node.exec_sync(&sleeper, &["sh", "-c", &script], 10).await?;
    logs.push((
        "exec".into(),
        String::from_utf8_lossy(&r.stdout).into_owned(),
    ));

    // A working dir that resolves outside the container's root through pause's root, in a
    // privileged container (it may look at pause's /proc entries) sharing the pod's PID
    // namespace: refused after the chdir, the secret unread.
    let shared = node.pod_config("fds-shared").pid(NamespaceMode::Pod);
    let shared_pod = node.run_pod(&shared).await?;
    let mut c = container_config("via-pause", BUSYBOX, &["sh", "-c", ATTACK]);
    c.working_dir = format!("/proc/1/root{}", canary.display());
    let sec = security(&mut c);
    sec.privileged = true;
    sec.namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let id = node.create_container(&shared_pod, &shared, c).await?;
    match node.start_container(&id).await {
        Ok(()) => {
            node.wait_exited(&id, Duration::from_secs(10)).await?;
            found.push("a working dir outside the container's root was accepted".into());
        }
        Err(e) => {
            let msg = format!("{e:#}");
            ensure!(
                refused_for_its_cwd(&msg),
                "the refused start does not say why: {msg}"
            );
        }
    }
    logs.push((
        "via-pause".into(),
        node.container_log(&shared, "via-pause.log"),
    ));

    for (name, log) in &logs {
        if log.contains(SECRET) {
            found.push(format!("{name} read the canary's secret:\n{log}"));
        }
    }
    untouched(&canary, found)
}

/// The shim's paths: a privileged task in the node's PID namespace (whose PID 1 has the node's
/// root) with its working dir, and then an exec's, through `/proc/1/root`.
#[tokio::test]
async fn a_shim_task_or_exec_does_not_work_outside_its_root() -> Result<()> {
    const RUNTIME: &str = "io.containerd.peapod.v2";
    let c = Containerd::start().await?;
    let canary = canary(c.node())?;
    let cwd = format!("/proc/1/root{}", canary.display());
    let node_pid_ns = ["--privileged", "--with-ns", "pid:/proc/1/ns/pid"];
    let mut run = vec!["run", "--rm", "--cwd", &cwd, "--runtime", RUNTIME];
    run.extend_from_slice(&node_pid_ns);
    run.extend_from_slice(&[containerd::BUSYBOX, "task-cwd", "sh", "-c", ATTACK]);
    let task = c.ctr(&run).await?;
    let mut run = vec!["run", "-d", "--runtime", RUNTIME];
    run.extend_from_slice(&node_pid_ns);
    run.extend_from_slice(&[containerd::BUSYBOX, "holder", "sleep", "1000"]);
    c.ctr_ok(&run).await?;
    let exec = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "--cwd",
            &cwd,
            "holder",
            "sh",
            "-c",
            ATTACK,
        ])
        .await?;
    c.ctr_ok(&["task", "kill", "-s", "KILL", "holder"]).await?;

    let mut found = Vec::new();
    for (what, out) in [("the task", &task), ("the exec", &exec)] {
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || text.contains(SECRET) {
            found.push(format!("{what} ran in {cwd}: {text}{err}"));
        } else if !refused_for_its_cwd(&err) {
            found.push(format!("{what} failed, but not saying why: {text}{err}"));
        }
    }
    untouched(&canary, found)
}
