//! Running `peapod-cni` inside a node as a container runtime does: the `CNI_*` environment
//! (and nothing else of the test's), the configuration on stdin, JSON on stdout.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::node::Node;

/// What one plugin run printed.
#[derive(Debug)]
pub struct CniOutput {
    pub status: ExitStatus,
    /// Stdout as JSON; `Null` when the plugin printed nothing.
    pub stdout: Value,
    pub stderr: String,
}

impl CniOutput {
    /// The CNI error code, when the plugin failed with an error JSON.
    pub fn code(&self) -> Option<u64> {
        if self.status.success() {
            return None;
        }
        self.stdout["code"].as_u64()
    }
}

impl Node {
    /// Runs `peapod-cni` in the node with `env` (e.g. `CNI_COMMAND`) and `stdin`.
    pub async fn cni(&self, env: &[(&str, &str)], stdin: &[u8]) -> Result<CniOutput> {
        let bin = self.bin_dir().join("peapod-cni");
        let bin = bin.to_str().context("binary path is not UTF-8")?;
        let mut cmd = self.command(&["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
        for (key, value) in env {
            cmd.arg(format!("{key}={value}"));
        }
        cmd.arg(bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let run = async {
            let mut child = cmd.spawn().context("spawn peapod-cni in the node")?;
            let mut input = child.stdin.take().expect("stdin is piped");
            // The plugin may stop reading early (a too large configuration).
            let _ = input.write_all(stdin).await;
            drop(input);
            child
                .wait_with_output()
                .await
                .context("wait for peapod-cni")
        };
        let output = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .context("peapod-cni took longer than 60s")??;
        let text = String::from_utf8_lossy(&output.stdout);
        let stdout = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("peapod-cni printed no JSON: {text:?}"))?
        };
        Ok(CniOutput {
            status: output.status,
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}
