//! A real OCI registry (Debian's `docker-registry`, the CNCF distribution) inside a node: it
//! listens on the node's own loopback, keeps its storage in the node's temp dir, and dies with
//! the node. Test images go in with `skopeo`, run inside the node too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::exec::Background;
use crate::node::Node;

/// A registry running in a node; killed with it (or when this is dropped).
pub struct Registry {
    pub addr: String,
    dir: PathBuf,
    _process: Background,
}

impl Registry {
    /// Where the registry keeps blob `digest` (`sha256:…`): tamper with it to corrupt it.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Node {
    /// Starts a registry on `addr` (e.g. `127.0.0.1:5000`) inside the node, plain HTTP, with
    /// basic auth for `user:password` when given, and waits until it accepts connections.
    pub async fn start_registry(
        &self,
        addr: &str,
        basic: Option<(&str, &str)>,
    ) -> Result<Registry> {
        let dir = self
            .dir()
            .join(format!("registry-{}", addr.replace([':', '.'], "-")));
        std::fs::create_dir_all(&dir)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        if let Some((user, password)) = basic {
            let htpasswd = dir.join("htpasswd");
            let out = std::process::Command::new("htpasswd")
                .args(["-B", "-b", "-c"])
                .arg(&htpasswd)
                .args([user, password])
                .output()
                .context("run htpasswd (apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: peapod-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let path = config_path.display().to_string();
        let process = self.spawn(&["docker-registry", "serve", &path])?;
        let (host, port) = addr.rsplit_once(':').context("addr is host:port")?;
        let probe = format!("exec 3<>/dev/tcp/{host}/{port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self
                .exec_output(&["bash", "-c", &probe])
                .await?
                .status
                .success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the registry on {addr} did not come up within 15s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Registry {
            addr: addr.to_owned(),
            dir,
            _process: process,
        })
    }

    /// `skopeo copy` of `ref_name` in the OCI layout `layout` to `dest` (`host:port/repo:tag`,
    /// plain HTTP), inside the node; `--all` for an index with every platform.
    pub async fn push_image(
        &self,
        layout: &Path,
        ref_name: &str,
        dest: &str,
        creds: Option<&str>,
    ) -> Result<()> {
        let src = format!("oci:{}:{ref_name}", layout.display());
        let dest = format!("docker://{dest}");
        let mut args = vec![
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ];
        if let Some(c) = creds {
            args.extend(["--dest-creds", c]);
        }
        args.extend([src.as_str(), dest.as_str()]);
        self.exec(&args).await.map(drop)
    }
}
