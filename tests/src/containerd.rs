//! containerd inside a throwaway node: Debian's `containerd`, its own config, root (in the
//! node's temp dir), state and sockets (in the node's private `/run`), with peapod's shim on
//! its PATH as `containerd-shim-peapod-v2` (a link to the `peapod` binary under test). Tests
//! drive it with `ctr`, in a containerd namespace of their own, whose name is also the
//! cgroup parent of every task (`/<namespace>/<id>`): what a test leaves there is removed
//! when the value goes.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::images::TestImages;
use crate::node::Node;
use crate::{Background, cgroup};

/// The image every shim test runs, imported at start.
pub const BUSYBOX: &str = "peapod.test/busybox:latest";
/// How long containerd may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Containerd {
    /// `None` only in `drop`, which ends the node before it removes the cgroups.
    node: Option<Node>,
    namespace: String,
    config: PathBuf,
    daemon: Option<Background>,
    _images: TestImages,
}

impl Containerd {
    /// A node running containerd, with the busybox test image imported.
    pub async fn start() -> Result<Containerd> {
        let node = Node::builder().without_daemon().start().await?;
        let dir = node.dir().to_owned();
        let shim_bin = dir.join("shim-bin");
        std::fs::create_dir_all(&shim_bin)?;
        std::os::unix::fs::symlink(
            node.bin_dir().join("peapod"),
            shim_bin.join("containerd-shim-peapod-v2"),
        )?;
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "# written by the peapod test harness\nversion = 2\nroot = {:?}\n\
                 state = \"/run/containerd\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"/run/containerd/containerd.sock\"\n",
                dir.join("containerd-root").display().to_string(),
            ),
        )?;
        let mut c = Containerd {
            node: Some(node),
            namespace: format!("peapod-test-{}", crate::random_hex(4)),
            config,
            daemon: None,
            _images: TestImages::build()?,
        };
        c.start_daemon().await?;
        let archive = c._images.path("busybox.oci.tar");
        let archive = archive.to_str().context("image path is not UTF-8")?;
        c.ctr_ok(&[
            "image",
            "import",
            "--base-name",
            "peapod.test/busybox",
            archive,
        ])
        .await?;
        Ok(c)
    }

    /// Starts containerd (again) and waits until it answers.
    pub async fn start_daemon(&mut self) -> Result<()> {
        ensure!(self.daemon.is_none(), "containerd runs already");
        let path = format!(
            "PATH={}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.node().dir().join("shim-bin").display()
        );
        let log = self.log_path().display().to_string();
        let config = self.config.display().to_string();
        let script = format!("exec env {path} containerd --config {config} >>{log} 2>&1");
        self.daemon = Some(self.node().spawn(&["sh", "-c", &script])?);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.ctr(&["version"]).await?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within {READY_TIMEOUT:?}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills containerd (SIGKILL), as a crash would; its shims and tasks live on.
    pub async fn kill_daemon(&mut self) -> Result<()> {
        self.daemon.take().context("containerd is not running")?;
        self.node()
            .exec(&["pkill", "-KILL", "-x", "containerd"])
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .node()
            .exec_output(&["pgrep", "-x", "containerd"])
            .await?
            .status
            .success()
        {
            ensure!(Instant::now() < deadline, "containerd survived SIGKILL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("the node lives until drop")
    }

    /// The containerd namespace of this test, and the cgroup parent of its tasks.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn log_path(&self) -> PathBuf {
        self.node().dir().join("containerd.log")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!("--- containerd.log ---\n{}", lines[from..].join("\n"))
    }

    /// Runs `ctr` in the node, in this test's namespace, whatever its exit status.
    pub async fn ctr(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec![
            "ctr",
            "--address",
            "/run/containerd/containerd.sock",
            "--namespace",
            &self.namespace,
        ];
        all.extend_from_slice(args);
        self.node().exec_output(&all).await
    }

    /// Runs `ctr`; fails unless it exits 0. Returns its stdout.
    pub async fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args).await?;
        ensure!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The cgroup dirs of this test's tasks that are still there.
    pub fn cgroups_left(&self) -> Vec<PathBuf> {
        cgroup::existing(&format!("/{}", self.namespace))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The node's end kills every process; the cgroups are the host's to clean.
        self.daemon.take();
        drop(self.node.take());
        let left = cgroup::remove(&format!("/{}", self.namespace));
        if !left.is_empty() {
            eprintln!("peapod-tests: could not remove cgroups {left:?}");
        }
    }
}
