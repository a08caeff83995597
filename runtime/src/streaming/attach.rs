//! An attach session: the client's streams joined to the container's stdio, which its
//! monitor holds (the container keeps running, and its log keeps every line, whatever the
//! client does). The error stream says how the attach ended.

use super::channels::{Outcome, Streams, finish};
use super::tokens::AttachRequest;
use crate::container::Containers;
use crate::container::attach::AttachIo;

pub async fn run(containers: &Containers, req: &AttachRequest, streams: Streams) {
    let Streams {
        version,
        stdin,
        stdout,
        stderr,
        error,
        resize,
        gone,
    } = streams;
    let resize = resize.map(|mut sizes| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                if tx.send((size.width, size.height)).await.is_err() {
                    return;
                }
            }
        });
        rx
    });
    let io = AttachIo {
        stdin: stdin.map(|r| r as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        stdout: stdout.map(|w| w as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
        stderr: stderr.map(|w| w as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
        resize,
    };
    let mut gone = gone;
    let outcome = tokio::select! {
        r = containers.attach(&req.container_id, io) => match r {
            Ok(()) => Outcome::Exited(0),
            Err(e) => Outcome::Failed(e.to_string()),
        },
        () = &mut gone => return,
    };
    finish(error, version, &outcome).await;
    drop(gone);
}
