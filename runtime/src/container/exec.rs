//! ExecSync (through `peapod enter`) and ReopenContainerLog (through the monitor's control
//! socket).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::error::ContainerError;
use super::model::ContainerState;
use super::{Containers, Result};

/// CRI caps ExecSync output at 16 MiB per stream.
const MAX_OUTPUT: u64 = 16 << 20;

pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

impl Containers {
    /// `peapod enter` for `cmd` in running container `id` (the security context, namespaces
    /// and cgroup of its process), stdio left to the caller; `tty`: the command gets the
    /// terminal on its stdin as its controlling terminal. Killed when dropped.
    pub fn enter_command(
        &self,
        id: &str,
        cmd: &[String],
        tty: bool,
    ) -> Result<(String, i32, tokio::process::Command)> {
        let rec = self.status(id)?;
        let (ContainerState::Running, Some(r)) = (rec.state, rec.running) else {
            return Err(ContainerError::WrongState {
                id: rec.id,
                state: rec.state,
                op: "exec",
            });
        };
        let mut c = tokio::process::Command::new(self.exe.program());
        c.arg0(self.exe.path()).arg("enter");
        if tty {
            c.arg("--tty");
        }
        c.arg(self.dir(&rec.id))
            .arg(r.init.pid.to_string())
            .arg(r.init.start_time.to_string())
            .args(cmd)
            .kill_on_drop(true);
        Ok((rec.id, r.init.pid, c))
    }

    /// ExecSync: `cmd` in the running container; `timeout` seconds (0: none), then killed.
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<ExecOutput> {
        super::validate::exec_sync(&cmd, timeout)?;
        let (id, _, mut command) = self.enter_command(id, &cmd, false)?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ContainerError::Exec {
                id: id.clone(),
                source,
            })?;
        let mut out = child.stdout.take().expect("piped").take(MAX_OUTPUT);
        let mut err = child.stderr.take().expect("piped").take(MAX_OUTPUT);
        let run = async {
            let (mut o, mut e) = (Vec::new(), Vec::new());
            let (ro, re) = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
            ro.and(re)?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((o, e, status))
        };
        let done = if timeout > 0 {
            match tokio::time::timeout(Duration::from_secs(timeout as u64), run).await {
                Ok(r) => r,
                // Dropping `run` drops the child: SIGKILL (kill_on_drop), and the command,
                // whose parent-death signal is SIGKILL, goes with it.
                Err(_) => {
                    return Err(ContainerError::ExecTimeout { id, secs: timeout });
                }
            }
        } else {
            run.await
        };
        let (stdout, stderr, status) =
            done.map_err(|source| ContainerError::Exec { id, source })?;
        let exit_code = exit_code(status);
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        })
    }

    /// ReopenContainerLog: the monitor reopens the log file (after the kubelet rotated it).
    pub fn reopen_log(&self, id: &str) -> Result<()> {
        let rec = self.status(id)?;
        if rec.state != ContainerState::Running {
            return Err(ContainerError::WrongState {
                id: rec.id,
                state: rec.state,
                op: "reopen the log",
            });
        }
        let fail = |reason: String| ContainerError::Reopen {
            id: rec.id.clone(),
            reason,
        };
        let mut s = UnixStream::connect(self.socket(&rec.id))
            .map_err(|e| fail(format!("cannot reach the monitor: {e}")))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .and_then(|()| s.write_all(b"reopen\n"))
            .map_err(|e| fail(e.to_string()))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .map_err(|e| fail(e.to_string()))?;
        match answer.trim() {
            "ok" => Ok(()),
            other => Err(fail(other.trim_start_matches("error ").to_owned())),
        }
    }
}

/// A command's exit code as a shell reports it: 128 + the signal that killed it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}
