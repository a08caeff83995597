//! Attach on the daemon's side: a client's streams joined to the container's stdio through
//! its monitor's attach socket (framing in `monitor::attach`). The monitor holds the stdio,
//! so an attach works the same before and after a daemon restart.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::error::ContainerError;
use super::model::ContainerState;
use super::{Containers, Result};
use crate::monitor::attach::{
    EXIT, HELLO_STDIN, MAX_FRAME, RESIZE, STDERR, STDIN, STDIN_CLOSE, STDOUT, frame, frames,
    socket_path,
};

pub struct AttachIo {
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Terminal size changes: (columns, rows).
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

impl Containers {
    /// The checks of the CRI Attach RPC, before a URL is handed out.
    pub fn check_attach(&self, id: &str, stdin: bool, tty: bool) -> Result<()> {
        let rec = self.status(id)?;
        if rec.state != ContainerState::Running {
            return Err(ContainerError::WrongState {
                id: rec.id,
                state: rec.state,
                op: "attach",
            });
        }
        let mode = rec.spec.stdio;
        if stdin && !mode.stdin {
            return Err(ContainerError::invalid(
                "stdin",
                format!("container {} was not created with stdin", rec.id),
            ));
        }
        if tty != mode.tty {
            return Err(ContainerError::invalid(
                "tty",
                format!(
                    "container {} was created with tty {}; attach must ask the same",
                    rec.id, mode.tty
                ),
            ));
        }
        Ok(())
    }

    /// Attaches until the container exits or the client's streams end. With stdin, the end
    /// of the client's stdin is the container's end of input if it was created `stdin_once`.
    pub async fn attach(&self, id: &str, io: AttachIo) -> Result<()> {
        let rec = self.status(id)?;
        if rec.state != ContainerState::Running {
            return Err(ContainerError::WrongState {
                id: rec.id,
                state: rec.state,
                op: "attach",
            });
        }
        let path = socket_path(&self.socket(&rec.id));
        let fail = |source| ContainerError::Attach {
            id: rec.id.clone(),
            source,
        };
        let sock = UnixStream::connect(&path).await.map_err(fail)?;
        let (mut r, mut w) = sock.into_split();
        let AttachIo {
            stdin,
            mut stdout,
            mut stderr,
            resize,
        } = io;
        // Input: a hello if stdin comes, then stdin and resizes as frames, in order.
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        if let Some(mut input) = stdin {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut hello = Vec::new();
                frame(HELLO_STDIN, &[], &mut hello);
                if tx.send(hello).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; MAX_FRAME];
                loop {
                    let mut out = Vec::new();
                    match input.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            frame(STDIN_CLOSE, &[], &mut out);
                            let _ = tx.send(out).await;
                            return;
                        }
                        Ok(n) => frame(STDIN, &buf[..n], &mut out),
                    }
                    if tx.send(out).await.is_err() {
                        return;
                    }
                }
            });
        }
        if let Some(mut sizes) = resize {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some((cols, rows)) = sizes.recv().await {
                    let mut p = cols.to_be_bytes().to_vec();
                    p.extend_from_slice(&rows.to_be_bytes());
                    let mut out = Vec::new();
                    frame(RESIZE, &p, &mut out);
                    if tx.send(out).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let input = async move {
            while let Some(bytes) = rx.recv().await {
                if w.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            // Every input ended: the output still runs until the container exits.
            std::future::pending::<()>().await
        };
        let output = async {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                let n = r.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
                let got = frames(&mut buf).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "an oversized frame")
                })?;
                for (kind, payload) in got {
                    let sink = match kind {
                        STDOUT => stdout.as_mut(),
                        STDERR => stderr.as_mut(),
                        EXIT => return Ok(()),
                        _ => None,
                    };
                    if let Some(s) = sink
                        && (s.write_all(&payload).await.is_err() || s.flush().await.is_err())
                    {
                        // The client stopped reading this stream; the others go on.
                        if kind == STDOUT {
                            stdout = None;
                        } else {
                            stderr = None;
                        }
                    }
                }
            }
        };
        let r: std::io::Result<()> = tokio::select! {
            r = output => r,
            () = input => Ok(()),
        };
        for s in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
            let _ = s.shutdown().await;
        }
        r.map_err(fail)
    }
}
