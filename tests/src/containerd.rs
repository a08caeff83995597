//! containerd inside a throwaway node: Debian's `containerd`, its own config, root (in the
//! node's temp dir), state and sockets (in the node's private `/run`), with peapod's shim on
//! its PATH (a link to the `containerd-shim-peapod-v2` binary under test). Tests
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
/// The pod subnet of [`Containerd::start_cri`]'s peapod-cni network.
pub const CRI_SUBNET: &str = "10.99.0.0/24";
/// How long containerd may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Containerd {
    /// `None` only in `drop`, which ends the node before it removes the cgroups.
    node: Option<Node>,
    namespace: String,
    /// Where the tasks' cgroups go.
    cgroup_parent: String,
    config: PathBuf,
    daemon: Option<Background>,
    _images: TestImages,
}

impl Containerd {
    /// A node running containerd (without its CRI plugin), with the busybox test image
    /// imported, for `ctr`.
    pub async fn start() -> Result<Containerd> {
        let namespace = format!("peapod-test-{}", crate::random_hex(4));
        let cgroup_parent = format!("/{namespace}");
        Self::start_with(namespace, cgroup_parent, false, false).await
    }

    /// Like [`Containerd::start`], in a node that sees only the host's cgroup2 hierarchy
    /// (`NodeBuilder::cgroup_v2`).
    pub async fn start_v2() -> Result<Containerd> {
        let namespace = format!("peapod-test-{}", crate::random_hex(4));
        let cgroup_parent = format!("/{namespace}");
        Self::start_with(namespace, cgroup_parent, false, true).await
    }

    /// A node running containerd with its CRI plugin on the node's CRI socket (where
    /// `peapod serve` would be, so the node's CRI helpers drive containerd), `peapod` as the
    /// default runtime, `peapod-cni` as the pod network (subnet [`CRI_SUBNET`], and the
    /// standard `loopback` plugin containerd always runs too), and the test's pause image as
    /// the sandbox image. The node's pod configs' cgroup parent holds every task.
    pub async fn start_cri() -> Result<Containerd> {
        Self::start_with("k8s.io".into(), String::new(), true, false).await
    }

    async fn start_with(
        namespace: String,
        cgroup_parent: String,
        cri: bool,
        v2: bool,
    ) -> Result<Containerd> {
        let mut builder = Node::builder().without_daemon();
        if v2 {
            builder = builder.cgroup_v2();
        }
        let node = builder.start().await?;
        let cgroup_parent = if cri {
            node.cgroup_parent().to_owned()
        } else {
            cgroup_parent
        };
        let dir = node.dir().to_owned();
        let shim_bin = dir.join("shim-bin");
        std::fs::create_dir_all(&shim_bin)?;
        // A link, as an operator would install it; the shim finds `peapod` beside its
        // real path.
        std::os::unix::fs::symlink(
            node.bin_dir().join("containerd-shim-peapod-v2"),
            shim_bin.join("containerd-shim-peapod-v2"),
        )?;
        let mut config = format!(
            "# written by the peapod test harness\nversion = 2\nroot = {:?}\n\
             state = \"/run/containerd\"\n",
            dir.join("containerd-root").display().to_string(),
        );
        if cri {
            config.push_str(&cri_config(&node)?);
        } else {
            config.push_str("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n");
        }
        config.push_str(&format!(
            "[grpc]\n  address = {:?}\n",
            node.socket().display().to_string()
        ));
        let config_path = dir.join("containerd.toml");
        std::fs::write(&config_path, config)?;
        let images = if cri {
            TestImages::build_with_pause(&node.bin_dir().join("peapod-pause"))?
        } else {
            TestImages::build()?
        };
        let mut c = Containerd {
            node: Some(node),
            namespace,
            cgroup_parent,
            config: config_path,
            daemon: None,
            _images: images,
        };
        c.start_daemon().await?;
        let mut archives = vec![("busybox.oci.tar", "peapod.test/busybox")];
        if cri {
            archives.push(("pause.oci.tar", "peapod.test/pause"));
        }
        for (archive, name) in archives {
            let path = c._images.path(archive);
            let path = path.to_str().context("image path is not UTF-8")?;
            c.ctr_ok(&["image", "import", "--base-name", name, path])
                .await?;
        }
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
        let socket = self.node().socket().display().to_string();
        let mut all = vec!["ctr", "--address", &socket, "--namespace", &self.namespace];
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
        cgroup::existing(&self.cgroup_parent)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The node's end kills every process; the cgroups are the host's to clean.
        self.daemon.take();
        drop(self.node.take());
        let left = cgroup::remove(&self.cgroup_parent);
        if !left.is_empty() {
            eprintln!("peapod-tests: could not remove cgroups {left:?}");
        }
    }
}

/// The CRI plugin's part of the config, and the CNI dirs it names: `peapod` (a link to
/// `peapod-cni`) and `loopback` (Debian's containernetworking-plugins) in the bin dir, one
/// conflist.
fn cri_config(node: &Node) -> Result<String> {
    let dir = node.dir();
    let (bin, conf, data) = (
        dir.join("cni-bin"),
        dir.join("cni-conf"),
        dir.join("cni-data"),
    );
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&conf)?;
    std::os::unix::fs::symlink(node.bin_dir().join("peapod-cni"), bin.join("peapod"))?;
    std::os::unix::fs::symlink("/usr/lib/cni/loopback", bin.join("loopback"))?;
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [{
            "type": "peapod",
            "subnet": CRI_SUBNET,
            "dataDir": data,
            "capabilities": { "portMappings": true },
        }],
    });
    std::fs::write(conf.join("10-peapod.conflist"), conflist.to_string())?;
    let cri = r#"[plugins."io.containerd.grpc.v1.cri"]"#;
    Ok(format!(
        "{cri}\n  sandbox_image = \"peapod.test/pause:latest\"\n  disable_apparmor = true\n\
         {cri_c}]\n  default_runtime_name = \"peapod\"\n\
         {cri_c}.runtimes.peapod]\n  runtime_type = \"io.containerd.peapod.v2\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = {:?}\n  conf_dir = {:?}\n",
        bin.display().to_string(),
        conf.display().to_string(),
        cri_c = r#"[plugins."io.containerd.grpc.v1.cri".containerd"#,
    ))
}
