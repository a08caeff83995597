//! An exec session: the command runs through `peapod enter`, as ExecSync's does (the
//! container's namespaces, cgroup and security context), with the client's streams as its
//! stdio — pipes, or a pty when a TTY was asked — and its exit code on the error stream. When
//! the client goes away the helper is killed, and the command with it (its parent-death
//! signal).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::channels::{Outcome, Streams, TermSize, finish};
use super::pty::Pty;
use super::tokens::ExecRequest;
use crate::container::Containers;
use crate::container::exec::exit_code;

/// After the command exits, how long its output may still drain (a background process that
/// keeps the pipe open does not hold the session forever).
const DRAIN: Duration = Duration::from_secs(2);

pub async fn run(containers: &Containers, req: &ExecRequest, streams: Streams) {
    let Streams {
        version,
        stdin,
        stdout,
        stderr,
        error,
        resize,
        gone,
    } = streams;
    let io = Io {
        stdin,
        stdout,
        stderr,
        resize,
    };
    // `gone` also holds the connection open: it lives until the outcome is written.
    let mut gone = gone;
    let outcome = tokio::select! {
        o = session(containers, req, io) => o,
        // Dropping the session drops the child: SIGKILL.
        () = &mut gone => {
            tracing::debug!(container = %req.container_id, "exec: the client went away; killed");
            return;
        }
    };
    finish(error, version, &outcome).await;
    drop(gone);
}

struct Io {
    stdin: Option<super::channels::Reader>,
    stdout: Option<super::channels::Writer>,
    stderr: Option<super::channels::Writer>,
    resize: Option<tokio::sync::mpsc::Receiver<TermSize>>,
}

async fn session(containers: &Containers, req: &ExecRequest, io: Io) -> Outcome {
    match spawn_and_wait(containers, req, io).await {
        Ok(code) => Outcome::Exited(code),
        Err(msg) => Outcome::Failed(msg),
    }
}

async fn spawn_and_wait(containers: &Containers, req: &ExecRequest, io: Io) -> Result<i32, String> {
    let (_, pid, mut cmd) = containers
        .enter_command(&req.container_id, &req.cmd, req.tty)
        .map_err(|e| e.to_string())?;
    let Io {
        stdin,
        stdout,
        stderr,
        resize,
    } = io;
    let mut outputs = Vec::new();
    let mut child;
    if req.tty {
        let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
        let pty = Pty::open_in(&root).map_err(|e| format!("cannot open a terminal: {e}"))?;
        let slave = |_: ()| {
            pty.slave
                .try_clone()
                .map(Stdio::from)
                .map_err(|e| format!("cannot open a terminal: {e}"))
        };
        cmd.stdin(slave(())?).stdout(slave(())?).stderr(slave(())?);
        if let Some(mut r) = resize {
            // Before the command starts, the first size is applied (if it came already).
            if let Ok(size) = r.try_recv() {
                let _ = pty.master.resize(size.width, size.height);
            }
            let m = pty.master.clone();
            tokio::spawn(async move {
                while let Some(size) = r.recv().await {
                    let _ = m.resize(size.width, size.height);
                }
            });
        }
        child = cmd
            .spawn()
            .map_err(|e| format!("cannot run the command: {e}"))?;
        drop(cmd);
        drop(pty.slave);
        if let Some(i) = stdin {
            let m = pty.master.clone();
            tokio::spawn(async move { pump(i, Some(m), false).await });
        }
        outputs.push(tokio::spawn(pump(pty.master, stdout, true)));
    } else {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if stdout.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if stderr.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        child = cmd
            .spawn()
            .map_err(|e| format!("cannot run the command: {e}"))?;
        drop(cmd);
        if let (Some(i), Some(w)) = (stdin, child.stdin.take()) {
            tokio::spawn(async move { pump(i, Some(w), true).await });
        }
        if let Some(o) = child.stdout.take() {
            outputs.push(tokio::spawn(pump(o, stdout, true)));
        }
        if let Some(e) = child.stderr.take() {
            outputs.push(tokio::spawn(pump(e, stderr, true)));
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("cannot wait for the command: {e}"))?;
    let drained = async {
        for o in outputs {
            let _ = o.await;
        }
    };
    let _ = tokio::time::timeout(DRAIN, drained).await;
    Ok(exit_code(status))
}

/// Copies `r` to `w` (dropping the bytes if there is no `w`), flushing after every read so
/// that interactive output is not held back; at the end, shuts `w` down if `close`.
pub async fn pump<R, W>(mut r: R, mut w: Option<W>, close: bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(out) = w.as_mut()
            && (out.write_all(&buf[..n]).await.is_err() || out.flush().await.is_err())
        {
            // The reader is gone: keep draining so the command does not block on a full pipe.
            w = None;
        }
    }
    if close && let Some(mut out) = w {
        let _ = out.shutdown().await;
    }
}
