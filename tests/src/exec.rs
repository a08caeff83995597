//! Running commands inside a node and inside its pods, in the foreground or the background.

use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::node::Node;

/// How long a command run inside the node may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

impl Node {
    pub(crate) fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.args(["-t", &self.pid1().to_string(), "-n", "-m", "-p", "--"])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs a command inside the node and returns its output, whatever its exit status.
    pub async fn exec_output(&self, args: &[&str]) -> Result<Output> {
        let run = self.command(args).output();
        tokio::time::timeout(EXEC_TIMEOUT, run)
            .await
            .with_context(|| format!("{args:?} in the node took longer than {EXEC_TIMEOUT:?}"))?
            .with_context(|| format!("run {args:?} in the node"))
    }

    /// Runs a command inside the node; fails unless it exits 0. Returns its stdout.
    pub async fn exec(&self, args: &[&str]) -> Result<String> {
        let output = self.exec_output(args).await?;
        checked(args, output)
    }

    fn pod_args<'a>(netns: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["ip", "netns", "exec", netns];
        all.extend_from_slice(args);
        all
    }

    /// Runs a command in pod `id`'s network namespace (`ip netns exec peapod-<id>`).
    pub async fn exec_in_pod(&self, id: &str, args: &[&str]) -> Result<String> {
        let netns = format!("peapod-{id}");
        self.exec(&Self::pod_args(&netns, args)).await
    }

    /// Like [`Node::exec_in_pod`], whatever the exit status.
    pub async fn exec_in_pod_output(&self, id: &str, args: &[&str]) -> Result<Output> {
        let netns = format!("peapod-{id}");
        self.exec_output(&Self::pod_args(&netns, args)).await
    }

    /// Starts a command inside the node in the background.
    pub fn spawn(&self, args: &[&str]) -> Result<Background> {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {args:?} in the node"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(Background {
            what: format!("{args:?}"),
            child,
            stdout: tokio::io::BufReader::new(stdout),
        })
    }

    /// Starts a probe listener in the node's own network namespace and waits until it listens.
    pub async fn listen_in_node(&self, addr: &str, count: u32) -> Result<Background> {
        let probe = self.probe_path().display().to_string();
        let count = count.to_string();
        let mut listener = self.spawn(&[&probe, "listen", addr, "--count", &count])?;
        listener.wait_for_line("listening").await?;
        Ok(listener)
    }

    /// Starts a probe listener in pod `id`'s network and UTS namespaces (so it greets with the
    /// pod's hostname) and waits until it listens.
    pub async fn listen_in_pod(&self, id: &str, addr: &str, count: u32) -> Result<Background> {
        self.probe_in_pod(id, "listen", addr, count).await
    }

    /// Like [`Node::listen_in_pod`], over UDP: answers `count` datagrams.
    pub async fn listen_udp_in_pod(&self, id: &str, addr: &str, count: u32) -> Result<Background> {
        self.probe_in_pod(id, "udp-listen", addr, count).await
    }

    /// Starts the probe's `verb` (a listener: `listen`, `whoami`, `udp-listen`) in pod
    /// `id`'s network and UTS namespaces and waits until it listens.
    pub async fn probe_in_pod(
        &self,
        id: &str,
        verb: &str,
        addr: &str,
        count: u32,
    ) -> Result<Background> {
        let pid = self.pod_info(id).await?.pause_pid()?.to_string();
        let probe = self.probe_path().display().to_string();
        let count = count.to_string();
        let args = [
            "nsenter", "-t", &pid, "-n", "-u", "--", &probe, verb, addr, "--count", &count,
        ];
        let mut listener = self.spawn(&args)?;
        listener.wait_for_line("listening").await?;
        Ok(listener)
    }

    /// Connects from the node's own network namespace to `addr` with the probe's `verb`
    /// (`connect` for TCP, `udp-ask` for UDP); returns what the peer said.
    pub async fn ask_from_node(&self, verb: &str, addr: &str) -> Result<String> {
        let probe = self.probe_path().display().to_string();
        self.exec(&[probe.as_str(), verb, addr, "--timeout-ms", "3000"])
            .await
            .with_context(|| format!("{verb} from the node to {addr}"))
    }

    /// Connects from pod `id`'s network namespace to `addr`; returns what the peer said.
    pub async fn connect_from_pod(&self, id: &str, addr: &str) -> Result<String> {
        let probe = self.probe_path().display().to_string();
        let args = [probe.as_str(), "connect", addr, "--timeout-ms", "3000"];
        self.exec_in_pod(id, &args)
            .await
            .with_context(|| format!("connect from pod {id} to {addr}"))
    }
}

/// Stdout of `output`, or an error naming the command, its status and its stderr.
fn checked(args: &[&str], output: Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{args:?} failed ({}):\nstderr: {}\nstdout: {stdout}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(stdout)
}

/// A command running inside the node in the background.
pub struct Background {
    what: String,
    child: tokio::process::Child,
    stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl Background {
    /// Reads stdout until a line equal to `expected` (at most 10 s).
    pub async fn wait_for_line(&mut self, expected: &str) -> Result<()> {
        let read = async {
            let mut line = String::new();
            loop {
                line.clear();
                if self.stdout.read_line(&mut line).await? == 0 {
                    let mut stderr = String::new();
                    if let Some(mut err) = self.child.stderr.take() {
                        let _ = err.read_to_string(&mut stderr).await;
                    }
                    bail!("{} ended before saying {expected:?}: {stderr}", self.what);
                }
                if line.trim_end() == expected {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .with_context(|| format!("{} did not say {expected:?} within 10s", self.what))?
    }

    /// Waits (at most 30 s) for the command to exit, whatever its status, and returns the
    /// rest of its stdout.
    pub async fn finish_whatever(mut self) -> Result<String> {
        let run = async {
            let mut rest = String::new();
            self.stdout.read_to_string(&mut rest).await?;
            self.child.wait().await?;
            Ok(rest)
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .with_context(|| format!("{} did not finish within 30s", self.what))?
    }

    /// Waits (at most 30 s) for the command to exit 0 and returns the rest of its stdout.
    pub async fn finish(mut self) -> Result<String> {
        let run = async {
            let mut rest = String::new();
            self.stdout.read_to_string(&mut rest).await?;
            let mut stderr = String::new();
            if let Some(mut err) = self.child.stderr.take() {
                err.read_to_string(&mut stderr).await?;
            }
            let status = self.child.wait().await?;
            ensure!(
                status.success(),
                "{} failed ({status}): {stderr}",
                self.what
            );
            Ok(rest)
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .with_context(|| format!("{} did not finish within 30s", self.what))?
    }
}
