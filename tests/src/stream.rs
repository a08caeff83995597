//! A client of peapod's streaming server, for the tests and the benchmark: it asks the CRI
//! for an Exec/PortForward URL and opens it from inside the node's network namespace (where
//! the daemon under test listens), over WebSocket (tokio-tungstenite) with the Kubernetes
//! channel framing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use cri_api::v1::{ExecRequest, PortForwardRequest};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{Client, Node};

/// A streaming URL, taken apart.
#[derive(Clone, Debug)]
pub struct StreamUrl {
    /// `https://`: the server speaks TLS.
    pub https: bool,
    pub addr: SocketAddr,
    /// Path and query: `/exec/<token>`.
    pub path: String,
}

impl StreamUrl {
    pub fn parse(url: &str) -> Result<StreamUrl> {
        let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => bail!("{url:?} is neither http:// nor https://"),
        };
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        Ok(StreamUrl {
            https,
            addr: host.parse().with_context(|| format!("host of {url:?}"))?,
            path: path.to_owned(),
        })
    }

    pub fn with_query(&self, query: &str) -> StreamUrl {
        StreamUrl {
            https: self.https,
            addr: self.addr,
            path: format!("{}?{query}", self.path),
        }
    }
}

/// A connection to the streaming server, plain or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// Connects to `url`; over TLS for an `https://` URL, trusting the CA in PEM file `ca`.
pub async fn connect(
    dial: &impl Dial,
    url: &StreamUrl,
    ca: Option<&std::path::Path>,
) -> Result<BoxIo> {
    let tcp = dial.dial(url.addr).await?;
    if !url.https {
        return Ok(Box::new(tcp));
    }
    use rustls::pki_types::pem::PemObject;
    let ca = ca.context("an https:// URL needs the server's CA")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::from(url.addr.ip());
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}

/// Where connections to the streaming server come from.
pub trait Dial: Sync {
    fn dial(&self, addr: SocketAddr) -> impl Future<Output = Result<TcpStream>> + Send;
}

/// From the calling process's own network namespace (the benchmark runs inside the node).
pub struct Direct;

impl Dial for Direct {
    async fn dial(&self, addr: SocketAddr) -> Result<TcpStream> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

impl Dial for Node {
    async fn dial(&self, addr: SocketAddr) -> Result<TcpStream> {
        self.connect_tcp(addr).await
    }
}

impl Node {
    /// A TCP connection to `addr` made inside the node's network namespace (a thread joins
    /// it to connect; the socket stays there).
    pub async fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream> {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.pid1()))?;
        let std = tokio::task::spawn_blocking(move || -> Result<std::net::TcpStream> {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let r = nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
                    .and_then(|()| {
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    });
                let _ = tx.send(r);
            });
            Ok(rx.recv()??)
        })
        .await??;
        std.set_nonblocking(true)?;
        std.set_nodelay(true)?;
        Ok(TcpStream::from_std(std)?)
    }

    /// The URL of a CRI Exec.
    pub async fn exec_url(&self, req: ExecRequest) -> Result<StreamUrl> {
        exec_url(&mut self.client().await?, req).await
    }

    /// The URL of a CRI PortForward.
    pub async fn port_forward_url(&self, pod: &str, ports: &[i32]) -> Result<StreamUrl> {
        port_forward_url(&mut self.client().await?, pod, ports).await
    }
}

/// The URL of a CRI Attach to `container`, with stdout (and stderr without a TTY).
pub async fn attach_url(
    client: &mut Client,
    container: &str,
    stdin: bool,
    tty: bool,
) -> Result<StreamUrl> {
    let req = cri_api::v1::AttachRequest {
        container_id: container.to_owned(),
        stdin,
        tty,
        stdout: true,
        stderr: !tty,
    };
    StreamUrl::parse(&client.attach(req).await?.into_inner().url)
}

/// The URL of a CRI Exec.
pub async fn exec_url(client: &mut Client, req: ExecRequest) -> Result<StreamUrl> {
    StreamUrl::parse(&client.exec(req).await?.into_inner().url)
}

/// The URL of a CRI PortForward.
pub async fn port_forward_url(client: &mut Client, pod: &str, ports: &[i32]) -> Result<StreamUrl> {
    let req = PortForwardRequest {
        pod_sandbox_id: pod.to_owned(),
        port: ports.to_vec(),
    };
    StreamUrl::parse(&client.port_forward(req).await?.into_inner().url)
}

/// An Exec request: `cmd` in `container`, with stdout and stderr, and stdin if asked.
pub fn exec_request(container: &str, cmd: &[&str], stdin: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: container.to_owned(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

/// What an exec session left on its output channels.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub error: Vec<u8>,
}

impl ExecOutput {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The exit code a v4+ error stream reports: `Success` is 0, `NonZeroExitCode` says.
    pub fn exit_code(&self) -> Result<i32> {
        let v: serde_json::Value = serde_json::from_slice(&self.error).with_context(|| {
            format!(
                "the error stream is no Status: {:?}",
                String::from_utf8_lossy(&self.error)
            )
        })?;
        match v["status"].as_str() {
            Some("Success") => Ok(0),
            Some("Failure") if v["reason"] == "NonZeroExitCode" => {
                let causes = v["details"]["causes"].as_array().context("no causes")?;
                let code = causes
                    .iter()
                    .find(|c| c["reason"] == "ExitCode")
                    .and_then(|c| c["message"].as_str())
                    .context("no ExitCode cause")?;
                Ok(code.parse()?)
            }
            _ => bail!("the error stream reports a failure: {v}"),
        }
    }
}

/// A WebSocket session on a streaming URL.
pub struct WsSession {
    ws: WebSocketStream<BoxIo>,
    pub protocol: Option<String>,
    base64: bool,
}

/// Why a handshake failed: the HTTP status the server answered, if it answered one.
pub fn handshake_status(e: &anyhow::Error) -> Option<u16> {
    match e.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
        Some(tokio_tungstenite::tungstenite::Error::Http(r)) => Some(r.status().as_u16()),
        _ => None,
    }
}

impl WsSession {
    /// Reads stdout until it holds `text` (bounded by `timeout`); what came on stdout.
    pub async fn stdout_until(&mut self, text: &str, timeout: Duration) -> Result<String> {
        let mut out = Vec::new();
        tokio::time::timeout(timeout, async {
            while !String::from_utf8_lossy(&out).contains(text) {
                match self.next().await? {
                    Some((1, data)) => out.extend(data),
                    Some(_) => {}
                    None => bail!("the session ended"),
                }
            }
            Ok(())
        })
        .await
        .with_context(|| format!("no {text:?} on stdout: {:?}", String::from_utf8_lossy(&out)))??;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Opens `url` offering `protocols` (in preference order).
    pub async fn open(node: &impl Dial, url: &StreamUrl, protocols: &[&str]) -> Result<WsSession> {
        Self::open_with(node, url, protocols, None).await
    }

    /// [`WsSession::open`], trusting `ca` for an `https://` URL.
    pub async fn open_with(
        node: &impl Dial,
        url: &StreamUrl,
        protocols: &[&str],
        ca: Option<&std::path::Path>,
    ) -> Result<WsSession> {
        let io = connect(node, url, ca).await?;
        Self::handshake(io, url, protocols).await
    }

    /// The WebSocket handshake for `url` on `io`, a connection made with [`connect`].
    pub async fn handshake(io: BoxIo, url: &StreamUrl, protocols: &[&str]) -> Result<WsSession> {
        let scheme = if url.https { "wss" } else { "ws" };
        let mut req = format!("{scheme}://{}{}", url.addr, url.path).into_client_request()?;
        if !protocols.is_empty() {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse()?);
        }
        let (ws, resp) = tokio_tungstenite::client_async(req, io).await?;
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let base64 = protocol.as_deref().is_some_and(|p| p.contains("base64"));
        Ok(WsSession {
            ws,
            protocol,
            base64,
        })
    }

    /// Sends `data` on channel `ch`.
    pub async fn send(&mut self, ch: u8, data: &[u8]) -> Result<()> {
        let m = if self.base64 {
            let mut s = String::from((b'0' + ch) as char);
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::text(s)
        } else {
            let mut v = vec![ch];
            v.extend_from_slice(data);
            Message::binary(v)
        };
        self.ws.send(m).await?;
        Ok(())
    }

    /// Sends a raw message, for hostile-input tests.
    pub async fn send_raw(&mut self, m: Message) -> Result<()> {
        self.ws.send(m).await?;
        Ok(())
    }

    /// v5: closes stdin (channel 0).
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.ws.send(Message::binary(vec![255u8, 0])).await?;
        Ok(())
    }

    /// Sends a terminal size on the resize channel.
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let size = serde_json::json!({"Width": width, "Height": height}).to_string();
        self.send(4, size.as_bytes()).await
    }

    /// The next channel message, `None` when the server closed the session.
    pub async fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        loop {
            let Some(m) = self.ws.next().await else {
                return Ok(None);
            };
            let frame = match m? {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) if self.base64 => {
                    let (ch, rest) = t.as_str().split_at(1);
                    let mut v = vec![ch.as_bytes()[0] - b'0'];
                    base64::engine::general_purpose::STANDARD.decode_vec(rest, &mut v)?;
                    v
                }
                Message::Close(_) => return Ok(None),
                _ => continue,
            };
            ensure!(!frame.is_empty(), "an empty message");
            return Ok(Some((frame[0], frame[1..].to_vec())));
        }
    }

    /// Reads until the server closes, collecting stdout (1), stderr (2) and error (3).
    pub async fn collect(mut self, timeout: Duration) -> Result<ExecOutput> {
        let mut out = ExecOutput::default();
        tokio::time::timeout(timeout, async {
            while let Some((ch, data)) = self.next().await? {
                match ch {
                    1 => out.stdout.extend(data),
                    2 => out.stderr.extend(data),
                    3 => out.error.extend(data),
                    other => bail!("output on channel {other}"),
                }
            }
            Ok(())
        })
        .await
        .context("the session did not end")??;
        Ok(out)
    }
}

/// Runs `cmd` through Exec over WebSocket `protocol`, with `stdin` sent (and closed, on v5)
/// if given.
pub async fn ws_exec(
    node: &Node,
    container: &str,
    cmd: &[&str],
    protocol: &str,
    stdin: Option<&[u8]>,
) -> Result<ExecOutput> {
    let url = node
        .exec_url(exec_request(container, cmd, stdin.is_some(), false))
        .await?;
    let mut s = WsSession::open(node, &url, &[protocol]).await?;
    ensure!(
        s.protocol.as_deref() == Some(protocol),
        "negotiated {:?}, offered {protocol}",
        s.protocol
    );
    if let Some(data) = stdin {
        s.send(0, data).await?;
        if protocol.starts_with("v5.") {
            s.close_stdin().await?;
        }
    }
    s.collect(Duration::from_secs(30)).await
}

/// A SPDY/3.1 connection on a streaming URL: the HTTP upgrade by hyper's client, then the
/// same SPDY code the daemon uses, as the client.
pub struct SpdySession {
    pub conn: crate::spdy_conn::SpdyConn,
    /// The version the server chose (`X-Stream-Protocol-Version`), if any.
    pub protocol: Option<String>,
}

/// Why an upgrade failed: the status the server answered.
#[derive(Debug, thiserror::Error)]
#[error("the server answered {status}: {body}")]
pub struct UpgradeRefused {
    pub status: u16,
    pub body: String,
}

impl SpdySession {
    pub async fn open(
        node: &impl Dial,
        url: &StreamUrl,
        protocols: &[&str],
    ) -> Result<SpdySession> {
        let (io, protocol) = spdy_upgrade(node, url, protocols).await?;
        let (conn, _incoming) = crate::spdy_conn::SpdyConn::client(io);
        Ok(SpdySession { conn, protocol })
    }

    /// Opens a stream with these headers.
    pub async fn stream(&self, headers: &[(&str, &str)]) -> Result<crate::spdy_conn::SpdyStream> {
        let h: crate::spdy::Headers = headers.iter().copied().collect();
        Ok(self.conn.open(h, false).await?)
    }
}

/// The HTTP upgrade to SPDY/3.1: the raw upgraded connection and the version the server
/// chose.
pub async fn spdy_upgrade(
    node: &impl Dial,
    url: &StreamUrl,
    protocols: &[&str],
) -> Result<(
    hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>,
    Option<String>,
)> {
    use http_body_util::BodyExt;
    let tcp = node.dial(url.addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn.with_upgrades());
    let mut req = hyper::Request::post(url.path.as_str())
        .header("Host", url.addr.to_string())
        .header("Connection", "Upgrade")
        .header("Upgrade", "SPDY/3.1");
    for p in protocols {
        req = req.header("X-Stream-Protocol-Version", *p);
    }
    let resp = sender
        .send_request(req.body(http_body_util::Empty::<hyper::body::Bytes>::new())?)
        .await?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        return Err(UpgradeRefused {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
        .into());
    }
    let protocol = resp
        .headers()
        .get("X-Stream-Protocol-Version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let upgraded = hyper::upgrade::on(resp).await?;
    Ok((hyper_util::rt::TokioIo::new(upgraded), protocol))
}

/// The status an upgrade was refused with.
pub fn refused_status(e: &anyhow::Error) -> Option<u16> {
    e.downcast_ref::<UpgradeRefused>().map(|r| r.status)
}

/// Runs an Exec over SPDY `protocol`: opens the streams the request implies (error first, as
/// clients do), sends `stdin` then closes it, and reads every output to its end.
pub async fn spdy_exec(
    node: &Node,
    req: ExecRequest,
    protocol: &str,
    stdin: Option<&[u8]>,
) -> Result<ExecOutput> {
    let url = node.exec_url(req.clone()).await?;
    spdy_exec_at(node, &url, &req, protocol, stdin).await
}

/// [`spdy_exec`] on a URL already made for `req`.
pub async fn spdy_exec_at(
    dial: &impl Dial,
    url: &StreamUrl,
    req: &ExecRequest,
    protocol: &str,
    stdin: Option<&[u8]>,
) -> Result<ExecOutput> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = SpdySession::open(dial, url, &[protocol]).await?;
    ensure!(
        s.protocol.as_deref() == Some(protocol),
        "negotiated {:?}",
        s.protocol
    );
    let mut error = s.stream(&[("streamtype", "error")]).await?;
    let mut input = match req.stdin {
        true => Some(s.stream(&[("streamtype", "stdin")]).await?),
        false => None,
    };
    let mut stdout = match req.stdout {
        true => Some(s.stream(&[("streamtype", "stdout")]).await?),
        false => None,
    };
    let mut stderr = match req.stderr && !req.tty {
        true => Some(s.stream(&[("streamtype", "stderr")]).await?),
        false => None,
    };
    if let Some(i) = input.as_mut() {
        i.write_all(stdin.unwrap_or_default()).await?;
        i.shutdown().await?;
    }
    let read = |st: Option<crate::spdy_conn::SpdyStream>| async move {
        let mut v = Vec::new();
        if let Some(mut st) = st {
            st.read_to_end(&mut v).await?;
        }
        Ok::<_, std::io::Error>(v)
    };
    let mut out = ExecOutput::default();
    tokio::time::timeout(Duration::from_secs(30), async {
        let (o, e) = tokio::join!(read(stdout.take()), read(stderr.take()));
        out.stdout = o?;
        out.stderr = e?;
        error.read_to_end(&mut out.error).await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("the session did not end")??;
    drop(input);
    Ok(out)
}

/// A WebSocket on a streaming URL as a byte stream (a SPDY tunnel).
pub struct WsIo;

impl WsIo {
    pub async fn open(
        node: &Node,
        url: &StreamUrl,
        protocol: &str,
    ) -> Result<crate::ws_io::WsIo<BoxIo>> {
        let s = WsSession::open(node, url, &[protocol]).await?;
        ensure!(
            s.protocol.as_deref() == Some(protocol),
            "negotiated {:?}",
            s.protocol
        );
        Ok(crate::ws_io::WsIo::new(s.ws))
    }
}
