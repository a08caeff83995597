//! The streaming server: where `Exec`, `Attach` and `PortForward` send their clients.
//!
//! A CRI call stores its request under a one-time token ([`tokens`]) and answers
//! `http://<stream_address>:<stream_port>/<kind>/<token>`; the client (kubelet, crictl)
//! opens that URL and upgrades the connection, to SPDY/3.1 or to WebSocket, speaking one of
//! the Kubernetes channel protocols ([`http`] negotiates them). The session then runs on the
//! connection: [`exec`], [`attach`] (through the container's monitor) or [`portforward`].

pub mod attach;
pub mod channels;
pub mod exec;
pub mod http;
pub mod limits;
pub mod portforward;
pub mod pty;
// The SPDY code is shared with the tests' client, which uses the client side (opening
// streams, pings) and the spec's full tables of codes that the server never sends.
#[allow(dead_code)]
pub mod spdy;
#[allow(dead_code)]
pub mod spdy_conn;
pub mod spdy_session;
pub mod tokens;
pub mod ws;
pub mod ws_io;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::container::Containers;
use crate::sandbox::Sandboxes;
use tokens::{Pending, Tokens, TooManyPending};

pub struct StreamServer {
    pub tokens: Tokens,
    /// `http://addr:port` (or https), what the URLs start with.
    base: String,
    pub containers: Arc<Containers>,
    pub sandboxes: Arc<Sandboxes>,
}

impl StreamServer {
    /// Binds the configured address and port (0: a free one) and serves in the background.
    pub async fn start(
        cfg: &Config,
        containers: Arc<Containers>,
        sandboxes: Arc<Sandboxes>,
    ) -> anyhow::Result<Arc<StreamServer>> {
        let tls = match (&cfg.stream_tls_cert, &cfg.stream_tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            _ => None,
        };
        let bind = SocketAddr::new(cfg.stream_address, cfg.stream_port);
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot bind the streaming server to {bind}"))?;
        let local = listener.local_addr()?;
        // A client cannot connect to "any address": URLs name loopback then.
        let host = match local.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let srv = Arc::new(StreamServer {
            tokens: Tokens::default(),
            base: format!("{scheme}://{}", SocketAddr::new(host, local.port())),
            containers,
            sandboxes,
        });
        tracing::info!(url = %srv.base, "serving streams (exec, attach, port-forward)");
        tokio::spawn(http::serve(listener, tls, srv.clone()));
        Ok(srv)
    }

    /// `http://addr:port`, for Status.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A one-time URL for `req`.
    pub fn url(&self, req: Pending) -> Result<String, TooManyPending> {
        let kind = req.kind();
        let token = self.tokens.insert(req)?;
        Ok(format!("{}/{kind}/{token}", self.base))
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read stream_tls_cert {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read stream_tls_key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("stream_tls_cert and stream_tls_key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
