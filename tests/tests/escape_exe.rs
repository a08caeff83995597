//! Issue 21, item 7: a process of peapod that joins a container (an exec's `enter`, the
//! container's own process before it execs the command) must not hand the container the
//! node's `peapod-monitor` binary through `/proc/<pid>/exe` (the pattern of runc's
//! CVE-2019-5736: an fd to the runtime's binary, written once it stops running). The canary:
//! the node's `peapod-monitor`, which no fd of the container may name.
//!
//! Deterministic: the daemon runs with the `process:exec` stall point, so each such process
//! waits 2 s with the container's credentials right before it execs; a watcher container in
//! the pod's shared PID namespace opens the `exe` of every process it sees that is not
//! busybox, keeps it open in a background `sleep` (as fd 3), then tries to write through it.
//! The test looks at those fds from the node's side.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{ContainerConfig, NamespaceMode, NamespaceOption};
use peapod_tests::containerd::Containerd;
use peapod_tests::containers::{BUSYBOX, container_config, security};

/// Two hits: the exec's process and the second container's process.
const WATCH: &str = r#"
echo watching
seen=" $$ "
holders=""
hits=0
while [ $hits -lt 2 ]; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$seen" in *" $p "*) continue;; esac
    t=$(readlink "$d/exe" 2>/dev/null) || continue
    case "$t" in ""|/bin/busybox) continue;; esac
    head -c1 "$d/exe" >/dev/null 2>&1 || continue
    sleep 1000 3<"$d/exe" &
    echo "hit $! $p $t"
    seen="$seen$p $! "
    holders="$holders $!"
    hits=$((hits+1))
  done
done
sleep 3
for h in $holders; do
  if echo x >> /proc/$h/fd/3; then echo "wrote $h"; else echo "nowrite $h"; fi
done
echo done
exec sleep 1000
"#;

fn in_pod_pid_ns(mut c: ContainerConfig) -> ContainerConfig {
    security(&mut c).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    });
    c
}

/// The pids of a host process from the outermost PID namespace in.
fn ns_pids(host_pid: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{host_pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The host pid of the process whose pid is `pid` at depth `depth` (0: the host).
fn host_pid(depth: usize, pid: u32) -> Option<String> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .find(|p| ns_pids(p).get(depth) == Some(&pid))
}

#[tokio::test]
async fn a_joining_process_does_not_show_the_nodes_monitor_binary() -> Result<()> {
    let mut node = common::builder().without_daemon().start().await?;
    node.set_daemon_env("PEAPOD_FAULT", Some("process:exec"));
    node.start_daemon().await?;
    node.import_busybox().await?;
    let monitor = std::fs::metadata(node.bin_dir().join("peapod-monitor"))?;
    let cfg = node.pod_config("exe").pid(NamespaceMode::Pod);
    let pod = node.run_pod(&cfg).await?;

    let watcher = in_pod_pid_ns(container_config("watcher", BUSYBOX, &["sh", "-c", WATCH]));
    let watcher = node.run_container(&pod, &cfg, watcher).await?;
    node.wait_log(&cfg, "watcher.log", "watching", Duration::from_secs(10))
        .await?;
    // An exec: its process joins the pod's PID namespace and waits there before it execs.
    node.exec_ok(&watcher, &["true"]).await?;
    // A second container: its process, the same.
    let second = in_pod_pid_ns(container_config("second", BUSYBOX, &["sleep", "1000"]));
    node.run_container(&pod, &cfg, second).await?;
    let log = node
        .wait_log(
            &cfg,
            "watcher.log",
            "stdout F done",
            Duration::from_secs(20),
        )
        .await?;

    // The watcher's pid namespace is the third level: host, node, pod.
    let node_pid = node.container_pid(&watcher).await? as u32;
    let watcher_host = host_pid(1, node_pid).context("the watcher's host pid")?;
    let depth = ns_pids(&watcher_host).len() - 1;
    let mut found = Vec::new();
    let mut hits = 0;
    for line in log.lines() {
        let Some(hit) = line.split(" stdout F hit ").nth(1) else {
            if line.contains(" stdout F wrote ") {
                found.push(format!("the container wrote to a peapod binary: {line}"));
            }
            continue;
        };
        hits += 1;
        let holder: u32 = hit
            .split_whitespace()
            .next()
            .context("holder pid")?
            .parse()?;
        let host = host_pid(depth, holder).with_context(|| format!("holder {holder}"))?;
        let fd = format!("/proc/{host}/fd/3");
        let target = std::fs::read_link(&fd).with_context(|| format!("readlink {fd}"))?;
        let got = std::fs::metadata(&fd).with_context(|| format!("stat {fd}"))?;
        if (got.dev(), got.ino()) == (monitor.dev(), monitor.ino()) {
            found.push(format!(
                "the container holds the node's peapod-monitor ({}) through {hit}",
                target.display()
            ));
        } else if !target.to_string_lossy().starts_with("/memfd:") {
            found.push(format!(
                "the container holds {} through {hit}",
                target.display()
            ));
        }
    }
    ensure!(
        hits == 2,
        "the watcher saw {hits} joining processes, not 2 (exec, container):\n{log}"
    );
    ensure!(
        found.is_empty(),
        "the node's monitor binary {} was reachable:\n{}\n{log}",
        Path::new(&node.bin_dir().join("peapod-monitor")).display(),
        found.join("\n")
    );
    Ok(())
}

/// Under containerd: the shim's monitor (whose fork becomes the task's process) and its
/// exec's `enter` (whose fork joins the task) run from a sealed copy too, not from the node's
/// `peapod-monitor`.
#[tokio::test]
async fn the_shims_helpers_run_from_a_sealed_copy() -> Result<()> {
    const RUNTIME: &str = "io.containerd.peapod.v2";
    let c = Containerd::start().await?;
    let node_binary = std::fs::metadata(c.node().bin_dir().join("peapod-monitor"))?;
    let busybox = peapod_tests::containerd::BUSYBOX;
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        busybox,
        "t",
        "sleep",
        "1000",
    ])
    .await?;
    // An exec that lasts: its `enter` waits for it.
    let exec = c.node().spawn(&[
        "ctr",
        "--address",
        &c.node().socket().display().to_string(),
        "--namespace",
        c.namespace(),
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t",
        "sleep",
        "1000",
    ])?;
    let node_ns = std::fs::read_link(format!("/proc/{}/ns/pid", c.node().pid1()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let helpers = loop {
        let mut helpers = Vec::new();
        for p in std::fs::read_dir("/proc")?.flatten() {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let sub = args.get(1).copied().unwrap_or_default();
            if (sub == b"monitor" || sub == b"enter")
                && std::fs::read_link(p.path().join("ns/pid")).is_ok_and(|n| n == node_ns)
            {
                helpers.push(p.path());
            }
        }
        let enter = helpers.iter().any(|p| {
            std::fs::read(p.join("cmdline")).is_ok_and(|c| c.windows(6).any(|w| w == b"enter\0"))
        });
        if enter || std::time::Instant::now() > deadline {
            break helpers;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut found = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for p in &helpers {
        let cmdline =
            String::from_utf8_lossy(&std::fs::read(p.join("cmdline"))?).replace('\0', " ");
        kinds.insert(cmdline.split_whitespace().nth(1).unwrap_or("").to_owned());
        let exe = std::fs::read_link(p.join("exe"))?;
        let got = std::fs::metadata(p.join("exe"))?;
        if (got.dev(), got.ino()) == (node_binary.dev(), node_binary.ino())
            || !exe.to_string_lossy().starts_with("/memfd:")
        {
            found.push(format!("{cmdline}runs {}", exe.display()));
        }
    }
    drop(exec);
    ensure!(
        kinds.contains("monitor") && kinds.contains("enter"),
        "no monitor and enter of the shim found: {helpers:?}"
    );
    ensure!(
        found.is_empty(),
        "the shim's helpers run the node's binary:\n{}",
        found.join("\n")
    );
    Ok(())
}
