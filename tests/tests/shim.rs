//! peapod's containerd shim (`containerd-shim-peapod-v2`) under Debian's containerd, driven
//! with `ctr` in a throwaway node: output and exit codes, a detached task listed, killed and
//! deleted, containerd killed and restarted under a running task, the shim killed, the device
//! allow-list of a task.

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use peapod_tests::containerd::{BUSYBOX, Containerd};

const RUNTIME: &str = "io.containerd.peapod.v2";

/// The status `ctr task ls` shows for `id`, if it lists it.
async fn task_status(c: &Containerd, id: &str) -> Result<Option<(u32, String)>> {
    let out = c.ctr_ok(&["task", "ls"]).await?;
    Ok(out.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == id).then_some(())?;
        let pid = f.next()?.parse().ok()?;
        Some((pid, f.next()?.to_owned()))
    }))
}

async fn wait_for(c: &Containerd, id: &str, want: Option<&str>) -> Result<Option<u32>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = task_status(c, id).await?;
        if now.as_ref().map(|(_, s)| s.as_str()) == want {
            return Ok(now.map(|(pid, _)| pid));
        }
        if Instant::now() > deadline {
            bail!("task {id} is {now:?}, not {want:?}\n{}", c.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing of the test's tasks is left in the node: no process of theirs, no shim, no task
/// dir, no cgroup.
async fn nothing_left(c: &Containerd) -> Result<()> {
    let node = c.node();
    // containerd's cleanup (`<shim> delete`) and a killed process in the kernel's exit path
    // (on a loaded machine, waiting on writeback) may take a moment to be gone.
    let deadline = Instant::now() + Duration::from_secs(15);
    for pattern in [
        "containerd-shim-peapod",
        "peapod(-monitor)? monitor",
        "sleep",
    ] {
        loop {
            let found = node.exec_output(&["pgrep", "-a", "-f", pattern]).await?;
            if !found.status.success() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "left running: {}",
                String::from_utf8_lossy(&found.stdout)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let dirs = node
        .exec(&["ls", "-A", "/run/peapod-shim"])
        .await
        .unwrap_or_default();
    let tasks: Vec<&str> = dirs
        .lines()
        .filter(|l| *l != "cgroup-parents.json")
        .collect();
    ensure!(tasks.is_empty(), "task dirs left: {tasks:?}");
    ensure!(
        c.cgroups_left().is_empty(),
        "cgroups left: {:?}",
        c.cgroups_left()
    );
    Ok(())
}

/// `ctr run <flags> --runtime peapod busybox <id> <argv>`, whatever its exit status.
async fn run(c: &Containerd, flags: &[&str], id: &str, argv: &[&str]) -> Result<Output> {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--runtime", RUNTIME, BUSYBOX, id]);
    args.extend_from_slice(argv);
    c.ctr(&args).await
}

/// `ctr run -d …` of a task that must start.
async fn run_detached(c: &Containerd, flags: &[&str], id: &str, argv: &[&str]) -> Result<()> {
    let mut all = vec!["-d"];
    all.extend_from_slice(flags);
    let out = run(c, &all, id, argv).await?;
    ensure!(
        out.status.success(),
        "ctr run -d {id} failed: {}
{}",
        String::from_utf8_lossy(&out.stderr),
        c.log_tail()
    );
    wait_for(c, id, Some("RUNNING")).await?;
    Ok(())
}

/// SIGKILL, then delete the task and its container.
async fn kill_and_remove(c: &Containerd, id: &str) -> Result<()> {
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]).await?;
    wait_for(c, id, Some("STOPPED")).await?;
    c.ctr_ok(&["task", "delete", id]).await?;
    c.ctr_ok(&["container", "rm", id]).await?;
    Ok(())
}

#[tokio::test]
async fn a_task_on_a_cgroup_v2_node_gets_its_cgroup_there() -> Result<()> {
    let c = Containerd::start_v2().await?;
    // ctr asks 1024 CPU shares by default, and this kind of machine's cgroup2 hierarchy has
    // no cpu controller (only hugetlb): a limit it cannot honour is refused, so none.
    let flags = ["--cpu-shares", "0"];
    let out = run(
        &c,
        &[&flags[..], &["--rm"]].concat(),
        "v2once",
        &["sh", "-c", "echo v2; exit 4"],
    )
    .await?;
    ensure!(
        out.status.code() == Some(4) && String::from_utf8_lossy(&out.stdout).trim() == "v2",
        "ctr run on v2: {out:?}\n{}",
        c.log_tail()
    );
    run_detached(&c, &flags, "v2task", &["sleep", "1000"]).await?;
    let pid = wait_for(&c, "v2task", Some("RUNNING")).await?.unwrap_or(0);
    let cgroups = c
        .node()
        .exec(&["cat", &format!("/proc/{pid}/cgroup")])
        .await?;
    let want = format!("0::/{}/v2task", c.namespace());
    ensure!(
        cgroups.lines().any(|l| l == want),
        "the task's cgroups, want {want}:\n{cgroups}"
    );
    kill_and_remove(&c, "v2task").await?;
    nothing_left(&c).await
}

#[tokio::test]
async fn ctr_run_shows_output_and_the_exit_code() -> Result<()> {
    let c = Containerd::start().await?;
    let script = "echo out; echo err >&2; id -u";
    let out = run(&c, &["--rm"], "t1", &["sh", "-c", script]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "ctr run failed: {stdout} {stderr}\n{}",
        c.log_tail()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(lines == ["out", "0"], "stdout {stdout:?}");
    ensure!(stderr.contains("err"), "stderr {stderr:?}");

    let out = run(&c, &["--rm"], "t2", &["sh", "-c", "exit 3"]).await?;
    ensure!(
        out.status.code() == Some(3),
        "ctr run of exit 3: {}",
        out.status
    );
    nothing_left(&c).await
}

#[tokio::test]
async fn a_detached_task_is_listed_killed_and_deleted_leaving_nothing() -> Result<()> {
    let c = Containerd::start().await?;
    run_detached(
        &c,
        &[],
        "long",
        &["sh", "-c", "sleep 1000 & exec sleep 1001"],
    )
    .await?;
    let pid = wait_for(&c, "long", Some("RUNNING")).await?.unwrap_or(0);
    ensure!(pid > 0, "no pid for a running task");

    // Its processes, from its cgroup (`/<namespace>/long`).
    let ps = c.ctr_ok(&["task", "ps", "long"]).await?;
    let pids: Vec<u32> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    ensure!(pids.len() == 2 && pids.contains(&pid), "task ps: {ps}");
    ensure!(!c.cgroups_left().is_empty(), "the task has no cgroup");

    // An exec runs in the task's namespaces and cgroup, with its own exit code.
    let exec = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "long",
            "sh",
            "-c",
            "echo in-task; exit 4",
        ])
        .await?;
    let out = String::from_utf8_lossy(&exec.stdout);
    ensure!(exec.status.code() == Some(4), "exec: {} {out}", exec.status);
    ensure!(out.trim() == "in-task", "exec stdout: {out:?}");
    let ps = c.ctr_ok(&["task", "ps", "long"]).await?;
    ensure!(ps.lines().count() == 3, "the exec left processes: {ps}");

    // A running task is not deleted; a killed one is.
    let early = c.ctr(&["task", "delete", "long"]).await?;
    ensure!(!early.status.success(), "a running task was deleted");
    kill_and_remove(&c, "long").await?;
    wait_for(&c, "long", None).await?;
    nothing_left(&c).await
}

#[tokio::test]
async fn the_containers_of_a_pod_share_one_shim() -> Result<()> {
    let c = Containerd::start().await?;
    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=pod-1"];
    for id in ["a", "b"] {
        run_detached(&c, &pod, id, &["sleep", "1000"]).await?;
    }
    let shims = c
        .node()
        .exec(&["pgrep", "-f", "containerd-shim-peapod"])
        .await?;
    ensure!(shims.lines().count() == 1, "shims: {shims}");
    // Each task goes on its own; the shim with the last.
    for id in ["a", "b"] {
        kill_and_remove(&c, id).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .node()
        .exec_output(&["pgrep", "-f", "containerd-shim-peapod"])
        .await?
        .status
        .success()
    {
        ensure!(Instant::now() < deadline, "the shim outlived its last task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nothing_left(&c).await
}

#[tokio::test]
async fn a_task_outlives_a_containerd_restart() -> Result<()> {
    let mut c = Containerd::start().await?;
    run_detached(&c, &[], "keep", &["sleep", "1000"]).await?;
    let pid = wait_for(&c, "keep", Some("RUNNING")).await?;
    c.kill_daemon().await?;
    c.start_daemon().await?;
    let again = wait_for(&c, "keep", Some("RUNNING")).await?;
    ensure!(
        again == pid,
        "the task's pid changed from {pid:?} to {again:?}"
    );
    kill_and_remove(&c, "keep").await?;
    nothing_left(&c).await
}

#[tokio::test]
async fn a_shim_killed_with_sigkill_takes_its_task_along() -> Result<()> {
    let c = Containerd::start().await?;
    run_detached(&c, &[], "doomed", &["sleep", "1000"]).await?;
    c.node()
        .exec(&["pkill", "-KILL", "-f", "containerd-shim-peapod"])
        .await?;
    // containerd sees the shim go, runs `<shim> delete`, and the task is gone.
    wait_for(&c, "doomed", None).await?;
    c.ctr_ok(&["container", "rm", "doomed"]).await?;
    nothing_left(&c).await
}

/// Prints the terminal's size once ctr has set it: ResizePty comes after the start (busybox's
/// stty fails while the size is still 0x0).
const SIZE: &str = "sleep 1; busybox stty size";

/// Runs `command` in the node under a terminal of its own (`script`), 30 rows by 100
/// columns: `ctr -t` needs one, and hands its size on to the task's terminal (ResizePty).
async fn in_terminal(c: &Containerd, command: &str) -> Result<Output> {
    let script = format!("stty rows 30 cols 100; {command}");
    c.node()
        .exec_output(&["script", "-qec", &script, "/dev/null"])
        .await
}

#[tokio::test]
async fn a_terminal_task_and_a_terminal_exec_get_the_clients_window_size() -> Result<()> {
    let c = Containerd::start().await?;
    let socket = c.node().socket().display().to_string();
    let ctr = format!("ctr --address {socket} --namespace {}", c.namespace());
    let run = format!("{ctr} run -t --rm --runtime {RUNTIME} {BUSYBOX} tty1 sh -c '{SIZE}'");
    let out = in_terminal(&c, &run).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "ctr run -t: {text}\n{}", c.log_tail());
    ensure!(
        text.contains("30 100"),
        "stty size in a terminal task: {text:?}"
    );

    run_detached(&c, &[], "long", &["sleep", "1000"]).await?;
    let exec = format!("{ctr} task exec -t --exec-id e1 long sh -c '{SIZE}; exit 7'");
    let out = in_terminal(&c, &exec).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("30 100"),
        "stty size in a terminal exec: {text:?}"
    );
    ensure!(out.status.code() == Some(7), "exec -t exit: {}", out.status);
    kill_and_remove(&c, "long").await?;
    nothing_left(&c).await
}

/// Issue 21, item 1: a task gets runc's default device list from containerd's spec (deny all,
/// then the defaults): a node's device made with mknod (allowed) does not open, neither the
/// character device /dev/kvm (10:232) nor a block device (loop0, 7:0); the list's devices
/// do. A privileged task (all devices allowed, the node's /dev) opens /dev/loop-control.
#[tokio::test]
async fn a_task_opens_only_the_default_devices() -> Result<()> {
    let c = Containerd::start().await?;
    let probe = "busybox mknod /tmp/kvm c 10 232 && busybox mknod /tmp/hd b 7 0 \
                 && echo x >/dev/null && head -c 1 /dev/zero >/dev/null \
                 && (exec 3<>/tmp/kvm) 2>&1; (head -c 1 /tmp/hd >/dev/null) 2>&1; \
                 exec 4<>/dev/full";
    let out = run(&c, &["--rm"], "devs", &["sh", "-c", probe]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.matches("Operation not permitted").count() == 2,
        "the task's device probe: {out:?}\n{}",
        c.log_tail()
    );
    let out = run(
        &c,
        &["--rm", "--privileged"],
        "privdevs",
        // (`<>` creates a file that is missing: the node must be there first.)
        &[
            "sh",
            "-c",
            "test -c /dev/loop-control && exec 3<>/dev/loop-control && echo opened",
        ],
    )
    .await?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "opened",
        "a privileged task and /dev/loop-control: {out:?}\n{}",
        c.log_tail()
    );
    nothing_left(&c).await
}
