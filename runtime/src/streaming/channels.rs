//! What an exec or attach session sees of its client, whatever the wire: byte streams for
//! stdin, stdout, stderr and the error (status) stream, terminal sizes from the resize
//! stream, and a future that ends when the client is gone. SPDY gives one stream per channel,
//! WebSocket multiplexes them with a channel byte; both are turned into [`Streams`].

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;
pub type Gone = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The remote-command protocol version agreed with the client. They differ in which streams
/// exist (resize from v3) and in how the outcome is written on the error stream (JSON from
/// v4; v5 adds closing stdin, which only the WebSocket framing carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    V2,
    V3,
    V4,
    V5,
}

impl Version {
    /// From a protocol name of `X-Stream-Protocol-Version` or `Sec-WebSocket-Protocol`.
    pub fn from_name(name: &str) -> Option<Version> {
        Some(match name {
            "channel.k8s.io" | "base64.channel.k8s.io" => Version::V1,
            "v2.channel.k8s.io" => Version::V2,
            "v3.channel.k8s.io" => Version::V3,
            "v4.channel.k8s.io" | "v4.base64.channel.k8s.io" => Version::V4,
            "v5.channel.k8s.io" => Version::V5,
            _ => return None,
        })
    }
}

/// A terminal size, as the resize stream carries it (`{"Width":80,"Height":24}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

pub struct Streams {
    pub version: Version,
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    pub error: Option<Writer>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Ends when the client has gone away (connection closed or broken).
    pub gone: Gone,
}

/// How a command ended, for the error stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// It could not be run, or the session failed: the message says why.
    Failed(String),
}

impl Outcome {
    /// The error stream's bytes for `version`: a `Status` object from v4 (what clients parse
    /// the exit code from), a bare message before, and nothing for a success before v4.
    pub fn encode(&self, version: Version) -> Vec<u8> {
        let json = version >= Version::V4;
        match self {
            Outcome::Exited(0) if json => {
                serde_json::json!({"metadata": {}, "status": "Success"}).to_string()
            }
            Outcome::Exited(0) => String::new(),
            Outcome::Exited(code) if json => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
            .to_string(),
            Outcome::Exited(code) => format!("command terminated with non-zero exit code: {code}"),
            Outcome::Failed(msg) if json => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": msg,
                "reason": "InternalError",
            })
            .to_string(),
            Outcome::Failed(msg) => msg.clone(),
        }
        .into_bytes()
    }
}

/// Writes the outcome on the error stream (if the client opened one) and closes it.
pub async fn finish(error: Option<Writer>, version: Version, outcome: &Outcome) {
    let Some(mut w) = error else { return };
    let bytes = outcome.encode(version);
    if !bytes.is_empty() {
        let _ = w.write_all(&bytes).await;
    }
    let _ = w.shutdown().await;
}

/// Largest resize message accepted; a client sending more without a complete object is cut
/// off rather than buffered.
const MAX_RESIZE_MESSAGE: usize = 4096;

/// Reads a stream of JSON terminal sizes (one object after another, as a JSON stream
/// decoder writes them) into a channel; the last size wins when the reader falls behind.
pub fn resize_reader(mut r: Reader) -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = match r.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
            let mut used = 0;
            loop {
                match it.next() {
                    Some(Ok(size)) => {
                        used = it.byte_offset();
                        if tx.send(size).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    // Not a size: the stream is broken, and sizes after it cannot be trusted.
                    Some(Err(_)) => return,
                    None => {
                        used = buf.len();
                        break;
                    }
                }
            }
            buf.drain(..used);
            if buf.len() > MAX_RESIZE_MESSAGE {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(Version::from_name("v4.channel.k8s.io"), Some(Version::V4));
        assert_eq!(Version::from_name("channel.k8s.io"), Some(Version::V1));
        assert_eq!(Version::from_name("v5.channel.k8s.io"), Some(Version::V5));
        assert_eq!(Version::from_name("v6.channel.k8s.io"), None);
        assert!(Version::V3 < Version::V4);
    }

    #[test]
    fn outcomes_encode_per_version() {
        let fail: serde_json::Value =
            serde_json::from_slice(&Outcome::Exited(3).encode(Version::V4)).unwrap();
        assert_eq!(fail["status"], "Failure");
        assert_eq!(fail["reason"], "NonZeroExitCode");
        assert_eq!(fail["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(fail["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value =
            serde_json::from_slice(&Outcome::Exited(0).encode(Version::V5)).unwrap();
        assert_eq!(ok["status"], "Success");
        assert!(Outcome::Exited(0).encode(Version::V2).is_empty());
        let text = String::from_utf8(Outcome::Exited(3).encode(Version::V3)).unwrap();
        assert!(text.contains("exit code: 3"), "{text}");
        let failed: serde_json::Value =
            serde_json::from_slice(&Outcome::Failed("no such file".into()).encode(Version::V4))
                .unwrap();
        assert_eq!(failed["message"], "no such file");
    }

    #[tokio::test]
    async fn resize_stream_split_anywhere() {
        let (mut w, r) = tokio::io::duplex(64);
        let mut rx = resize_reader(Box::new(r));
        let text = br#"{"Width":80,"Height":24}{"Width":132,"Height":43}"#;
        for part in text.chunks(7) {
            w.write_all(part).await.unwrap();
            w.flush().await.unwrap();
        }
        assert_eq!(
            rx.recv().await,
            Some(TermSize {
                width: 80,
                height: 24
            })
        );
        assert_eq!(
            rx.recv().await,
            Some(TermSize {
                width: 132,
                height: 43
            })
        );
        drop(w);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn resize_stream_garbage_ends_it() {
        let (mut w, r) = tokio::io::duplex(64);
        let mut rx = resize_reader(Box::new(r));
        w.write_all(br#"{"Width":-1,"Height":2}"#).await.unwrap();
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn resize_stream_without_end_is_cut_off() {
        let (mut w, r) = tokio::io::duplex(1 << 16);
        let mut rx = resize_reader(Box::new(r));
        let mut long = b"{\"Width\":\"".to_vec();
        long.resize(MAX_RESIZE_MESSAGE * 2, b'a');
        let _ = w.write_all(&long).await;
        assert_eq!(rx.recv().await, None);
    }
}
