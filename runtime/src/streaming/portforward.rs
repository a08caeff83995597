//! Port-forward: TCP connections to `localhost:<port>` inside a pod's network namespace,
//! carried over the client's streams. The connection is made by a short-lived thread that
//! joins the pod's netns and connects (a socket stays in the namespace it was made in); no
//! tokio thread ever changes namespace.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::exec::pump;
use super::tokens::PortForwardRequest;
use super::ws::Mux;
use crate::sandbox::Sandboxes;
use crate::sandbox::model::SandboxState;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a pod's ports are: its network namespace, or the node's for a host-network pod.
#[derive(Clone, Debug)]
pub struct Target {
    pub sandbox_id: String,
    pub netns: Option<PathBuf>,
}

impl Target {
    /// The pod as it is now: it must still be ready.
    pub fn find(sandboxes: &Sandboxes, req: &PortForwardRequest) -> Result<Target, String> {
        let rec = sandboxes
            .status(&req.sandbox_id)
            .map_err(|e| e.to_string())?;
        if rec.state != SandboxState::Ready {
            return Err(format!("pod sandbox {} is not ready", rec.id));
        }
        let netns = (!rec.spec.host_network()).then(|| Sandboxes::netns_pin(&rec.id));
        Ok(Target {
            sandbox_id: rec.id,
            netns,
        })
    }

    /// Connects to `localhost:port` in the pod.
    pub async fn connect(&self, port: u16) -> io::Result<TcpStream> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let std = match &self.netns {
            None => {
                return tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?;
            }
            Some(ns) => {
                let ns = File::open(ns)?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name("portforward".into())
                    .spawn(move || {
                        let r = nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(io::Error::from)
                            .and_then(|()| {
                                std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                            });
                        let _ = tx.send(r);
                    })?;
                rx.await
                    .map_err(|_| io::Error::other("the connecting thread died"))??
            }
        };
        std.set_nonblocking(true)?;
        TcpStream::from_std(std)
    }

    /// The error text for a failed connection, as the kubelet words it.
    pub fn error(&self, port: u16, e: &io::Error) -> String {
        format!(
            "error forwarding port {port} to pod {}: {e}",
            self.sandbox_id
        )
    }
}

/// Copies both ways between the client's stream and a pod connection. The client's end of
/// input half-closes the pod connection; the pod's end of output ends the forward (as the
/// kubelet does: a server that closed has said all it will).
pub async fn splice<S>(client: S, conn: TcpStream)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (cr, cw) = tokio::io::split(client);
    let (tr, tw) = conn.into_split();
    let up = pump(cr, Some(tw), true);
    let down = pump(tr, Some(cw), true);
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => {}
        () = &mut up => down.await,
    }
}

/// The ports of a WebSocket port-forward (`?port=80&port=8080`): each must be one the request
/// allowed.
pub fn query_ports(query: Option<&str>, req: &PortForwardRequest) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k != "port" {
            continue;
        }
        let p: u16 = v
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {v:?}"))?;
        check_port(p, req)?;
        ports.push(p);
    }
    if ports.is_empty() {
        return Err("no port: name one or more with ?port=N".into());
    }
    if ports.len() > 64 {
        return Err("more than 64 ports".into());
    }
    Ok(ports)
}

/// A port the client asks for must be one the PortForward request named, if it named any.
pub fn check_port(port: u16, req: &PortForwardRequest) -> Result<(), String> {
    if req.ports.is_empty() || req.ports.contains(&port) {
        Ok(())
    } else {
        Err(format!(
            "port {port} was not in the PortForward request ({:?})",
            req.ports
        ))
    }
}

/// The WebSocket channel framing: per port `i`, data on channel `2i` and errors on `2i+1`,
/// both opened by the port number; one connection per port.
pub fn run_ws_channels<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    base64: bool,
    target: Target,
    ports: Vec<u16>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut mux = Mux::new(base64, false);
    let mut ends = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let ch = (2 * i) as u8;
        let first = port.to_le_bytes().to_vec();
        let data_in = mux.input(ch);
        let data_out = mux.output(ch, first.clone());
        let err_out = mux.output(ch + 1, first);
        ends.push((*port, data_in, data_out, err_out));
    }
    let gone = mux.run(ws);
    tokio::spawn(async move {
        let work = async {
            let mut all = Vec::new();
            for (port, data_in, data_out, mut err_out) in ends {
                let target = target.clone();
                all.push(tokio::spawn(async move {
                    match target.connect(port).await {
                        Ok(conn) => {
                            drop(err_out);
                            splice(tokio::io::join(data_in, data_out), conn).await;
                        }
                        Err(e) => {
                            let _ = err_out.write_all(target.error(port, &e).as_bytes()).await;
                        }
                    }
                }));
            }
            for t in all {
                let _ = t.await;
            }
        };
        tokio::select! {
            () = work => {}
            () = gone => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ports: &[u16]) -> PortForwardRequest {
        PortForwardRequest {
            sandbox_id: "p".into(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn query_ports_parse_and_are_bound_to_the_request() {
        assert_eq!(
            query_ports(Some("port=80&port=8080"), &req(&[])).unwrap(),
            vec![80, 8080]
        );
        assert_eq!(
            query_ports(Some("x=1&port=80"), &req(&[80])).unwrap(),
            vec![80]
        );
        assert!(query_ports(Some("port=81"), &req(&[80])).is_err());
        assert!(query_ports(Some("port=0"), &req(&[])).is_err());
        assert!(query_ports(Some("port=99999"), &req(&[])).is_err());
        assert!(query_ports(Some("port=http"), &req(&[])).is_err());
        assert!(query_ports(None, &req(&[])).is_err());
    }

    #[tokio::test]
    async fn connects_on_the_node_without_a_netns() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Target {
            sandbox_id: "p".into(),
            netns: None,
        };
        let (c, a) = tokio::join!(t.connect(port), l.accept());
        c.unwrap();
        a.unwrap();
    }
}
