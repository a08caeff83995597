//! The HTTP/1.1 side (hyper): one connection per session, its token checked, then the
//! upgrade to SPDY/3.1 or WebSocket with a protocol both ends speak.
//!
//! Connections are admitted by [`limits`](super::limits): one slow to send its request is cut
//! off after [`HEADER_TIMEOUT`], idle ones are shed for newer ones, and one whose request
//! carries a valid token lives as long as its session.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::{debug, warn};

use super::StreamServer;
use super::channels::Version;
use super::limits::{Admission, HEADER_TIMEOUT, Limits};
use super::portforward::{self, Target};
use super::spdy_conn::SpdyConn;
use super::spdy_session;
use super::tokens::Pending;
use super::ws::{self, Want};

type Body = Full<Bytes>;

pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    srv: Arc<StreamServer>,
) {
    let limits = Arc::new(Limits::default());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("streaming server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(adm) = limits.admit(peer.ip()) else {
            debug!(%peer, "streaming server: as many sessions as allowed; refused");
            continue;
        };
        let adm = Arc::new(adm);
        let _ = tcp.set_nodelay(true);
        let srv = srv.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let a = adm.clone();
            let conn = async move {
                match tls {
                    None => connection(tcp, srv, a).await,
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(s) => connection(s, srv, a).await,
                        Err(e) => debug!(%peer, "streaming server: TLS handshake: {e}"),
                    },
                }
            };
            admitted(conn, &adm, peer).await;
        });
    }
}

/// Runs a connection; closes it if it is shed, or if its request has not authenticated it
/// within [`HEADER_TIMEOUT`].
async fn admitted(conn: impl Future<Output = ()>, adm: &Admission, peer: SocketAddr) {
    tokio::pin!(conn);
    let why = tokio::select! {
        () = &mut conn => return,
        () = adm.shed() => "shed for a newer connection",
        () = tokio::time::sleep(HEADER_TIMEOUT) => "no valid request in time",
    };
    if adm.is_authenticated() {
        conn.await;
    } else {
        debug!(%peer, "streaming server: connection closed: {why}");
    }
}

async fn connection<S>(io: S, srv: Arc<StreamServer>, adm: Arc<Admission>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let srv = srv.clone();
        let adm = adm.clone();
        async move { Ok::<_, Infallible>(handle(&srv, &adm, req)) }
    });
    // Until a valid token authenticates it, the connection stays under the admission's
    // timeout and may be shed, however many requests it sends.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 << 10)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!("streaming connection: {e}");
    }
}

fn plain(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Every value of a header that may be repeated or comma-separated, in order.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The first protocol the client offers that we speak (the client's order is its preference).
fn negotiate<'a>(offered: &[String], ours: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .find_map(|o| ours.iter().find(|p| **p == o.as_str()).copied())
}

/// Exec and attach over SPDY.
const SPDY_EXEC: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const SPDY_PORTFORWARD: &[&str] = &["portforward.k8s.io"];
const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// Exec and attach over WebSocket.
const WS_EXEC: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// Port-forward over WebSocket: SPDY tunnelled in binary messages, or channels.
const WS_PORTFORWARD: &[&str] = &[
    SPDY_TUNNEL,
    "portforward.k8s.io",
    "v4.channel.k8s.io",
    "channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
];

fn handle(srv: &Arc<StreamServer>, adm: &Arc<Admission>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or POST");
    }
    let path = req.uri().path().trim_start_matches('/');
    let Some((kind, token)) = path.split_once('/') else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let Some(pending) = srv.tokens.take(kind, token) else {
        return plain(StatusCode::NOT_FOUND, "unknown, used or expired token");
    };
    if !adm.authenticate() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection shed; try again",
        );
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    match upgrade.as_str() {
        "websocket" => websocket(srv, adm, req, pending),
        "spdy/3.1" => spdy(srv, adm, req, pending),
        _ => plain(
            StatusCode::BAD_REQUEST,
            "this URL must be opened with Upgrade: SPDY/3.1 or websocket",
        ),
    }
}

fn websocket(
    srv: &Arc<StreamServer>,
    adm: &Arc<Admission>,
    req: Request<Incoming>,
    pending: Pending,
) -> Response<Body> {
    let h = req.headers();
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
    };
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
    }
    let offered = list(h, "sec-websocket-protocol");
    let ours = match pending {
        Pending::PortForward(_) => WS_PORTFORWARD,
        _ => WS_EXEC,
    };
    // No protocol offered: the original binary channel protocol.
    let chosen = match negotiate(&offered, ours) {
        Some(p) => Some(p),
        None if offered.is_empty() => None,
        None => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("none of the protocols {offered:?} is supported; supported: {ours:?}"),
            );
        }
    };
    let ports = match &pending {
        Pending::PortForward(pf) if chosen != Some(SPDY_TUNNEL) => {
            match portforward::query_ports(req.uri().query(), pf) {
                Ok(p) => p,
                Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
            }
        }
        _ => Vec::new(),
    };
    let target = match &pending {
        Pending::PortForward(pf) => match Target::find(&srv.sandboxes, pf) {
            Ok(t) => Some(t),
            Err(e) => return plain(StatusCode::NOT_FOUND, &e),
        },
        _ => None,
    };
    let accept = derive_accept_key(key.as_bytes());
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let rh = resp.headers_mut();
    rh.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    rh.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    if let Some(p) = chosen {
        rh.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    let srv = srv.clone();
    let adm = adm.clone(); // the session counts while it runs
    tokio::spawn(async move {
        let _adm = adm;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => return debug!("websocket upgrade failed: {e}"),
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(ws::config()),
        )
        .await;
        let name = chosen.unwrap_or("channel.k8s.io");
        let base64 = name.contains("base64");
        match pending {
            session @ (Pending::Exec(_) | Pending::Attach(_)) => {
                let version = Version::from_name(name).unwrap_or(Version::V1);
                let streams = ws::exec_streams(ws, version, base64, want(&session));
                run_session(&srv, session, streams).await;
            }
            Pending::PortForward(req) if name == SPDY_TUNNEL => {
                let (conn, incoming) = SpdyConn::server(super::ws_io::WsIo::new(ws));
                let target = target.expect("found above");
                spdy_session::port_forward(conn, incoming, req, target).await;
            }
            Pending::PortForward(_) => {
                let target = target.expect("found above");
                portforward::run_ws_channels(ws, base64, target, ports);
            }
        }
    });
    resp
}

/// The streams an exec or attach asked for.
fn want(p: &Pending) -> Want {
    match p {
        Pending::Exec(r) => Want {
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            tty: r.tty,
        },
        Pending::Attach(r) => Want {
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            tty: r.tty,
        },
        Pending::PortForward(_) => Want {
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        },
    }
}

/// Runs an exec or attach session on its streams.
async fn run_session(srv: &StreamServer, p: Pending, streams: super::channels::Streams) {
    match p {
        Pending::Exec(req) => super::exec::run(&srv.containers, &req, streams).await,
        Pending::Attach(req) => super::attach::run(&srv.containers, &req, streams).await,
        Pending::PortForward(_) => {}
    }
}

fn spdy(
    srv: &Arc<StreamServer>,
    adm: &Arc<Admission>,
    req: Request<Incoming>,
    pending: Pending,
) -> Response<Body> {
    let offered = list(req.headers(), "x-stream-protocol-version");
    let ours = match pending {
        Pending::PortForward(_) => SPDY_PORTFORWARD,
        _ => SPDY_EXEC,
    };
    // No version offered: a client older than the header, speaking the first protocol.
    let chosen = match negotiate(&offered, ours) {
        Some(p) => Some(p),
        None if offered.is_empty() => None,
        None => {
            return plain(
                StatusCode::FORBIDDEN,
                &format!(
                    "unable to upgrade: none of the protocols {offered:?} is supported; supported: {ours:?}"
                ),
            );
        }
    };
    let target = match &pending {
        Pending::PortForward(pf) => match Target::find(&srv.sandboxes, pf) {
            Ok(t) => Some(t),
            Err(e) => return plain(StatusCode::NOT_FOUND, &e),
        },
        _ => None,
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let rh = resp.headers_mut();
    rh.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Some(p) = chosen {
        rh.insert("x-stream-protocol-version", HeaderValue::from_static(p));
    }
    let srv = srv.clone();
    let adm = adm.clone(); // the session counts while it runs
    tokio::spawn(async move {
        let _adm = adm;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => return debug!("spdy upgrade failed: {e}"),
        };
        let (conn, incoming) = SpdyConn::server(TokioIo::new(upgraded));
        match pending {
            Pending::PortForward(req) => {
                let target = target.expect("found above");
                spdy_session::port_forward(conn, incoming, req, target).await;
            }
            session => {
                let version =
                    Version::from_name(chosen.unwrap_or("channel.k8s.io")).unwrap_or(Version::V1);
                let want = want(&session);
                if let Some(streams) =
                    spdy_session::exec_streams(conn, incoming, version, want).await
                {
                    run_session(&srv, session, streams).await;
                }
            }
        }
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_preference_wins() {
        let offered = vec![
            "v4.channel.k8s.io".to_owned(),
            "v5.channel.k8s.io".to_owned(),
        ];
        assert_eq!(negotiate(&offered, WS_EXEC), Some("v4.channel.k8s.io"));
        assert_eq!(negotiate(&["nope".to_owned()], WS_EXEC), None);
    }

    #[test]
    fn header_lists_split_on_commas_and_repeats() {
        let mut h = HeaderMap::new();
        h.append("x", HeaderValue::from_static("a, b"));
        h.append("x", HeaderValue::from_static("c"));
        assert_eq!(list(&h, "x"), vec!["a", "b", "c"]);
    }
}
