//! Sessions over SPDY/3.1: the client opens one stream per channel, each named by its
//! `streamtype` header. Exec and attach wait for the streams the request implies (error;
//! stdin, stdout, stderr as asked; resize with a TTY from v3), then run. Port-forward pairs
//! an `error` and a `data` stream by their `requestid` and `port` headers, one pod
//! connection per pair, as many pairs as the client opens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::channels::{Reader, Streams, Version, Writer, resize_reader};
use super::portforward::{Target, check_port, splice};
use super::spdy_conn::{Incoming, SpdyConn, SpdyStream};
use super::tokens::PortForwardRequest;
use super::ws::Want;

/// How long a client may take to open the streams of a session (the kubelet's default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Port-forward pairs waiting for their second half, at most.
const MAX_HALF_PAIRS: usize = 256;

/// Waits for the exec/attach streams; `None` if the client did not open them in time (the
/// connection is then closed).
pub async fn exec_streams(
    conn: SpdyConn,
    mut incoming: Incoming,
    version: Version,
    want: Want,
) -> Option<Streams> {
    let expected = 1
        + usize::from(want.stdin)
        + usize::from(want.stdout)
        + usize::from(want.stderr && !want.tty)
        + usize::from(want.tty && version >= Version::V3);
    let mut got: HashMap<&'static str, SpdyStream> = HashMap::new();
    let wait = async {
        while got.len() < expected {
            let s = incoming.accept().await?;
            let kind = match s.headers().get("streamtype") {
                Some("error") => "error",
                Some("stdin") if want.stdin => "stdin",
                Some("stdout") if want.stdout => "stdout",
                Some("stderr") if want.stderr && !want.tty => "stderr",
                Some("resize") if want.tty => "resize",
                other => {
                    debug!(streamtype = ?other, "spdy: a stream this session did not ask for");
                    s.reset();
                    continue;
                }
            };
            if got.insert(kind, s).is_some() {
                debug!(
                    kind,
                    "spdy: a second stream of one type; the first is dropped"
                );
            }
        }
        Some(())
    };
    if tokio::time::timeout(STREAM_CREATION_TIMEOUT, wait)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        debug!("spdy: the client did not open its streams");
        return None;
    }
    // Streams the peer opens later are refused; the connection lives as long as `gone`.
    tokio::spawn(async move {
        while let Some(s) = incoming.accept().await {
            s.reset();
        }
    });
    let conn = Arc::new(conn);
    let reader = |s: SpdyStream| Box::new(s) as Reader;
    let writer = |s: SpdyStream| Box::new(s) as Writer;
    let stdin = got.remove("stdin").map(reader);
    let stdout = got.remove("stdout").map(writer);
    let stderr = got.remove("stderr").map(writer);
    let error = got.remove("error").map(writer);
    let resize = got.remove("resize").map(|s| resize_reader(reader(s)));
    let gone_conn = conn.clone();
    Some(Streams {
        version,
        stdin,
        stdout,
        stderr,
        error,
        resize,
        gone: Box::pin(async move {
            let _ = gone_conn.closed().await;
        }),
    })
}

/// Serves port-forward pairs until the client closes the connection.
pub async fn port_forward(
    conn: SpdyConn,
    mut incoming: Incoming,
    req: PortForwardRequest,
    target: Target,
) {
    #[derive(Default)]
    struct Pair {
        error: Option<SpdyStream>,
        data: Option<SpdyStream>,
    }
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(s) = incoming.accept().await {
        let h = s.headers();
        let kind = h.get("streamtype").unwrap_or("").to_owned();
        // Without a request id (old clients), the port names the pair.
        let id = h
            .get("requestid")
            .or_else(|| h.get("port"))
            .unwrap_or("")
            .to_owned();
        let mut pair = pairs.remove(&id).unwrap_or_default();
        match kind.as_str() {
            "error" if pair.error.is_none() => pair.error = Some(s),
            "data" if pair.data.is_none() => pair.data = Some(s),
            other => {
                debug!(
                    streamtype = other,
                    "spdy port-forward: an unexpected stream"
                );
                s.reset();
                if pair.error.is_some() || pair.data.is_some() {
                    pairs.insert(id, pair);
                }
                continue;
            }
        }
        match pair {
            Pair {
                error: Some(error),
                data: Some(data),
            } => {
                let target = target.clone();
                let req = req.clone();
                tokio::spawn(forward(error, data, req, target));
            }
            half => {
                if pairs.len() >= MAX_HALF_PAIRS {
                    debug!("spdy port-forward: too many half-open pairs; closing");
                    break;
                }
                pairs.insert(id, half);
            }
        }
    }
    drop(conn);
}

async fn forward(mut error: SpdyStream, data: SpdyStream, req: PortForwardRequest, t: Target) {
    let port = data.headers().get("port").map(str::to_owned);
    let port = match port.as_deref().map(str::parse::<u16>) {
        Some(Ok(p)) if p != 0 => p,
        _ => {
            let msg = format!("invalid port header {port:?}");
            return refuse(error, data, &msg).await;
        }
    };
    if let Err(msg) = check_port(port, &req) {
        return refuse(error, data, &msg).await;
    }
    match t.connect(port).await {
        Ok(conn) => {
            splice(data, conn).await;
            let _ = error.shutdown().await;
        }
        Err(e) => refuse(error, data, &t.error(port, &e)).await,
    }
}

/// Reports `msg` on the error stream and ends both streams.
async fn refuse(mut error: SpdyStream, mut data: SpdyStream, msg: &str) {
    let _ = error.write_all(msg.as_bytes()).await;
    let _ = error.shutdown().await;
    let _ = data.shutdown().await;
}
