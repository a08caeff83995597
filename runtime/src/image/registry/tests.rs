//! The registry client against a tiny HTTP server written here, for what Debian's registry
//! cannot do: the bearer-token flow (a token service), and answers that are garbage or errors.
//! The server listens on 127.0.0.1 only.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::super::tests::{gzip, tar_of};
use super::super::{Digest, ImageError, ImageStore, RegistryConfig, spec};
use super::Credentials;

/// The content type of a route answered only after 10 s.
const SLOW: &str = "application/x-slow";

/// path → (content type, body) served to a request bearing `Bearer good-token`; the token
/// service at `/token` hands that token out for `user:pass` only.
struct Server {
    port: u16,
}

impl Server {
    async fn start(routes: HashMap<String, (&'static str, Vec<u8>)>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes = Arc::new(routes);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            // A TLS handshake (HTTPS is tried first): hang up, as Go's
                            // servers answer it.
                            Ok(_) if chunk[0] == 0x16 && buf.is_empty() => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let (status, extra, ctype, body) = answer(&head, &routes, port);
                    if ctype == SLOW {
                        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                    }
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
                         Connection: close\r\n{extra}\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                });
            }
        });
        Server { port }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn answer(
    head: &str,
    routes: &HashMap<String, (&'static str, Vec<u8>)>,
    port: u16,
) -> (&'static str, String, &'static str, Vec<u8>) {
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let auth = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("authorization: ")
                .or_else(|| l.strip_prefix("Authorization: "))
        })
        .unwrap_or("")
        .trim()
        .to_owned();
    if path.starts_with("/token?") {
        let basic = Credentials {
            username: "user".into(),
            password: "pass".into(),
            ..Default::default()
        };
        return if auth == basic.basic().unwrap() && path.contains("scope=repository%3Aapp%3Apull") {
            (
                "200 OK",
                String::new(),
                "application/json",
                br#"{"token":"good-token"}"#.to_vec(),
            )
        } else {
            (
                "401 Unauthorized",
                String::new(),
                "application/json",
                b"{}".to_vec(),
            )
        };
    }
    if path == "/v2/broken/manifests/1" {
        let body = br#"{"errors":[{"code":"UNKNOWN","message":"boom"}]}"#.to_vec();
        return (
            "503 Service Unavailable",
            String::new(),
            "application/json",
            body,
        );
    }
    if path == "/v2/garbage/manifests/1" {
        return (
            "200 OK",
            String::new(),
            "text/html",
            b"<html>hello</html>".to_vec(),
        );
    }
    if auth != "Bearer good-token" {
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test\",\
             scope=\"repository:app:pull\"\r\n"
        );
        return (
            "401 Unauthorized",
            challenge,
            "application/json",
            b"{}".to_vec(),
        );
    }
    match routes.get(&path) {
        Some((ctype, body)) => ("200 OK", String::new(), ctype, body.clone()),
        None => (
            "404 Not Found",
            String::new(),
            "application/json",
            b"{}".to_vec(),
        ),
    }
}

/// An image of one layer, as the routes of repository `app`, tag `1`; returns its config digest.
fn app_image(routes: &mut HashMap<String, (&'static str, Vec<u8>)>) -> Digest {
    let raw = tar_of(&[("hello", "world")]);
    let layer = gzip(&raw);
    let config = serde_json::to_vec(&json!({"architecture": spec::node_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&raw)]}}))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": spec::OCI_MANIFEST,
        "config": {"mediaType": spec::OCI_CONFIG, "digest": Digest::of(&config), "size": config.len()},
        "layers": [{"mediaType": format!("{}+gzip", spec::OCI_LAYER), "digest": Digest::of(&layer),
                    "size": layer.len()}]}))
    .unwrap();
    let id = Digest::of(&config);
    for (blob, ctype) in [
        (config, "application/octet-stream"),
        (layer, "application/octet-stream"),
    ] {
        routes.insert(
            format!("/v2/app/blobs/{}", Digest::of(&blob)),
            (ctype, blob),
        );
    }
    routes.insert("/v2/app/manifests/1".into(), (spec::OCI_MANIFEST, manifest));
    id
}

fn store_for(server: &Server) -> (tempfile::TempDir, Arc<ImageStore>) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the pull tests need root (layer ownership)"
    );
    let dir = tempfile::tempdir().unwrap();
    let config: RegistryConfig =
        toml::from_str(&format!("[\"{}\"]\ninsecure = true", server.host())).unwrap();
    let store = ImageStore::open(dir.path(), config).unwrap();
    (dir, Arc::new(store))
}

#[tokio::test]
async fn the_bearer_token_flow_with_credentials() {
    let mut routes = HashMap::new();
    let id = app_image(&mut routes);
    let server = Server::start(routes).await;
    let (_dir, store) = store_for(&server);
    let image = format!("{}/app:1", server.host());

    let err = store.pull(&image, None).await.unwrap_err();
    assert!(
        err.root().to_string().contains("HTTP 401"),
        "{}",
        err.chain()
    );
    let creds = Credentials {
        username: "user".into(),
        password: "pass".into(),
        ..Default::default()
    };
    let info = store.pull(&image, Some(&creds)).await.unwrap();
    assert_eq!(info.id, id.to_string());
    assert_eq!(info.repo_tags, [image]);
}

#[tokio::test]
async fn a_cancelled_pull_leaves_nothing() {
    let mut routes = HashMap::new();
    app_image(&mut routes);
    // The layer comes slowly: the pull is dropped while it waits, the config already stored.
    for (path, (ctype, body)) in routes.iter_mut() {
        if path.starts_with("/v2/app/blobs/") && body.starts_with(&[0x1f, 0x8b]) {
            *ctype = SLOW;
        }
    }
    let server = Server::start(routes).await;
    let (dir, store) = store_for(&server);
    let creds = Credentials {
        username: "user".into(),
        password: "pass".into(),
        ..Default::default()
    };
    let image = format!("{}/app:1", server.host());
    let pull = store.pull(&image, Some(&creds));
    let timed_out = tokio::time::timeout(std::time::Duration::from_millis(500), pull).await;
    assert!(
        timed_out.is_err(),
        "the pull should still be waiting for its layer"
    );
    let blobs = dir.path().join("images/blobs/sha256");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_dir(&blobs).unwrap().count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled pull's blobs stay"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test]
async fn errors_and_garbage_name_the_registry_and_store_nothing() {
    let server = Server::start(HashMap::new()).await;
    let (dir, store) = store_for(&server);
    for (repo, want) in [
        ("broken", "HTTP 503: UNKNOWN: boom"),
        ("garbage", "invalid manifest"),
    ] {
        let image = format!("{}/{repo}:1", server.host());
        let err = store.pull(&image, None).await.unwrap_err();
        let msg = err.chain();
        assert!(msg.contains(&image) && msg.contains(want), "{msg}");
        assert!(matches!(err, ImageError::Pull { .. }), "{msg}");
    }
    assert!(store.list().unwrap().is_empty());
    let blobs = std::fs::read_dir(dir.path().join("images/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0);
}
