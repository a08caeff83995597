//! A throwaway node: namespaces, a temp dir, and the real daemon running inside.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use cri_api::v1::VersionRequest;
use nix::sys::signal::Signal;

use crate::cri::{self, Client, PodConfig};
use crate::{cgroup, spawn};

/// How long the daemon may take to answer `Version` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after SIGTERM or SIGKILL: it is gone in well under a
/// second on an idle machine, but a loaded one (load 5-8 on 2 cores, a VM beside) can keep a
/// dying process in the kernel for seconds.
const STOP_TIMEOUT: Duration = Duration::from_secs(45);
/// After this long, what the dying daemon's threads wait on in the kernel is printed.
const SLOW_EXIT: Duration = Duration::from_secs(10);

/// PID 1 of the node: mounts its private `/run` (tmpfs) and its own sysfs (keeping the cgroup
/// hierarchies reachable under it, or with `$1` = `v2` mounting the cgroup2 hierarchy alone
/// at `/sys/fs/cgroup`), brings `lo` up, says `ready` and becomes `$0`, the holder
/// (`peapod-pause`), which reaps the node's orphans until the node is killed.
const HOLDER_SCRIPT: &str = r#"set -e
mount -t tmpfs -o mode=0755 tmpfs /run
if [ "$1" = v2 ]; then
    mount -t sysfs sysfs /sys
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
else
    if mountpoint -q /sys/fs/cgroup; then
        mkdir /run/.cgroup
        mount --rbind /sys/fs/cgroup /run/.cgroup
    fi
    mount -t sysfs sysfs /sys
    if [ -d /run/.cgroup ]; then
        mount --move /run/.cgroup /sys/fs/cgroup
        rmdir /run/.cgroup
    fi
fi
ip link set lo up
echo ready
exec "$0" </dev/null >/dev/null
"#;

/// How to build a [`Node`].
#[derive(Clone, Debug, Default)]
pub struct NodeBuilder {
    without_daemon: bool,
    daemon_args: Vec<String>,
    setup: Vec<Vec<String>>,
    probe: Option<PathBuf>,
    config: String,
    cgroup_v2: bool,
}

impl NodeBuilder {
    /// Extra arguments for `peapod serve` (e.g. `--pod-cidr 10.77.0.0/29`).
    pub fn daemon_args(mut self, args: &[&str]) -> Self {
        self.daemon_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// A command to run inside the node before the daemon starts (e.g. to give it an address).
    pub fn setup(mut self, command: &[&str]) -> Self {
        self.setup
            .push(command.iter().map(|a| a.to_string()).collect());
        self
    }

    /// TOML appended to the daemon's config file (e.g. a `[registries."…"]` table).
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }

    /// The `peapod-probe` binary (tests pass `env!("CARGO_BIN_EXE_peapod-probe")`).
    pub fn probe(mut self, path: impl Into<PathBuf>) -> Self {
        self.probe = Some(path.into());
        self
    }

    /// A pure cgroup v2 node: inside the node's mount namespace only, `/sys/fs/cgroup` is the
    /// host's cgroup2 hierarchy (on this kind of machine the one mounted at
    /// `/sys/fs/cgroup/unified`) instead of the v1 controllers. It is the real, shared
    /// hierarchy: the node's cgroup parent keeps it apart from other nodes.
    pub fn cgroup_v2(mut self) -> Self {
        self.cgroup_v2 = true;
        self
    }

    /// Only the namespaces, no daemon (to test the harness itself).
    pub fn without_daemon(mut self) -> Self {
        self.without_daemon = true;
        self
    }

    /// Builds the node and, unless told otherwise, starts the daemon and waits until it
    /// answers `Version`.
    pub async fn start(self) -> Result<Node> {
        crate::require_root();
        let bins = crate::bin_dir();
        let needed: &[&str] = if self.without_daemon {
            &["peapod-pause"]
        } else {
            &["peapod", "peapod-monitor", "peapod-pause"]
        };
        for bin in needed {
            ensure!(
                bins.join(bin).is_file(),
                "{} not found: build the workspace binaries first (`cargo build --workspace \
                 --bins`) or point PEAPOD_BIN_DIR at them",
                bins.join(bin).display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("peapod-test-")
            .tempdir()
            .context("create the node's temp dir")?;
        let log_level = std::env::var("PEAPOD_TEST_LOG_LEVEL").unwrap_or_else(|_| "info".into());
        // Every cgroup of this node, also of pods whose request names no parent, lives below
        // its own parent: another node's daemon collecting its default parent at start-up
        // must never see this node's cgroups.
        let cgroup_parent = format!("/peapod-test-{}", crate::random_hex(4));
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "# written by the peapod test harness\nlog_level = {log_level:?}\n\
                 cgroup_parent = {cgroup_parent:?}\n{}",
                self.config
            ),
        )?;
        // The host must see the hierarchy too, to clean up after a node that failed.
        ensure!(
            !self.cgroup_v2 || cgroup::v2_root().is_some(),
            "a cgroup v2 node needs the host's cgroup2 hierarchy mounted (e.g. at \
             /sys/fs/cgroup/unified)"
        );
        let (holder, pid1) = spawn_holder(dir.path(), &bins.join("peapod-pause"), self.cgroup_v2)?;
        let mut node = Node {
            cgroup_parent,
            probe: self.probe.unwrap_or_else(|| bins.join("peapod-probe")),
            bins,
            holder,
            pid1,
            daemon: None,
            daemon_args: self.daemon_args,
            daemon_env: Vec::new(),
            daemon_fds: Vec::new(),
            dir,
        };
        for command in &self.setup {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            node.exec(&args).await.context("node setup command")?;
        }
        if !self.without_daemon {
            node.start_daemon().await?;
        }
        Ok(node)
    }
}

/// Starts the node's PID 1 under `unshare` and returns the `unshare` child and the host pid of
/// the node's PID 1 once it is ready.
fn spawn_holder(dir: &Path, holder: &Path, cgroup_v2: bool) -> Result<(Child, u32)> {
    let log = File::create(dir.join("node.log"))?;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        HOLDER_SCRIPT,
    ])
    .arg(holder)
    .arg(if cgroup_v2 { "v2" } else { "v1" })
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(log);
    spawn::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().context("spawn unshare for the node")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let ready = BufReader::new(stdout).read_line(&mut line);
    if ready.is_err() || line.trim() != "ready" {
        spawn::signal(child.id(), Signal::SIGKILL);
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
        bail!("the node did not come up (said {line:?}); its stderr:\n{log}");
    }
    match spawn::wait_for_child(&mut child, Duration::from_secs(5)) {
        Ok(pid1) => Ok((child, pid1)),
        Err(err) => {
            spawn::signal(child.id(), Signal::SIGKILL);
            let _ = child.wait();
            Err(err).context("find the node's PID 1")
        }
    }
}

struct Daemon {
    /// The `nsenter` process on the host side; the daemon is its only child.
    nsenter: Child,
    /// Host pid of the daemon.
    pid: u32,
}

/// A throwaway node with the daemon running inside. Dropping it (also on panic) kills the
/// daemon and the node's PID 1, which takes every process, the network namespace (links,
/// bridge, nftables) and the mount namespace (pins) with it; then it removes the cgroups under
/// the node's `cgroup_parent` and the temp dir, and prints the tail of the daemon's log
/// (libtest shows it only for a failing test).
pub struct Node {
    dir: tempfile::TempDir,
    bins: PathBuf,
    probe: PathBuf,
    holder: Child,
    pid1: u32,
    daemon: Option<Daemon>,
    daemon_args: Vec<String>,
    /// Environment for the next daemon starts (e.g. `PEAPOD_FAULT`).
    daemon_env: Vec<(String, String)>,
    /// Open files the next daemon starts inherit, at these fd numbers.
    daemon_fds: Vec<(RawFd, OwnedFd)>,
    cgroup_parent: String,
}

impl Node {
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// The node's temp dir (socket, state, config, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir().join("peapod.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("daemon.log")
    }

    /// Where the binaries under test are.
    pub fn bin_dir(&self) -> &Path {
        &self.bins
    }

    pub fn probe_path(&self) -> &Path {
        &self.probe
    }

    /// The cgroup parent for this node's pods (unique per node), as used in requests.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// Where the host reaches `rel` (e.g. `<cgroup_parent>/<id>`) of the cgroup hierarchy the
    /// node sees at `/sys/fs/cgroup` (through its PID 1's root): for a
    /// [`NodeBuilder::cgroup_v2`] node, its cgroup2 dir.
    pub fn node_cgroup(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/sys/fs/cgroup", self.pid1))
            .join(rel.trim_start_matches('/'))
    }

    /// Host pid of the node's PID 1.
    pub fn pid1(&self) -> u32 {
        self.pid1
    }

    /// Host pid of the daemon, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.pid)
    }

    /// A pod config with the harness's defaults plus this node's cgroup parent and a log
    /// directory inside the node's temp dir.
    pub fn pod_config(&self, name: &str) -> PodConfig {
        let mut config = PodConfig::new(name).cgroup_parent(&self.cgroup_parent);
        config.log_directory = self.dir().join("logs").join(name).display().to_string();
        config
    }

    pub async fn client(&self) -> Result<Client> {
        cri::connect(&self.socket()).await
    }

    /// Sets (or with `None` clears) an environment variable for the daemon's next starts.
    pub fn set_daemon_env(&mut self, key: &str, value: Option<&str>) {
        self.daemon_env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.daemon_env.push((key.to_owned(), v.to_owned()));
        }
    }

    /// Has the daemon's next starts inherit `fd` as their fd number `at` (not close-on-exec),
    /// as if whatever started the daemon had leaked it.
    pub fn pass_daemon_fd(&mut self, fd: OwnedFd, at: RawFd) {
        self.daemon_fds.retain(|(n, _)| *n != at);
        self.daemon_fds.push((at, fd));
    }

    /// Waits (at most 10 s) for a daemon that is expected to die on its own, e.g. at a fault
    /// point; fails if it is still running.
    pub async fn wait_daemon_gone(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let daemon = self.daemon.as_mut().context("no daemon was started")?;
            if daemon.nsenter.try_wait()?.is_some() {
                self.daemon = None;
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "the daemon is still running");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts `peapod serve` inside the node and waits until it answers `Version`.
    pub async fn start_daemon(&mut self) -> Result<()> {
        ensure!(self.daemon.is_none(), "the daemon is already running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        writeln!(log, "=== peapod-tests: starting the daemon")?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid1.to_string(), "-n", "-m", "-p", "--"])
            .arg(self.bins.join("peapod"))
            .arg("serve")
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--run-dir", "/run/peapod"])
            .arg("--pause-path")
            .arg(self.bins.join("peapod-pause"))
            .arg("--config")
            .arg(self.dir().join("config.toml"))
            .args(&self.daemon_args)
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        spawn::die_with_parent(&mut cmd);
        for (at, fd) in &self.daemon_fds {
            spawn::pass_fd(&mut cmd, fd.as_raw_fd(), *at);
        }
        let mut nsenter = cmd.spawn().context("spawn nsenter for peapod serve")?;
        let pid = match spawn::wait_for_child(&mut nsenter, Duration::from_secs(5)) {
            Ok(pid) => pid,
            Err(err) => {
                spawn::signal(nsenter.id(), Signal::SIGKILL);
                let _ = nsenter.wait();
                return Err(anyhow!(err).context(self.log_context("the daemon did not start")));
            }
        };
        self.daemon = Some(Daemon { nsenter, pid });
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error = anyhow!("socket {} never appeared", self.socket().display());
        while Instant::now() < deadline {
            let daemon = self.daemon.as_mut().expect("daemon started");
            if let Some(status) = daemon.nsenter.try_wait()? {
                self.daemon = None;
                bail!(
                    self.log_context(&format!("the daemon exited ({status}) before it was ready"))
                );
            }
            if self.socket().exists() {
                match self.version_once().await {
                    Ok(()) => return Ok(()),
                    Err(err) => last_error = err,
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(last_error.context(self.log_context(&format!(
            "the daemon did not answer Version within {READY_TIMEOUT:?}"
        ))))
    }

    async fn version_once(&self) -> Result<()> {
        let attempt = async {
            let mut client = self.client().await?;
            client.version(VersionRequest::default()).await?;
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .unwrap_or_else(|_| Err(anyhow!("Version timed out")))
    }

    /// Stops the daemon with SIGTERM and waits for it to exit (pods keep running).
    pub async fn stop_daemon(&mut self) -> Result<()> {
        self.end_daemon(Signal::SIGTERM).await
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub async fn kill_daemon(&mut self) -> Result<()> {
        self.end_daemon(Signal::SIGKILL).await
    }

    /// Stops the daemon with SIGTERM and starts it again with the same arguments.
    pub async fn restart_daemon(&mut self) -> Result<()> {
        self.stop_daemon().await?;
        self.start_daemon().await
    }

    async fn end_daemon(&mut self, signal: Signal) -> Result<()> {
        let mut daemon = self.daemon.take().context("the daemon is not running")?;
        if daemon.nsenter.try_wait()?.is_none() {
            spawn::signal(daemon.pid, signal);
        }
        let started = Instant::now();
        let mut waits = None;
        while daemon.nsenter.try_wait()?.is_none() {
            if waits.is_none() && started.elapsed() > SLOW_EXIT {
                let w = kernel_waits(daemon.pid);
                eprintln!(
                    "=== peapod-tests: the daemon is still there {SLOW_EXIT:?} after {signal}; \
                     its threads:\n{w}"
                );
                waits = Some(w);
            }
            if started.elapsed() > STOP_TIMEOUT {
                spawn::signal(daemon.pid, Signal::SIGKILL);
                let _ = daemon.nsenter.wait();
                bail!(self.log_context(&format!(
                    "the daemon did not exit within {STOP_TIMEOUT:?} of {signal}; after \
                     {SLOW_EXIT:?} its threads were:\n{}",
                    waits.unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_context(&self, what: &str) -> String {
        format!(
            "{what}; last lines of {}:\n{}",
            self.log_path().display(),
            self.log_tail(40)
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let holder_alive = matches!(self.holder.try_wait(), Ok(None));
        if let Some(mut daemon) = self.daemon.take() {
            if matches!(daemon.nsenter.try_wait(), Ok(None)) {
                spawn::signal(daemon.pid, Signal::SIGKILL);
            }
            if !spawn::wait_timeout(&mut daemon.nsenter, STOP_TIMEOUT) {
                spawn::signal(daemon.nsenter.id(), Signal::SIGKILL);
                let _ = daemon.nsenter.wait();
            }
        }
        // Killing PID 1 kills the whole pid namespace; `unshare` exits once every process of
        // it is gone, and with the last process go the net and mount namespaces.
        if holder_alive {
            spawn::signal(self.pid1, Signal::SIGKILL);
        }
        if !spawn::wait_timeout(&mut self.holder, STOP_TIMEOUT) {
            spawn::signal(self.holder.id(), Signal::SIGKILL);
            let _ = self.holder.wait();
        }
        let left = cgroup::remove(&self.cgroup_parent);
        if !left.is_empty() {
            eprintln!("peapod-tests: could not remove cgroups {left:?}");
        }
        if std::thread::panicking() {
            eprintln!(
                "peapod-tests: the test failed; node dir {}",
                self.dir().display()
            );
        }
        eprintln!(
            "---- last lines of the daemon log ({}) ----\n{}\n----",
            self.log_path().display(),
            self.log_tail(60)
        );
        if std::env::var_os("PEAPOD_TEST_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("peapod-tests: keeping {}", self.dir().display());
        }
    }
}

/// What each thread of `pid` waits on in the kernel: its state, `wchan` and kernel stack.
fn kernel_waits(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(/proc/{pid}/task is gone)");
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = read("stat");
        // The state is the field after the parenthesised command name.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?")
            .to_owned();
        out.push_str(&format!(
            "thread {} ({}) state {state} wchan {}\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan"),
            read("stack")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_waits_names_each_thread_and_its_state() {
        let w = super::kernel_waits(std::process::id());
        let main = format!("thread {} (", std::process::id());
        assert!(w.contains(&main) && w.contains(" state "), "{w}");
        assert!(super::kernel_waits(u32::MAX).contains("is gone"));
    }
}
