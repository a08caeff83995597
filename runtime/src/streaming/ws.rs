//! The WebSocket framing of the Kubernetes streaming protocols: every message carries one
//! channel's bytes, the channel number in its first byte (binary protocols) or as an ASCII
//! digit before base64 text (`base64.channel.k8s.io`). Exec and attach use channels 0 stdin,
//! 1 stdout, 2 stderr, 3 error, 4 resize, and v5 adds 255: "close the channel named in the
//! next byte" (how a client ends stdin without closing the connection). Port-forward uses two
//! channels per port, data `2i` and error `2i+1`, each opened by a message holding the port
//! number (little-endian u16).
//!
//! A [`Mux`] turns one WebSocket into plain byte pipes: one reader task dispatches incoming
//! messages to the input pipes (in order, with back-pressure: a pipe that is not read stops
//! the socket being read), one writer task sends what the output pipes produce. Memory is
//! bounded by the pipes' capacity and the message size limit.

use std::collections::HashMap;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::debug;

use super::channels::{Gone, Reader, Streams, Version, resize_reader};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// Largest message accepted from a client.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Bytes an output pipe sends per message.
const CHUNK: usize = 32 << 10;
/// Capacity of each pipe between the socket and a session.
const PIPE: usize = 256 << 10;

pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// The channels of one WebSocket session, before it runs.
pub struct Mux {
    base64: bool,
    /// v5: the client may close an input channel.
    closable: bool,
    inputs: HashMap<u8, DuplexStream>,
    outputs: Vec<(u8, DuplexStream, Vec<u8>)>,
}

impl Mux {
    pub fn new(base64: bool, closable: bool) -> Mux {
        Mux {
            base64,
            closable,
            inputs: HashMap::new(),
            outputs: Vec::new(),
        }
    }

    /// A channel the client writes: what it sends, read from the returned pipe.
    pub fn input(&mut self, ch: u8) -> DuplexStream {
        let (session, socket) = tokio::io::duplex(PIPE);
        self.inputs.insert(ch, socket);
        session
    }

    /// A channel the client reads: what is written to the returned pipe, sent on `ch`,
    /// after a first message of `first` (if not empty). The channel ends when the pipe is
    /// shut down or dropped.
    pub fn output(&mut self, ch: u8, first: Vec<u8>) -> DuplexStream {
        let (session, socket) = tokio::io::duplex(PIPE);
        self.outputs.push((ch, socket, first));
        session
    }

    /// Runs the socket until every output channel has ended (then it closes the
    /// connection) or the client goes away; answers a future that ends when the client is
    /// gone.
    pub fn run<S>(self, ws: WebSocketStream<S>) -> Gone
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Message>(8);
        let base64 = self.base64;
        for (ch, mut pipe, first) in self.outputs {
            let tx = tx.clone();
            tokio::spawn(async move {
                if !first.is_empty() && tx.send(encode(base64, ch, &first)).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match pipe.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tx.send(encode(base64, ch, &buf[..n])).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        drop(tx);
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let (gone_tx, gone_rx) = oneshot::channel::<()>();
        let mut inputs = self.inputs;
        let closable = self.closable;
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let frame = match m {
                    Message::Binary(b) if !base64 => b.to_vec(),
                    Message::Text(t) if base64 => match decode(t.as_str()) {
                        Some(f) => f,
                        None => {
                            debug!("streaming: a base64 message that does not decode; closing");
                            break;
                        }
                    },
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    _ => {
                        debug!("streaming: a message of the wrong kind for this protocol");
                        break;
                    }
                };
                let Some((&ch, data)) = frame.split_first() else {
                    continue;
                };
                if ch == CLOSE && closable {
                    if let Some(c) = data.first() {
                        // Dropping the pipe's end is the session's end of input.
                        inputs.remove(c);
                    }
                    continue;
                }
                match inputs.get_mut(&ch) {
                    Some(pipe) => {
                        if pipe.write_all(data).await.is_err() {
                            // The session no longer reads it: what comes is dropped.
                            inputs.remove(&ch);
                        }
                    }
                    None => debug!(channel = ch, "streaming: data for a channel not open"),
                }
            }
            drop(inputs);
            drop(gone_tx);
        });
        Box::pin(async move {
            let _ = gone_rx.await;
        })
    }
}

fn encode(base64: bool, ch: u8, data: &[u8]) -> Message {
    if base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push((b'0' + ch) as char);
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::text(s)
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(ch);
        v.extend_from_slice(data);
        Message::binary(v)
    }
}

fn decode(text: &str) -> Option<Vec<u8>> {
    let (&first, rest) = text.as_bytes().split_first()?;
    let ch = first.checked_sub(b'0').filter(|c| *c <= 9)?;
    let mut out = vec![ch];
    base64::engine::general_purpose::STANDARD
        .decode_vec(rest, &mut out)
        .ok()?;
    Some(out)
}

/// Which streams an exec or attach session asked for.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The exec/attach channels of a WebSocket as [`Streams`].
pub fn exec_streams<S>(
    ws: WebSocketStream<S>,
    version: Version,
    base64: bool,
    want: Want,
) -> Streams
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut mux = Mux::new(base64, version >= Version::V5);
    let stdin = want.stdin.then(|| Box::new(mux.input(STDIN)) as Reader);
    let resize = want.tty.then(|| resize_reader(Box::new(mux.input(RESIZE))));
    let stdout = want
        .stdout
        .then(|| Box::new(mux.output(STDOUT, Vec::new())) as super::channels::Writer);
    let stderr = (want.stderr && !want.tty)
        .then(|| Box::new(mux.output(STDERR, Vec::new())) as super::channels::Writer);
    let error = Some(Box::new(mux.output(ERROR, Vec::new())) as super::channels::Writer);
    let gone = mux.run(ws);
    Streams {
        version,
        stdin,
        stdout,
        stderr,
        error,
        resize,
        gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_frames_round_trip() {
        let Message::Text(t) = encode(true, 1, b"hello\n") else {
            panic!("text expected")
        };
        assert_eq!(t.as_str(), "1aGVsbG8K");
        assert_eq!(decode(t.as_str()).unwrap(), b"\x01hello\n");
        assert_eq!(decode("x!!"), None);
        assert_eq!(decode("0%%%"), None);
        let Message::Binary(b) = encode(false, 3, b"{}") else {
            panic!("binary expected")
        };
        assert_eq!(&b[..], b"\x03{}");
    }
}
